//! keel-service: the one assembly of every Keel service. A service's `app.rs` reads like a
//! table of contents; everything it does not own is here, done one way:
//!
//! ```no_run
//! # async fn run(rt: keel_runtime::Service) -> anyhow::Result<()> {
//! let mut mesh = keel_service::Assembly::start(rt).await?;        // NATS, streams, listeners
//! let (db, store) =                                                // schema, migrations,
//!     mesh.event_sourced("billing", sqlx::migrate::Migrator::DEFAULT).await?; // store + relay
//! let auth = mesh.auth(None).await?;                               // JWKS, quotas, rate limits, auth.degraded
//! let router = mesh.grpc(auth, &["keel.v1.MeterService"]).await?;  // health + reflection v1/v1alpha
//! mesh.serve(router, axum::Router::new()).await                     // serve, drain, join workers
//! # }
//! ```
//!
//! No service starts without a master key. Readiness (`/readyz`) covers PostgreSQL (when a database is opened), NATS, Redis, and every
//! worker spawned here (the relay, projections, a service's own loops): a worker that stopped
//! makes the service unready.

mod degraded;
mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use keel_auth::{AuthConfig, AuthLayer, JwksCache};
use keel_bus::Bus;
use keel_runtime::{Config, Health, Metrics, RequestLogLayer, Service, Shutdown};
use keel_store::audit::AuditLog;
use keel_store::projection::{Projection, ProjectionConfig, ProjectionRunner};
use keel_store::relay::Relay;
use keel_store::{Database, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

/// The layers every Keel gRPC server has: the request log and metrics outside, auth inside.
pub type Layers = Stack<AuthLayer, Stack<RequestLogLayer, Identity>>;

/// A service being assembled: connections, listeners, readiness checks and workers.
pub struct Assembly {
    rt: Service,
    master_key: keel_auth::MasterKey,
    nats: async_nats::Client,
    bus: Bus,
    health: Health,
    grpc_listener: TcpListener,
    http_listener: TcpListener,
    http_addr: SocketAddr,
    audit: Option<AuditLog>,
    workers: Vec<(String, JoinHandle<anyhow::Result<()>>)>,
}

impl Assembly {
    /// Connects NATS, ensures the JetStream streams (with the configured prefix), binds the
    /// gRPC and HTTP listeners (port 0 allowed) and starts readiness with NATS and Redis.
    pub async fn start(rt: Service) -> anyhow::Result<Self> {
        // No built-in secrets: without a master key no service starts, naming the setting.
        let master_key = keel_auth::MasterKey::from_setting(rt.config.master_key.as_deref())?;
        let nats = rt.connect_nats().await?;
        let bus = Bus::new(nats.clone(), &rt.config.bus_prefix)?;
        bus.ensure_streams().await.context("JetStream streams")?;
        let (grpc_listener, _) = keel_runtime::grpc::bind(rt.config.grpc_addr).await?;
        let (http_listener, http_addr) = keel_runtime::grpc::bind(rt.config.http_addr).await?;
        let health = Health::new()
            .with_nats(nats.clone())
            .with_redis(keel_runtime::health::redis_lazy(&rt.config.redis_url)?);
        Ok(Self {
            rt,
            master_key,
            nats,
            bus,
            health,
            grpc_listener,
            http_listener,
            http_addr,
            audit: None,
            workers: Vec::new(),
        })
    }

    /// The master key (`KEEL_MASTER_KEY` / `KEEL_MASTER_KEY_FILE`) sealing secrets at rest.
    pub fn master_key(&self) -> &keel_auth::MasterKey {
        &self.master_key
    }

    pub fn config(&self) -> &Config {
        &self.rt.config
    }

    /// The service's short name (`tenant`, `provisioning`, …).
    pub fn name(&self) -> &str {
        &self.rt.config.service
    }

    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn metrics(&self) -> Metrics {
        self.rt.metrics()
    }

    pub fn shutdown(&self) -> Shutdown {
        self.rt.shutdown()
    }

    /// The cancellation token workers stop on.
    pub fn stop_token(&self) -> CancellationToken {
        self.rt.shutdown().token()
    }

    /// The address the HTTP listener got (the tenant service's own JWKS lives there).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// A reconnecting Redis connection (for a service that drives Redis itself).
    pub async fn redis(&self) -> anyhow::Result<redis_conn::ConnectionManager> {
        Ok(self.rt.connect_redis().await?)
    }

    /// The service's own schema (`schema`) with its `migrator` run; readiness pings it.
    pub async fn database(
        &mut self,
        schema: &str,
        migrator: sqlx::migrate::Migrator,
    ) -> anyhow::Result<Database> {
        let db = self.connect(schema).await?;
        // The outbox first: the service's migrations may refer to it (row-level security).
        self.open_audit(&db).await?;
        self.migrate(&db, migrator).await?;
        Ok(db)
    }

    /// The audit outbox of `db`'s schema, with its relay running until shutdown: where every
    /// audit record of the service goes (see [`keel_store::audit`]).
    async fn open_audit(&mut self, db: &Database) -> anyhow::Result<()> {
        let log = AuditLog::open(db).await.context("audit outbox")?;
        let relay = Relay::spawn_audit(db, self.bus.clone(), self.stop_token());
        let stats = relay.stats().clone();
        self.spawn("audit relay", async move { Ok(relay.join().await?) });
        self.watch_relay(
            db.pool().clone(),
            keel_store::relay::Source::Audit,
            "audit",
            stats,
        );
        self.audit = Some(log);
        Ok(())
    }

    /// Where the service writes its audit records: the outbox of its database (open one
    /// first with [`Assembly::database`] or [`Assembly::event_sourced`]).
    pub fn audit_log(&self) -> anyhow::Result<AuditLog> {
        self.audit
            .clone()
            .context("the audit log lives in the service's database: open it before asking for the log")
    }

    async fn connect(&mut self, schema: &str) -> anyhow::Result<Database> {
        let db = Database::connect(&self.rt.config.database_url, schema, 16)
            .await
            .context("database")?;
        self.add_health(|h| h.with_postgres(db.pool().clone()));
        Ok(db)
    }

    async fn migrate(&self, db: &Database, migrator: sqlx::migrate::Migrator) -> anyhow::Result<()> {
        db.migrate(migrator)
            .await
            .with_context(|| format!("{} migrations", self.name()))
    }

    /// For a service with aggregates: its schema, the event store in it, then the service's own
    /// `migrator` (after the event store's, so that its migrations may refer to `events`, e.g. to
    /// put row-level security on it), with the outbox relay running until shutdown.
    pub async fn event_sourced(
        &mut self,
        schema: &str,
        migrator: sqlx::migrate::Migrator,
    ) -> anyhow::Result<(Database, Store)> {
        let db = self.connect(schema).await?;
        let store = Store::open(&db, &self.rt.config.service)
            .await
            .context("event store")?;
        self.open_audit(&db).await?;
        self.migrate(&db, migrator).await?;
        self.spawn_relay(&store);
        Ok((db, store))
    }

    /// The event store in `db` and its outbox relay, which runs until shutdown.
    pub async fn event_store(&mut self, db: &Database) -> anyhow::Result<Store> {
        let store = Store::open(db, &self.rt.config.service)
            .await
            .context("event store")?;
        self.spawn_relay(&store);
        Ok(store)
    }

    fn spawn_relay(&mut self, store: &Store) {
        let relay = Relay::spawn(store, self.bus.clone(), self.stop_token());
        let stats = relay.stats().clone();
        self.spawn("relay", async move { Ok(relay.join().await?) });
        self.watch_relay(
            store.pool().clone(),
            keel_store::relay::Source::Events,
            "jetstream",
            stats,
        );
    }

    /// Exports relay `name`'s backlog and makes a stall of it (rows waiting, no checkpoint for
    /// `KEEL_READY_STALL_SECS`) a readiness failure.
    fn watch_relay(
        &mut self,
        pool: sqlx::PgPool,
        source: keel_store::relay::Source,
        name: &str,
        stats: Arc<keel_store::relay::RelayStats>,
    ) {
        let verdict = watch::Verdict::default();
        let dlq = self
            .metrics()
            .dlq_messages_total()
            .with_label_values(&[&format!("relay.{name}")]);
        let watcher = watch::relay(
            pool,
            source,
            name.to_owned(),
            self.metrics(),
            self.stall_limit(),
            verdict.clone(),
            self.stop_token(),
        );
        let (stop, counted) = (self.stop_token(), std::sync::atomic::AtomicU64::new(0));
        self.spawn(format!("relay {name} watch"), async move {
            // The relay's own dead letters (rows that cannot be published), counted as they happen.
            let count = async {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    let dead = stats.dead_lettered.load(Ordering::Relaxed);
                    dlq.inc_by(dead.saturating_sub(counted.swap(dead, Ordering::Relaxed)));
                }
            };
            tokio::select! {
                () = watcher => {}
                () = count => {}
                () = stop.cancelled() => {}
            }
            Ok(())
        });
        self.ready_unless(format!("relay {name} progressing"), verdict);
    }

    /// Readiness fails while `verdict` holds a reason.
    fn ready_unless(&mut self, name: String, verdict: watch::Verdict) {
        self.add_health(move |h| {
            h.with_check(name, move || {
                let reason = verdict.lock().ok().and_then(|v| v.clone());
                async move { reason.map_or(Ok(()), Err) }
            })
        });
    }

    fn stall_limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.rt.config.ready_stall_secs)
    }

    /// Runs `projection` on `pool` from `config`'s stream until shutdown.
    pub fn project<P: Projection + 'static>(
        &mut self,
        pool: sqlx::PgPool,
        projection: P,
        mut config: ProjectionConfig,
    ) {
        config.gap_timeout = std::time::Duration::from_secs(self.rt.config.projection_gap_secs);
        let durable = projection.name().to_owned();
        let name = format!("projection {durable}");
        let stream = config.stream;
        let runner = ProjectionRunner::new(pool, self.bus.clone(), projection, config);
        let stats = runner.stats().clone();
        let handle = runner.spawn(self.stop_token());
        self.spawn(name, async move { Ok(handle.await??) });
        self.watch_consumer(
            stream,
            &durable,
            Arc::new(move || stats.dead_lettered.load(Ordering::Relaxed)),
        );
    }

    /// Exports durable `durable`'s lag and dead letters (`dead_lettered` counts them), and makes a
    /// stall of it (messages waiting, no ack for `KEEL_READY_STALL_SECS`) a readiness failure.
    /// The projections of [`Assembly::project`] are watched already; a service that runs a
    /// consumer of its own calls this for it.
    pub fn watch_consumer(
        &mut self,
        stream: keel_bus::StreamKind,
        durable: &str,
        dead_lettered: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) {
        let verdict = watch::Verdict::default();
        let watcher = watch::consumer(
            self.bus.clone(),
            stream,
            durable.to_owned(),
            dead_lettered,
            self.metrics(),
            self.stall_limit(),
            verdict.clone(),
            self.stop_token(),
        );
        self.spawn(format!("consumer {durable} watch"), async move {
            watcher.await;
            Ok(())
        });
        self.ready_unless(format!("consumer {durable} progressing"), verdict);
    }

    /// Runs a worker of the service's own until it returns (it should watch
    /// [`Assembly::stop_token`]); readiness fails once it has stopped before shutdown.
    pub fn spawn(
        &mut self,
        name: impl Into<String>,
        worker: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        let name = name.into();
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let handle = tokio::spawn(async move {
            let outcome = worker.await;
            flag.store(false, Ordering::Release);
            outcome
        });
        let label = name.clone();
        self.add_health(move |h| {
            h.with_check(label.clone(), move || {
                let alive = alive.load(Ordering::Acquire);
                let label = label.clone();
                async move {
                    if alive {
                        Ok(())
                    } else {
                        Err(format!("{label} has stopped"))
                    }
                }
            })
        });
        self.workers.push((name, handle));
    }

    fn add_health(&mut self, f: impl FnOnce(Health) -> Health) {
        let health = std::mem::replace(&mut self.health, Health::new());
        self.health = f(health);
    }

    /// Token verification against the JWKS (`KEEL_JWKS_URL`, else `own_jwks_url`, else the
    /// local tenant service's) fetched over the service's TLS, admission by the tenants' quota
    /// hashes under `KEEL_RESOURCE_PREFIX` (a suspended tenant refused, provisioned limits
    /// applied; see `keel_auth::quota`), the tier table's rate limits in Redis where no hash
    /// gives limits, and `auth.degraded` / `auth.recovered` audit records whenever verification falls
    /// back to cached keys.
    pub async fn auth(&mut self, own_jwks_url: Option<&str>) -> anyhow::Result<AuthConfig> {
        let jwks = Arc::new(JwksCache::from_config(
            &self.rt.config,
            self.rt.tls(),
            own_jwks_url,
        )?);
        let reporter = degraded::report(
            jwks.clone(),
            self.audit_log()?,
            self.rt.config.service.clone(),
            self.stop_token(),
        );
        self.spawn("auth.degraded reporter", async move {
            reporter.await;
            Ok(())
        });
        Ok(AuthConfig::standard(
            jwks,
            &self.rt.config.redis_url,
            &self.rt.config.resource_prefix,
            self.metrics(),
            keel_tenancy::tier::auth_limits,
        )
        .await)
    }

    /// The process's TLS material, for clients of other services.
    pub fn tls(&self) -> &keel_runtime::Tls {
        self.rt.tls()
    }

    /// This service's own HTTP base URL (`https://127.0.0.1:<port>` with TLS): an unspecified
    /// bind address is reached on loopback, which the local certificates cover.
    pub fn http_url(&self) -> String {
        let mut addr = self.http_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
        }
        format!("{}://{addr}", self.rt.tls().scheme())
    }

    /// A gRPC server with the request log, `auth`, health and reflection (v1 and v1alpha) for
    /// `services` (fully-qualified names); add the service's own servers to it.
    pub async fn grpc(&self, auth: AuthConfig, services: &[&str]) -> anyhow::Result<Router<Layers>> {
        let introspection = self
            .rt
            .grpc_health_and_reflection(keel_proto::FILE_DESCRIPTOR_SET, services)
            .await?;
        let mut server = self
            .rt
            .grpc_server()?
            .layer(RequestLogLayer::new(
                self.rt.config.service.clone(),
                self.metrics(),
            ))
            .layer(AuthLayer::new(auth));
        Ok(introspection.add_to(&mut server)?)
    }

    /// Serves gRPC and HTTP (`/livez`, `/readyz`, `/metrics` and `http`) until shutdown, drains,
    /// then waits for every worker; the first worker error is returned.
    pub async fn serve(self, router: Router<Layers>, http: axum::Router) -> anyhow::Result<()> {
        let shutdown = self.rt.shutdown();
        let served = self
            .rt
            .serve_on(self.grpc_listener, self.http_listener, router, self.health, http)
            .await;
        shutdown.trigger();
        let mut outcome = served;
        for (name, handle) in self.workers {
            let result = match handle.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!("{name} panicked: {e}")),
            };
            if let Err(e) = result {
                tracing::error!(worker = %name, error = %e, "worker failed");
                if outcome.is_ok() {
                    outcome = Err(e.context(name));
                }
            }
        }
        outcome
    }
}

/// Re-exported so services need no direct redis dependency for the connection type.
pub mod redis_conn {
    pub use redis::aio::ConnectionManager;
}
