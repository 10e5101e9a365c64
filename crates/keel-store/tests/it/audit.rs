//! The audit outbox: a change's record commits in the same statement as its events, and the
//! audit relay carries every record to KEEL_AUDIT exactly once, NATS outages included.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::{AggregateError, CqrsFramework};
use keel_bus::audit::{AuditRecord, AuditResult};
use keel_bus::{Bus, StreamKind};
use keel_store::Metadata;
use keel_store::audit::AuditLog;
use keel_store::relay::{Relay, RelayConfig};
use keel_store::testing::{TcpGate, TestEnv, eventually, nats_admin_at};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::counter::{Counter, CounterCommand};

fn record(action: &str, resource: &str) -> AuditRecord {
    AuditRecord::new(
        "user:alice",
        "acme",
        "store",
        action,
        resource,
        AuditResult::Success,
        "10.0.0.1",
    )
}

fn meta() -> std::collections::HashMap<String, String> {
    Metadata::new("acme", "user:alice").into_map()
}

/// (record id, result, reason, tx id) of every outbox row, in outbox order.
async fn outbox(env: &TestEnv) -> Vec<(Uuid, String, Option<String>, String)> {
    sqlx::query_as(
        "SELECT record_id, record->>'result', record->>'reason', tx_id::text FROM audit_outbox ORDER BY position",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap()
}

async fn event_tx(env: &TestEnv, aggregate: &str, sequence: i64) -> String {
    sqlx::query_scalar("SELECT tx_id::text FROM events WHERE aggregate_id = $1 AND sequence = $2")
        .bind(aggregate)
        .bind(sequence)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_change_s_record_commits_with_its_events_a_failure_and_a_no_op_are_recorded_alone() {
    let env = TestEnv::new("store").await.unwrap();
    let log = AuditLog::on(env.store.pool().clone());
    let cqrs = env.store.framework::<Counter>(());

    let success = record("add", "counter/c1");
    let id = success.id;
    log.change(
        success,
        cqrs.execute_with_metadata("c1", CounterCommand::Add(2), meta()),
    )
    .await
    .unwrap();
    let rows = outbox(&env).await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].0, rows[0].1.as_str()), (id, "success"));
    // The same transaction as the event: the record cannot exist without the change, nor the
    // change without the record.
    assert_eq!(rows[0].3, event_tx(&env, "c1", 1).await);

    // Refused by the aggregate: nothing appended, a `failed` record naming why.
    let refused = record("add", "counter/c1");
    let err = log
        .change(
            refused.clone(),
            cqrs.execute_with_metadata("c1", CounterCommand::Add(0), meta()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, AggregateError::UserError(_)));
    let rows = outbox(&env).await;
    assert_eq!(rows.len(), 2);
    assert_ne!(rows[1].0, refused.id, "a failure is a record of its own");
    assert_eq!(rows[1].1, "failed");
    assert_eq!(rows[1].2.as_deref(), Some("amount must be positive"));

    // Decided nothing (an idempotent repeat): the call is still recorded, on its own.
    let touch = record("touch", "counter/c1");
    log.change(
        touch.clone(),
        cqrs.execute_with_metadata("c1", CounterCommand::Touch, meta()),
    )
    .await
    .unwrap();
    let rows = outbox(&env).await;
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[2].0, rows[2].1.as_str()), (touch.id, "success"));

    // Outside a change, an append carries no record.
    cqrs.execute_with_metadata("c1", CounterCommand::Add(1), meta())
        .await
        .unwrap();
    assert_eq!(outbox(&env).await.len(), 3);
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn under_group_commit_each_winner_s_record_is_stored_and_each_loser_s_is_failed() {
    let env = TestEnv::new("store").await.unwrap();
    let log = AuditLog::on(env.store.pool().clone());
    let cqrs: Arc<CqrsFramework<Counter, _>> = Arc::new(env.store.framework::<Counter>(()));
    // 16 commands on one aggregate (conflicts) and 16 on distinct ones, all at once.
    let mut calls = Vec::new();
    for i in 0..32 {
        let (cqrs, log) = (cqrs.clone(), log.clone());
        let aggregate = if i % 2 == 0 {
            "hot".to_owned()
        } else {
            format!("cold{i}")
        };
        calls.push(tokio::spawn(async move {
            let r = record("add", &format!("counter/{aggregate}"));
            let id = r.id;
            let outcome = log
                .change(
                    r,
                    cqrs.execute_with_metadata(&aggregate, CounterCommand::Add(1), meta()),
                )
                .await;
            (id, outcome.is_ok())
        }));
    }
    let mut succeeded = HashSet::new();
    let mut failures = 0;
    for c in calls {
        let (id, ok) = c.await.unwrap();
        if ok {
            succeeded.insert(id);
        } else {
            failures += 1;
        }
    }
    let rows = outbox(&env).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    // One success record per stored event, each one of the calls that succeeded; one failed
    // record per call that did not.
    let stored: HashSet<Uuid> = rows.iter().filter(|r| r.1 == "success").map(|r| r.0).collect();
    assert_eq!(stored, succeeded);
    assert_eq!(stored.len() as i64, events);
    assert_eq!(rows.iter().filter(|r| r.1 == "failed").count(), failures);
    assert_eq!(rows.len(), 32);
    env.cleanup().await.unwrap();
}

async fn audit_ids(bus: &Bus) -> Vec<Uuid> {
    let stream = bus
        .jetstream()
        .get_stream(bus.stream_name(StreamKind::Audit))
        .await
        .unwrap();
    let mut info = stream.clone();
    let n = info.info().await.unwrap().state.messages;
    let mut ids = Vec::new();
    for seq in 1..=n {
        if let Ok(msg) = stream.get_raw_message(seq).await {
            let r: AuditRecord = serde_json::from_slice(&msg.payload).unwrap();
            ids.push(r.id);
        }
    }
    ids
}

#[tokio::test]
async fn records_made_while_nats_is_unreachable_arrive_once_when_it_is_back() {
    let env = TestEnv::new("store").await.unwrap();
    let log = AuditLog::on(env.store.pool().clone());
    let cqrs = env.store.framework::<Counter>(());
    // The relay reaches NATS through a gate the test can cut.
    let upstream = keel_store::testing::nats_url()
        .trim_start_matches("nats://")
        .to_owned();
    let gate = TcpGate::start(&upstream).await.unwrap();
    let gated = Bus::new(nats_admin_at(&gate.nats_url()).await.unwrap(), &env.token).unwrap();
    let stop = CancellationToken::new();
    let config = RelayConfig {
        idle_poll: Duration::from_millis(20),
        ..RelayConfig::audit()
    };
    let relay = Relay::new(&env.store, gated, config).start(stop.clone());

    let first = record("add", "counter/a");
    let mut expected = vec![first.id];
    log.change(
        first,
        cqrs.execute_with_metadata("a", CounterCommand::Add(1), meta()),
    )
    .await
    .unwrap();
    eventually(
        "the first record on KEEL_AUDIT",
        Duration::from_secs(10),
        || async { (audit_ids(&env.bus).await == expected).then_some(()) },
    )
    .await;

    // NATS unreachable: changes still commit, with their records, which wait in the outbox.
    gate.cut();
    for i in 0..5 {
        let r = record("add", &format!("counter/b{i}"));
        expected.push(r.id);
        log.change(
            r,
            cqrs.execute_with_metadata(&format!("b{i}"), CounterCommand::Add(1), meta()),
        )
        .await
        .unwrap();
    }
    let denied = AuditRecord::new(
        "user:mallory",
        "acme",
        "store",
        "add",
        "counter/a",
        AuditResult::Denied,
        "10.0.0.9",
    );
    expected.push(denied.id);
    log.record(&denied).await.unwrap();
    assert_eq!(outbox(&env).await.len(), 7);
    assert_eq!(
        audit_ids(&env.bus).await.len(),
        1,
        "nothing gets through the cut gate"
    );

    gate.restore();
    eventually("every record on KEEL_AUDIT", Duration::from_secs(30), || async {
        (audit_ids(&env.bus).await.len() >= expected.len()).then_some(())
    })
    .await;
    // Once each, in commit order, even though the relay retried publishes the outage failed.
    let stats = relay.stats().clone();
    eventually(
        "the relay's checkpoint past every record",
        Duration::from_secs(10),
        || async {
            let position: i64 = sqlx::query_scalar("SELECT max(position) FROM audit_outbox")
                .fetch_one(env.store.pool())
                .await
                .unwrap();
            (stats
                .checkpoint_position
                .load(std::sync::atomic::Ordering::Relaxed)
                == position)
                .then_some(())
        },
    )
    .await;
    assert_eq!(audit_ids(&env.bus).await, expected);
    stop.cancel();
    relay.join().await.unwrap();
    env.cleanup().await.unwrap();
}
