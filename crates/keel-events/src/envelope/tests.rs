//! Unit tests of the envelope: builder, parse and the rule of each field.

use super::*;
use crate::error::UNKNOWN_FIELD;
use serde_json::json;

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn sample() -> Envelope {
    Envelope::builder("tenant", "TenantSuspended", 1)
        .tenant("acme")
        .actor("user:42")
        .traceparent(Some(TP.to_owned()))
        .aggregate("tenant", "acme", 3)
        .data(json!({"reason": "unpaid"}))
        .build()
        .expect("valid sample")
}

fn with(field: &str, value: Value) -> Vec<u8> {
    let mut v = sample().to_value();
    v[field] = value;
    v.to_string().into_bytes()
}

#[test]
fn builder_fills_the_constant_fields() {
    let e = sample();
    assert_eq!(e.specversion, "1.0");
    assert_eq!(e.source, "keel/tenant");
    assert_eq!(e.event_type, "keel.tenant.TenantSuspended.v1");
    assert_eq!(e.datacontenttype, "application/json");
    assert_eq!(e.subject, "tenant/acme");
    assert_eq!(e.id.get_version_num(), 7);
    assert_eq!(
        (e.service(), e.event_name(), e.version()),
        ("tenant", "TenantSuspended", 1)
    );
    assert_eq!(e.nats_subject("ns."), "ns.keel.evt.acme.tenant.TenantSuspended");
    let e = Envelope::builder("tenant", "TenantDeleted", 2)
        .tenant("a")
        .actor("system")
        .aggregate("tenant", "a", 1);
    let e = e.subject("tenant/a-1").build().expect("valid");
    assert_eq!(
        (e.subject.as_str(), &e.data, e.traceparent.as_deref()),
        ("tenant/a-1", &json!({}), None)
    );
}

#[test]
fn builder_reports_what_is_missing_or_wrong() {
    let b = || Envelope::builder("tenant", "TenantDeleted", 1);
    let field = |r: Result<Envelope>| r.expect_err("must fail").field().map(str::to_owned);
    let full = || b().tenant("a").actor("system").aggregate("tenant", "a", 1);
    assert_eq!(
        field(b().actor("system").aggregate("t", "a", 1).build()).as_deref(),
        Some("tenantid")
    );
    assert_eq!(
        field(b().tenant("a").aggregate("t", "a", 1).build()).as_deref(),
        Some("actor")
    );
    assert_eq!(
        field(b().tenant("a").actor("system").build()).as_deref(),
        Some("aggregatetype")
    );
    let bad_service = Envelope::builder("Tenant", "X", 1)
        .tenant("a")
        .actor("system")
        .aggregate("t", "a", 1);
    assert_eq!(field(bad_service.build()).as_deref(), Some("source"));
    let bad_version = Envelope::builder("tenant", "X", 0)
        .tenant("a")
        .actor("system")
        .aggregate("t", "a", 1);
    assert_eq!(field(bad_version.build()).as_deref(), Some("type"));
    assert_eq!(field(full().tenant("a.b").build()).as_deref(), Some("tenantid"));
    assert_eq!(field(full().tenant("*").build()).as_deref(), Some("tenantid"));
    assert_eq!(field(full().actor("root").build()).as_deref(), Some("actor"));
    assert_eq!(
        field(full().traceparent(Some("x".into())).build()).as_deref(),
        Some("traceparent")
    );
    assert_eq!(
        field(full().aggregate("tenant", "a", 0).build()).as_deref(),
        Some("sequence")
    );
    assert_eq!(field(full().data(json!([1])).build()).as_deref(), Some("data"));
    assert_eq!(field(full().id(Uuid::nil()).build()).as_deref(), Some("id"));
    let big = json!({"blob": "x".repeat(MAX_ENVELOPE_BYTES)});
    assert!(matches!(
        full().data(big).build(),
        Err(ParseError::TooLarge { .. })
    ));
}

#[test]
fn to_value_matches_serde() {
    let e = sample();
    assert_eq!(serde_json::to_value(&e).expect("serializable"), e.to_value());
    let back: Envelope = serde_json::from_slice(&e.to_json_bytes()).expect("deserializable");
    assert_eq!(back, e);
}

#[test]
fn parse_round_trips() {
    let e = sample();
    assert_eq!(Envelope::parse(&e.to_json_bytes()), Ok(e.clone()));
    let mut pretty = serde_json::to_vec_pretty(&e.to_value()).expect("serializable");
    pretty.extend_from_slice(b"\n");
    assert_eq!(Envelope::parse(&pretty), Ok(e));
}

#[test]
fn json_errors_have_a_position() {
    let err = Envelope::parse(b"{\n  \"id\": }").unwrap_err();
    let ParseError::Json {
        line,
        column,
        message,
    } = err
    else {
        panic!("{err:?}")
    };
    assert_eq!((line, column), (2, 9));
    assert!(!message.contains("line"), "{message}");
    for (bytes, pos) in [(&b"\n  [1]"[..], (2, 3)), (b"42", (1, 1)), (b"null", (1, 1))] {
        match Envelope::parse(bytes) {
            Err(ParseError::Json {
                line,
                column,
                message,
            }) => {
                assert_eq!((line, column), pos);
                assert!(message.starts_with("expected a JSON object"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(Envelope::parse(b""), Err(ParseError::Json { .. })));
    assert!(matches!(
        Envelope::parse(b"{\"a\":\"\xff\"}"),
        Err(ParseError::Json { .. })
    ));
    assert!(matches!(Envelope::parse(b"{} x"), Err(ParseError::Json { .. })));
}

#[test]
fn too_large_is_checked_first() {
    let bytes = vec![b' '; MAX_ENVELOPE_BYTES + 1];
    let err = Envelope::parse(&bytes).unwrap_err();
    assert_eq!(
        err,
        ParseError::TooLarge {
            size: MAX_ENVELOPE_BYTES + 1,
            limit: MAX_ENVELOPE_BYTES
        }
    );
}

#[test]
fn every_required_field_is_named_when_missing_or_null() {
    for field in parse::FIELDS.into_iter().filter(|&f| f != "traceparent") {
        let mut v = sample().to_value();
        v.as_object_mut().expect("object").remove(field);
        assert_eq!(
            Envelope::parse(v.to_string().as_bytes()),
            Err(ParseError::MissingField { field })
        );
        assert_eq!(
            Envelope::parse(&with(field, Value::Null)),
            Err(ParseError::MissingField { field })
        );
    }
    let e = Envelope::parse(&with("traceparent", Value::Null)).expect("null traceparent is absent");
    assert_eq!(e.traceparent, None);
}

#[test]
fn invalid_fields_are_named() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("id", json!("not-a-uuid"), "id"),
        ("id", json!("0192f0c1b2c37d8e9f00112233445566"), "id"),
        ("id", json!("00000000-0000-0000-0000-000000000000"), "id"),
        ("id", json!(7), "id"),
        ("source", json!("tenant"), "source"),
        ("source", json!("keel/billing"), "type"),
        ("type", json!("keel.tenant.TenantSuspended.v0"), "type"),
        ("type", json!("keel.tenant.tenantSuspended.v1"), "type"),
        ("subject", json!("acme"), "subject"),
        ("time", json!("2024-05-01 10:00"), "time"),
        ("time", json!("2024-05-01T10:00:00+02:00"), "time"),
        ("datacontenttype", json!("text/plain"), "datacontenttype"),
        ("tenantid", json!("*"), "tenantid"),
        ("tenantid", json!(""), "tenantid"),
        ("tenantid", json!("a".repeat(65)), "tenantid"),
        ("actor", json!("user:"), "actor"),
        ("traceparent", json!(TP.to_uppercase()), "traceparent"),
        ("traceparent", json!(1), "traceparent"),
        ("aggregatetype", json!(""), "aggregatetype"),
        ("aggregateid", json!("a b"), "aggregateid"),
        ("sequence", json!(0), "sequence"),
        ("sequence", json!(-1), "sequence"),
        ("sequence", json!(1.5), "sequence"),
        ("sequence", json!("1"), "sequence"),
        ("data", json!("x"), "data"),
        ("data", json!([]), "data"),
    ];
    for (field, value, named) in cases {
        let err = Envelope::parse(&with(field, value.clone())).expect_err(&format!("{field} = {value}"));
        assert!(
            matches!(err, ParseError::InvalidField { .. }),
            "{field} = {value}: {err:?}"
        );
        assert_eq!(err.field(), Some(named), "{field} = {value}: {err}");
    }
    let err = Envelope::parse(&with("specversion", json!("0.3"))).unwrap_err();
    assert_eq!(
        err,
        ParseError::UnsupportedVersion {
            specversion: "0.3".into()
        }
    );
    let ok = Envelope::parse(&with("time", json!("2024-05-01T10:00:00.5+00:00"))).expect("UTC offset");
    assert_eq!(ok.time.to_rfc3339(), "2024-05-01T10:00:00.500+00:00");
}

#[test]
fn unknown_fields_are_rejected_by_name() {
    let err = Envelope::parse(&with("dataschema", json!("x"))).unwrap_err();
    assert_eq!(err.field(), Some(UNKNOWN_FIELD));
    assert!(err.to_string().contains("\"dataschema\""), "{err}");
    let mut v = sample().to_value();
    for i in 0..20 {
        v[format!("x{i:02}")] = json!(i);
    }
    let err = Envelope::parse(v.to_string().as_bytes()).unwrap_err().to_string();
    assert!(err.contains("\"x00\"") && err.contains("and 15 more"), "{err}");
}

#[test]
fn digest_is_hex_sha256_of_canonical_bytes() {
    let e = sample();
    let digest = e.digest();
    assert_eq!(digest.len(), 64);
    assert!(
        digest
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(digest, hex::encode(Sha256::digest(e.canonical_bytes())));
    let mut other = e.clone();
    other.sequence += 1;
    assert_ne!(other.digest(), digest);
    let canonical = String::from_utf8(e.canonical_bytes()).expect("utf-8");
    assert!(
        canonical.starts_with("{\"actor\":\"user:42\",\"aggregateid\":\"acme\""),
        "{canonical}"
    );
}

#[test]
fn accessors_do_not_panic_on_a_tampered_type() {
    let mut e = sample();
    e.event_type = "garbage".into();
    assert_eq!((e.service(), e.event_name(), e.version()), ("", "", 0));
    assert_eq!(e.validate().unwrap_err().field(), Some("type"));
}
