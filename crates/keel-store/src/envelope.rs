//! Builds the CloudEvents envelope of a stored event: producers never assemble envelopes.

use chrono::{DateTime, Utc};
use keel_events::Envelope;
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::{Error, Metadata, Result};

/// One row of `events` as the relay reads it.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub global_position: i64,
    pub tx_id: u64,
    pub event_id: Uuid,
    pub tenant_id: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
}

pub(crate) const STORED_EVENT_COLUMNS: &str = "global_position, tx_id::text AS tx_id, event_id, tenant_id, \
     aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, recorded_at";

impl StoredEvent {
    pub(crate) fn from_row(row: &PgRow) -> Result<Self> {
        let tx: String = row.try_get("tx_id")?;
        Ok(Self {
            global_position: row.try_get("global_position")?,
            tx_id: tx
                .parse()
                .map_err(|_| sqlx::Error::Decode(format!("bad xid8 {tx:?}").into()))?,
            event_id: row.try_get("event_id")?,
            tenant_id: row.try_get("tenant_id")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            payload: row.try_get("payload")?,
            metadata: row.try_get("metadata")?,
            recorded_at: row.try_get("recorded_at")?,
        })
    }

    /// The envelope of this event as produced by `service`: type `keel.<service>.<Event>.v<N>`,
    /// subject `<aggregate_type>/<aggregate_id>`, actor and trace from the command's metadata.
    pub fn to_envelope(&self, service: &str) -> Result<Envelope> {
        let fail = |reason: String| Error::Envelope {
            event_id: self.event_id,
            reason,
        };
        let version = parse_version(&self.event_version).ok_or_else(|| {
            fail(format!(
                "event_version {:?} is not a version number",
                self.event_version
            ))
        })?;
        let meta = Metadata::from_json(&self.metadata);
        let actor = if meta.actor.is_empty() {
            "system".to_owned()
        } else {
            meta.actor
        };
        let sequence = u64::try_from(self.sequence).map_err(|e| fail(e.to_string()))?;
        Envelope::builder(service, &self.event_type, version)
            .id(self.event_id)
            .time(self.recorded_at)
            .tenant(&self.tenant_id)
            .actor(&actor)
            .traceparent(meta.traceparent)
            .aggregate(&self.aggregate_type, &self.aggregate_id, sequence)
            .data(event_data(&self.payload, &self.event_type))
            .build()
            .map_err(|e| fail(e.to_string()))
    }
}

/// cqrs-es stores enum events externally tagged (`{"TenantCreated": {…}}`, or `"TenantReactivated"`
/// for a unit variant); the envelope's `data` is the inner object, as the event schemas describe.
pub fn event_data(payload: &Value, event_type: &str) -> Value {
    match payload {
        Value::String(s) if s == event_type => Value::Object(Default::default()),
        Value::Object(map) if map.len() == 1 => match map.get(event_type) {
            Some(Value::Null) => Value::Object(Default::default()),
            Some(inner) => inner.clone(),
            None => payload.clone(),
        },
        other => other.clone(),
    }
}

/// cqrs-es versions are free text; Keel uses "1", "2" … and tolerates "1.0".
fn parse_version(v: &str) -> Option<u32> {
    let major = v.strip_prefix('v').unwrap_or(v).split('.').next()?;
    major.parse().ok().filter(|n| *n >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_payloads_are_unwrapped() {
        use serde_json::json;
        assert_eq!(event_data(&json!({"Added": {"n": 1}}), "Added"), json!({"n": 1}));
        assert_eq!(event_data(&json!("Reactivated"), "Reactivated"), json!({}));
        assert_eq!(event_data(&json!({"n": 1}), "Added"), json!({"n": 1}));
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1"), Some(1));
        assert_eq!(parse_version("2.0"), Some(2));
        assert_eq!(parse_version("v3"), Some(3));
        assert_eq!(parse_version("0"), None);
        assert_eq!(parse_version("x"), None);
    }
}
