//! `billing usage` (GetUsage) and `billing record` (RecordUsage).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SubsecRound, Utc};
use clap::Args;
use keel_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;

use super::{Api, GranularityArg, call, decimal, month_of, name_arg, tenant_arg, time_arg, to_proto};
use crate::UsageError;
use crate::client::ConnectionArgs;
use crate::output::{self, Format, Table, key_values, or_dash};
use crate::timeline::view;

/// The most usage events one RecordUsage call takes; a file with more is sent in calls of this
/// many.
const MAX_PER_CALL: usize = 1000;

#[derive(Args)]
pub struct UsageArgs {
    /// Tenant id or slug (a slug is looked up in the tenant service: needs tenant:read).
    #[arg(long, value_parser = tenant_arg)]
    tenant: String,
    /// The meter (`keelctl billing meters` lists them).
    #[arg(long, value_parser = name_arg)]
    meter: String,
    /// Usage at or after this time (RFC 3339, e.g. 2026-11-01T00:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    from: Option<DateTime<Utc>>,
    /// Usage before this time (RFC 3339; default: now). Needs --from.
    #[arg(long, value_name = "TIME", value_parser = time_arg, requires = "from")]
    to: Option<DateTime<Utc>>,
    /// Only the last DURATION up to now: 30m, 24h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = view::parse_last, conflicts_with_all = ["from", "to"])]
    last: Option<prost_types::Duration>,
    /// Buckets of an hour, a day or a month (UTC).
    #[arg(long, value_enum, default_value_t = GranularityArg::Hour)]
    granularity: GranularityArg,
    /// Usage as it was known at this recorded time (RFC 3339): events recorded later, such as
    /// late corrections, are left out.
    #[arg(long, value_name = "TIME", value_parser = time_arg)]
    as_of: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct UsageView {
    tenant_id: String,
    meter: String,
    aggregation: String,
    granularity: String,
    from: String,
    to: String,
    as_of: Option<String>,
    buckets: Vec<BucketView>,
    /// The buckets' values added up (SUM and COUNT meters; absent for the others, whose values
    /// do not add).
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<String>,
    events: u64,
}

#[derive(Serialize)]
struct BucketView {
    start: Option<String>,
    group: BTreeMap<String, String>,
    value: String,
    events: u64,
}

pub async fn usage(args: UsageArgs, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    // Whole seconds, rounded up so that usage of this very moment is in the period.
    let now = Utc::now().trunc_subsecs(0) + chrono::Duration::seconds(1);
    let (from, to) = match (args.last, args.from) {
        (Some(last), _) => (now - chrono::Duration::seconds(last.seconds), now),
        (None, Some(from)) => (from, args.to.unwrap_or(now)),
        (None, None) => (month_of(now), now),
    };
    if to <= from {
        return Err(UsageError(format!(
            "the period is empty: --to ({}) must be after --from ({})",
            output::rfc3339(to),
            output::rfc3339(from)
        ))
        .into());
    }
    let mut api = Api::connect(conn).await?;
    let tenant_id = api.tenant_id(&args.tenant).await?;
    let resp = api
        .meters
        .get_usage(call(pb::GetUsageRequest {
            tenant_id: tenant_id.clone(),
            meter: args.meter,
            from: Some(to_proto(from)),
            to: Some(to_proto(to)),
            granularity: pb::Granularity::from(args.granularity) as i32,
            as_recorded_at: args.as_of.map(to_proto),
        }))
        .await?
        .into_inner();
    let aggregation = resp.aggregation();
    let additive = matches!(aggregation, pb::Aggregation::Sum | pb::Aggregation::Count);
    let total = additive.then(|| {
        resp.buckets
            .iter()
            .try_fold(rust_decimal::Decimal::ZERO, |sum, b| {
                decimal(&b.value).map(|v| sum + v)
            })
            .map(|d| d.normalize().to_string())
            .unwrap_or_else(|| "?".into())
    });
    let view = UsageView {
        tenant_id,
        meter: resp.meter,
        aggregation: super::meters::aggregation_name(resp.aggregation),
        granularity: format!("{:?}", args.granularity).to_lowercase(),
        from: output::rfc3339(from),
        to: output::rfc3339(to),
        as_of: args.as_of.map(output::rfc3339),
        events: resp.buckets.iter().map(|b| b.events).sum(),
        buckets: resp
            .buckets
            .into_iter()
            .map(|b| BucketView {
                start: output::timestamp(b.start.as_ref()),
                group: b.group.into_iter().collect(),
                value: b.value,
                events: b.events,
            })
            .collect(),
        total,
    };
    if format == Format::Json {
        return output::print_json(&view);
    }
    let mut table = Table::new(&["start", "group", "value", "events"]);
    for b in &view.buckets {
        table.row(vec![
            or_dash(b.start.as_deref()),
            group_text(&b.group),
            b.value.clone(),
            b.events.to_string(),
        ]);
    }
    let mut text = table.render();
    let mut summary = vec![
        ("meter", format!("{} ({})", view.meter, view.aggregation)),
        ("period", format!("{} to {}", view.from, view.to)),
    ];
    if let Some(as_of) = &view.as_of {
        summary.push(("as recorded at", as_of.clone()));
    }
    if let Some(total) = &view.total {
        summary.push(("total", total.clone()));
    }
    summary.push(("events", view.events.to_string()));
    text.push('\n');
    text.push_str(&key_values(&summary));
    output::emit(&text)
}

/// `region=eu, plan=pro`, or `-` without group-by.
fn group_text(group: &BTreeMap<String, String>) -> String {
    if group.is_empty() {
        return "-".into();
    }
    group
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Args)]
pub struct RecordArgs {
    /// Tenant id or slug of the event (a slug is looked up in the tenant service: needs
    /// tenant:read); with --file, of the events that name no `tenantid`.
    #[arg(long, value_parser = tenant_arg, required_unless_present = "file")]
    tenant: Option<String>,
    /// The meter the usage counts towards.
    #[arg(long, value_parser = name_arg, required_unless_present = "file", conflicts_with = "file")]
    meter: Option<String>,
    /// A decimal (`12.5`); may be left out for COUNT meters (1).
    #[arg(long, value_parser = value_arg, allow_hyphen_values = true, conflicts_with = "file")]
    value: Option<String>,
    /// The event id (default: a new UUID). With --source and the tenant it is the dedupe key:
    /// repeat it to retry safely.
    #[arg(long, conflicts_with = "file")]
    id: Option<String>,
    /// Who reports the usage (default `keelctl`); with a file, for events that name none.
    #[arg(long, default_value = "keelctl")]
    source: String,
    /// When the usage happened (RFC 3339; default: now).
    #[arg(long, value_name = "TIME", value_parser = time_arg, conflicts_with = "file")]
    time: Option<DateTime<Utc>>,
    /// A property, `key=value` (repeatable): what the meter groups by.
    #[arg(long = "property", value_name = "KEY=VALUE", value_parser = property_arg, conflicts_with = "file")]
    properties: Vec<(String, String)>,
    /// Usage events from this JSON file (`-`: standard input): an array of CloudEvents, one
    /// event, or one event per line, each `{"id", "source", "time", "tenantid",
    /// "data": {"meter", "value", "properties"}}` as published on `keel.usage.<tenant>`.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
}

fn value_arg(s: &str) -> Result<String, String> {
    decimal(s)
        .map(|_| s.to_owned())
        .ok_or_else(|| format!("expected a decimal such as 12.5 (no exponent, NaN or infinity), got {s:?}"))
}

fn property_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((name_arg(k).map_err(|e| format!("key {k:?} {e}"))?, v.to_owned()))
}

#[derive(Serialize)]
struct Recorded {
    accepted: u32,
    duplicates: u32,
    results: Vec<ResultView>,
}

#[derive(Serialize)]
struct ResultView {
    index: usize,
    id: String,
    status: String,
}

pub async fn record(args: RecordArgs, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    // Everything local is checked before any connection: a bad file is a usage error.
    let mut events = match &args.file {
        Some(path) => read_events(path, &args.source)?,
        None => vec![pb::UsageEvent {
            id: args
                .id
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            source: args.source.clone(),
            time: Some(to_proto(args.time.unwrap_or_else(Utc::now))),
            meter: args.meter.clone().unwrap_or_default(),
            value: args.value.clone().unwrap_or_default(),
            properties: args.properties.iter().cloned().collect(),
            ..Default::default()
        }],
    };
    if events.is_empty() {
        return Err(UsageError("no usage events in the file".into()).into());
    }
    if args.tenant.is_none()
        && let Some(i) = events.iter().position(|e| e.tenant_id.is_empty())
    {
        return Err(UsageError(format!(
            "event {i} names no tenantid: add it, or pass --tenant for such events"
        ))
        .into());
    }
    let mut api = Api::connect(conn).await?;
    if let Some(tenant) = &args.tenant {
        let tenant_id = api.tenant_id(tenant).await?;
        for e in events.iter_mut().filter(|e| e.tenant_id.is_empty()) {
            e.tenant_id = tenant_id.clone();
        }
    }
    let mut out = Recorded {
        accepted: 0,
        duplicates: 0,
        results: Vec::with_capacity(events.len()),
    };
    let total = events.len();
    for (n, chunk) in events.chunks(MAX_PER_CALL).enumerate() {
        let first = n * MAX_PER_CALL;
        let resp = match api
            .meters
            .record_usage(call(pb::RecordUsageRequest {
                events: chunk.to_vec(),
            }))
            .await
        {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                if total > MAX_PER_CALL {
                    eprintln!(
                        "the call with events {first}..{} failed (its indexes count from {first}); \
                         the {first} events before it were stored, and sending the file again \
                         counts each event once",
                        first + chunk.len() - 1
                    );
                }
                return Err(status.into());
            }
        };
        out.accepted += resp.accepted;
        out.duplicates += resp.duplicates;
        out.results.extend(resp.results.into_iter().map(|r| ResultView {
            index: first + r.index as usize,
            id: r.id,
            status: r.status,
        }));
    }
    if format == Format::Json {
        return output::print_json(&out);
    }
    let mut table = Table::new(&["index", "id", "status"]);
    for r in &out.results {
        table.row(vec![r.index.to_string(), r.id.clone(), r.status.clone()]);
    }
    let mut text = table.render();
    text.push('\n');
    text.push_str(&key_values(&[
        ("accepted", out.accepted.to_string()),
        ("duplicates", out.duplicates.to_string()),
    ]));
    output::emit(&text)
}

/// The usage events of `path`: a JSON array, one object, or one object per line.
fn read_events(path: &Path, default_source: &str) -> Result<Vec<pb::UsageEvent>, UsageError> {
    let name = path.display();
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| UsageError(format!("--file -: {e}")))?
    } else {
        std::fs::read_to_string(path).map_err(|e| UsageError(format!("--file {name}: {e}")))?
    };
    let docs: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Array(items)) => items,
        Ok(one) => vec![one],
        Err(whole) => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    let why = if i == 0 { whole.to_string() } else { e.to_string() };
                    UsageError(format!("--file {name}: line {}: not JSON ({why})", i + 1))
                })
            })
            .collect::<Result<_, _>>()?,
    };
    docs.iter()
        .enumerate()
        .map(|(i, d)| {
            cloudevent(d, default_source)
                .map_err(|(field, why)| UsageError(format!("--file {name}: event {i}: {field}: {why}")))
        })
        .collect()
}

/// One usage CloudEvent, read as leniently as the service reads it from NATS (numbers and
/// booleans become their text); the service checks the rest.
fn cloudevent(v: &Value, default_source: &str) -> Result<pb::UsageEvent, (&'static str, String)> {
    let text = |v: Option<&Value>, field: &'static str| -> Result<String, (&'static str, String)> {
        match v {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err((field, "must be a string".into())),
        }
    };
    let scalar = |v: &Value, field: &'static str| -> Result<String, (&'static str, String)> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err((field, "must be a string or a number".into())),
        }
    };
    let Value::Object(_) = v else {
        return Err(("event", "must be a JSON object".into()));
    };
    let data = match v.get("data") {
        Some(d @ Value::Object(_)) => d,
        _ => return Err(("data", "required: {\"meter\", \"value\", \"properties\"}".into())),
    };
    let time = match text(v.get("time"), "time")? {
        t if t.is_empty() => None,
        t => Some(to_proto(time_arg(&t).map_err(|e| ("time", e))?)),
    };
    let value = match data.get("value") {
        None | Some(Value::Null) => String::new(),
        Some(Value::Bool(_)) => return Err(("data.value", "must be a decimal".into())),
        Some(v) => scalar(v, "data.value")?,
    };
    let properties = match data.get("properties") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| Ok((k.clone(), scalar(v, "data.properties")?)))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(("data.properties", "must be an object".into())),
    };
    let source = text(v.get("source"), "source")?;
    Ok(pb::UsageEvent {
        id: text(v.get("id"), "id")?,
        source: if source.is_empty() {
            default_source.to_owned()
        } else {
            source
        },
        r#type: text(v.get("type"), "type")?,
        subject: text(v.get("subject"), "subject")?,
        time,
        tenant_id: text(v.get("tenantid"), "tenantid")?,
        meter: text(data.get("meter"), "data.meter")?,
        value,
        properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevents_are_read_like_the_service_reads_them() {
        let v: Value = serde_json::json!({
            "id": "e1", "time": "2026-11-03T10:00:00Z", "tenantid": "t1",
            "data": {"meter": "api_requests", "value": 12.5, "properties": {"region": "eu", "n": 2}},
        });
        let e = cloudevent(&v, "keelctl").unwrap();
        assert_eq!(
            (e.id.as_str(), e.source.as_str(), e.value.as_str()),
            ("e1", "keelctl", "12.5")
        );
        assert_eq!(e.properties.get("n").map(String::as_str), Some("2"));
        assert_eq!(e.time.map(|t| t.seconds), Some(1_793_700_000));
        assert_eq!(
            cloudevent(&serde_json::json!({"id": "x"}), "k").unwrap_err().0,
            "data"
        );
        assert_eq!(
            cloudevent(&serde_json::json!({"id": 1, "data": {}}), "k")
                .unwrap_err()
                .0,
            "id"
        );
        assert!(cloudevent(&serde_json::json!([1]), "k").is_err());
    }

    #[test]
    fn properties_are_key_value() {
        assert_eq!(
            property_arg("region=eu-west=1").unwrap(),
            ("region".into(), "eu-west=1".into())
        );
        assert!(property_arg("region").is_err());
        assert!(property_arg("Region=eu").is_err());
    }
}
