//! [`EnvelopeBuilder`]: the one way producers assemble an envelope.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{DATA_CONTENT_TYPE, Envelope, SPEC_VERSION, event_type};
use crate::error::{ParseError, Result};

/// Builds a valid [`Envelope`]; start with [`Envelope::builder`].
///
/// `specversion`, `source`, `type`, `datacontenttype`, a fresh UUIDv7 `id` and `time` = now are
/// filled in; `tenant`, `actor` and `aggregate` are required; `subject` defaults to
/// `<aggregatetype>/<aggregateid>` and `data` to `{}`.
#[derive(Clone, Debug)]
#[must_use]
pub struct EnvelopeBuilder {
    service: String,
    event: String,
    version: u32,
    id: Uuid,
    time: DateTime<Utc>,
    tenant: Option<String>,
    actor: Option<String>,
    traceparent: Option<String>,
    aggregate: Option<(String, String, u64)>,
    subject: Option<String>,
    data: Value,
}

impl EnvelopeBuilder {
    pub(crate) fn new(service: &str, event: &str, version: u32) -> Self {
        Self {
            service: service.to_owned(),
            event: event.to_owned(),
            version,
            id: Uuid::now_v7(),
            // PostgreSQL keeps microseconds: an envelope that goes through the event store and
            // comes back must be the same envelope, with the same digest.
            time: Utc::now().trunc_subsecs(6),
            tenant: None,
            actor: None,
            traceparent: None,
            aggregate: None,
            subject: None,
            data: Value::Object(Map::new()),
        }
    }

    /// The tenant id (`tenantid`), a subject-safe token.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Who caused the event: `user:<id>`, `service:<name>` or `system`.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// The W3C `traceparent` of the request that caused the event, if there was one.
    pub fn traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    /// The aggregate the event belongs to and its sequence number in it (from 1).
    pub fn aggregate(
        mut self,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        sequence: u64,
    ) -> Self {
        self.aggregate = Some((aggregate_type.into(), aggregate_id.into(), sequence));
        self
    }

    /// `<resource_type>/<resource_id>`; defaults to `<aggregatetype>/<aggregateid>`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Overrides the generated UUIDv7 (e.g. with the stored event id).
    pub fn id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Overrides `time` (e.g. with the stored `recorded_at`).
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.time = time;
        self
    }

    /// The event's data: a JSON object.
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }

    /// The envelope, checked by the same rules as [`Envelope::parse`] (size included).
    pub fn build(self) -> Result<Envelope> {
        let tenantid = self
            .tenant
            .ok_or(ParseError::MissingField { field: "tenantid" })?;
        let actor = self.actor.ok_or(ParseError::MissingField { field: "actor" })?;
        let (aggregatetype, aggregateid, sequence) = self.aggregate.ok_or(ParseError::MissingField {
            field: "aggregatetype",
        })?;
        let subject = self
            .subject
            .unwrap_or_else(|| format!("{aggregatetype}/{aggregateid}"));
        let envelope = Envelope {
            specversion: SPEC_VERSION.to_owned(),
            id: self.id,
            source: format!("keel/{}", self.service),
            event_type: event_type(&self.service, &self.event, self.version),
            subject,
            time: self.time,
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            tenantid,
            actor,
            traceparent: self.traceparent,
            aggregatetype,
            aggregateid,
            sequence,
            data: self.data,
        };
        envelope.validate()?;
        Ok(envelope)
    }
}
