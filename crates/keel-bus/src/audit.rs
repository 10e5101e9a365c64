//! Audit records (schemas/audit-record.json) on `keel.audit.<tenant>.<service>.<action>`: every
//! state-changing call, allowed or denied, so a tenant's security team can tail
//! `keel.audit.<tenant>.>`.

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::{Bus, Outgoing, Result};

/// The subject token used for calls that concern no single tenant (operator actions).
pub const PLATFORM_TENANT: &str = "_platform";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditResult {
    Success,
    Denied,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub id: uuid::Uuid,
    /// `user:<id>`, `service:<name>` or `system`.
    pub actor: String,
    pub tenant: String,
    pub service: String,
    /// Subject token: `create`, `suspend`, `member-invite` …
    pub action: String,
    /// `<resource_type>/<resource_id>`.
    pub resource: String,
    pub result: AuditResult,
    pub source_ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(serialize_with = "rfc3339")]
    pub time: DateTime<Utc>,
    /// Why a call was denied or failed (never PII).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditRecord {
    /// A record of now with a fresh id; add the trace and the reason with the builders.
    pub fn new(
        actor: impl Into<String>,
        tenant: &str,
        service: &str,
        action: &str,
        resource: impl Into<String>,
        result: AuditResult,
        source_ip: impl Into<String>,
    ) -> Self {
        Self {
            id: uuid::Uuid::now_v7(),
            actor: actor.into(),
            tenant: if tenant == "*" {
                PLATFORM_TENANT.to_owned()
            } else {
                tenant.to_owned()
            },
            service: service.to_owned(),
            action: action.to_owned(),
            resource: resource.into(),
            result,
            source_ip: source_ip.into(),
            trace_id: None,
            time: Utc::now(),
            reason: None,
        }
    }

    pub fn with_trace(mut self, trace_id: Option<String>) -> Self {
        self.trace_id = trace_id;
        self
    }

    pub fn with_reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }
}

fn rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
}

impl AuditRecord {
    /// The JetStream message of this record under subject `prefix`: `Nats-Msg-Id` is the record
    /// id, so a record published twice (a relay that crashed before its checkpoint) is stored once.
    pub fn message(&self, prefix: &str) -> Result<Outgoing> {
        let tenant = if keel_events::subjects::is_valid_token(&self.tenant) {
            self.tenant.as_str()
        } else {
            PLATFORM_TENANT
        };
        let token = |s: &str| {
            if keel_events::subjects::is_valid_token(s) {
                s.to_owned()
            } else {
                "unknown".to_owned()
            }
        };
        let subject =
            keel_events::subjects::audit(prefix, tenant, &token(&self.service), &token(&self.action));
        let payload = serde_json::to_vec(self).map_err(|e| crate::Error::Publish {
            subject: subject.clone(),
            message: e.to_string(),
        })?;
        Ok(Outgoing {
            subject,
            payload: Bytes::from(payload),
            msg_id: self.id.to_string(),
            traceparent: None,
            headers: Vec::new(),
        })
    }
}

impl Bus {
    /// Publishes an audit record and waits for JetStream's ack. Services do not call this:
    /// they write records to their audit outbox (`keel_store::audit`), whose relay publishes
    /// them; tests and tools that play a producer do.
    pub async fn publish_audit(&self, record: &AuditRecord) -> Result<()> {
        self.publish_acked(record.message(&self.subject_prefix())?)
            .await?;
        Ok(())
    }
}
