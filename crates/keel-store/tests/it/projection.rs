use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use keel_bus::{Outgoing, StreamKind, headers};
use keel_events::{Envelope, subjects};
use keel_store::projection::{ApplyError, Projection, ProjectionConfig, ProjectionRunner};
use keel_store::testing::{TestEnv, eventually};
use serde_json::json;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Projects every event into `seen`; an event with `"poison": true` fails transiently for ever.
struct Seen;

#[async_trait]
impl Projection for Seen {
    type Item = Envelope;

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Envelope, String> {
        keel_store::projection::decode_envelope(subject, payload)
    }

    fn name(&self) -> &str {
        "seen"
    }

    async fn apply(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        if e.data.get("poison").is_some() {
            return Err(ApplyError::Transient("poison pill cannot be applied".into()));
        }
        sqlx::query(
            "INSERT INTO seen (event_id, tenant_id, aggregate_id, sequence, data) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(e.id)
        .bind(&e.tenantid)
        .bind(&e.aggregateid)
        .bind(e.sequence as i64)
        .bind(&e.data)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        sqlx::query("TRUNCATE seen").execute(conn).await?;
        Ok(())
    }
}

fn envelope(tenant: &str, seq: u64, data: serde_json::Value) -> Envelope {
    Envelope::builder("store", "Added", 1)
        .tenant(tenant)
        .actor("system")
        .aggregate("counter", "c1", seq)
        .data(data)
        .build()
        .unwrap()
}

async fn publish(env: &TestEnv, e: &Envelope) {
    let subject = subjects::event(&env.bus.subject_prefix(), &e.tenantid, "store", "Added");
    env.bus.publish_envelope(subject, e).await.unwrap().await.unwrap();
}

type Row = (Uuid, String, String, i64, serde_json::Value);

async fn rows(env: &TestEnv) -> Vec<Row> {
    sqlx::query_as("SELECT event_id, tenant_id, aggregate_id, sequence, data FROM seen ORDER BY event_id")
        .fetch_all(env.store.pool())
        .await
        .unwrap()
}

fn runner(env: &TestEnv) -> ProjectionRunner<Seen> {
    let mut config = ProjectionConfig::new(StreamKind::Events);
    config.filter_subject = "keel.evt.>".into();
    config.max_deliver = 3;
    config.backoff_base = Duration::from_millis(20);
    ProjectionRunner::new(env.store.pool().clone(), env.bus.clone(), Seen, config)
}

#[tokio::test]
async fn poison_goes_to_the_dlq_with_its_reason_and_does_not_block_the_rest() {
    let env = TestEnv::new("store").await.unwrap();
    sqlx::query("CREATE TABLE seen (event_id uuid PRIMARY KEY, tenant_id text, aggregate_id text, sequence bigint, data jsonb)")
        .execute(env.store.pool())
        .await
        .unwrap();
    let poison = envelope("acme", 1, json!({"poison": true}));
    publish(&env, &poison).await;
    // A malformed envelope, published raw.
    env.bus
        .publish_acked(Outgoing {
            subject: format!("{}keel.evt.acme.store.Added", env.bus.subject_prefix()),
            payload: Bytes::from_static(b"{\"specversion\": \"1.0\", \"id\": 42"),
            msg_id: "malformed-1".into(),
            traceparent: None,
            headers: vec![],
        })
        .await
        .unwrap();
    let good: Vec<Envelope> = (2..=41).map(|s| envelope("acme", s, json!({"n": s}))).collect();
    for e in &good {
        publish(&env, e).await;
    }
    let runner = runner(&env);
    let shutdown = CancellationToken::new();
    let task = runner.clone().spawn(shutdown.clone());

    eventually("good events projected", Duration::from_secs(20), || async {
        (rows(&env).await.len() == 40).then_some(())
    })
    .await;
    let dlq = env
        .bus
        .jetstream()
        .get_stream(env.bus.stream_name(StreamKind::Dlq))
        .await
        .unwrap();
    eventually(
        "both bad messages dead-lettered",
        Duration::from_secs(20),
        || async {
            let mut dlq = dlq.clone();
            (dlq.info().await.unwrap().state.messages == 2).then_some(())
        },
    )
    .await;
    let mut reasons = Vec::new();
    for seq in 1..=2 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        assert_eq!(
            m.subject.as_str(),
            format!("{}keel.dlq.seen.acme", env.bus.subject_prefix())
        );
        assert_eq!(m.headers.get(headers::DLQ_CONSUMER).unwrap().as_str(), "seen");
        reasons.push(m.headers.get(headers::DLQ_REASON).unwrap().as_str().to_owned());
    }
    reasons.sort();
    assert!(
        reasons[0].starts_with("gave up after 3 deliveries: poison pill"),
        "{reasons:?}"
    );
    assert!(reasons[1].starts_with("malformed envelope"), "{reasons:?}");
    eventually("consumer drained", Duration::from_secs(20), || async {
        (runner.lag().await.unwrap() == 0).then_some(())
    })
    .await;
    shutdown.cancel();
    task.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn rebuilt_projection_equals_the_live_one_and_redelivery_does_not_double() {
    let env = TestEnv::new("store").await.unwrap();
    sqlx::query("CREATE TABLE seen (event_id uuid PRIMARY KEY, tenant_id text, aggregate_id text, sequence bigint, data jsonb)")
        .execute(env.store.pool())
        .await
        .unwrap();
    let events: Vec<Envelope> = (1..=300)
        .map(|s| envelope(if s % 2 == 0 { "acme" } else { "globex" }, s, json!({"n": s})))
        .collect();
    for e in &events[..150] {
        publish(&env, e).await;
    }
    let runner = runner(&env);
    let shutdown = CancellationToken::new();
    let task = runner.clone().spawn(shutdown.clone());
    for e in &events[150..] {
        publish(&env, e).await;
    }
    // The same events again (another relay's republish after a crash, outside the dedupe id).
    for e in &events[..20] {
        env.bus
            .publish_acked(Outgoing {
                subject: subjects::event(&env.bus.subject_prefix(), &e.tenantid, "store", "Added"),
                payload: Bytes::from(e.to_json_bytes()),
                msg_id: format!("again-{}", e.id),
                traceparent: None,
                headers: vec![],
            })
            .await
            .unwrap();
    }
    eventually("live projection caught up", Duration::from_secs(20), || async {
        (runner.lag().await.unwrap() == 0 && rows(&env).await.len() == 300).then_some(())
    })
    .await;
    let live = rows(&env).await;
    shutdown.cancel();
    task.await.unwrap().unwrap();

    runner.reset().await.unwrap();
    assert!(rows(&env).await.is_empty());
    let shutdown = CancellationToken::new();
    let task = runner.clone().spawn(shutdown.clone());
    eventually("rebuild caught up", Duration::from_secs(20), || async {
        (runner.lag().await.unwrap() == 0 && rows(&env).await.len() == 300).then_some(())
    })
    .await;
    assert_eq!(rows(&env).await, live, "rebuild must give identical rows");
    shutdown.cancel();
    task.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

/// `seen` again, applied in each aggregate's order; an apply that is not later than the last
/// one applied of its aggregate is refused for good (so an out-of-order apply shows in the DLQ).
struct InOrder;

#[async_trait]
impl Projection for InOrder {
    type Item = Envelope;

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Envelope, String> {
        keel_store::projection::decode_envelope(subject, payload)
    }

    fn name(&self) -> &str {
        "in-order"
    }

    fn position(&self, e: &Envelope) -> Option<keel_store::projection::Position> {
        keel_store::projection::Position::of(e)
    }

    async fn apply(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        let last: Option<i64> = sqlx::query_scalar("SELECT max(sequence) FROM seen WHERE aggregate_id = $1")
            .bind(&e.aggregateid)
            .fetch_one(&mut *conn)
            .await?;
        if last.is_some_and(|l| l >= e.sequence as i64) {
            return Err(ApplyError::Permanent(format!(
                "{} applied after {last:?}",
                e.sequence
            )));
        }
        Seen.apply(conn, e).await
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        Seen.reset(conn).await
    }
}

async fn in_order_env() -> TestEnv {
    let env = TestEnv::new("store").await.unwrap();
    sqlx::query("CREATE TABLE seen (event_id uuid PRIMARY KEY, tenant_id text, aggregate_id text, sequence bigint, data jsonb)")
        .execute(env.store.pool())
        .await
        .unwrap();
    env
}

fn in_order_runner(env: &TestEnv, gap_timeout: Duration) -> ProjectionRunner<InOrder> {
    let mut config = ProjectionConfig::new(StreamKind::Events);
    config.filter_subject = "keel.evt.>".into();
    config.max_deliver = 3;
    config.backoff_base = Duration::from_millis(20);
    config.gap_timeout = gap_timeout;
    ProjectionRunner::new(env.store.pool().clone(), env.bus.clone(), InOrder, config)
}

async fn sequences(env: &TestEnv) -> Vec<i64> {
    sqlx::query_scalar("SELECT sequence FROM seen ORDER BY sequence")
        .fetch_all(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn events_behind_one_that_keeps_failing_wait_for_it_then_follow_it_in_order() {
    let env = in_order_env().await;
    publish(&env, &envelope("acme", 1, json!({}))).await;
    publish(&env, &envelope("acme", 2, json!({"poison": true}))).await;
    for s in 3..=6 {
        publish(&env, &envelope("acme", s, json!({}))).await;
    }
    let runner = in_order_runner(&env, Duration::from_secs(3600));
    let shutdown = CancellationToken::new();
    let task = runner.clone().spawn(shutdown.clone());
    // 3..6 wait parked behind 2 until it is dead-lettered (after max_deliver), then follow it.
    eventually(
        "the aggregate projected past its poison",
        Duration::from_secs(30),
        || async { (sequences(&env).await == [1, 3, 4, 5, 6]).then_some(()) },
    )
    .await;
    let stats = runner.stats();
    assert!(stats.parked.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    assert_eq!(
        stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the poison"
    );
    assert_eq!(stats.gaps_skipped.load(std::sync::atomic::Ordering::Relaxed), 0);
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_parked")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(parked, 0);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_gap_that_never_fills_is_declared_lost_after_the_gap_timeout() {
    let env = in_order_env().await;
    // Event 1 of the aggregate never comes (dead-lettered unread, or past the stream's retention).
    for s in [3, 2, 4] {
        publish(&env, &envelope("acme", s, json!({}))).await;
    }
    let runner = in_order_runner(&env, Duration::from_secs(1));
    let shutdown = CancellationToken::new();
    let task = runner.clone().spawn(shutdown.clone());
    eventually(
        "the events after the gap applied",
        Duration::from_secs(30),
        || async { (sequences(&env).await == [2, 3, 4]).then_some(()) },
    )
    .await;
    assert_eq!(
        runner
            .stats()
            .gaps_skipped
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The lost event turning up late is a duplicate now: nothing changes, nothing dead-lettered.
    publish(&env, &envelope("acme", 1, json!({}))).await;
    publish(&env, &envelope("acme", 5, json!({}))).await;
    eventually("the next event applied", Duration::from_secs(30), || async {
        (sequences(&env).await == [2, 3, 4, 5]).then_some(())
    })
    .await;
    assert_eq!(
        runner
            .stats()
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    env.cleanup().await.unwrap();
}
