//! One real tenant service per test (own schema and bus namespace), optionally a real timeline
//! indexer or billing meter beside it, and the real `keelctl` binary run against them as a subprocess, the way an
//! operator would.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keel_e2e::mesh::{Mesh, Part};
use keel_e2e::{Bearer, ServiceProc};
use keel_proto::v1 as pb;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A keelctl run: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

pub struct World {
    /// The tenant service (and the timeline, with [`World::with_timeline`]) on the shared mesh.
    pub e2e: Mesh,
    pub bootstrap: String,
    pub dir: tempfile::TempDir,
}

impl World {
    pub async fn start() -> World {
        Self::on(Mesh::builder().start().await)
    }

    /// A tenant service and a timeline indexer on the same bus namespace (each with its own
    /// schema); the indexer verifies tokens with the tenant service's JWKS.
    pub async fn with_timeline() -> World {
        Self::on(Mesh::builder().timeline(&[]).start().await)
    }

    /// A tenant service and a billing meter whose windows close at once (no grace, a pass every
    /// 100 ms), so usage records appear while the test waits.
    pub async fn with_billing() -> World {
        Self::on(
            Mesh::builder()
                .billing(&[
                    ("KEEL_BILLING_WINDOW_GRACE_SECS", "0"),
                    ("KEEL_BILLING_AGGREGATE_EVERY_MS", "100"),
                ])
                .start()
                .await,
        )
    }

    fn on(e2e: Mesh) -> World {
        World {
            bootstrap: e2e.bootstrap.clone(),
            dir: tempfile::tempdir().unwrap(),
            e2e,
        }
    }

    /// The tenant service's process.
    pub fn proc(&self) -> &ServiceProc {
        self.e2e.proc(Part::Tenant)
    }

    /// `keelctl` with this world's addresses, bootstrap API key and bus namespace, run in a fresh
    /// directory so no `.keel/bootstrap-token` of the developer is picked up.
    pub fn keelctl(&self, args: &[&str]) -> Command {
        let mut cmd = bare_keelctl(args, self.dir.path());
        cmd.env("KEEL_TENANT_ADDR", self.proc().grpc_url())
            .env(
                "KEEL_TLS_CA",
                keel_store::testing::tls_dir().join(keel_runtime::tls::local::CA_CERT),
            )
            .env("KEEL_API_KEY", &self.bootstrap)
            .env("KEEL_BUS_PREFIX", &self.proc().namespace)
            // An operator's NATS credentials, for `audit tail --from-start`.
            .env(
                "KEEL_NATS_CREDS",
                keel_store::testing::nats_creds_file(&keel_bus::acl::Role::Admin, ""),
            );
        if self.e2e.has(Part::Timeline) {
            cmd.env("KEEL_TIMELINE_ADDR", self.e2e.proc(Part::Timeline).grpc_url());
        }
        if self.e2e.has(Part::Billing) {
            cmd.env("KEEL_BILLING_ADDR", self.e2e.proc(Part::Billing).grpc_url());
        }
        cmd
    }

    pub async fn run(&self, args: &[&str]) -> Run {
        output(self.keelctl(args)).await
    }

    /// Runs and asserts exit 0; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args).await;
        assert!(run.success(), "keelctl {args:?} failed: {run:?}");
        run.stdout
    }

    /// Runs with `--output json`, asserts exit 0, parses stdout as one JSON document.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let out = self.ok(&args).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("keelctl {args:?}: not JSON ({e}): {out}"))
    }

    /// Creates a tenant through the CLI; returns its id.
    pub async fn create(&self, slug: &str) -> String {
        let t = self
            .json(&[
                "tenant",
                "create",
                "--name",
                &format!("Tenant {slug}"),
                "--slug",
                slug,
                "--tier",
                "low",
                "--owner-email",
                "owner@acme.example",
            ])
            .await;
        t["id"].as_str().unwrap().to_owned()
    }

    /// PENDING → PROVISIONING → ACTIVE, as the provisioning service would (keelctl has no
    /// command for these steps).
    pub async fn activate(&self, tenant_id: &str) {
        let channel = self.proc().channel().await.unwrap();
        let operator = TokenServiceClient::with_interceptor(channel.clone(), Bearer(None))
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: self.bootstrap.clone(),
                scopes: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let mut api = TenantServiceClient::with_interceptor(channel, Bearer(Some(operator)));
        let req = || pb::TenantLifecycleRequest {
            tenant: Some(pb::TenantRef {
                r#ref: Some(pb::tenant_ref::Ref::Id(tenant_id.to_owned())),
            }),
        };
        api.mark_provisioning(req()).await.unwrap();
        api.mark_provisioned(req()).await.unwrap();
    }

    /// GET /.well-known/license-jwks.json (the license keys) over TLS: the body.
    pub async fn license_jwks(&self) -> String {
        let (status, body) = self
            .proc()
            .http_get("/.well-known/license-jwks.json")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub async fn cleanup(self) {
        self.e2e.cleanup().await;
    }
}

/// `keelctl` with no credentials or service addresses from the caller's environment.
pub fn bare_keelctl(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_keelctl"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("KEEL_TOKEN")
        .env_remove("KEEL_API_KEY")
        .env_remove("KEEL_BOOTSTRAP_TOKEN")
        .env_remove("KEEL_TENANT_ADDR")
        .env_remove("KEEL_TIMELINE_ADDR")
        .env_remove("KEEL_BILLING_ADDR")
        .env_remove("KEEL_NATS_CREDS")
        .env_remove("KEEL_TLS_CA")
        .env_remove("KEEL_TLS_INSECURE")
        .env("KEEL_NATS_URL", keel_store::testing::nats_url())
        .env_remove("KEEL_BUS_PREFIX")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs to completion (at most 60 s).
pub async fn output(mut cmd: Command) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("keelctl did not finish within 60 s")
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A long-running keelctl (audit tail) whose output is read line by line with deadlines.
pub struct Tail {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub stderr: Lines<BufReader<ChildStderr>>,
}

impl Tail {
    pub fn spawn(mut cmd: Command) -> Tail {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        Tail {
            child,
            stdout,
            stderr,
        }
    }

    /// The first stderr line containing `needle`, within `timeout`.
    pub async fn stderr_line(&mut self, needle: &str, timeout: Duration) -> String {
        next_matching(&mut self.stderr, |l| l.contains(needle), timeout).await
    }

    /// The first stdout line for which `pred` holds, within `timeout`.
    pub async fn stdout_line(&mut self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        next_matching(&mut self.stdout, pred, timeout).await
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Ctrl-C (SIGINT); the exit code and the rest of stderr, within `timeout`.
    pub async fn interrupt(mut self, timeout: Duration) -> (Option<i32>, String) {
        let pid = self.child.id().and_then(|p| i32::try_from(p).ok()).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGINT).unwrap();
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .expect("keelctl did not exit after Ctrl-C")
            .unwrap();
        let mut rest = String::new();
        while let Ok(Ok(Some(line))) = tokio::time::timeout(timeout, self.stderr.next_line()).await {
            rest.push_str(&line);
            rest.push('\n');
        }
        (status.code(), rest)
    }
}

async fn next_matching<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut Lines<R>,
    pred: impl Fn(&str) -> bool,
    timeout: Duration,
) -> String {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(timeout, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if pred(&line) {
                return Some(line);
            }
            seen.push(line);
        }
        None
    })
    .await;
    match found {
        Ok(Some(line)) => line,
        Ok(None) => panic!("output ended without the expected line; got {seen:#?}"),
        Err(_) => panic!("no expected line within {timeout:?}; got {seen:#?}"),
    }
}

pub fn slug() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}
