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

/// The message of a stored audit record (its own id as `Nats-Msg-Id`).
pub(super) fn audit_message(prefix: &str, row: &super::outbox::AuditRow) -> Result<Outgoing, String> {
    let record: keel_bus::audit::AuditRecord =
        serde_json::from_value(row.record.clone()).map_err(|e| format!("not an audit record: {e}"))?;
    if record.id != row.record_id {
        return Err(format!("record id {} differs from its row's", record.id));
    }
    record.message(prefix).map_err(|e| e.to_string())
}

pub(super) fn audit_dead_letter(prefix: &str, row: &super::outbox::AuditRow, reason: &str) -> Outgoing {
    let tenant = if subjects::is_valid_token(&row.tenant_id) {
        row.tenant_id.as_str()
    } else {
        "unknown"
    };
    Outgoing {
        subject: subjects::dlq(prefix, "audit", tenant),
        payload: Bytes::from(row.record.to_string()),
        msg_id: row.record_id.to_string(),
        traceparent: None,
        headers: vec![(
            headers::DLQ_REASON.to_owned(),
            reason.chars().take(1024).collect(),
        )],
    }
}
