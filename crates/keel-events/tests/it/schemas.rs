//! The JSON Schemas in `schemas/` agree with the catalog, compile under draft 2020-12, accept
//! their own examples and agree with `Envelope::parse`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use jsonschema::Validator;
use keel_events::catalog::{self, AUDIT_RECORD_SCHEMA, CATALOG, ENVELOPE_SCHEMA};
use keel_events::{Envelope, ParseError};
use serde_json::{Value, json};

const DRAFT_2020_12: &str = "https://json-schema.org/draft/2020-12/schema";

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

/// Compiles a schema as draft 2020-12 (checked against the meta-schema first) with format
/// assertions on, so `date-time`, `uuid` and `ipv4`/`ipv6` are enforced as keel-events does.
fn compile(name: &str, text: &str) -> (Value, Validator) {
    let schema: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
    assert_eq!(
        schema["$schema"], DRAFT_2020_12,
        "{name}: must declare draft 2020-12"
    );
    if let Err(e) = jsonschema::draft202012::meta::validate(&schema) {
        panic!("{name}: not a valid draft 2020-12 schema: {e}");
    }
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|e| panic!("{name}: does not compile: {e}"));
    (schema, validator)
}

fn errors(validator: &Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

fn examples(name: &str, schema: &Value) -> Vec<Value> {
    let examples = schema["examples"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: no examples array"));
    assert!(!examples.is_empty(), "{name}: needs at least one example");
    examples.clone()
}

#[test]
fn every_catalog_schema_compiles_and_accepts_its_examples() {
    for entry in CATALOG {
        let name = entry.schema_path();
        let (schema, validator) = compile(&name, entry.schema);
        assert_eq!(
            schema["title"],
            entry.type_name(),
            "{name}: title must be the event type"
        );
        for example in examples(&name, &schema) {
            assert_eq!(
                errors(&validator, &example),
                Vec::<String>::new(),
                "{name}: example {example}"
            );
            // Data shapes are closed: an unknown property is a schema change, not a surprise.
            let mut extra = example.clone();
            extra["unexpected_property"] = json!(1);
            assert!(!validator.is_valid(&extra), "{name}: accepts unknown properties");
        }
        assert!(!validator.is_valid(&json!([])), "{name}: data must be an object");
    }
}

#[test]
fn every_schema_file_is_in_the_catalog_and_every_entry_has_its_file() {
    let root = schemas_dir();
    let mut files = BTreeSet::new();
    let mut pending = vec![root.join("events")];
    while let Some(dir) = pending.pop() {
        for item in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = item.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let relative = path.strip_prefix(&root).expect("under schemas/");
                files.insert(relative.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    for file in &files {
        let parsed = file
            .strip_prefix("events/")
            .and_then(|f| f.strip_suffix(".json"))
            .and_then(|f| f.split_once('/'))
            .and_then(|(service, rest)| rest.rsplit_once(".v").map(|(name, v)| (service, name, v)))
            .and_then(|(service, name, v)| v.parse::<u32>().ok().map(|v| (service, name, v)));
        let Some((service, name, version)) = parsed else {
            panic!("{file}: not events/<service>/<Name>.v<N>.json");
        };
        let entry = catalog::lookup(service, name, version)
            .unwrap_or_else(|| panic!("{file}: schema without a catalog entry"));
        assert_eq!(&entry.schema_path(), file);
    }
    for entry in CATALOG {
        let path = entry.schema_path();
        assert!(
            files.contains(&path),
            "{}: catalog entry without a schema file {path}",
            entry.type_name()
        );
        let on_disk = std::fs::read_to_string(root.join(&path)).expect("readable");
        assert_eq!(on_disk, entry.schema, "{path}: compiled-in schema is stale");
    }
}

#[test]
fn envelope_schema_accepts_built_envelopes_and_rejects_missing_fields() {
    let (schema, validator) = compile("envelope.json", ENVELOPE_SCHEMA);
    for example in examples("envelope.json", &schema) {
        assert_eq!(
            errors(&validator, &example),
            Vec::<String>::new(),
            "example {example}"
        );
        let parsed = Envelope::parse(example.to_string().as_bytes()).expect("example parses");
        let entry = catalog::lookup_type(&parsed.event_type).expect("example type in catalog");
        let (_, data_validator) = compile(&entry.schema_path(), entry.schema);
        assert!(
            data_validator.is_valid(&parsed.data),
            "example data of {}",
            parsed.event_type
        );
    }

    // One envelope per catalog entry, built the way producers build them.
    for entry in CATALOG {
        let (data_schema, _) = compile(&entry.schema_path(), entry.schema);
        let data = data_schema["examples"][0].clone();
        let envelope = Envelope::builder(entry.service, entry.name, entry.version)
            .tenant("acme")
            .actor("service:tenant")
            .aggregate("tenant", "acme", 7)
            .data(data)
            .build()
            .expect("builder accepts catalog examples");
        assert_eq!(
            errors(&validator, &envelope.to_value()),
            Vec::<String>::new(),
            "{}",
            entry.type_name()
        );
    }

    let full = crate::sample().to_value();
    assert_eq!(errors(&validator, &full), Vec::<String>::new());
    let fields: Vec<String> = full.as_object().expect("object").keys().cloned().collect();
    for field in fields {
        let mut missing = full.clone();
        missing.as_object_mut().expect("object").remove(&field);
        // traceparent is the one optional field.
        assert_eq!(
            validator.is_valid(&missing),
            field == "traceparent",
            "without {field}"
        );
    }
}

/// Where the schema can express a rule, it and `Envelope::parse` must agree.
#[test]
fn envelope_schema_and_parse_agree() {
    let (_, validator) = compile("envelope.json", ENVELOPE_SCHEMA);
    let cases: Vec<(&str, Value)> = vec![
        ("specversion", json!("0.3")),
        ("id", json!("not-a-uuid")),
        ("id", json!("00000000-0000-0000-0000-000000000000")),
        ("source", json!("keel/Tenant")),
        ("type", json!("keel.tenant.TenantCreated.v0")),
        ("type", json!("keel.tenant.tenantCreated.v1")),
        ("subject", json!("tenant")),
        ("subject", json!("tenant/a b")),
        ("time", json!("2025-03-14T09:26:53+01:00")),
        ("time", json!("yesterday")),
        ("datacontenttype", json!("text/plain")),
        ("tenantid", json!("*")),
        ("tenantid", json!("a.b")),
        ("actor", json!("root")),
        ("actor", json!("user:")),
        (
            "traceparent",
            json!("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
        ),
        (
            "traceparent",
            json!("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
        ),
        (
            "traceparent",
            json!("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
        ),
        ("aggregatetype", json!("")),
        ("aggregateid", json!("a b")),
        ("sequence", json!(0)),
        ("sequence", json!(1.5)),
        ("data", json!([])),
        ("dataschema", json!("https://example.com")),
    ];
    for (field, value) in cases {
        let mut envelope = crate::sample().to_value();
        envelope[field] = value.clone();
        assert!(!validator.is_valid(&envelope), "schema accepts {field} = {value}");
        let err = Envelope::parse(envelope.to_string().as_bytes()).expect_err("parse rejects it too");
        assert!(
            !matches!(err, ParseError::Json { .. }),
            "{field} = {value}: {err}"
        );
    }
}

#[test]
fn audit_record_schema_accepts_its_examples_and_rejects_bad_records() {
    let (schema, validator) = compile("audit-record.json", AUDIT_RECORD_SCHEMA);
    let examples = examples("audit-record.json", &schema);
    for example in &examples {
        assert_eq!(
            errors(&validator, example),
            Vec::<String>::new(),
            "example {example}"
        );
    }
    let good = examples[0].clone();
    assert!(good.get("reason").is_none(), "reason is optional");
    let mut with_reason = good.clone();
    with_reason["reason"] = json!("quota exceeded");
    with_reason["result"] = json!("failed");
    assert!(validator.is_valid(&with_reason));
    let bad: Vec<(&str, Value)> = vec![
        ("result", json!("ok")),
        ("source_ip", json!("not an ip")),
        ("trace_id", json!("00000000000000000000000000000000")),
        ("trace_id", json!("4BF92F3577B34DA6A3CE929D0E0E4736")),
        ("tenant", json!("a.b")),
        ("action", json!("a.b")),
        ("actor", json!("nobody")),
        ("time", json!("2025-03-14")),
        ("resource", json!("acme")),
        ("reason", json!("")),
        ("extra", json!(1)),
    ];
    for (field, value) in bad {
        let mut record = good.clone();
        record[field] = value.clone();
        assert!(!validator.is_valid(&record), "accepts {field} = {value}");
    }
    for field in [
        "id",
        "actor",
        "tenant",
        "service",
        "action",
        "resource",
        "result",
        "source_ip",
        "time",
    ] {
        let mut record = good.clone();
        record.as_object_mut().expect("object").remove(field);
        assert!(!validator.is_valid(&record), "accepts a record without {field}");
    }
}
