//! Listeners, the `listening` announcement, grpc.health.v1 + reflection, and serving a tonic
//! router until shutdown.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::error::{Error, Result};
use crate::shutdown::Shutdown;
use crate::tls::Tls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Fully-qualified name of the gRPC health service.
pub const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
/// Fully-qualified name of the gRPC reflection service.
pub const REFLECTION_SERVICE: &str = "grpc.reflection.v1.ServerReflection";
/// The older reflection service that grpcio-reflection, older grpcurl and Postman speak.
pub const REFLECTION_SERVICE_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Binds `addr` (port 0 picks a free port) and returns the listener with the address it got.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("bind {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io(format!("address of listener on {addr}"), e))?;
    Ok((listener, bound))
}

/// The single stdout line a supervisor or test harness reads to learn the ports.
pub fn listening_line(grpc: SocketAddr, http: SocketAddr) -> String {
    format!(r#"{{"event":"listening","grpc":"{grpc}","http":"{http}"}}"#)
}

/// Prints [`listening_line`] on stdout and flushes it.
pub fn announce(grpc: SocketAddr, http: SocketAddr) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{}", listening_line(grpc, http)).and_then(|()| stdout.flush()) {
        tracing::error!(error = %e, "cannot announce the listening addresses on stdout");
    }
}

/// Most concurrent calls on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// Most bytes of request headers (metadata) a call may carry.
pub const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// A tonic server with the settings every Keel service uses: bounded streams per connection
/// and header size (request bodies are bounded by tonic's 4 MiB decoding limit per message),
/// over `tls` (plaintext when it is [`Tls::insecure`]).
pub fn grpc_server_builder(tls: &Tls) -> Result<tonic::transport::Server> {
    let server = plain_server_builder();
    Ok(match tls.grpc_server() {
        Some(config) => server.tls_config(config)?,
        None => server,
    })
}

fn plain_server_builder() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .http2_max_header_list_size(MAX_HEADER_LIST_SIZE)
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
}

/// grpc.health.v1 and both reflection services of one server.
pub struct Introspection {
    pub health: HealthServer<HealthService>,
    fds: &'static [u8],
    service_names: Vec<String>,
}

impl Introspection {
    fn reflection(&self) -> tonic_reflection::server::Builder<'static> {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(self.fds)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        if !self.service_names.is_empty() {
            let mut advertised: Vec<&str> = self.service_names.iter().map(String::as_str).collect();
            advertised.extend([HEALTH_SERVICE, REFLECTION_SERVICE, REFLECTION_SERVICE_V1ALPHA]);
            advertised.sort_unstable();
            advertised.dedup();
            for name in advertised {
                builder = builder.with_service_name(name);
            }
        }
        builder
    }

    /// `server` with health and reflection v1 and v1alpha (answering from the same descriptors).
    pub fn add_to<L: Clone>(self, server: &mut tonic::transport::Server<L>) -> Result<Router<L>> {
        let v1 = self.reflection().build_v1()?;
        let v1alpha = self.reflection().build_v1alpha()?;
        Ok(server
            .add_service(self.health)
            .add_service(v1)
            .add_service(v1alpha))
    }
}

/// grpc.health.v1 and grpc.reflection (v1 and v1alpha) for the services named in
/// `service_names` (fully-qualified, e.g. `keel.v1.TenantService`), described by the encoded
/// `FileDescriptorSet` `fds`.
///
/// The named services (and the overall `""` status) start SERVING; use the reporter to change
/// that, or [`set_not_serving`] when draining. Empty `service_names` advertises every service
/// of `fds` through reflection.
pub async fn health_and_reflection(
    fds: &'static [u8],
    service_names: &[&str],
) -> Result<(HealthReporter, Introspection)> {
    let reporter = HealthReporter::new();
    let introspection = introspection(&reporter, fds, service_names).await?;
    Ok((reporter, introspection))
}

pub(crate) async fn introspection(
    reporter: &HealthReporter,
    fds: &'static [u8],
    service_names: &[&str],
) -> Result<Introspection> {
    let introspection = Introspection {
        health: HealthServer::new(HealthService::from_health_reporter(reporter.clone())),
        fds,
        service_names: service_names.iter().map(|s| (*s).to_owned()).collect(),
    };
    // Bad descriptors are an error now, not when serving starts.
    introspection.reflection().build_v1()?;
    for name in service_names {
        reporter.set_service_status(*name, ServingStatus::Serving).await;
    }
    Ok(introspection)
}

/// Marks the overall status and each of `service_names` NOT_SERVING.
pub async fn set_not_serving(reporter: &HealthReporter, service_names: &[String]) {
    reporter.set_service_status("", ServingStatus::NotServing).await;
    for name in service_names {
        reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
}

/// Serves `router` on `listener` until `shutdown` fires, then drains in-flight calls.
pub async fn serve<L, ResBody>(listener: TcpListener, router: Router<L>, shutdown: Shutdown) -> Result<()>
where
    L: tower::Layer<Routes>,
    L::Service: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    serve_with_signal(listener, router, shutdown.cancelled_owned()).await
}

/// Serves `router` on `listener` until `signal` completes, then drains in-flight calls.
pub async fn serve_with_signal<L, ResBody, F>(
    listener: TcpListener,
    router: Router<L>,
    signal: F,
) -> Result<()>
where
    F: Future<Output = ()>,
    L: tower::Layer<Routes>,
    L::Service: tower::Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + 'static,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Future: Send,
    <L::Service as tower::Service<http::Request<tonic::body::Body>>>::Error: Into<BoxError> + Send,
    ResBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_line_is_exact_json() {
        let line = listening_line(
            "127.0.0.1:50051".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap(),
        );
        assert_eq!(
            line,
            r#"{"event":"listening","grpc":"127.0.0.1:50051","http":"127.0.0.1:8081"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "listening");
    }

    #[tokio::test]
    async fn bind_port_zero_reports_the_real_port() {
        let (_listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        assert_ne!(addr.port(), 0);
        let err = bind(addr).await.unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[tokio::test]
    async fn health_and_reflection_accept_the_health_descriptors() {
        let (reporter, _introspection) =
            health_and_reflection(tonic_health::pb::FILE_DESCRIPTOR_SET, &[HEALTH_SERVICE])
                .await
                .unwrap();
        set_not_serving(&reporter, &[HEALTH_SERVICE.to_owned()]).await;
        assert!(health_and_reflection(b"\xff\xff", &[]).await.is_err());
    }
}
