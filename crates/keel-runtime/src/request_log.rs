//! One log line and one `keel_requests_total` / `keel_request_duration_seconds` observation per
//! gRPC call, for every service the same way. Headers are logged at debug level only; the
//! scrubbing writer redacts tokens from them like from everything else.

use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};

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
        tracing::debug!(path = %path, headers = ?req.headers(), "request");
        Box::pin(async move {
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
                Err(_) => tracing::warn!(path = %path, "transport error"),
            }
            result
        })
    }
}
