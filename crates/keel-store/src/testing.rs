//! Test support shared by every crate's integration tests (feature `testing`): each test gets
//! its own PostgreSQL schema and bus namespace, so tests run in parallel on the same servers
//! without seeing each other, and waits with deadlines instead of sleeps.

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use keel_bus::Bus;
use keel_bus::acl::{self, Role};
use keel_runtime::nats::authority::Authority;

use crate::{Result, Store};

/// PostgreSQL for tests: `KEEL_TEST_DATABASE_URL`, else the local `keel` database.
pub fn database_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("KEEL_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/keel".to_owned())
}

/// Keel's own NATS (`infra/local/services.sh` starts it on 4333 with JWT auth).
pub fn nats_url() -> String {
    std::env::var("KEEL_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4333".to_owned())
}

/// The local NATS trust chain (see `keel_bus::authority`), made by `infra/local/services.sh`.
pub fn nats_authority() -> &'static Authority {
    static AUTHORITY: OnceLock<Authority> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        let home = keel_runtime::nats::authority::default_home();
        Authority::load(&home).unwrap_or_else(|e| {
            panic!(
                "no NATS trust chain in {} ({e}): run ./infra/local/services.sh",
                home.display()
            )
        })
    })
}

/// Credentials for `role` in namespace `ns`, written to a file of their own (0600); the path.
pub fn nats_creds_file(role: &Role, ns: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("keel-test-creds");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{ns}-{}-{}.creds", acl::user_name(role), unique_token()));
    let creds = acl::issue(nats_authority(), role, ns, Some(Duration::from_secs(24 * 3600)));
    keel_runtime::nats::authority::write_private(&path, &creds.to_file()).unwrap_or_else(|e| panic!("{e}"));
    path
}

/// The user-signing key file provisioning issues tenants' audit credentials with.
pub fn nats_signer_file() -> PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("keel-test-signer-{}.json", unique_token()));
        let signer = nats_authority().signer().unwrap_or_else(|e| panic!("{e}"));
        keel_runtime::nats::authority::write_private(&path, &signer.to_file())
            .unwrap_or_else(|e| panic!("{e}"));
        path
    })
    .clone()
}

/// An admin connection to the test NATS (everything in the account).
pub async fn nats_admin() -> Result<async_nats::Client> {
    nats_admin_at(&nats_url()).await
}

/// As [`nats_admin`], to the server at `url` (a [`TcpGate`] in front of it).
pub async fn nats_admin_at(url: &str) -> Result<async_nats::Client> {
    let creds = acl::issue(
        nats_authority(),
        &Role::Admin,
        "",
        Some(Duration::from_secs(24 * 3600)),
    );
    Ok(
        keel_runtime::nats::connect_with(url, Some(&creds), "keel-test-admin")
            .await
            .map_err(|e| keel_bus::Error::Connect(e.to_string()))?,
    )
}

/// A bus in namespace `ns` over an admin connection.
pub async fn bus(ns: &str) -> Result<Bus> {
    Ok(Bus::new(nats_admin().await?, ns)?)
}

/// The test mesh's TLS directory: a local CA and every service's certificate (made once per
/// machine user, safe under parallel test processes). Service processes get it as
/// `KEEL_TLS_DIR`.
pub fn tls_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("keel-test-tls-{}", user_id()));
        keel_runtime::tls::local::ensure(&dir, keel_runtime::tls::local::SERVICES)
            .unwrap_or_else(|e| panic!("test TLS material in {}: {e}", dir.display()));
        dir
    })
    .clone()
}

fn user_id() -> String {
    std::env::var("USER").unwrap_or_else(|_| "user".into())
}

/// A token-bearing client's TLS: trusts the test CA, presents no certificate.
pub fn tls_client() -> keel_runtime::Tls {
    keel_runtime::Tls::client_of(&tls_dir().join(keel_runtime::tls::local::CA_CERT))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A service's TLS: the test CA and `service`'s certificate (for mTLS calls).
pub fn tls_service(service: &str) -> keel_runtime::Tls {
    let dir = tls_dir();
    keel_runtime::Tls::load(
        &dir.join(keel_runtime::tls::local::CA_CERT),
        Some((
            &dir.join(keel_runtime::tls::local::cert_file(service)),
            &dir.join(keel_runtime::tls::local::key_file(service)),
        )),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

pub fn redis_url() -> String {
    std::env::var("KEEL_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A unique lower-case token, e.g. `t01f3a9c2b7`.
pub fn unique_token() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// One test's world: a fresh schema (migrated), a fresh bus namespace with its streams.
pub struct TestEnv {
    pub token: String,
    pub store: Store,
    pub bus: Bus,
}

impl TestEnv {
    pub async fn new(service: &str) -> Result<Self> {
        let token = unique_token();
        let schema = format!("test_{token}");
        let store = Store::connect_with(&database_url(), &schema, service, 32).await?;
        let bus = bus(&token).await?;
        bus.ensure_streams().await?;
        Ok(Self { token, store, bus })
    }

    /// Drops the schema and the streams. Call at the end of a test that passed.
    pub async fn cleanup(self) -> Result<()> {
        let pool = self.store.pool().clone();
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.store.schema()))
            .execute(&pool)
            .await?;
        pool.close().await;
        self.bus.delete_streams().await?;
        Ok(())
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// A TCP proxy a test can cut: an outage of one client's server (NATS, say) without stopping
/// the server the other tests share. [`TcpGate::cut`] drops every connection through it and
/// refuses new ones until [`TcpGate::restore`].
pub struct TcpGate {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
}

impl TcpGate {
    /// A gate on 127.0.0.1 (port 0) in front of `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (generation, watch) = tokio::sync::watch::channel(0u64);
        let (gate_open, upstream) = (open.clone(), upstream.to_owned());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !gate_open.load(Ordering::SeqCst) {
                    continue;
                }
                let (upstream, mut watch) = (upstream.clone(), watch.clone());
                let born = *watch.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = watch.wait_for(|g| *g != born) => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            open,
            generation,
        })
    }

    /// The gate's address (127.0.0.1, its own port).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// `nats://` URL of the gate.
    pub fn nats_url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
