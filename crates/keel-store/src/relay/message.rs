//! The NATS message of a stored event: its envelope, or a dead letter when it has none.

use bytes::Bytes;
use keel_bus::{Outgoing, headers};
use keel_events::subjects;

use crate::envelope::StoredEvent;

/// The message for `event` of `service` under subject `prefix`, or the error that makes it a
/// dead letter.
pub(super) fn envelope_message(prefix: &str, service: &str, event: &StoredEvent) -> crate::Result<Outgoing> {
    let env = event.to_envelope(service)?;
    Ok(Outgoing {
        subject: subjects::event(prefix, &env.tenantid, service, &event.event_type),
        payload: Bytes::from(env.to_json_bytes()),
        msg_id: event.event_id.to_string(),
        traceparent: env.traceparent,
        headers: Vec::new(),
    })
}

pub(super) fn dead_letter(prefix: &str, event: &StoredEvent, reason: &str) -> Outgoing {
    let tenant = if subjects::is_valid_token(&event.tenant_id) {
        event.tenant_id.as_str()
    } else {
        "unknown"
    };
    let body = serde_json::json!({
        "event_id": event.event_id, "tenant_id": event.tenant_id, "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id, "sequence": event.sequence, "event_type": event.event_type,
        "event_version": event.event_version, "payload": event.payload, "metadata": event.metadata,
    });
    Outgoing {
        subject: subjects::dlq(prefix, "relay", tenant),
        payload: Bytes::from(body.to_string()),
        msg_id: event.event_id.to_string(),
        traceparent: None,
        headers: vec![(
            headers::DLQ_REASON.to_owned(),
            reason.chars().take(1024).collect(),
        )],
    }
}
