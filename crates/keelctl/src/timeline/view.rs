//! Timeline events as shown, and the parsing of the time and id arguments of `timeline` and
//! `obs`: usage errors (exit 2) name what is expected.

use chrono::{DateTime, Utc};
use keel_proto::v1 as pb;
use serde::Serialize;
use serde_json::Value;

use crate::output::{self, or_dash};

/// The longest `--last` the timeline service accepts (10 years).
const MAX_LAST_DAYS: u64 = 3660;

/// One timeline event. `details` (and `stored`, from `timeline get`) are the JSON documents
/// themselves, not strings holding JSON.
#[derive(Serialize)]
pub struct EventView {
    pub event_id: String,
    pub ts: Option<String>,
    pub tenant_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub project_id: String,
    pub kind: String,
    pub actor: String,
    pub resource_type: String,
    pub resource_id: String,
    pub trace_id: String,
    pub result: String,
    pub source: String,
    pub digest: String,
    pub details: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored: Option<Value>,
    /// For table columns and offsets: the event time itself.
    #[serde(skip)]
    pub time: Option<DateTime<Utc>>,
}

impl From<pb::TimelineEvent> for EventView {
    fn from(e: pb::TimelineEvent) -> Self {
        let time = e.ts.as_ref().and_then(|t| {
            let nanos = u32::try_from(t.nanos).ok()?;
            DateTime::<Utc>::from_timestamp(t.seconds, nanos)
        });
        Self {
            event_id: e.event_id,
            ts: output::timestamp(e.ts.as_ref()),
            tenant_id: e.tenant_id,
            project_id: e.project_id,
            kind: e.kind,
            actor: e.actor,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            trace_id: e.trace_id,
            result: e.result,
            source: e.source,
            digest: e.digest,
            details: json_or_text(&e.details_json),
            stored: (!e.stored_json.is_empty()).then(|| json_or_text(&e.stored_json)),
            time,
        }
    }
}

impl EventView {
    /// `tenant/0192…`, the type alone, or `-`.
    pub fn resource(&self) -> String {
        match (self.resource_type.as_str(), self.resource_id.as_str()) {
            ("", "") => "-".to_owned(),
            (t, "") => t.to_owned(),
            (t, id) => format!("{t}/{id}"),
        }
    }

    /// The first 8 hex digits of the trace id (the full one is in `--output json` and `get`).
    pub fn trace_short(&self) -> String {
        or_dash(Some(self.trace_id.get(..8).unwrap_or(&self.trace_id)))
    }

    /// Milliseconds are enough to read a table and keep the column one width.
    pub fn time_cell(&self) -> String {
        match self.time {
            Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
            None => "-".to_owned(),
        }
    }

    /// The cells of a table row: time, kind, result, actor, resource, trace, id.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.time_cell(),
            or_dash(Some(&self.kind)),
            or_dash(Some(&self.result)),
            or_dash(Some(&self.actor)),
            self.resource(),
            self.trace_short(),
            self.event_id.clone(),
        ]
    }
}

pub const HEADER: [&str; 7] = ["time", "kind", "result", "actor", "resource", "trace", "id"];

/// A document the service stored as JSON; anything else (which it should not send) as text.
fn json_or_text(s: &str) -> Value {
    if s.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

/// `--last`: a whole number and a unit, `30s`, `15m`, `1h`, `7d`.
pub fn parse_last(s: &str) -> Result<prost_types::Duration, String> {
    let usage = || format!("expected a whole number and a unit s, m, h or d (30s, 15m, 1h, 7d), got {s:?}");
    let Some(unit) = s.chars().last() else {
        return Err(usage());
    };
    let number = &s[..s.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(usage());
    }
    let unit_secs: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(usage()),
    };
    let max = MAX_LAST_DAYS * 86_400;
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_secs))
        .filter(|&secs| secs <= max)
        .ok_or_else(|| format!("must be at most {MAX_LAST_DAYS}d"))?;
    if seconds == 0 {
        return Err("must be more than zero".into());
    }
    Ok(prost_types::Duration {
        seconds: i64::try_from(seconds).map_err(|_| usage())?,
        nanos: 0,
    })
}

/// `--from` / `--to`: RFC 3339 with an offset (`2026-01-31T09:00:00Z`, `…+01:00`).
pub fn parse_time(s: &str) -> Result<prost_types::Timestamp, String> {
    let t = DateTime::parse_from_rfc3339(s)
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-01-31T09:00:00Z ({e})"))?
        .with_timezone(&Utc);
    Ok(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

/// An event id: a UUID, printed back in its canonical form.
pub fn parse_event_id(s: &str) -> Result<String, String> {
    uuid::Uuid::try_parse(s)
        .map(|u| u.to_string())
        .map_err(|_| "must be an event id (a UUID)".into())
}

/// A W3C trace id: 32 hex digits, not all zero; upper case is accepted and lowered.
pub fn parse_trace_id(s: &str) -> Result<String, String> {
    let ok = s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0');
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("must be a trace id: 32 hexadecimal digits, not all zero".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_accepts_a_number_and_one_unit() {
        assert_eq!(parse_last("30s").unwrap().seconds, 30);
        assert_eq!(parse_last("15m").unwrap().seconds, 900);
        assert_eq!(parse_last("1h").unwrap().seconds, 3600);
        assert_eq!(parse_last("7d").unwrap().seconds, 7 * 86_400);
        assert_eq!(parse_last("3660d").unwrap().seconds, 3660 * 86_400);
        for bad in [
            "", "h", "1", "1x", "1.5h", "-1h", "+1h", "1h30m", " 1h", "1H", "1é", "5w",
        ] {
            let e = parse_last(bad).unwrap_err();
            assert!(e.contains("30s, 15m, 1h, 7d"), "{bad:?}: {e}");
        }
        assert_eq!(parse_last("0s").unwrap_err(), "must be more than zero");
        assert!(parse_last("3661d").unwrap_err().contains("at most"));
        assert!(
            parse_last("99999999999999999999d")
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn times_are_rfc3339_with_an_offset() {
        let t = parse_time("2025-03-14T10:30:00.5+01:00").unwrap();
        assert_eq!((t.seconds, t.nanos), (1_741_944_600, 500_000_000));
        assert!(parse_time("2025-03-14 10:30").is_err());
        assert!(parse_time("2025-03-14T10:30:00").is_err(), "no offset");
    }

    #[test]
    fn ids_are_checked_before_any_call() {
        assert_eq!(
            parse_trace_id("4BF92F3577B34DA6A3CE929D0E0E4736").unwrap(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(parse_trace_id(&"0".repeat(32)).is_err());
        assert!(parse_trace_id("4bf92f35").is_err());
        assert!(parse_trace_id(&"g".repeat(32)).is_err());
        assert!(parse_event_id("0192f0c0-aaaa-7bbb-8ccc-dddddddddddd").is_ok());
        assert!(parse_event_id("nope").is_err());
    }

    #[test]
    fn events_show_their_json_and_short_cells() {
        let v = EventView::from(pb::TimelineEvent {
            event_id: "e1".into(),
            ts: Some(prost_types::Timestamp {
                seconds: 1_741_944_600,
                nanos: 12_345_678,
            }),
            kind: "tenant.TenantCreated".into(),
            resource_type: "tenant".into(),
            resource_id: "t1".into(),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            details_json: r#"{"tier":"low"}"#.into(),
            ..Default::default()
        });
        assert_eq!(v.details["tier"], "low");
        assert!(v.stored.is_none());
        assert_eq!(
            v.cells()[..6],
            [
                "2025-03-14T09:30:00.012Z",
                "tenant.TenantCreated",
                "-",
                "-",
                "tenant/t1",
                "4bf92f35"
            ]
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["ts"], "2025-03-14T09:30:00.012345678Z");
        assert!(
            json.get("stored").is_none() && json.get("time").is_none(),
            "{json}"
        );
    }
}
