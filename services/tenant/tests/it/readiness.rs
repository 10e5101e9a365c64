//! `/readyz` tells the truth about the service's workers: a relay or consumer with work waiting
//! and no progress for `KEEL_READY_STALL_SECS` makes it fail, naming the worker, and it is ready
//! again once the worker moves. The figures are on `/metrics`.

use std::collections::HashMap;
use std::time::Duration;

use keel_store::testing::eventually;

use crate::harness::{World, slug};

async fn ready(w: &World) -> (bool, String) {
    let (status, body) = w.http_get("/readyz").await;
    (status == 200, body)
}

/// The outcome `/readyz` gives for check `name`.
async fn check(w: &World, name: &str) -> String {
    let (_, body) = w.http_get("/readyz").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["checks"][name].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn a_stalled_relay_or_consumer_makes_the_service_unready_until_it_moves() {
    let w = World::start_with(HashMap::from([(
        "KEEL_READY_STALL_SECS".to_owned(),
        "2".to_owned(),
    )]))
    .await;
    w.create(&slug(), "a@a.example").await;
    eventually("ready", Duration::from_secs(20), || async {
        ready(&w).await.0.then_some(())
    })
    .await;

    // The relay cannot store its checkpoint (the test holds the row): it publishes, but the
    // events stay unconfirmed behind it.
    let mut held = w.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM relay_checkpoints WHERE relay = 'jetstream' FOR UPDATE")
        .execute(&mut *held)
        .await
        .unwrap();
    w.create(&slug(), "b@b.example").await;
    let outcome = eventually("unready naming the relay", Duration::from_secs(20), || async {
        let outcome = check(&w, "relay jetstream progressing").await;
        (outcome.starts_with("error") && !ready(&w).await.0).then_some(outcome)
    })
    .await;
    assert!(outcome.contains("stalled"), "{outcome}");
    let (_, metrics) = w.http_get("/metrics").await;
    let lag = metrics
        .lines()
        .find(|l| l.starts_with("keel_relay_lag_seconds{relay=\"jetstream\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .expect("keel_relay_lag_seconds for the relay");
    assert!(lag >= 2.0, "{lag}");
    held.rollback().await.unwrap();
    eventually("ready again", Duration::from_secs(20), || async {
        ready(&w).await.0.then_some(())
    })
    .await;

    // The tenants view cannot be written: its consumer has messages it cannot ack.
    let mut held = w.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tenants_view IN EXCLUSIVE MODE")
        .execute(&mut *held)
        .await
        .unwrap();
    w.create(&slug(), "c@c.example").await;
    let outcome = eventually("unready naming the consumer", Duration::from_secs(30), || async {
        let outcome = check(&w, "consumer tenant-tenants-view progressing").await;
        (outcome.starts_with("error") && !ready(&w).await.0).then_some(outcome)
    })
    .await;
    assert!(outcome.contains("stalled"), "{outcome}");
    held.rollback().await.unwrap();
    eventually("ready once the view moves", Duration::from_secs(30), || async {
        ready(&w).await.0.then_some(())
    })
    .await;
    w.cleanup().await;
}
