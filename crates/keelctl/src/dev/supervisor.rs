//! Runs the mesh: spawn, prefix logs, wait for readiness, stop on a signal.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

use super::{SERVICES, ServiceSpec};

struct Running {
    spec: &'static ServiceSpec,
    child: Child,
}

pub async fn up(bin_dir: &Path, only: &[String], ready_timeout: Duration) -> anyhow::Result<()> {
    let chosen: Vec<&'static ServiceSpec> = SERVICES
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
        .collect();
    // Each service connects to Keel's NATS with credentials of its own (see keel_bus::acl).
    let nats_home = keel_runtime::nats::authority::default_home();
    let authority = crate::nats::authority(&nats_home)?;
    let creds_dir = nats_home.join("creds");
    std::fs::create_dir_all(&creds_dir).with_context(|| format!("creating {}", creds_dir.display()))?;
    let signer_file = nats_home.join("signer.json");
    keel_runtime::nats::authority::write_private(&signer_file, &authority.signer()?.to_file())?;
    let namespace = std::env::var("KEEL_BUS_PREFIX").unwrap_or_default();
    // TLS everywhere: a local CA and a certificate per service in .keel/tls, unless the
    // environment names TLS material of its own or asks for plaintext.
    // KEEL_TLS_INSECURE read the way the services read it (a bad value is refused here too).
    let insecure = keel_runtime::TlsSetting::resolve("tenant", |k| std::env::var(k).ok())?
        == keel_runtime::TlsSetting::Insecure;
    let own_tls = std::env::var_os("KEEL_TLS_DIR").is_some() || std::env::var_os("KEEL_TLS_CA").is_some();
    let tls_dir = std::path::PathBuf::from(super::TLS_DIR);
    if !insecure && !own_tls {
        let made = keel_runtime::tls::local::ensure(&tls_dir, keel_runtime::tls::local::SERVICES)?;
        if made.ca {
            println!(
                "[dev] made a local CA and service certificates in {}",
                tls_dir.display()
            );
        }
    }
    let probe_tls = if insecure {
        println!("[dev] KEEL_TLS_INSECURE is set: the mesh runs plaintext");
        keel_runtime::Tls::insecure()
    } else {
        let ca = std::env::var_os("KEEL_TLS_CA")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("KEEL_TLS_DIR")
                    .map(|d| Path::new(&d).join(keel_runtime::tls::local::CA_CERT))
            })
            .unwrap_or_else(|| tls_dir.join(keel_runtime::tls::local::CA_CERT));
        keel_runtime::Tls::client_of(&ca)?
    };
    let mut running = Vec::new();
    for spec in chosen {
        let path = bin_dir.join(spec.binary);
        if !path.exists() {
            println!(
                "[dev] {:<12} not built yet ({}), skipped",
                spec.name,
                path.display()
            );
            continue;
        }
        let creds_file = creds_dir.join(format!("{}.creds", spec.name));
        let role = keel_bus::acl::Role::Service(spec.name.to_owned());
        let creds = keel_bus::acl::issue(&authority, &role, &namespace, None);
        keel_runtime::nats::authority::write_private(&creds_file, &creds.to_file())?;
        let mut command = Command::new(&path);
        if spec.name == "provisioning" {
            command.env("KEEL_PROVISIONING_NATS_SIGNER_FILE", &signer_file);
            // Provisioning calls the tenant service as its own platform account, not as the
            // bootstrap operator: made once the tenant service is ready.
            let bootstrap = std::env::var("KEEL_BOOTSTRAP_TOKEN").ok();
            let tenant = running
                .iter_mut()
                .find(|r: &&mut Running| r.spec.name == "tenant");
            if let (None, Some(bootstrap), Some(tenant)) =
                (std::env::var_os("KEEL_PROVISIONING_API_KEY"), bootstrap, tenant)
            {
                wait_ready(tenant, &probe_tls, ready_timeout).await?;
                let url = format!("{}://127.0.0.1:{}", probe_tls.scheme(), tenant.spec.grpc_port);
                let key = super::platform_key::ensure(&probe_tls, &url, &bootstrap).await?;
                command.env("KEEL_PROVISIONING_API_KEY", key);
            }
        }
        if !insecure && !own_tls {
            command.env("KEEL_TLS_DIR", std::path::absolute(&tls_dir)?);
        }
        let mut child = command
            .env("KEEL_NATS_CREDS", &creds_file)
            .env(
                "KEEL_LOG_FORMAT",
                std::env::var("KEEL_LOG_FORMAT").unwrap_or_else(|_| "pretty".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(prefix(spec.name, out));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(prefix(spec.name, err));
        }
        println!(
            "[dev] {:<12} started (pid {}), gRPC :{} HTTP :{}",
            spec.name,
            child.id().unwrap_or(0),
            spec.grpc_port,
            spec.http_port
        );
        running.push(Running { spec, child });
    }
    if running.is_empty() {
        bail!(
            "no service binary found in {}: run `cargo build --bins` first",
            bin_dir.display()
        );
    }
    for r in &mut running {
        wait_ready(r, &probe_tls, ready_timeout).await?;
        println!(
            "[dev] {:<12} ready on {}://127.0.0.1:{}/readyz",
            r.spec.name,
            probe_tls.scheme(),
            r.spec.http_port
        );
    }
    println!("[dev] mesh is up ({} services). Ctrl-C stops it.", running.len());

    let mut term = signal(SignalKind::terminate())?;
    let exited = async {
        // Any service dying on its own brings the mesh down: a half mesh only confuses.
        let waits: Vec<_> = running.iter_mut().map(|r| Box::pin(r.child.wait())).collect();
        let _ = futures::future::select_all(waits).await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("\n[dev] stopping…"),
        _ = term.recv() => println!("[dev] SIGTERM: stopping…"),
        () = exited => println!("[dev] a service exited; stopping the rest"),
    }
    stop(&mut running).await;
    Ok(())
}

async fn stop(running: &mut [Running]) {
    for r in running.iter() {
        if let Some(pid) = r.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for r in running.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), r.child.wait()).await {
            Ok(Ok(status)) => println!("[dev] {:<12} stopped ({status})", r.spec.name),
            _ => {
                let _ = r.child.kill().await;
                println!("[dev] {:<12} killed after 15s", r.spec.name);
            }
        }
    }
}

async fn prefix(name: &'static str, stream: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        println!("{name:>12} | {line}");
    }
}

async fn wait_ready(r: &mut Running, tls: &keel_runtime::Tls, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Ok(Some(status)) = r.child.try_wait() {
            bail!("{} exited during start-up ({status})", r.spec.name);
        }
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], r.spec.http_port));
        if matches!(
            keel_runtime::tls::http_get(tls, addr, "/readyz").await,
            Ok((200, _))
        ) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{} not ready after {timeout:?} (GET :{}/readyz)",
                r.spec.name,
                r.spec.http_port
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}
