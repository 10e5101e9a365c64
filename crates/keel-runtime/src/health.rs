//! Readiness probes and the HTTP router serving `/livez`, `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Serialize;

use crate::metrics::Metrics;

/// How long one readiness probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The dependencies a service needs to be ready, and whether it is draining.
///
/// Cheap to clone; clones share the draining flag.
#[derive(Clone, Default)]
pub struct Health {
    postgres: Option<sqlx::PgPool>,
    nats: Option<async_nats::Client>,
    redis: Option<redis::aio::ConnectionManager>,
    custom: Vec<(String, CheckFn)>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("postgres", &self.postgres.is_some())
            .field("nats", &self.nats.is_some())
            .field("redis", &self.redis.is_some())
            .field("custom", &self.custom.iter().map(|(n, _)| n).collect::<Vec<_>>())
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// Outcome of the readiness probes, as served by `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// `ready`, `not_ready` or `draining`.
    pub status: &'static str,
    /// Probe name → `ok` or `error: <why>`.
    pub checks: BTreeMap<String, String>,
}

impl Readiness {
    /// Whether the service should receive traffic.
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

impl Health {
    /// No dependencies: ready until draining.
    pub fn new() -> Self {
        Self::default()
    }

    /// Probe PostgreSQL with `SELECT 1`.
    pub fn with_postgres(mut self, pool: sqlx::PgPool) -> Self {
        self.postgres = Some(pool);
        self
    }

    /// Probe NATS: connected and a flush round-trip succeeds.
    pub fn with_nats(mut self, client: async_nats::Client) -> Self {
        self.nats = Some(client);
        self
    }

    /// Probe Redis with `PING`.
    pub fn with_redis(mut self, conn: redis::aio::ConnectionManager) -> Self {
        self.redis = Some(conn);
        self
    }

    /// A service's own probe (e.g. its JWKS source), reported under `name`.
    pub fn with_check<F, Fut>(mut self, name: impl Into<String>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.custom
            .push((name.into(), Arc::new(move || Box::pin(check()) as CheckFuture)));
        self
    }

    /// Shutdown has begun: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`Health::set_draining`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Runs every probe concurrently, each bounded by [`PROBE_TIMEOUT`].
    pub async fn check(&self) -> Readiness {
        if self.is_draining() {
            return Readiness {
                status: "draining",
                checks: BTreeMap::new(),
            };
        }
        let postgres = async {
            let pool = self.postgres.as_ref()?;
            let probe = async {
                sqlx::query("SELECT 1")
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            };
            Some(("postgres".to_owned(), bounded(probe).await))
        };
        let nats = async {
            let client = self.nats.as_ref()?;
            let probe = async {
                let state = client.connection_state();
                if state != async_nats::connection::State::Connected {
                    return Err(format!("not connected ({state:?})"));
                }
                client.flush().await.map_err(|e| e.to_string())
            };
            Some(("nats".to_owned(), bounded(probe).await))
        };
        let redis = async {
            let mut conn = self.redis.clone()?;
            let probe = async move {
                let pong: String = redis::cmd("PING")
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                match pong.as_str() {
                    "PONG" => Ok(()),
                    other => Err(format!("unexpected PING reply {other:?}")),
                }
            };
            Some(("redis".to_owned(), bounded(probe).await))
        };
        let custom = async {
            let probes = self
                .custom
                .iter()
                .map(|(name, check)| async move { (name.clone(), bounded(check()).await) });
            futures::future::join_all(probes).await
        };
        let (postgres, nats, redis, custom) = tokio::join!(postgres, nats, redis, custom);

        let mut checks = BTreeMap::new();
        let mut ready = true;
        for (name, outcome) in [postgres, nats, redis].into_iter().flatten().chain(custom) {
            let text = match outcome {
                Ok(()) => "ok".to_owned(),
                Err(e) => {
                    ready = false;
                    format!("error: {}", crate::telemetry::scrub(&e))
                }
            };
            checks.insert(name, text);
        }
        Readiness {
            status: if ready { "ready" } else { "not_ready" },
            checks,
        }
    }
}

async fn bounded(probe: impl Future<Output = Result<(), String>>) -> Result<(), String> {
    match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {}s", PROBE_TIMEOUT.as_secs())),
    }
}

/// A Redis connection that connects on first use (and reconnects), so a service can start, and
/// report not ready, while Redis is down. Fails on a malformed URL or outside a Tokio runtime.
pub fn redis_lazy(url: &str) -> crate::Result<redis::aio::ConnectionManager> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(crate::Error::Connect {
            dependency: "redis",
            message: "a lazy connection needs a Tokio runtime".into(),
        });
    }
    let invalid = |e: redis::RedisError| crate::Error::Config {
        name: "redis url".into(),
        value: crate::telemetry::scrub(url).into_owned(),
        reason: e.to_string(),
    };
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(PROBE_TIMEOUT))
        .set_response_timeout(Some(PROBE_TIMEOUT))
        .set_number_of_retries(1);
    redis::Client::open(url)
        .and_then(|client| client.get_connection_manager_lazy(settings))
        .map_err(invalid)
}

/// `GET /livez`, `GET /readyz` and `GET /metrics`. Merge a service's own routes into it.
///
/// `/readyz` also sets `keel_dependency_up{dependency}` from the probes it ran.
pub fn router(health: Health, metrics: Metrics) -> Router {
    let readyz_metrics = metrics.clone();
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || readyz(health.clone(), readyz_metrics.clone())),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                        metrics.render(),
                    )
                }
            }),
        )
}

async fn readyz(health: Health, metrics: Metrics) -> impl IntoResponse {
    let readiness = health.check().await;
    for (name, outcome) in &readiness.checks {
        let up = i64::from(outcome == "ok");
        metrics
            .dependency_up()
            .with_label_values(&[name.as_str()])
            .set(up);
    }
    let code = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(readiness))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_dependencies_it_is_ready_until_draining() {
        let health = Health::new();
        let r = health.check().await;
        assert!(r.is_ready());
        assert!(r.checks.is_empty());
        health.clone().set_draining();
        let r = health.check().await;
        assert_eq!(r.status, "draining");
        assert!(!r.is_ready());
    }

    #[tokio::test]
    async fn custom_checks_are_reported_and_scrubbed() {
        let health = Health::new()
            .with_check("jwks", || async { Ok(()) })
            .with_check("vault", || async {
                Err("refused https://u:hunter2@vault:8200".to_owned())
            });
        let r = health.check().await;
        assert_eq!(r.status, "not_ready");
        assert_eq!(r.checks["jwks"], "ok");
        assert_eq!(
            r.checks["vault"],
            "error: refused https://u:[redacted]@vault:8200"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_probe_times_out() {
        let health = Health::new().with_check("slow", std::future::pending);
        let r = health.check().await;
        assert_eq!(r.checks["slow"], "error: timed out after 2s");
    }
}
