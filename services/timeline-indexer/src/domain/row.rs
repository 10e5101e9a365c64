//! One timeline row, made from a domain event envelope or an audit record.

use chrono::{DateTime, Utc};
use keel_events::Envelope;
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq)]
pub struct TimelineRow {
    pub event_id: Uuid,
    pub ts: DateTime<Utc>,
    pub tenant_id: String,
    pub project_id: String,
    pub kind: String,
    pub actor: String,
    pub resource_type: String,
    pub resource_id: String,
    pub trace_id: String,
    pub result: String,
    pub digest: String,
    pub details: Value,
    pub stored: Value,
    pub source: &'static str,
}

fn split_resource(subject: &str) -> (String, String) {
    match subject.split_once('/') {
        Some((t, id)) => (t.to_owned(), id.to_owned()),
        None => (subject.to_owned(), String::new()),
    }
}

fn trace_of(traceparent: Option<&str>) -> String {
    traceparent
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|t| t.len() == 32)
        .unwrap_or_default()
        .to_owned()
}

/// Domain events succeed, except those whose name says they record a failure.
fn result_of_event(name: &str) -> &'static str {
    if name.ends_with("Failed") {
        "failure"
    } else {
        "success"
    }
}

impl TimelineRow {
    pub fn from_envelope(e: &Envelope) -> Self {
        let (resource_type, resource_id) = split_resource(&e.subject);
        Self {
            event_id: e.id,
            ts: e.time,
            tenant_id: e.tenantid.clone(),
            project_id: e
                .data
                .get("project_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            kind: format!("{}.{}", e.service(), e.event_name()),
            actor: e.actor.clone(),
            resource_type,
            resource_id,
            trace_id: trace_of(e.traceparent.as_deref()),
            result: result_of_event(e.event_name()).to_owned(),
            digest: e.digest(),
            details: e.data.clone(),
            stored: e.to_value(),
            source: "events",
        }
    }

    /// An audit record (schemas/audit-record.json). Errors name what is missing.
    pub fn from_audit(record: &Value) -> Result<Self, String> {
        let s = |k: &str| {
            record
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("audit record lacks {k}"))
        };
        let id: Uuid = s("id")?
            .parse()
            .map_err(|_| "audit record id is not a UUID".to_owned())?;
        let ts: DateTime<Utc> = s("time")?
            .parse()
            .map_err(|_| "audit record time is not RFC 3339".to_owned())?;
        let tenant = s("tenant")?;
        if !keel_events::subjects::is_valid_token(tenant) {
            return Err("audit record tenant is not a tenant id".into());
        }
        let (resource_type, resource_id) = split_resource(s("resource")?);
        let result = match s("result")? {
            "success" => "success",
            "failed" => "failure",
            "denied" => "denied",
            other => return Err(format!("audit record result {other:?} is unknown")),
        };
        let canonical = keel_events::canonical::to_canonical_bytes(record);
        Ok(Self {
            event_id: id,
            ts,
            tenant_id: tenant.to_owned(),
            project_id: String::new(),
            kind: format!("audit.{}.{}", s("service")?, s("action")?),
            actor: s("actor")?.to_owned(),
            resource_type,
            resource_id,
            trace_id: record
                .get("trace_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            result: result.to_owned(),
            digest: hex::encode(Sha256::digest(&canonical)),
            details: serde_json::json!({
                "reason": record.get("reason"),
                "source_ip": record.get("source_ip"),
            }),
            stored: record.clone(),
            source: "audit",
        })
    }

    /// The event's sequence in its aggregate (0 for an audit record, which has none): what
    /// orders the policies a tenant's events set.
    pub fn sequence(&self) -> i64 {
        if self.source != "events" {
            return 0;
        }
        self.stored
            .get("sequence")
            .and_then(Value::as_i64)
            .unwrap_or_default()
    }

    /// Whether this event places or lifts a legal hold on its tenant: `Some(true)` / `Some(false)`.
    pub fn legal_hold(&self) -> Option<bool> {
        let event = self.kind.rsplit('.').next().unwrap_or_default();
        if self.kind.starts_with("legal_hold.") {
            return Some(!self.kind.ends_with("released") && !self.kind.ends_with("Released"));
        }
        match event {
            "LegalHoldPlaced" => Some(true),
            "LegalHoldReleased" => Some(false),
            _ => None,
        }
    }

    /// Whether this event suspends (`Some(true)`) or restores (`Some(false)`) its tenant's
    /// access: suspension and deletion end open tails, reactivation and activation allow them.
    pub fn suspends(&self) -> Option<bool> {
        match self.kind.strip_prefix("tenant.")? {
            "TenantSuspended" | "TenantDeletionRequested" | "TenantDeleted" => Some(true),
            "TenantReactivated" | "TenantActivated" => Some(false),
            _ => None,
        }
    }

    /// The tier this event sets for its tenant, if any (from the tenant service's events, read
    /// with their typed data in `keel-tenancy`; malformed data sets nothing).
    pub fn tier(&self) -> Option<&'static str> {
        use keel_tenancy::TenantLifecycle;
        let event = self.kind.strip_prefix("tenant.")?;
        match TenantLifecycle::parse(event, &self.details).ok()?? {
            TenantLifecycle::Created(c) => Some(c.tier.as_str()),
            TenantLifecycle::TierChanged(c) => Some(c.to.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn envelope(event: &str, data: Value) -> Envelope {
        Envelope::builder("provisioning", event, 1)
            .tenant("acme")
            .actor("service:provisioning")
            .traceparent(Some(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            ))
            .aggregate("run", "r1", 3)
            .data(data)
            .build()
            .unwrap()
    }

    #[test]
    fn envelopes_become_rows() {
        let e = envelope("StepFailed", json!({"project_id": "p1", "error": "boom"}));
        let r = TimelineRow::from_envelope(&e);
        assert_eq!(r.kind, "provisioning.StepFailed");
        assert_eq!((r.resource_type.as_str(), r.resource_id.as_str()), ("run", "r1"));
        assert_eq!(r.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((r.result.as_str(), r.project_id.as_str()), ("failure", "p1"));
        assert_eq!(r.digest, e.digest());
    }

    #[test]
    fn audit_records_become_rows() {
        let rec = json!({"id": "0192f0c1-b2c3-7d8e-9f00-112233445566", "actor": "user:alice", "tenant": "acme",
            "service": "tenant", "action": "suspend", "resource": "tenant/acme", "result": "denied",
            "source_ip": "10.0.0.1", "time": "2026-11-24T01:00:00Z", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"});
        let r = TimelineRow::from_audit(&rec).unwrap();
        assert_eq!(
            (r.kind.as_str(), r.result.as_str(), r.source),
            ("audit.tenant.suspend", "denied", "audit")
        );
        let mut bad = rec.clone();
        bad["tenant"] = json!("a.b");
        assert!(TimelineRow::from_audit(&bad).is_err());
        assert!(
            TimelineRow::from_audit(&json!({"id": 1}))
                .unwrap_err()
                .contains("id")
        );
    }

    #[test]
    fn legal_holds_and_tiers_are_recognised() {
        let hold = TimelineRow::from_envelope(&envelope("LegalHoldPlaced", json!({})));
        assert_eq!(hold.legal_hold(), Some(true));
        assert_eq!(
            TimelineRow::from_envelope(&envelope("LegalHoldReleased", json!({}))).legal_hold(),
            Some(false)
        );
        assert_eq!(
            TimelineRow::from_envelope(&envelope("StepFailed", json!({}))).legal_hold(),
            None
        );
    }
}
