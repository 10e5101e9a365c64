//! One log line and one `keel_requests_total` / `keel_request_duration_seconds` observation per
//! gRPC call, for every service the same way. Headers are logged at debug level only; the
//! scrubbing writer redacts tokens from them like from everything else.

use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tracing::Instrument as _;

use crate::metrics::Metrics;

/// Put in a response's extensions by the auth layer: the tenant the call ran for, the label of
/// the request metrics.
#[derive(Clone, Debug)]
pub struct RequestTenant(pub String);

#[derive(Clone)]
pub struct RequestLogLayer {
    service: String,
    metrics: Metrics,
}

impl RequestLogLayer {
    pub fn new(service: impl Into<String>, metrics: Metrics) -> Self {
        Self {
            service: service.into(),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestLog {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RequestLog<S> {
    inner: S,
    layer: RequestLogLayer,
}

/// The gRPC status of a response: `grpc-status` in the headers (errors are trailers-only), else OK.
fn code_of<B>(resp: &Response<B>) -> tonic::Code {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from)
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RequestLog<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        let path = req.uri().path().to_owned();
        let span = server_span(&path, req.headers());
        span.in_scope(|| tracing::debug!(path = %path, headers = ?req.headers(), "request"));
        let traced = span.clone();
        Box::pin(
            async move {
                let start = Instant::now();
                let result = inner.call(req).await;
                let elapsed = start.elapsed();
                let method = path.rsplit('/').next().unwrap_or_default().to_owned();
                match &result {
                    Ok(resp) => {
                        let code = code_of(resp);
                        let tenant = resp
                            .extensions()
                            .get::<RequestTenant>()
                            .map_or("-", |t| t.0.as_str());
                        let code_name = format!("{code:?}");
                        traced.record("rpc.grpc.status_code", code as i64);
                        if is_server_error(code) {
                            traced.record("otel.status_code", "ERROR");
                        }
                        if tenant != "-" {
                            traced.record("tenant_id", tenant);
                        }
                        layer.metrics.observe_request(
                            tenant,
                            &layer.service,
                            &method,
                            &code_name,
                            elapsed.as_secs_f64(),
                        );
                        tracing::info!(
                            path = %path, code = %code_name, tenant_id = tenant,
                            duration_ms = elapsed.as_secs_f64() * 1e3, "request handled"
                        );
                    }
                    Err(_) => {
                        traced.record("otel.status_code", "ERROR");
                        tracing::warn!(path = %path, "transport error")
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}

/// The server span of one call (OpenTelemetry `rpc.*` conventions), child of the caller's
/// `traceparent` when it sent a valid one. The auth layer fills in the tenant, the actor and the
/// authorization outcome; the status code is recorded here when the call ends.
fn server_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let (full, service, method) = crate::telemetry::client::rpc_names(path);
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .unwrap_or("");
    let span = tracing::info_span!(
        "rpc",
        otel.name = %full,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        "rpc.system" = "grpc",
        "rpc.service" = %service,
        "rpc.method" = %method,
        "rpc.grpc.status_code" = tracing::field::Empty,
        tenant_id = tracing::field::Empty,
        "enduser.id" = tracing::field::Empty,
        "keel.auth" = tracing::field::Empty,
        request_id = %request_id,
    );
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        crate::telemetry::set_parent_from_traceparent(&span, tp);
    }
    span
}

/// Codes that mean the server failed (not the caller's mistake): those spans are errors.
fn is_server_error(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unknown
            | tonic::Code::Internal
            | tonic::Code::Unavailable
            | tonic::Code::DataLoss
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unimplemented
    )
}
