//! A usage event as it arrives (over gRPC or NATS) and as it is stored once checked. Nothing
//! from the network is trusted: every field is bounded and checked, and a refusal names the
//! field.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::Value;

use super::meter::{Aggregation, MeterDef, valid_name};

/// Events one call (or one batch) may carry.
pub const MAX_EVENTS: usize = 1000;
/// How far ahead of now an event's time may be.
pub const MAX_AHEAD: Duration = Duration::minutes(5);
/// The default lateness bound: older events are refused.
pub const DEFAULT_LATENESS: Duration = Duration::days(35);
pub const MAX_PROPERTIES: usize = 16;
pub const MAX_PROPERTIES_BYTES: usize = 4096;
/// The default CloudEvents type of a usage event.
pub const DEFAULT_TYPE: &str = "keel.usage.v1";

/// A usage event as it arrived.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UsageInput {
    pub id: String,
    pub source: String,
    pub event_type: String,
    pub subject: String,
    pub time: Option<DateTime<Utc>>,
    pub tenant_id: String,
    pub meter: String,
    pub value: String,
    pub properties: BTreeMap<String, String>,
}

/// A usage event that passed every check, ready to store.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub tenant_id: String,
    pub source: String,
    pub id: String,
    pub event_type: String,
    pub subject: String,
    pub time: DateTime<Utc>,
    pub meter: String,
    pub meter_version: u32,
    pub value: Decimal,
    /// UNIQUE_COUNT meters: the value counted.
    pub unique_key: Option<String>,
    /// The group-by properties' values, as canonical JSON (`{}` without group-by).
    pub group_key: String,
    pub properties: Value,
}

/// Why an event was refused: the field and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Invalid {
    Invalid {
        field,
        reason: reason.into(),
    }
}

fn bounded(field: &'static str, s: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(invalid(field, format!("{min}..={max} characters")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "control characters are not allowed"));
    }
    Ok(())
}

/// Checks `e` against the meters it may name, at `now`, with lateness bound `lateness`.
pub fn check(
    e: &UsageInput,
    meters: &BTreeMap<String, MeterDef>,
    now: DateTime<Utc>,
    lateness: Duration,
) -> Result<Checked, Invalid> {
    bounded("id", &e.id, 1, 128)?;
    bounded("source", &e.source, 1, 256)?;
    let event_type = if e.event_type.is_empty() {
        DEFAULT_TYPE.to_owned()
    } else {
        bounded("type", &e.event_type, 1, 128)?;
        e.event_type.clone()
    };
    bounded("subject", &e.subject, 0, 256)?;
    if !keel_events::subjects::is_valid_token(&e.tenant_id) {
        return Err(invalid("tenant_id", "a tenant id"));
    }
    let time = e.time.ok_or_else(|| invalid("time", "required"))?;
    if time > now + MAX_AHEAD {
        return Err(invalid("time", "more than 5 minutes ahead"));
    }
    if time < now - lateness {
        return Err(invalid(
            "time",
            format!("older than the lateness bound ({} days)", lateness.num_days()),
        ));
    }
    let meter = meters
        .get(&e.meter)
        .ok_or_else(|| invalid("meter", format!("unknown meter {:?}", trim(&e.meter))))?;
    if e.properties.len() > MAX_PROPERTIES {
        return Err(invalid("properties", format!("at most {MAX_PROPERTIES}")));
    }
    let mut size = 0;
    for (k, v) in &e.properties {
        if !valid_name(k) {
            return Err(invalid(
                "properties",
                format!("{:?} is not a property name", trim(k)),
            ));
        }
        if v.chars().count() > 256 || v.chars().any(char::is_control) {
            return Err(invalid(
                "properties",
                format!("{k}: at most 256 characters, no control characters"),
            ));
        }
        size += k.len() + v.len();
    }
    if size > MAX_PROPERTIES_BYTES {
        return Err(invalid(
            "properties",
            format!("more than {MAX_PROPERTIES_BYTES} bytes"),
        ));
    }
    let value = parse_value(&e.value, meter.aggregation)?;
    let unique_key = match (&meter.aggregation, &meter.value_property) {
        (Aggregation::UniqueCount, Some(p)) => Some(e.properties.get(p).cloned().ok_or_else(|| {
            invalid(
                "properties",
                format!("{p} is what meter {} counts: required", meter.name),
            )
        })?),
        _ => None,
    };
    let group: BTreeMap<&str, &str> = meter
        .group_by
        .iter()
        .map(|g| (g.as_str(), e.properties.get(g).map(String::as_str).unwrap_or("")))
        .collect();
    Ok(Checked {
        tenant_id: e.tenant_id.clone(),
        source: e.source.clone(),
        id: e.id.clone(),
        event_type,
        subject: e.subject.clone(),
        time,
        meter: meter.name.clone(),
        meter_version: meter.version,
        value,
        unique_key,
        group_key: serde_json::to_string(&group).unwrap_or_else(|_| "{}".into()),
        properties: serde_json::to_value(&e.properties).unwrap_or(Value::Null),
    })
}

fn trim(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A decimal, exactly as written: no float, no NaN or infinity, no exponent; 28 significant
/// digits at most. SUM and COUNT refuse negatives; COUNT takes an empty value as 1.
pub fn parse_value(raw: &str, aggregation: Aggregation) -> Result<Decimal, Invalid> {
    let raw = raw.trim();
    if raw.is_empty() {
        return match aggregation {
            Aggregation::Count | Aggregation::UniqueCount => Ok(Decimal::ONE),
            _ => Err(invalid("value", "required: a decimal")),
        };
    }
    if raw.len() > 40 || raw.contains(['e', 'E']) {
        return Err(invalid(
            "value",
            "a plain decimal of at most 28 digits, e.g. 12.5",
        ));
    }
    let v = Decimal::from_str(raw).map_err(|_| invalid("value", "not a decimal"))?;
    if v.is_sign_negative() && !v.is_zero() && matches!(aggregation, Aggregation::Sum | Aggregation::Count) {
        return Err(invalid(
            "value",
            format!("negative, for a {} meter", aggregation.as_str()),
        ));
    }
    Ok(v.normalize())
}

/// A usage CloudEvent in JSON, as published on `keel.usage.<tenant>`:
/// `{id, source, type, subject, time, tenantid, data: {meter, value, properties}}`.
pub fn from_cloudevent(payload: &[u8]) -> Result<UsageInput, Invalid> {
    if payload.len() > 16 * 1024 {
        return Err(invalid("event", "larger than 16 KiB"));
    }
    let v: Value = serde_json::from_slice(payload).map_err(|e| invalid("event", format!("not JSON: {e}")))?;
    let s = |k: &'static str| -> Result<String, Invalid> {
        match v.get(k) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(invalid(k, "a string")),
        }
    };
    let time = match v.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|_| invalid("time", "RFC 3339"))?
                .with_timezone(&Utc),
        ),
        Some(_) => return Err(invalid("time", "RFC 3339")),
    };
    let data = v.get("data").ok_or_else(|| invalid("data", "required"))?;
    let meter = match data.get("meter") {
        Some(Value::String(m)) => m.clone(),
        _ => return Err(invalid("meter", "required: a string")),
    };
    let value = match data.get("value") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => return Err(invalid("value", "a decimal")),
    };
    let mut properties = BTreeMap::new();
    match data.get("properties") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => return Err(invalid("properties", format!("{}: a string", trim(k)))),
                };
                properties.insert(k.clone(), v);
            }
        }
        Some(_) => return Err(invalid("properties", "an object")),
    }
    Ok(UsageInput {
        id: s("id")?,
        source: s("source")?,
        event_type: s("type")?,
        subject: s("subject")?,
        time,
        tenant_id: s("tenantid")?,
        meter,
        value,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::meter::catalog;

    fn event() -> UsageInput {
        UsageInput {
            id: "e1".into(),
            source: "collector".into(),
            time: Some(Utc::now()),
            tenant_id: "t-acme".into(),
            meter: "cpu_core_seconds".into(),
            value: "12.50".into(),
            ..UsageInput::default()
        }
    }

    fn field(e: UsageInput) -> &'static str {
        check(&e, &catalog([]), Utc::now(), DEFAULT_LATENESS)
            .unwrap_err()
            .field
    }

    #[test]
    fn a_good_event_is_stored_exactly() {
        let c = check(&event(), &catalog([]), Utc::now(), DEFAULT_LATENESS).unwrap();
        assert_eq!(c.value.to_string(), "12.5");
        assert_eq!(c.group_key, "{}");
        assert_eq!(c.event_type, DEFAULT_TYPE);
    }

    #[test]
    fn hostile_events_name_the_field() {
        let with = |f: fn(&mut UsageInput)| {
            let mut e = event();
            f(&mut e);
            field(e)
        };
        assert_eq!(with(|e| e.value = "-1".into()), "value");
        assert_eq!(with(|e| e.value = "NaN".into()), "value");
        assert_eq!(with(|e| e.value = "1e3".into()), "value");
        assert_eq!(with(|e| e.value = "inf".into()), "value");
        assert_eq!(with(|e| e.meter = "nope".into()), "meter");
        assert_eq!(with(|e| e.time = Some(Utc::now() + Duration::hours(1))), "time");
        assert_eq!(with(|e| e.time = Some(Utc::now() - Duration::days(36))), "time");
        assert_eq!(with(|e| e.time = None), "time");
        assert_eq!(with(|e| e.id = String::new()), "id");
        assert_eq!(with(|e| e.id = "x".repeat(129)), "id");
        assert_eq!(with(|e| e.tenant_id = "a.b".into()), "tenant_id");
        assert_eq!(
            with(|e| {
                for i in 0..17 {
                    e.properties.insert(format!("p{i}"), "v".into());
                }
            }),
            "properties"
        );
        assert_eq!(
            with(|e| {
                for i in 0..16 {
                    e.properties.insert(format!("p{i}"), "v".repeat(256));
                }
            }),
            "properties"
        );
        assert_eq!(
            with(|e| {
                e.properties.insert("Bad".into(), "v".into());
            }),
            "properties"
        );
    }

    #[test]
    fn group_by_and_unique_values_come_from_the_properties() {
        let users = MeterDef {
            name: "users".into(),
            description: String::new(),
            aggregation: Aggregation::UniqueCount,
            group_by: vec!["region".into()],
            unit: String::new(),
            value_property: Some("user".into()),
            version: 3,
            builtin: false,
        };
        let meters = catalog([users]);
        let mut e = event();
        e.meter = "users".into();
        e.value = String::new();
        assert_eq!(
            check(&e, &meters, Utc::now(), DEFAULT_LATENESS)
                .unwrap_err()
                .field,
            "properties"
        );
        e.properties.insert("user".into(), "u-1".into());
        e.properties.insert("region".into(), "eu".into());
        let c = check(&e, &meters, Utc::now(), DEFAULT_LATENESS).unwrap();
        assert_eq!(c.unique_key.as_deref(), Some("u-1"));
        assert_eq!(c.group_key, r#"{"region":"eu"}"#);
        assert_eq!(c.meter_version, 3);
    }

    #[test]
    fn a_cloudevent_reads_like_the_grpc_form() {
        let json = serde_json::json!({
            "specversion": "1.0", "id": "e1", "source": "collector", "type": "keel.usage.v1",
            "time": "2026-12-04T10:00:00Z", "tenantid": "t-acme",
            "data": {"meter": "api_requests", "value": 3, "properties": {"method": "GetTenant"}}
        });
        let e = from_cloudevent(json.to_string().as_bytes()).unwrap();
        assert_eq!(e.value, "3");
        assert_eq!(e.properties["method"], "GetTenant");
        assert_eq!(e.tenant_id, "t-acme");
        assert_eq!(from_cloudevent(b"{").unwrap_err().field, "event");
        let nan = br#"{"id":"e","source":"s","tenantid":"t","data":{"meter":"api_requests","value":[1]}}"#;
        assert_eq!(from_cloudevent(nan).unwrap_err().field, "value");
    }
}
