//! End-to-end test support: start a real service binary on free ports with its own schema and
//! bus namespace, read the ports it announces, capture its logs, stop it — and [`mesh::Mesh`],
//! the one test mesh every end-to-end test builds on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};

pub mod mesh;
pub mod otlp;
pub mod rls;
use keel_bus::acl::Role;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The master key test processes get unless their environment names one (base64 of 32 × 0x2a).
pub const TEST_MASTER_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

/// A running service process.
pub struct ServiceProc {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Schema and bus namespace the process was given (shared with the test).
    pub schema: String,
    pub namespace: String,
    child: Child,
    logs: Arc<Mutex<String>>,
}

impl ServiceProc {
    /// Starts `binary` (e.g. `env!("CARGO_BIN_EXE_keel-tenant")`) for `service` with ports 0, the
    /// test's schema and namespace, and `env` on top; waits for its `listening` line.
    pub async fn start(
        binary: &Path,
        service: &str,
        schema: &str,
        namespace: &str,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        let upper = service.to_uppercase().replace('-', "_");
        let mut cmd = Command::new(binary);
        cmd.env("KEEL_DATABASE_URL", keel_store::testing::database_url())
            .env("KEEL_NATS_URL", keel_store::testing::nats_url())
            .env("KEEL_REDIS_URL", keel_store::testing::redis_url())
            .env(format!("KEEL_{upper}_SCHEMA"), schema)
            .env("KEEL_BUS_PREFIX", namespace)
            .env(format!("KEEL_{upper}_GRPC_ADDR"), "127.0.0.1:0")
            .env(format!("KEEL_{upper}_HTTP_ADDR"), "127.0.0.1:0")
            .env("KEEL_LOG_FORMAT", "json")
            .env("KEEL_MASTER_KEY", TEST_MASTER_KEY)
            .env("KEEL_TLS_DIR", keel_store::testing::tls_dir())
            .env(
                "KEEL_NATS_CREDS",
                keel_store::testing::nats_creds_file(&Role::Service(service.to_owned()), namespace),
            )
            .envs(if service == "provisioning" {
                vec![(
                    "KEEL_PROVISIONING_NATS_SIGNER_FILE".to_owned(),
                    keel_store::testing::nats_signer_file().display().to_string(),
                )]
            } else {
                vec![]
            })
            .envs(env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let logs = Arc::new(Mutex::new(String::new()));
        if let Some(err) = child.stderr.take() {
            let logs = logs.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(err).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(mut l) = logs.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let out = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(out).lines();
        let listening = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                    && v["event"] == "listening"
                {
                    return Some(v);
                }
            }
            None
        })
        .await;
        let Ok(Some(v)) = listening else {
            let logs = logs.lock().map(|l| l.clone()).unwrap_or_default();
            bail!("{service} did not announce its ports; logs:\n{logs}");
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = |k: &str| -> anyhow::Result<SocketAddr> { Ok(v[k].as_str().context("address")?.parse()?) };
        Ok(Self {
            grpc: addr("grpc")?,
            http: addr("http")?,
            schema: schema.to_owned(),
            namespace: namespace.to_owned(),
            child,
            logs,
        })
    }

    /// The gRPC URL (`https://`: every test process serves TLS with the test CA).
    pub fn grpc_url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// The HTTP base URL (`https://`).
    pub fn http_url(&self) -> String {
        format!("https://{}", self.http)
    }

    /// `GET path` on the process's HTTP port, over TLS: the status and body.
    pub async fn http_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        Ok(keel_runtime::tls::http_get(&keel_store::testing::tls_client(), self.http, path).await?)
    }

    /// Everything the process wrote to stderr (its logs) so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// A channel as a token-bearing client: trusts the test CA, presents no certificate.
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(keel_store::testing::tls_client()
            .endpoint(&self.grpc_url(), "grpc url")?
            .connect()
            .await?)
    }

    /// Whether the process has exited (by itself: a crash or an injected one), and how.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, as a crash.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            kill(Pid::from_raw(pid), Signal::SIGTERM)?;
        }
        Ok(tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??)
    }
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(pub Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            let v = format!("Bearer {t}")
                .parse()
                .map_err(|_| tonic::Status::invalid_argument("token"))?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(req)
    }
}

/// The path of a workspace binary (`keel-tenant` …) built in the same profile as the running
/// test. Integration tests of one package cannot name another package's binaries through
/// `CARGO_BIN_EXE_*`, and `cargo test -p <one package>` does not rebuild the others, so the
/// first call per binary runs `cargo build --bin <name>` (quick when it is up to date).
pub fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    static BUILD: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let path = dir.join(name);
    let mut built = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    if !built.iter().any(|b| b == name) {
        let release = dir.file_name().is_some_and(|d| d == "release");
        let mut cmd = std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-p", name, "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().with_context(|| format!("building {name}"))?;
        if !status.success() {
            bail!("cargo build --bin {name} failed");
        }
        built.push(name.to_owned());
    }
    Ok(path)
}

/// Removes everything a test or bench run named with `token` left on the shared servers:
/// PostgreSQL schemas and roles whose names contain it, JetStream streams (including KV
/// buckets) whose names contain it in any case, and Redis keys under `keel:<token>_`.
pub async fn drop_everything(token: &str) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&keel_store::testing::database_url())
        .await?;
    let like = format!("%{token}%");
    let schemas: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE $1")
            .bind(&like)
            .fetch_all(&pool)
            .await?;
    for s in schemas {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE"))
            .execute(&pool)
            .await?;
    }
    let roles: Vec<String> = sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1")
        .bind(&like)
        .fetch_all(&pool)
        .await?;
    for r in roles {
        sqlx::query(&format!("DROP OWNED BY \"{r}\""))
            .execute(&pool)
            .await?;
        sqlx::query(&format!("DROP ROLE IF EXISTS \"{r}\""))
            .execute(&pool)
            .await?;
    }
    pool.close().await;
    let client = keel_store::testing::nats_admin().await?;
    let js = async_nats::jetstream::new(client);
    let mut names = js.stream_names();
    let mut doomed = Vec::new();
    use futures::StreamExt;
    while let Some(Ok(name)) = names.next().await {
        if name.to_lowercase().contains(&token.to_lowercase()) {
            doomed.push(name);
        }
    }
    for name in doomed {
        let _ = js.delete_stream(&name).await;
    }
    let redis = redis::Client::open(keel_store::testing::redis_url())?;
    let mut conn = redis.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("keel:{token}_*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await?;
    }
    Ok(())
}
