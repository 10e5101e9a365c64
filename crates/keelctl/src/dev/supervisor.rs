//! Runs the mesh: spawn, prefix logs, wait for readiness, stop on a signal.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
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
        wait_ready(r, ready_timeout).await?;
        println!(
            "[dev] {:<12} ready on http://127.0.0.1:{}/readyz",
            r.spec.name, r.spec.http_port
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

async fn wait_ready(r: &mut Running, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        if let Ok(Some(status)) = r.child.try_wait() {
            bail!("{} exited during start-up ({status})", r.spec.name);
        }
        if http_status(r.spec.http_port, "/readyz").await == Some(200) {
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

/// A minimal HTTP/1.0 GET: enough for a readiness probe, no client library needed.
async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port)))
        .await
        .ok()?
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}
