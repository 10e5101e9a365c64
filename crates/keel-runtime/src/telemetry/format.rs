//! The JSON line format: `ts, level, service, version, message, target`, then the fields of the
//! enclosing spans (`tenant_id`, `request_id`, ...) and of the event, flattened.

use std::fmt;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

const RESERVED: [&str; 6] = ["ts", "level", "service", "version", "message", "target"];

/// Where the formatter finds the OpenTelemetry layer, to add `trace_id` / `span_id` to lines
/// logged inside a traced span. Filled by [`super::DispatchCapture`] once the subscriber exists.
pub(crate) type OtelDispatch = Arc<OnceLock<WeakDispatch>>;

pub(crate) struct JsonLines {
    pub(crate) service: String,
    pub(crate) version: &'static str,
    pub(crate) otel: Option<OtelDispatch>,
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);

        let mut fields = Map::new();
        let mut leaf = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                leaf = Some(span.id());
                let extensions = span.extensions();
                if let Some(formatted) = extensions.get::<FormattedFields<JsonFields>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str(&formatted.fields)
                {
                    fields.extend(map);
                }
            }
        }
        if !fields.contains_key("trace_id")
            && let (Some(id), Some(otel)) = (leaf, &self.otel)
            && let Some((trace_id, span_id)) = otel.get().and_then(|d| otel_ids(d, &id))
        {
            fields.insert("trace_id".into(), Value::String(trace_id));
            fields.insert("span_id".into(), Value::String(span_id));
        }
        fields.extend(visitor.fields);

        let target = visitor.log_target.as_deref().unwrap_or(meta.target());
        let head: [(&str, &str); 6] = [
            (
                "ts",
                &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
            ("level", meta.level().as_str()),
            ("service", &self.service),
            ("version", self.version),
            ("message", visitor.message.as_deref().unwrap_or("")),
            ("target", target),
        ];
        let mut first = true;
        writer.write_char('{')?;
        for (key, value) in head {
            write_pair(&mut writer, &mut first, key, &Value::String(value.to_owned()))?;
        }
        for (key, value) in &fields {
            if RESERVED.contains(&key.as_str()) {
                write_pair(&mut writer, &mut first, &format!("field_{key}"), value)?;
            } else {
                write_pair(&mut writer, &mut first, key, value)?;
            }
        }
        writer.write_str("}\n")
    }
}

fn write_pair(writer: &mut Writer<'_>, first: &mut bool, key: &str, value: &Value) -> fmt::Result {
    if !std::mem::take(first) {
        writer.write_char(',')?;
    }
    let key = serde_json::to_string(key).map_err(|_| fmt::Error)?;
    let value = serde_json::to_string(value).map_err(|_| fmt::Error)?;
    write!(writer, "{key}:{value}")
}

fn otel_ids(dispatch: &WeakDispatch, id: &tracing::span::Id) -> Option<(String, String)> {
    let dispatch = dispatch.upgrade()?;
    let cx = tracing_opentelemetry::get_otel_context(id, &dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Collects an event's fields as JSON values; `message` and the `log.*` fields of records
/// bridged from the `log` crate are kept apart.
#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    log_target: Option<String>,
    fields: Map<String, Value>,
}

impl JsonVisitor {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => {
                self.message = Some(match value {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
            }
            "log.target" => self.log_target = value.as_str().map(str::to_owned),
            name if name.starts_with("log.") => {}
            name => {
                self.fields.insert(name.to_owned(), value);
            }
        }
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.put(field, value);
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        self.put(field, text.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}
