//! The metadata every command carries into its events (DESIGN.md §2): who, for which tenant,
//! in which trace and request. Stored as the `metadata` jsonb of each event.

use std::collections::HashMap;

pub const TENANT_ID: &str = "tenant_id";
pub const ACTOR: &str = "actor";
pub const TRACEPARENT: &str = "traceparent";
pub const REQUEST_ID: &str = "request_id";

/// Typed view of cqrs-es' `HashMap<String, String>` metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub tenant_id: String,
    pub actor: String,
    pub traceparent: Option<String>,
    pub request_id: Option<String>,
}

impl Metadata {
    pub fn new(tenant_id: impl Into<String>, actor: impl Into<String>) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            actor: actor.into(),
            ..Default::default()
        }
    }

    pub fn with_traceparent(mut self, tp: Option<String>) -> Self {
        self.traceparent = tp;
        self
    }

    pub fn with_request_id(mut self, id: Option<String>) -> Self {
        self.request_id = id;
        self
    }

    /// The map cqrs-es' `execute_with_metadata` takes.
    pub fn into_map(self) -> HashMap<String, String> {
        let mut m = HashMap::from([
            (TENANT_ID.to_owned(), self.tenant_id),
            (ACTOR.to_owned(), self.actor),
        ]);
        if let Some(tp) = self.traceparent {
            m.insert(TRACEPARENT.to_owned(), tp);
        }
        if let Some(id) = self.request_id {
            m.insert(REQUEST_ID.to_owned(), id);
        }
        m
    }

    /// Reads the stored jsonb metadata back; absent optional keys are `None`.
    pub fn from_json(value: &serde_json::Value) -> Self {
        let get = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            tenant_id: get(TENANT_ID).unwrap_or_default(),
            actor: get(ACTOR).unwrap_or_default(),
            traceparent: get(TRACEPARENT),
            request_id: get(REQUEST_ID),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_stored_json() {
        let m = Metadata::new("acme", "user:alice").with_request_id(Some("r1".into()));
        let json = serde_json::to_value(m.clone().into_map()).unwrap();
        assert_eq!(Metadata::from_json(&json), m);
    }
}
