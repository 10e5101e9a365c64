use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{AggregateError, CqrsFramework};
use keel_store::testing::{TestEnv, eventually};
use keel_store::{EventRepository, GroupCommit, Metadata};
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
            {
                let r = repo.clone();
                async move { r.persist::<Counter>(&x, None).await }
            },
            {
                let r = repo.clone();
                async move { r.persist::<Counter>(&y, None).await }
            },
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
        handles.push(tokio::spawn(async move {
            cqrs.execute_with_metadata("c1", CounterCommand::Add(1), m).await
        }));
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
    let seqs: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = 'c1' ORDER BY sequence")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(seqs, (1..=ok).collect::<Vec<i64>>());
    // A rejected command stores nothing.
    let err = cqrs
        .execute_with_metadata("c1", CounterCommand::Add(0), meta())
        .await
        .unwrap_err();
    assert!(matches!(err, AggregateError::UserError(_)));
    assert_eq!(count(&env, "c1").await, ok);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn events_without_a_tenant_are_refused() {
    let env = TestEnv::new("store").await.unwrap();
    let mut e = event("t1", 1);
    e.metadata = json!({"actor": "system"});
    let err = env
        .store
        .repository()
        .persist::<Counter>(&[e], None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tenant_id"), "{err}");
    assert_eq!(count(&env, "t1").await, 0);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn snapshots_round_trip_and_rebuild_state() {
    let env = TestEnv::new("store").await.unwrap();
    let cqrs = env.store.snapshot_framework::<Counter>((), 2);
    for i in 1..=5 {
        cqrs.execute_with_metadata(
            "s1",
            CounterCommand::Add(i),
            Metadata::new("acme", "system").into_map(),
        )
        .await
        .unwrap();
    }
    // With a snapshot every 2 events, the last one was taken at sequence 4 (1+2+3+4 = 10).
    let snap = env
        .store
        .repository()
        .get_snapshot::<Counter>("s1")
        .await
        .unwrap()
        .expect("snapshot");
    assert_eq!(snap.aggregate["value"], json!(10));
    assert_eq!(snap.current_sequence, 4);
    assert_eq!(snap.current_snapshot, 2);
    assert_eq!(count(&env, "s1").await, 5);
    // Loading goes snapshot + the events after it, and gives the true state.
    cqrs.execute_with_metadata(
        "s1",
        CounterCommand::Add(6),
        Metadata::new("acme", "system").into_map(),
    )
    .await
    .unwrap();
    let snap = env
        .store
        .repository()
        .get_snapshot::<Counter>("s1")
        .await
        .unwrap()
        .expect("snapshot");
    assert_eq!(
        (snap.aggregate["value"].clone(), snap.current_sequence),
        (json!(21), 6)
    );
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn update_delete_and_truncate_on_events_fail() {
    let env = TestEnv::new("store").await.unwrap();
    env.store
        .repository()
        .persist::<Counter>(&[event("u1", 1)], None)
        .await
        .unwrap();
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

// ---- Group commit: concurrent calls share statements, each keeps its own outcome. ----

/// Rows of `events` waiting for a table lock (statements held back by [`hold_table`]).
async fn lock_waiters(env: &TestEnv) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE relation = 'events'::regclass AND NOT granted")
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

/// Takes a table lock on `events` in a transaction, so statements of the repository queue behind it.
async fn hold_table(env: &TestEnv, mode: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = env.store.pool().begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE events IN {mode} MODE"))
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

/// A repository that runs one statement of each kind at a time, so that calls made while it is
/// busy are certain to share the next one.
fn one_at_a_time(env: &TestEnv) -> EventRepository {
    let config = GroupCommit {
        appends_in_flight: 1,
        loads_in_flight: 1,
        ..GroupCommit::default()
    };
    EventRepository::with_group_commit(env.store.pool().clone(), config)
}

type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, PersistenceError>> + Send + 'a>>;

/// Runs `calls` as one group: the repository's only statement slot is held by a call blocked on
/// a table lock while they are queued (each polled once), then the lock is released.
async fn as_one_group<'a, T: Send + 'static>(
    env: &TestEnv,
    lock_mode: &str,
    blocker: impl Future<Output = ()> + Send + 'static,
    mut calls: Vec<Call<'a, T>>,
) -> Vec<Result<T, PersistenceError>> {
    let lock = hold_table(env, lock_mode).await;
    let blocked = tokio::spawn(blocker);
    eventually(
        "the blocker waits on the lock",
        Duration::from_secs(10),
        || async { (lock_waiters(env).await == 1).then_some(()) },
    )
    .await;
    for call in &mut calls {
        assert!(
            futures::poll!(call.as_mut()).is_pending(),
            "a call finished while the repository was busy"
        );
    }
    lock.commit().await.unwrap();
    blocked.await.unwrap();
    futures::future::join_all(calls).await
}

fn events(id: &str, seqs: std::ops::RangeInclusive<usize>) -> Vec<SerializedEvent> {
    seqs.map(|s| event(id, s)).collect()
}

async fn sequences(env: &TestEnv, id: &str) -> Vec<i64> {
    sqlx::query_scalar("SELECT sequence FROM events WHERE aggregate_id = $1 ORDER BY sequence")
        .bind(id)
        .fetch_all(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn many_concurrent_commands_to_distinct_aggregates_all_succeed() {
    let env = TestEnv::new("store").await.unwrap();
    let cqrs: Arc<CqrsFramework<Counter, _>> = Arc::new(env.store.framework::<Counter>(()));
    let mut tasks = Vec::new();
    for a in 0..64 {
        let cqrs = cqrs.clone();
        tasks.push(tokio::spawn(async move {
            for i in 1..=5 {
                let meta = Metadata::new("acme", "user:alice").into_map();
                cqrs.execute_with_metadata(&format!("many-{a}"), CounterCommand::Add(i), meta)
                    .await?;
            }
            Ok::<_, AggregateError<_>>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let repo = env.store.repository();
    for a in 0..64 {
        let id = format!("many-{a}");
        assert_eq!(sequences(&env, &id).await, vec![1, 2, 3, 4, 5], "{id}");
        // Loads (grouped too) give each caller its own aggregate's events, in order.
        let loaded = repo.get_events::<Counter>(&id).await.unwrap();
        assert_eq!(
            loaded.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert!(loaded.iter().all(|e| e.aggregate_id == id));
    }
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn conflicting_appends_in_one_group_have_one_winner_and_losers_store_nothing() {
    let env = TestEnv::new("store").await.unwrap();
    let repo = one_at_a_time(&env);
    // Per aggregate: X appends 1..=3, Y 1..=2, Z 2..=2: all three claim sequence 2.
    let mut batches = Vec::new();
    for a in 0..4 {
        let id = format!("g{a}");
        batches.push(events(&id, 1..=3));
        batches.push(events(&id, 1..=2));
        batches.push(events(&id, 2..=2));
    }
    batches.push(events("solo", 1..=2));
    let calls: Vec<Call<'_, ()>> = batches
        .iter()
        .map(|b| Box::pin(repo.persist::<Counter>(b, None)) as Call<'_, ()>)
        .collect();
    let blocker = {
        let repo = repo.clone();
        async move {
            repo.persist::<Counter>(&[event("blocker", 1)], None)
                .await
                .unwrap()
        }
    };
    let outcomes = as_one_group(&env, "SHARE", blocker, calls).await;
    for a in 0..4 {
        let id = format!("g{a}");
        let mine = &outcomes[a * 3..a * 3 + 3];
        let winners: Vec<usize> = (0..3).filter(|&i| mine[i].is_ok()).collect();
        assert_eq!(winners, vec![0], "{id}: the first queued wins: {mine:?}");
        assert!(
            mine[1..]
                .iter()
                .all(|o| matches!(o, Err(PersistenceError::OptimisticLockError))),
            "{id}: {mine:?}"
        );
        assert_eq!(
            sequences(&env, &id).await,
            vec![1, 2, 3],
            "{id}: only the winner's events"
        );
    }
    assert!(outcomes[12].is_ok());
    assert_eq!(sequences(&env, "solo").await, vec![1, 2]);
    // They were one statement: one transaction.
    let txs: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT tx_id) FROM events WHERE aggregate_id <> 'blocker'")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(txs, 1);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_conflict_with_a_stored_row_does_not_fail_the_rest_of_the_group() {
    let env = TestEnv::new("store").await.unwrap();
    let repo = one_at_a_time(&env);
    repo.persist::<Counter>(&events("stored", 1..=2), None)
        .await
        .unwrap();
    repo.persist::<Counter>(&events("q", 1..=1), None).await.unwrap();
    let batches = [
        events("fresh-a", 1..=2),
        // Sequence 2 is stored: none of 2..=4 may be stored.
        events("stored", 2..=4),
        events("fresh-b", 1..=1),
        // W conflicts with the stored sequence 1; L claims W's sequence 2 and, alone, succeeds.
        events("q", 1..=2),
        events("q", 2..=2),
        events("stored", 3..=3),
        events("fresh-c", 1..=3),
    ];
    let calls: Vec<Call<'_, ()>> = batches
        .iter()
        .map(|b| Box::pin(repo.persist::<Counter>(b, None)) as Call<'_, ()>)
        .collect();
    let blocker = {
        let repo = repo.clone();
        async move {
            repo.persist::<Counter>(&[event("blocker", 1)], None)
                .await
                .unwrap()
        }
    };
    let outcomes = as_one_group(&env, "SHARE", blocker, calls).await;
    let ok: Vec<bool> = outcomes.iter().map(Result::is_ok).collect();
    assert_eq!(ok, [true, false, true, false, true, true, true], "{outcomes:?}");
    for i in [1, 3] {
        assert!(
            matches!(outcomes[i], Err(PersistenceError::OptimisticLockError)),
            "{i}: {:?}",
            outcomes[i]
        );
    }
    assert_eq!(sequences(&env, "fresh-a").await, vec![1, 2]);
    assert_eq!(sequences(&env, "fresh-b").await, vec![1]);
    assert_eq!(sequences(&env, "fresh-c").await, vec![1, 2, 3]);
    // 3 is the loser's (which ran after the winner 2..=4 failed): nothing of 2..=4 is stored.
    assert_eq!(sequences(&env, "stored").await, vec![1, 2, 3]);
    assert_eq!(sequences(&env, "q").await, vec![1, 2]);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn grouped_loads_give_each_caller_its_own_events() {
    let env = TestEnv::new("store").await.unwrap();
    let repo = one_at_a_time(&env);
    repo.persist::<Counter>(&events("l1", 1..=5), None).await.unwrap();
    repo.persist::<Counter>(&events("l2", 1..=2), None).await.unwrap();
    let asks: [(&str, usize); 6] = [("l1", 0), ("l2", 0), ("l1", 3), ("none", 0), ("l1", 5), ("l2", 1)];
    let calls: Vec<Call<'_, Vec<SerializedEvent>>> = asks
        .iter()
        .map(|&(id, after)| {
            if after == 0 {
                Box::pin(repo.get_events::<Counter>(id)) as Call<'_, _>
            } else {
                Box::pin(repo.get_last_events::<Counter>(id, after)) as Call<'_, _>
            }
        })
        .collect();
    let blocker = {
        let repo = repo.clone();
        async move {
            repo.get_events::<Counter>("l1").await.unwrap();
        }
    };
    let outcomes = as_one_group(&env, "ACCESS EXCLUSIVE", blocker, calls).await;
    for ((id, after), outcome) in asks.iter().zip(outcomes) {
        let got = outcome.unwrap();
        let total = match *id {
            "l1" => 5,
            "l2" => 2,
            _ => 0,
        };
        assert_eq!(
            got.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            (after + 1..=total).collect::<Vec<_>>(),
            "{id} after {after}"
        );
        assert!(
            got.iter()
                .all(|e| e.aggregate_id == *id && e.aggregate_type == "counter")
        );
    }
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn every_connection_has_a_statement_timeout() {
    let env = TestEnv::new("store").await.unwrap();
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(timeout, keel_store::STATEMENT_TIMEOUT);
    // What the setting does, with a shorter one in a transaction of its own.
    let mut tx = env.store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL statement_timeout = '50ms'")
        .execute(&mut *tx)
        .await
        .unwrap();
    let e = sqlx::query("SELECT pg_sleep(1)")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("statement timeout"), "{e}");
    tx.rollback().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_write_beyond_the_queue_bound_fails_at_once_as_overloaded_and_the_queued_ones_commit() {
    let env = TestEnv::new("store").await.unwrap();
    let config = GroupCommit {
        appends_in_flight: 1,
        max_queued: 2,
        ..GroupCommit::default()
    };
    let repo = EventRepository::with_group_commit(env.store.pool().clone(), config);
    let batches = [events("q1", 1..=1), events("q2", 1..=1)];
    let extra = events("q3", 1..=1);
    let calls: Vec<Call<'_, ()>> = batches
        .iter()
        .map(|b| Box::pin(repo.persist::<Counter>(b, None)) as Call<'_, ()>)
        .collect();
    let blocker = {
        let repo = repo.clone();
        async move {
            repo.persist::<Counter>(&[event("blocker", 1)], None)
                .await
                .unwrap()
        }
    };
    let lock = hold_table(&env, "SHARE").await;
    let blocked = tokio::spawn(blocker);
    eventually(
        "the blocker waits on the lock",
        Duration::from_secs(10),
        || async { (lock_waiters(&env).await == 1).then_some(()) },
    )
    .await;
    let mut calls = calls;
    for call in &mut calls {
        assert!(
            futures::poll!(call.as_mut()).is_pending(),
            "queued behind the blocker"
        );
    }
    // The queue is full: the third waiter is refused without waiting for the lock.
    let refused = repo.persist::<Counter>(&extra, None).await;
    match refused {
        Err(PersistenceError::ConnectionError(e)) => assert!(e.to_string().contains("overloaded"), "{e}"),
        other => panic!("expected an overload error, got {other:?}"),
    }
    lock.commit().await.unwrap();
    blocked.await.unwrap();
    for outcome in futures::future::join_all(calls).await {
        outcome.unwrap();
    }
    assert_eq!(sequences(&env, "q1").await, vec![1]);
    assert_eq!(
        sequences(&env, "q3").await,
        Vec::<i64>::new(),
        "the refused write stored nothing"
    );
    env.cleanup().await.unwrap();
}
