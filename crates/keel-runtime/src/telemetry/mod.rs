//! Logging (JSON lines on stderr, scrubbed), OpenTelemetry traces over OTLP, and W3C
//! `traceparent` helpers.
//!
//! Logs go to stderr so stdout stays a machine channel: the `listening` announcement and
//! `--print-config` output.

pub mod client;
mod format;
pub mod sampling;
mod scrub;
mod trace_context;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Dispatch, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::JsonFields;
use tracing_subscriber::fmt::{MakeWriter, TestWriter};
use tracing_subscriber::layer::{Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{Config, LogFormat};
use crate::error::{Error, Result};
use format::{JsonLines, OtelDispatch};

pub use scrub::{ScrubbingLineWriter, ScrubbingWriter, is_secret_key, scrub};
pub use trace_context::{
    call_traceparent, current_traceparent, new_traceparent, parse_traceparent, set_parent_from_traceparent,
    traceparent_of,
};

/// Version reported in every log line and in the OpenTelemetry resource.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

const OTEL_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Keeps the OpenTelemetry pipeline alive; flushes and shuts it down when dropped.
///
/// Drop it on a multi-threaded runtime (as `#[tokio::main]` gives) or outside any runtime: the
/// exporter needs a Tokio worker to send the last batch.
#[must_use = "dropping the guard shuts trace export down"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    exporting: bool,
}

impl TelemetryGuard {
    /// Whether traces are being exported.
    pub fn exporting(&self) -> bool {
        self.exporting
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(OTEL_SHUTDOWN_TIMEOUT)
        {
            eprintln!("keel-runtime: flushing traces failed: {e}");
        }
    }
}

/// Installs the global tracing subscriber described by `config` (level filter, JSON or pretty
/// format, scrubbing, and OTLP export when `config.otlp_endpoint` is set).
///
/// Fails if a global subscriber is already installed. With OTLP on, call it inside a Tokio
/// runtime.
pub fn init(config: &Config) -> Result<TelemetryGuard> {
    let filter = EnvFilter::try_new(&config.log_level).map_err(|e| Error::Config {
        name: "KEEL_LOG".into(),
        value: config.log_level.clone(),
        reason: e.to_string(),
    })?;
    // Spans always have OpenTelemetry ids (log lines carry `trace_id` / `span_id`, events and
    // calls the span's `traceparent`); they are exported only with an endpoint.
    let provider = Some(match &config.otlp_endpoint {
        Some(endpoint) => tracer_provider(&config.service, endpoint, &config.sampling)?,
        None => SdkTracerProvider::builder()
            .with_sampler(sampling::RatioSampler {
                ratio: config.sampling.ratio,
            })
            .build(),
    });
    let otel_dispatch: Option<OtelDispatch> = provider.as_ref().map(|_| Arc::default());
    // Traces do not follow the log level: spans at INFO and above always exist (KEEL_LOG=warn
    // must not switch tracing off); log events do follow it.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(format!("keel-{}", config.service)))
            .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                m.is_span() && *m.level() <= tracing::Level::INFO
            }))
    });
    let writer = ScrubbingWriter::new(std::io::stderr);
    let fmt_layer = match config.log_format {
        LogFormat::Json => json_layer(&config.service, otel_dispatch.clone(), writer).boxed(),
        LogFormat::Pretty => pretty_layer(writer).boxed(),
    };
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(otel_dispatch.map(DispatchCapture))
        .with(fmt_layer.with_filter(LogFilter(filter)))
        .try_init()
        .map_err(|e| Error::Telemetry(format!("cannot install the tracing subscriber: {e}")))?;
    if let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    Ok(TelemetryGuard {
        provider,
        exporting: config.otlp_endpoint.is_some(),
    })
}

/// Installs a scrubbed, human-readable subscriber that writes through the test harness'
/// capture; does nothing if one is installed already. Level from `KEEL_LOG`, default `info`.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_env("KEEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(ScrubbingWriter::new(TestWriter::new()))
        .try_init();
}

/// The JSON-lines layer of [`init`], writing scrubbed lines to `writer`.
fn json_layer<S, W>(
    service: &str,
    otel: Option<OtelDispatch>,
    writer: ScrubbingWriter<W>,
) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLines {
            service: service.to_owned(),
            version: VERSION,
            otel,
        })
        .with_writer(writer)
}

/// The human-readable layer of [`init`], writing scrubbed lines to `writer`.
fn pretty_layer<S, W>(writer: ScrubbingWriter<W>) -> impl Layer<S> + Send + Sync + 'static
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .compact()
        // Escape codes between a key and its value would hide the pair from the scrubber.
        .with_ansi(false)
        .with_writer(writer)
}

fn tracer_provider(
    service: &str,
    endpoint: &str,
    sampling: &sampling::Sampling,
) -> Result<SdkTracerProvider> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::Telemetry(
            "OTLP export needs a Tokio runtime: initialise telemetry inside the runtime".into(),
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| Error::Telemetry(format!("OTLP exporter for {endpoint}: {e}")))?;
    let resource = Resource::builder()
        .with_service_name(format!("keel-{service}"))
        .with_attribute(opentelemetry::KeyValue::new("service.version", VERSION))
        .build();
    let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build();
    Ok(SdkTracerProvider::builder()
        .with_sampler(sampling::RatioSampler {
            ratio: sampling.ratio,
        })
        .with_span_processor(sampling::KeepProcessor::new(batch, sampling.clone()))
        .with_resource(resource)
        .build())
}

/// The log layer's filter: `KEEL_LOG` for events; spans at INFO and above always, so a line
/// logged at any level carries the fields and trace of the spans it is in.
struct LogFilter(EnvFilter);

impl<S: Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::layer::Filter<S> for LogFilter {
    fn enabled(&self, meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        (meta.is_span() && *meta.level() <= tracing::Level::INFO)
            || tracing_subscriber::layer::Filter::enabled(&self.0, meta, cx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        let own = tracing_subscriber::layer::Filter::<S>::max_level_hint(&self.0);
        Some(own.map_or(tracing::level_filters::LevelFilter::TRACE, |l| {
            l.max(tracing::level_filters::LevelFilter::INFO)
        }))
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        tracing_subscriber::layer::Filter::on_new_span(&self.0, attrs, id, cx);
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        cx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        tracing_subscriber::layer::Filter::on_record(&self.0, id, values, cx);
    }

    fn on_enter(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::layer::Filter::on_enter(&self.0, id, cx);
    }

    fn on_exit(&self, id: &tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::layer::Filter::on_exit(&self.0, id, cx);
    }

    fn on_close(&self, id: tracing::span::Id, cx: tracing_subscriber::layer::Context<'_, S>) {
        tracing_subscriber::layer::Filter::on_close(&self.0, id, cx);
    }
}

/// Hands the finished subscriber to the JSON formatter, which needs it to look up the
/// OpenTelemetry context of a span.
struct DispatchCapture(OtelDispatch);

impl<S: Subscriber> Layer<S> for DispatchCapture {
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap().clone();
            String::from_utf8(bytes)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect()
        }
    }

    #[test]
    fn json_lines_are_scrubbed_and_carry_span_fields() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(
            "tenant",
            None,
            ScrubbingWriter::new(buffer.clone()),
        ));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", tenant_id = "t-42", request_id = "r-7");
            let _entered = span.enter();
            tracing::info!(
                secret = "s3cr3t-value",
                attempt = 3,
                "login for alice@example.com with Bearer abc.def.ghi accepted"
            );
        });
        let raw = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        for leaked in ["alice@example.com", "abc.def.ghi", "s3cr3t-value"] {
            assert!(!raw.contains(leaked), "{leaked} leaked into {raw}");
        }
        let lines = buffer.lines();
        assert_eq!(lines.len(), 1, "{raw}");
        let line = &lines[0];
        assert_eq!(
            line["message"],
            "login for [email] with Bearer [redacted] accepted"
        );
        assert_eq!(line["secret"], "[redacted]");
        assert_eq!(line["attempt"], 3);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["service"], "tenant");
        assert_eq!(line["version"], VERSION);
        assert_eq!(line["tenant_id"], "t-42");
        assert_eq!(line["request_id"], "r-7");
        assert!(line["target"].as_str().unwrap().starts_with("keel_runtime"));
        assert!(line["ts"].as_str().unwrap().ends_with('Z'));
        assert!(raw.starts_with(r#"{"ts":"#), "{raw}");
        assert!(line.get("trace_id").is_none());
    }

    #[test]
    fn inner_span_fields_win_and_events_outside_spans_work() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(
            "billing",
            None,
            ScrubbingWriter::new(buffer.clone()),
        ));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "custom", message = "no span");
            let outer = tracing::info_span!("outer", tenant_id = "a", request_id = "r");
            let _o = outer.enter();
            let inner = tracing::info_span!("inner", tenant_id = "b");
            let _i = inner.enter();
            tracing::error!(level = "shadowed", "nested");
        });
        let lines = buffer.lines();
        assert_eq!(lines[0]["message"], "no span");
        assert_eq!(lines[0]["target"], "custom");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[1]["tenant_id"], "b");
        assert_eq!(lines[1]["request_id"], "r");
        assert_eq!(lines[1]["level"], "ERROR");
        assert_eq!(lines[1]["field_level"], "shadowed");
    }

    #[test]
    fn with_opentelemetry_lines_carry_the_trace_and_traceparent_is_available() {
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let otel: OtelDispatch = Arc::default();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(DispatchCapture(otel.clone()))
            .with(json_layer(
                "tenant",
                Some(otel),
                ScrubbingWriter::new(buffer.clone()),
            ));
        let traceparent = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("call");
            let _entered = span.enter();
            tracing::info!("inside");
            current_traceparent()
        });
        let traceparent = traceparent.expect("a traceparent inside a traced span");
        let (trace_id, span_id) = parse_traceparent(&traceparent).unwrap();
        let line = &buffer.lines()[0];
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["span_id"], span_id.as_str());
    }

    #[test]
    fn pretty_lines_are_scrubbed_too() {
        let buffer = Buffer::default();
        let subscriber =
            tracing_subscriber::registry().with(pretty_layer(ScrubbingWriter::new(buffer.clone())));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", api_key = "k-123456");
            let _entered = span.enter();
            tracing::info!(password = "hunter2", to = "bob@example.org", "sent");
        });
        let raw = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        for leaked in ["k-123456", "hunter2", "bob@example.org"] {
            assert!(!raw.contains(leaked), "{leaked} leaked into {raw}");
        }
        assert!(raw.contains("sent"), "{raw}");
    }

    #[test]
    fn otlp_export_needs_a_runtime() {
        let err =
            tracer_provider("tenant", "http://127.0.0.1:4317", &sampling::Sampling::default()).unwrap_err();
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_pipeline_builds_and_shuts_down_without_a_collector() {
        let provider =
            tracer_provider("tenant", "http://127.0.0.1:1", &sampling::Sampling::default()).unwrap();
        let tracer = provider.tracer("test");
        opentelemetry::trace::Tracer::in_span(&tracer, "work", |_| {});
        let guard = TelemetryGuard {
            provider: Some(provider),
            exporting: true,
        };
        assert!(guard.exporting());
        let dropped = tokio::task::spawn_blocking(move || drop(guard));
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .expect("shutdown is bounded")
            .unwrap();
    }

    #[test]
    fn a_remote_parent_is_adopted() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let current = tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("consume");
            assert!(set_parent_from_traceparent(&span, parent));
            let _entered = span.enter();
            current_traceparent()
        });
        let current = current.unwrap();
        assert!(
            current.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{current}"
        );
        assert!(!current.contains("00f067aa0ba902b7"), "{current}");
    }
}
