//! keel-events integration tests: one binary, one module per concern.

mod props;
mod roundtrip;
mod schemas;

use keel_events::Envelope;
use serde_json::{Value, json};

pub const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A valid envelope with every field set, its data the first example of TenantCreated.v1.
pub fn sample() -> Envelope {
    let data = example("tenant", "TenantCreated", 1);
    Envelope::builder("tenant", "TenantCreated", 1)
        .tenant("acme")
        .actor("user:0192f0c0-aaaa-7bbb-8ccc-dddddddddddd")
        .traceparent(Some(TRACEPARENT.to_owned()))
        .aggregate("tenant", "acme", 1)
        .data(data)
        .build()
        .expect("sample envelope is valid")
}

/// The first example of an event type's schema.
pub fn example(service: &str, name: &str, version: u32) -> Value {
    let entry = keel_events::catalog::lookup(service, name, version).expect("in catalog");
    let schema = entry.schema_json().expect("schema is JSON");
    schema["examples"].get(0).cloned().unwrap_or_else(|| json!({}))
}
