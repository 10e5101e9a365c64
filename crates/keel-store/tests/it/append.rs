use std::sync::Arc;

use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{AggregateError, CqrsFramework};
use keel_store::Metadata;
use keel_store::testing::TestEnv;
use serde_json::json;

use crate::counter::{Counter, CounterCommand};

fn event(id: &str, seq: usize) -> SerializedEvent {
    SerializedEvent::new(
        id.into(),
        seq,
        "counter".into(),
        "Added".into(),
        "1".into(),
        json!({"Added": {"amount": 1, "note": ""}}),
        serde_json::to_value(Metadata::new("acme", "user:alice").into_map()).unwrap(),
    )
}

async fn count(env: &TestEnv, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn concurrent_appends_at_the_same_sequence_one_wins_nothing_partial() {
    let env = TestEnv::new("store").await.unwrap();
    let repo = Arc::new(env.store.repository());
    for round in 0..30 {
        let id = format!("agg-{round}");
        // Writer X appends three events, writer Y two, both starting at sequence 1.
        let x: Vec<_> = (1..=3).map(|s| event(&id, s)).collect();
        let y: Vec<_> = (1..=2).map(|s| event(&id, s)).collect();
        let (rx, ry) = tokio::join!(
            { let r = repo.clone(); async move { r.persist::<Counter>(&x, None).await } },
            { let r = repo.clone(); async move { r.persist::<Counter>(&y, None).await } },
        );
        let stored = count(&env, &id).await;
        match (rx, ry) {
            (Ok(()), Err(PersistenceError::OptimisticLockError)) => assert_eq!(stored, 3, "round {round}"),
            (Err(PersistenceError::OptimisticLockError), Ok(())) => assert_eq!(stored, 2, "round {round}"),
            other => panic!("round {round}: expected exactly one winner, got {other:?}"),
        }
    }
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn commands_through_cqrs_es_conflict_instead_of_overwriting() {
    let env = TestEnv::new("store").await.unwrap();
    let cqrs: Arc<CqrsFramework<Counter, _>> = Arc::new(env.store.framework::<Counter>(()));
    let meta = || Metadata::new("acme", "user:alice").into_map();
    let mut conflicts = 0;
    let mut handles = Vec::new();
    for _ in 0..8 {
        let cqrs = cqrs.clone();
        let m = meta();
        handles.push(tokio::spawn(async move { cqrs.execute_with_metadata("c1", CounterCommand::Add(1), m).await }));
    }
    let mut ok = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(()) => ok += 1,
            Err(AggregateError::AggregateConflict) => conflicts += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(ok + conflicts, 8);
    assert!(ok >= 1);
    // Every success is one stored event at consecutive sequences.
    let seqs: Vec<i64> = sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = 'c1' ORDER BY sequence")
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    assert_eq!(seqs, (1..=ok).collect::<Vec<i64>>());
    // A rejected command stores nothing.
    let err = cqrs.execute_with_metadata("c1", CounterCommand::Add(0), meta()).await.unwrap_err();
    assert!(matches!(err, AggregateError::UserError(_)));
    assert_eq!(count(&env, "c1").await, ok);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn events_without_a_tenant_are_refused() {
    let env = TestEnv::new("store").await.unwrap();
    let mut e = event("t1", 1);
    e.metadata = json!({"actor": "system"});
    let err = env.store.repository().persist::<Counter>(&[e], None).await.unwrap_err();
    assert!(err.to_string().contains("tenant_id"), "{err}");
    assert_eq!(count(&env, "t1").await, 0);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn snapshots_round_trip_and_rebuild_state() {
    let env = TestEnv::new("store").await.unwrap();
    let cqrs = env.store.snapshot_framework::<Counter>((), 2);
    for i in 1..=5 {
        cqrs.execute_with_metadata("s1", CounterCommand::Add(i), Metadata::new("acme", "system").into_map())
            .await
            .unwrap();
    }
    // With a snapshot every 2 events, the last one was taken at sequence 4 (1+2+3+4 = 10).
    let snap = env.store.repository().get_snapshot::<Counter>("s1").await.unwrap().expect("snapshot");
    assert_eq!(snap.aggregate["value"], json!(10));
    assert_eq!(snap.current_sequence, 4);
    assert_eq!(snap.current_snapshot, 2);
    assert_eq!(count(&env, "s1").await, 5);
    // Loading goes snapshot + the events after it, and gives the true state.
    cqrs.execute_with_metadata("s1", CounterCommand::Add(6), Metadata::new("acme", "system").into_map())
        .await
        .unwrap();
    let snap = env.store.repository().get_snapshot::<Counter>("s1").await.unwrap().expect("snapshot");
    assert_eq!((snap.aggregate["value"].clone(), snap.current_sequence), (json!(21), 6));
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn update_delete_and_truncate_on_events_fail() {
    let env = TestEnv::new("store").await.unwrap();
    env.store.repository().persist::<Counter>(&[event("u1", 1)], None).await.unwrap();
    let pool = env.store.pool();
    for sql in [
        "UPDATE events SET payload = '{}'::jsonb",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(count(&env, "u1").await, 1);
    env.cleanup().await.unwrap();
}
