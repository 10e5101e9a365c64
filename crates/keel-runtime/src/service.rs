//! [`Service`]: a service process from configuration to drained shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::grpc;
use crate::health::{self, Health};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::telemetry::{self, TelemetryGuard};
use crate::tls::Tls;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One running Keel service: configuration, telemetry, metrics, shutdown, and the two
/// listeners (gRPC and HTTP for health, metrics and the service's own routes).
pub struct Service {
    /// The resolved configuration.
    pub config: Config,
    metrics: Metrics,
    shutdown: Shutdown,
    grpc_health: HealthReporter,
    grpc_services: Arc<Mutex<Vec<String>>>,
    tls: Tls,
    _telemetry: TelemetryGuard,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config.redacted())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// Loads the configuration of service `name` from flags and environment, installs the
    /// global logger (and OTLP export), and SIGTERM/SIGINT handlers. Call it inside the Tokio
    /// runtime.
    pub fn from_env(name: &str) -> anyhow::Result<Service> {
        Ok(Service::from_env_with::<crate::settings::NoSettings>(name)?.0)
    }

    /// As [`Service::from_env`] for a service with typed settings `S` (its `KEEL_<SERVICE>_*`
    /// variables), which `--print-config` shows too.
    pub fn from_env_with<S: crate::settings::Settings>(name: &str) -> anyhow::Result<(Service, S)> {
        let (config, settings) = Config::load_with::<S>(name)?;
        let guard = telemetry::init(&config)?;
        let mut service = Service::from_config(config)?;
        service._telemetry = guard;
        service.shutdown.install_signal_handlers();
        tracing::info!(config = ?service.config.redacted(), "starting");
        Ok((service, settings))
    }

    /// A service around an already resolved `config`, touching no process-wide state: no
    /// logger, no signal handlers. For tests, and for binaries that set those up themselves.
    ///
    /// Loads the TLS material: without it (and without `KEEL_TLS_INSECURE=true`) no service
    /// starts, naming the settings; plaintext logs a warning.
    pub fn from_config(config: Config) -> anyhow::Result<Service> {
        let tls = Tls::from_setting(&config.tls)?;
        if !tls.is_on() {
            tracing::warn!(
                event = "tls.insecure",
                "KEEL_TLS_INSECURE is set: gRPC, HTTP and the JWKS fetch run in plaintext; \
                 anyone on the network can read and forge calls"
            );
        }
        Ok(Service {
            tls,
            config,
            metrics: Metrics::new().context("creating the metrics registry")?,
            shutdown: Shutdown::new(),
            grpc_health: HealthReporter::new(),
            grpc_services: Arc::default(),
            _telemetry: TelemetryGuard::default(),
        })
    }

    /// The process's TLS material (or plaintext), for its listeners and its clients.
    pub fn tls(&self) -> &Tls {
        &self.tls
    }

    /// A gRPC server builder over this service's TLS (see [`grpc::grpc_server_builder`]).
    pub fn grpc_server(&self) -> Result<tonic::transport::Server> {
        grpc::grpc_server_builder(&self.tls)
    }

    /// The metrics registry (clones share it).
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The shutdown signal (clones share it).
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// A NATS client for `config.nats_url` with `config.nats_creds`, named `keel-<service>`.
    pub async fn connect_nats(&self) -> Result<async_nats::Client> {
        crate::nats::connect(
            &self.config.nats_url,
            self.config.nats_creds.as_deref(),
            &format!("keel-{}", self.config.service),
        )
        .await
    }

    /// A reconnecting Redis connection for `config.redis_url`.
    pub async fn connect_redis(&self) -> Result<redis::aio::ConnectionManager> {
        let url = &self.config.redis_url;
        let client = redis::Client::open(url.as_str()).map_err(|e| connect_error("redis", url, e))?;
        let settings = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(3);
        redis::aio::ConnectionManager::new_with_config(client, settings)
            .await
            .map_err(|e| connect_error("redis", url, e))
    }

    /// A PostgreSQL pool for `config.database_url`.
    pub async fn connect_postgres(&self) -> Result<sqlx::PgPool> {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(&self.config.database_url)
            .await
            .map_err(|e| connect_error("postgres", &self.config.database_url, e))
    }

    /// grpc.health.v1 and reflection servers for this service (see
    /// [`grpc::health_and_reflection`]); [`Service::serve`] marks the named services
    /// NOT_SERVING when draining begins.
    pub async fn grpc_health_and_reflection(
        &self,
        fds: &'static [u8],
        service_names: &[&str],
    ) -> Result<grpc::Introspection> {
        let servers = grpc::introspection(&self.grpc_health, fds, service_names).await?;
        self.grpc_services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(service_names.iter().map(|s| (*s).to_owned()));
        Ok(servers)
    }

    /// The reporter behind [`Service::grpc_health_and_reflection`], to flip statuses.
    pub fn grpc_health_reporter(&self) -> HealthReporter {
        self.grpc_health.clone()
    }

    /// Binds both listeners (port 0 allowed), announces them on stdout, and serves gRPC and HTTP
    /// (`/livez`, `/readyz`, `/metrics` merged with `extra_http`) until shutdown; see
    /// [`Service::serve_on`].
    pub async fn serve<L, ResBody>(
        self,
        grpc_router: Router<L>,
        health: Health,
        extra_http: axum::Router,
    ) -> anyhow::Result<()>
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
        let (grpc_listener, _) = grpc::bind(self.config.grpc_addr).await?;
        let (http_listener, _) = grpc::bind(self.config.http_addr).await?;
        self.serve_on(grpc_listener, http_listener, grpc_router, health, extra_http)
            .await
    }

    /// Like [`Service::serve`] on listeners the caller bound (so a test knows the ports).
    ///
    /// On shutdown, readiness and gRPC health flip to not serving first, then gRPC drains
    /// in-flight calls, then HTTP stops; it returns when both are done or after
    /// `config.shutdown_timeout_secs`. If either server fails, shutdown is triggered for all.
    pub async fn serve_on<L, ResBody>(
        self,
        grpc_listener: tokio::net::TcpListener,
        http_listener: tokio::net::TcpListener,
        grpc_router: Router<L>,
        health: Health,
        extra_http: axum::Router,
    ) -> anyhow::Result<()>
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
        let local =
            |l: &tokio::net::TcpListener| l.local_addr().map_err(|e| Error::io("address of a listener", e));
        let (grpc_addr, http_addr) = (local(&grpc_listener)?, local(&http_listener)?);
        grpc::announce(grpc_addr, http_addr);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, "listening");

        // Readiness flips before either server stops accepting, so balancers see 503 first.
        let draining = CancellationToken::new();
        let flip = tokio::spawn({
            let (shutdown, health, draining) = (self.shutdown(), health.clone(), draining.clone());
            let reporter = self.grpc_health.clone();
            let names = self
                .grpc_services
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            async move {
                shutdown.cancelled().await;
                health.set_draining();
                grpc::set_not_serving(&reporter, &names).await;
                draining.cancel();
            }
        });

        // HTTP stays up while gRPC drains, so /readyz answers 503 and /metrics stays scrapeable.
        let grpc_done = CancellationToken::new();
        let grpc = async {
            let outcome =
                grpc::serve_with_signal(grpc_listener, grpc_router, draining.clone().cancelled_owned()).await;
            self.shutdown.trigger();
            grpc_done.cancel();
            outcome.context("gRPC server")
        };
        let app = health::router(health, self.metrics()).merge(extra_http);
        let http_tls = self.tls.http_server()?;
        let http = async {
            let stop = grpc_done.clone().cancelled_owned();
            let outcome = match http_tls {
                Some(config) => {
                    let listener = crate::tls::listener::TlsListener::new(http_listener, config)
                        .map_err(|e| Error::io(format!("TLS listener on {http_addr}"), e))?;
                    axum::serve(listener, app).with_graceful_shutdown(stop).await
                }
                None => axum::serve(http_listener, app).with_graceful_shutdown(stop).await,
            }
            .map_err(|e| Error::io(format!("HTTP server on {http_addr}"), e));
            self.shutdown.trigger();
            outcome.context("HTTP server")
        };
        let drain_timeout = Duration::from_secs(self.config.shutdown_timeout_secs);
        let deadline = async {
            draining.cancelled().await;
            tokio::time::sleep(drain_timeout).await;
        };
        let outcome = tokio::select! {
            (grpc, http) = async { tokio::join!(grpc, http) } => grpc.and(http),
            () = deadline => {
                tracing::warn!(timeout_secs = drain_timeout.as_secs(), "draining timed out");
                Ok(())
            }
        };
        flip.abort();
        tracing::info!("stopped");
        outcome
    }
}

fn connect_error(dependency: &'static str, url: &str, e: impl std::fmt::Display) -> Error {
    Error::Connect {
        dependency,
        message: format!("{}: {}", telemetry::scrub(url), telemetry::scrub(&e.to_string())),
    }
}
