//! Bytes to [`Envelope`] in two steps: bytes to a JSON value (so syntax errors keep their line
//! and column), then field by field (so every other error names its field).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Envelope, MAX_ENVELOPE_BYTES, SPEC_VERSION, rules};
use crate::error::{ParseError, Result, UNKNOWN_FIELD};

/// Every top-level field an envelope may have.
pub(crate) const FIELDS: [&str; 14] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "tenantid",
    "actor",
    "traceparent",
    "aggregatetype",
    "aggregateid",
    "sequence",
    "data",
];

/// How many unknown field names an error lists, and how much of each.
const MAX_LISTED_UNKNOWN: usize = 5;
const MAX_LISTED_CHARS: usize = 64;

pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope> {
    if bytes.len() > MAX_ENVELOPE_BYTES {
        return Err(ParseError::TooLarge {
            size: bytes.len(),
            limit: MAX_ENVELOPE_BYTES,
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| json_error(&e))?;
    let Value::Object(mut map) = value else {
        return Err(not_an_object(bytes, &value));
    };

    // specversion first: an envelope of another version may have other fields altogether.
    let specversion = take_string(&mut map, "specversion")?;
    if specversion != SPEC_VERSION {
        return Err(ParseError::UnsupportedVersion { specversion });
    }
    reject_unknown(&map)?;

    let envelope = Envelope {
        specversion,
        id: take_id(&mut map)?,
        source: take_string(&mut map, "source")?,
        event_type: take_string(&mut map, "type")?,
        subject: take_string(&mut map, "subject")?,
        time: take_time(&mut map)?,
        datacontenttype: take_string(&mut map, "datacontenttype")?,
        tenantid: take_string(&mut map, "tenantid")?,
        actor: take_string(&mut map, "actor")?,
        traceparent: take_optional_string(&mut map, "traceparent")?,
        aggregatetype: take_string(&mut map, "aggregatetype")?,
        aggregateid: take_string(&mut map, "aggregateid")?,
        sequence: take_sequence(&mut map)?,
        data: take(&mut map, "data")?,
    };
    rules::validate(&envelope)?;
    Ok(envelope)
}

fn json_error(e: &serde_json::Error) -> ParseError {
    let (line, column) = (e.line(), e.column());
    let message = e.to_string();
    // serde_json appends the position to its message; it is in the fields already.
    let suffix = format!(" at line {line} column {column}");
    let message = message
        .strip_suffix(&suffix)
        .map(str::to_owned)
        .unwrap_or(message);
    ParseError::Json {
        line,
        column,
        message,
    }
}

fn not_an_object(bytes: &[u8], value: &Value) -> ParseError {
    // Point at the first byte of the value, as serde_json would for a syntax error.
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(0);
    let before = &bytes[..start];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let column = start - before.iter().rposition(|&b| b == b'\n').map_or(0, |nl| nl + 1) + 1;
    ParseError::Json {
        line,
        column,
        message: format!("expected a JSON object, found {}", kind(value)),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn reject_unknown(map: &Map<String, Value>) -> Result<()> {
    let mut unknown: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| !FIELDS.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    let total = unknown.len();
    let mut listed: Vec<String> = unknown
        .into_iter()
        .take(MAX_LISTED_UNKNOWN)
        .map(|k| format!("{:?}", k.chars().take(MAX_LISTED_CHARS).collect::<String>()))
        .collect();
    if total > MAX_LISTED_UNKNOWN {
        listed.push(format!("and {} more", total - MAX_LISTED_UNKNOWN));
    }
    Err(ParseError::invalid(
        UNKNOWN_FIELD,
        format!("unknown top-level field(s): {}", listed.join(", ")),
    ))
}

/// The value of a required field; `null` counts as absent (CloudEvents JSON format).
fn take(map: &mut Map<String, Value>, field: &'static str) -> Result<Value> {
    match map.remove(field) {
        None | Some(Value::Null) => Err(ParseError::MissingField { field }),
        Some(value) => Ok(value),
    }
}

fn take_string(map: &mut Map<String, Value>, field: &'static str) -> Result<String> {
    match take(map, field)? {
        Value::String(s) => Ok(s),
        other => Err(ParseError::invalid(
            field,
            format!("must be a string, found {}", kind(&other)),
        )),
    }
}

fn take_optional_string(map: &mut Map<String, Value>, field: &'static str) -> Result<Option<String>> {
    match take(map, field) {
        Ok(Value::String(s)) => Ok(Some(s)),
        Ok(other) => Err(ParseError::invalid(
            field,
            format!("must be a string, found {}", kind(&other)),
        )),
        Err(ParseError::MissingField { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn take_id(map: &mut Map<String, Value>) -> Result<Uuid> {
    let s = take_string(map, "id")?;
    // Only the hyphenated form, so one id has one spelling on the wire.
    match Uuid::try_parse(&s) {
        Ok(id) if s.len() == 36 => Ok(id),
        _ => Err(ParseError::invalid("id", "must be a UUID in hyphenated form")),
    }
}

fn take_time(map: &mut Map<String, Value>) -> Result<DateTime<Utc>> {
    let s = take_string(map, "time")?;
    let time = DateTime::parse_from_rfc3339(&s)
        .map_err(|e| ParseError::invalid("time", format!("not an RFC 3339 timestamp: {e}")))?;
    if time.offset().local_minus_utc() != 0 {
        return Err(ParseError::invalid("time", "must be in UTC (offset Z)"));
    }
    Ok(time.with_timezone(&Utc))
}

fn take_sequence(map: &mut Map<String, Value>) -> Result<u64> {
    match take(map, "sequence")? {
        Value::Number(n) => n
            .as_u64()
            .filter(|&n| n >= 1)
            .ok_or_else(|| ParseError::invalid("sequence", "must be an integer of at least 1")),
        other => Err(ParseError::invalid(
            "sequence",
            format!("must be an integer, found {}", kind(&other)),
        )),
    }
}
