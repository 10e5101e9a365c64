//! `Envelope::parse` never panics, whatever it is given, and names the field at fault.

use keel_events::{Envelope, ParseError};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

/// Strings close to valid field values, so mutations reach the deeper checks.
fn plausible_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("1.0".to_owned()),
        Just("keel/tenant".to_owned()),
        Just("keel.tenant.TenantCreated.v1".to_owned()),
        Just("0192f0c1-b2c3-7d8e-9f00-112233445566".to_owned()),
        Just("2025-03-14T09:26:53Z".to_owned()),
        Just("application/json".to_owned()),
        Just("user:42".to_owned()),
        Just(crate::TRACEPARENT.to_owned()),
        Just("tenant/acme".to_owned()),
        "[a-z/:.0-9-]{0,12}",
        any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        plausible_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

fn sample_json() -> Value {
    crate::sample().to_value()
}

fn sample_fields() -> Vec<String> {
    sample_json()
        .as_object()
        .expect("object")
        .keys()
        .cloned()
        .collect()
}

/// Parses, and when that succeeds checks the result is a fixed point of serialize + parse.
fn parse_checked(bytes: &[u8]) -> Result<Envelope, ParseError> {
    let parsed = Envelope::parse(bytes);
    if let Ok(envelope) = &parsed {
        assert_eq!(Envelope::parse(&envelope.to_json_bytes()).as_ref(), Ok(envelope));
        assert!(envelope.validate().is_ok());
    }
    parsed
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = parse_checked(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        let _ = parse_checked(value.to_string().as_bytes());
    }

    /// Objects made of envelope field names with random values.
    #[test]
    fn field_soup_never_panics(
        picks in prop::collection::vec((any::<Index>(), arb_json()), 0..20),
    ) {
        let fields = sample_fields();
        let map: Map<String, Value> =
            picks.into_iter().map(|(i, v)| (i.get(&fields).clone(), v)).collect();
        let _ = parse_checked(Value::Object(map).to_string().as_bytes());
    }

    #[test]
    fn deleting_a_field_names_it(index in any::<Index>()) {
        let mut value = sample_json();
        let fields = sample_fields();
        let field = index.get(&fields);
        value.as_object_mut().expect("object").remove(field);
        let result = parse_checked(value.to_string().as_bytes());
        if field == "traceparent" {
            prop_assert!(result.is_ok(), "traceparent is optional: {result:?}");
        } else {
            let err = result.expect_err("a required field is gone");
            prop_assert!(matches!(err, ParseError::MissingField { .. }), "{err:?}");
            prop_assert_eq!(err.field(), Some(field.as_str()));
        }
    }

    #[test]
    fn replacing_a_value_names_the_field(index in any::<Index>(), replacement in arb_json()) {
        let mut value = sample_json();
        let fields = sample_fields();
        let field = index.get(&fields);
        value[field.as_str()] = replacement;
        if let Err(err) = parse_checked(value.to_string().as_bytes()) {
            // Everything else is still valid, so the error is about this field; a valid but
            // different source shows up as a mismatch with `type`.
            let named = err.field().unwrap_or("<none>");
            let expected = named == field || (field == "source" && named == "type");
            prop_assert!(expected, "replaced {}, error {:?}", field, err);
        }
    }

    #[test]
    fn truncating_is_a_json_error(cut in any::<Index>()) {
        let bytes = crate::sample().to_json_bytes();
        let at = cut.index(bytes.len());
        let err = parse_checked(&bytes[..at]).expect_err("a strict prefix of an object is not JSON");
        prop_assert!(matches!(err, ParseError::Json { .. }), "{:?}", err);
    }

    #[test]
    fn flipping_bytes_never_panics(flips in prop::collection::vec((any::<Index>(), 1u8..=255), 1..8)) {
        let mut bytes = crate::sample().to_json_bytes();
        for (at, mask) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        let _ = parse_checked(&bytes);
    }
}
