//! Test support shared by every crate's integration tests (feature `testing`): each test gets
//! its own PostgreSQL schema and bus namespace, so tests run in parallel on the same servers
//! without seeing each other, and waits with deadlines instead of sleeps.

use std::future::Future;
use std::time::{Duration, Instant};

use keel_bus::Bus;

use crate::{Result, Store};

/// PostgreSQL for tests: `KEEL_TEST_DATABASE_URL`, else the local `keel` database.
pub fn database_url() -> String {
    std::env::var("KEEL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("KEEL_DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/keel".to_owned())
}

pub fn nats_url() -> String {
    std::env::var("KEEL_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
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
        let bus = Bus::connect(&nats_url(), &token).await?;
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
