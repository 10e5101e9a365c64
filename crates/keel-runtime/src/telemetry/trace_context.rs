//! W3C `traceparent` helpers, so one trace spans gRPC metadata and NATS headers.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `traceparent` of the current span, when OpenTelemetry is on and the span is traced.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` of `span`, when OpenTelemetry is on and the span is traced.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// `(trace_id, span_id)` of a valid `00-<32 hex>-<16 hex>-<2 hex>` header (lower-case hex,
/// ids not all zero); `None` otherwise.
pub fn parse_traceparent(s: &str) -> Option<(String, String)> {
    let mut parts = s.trim().split('-');
    let (version, trace_id, span_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let lower_hex =
        |p: &str, len: usize| p.len() == len && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |p: &str| p.bytes().any(|b| b != b'0');
    let valid = parts.next().is_none()
        && version == "00"
        && lower_hex(trace_id, 32)
        && nonzero(trace_id)
        && lower_hex(span_id, 16)
        && nonzero(span_id)
        && lower_hex(flags, 2);
    valid.then(|| (trace_id.to_owned(), span_id.to_owned()))
}

/// The `traceparent` a call's effects carry (event metadata, outgoing calls): the current span's
/// when tracing is on (so what follows is its child), else the caller's valid header, else a
/// fresh one.
pub fn call_traceparent(header: Option<&str>) -> String {
    current_traceparent()
        .or_else(|| {
            header
                .filter(|tp| parse_traceparent(tp).is_some())
                .map(str::to_owned)
        })
        .unwrap_or_else(new_traceparent)
}

/// A fresh random, sampled `traceparent`, for requests that arrive without one.
pub fn new_traceparent() -> String {
    let trace_id = loop {
        let id: u128 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let span_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    format!("00-{trace_id:032x}-{span_id:016x}-01")
}

/// Makes the remote span named by `traceparent` the parent of `span` (e.g. a consumer's span
/// for a NATS message). Returns false when the header is invalid or OpenTelemetry is off.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) -> bool {
    let Some((trace_id, span_id)) = parse_traceparent(traceparent) else {
        return false;
    };
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&trace_id), SpanId::from_hex(&span_id)) else {
        return false;
    };
    let sampled = traceparent
        .trim()
        .rsplit('-')
        .next()
        .and_then(|f| u8::from_str_radix(f, 16).ok())
        .map_or(TraceFlags::SAMPLED, |f| TraceFlags::new(f) & TraceFlags::SAMPLED);
    let remote = SpanContext::new(trace_id, span_id, sampled, true, TraceState::default());
    let cx = opentelemetry::Context::new().with_remote_span_context(remote);
    span.set_parent(cx).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example() {
        assert_eq!(
            parse_traceparent(VALID),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            ))
        );
    }

    #[test]
    fn rejects_malformed_headers() {
        for bad in [
            "",
            "00",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn generated_headers_are_valid_and_distinct() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert!(parse_traceparent(&a).is_some(), "{a}");
        assert_ne!(a, b);
        assert!(a.ends_with("-01"));
    }

    #[test]
    fn without_opentelemetry_there_is_no_current_traceparent() {
        let span = tracing::info_span!("no otel");
        let _entered = span.enter();
        assert_eq!(current_traceparent(), None);
        assert!(!set_parent_from_traceparent(&span, "garbage"));
    }
}
