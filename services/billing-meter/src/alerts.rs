//! Billing's alerts on NATS: `keel.alerts.<tenant>.billing`, one message per `MeterStale`,
//! `MeterStaleCleared` and `UsageOverCommitment` event, from a durable consumer of billing's own
//! events (so an alert is sent at least once, after its event committed, whatever NATS did
//! meanwhile). Receivers deduplicate by `event_id`.

use async_trait::async_trait;
use bytes::Bytes;
use keel_bus::Bus;
use keel_events::Envelope;
use keel_store::projection::{ApplyError, Projection};
use sqlx::PgConnection;

pub struct Alerts {
    pub bus: Bus,
}

#[async_trait]
impl Projection for Alerts {
    type Item = Envelope;

    fn name(&self) -> &str {
        "billing-alerts"
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Envelope, String> {
        keel_store::projection::decode_envelope(subject, payload)
    }

    async fn apply(&self, _conn: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        let kind = e.event_name();
        if e.service() != "billing"
            || !matches!(kind, "MeterStale" | "MeterStaleCleared" | "UsageOverCommitment")
        {
            return Ok(());
        }
        let body = serde_json::json!({
            "kind": kind,
            "event_id": e.id,
            "tenant_id": e.tenantid,
            "time": e.time,
            "data": e.data,
        });
        let subject = keel_events::subjects::alert(&self.bus.subject_prefix(), &e.tenantid, "billing");
        self.bus
            .client()
            .publish(subject, Bytes::from(body.to_string()))
            .await
            .map_err(|err| ApplyError::Transient(format!("alert publish: {err}")))?;
        Ok(())
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), ApplyError> {
        Ok(())
    }
}
