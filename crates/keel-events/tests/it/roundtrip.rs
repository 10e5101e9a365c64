//! builder -> bytes -> parse gives the same envelope, and the digest depends on content only.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use chrono::{DateTime, Utc};
use keel_events::Envelope;
use proptest::prelude::*;
use serde_json::{Map, Value};
use uuid::Uuid;

fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    // Years 1970 to 9999, any nanosecond.
    (0i64..253_402_300_799, 0u32..1_000_000_000)
        .prop_map(|(secs, nanos)| DateTime::from_timestamp(secs, nanos).expect("in range"))
}

fn arb_actor() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("system".to_owned()),
        "[!-~]{1,128}".prop_map(|id| format!("user:{id}")),
        "[a-z][a-z0-9-]{0,30}".prop_map(|name| format!("service:{name}")),
    ]
}

fn arb_traceparent() -> impl Strategy<Value = Option<String>> {
    let hex = |n: usize| prop::collection::vec(prop::sample::select(b"0123456789abcdef".to_vec()), n);
    prop::option::of(
        (hex(32), hex(16), hex(2)).prop_filter_map("all-zero id", |(t, p, f)| {
            let s = |v: Vec<u8>| String::from_utf8(v).expect("hex is ASCII");
            let (t, p, f) = (s(t), s(p), s(f));
            (t.bytes().any(|b| b != b'0') && p.bytes().any(|b| b != b'0')).then(|| format!("00-{t}-{p}-{f}"))
        }),
    )
}

fn arb_data() -> impl Strategy<Value = Value> {
    prop::collection::btree_map("\\PC{0,10}", crate::props::arb_json(), 0..8)
        .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>()))
}

prop_compose! {
    fn arb_envelope()(
        service in "[a-z][a-z0-9-]{0,20}",
        event in "[A-Z][A-Za-z0-9]{0,20}",
        version in 1u32..,
        tenant in "[A-Za-z0-9_-]{1,64}",
        actor in arb_actor(),
        traceparent in arb_traceparent(),
        aggregate in ("[a-z][a-z_]{0,15}", "[!-~]{1,64}", 1u64..),
        id in any::<u128>().prop_filter("nil", |&n| n != 0),
        time in arb_time(),
        data in arb_data(),
    ) -> Envelope {
        Envelope::builder(&service, &event, version)
            .tenant(tenant)
            .actor(actor)
            .traceparent(traceparent)
            .aggregate(aggregate.0, aggregate.1, aggregate.2)
            .id(Uuid::from_u128(id))
            .time(time)
            .data(data)
            .build()
            .expect("generated envelopes are valid")
    }
}

/// Writes `value` as JSON with object keys in an order picked by `salt` and optional whitespace,
/// which serde_json itself never does.
fn write_shuffled(value: &Value, salt: u64, pretty: bool, out: &mut String) {
    let sep = if pretty { " \n\t" } else { "" };
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by_key(|k| {
                let mut h = DefaultHasher::new();
                (salt, k).hash(&mut h);
                h.finish()
            });
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(sep);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(sep);
                out.push(':');
                write_shuffled(&map[k], salt.wrapping_add(1), pretty, out);
            }
            out.push_str(sep);
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_shuffled(item, salt, pretty, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn builder_to_bytes_to_parse_is_identity(envelope in arb_envelope()) {
        let parsed = Envelope::parse(&envelope.to_json_bytes());
        prop_assert_eq!(parsed.as_ref(), Ok(&envelope));
        let parsed = parsed.expect("checked above");
        prop_assert_eq!(parsed.digest(), envelope.digest());
        prop_assert_eq!(parsed.canonical_bytes(), envelope.canonical_bytes());
        prop_assert_eq!(parsed.to_json_bytes(), envelope.to_json_bytes());
    }

    #[test]
    fn digest_is_stable_under_key_reordering(envelope in arb_envelope(), salt in any::<u64>(), pretty in any::<bool>()) {
        let mut text = String::new();
        write_shuffled(&envelope.to_value(), salt, pretty, &mut text);
        let parsed = Envelope::parse(text.as_bytes()).expect("reordered envelope parses");
        prop_assert_eq!(parsed.digest(), envelope.digest());
        prop_assert_eq!(&parsed, &envelope);
    }
}

#[test]
fn digest_is_stable_for_a_known_envelope() {
    let envelope = crate::sample();
    let mut a = String::new();
    let mut b = String::new();
    write_shuffled(&envelope.to_value(), 1, false, &mut a);
    write_shuffled(&envelope.to_value(), 2, true, &mut b);
    assert_ne!(a, b, "the two spellings differ");
    let (a, b) = (
        Envelope::parse(a.as_bytes()).expect("a"),
        Envelope::parse(b.as_bytes()).expect("b"),
    );
    assert_eq!(a.digest(), b.digest());
    assert_eq!(a.digest(), envelope.digest());
    // Canonical bytes have sorted keys and no whitespace.
    let canonical = String::from_utf8(envelope.canonical_bytes()).expect("utf-8");
    assert!(!canonical.contains(": ") && !canonical.contains('\n'));
    let mut keys: Vec<String> = envelope
        .to_value()
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    let positions: Vec<usize> = keys
        .iter()
        .map(|k| canonical.find(&format!("\"{k}\":")).expect("key"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "top-level keys sorted: {canonical}"
    );
}
