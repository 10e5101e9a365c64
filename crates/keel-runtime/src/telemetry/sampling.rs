//! Which spans are exported: head sampling by trace id with a configurable ratio, a per-tenant
//! override, and errors and slow spans always kept.
//!
//! The head decision ([`RatioSampler`]) is made from the trace id alone, so every service
//! decides the same for one trace: a sampled trace is whole. Spans outside the ratio are still
//! *recorded* (cheaply, never exported by themselves) so that [`KeepProcessor`] can keep one
//! that ended in an error, ran longer than the slow threshold, or belongs to a tenant whose
//! override ratio takes it (incident mode raises it). Such a span is exported on its own,
//! marked sampled; the rest of its trace is not.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanProcessor,
};

use crate::error::{Error, Result};

/// The attribute spans name their tenant with (the request layer and the consumers set it).
pub const TENANT_ATTRIBUTE: &str = "tenant_id";

/// How spans are sampled (`KEEL_TRACE_SAMPLE_RATIO`, `KEEL_TRACE_SLOW_MS`,
/// `KEEL_TRACE_TENANT_RATIOS`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Sampling {
    /// Share of traces exported whole, 0.0..=1.0.
    pub ratio: f64,
    /// A span at least this long is exported whatever the ratio.
    #[serde(serialize_with = "millis")]
    pub slow: Duration,
    /// Per-tenant ratios that replace `ratio` for that tenant's spans when higher.
    pub tenants: HashMap<String, f64>,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_millis())
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            ratio: 1.0,
            slow: Duration::from_millis(500),
            tenants: HashMap::new(),
        }
    }
}

impl Sampling {
    /// From the three settings (each optional); errors name the setting.
    pub fn parse(ratio: Option<&str>, slow_ms: Option<&str>, tenants: Option<&str>) -> Result<Self> {
        let bad = |name: &str, value: &str, reason: &str| Error::Config {
            name: name.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let parse_ratio = |name: &str, v: &str| {
            v.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| bad(name, v, "expected a ratio between 0.0 and 1.0"))
        };
        let mut s = Self::default();
        if let Some(v) = ratio {
            s.ratio = parse_ratio("KEEL_TRACE_SAMPLE_RATIO", v)?;
        }
        if let Some(v) = slow_ms {
            let ms: u64 = v
                .trim()
                .parse()
                .map_err(|_| bad("KEEL_TRACE_SLOW_MS", v, "expected milliseconds"))?;
            s.slow = Duration::from_millis(ms);
        }
        if let Some(v) = tenants {
            for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let (tenant, r) = pair.split_once('=').ok_or_else(|| {
                    bad(
                        "KEEL_TRACE_TENANT_RATIOS",
                        v,
                        "expected tenant=ratio[,tenant=ratio…]",
                    )
                })?;
                if !is_token(tenant.trim()) {
                    return Err(bad(
                        "KEEL_TRACE_TENANT_RATIOS",
                        v,
                        "a tenant id is [A-Za-z0-9_-]{1,128}",
                    ));
                }
                s.tenants.insert(
                    tenant.trim().to_owned(),
                    parse_ratio("KEEL_TRACE_TENANT_RATIOS", r)?,
                );
            }
        }
        Ok(s)
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Span attributes scrubbed as log lines are: a secret-named key's value is redacted, and
/// string values lose tokens, credentials and e-mail addresses.
fn scrub_attributes(attributes: &mut [KeyValue]) {
    for kv in attributes {
        if super::is_secret_key(kv.key.as_str()) {
            kv.value = Value::from("[redacted]");
        } else if let Value::String(v) = &kv.value
            && let std::borrow::Cow::Owned(clean) = super::scrub(v.as_str())
        {
            kv.value = Value::from(clean);
        }
    }
}

/// Whether `trace_id` falls within `ratio` (the W3C / OpenTelemetry rule: its low 64 bits
/// against `ratio × 2⁶⁴`), so every service decides the same for one trace.
pub fn within(trace_id: TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bytes = trace_id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..16].try_into().unwrap_or([0; 8]));
    // `as` saturates: ratio × 2⁶⁴ < 2⁶⁴ here.
    low < (ratio * (u64::MAX as f64)) as u64
}

/// The head sampler: sampled when the parent is, or when a root's trace id is within the ratio;
/// otherwise recorded only (see the module docs).
#[derive(Clone, Debug)]
pub struct RatioSampler {
    pub ratio: f64,
}

impl ShouldSample for RatioSampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        _name: &str,
        _kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let parent_span = parent.map(|cx| cx.span().span_context().clone());
        let sampled = match &parent_span {
            Some(sc) if sc.is_valid() => sc.is_sampled(),
            _ => within(trace_id, self.ratio),
        };
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::RecordOnly
            },
            attributes: Vec::new(),
            trace_state: parent_span.map(|sc| sc.trace_state().clone()).unwrap_or_default(),
        }
    }
}

/// Forwards to `inner` the sampled spans, and the unsampled ones worth keeping (errors, slow
/// spans, tenants with a higher override), marked sampled.
#[derive(Debug)]
pub struct KeepProcessor<P> {
    inner: P,
    sampling: Sampling,
}

impl<P> KeepProcessor<P> {
    pub fn new(inner: P, sampling: Sampling) -> Self {
        Self { inner, sampling }
    }

    /// Whether an unsampled span is kept anyway.
    pub fn keeps(&self, span: &SpanData) -> bool {
        if matches!(span.status, opentelemetry::trace::Status::Error { .. }) {
            return true;
        }
        if span
            .end_time
            .duration_since(span.start_time)
            .is_ok_and(|d| d >= self.sampling.slow)
        {
            return true;
        }
        let tenant = span.attributes.iter().find_map(|kv| match (&kv.key, &kv.value) {
            (k, Value::String(v)) if k.as_str() == TENANT_ATTRIBUTE => Some(v.as_str().to_owned()),
            _ => None,
        });
        tenant
            .and_then(|t| self.sampling.tenants.get(&t).copied())
            .is_some_and(|r| within(span.span_context.trace_id(), r))
    }
}

impl<P: SpanProcessor> SpanProcessor for KeepProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        if !span.span_context.is_sampled() {
            if !self.keeps(&span) {
                return;
            }
            let sc = &span.span_context;
            span.span_context = SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags() | TraceFlags::SAMPLED,
                sc.is_remote(),
                TraceState::clone(sc.trace_state()),
            );
        }
        scrub_attributes(&mut span.attributes);
        for event in span.events.events.iter_mut() {
            scrub_attributes(&mut event.attributes);
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(low: u64) -> TraceId {
        TraceId::from_bytes(((1u128 << 64) | u128::from(low)).to_be_bytes())
    }

    #[test]
    fn the_ratio_is_decided_by_the_trace_id_alone() {
        assert!(within(id(u64::MAX), 1.0));
        assert!(!within(id(0), 0.0));
        assert!(within(id(u64::MAX / 4), 0.5));
        assert!(!within(id(u64::MAX / 4 * 3), 0.5));
        // About the ratio over many ids.
        let kept = (0..10_000u64)
            .filter(|i| within(id(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)), 0.1))
            .count();
        assert!((800..1200).contains(&kept), "{kept}");
    }

    /// Keeps what reaches it (the inner processor of the test).
    #[derive(Debug, Default, Clone)]
    struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<SpanData>>>);

    impl SpanProcessor for Recorder {
        fn on_start(&self, _: &mut Span, _: &Context) {}
        fn on_end(&self, span: SpanData) {
            self.0.lock().unwrap().push(span);
        }
        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
            Ok(())
        }
    }

    #[test]
    fn outside_the_ratio_only_errors_slow_spans_and_raised_tenants_are_exported_scrubbed() {
        use opentelemetry::trace::{Span as _, Status, Tracer as _, TracerProvider as _};
        let recorder = Recorder::default();
        let sampling = Sampling {
            ratio: 0.0,
            slow: Duration::from_millis(500),
            tenants: HashMap::from([("acme".to_owned(), 1.0)]),
        };
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(RatioSampler { ratio: 0.0 })
            .with_span_processor(KeepProcessor::new(recorder.clone(), sampling))
            .build();
        let tracer = provider.tracer("test");
        tracer.start("plain").end();
        let mut failed = tracer.start("failed");
        failed.set_status(Status::error("boom"));
        failed.end();
        tracer
            .span_builder("slow")
            .with_start_time(std::time::SystemTime::now() - Duration::from_secs(1))
            .start(&tracer)
            .end();
        tracer
            .span_builder("raised")
            .with_attributes([
                KeyValue::new(TENANT_ATTRIBUTE, "acme"),
                KeyValue::new("api_key", "k-123"),
                KeyValue::new("note", "mail bob@example.org"),
            ])
            .start(&tracer)
            .end();
        tracer
            .span_builder("other tenant")
            .with_attributes([KeyValue::new(TENANT_ATTRIBUTE, "beta")])
            .start(&tracer)
            .end();
        let got = recorder.0.lock().unwrap();
        let names: Vec<&str> = got.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["failed", "slow", "raised"]);
        assert!(got.iter().all(|s| s.span_context.is_sampled()));
        let raised = &got[2];
        let value = |k: &str| {
            raised
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(value("api_key").as_deref(), Some("[redacted]"));
        assert!(!value("note").unwrap().contains("bob@example.org"));
    }

    #[test]
    fn settings_parse_and_refuse_naming_the_variable() {
        let s = Sampling::parse(Some("0.25"), Some("200"), Some("acme=1.0, beta=0.5")).unwrap();
        assert_eq!(s.ratio, 0.25);
        assert_eq!(s.slow, Duration::from_millis(200));
        assert_eq!(s.tenants.get("acme"), Some(&1.0));
        for (r, slow, t, name) in [
            (Some("2"), None, None, "KEEL_TRACE_SAMPLE_RATIO"),
            (Some("x"), None, None, "KEEL_TRACE_SAMPLE_RATIO"),
            (None, Some("-1"), None, "KEEL_TRACE_SLOW_MS"),
            (None, None, Some("acme"), "KEEL_TRACE_TENANT_RATIOS"),
            (None, None, Some("a b=1"), "KEEL_TRACE_TENANT_RATIOS"),
            (None, None, Some("acme=3"), "KEEL_TRACE_TENANT_RATIOS"),
        ] {
            match Sampling::parse(r, slow, t) {
                Err(Error::Config { name: n, .. }) => assert_eq!(n, name),
                other => panic!("{other:?}"),
            }
        }
    }
}
