//! The CloudEvents 1.0 envelope every Keel event travels in (structured JSON mode).

mod builder;
mod parse;
pub(crate) mod rules;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use builder::EnvelopeBuilder;

use crate::error::{ParseError, Result};
use crate::{canonical, subjects};

/// Largest envelope accepted, serialized: 1 MiB.
pub const MAX_ENVELOPE_BYTES: usize = 1 << 20;
/// The only CloudEvents version Keel speaks.
pub const SPEC_VERSION: &str = "1.0";
/// The only `datacontenttype`: data is always a JSON object.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// One event on the bus: CloudEvents 1.0 attributes plus Keel's extensions (`tenantid`, `actor`,
/// `traceparent`, `aggregatetype`, `aggregateid`, `sequence`).
///
/// Get one from [`Envelope::builder`] or [`Envelope::parse`]; both enforce the same rules. The
/// fields are public for reading; code that changes them should call [`Envelope::validate`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always `"1.0"`.
    pub specversion: String,
    /// UUIDv7 from the builder; JetStream deduplicates on it (`Nats-Msg-Id`).
    pub id: Uuid,
    /// `keel/<service>`.
    pub source: String,
    /// `keel.<service>.<Event>.v<N>`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// `<resource_type>/<resource_id>`.
    pub subject: String,
    /// When the event happened, UTC.
    pub time: DateTime<Utc>,
    /// Always `"application/json"`.
    pub datacontenttype: String,
    pub tenantid: String,
    /// `user:<id>`, `service:<name>` or `system`.
    pub actor: String,
    /// W3C trace context of the request that caused the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub aggregatetype: String,
    pub aggregateid: String,
    /// Position of the event in its aggregate, from 1.
    pub sequence: u64,
    /// The event's data, a JSON object described by its schema in the catalog.
    pub data: Value,
}

/// `keel.<service>.<event>.v<version>`, the CloudEvents `type` of an event.
pub fn event_type(service: &str, event: &str, version: u32) -> String {
    format!("keel.{service}.{event}.v{version}")
}

impl Envelope {
    /// A builder for event `event` version `version` of `service`.
    pub fn builder(service: &str, event: &str, version: u32) -> EnvelopeBuilder {
        EnvelopeBuilder::new(service, event, version)
    }

    /// Parses and validates an envelope. Never panics, whatever the bytes.
    pub fn parse(bytes: &[u8]) -> Result<Envelope, ParseError> {
        parse::parse(bytes)
    }

    /// Checks every rule [`Envelope::parse`] checks, including the size limit.
    pub fn validate(&self) -> Result<()> {
        rules::validate(self)?;
        let size = self.to_json_bytes().len();
        if size > MAX_ENVELOPE_BYTES {
            return Err(ParseError::TooLarge {
                size,
                limit: MAX_ENVELOPE_BYTES,
            });
        }
        Ok(())
    }

    /// The envelope as a JSON value, exactly as it is serialized.
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        let mut put = |key: &str, value: Value| {
            map.insert(key.to_owned(), value);
        };
        put("specversion", self.specversion.clone().into());
        put("id", self.id.hyphenated().to_string().into());
        put("source", self.source.clone().into());
        put("type", self.event_type.clone().into());
        put("subject", self.subject.clone().into());
        put(
            "time",
            self.time.to_rfc3339_opts(SecondsFormat::AutoSi, true).into(),
        );
        put("datacontenttype", self.datacontenttype.clone().into());
        put("tenantid", self.tenantid.clone().into());
        put("actor", self.actor.clone().into());
        if let Some(tp) = &self.traceparent {
            put("traceparent", tp.clone().into());
        }
        put("aggregatetype", self.aggregatetype.clone().into());
        put("aggregateid", self.aggregateid.clone().into());
        put("sequence", self.sequence.into());
        put("data", self.data.clone());
        Value::Object(map)
    }

    /// Compact JSON, the wire form.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        // `Value`'s Display is compact JSON and infallible, unlike `serde_json::to_vec`.
        self.to_value().to_string().into_bytes()
    }

    /// Canonical JSON: keys sorted at every depth, no whitespace. Equal envelopes give equal bytes.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        canonical::to_canonical_bytes(&self.to_value())
    }

    /// Lower-case hex SHA-256 of [`Envelope::canonical_bytes`].
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.canonical_bytes()))
    }

    /// The service of `type` (`""` if `type` is malformed, which a validated envelope never is).
    pub fn service(&self) -> &str {
        rules::split_type(&self.event_type).map_or("", |(service, _, _)| service)
    }

    /// The event name of `type`, e.g. `TenantCreated` (`""` if `type` is malformed).
    pub fn event_name(&self) -> &str {
        rules::split_type(&self.event_type).map_or("", |(_, event, _)| event)
    }

    /// The version of `type` (0 if `type` is malformed).
    pub fn version(&self) -> u32 {
        rules::split_type(&self.event_type).map_or(0, |(_, _, version)| version)
    }

    /// The subject this envelope is published on: `{prefix}keel.evt.<tenant>.<service>.<Event>`.
    pub fn nats_subject(&self, prefix: &str) -> String {
        subjects::event(prefix, &self.tenantid, self.service(), self.event_name())
    }
}

#[cfg(test)]
mod tests;
