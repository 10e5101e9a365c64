//! `/livez`, `/readyz` and `/metrics` against real dependencies.

use std::net::SocketAddr;

use keel_runtime::health::{self, Health};
use keel_runtime::{Metrics, Shutdown, grpc};
use serde_json::Value;

use crate::support::*;

async fn serve(health: Health, metrics: Metrics) -> (SocketAddr, Shutdown) {
    let (listener, addr) = grpc::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let shutdown = Shutdown::new();
    let server = axum::serve(listener, health::router(health, metrics))
        .with_graceful_shutdown(shutdown.cancelled_owned());
    tokio::spawn(async move { server.await });
    (addr, shutdown)
}

async fn postgres() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(POSTGRES_URL)
        .await
        .expect("local PostgreSQL")
}

async fn nats() -> async_nats::Client {
    keel_runtime::nats::connect(NATS_URL, Some(&nats_creds_file()), "readiness-test")
        .await
        .expect("local NATS")
}

async fn redis() -> redis::aio::ConnectionManager {
    let client = redis::Client::open(REDIS_URL).unwrap();
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("local Redis")
}

#[tokio::test]
async fn ready_when_postgres_nats_and_redis_answer() {
    let health = Health::new()
        .with_postgres(postgres().await)
        .with_nats(nats().await)
        .with_redis(redis().await);
    let metrics = Metrics::new().unwrap();
    let (addr, shutdown) = serve(health, metrics.clone()).await;

    assert_eq!(http_get(addr, "/livez").await, (200, "ok".to_owned()));

    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "status": "ready",
            "checks": {"postgres": "ok", "nats": "ok", "redis": "ok"}
        })
    );

    metrics.observe_request("acme", "tenant", "GetTenant", "OK", 0.003);
    let (status, text) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains(
            r#"keel_requests_total{code="OK",method="GetTenant",service="tenant",tenant="acme"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"keel_dependency_up{dependency="redis"} 1"#),
        "{text}"
    );
    shutdown.trigger();
}

#[tokio::test]
async fn not_ready_names_an_unreachable_redis() {
    let health = Health::new()
        .with_postgres(postgres().await)
        .with_nats(nats().await)
        .with_redis(health::redis_lazy(CLOSED_REDIS_URL).unwrap());
    let metrics = Metrics::new().unwrap();
    let (addr, shutdown) = serve(health, metrics).await;

    let (status, body) = within(
        std::time::Duration::from_secs(10),
        "/readyz",
        http_get(addr, "/readyz"),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["nats"], "ok");
    let redis = body["checks"]["redis"].as_str().unwrap();
    assert!(redis.starts_with("error: "), "{redis}");

    let (_, text) = http_get(addr, "/metrics").await;
    assert!(
        text.contains(r#"keel_dependency_up{dependency="redis"} 0"#),
        "{text}"
    );
    shutdown.trigger();
}

#[tokio::test]
async fn not_ready_once_draining() {
    let health = Health::new().with_nats(nats().await);
    let (addr, shutdown) = serve(health.clone(), Metrics::new().unwrap()).await;
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    health.set_draining();
    let (status, body) = http_get(addr, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    assert_eq!(http_get(addr, "/livez").await.0, 200);
    shutdown.trigger();
}
