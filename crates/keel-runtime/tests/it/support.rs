//! HTTP over a raw socket (no client dependency needed) and deadline-bounded waiting.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Keel's own NATS (JWT auth), started by `infra/local/services.sh`.
pub const NATS_URL: &str = "nats://127.0.0.1:4333";

/// Admin credentials for the local Keel NATS, in a file of their own.
pub fn nats_creds_file() -> std::path::PathBuf {
    use keel_runtime::nats::authority::{Authority, Permissions, default_home, write_private};
    let authority =
        Authority::load(&default_home()).expect("the local NATS trust chain (run ./infra/local/services.sh)");
    let creds = authority.user(
        "runtime-test",
        |_| Permissions::admin(),
        Some(Duration::from_secs(3600)),
    );
    let path = std::env::temp_dir().join(format!(
        "keel-runtime-test-{}.creds",
        uuid::Uuid::new_v4().simple()
    ));
    write_private(&path, &creds.to_file()).expect("write creds");
    path
}
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Nothing listens on port 1.
pub const CLOSED_REDIS_URL: &str = "redis://127.0.0.1:1";

/// A tenant configuration on ports 0 with `vars` as its environment.
pub fn config_with(vars: Vec<(String, String)>) -> keel_runtime::Result<keel_runtime::Config> {
    let args = [
        "keel-tenant",
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ];
    match keel_runtime::Config::from_vars("tenant", args.map(String::from), vars)? {
        keel_runtime::ConfigOrPrint::Run(config) => Ok(config),
        keel_runtime::ConfigOrPrint::Print(_) => unreachable!("no --print-config given"),
    }
}

/// `GET path` → (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP listener");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// Awaits `f` but fails the test after `limit`.
pub async fn within<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {limit:?}"))
}
