//! The client side of a gRPC call: a span per call (`rpc.*` conventions, kind client) whose
//! `traceparent` replaces the request's, so the server's span is its child.

use std::task::{Context, Poll};

use tracing::Instrument as _;

/// `(service/method, service, method)` of a gRPC path `/service/method`: the span name and its
/// `rpc.service` / `rpc.method` attributes, on both sides of a call.
pub(crate) fn rpc_names(path: &str) -> (&str, &str, &str) {
    let full = path.trim_start_matches('/');
    let (service, method) = full.split_once('/').unwrap_or((full, ""));
    (full, service, method)
}

/// A tonic channel (or any HTTP service) with a client span around every call. Clients are
/// built on it: `TenantServiceClient::new(Traced::new(channel))`.
#[derive(Clone, Debug)]
pub struct Traced<S> {
    inner: S,
}

impl<S> Traced<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for Traced<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
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

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (full, service, method) = rpc_names(req.uri().path());
        let span = tracing::info_span!(
            "rpc.client",
            otel.name = %full,
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            "rpc.system" = "grpc",
            "rpc.service" = %service,
            "rpc.method" = %method,
            "rpc.grpc.status_code" = tracing::field::Empty,
        );
        // No span around the caller (a background task): the request's own header, if any,
        // names the parent.
        let header = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let current = super::current_traceparent();
        if current.is_none()
            && let Some(tp) = &header
        {
            super::set_parent_from_traceparent(&span, tp);
        }
        if let Some(tp) = super::traceparent_of(&span).and_then(|tp| tp.parse().ok()) {
            req.headers_mut().insert("traceparent", tp);
        }
        let traced = span.clone();
        Box::pin(
            async move {
                let result = inner.call(req).await;
                match &result {
                    Ok(resp) => {
                        let code = resp
                            .headers()
                            .get("grpc-status")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<i64>().ok())
                            .unwrap_or(0);
                        traced.record("rpc.grpc.status_code", code);
                        if code != 0 {
                            traced.record("otel.status_code", "ERROR");
                        }
                    }
                    Err(_) => {
                        traced.record("otel.status_code", "ERROR");
                    }
                }
                result
            }
            .instrument(span),
        )
    }
}
