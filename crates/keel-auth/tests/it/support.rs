//! Shared helpers: unique tenant ids, token minting, a toggleable JWKS server, deadline waits.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keel_auth::{Claims, JwkSet, SigningKey};

pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A tenant id no other test (or earlier run) uses.
pub fn unique_tenant(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!(
        "it-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

pub fn claims(tenant: &str, exp: i64) -> Claims {
    Claims {
        sub: "u_test".into(),
        tenant: tenant.into(),
        scopes: vec![keel_auth::scopes::TENANT_READ.into()],
        exp,
        iat: now() - 5,
        jti: unique_tenant("jti"),
        tier: None,
    }
}

pub fn set_of(keys: &[&SigningKey]) -> JwkSet {
    JwkSet {
        keys: keys.iter().map(|k| k.public_jwk()).collect(),
    }
}

/// Polls `check` until it returns true or `within` passes.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP server for `/.well-known/jwks.json` whose set can be swapped, or withdrawn (503).
pub struct JwksServer {
    pub url: String,
    served: Arc<Mutex<Option<JwkSet>>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    served: Arc<Mutex<Option<JwkSet>>>,
    hits: Arc<AtomicUsize>,
}

async fn serve_jwks(State(s): State<Shared>) -> Response {
    s.hits.fetch_add(1, Ordering::SeqCst);
    match s.served.lock().unwrap().clone() {
        Some(set) => axum::Json(set).into_response(),
        None => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

impl JwksServer {
    pub async fn start(set: JwkSet) -> JwksServer {
        let served = Arc::new(Mutex::new(Some(set)));
        let hits = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new()
            .route("/.well-known/jwks.json", axum::routing::get(serve_jwks))
            .with_state(Shared {
                served: served.clone(),
                hits: hits.clone(),
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        JwksServer {
            url: format!("http://{addr}/.well-known/jwks.json"),
            served,
            hits,
            task,
        }
    }

    /// Serve `set`, or 503 when `None`.
    pub fn serve(&self, set: Option<JwkSet>) {
        *self.served.lock().unwrap() = set;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
