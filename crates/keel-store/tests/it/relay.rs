use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_bus::StreamKind;
use keel_events::Envelope;
use keel_store::relay::{self, Relay, RelayConfig};
use keel_store::testing::{TestEnv, eventually};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const INSERT: &str = "INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, payload, metadata) VALUES ($1, 'acme', 'counter', $2, 1, 'Added', '1', '{\"n\": 1}', \
     '{\"tenant_id\": \"acme\", \"actor\": \"user:alice\"}')";

fn config() -> RelayConfig {
    RelayConfig {
        idle_poll: Duration::from_millis(2),
        standby_poll: Duration::from_millis(20),
        ..Default::default()
    }
}

async fn stream_len(env: &TestEnv) -> u64 {
    let mut s = env
        .bus
        .jetstream()
        .get_stream(env.bus.stream_name(StreamKind::Events))
        .await
        .unwrap();
    s.info().await.unwrap().state.messages
}

/// Every message of KEEL_EVENTS, in stream order, as envelope ids.
async fn stream_ids(env: &TestEnv) -> Vec<Uuid> {
    let s = env
        .bus
        .jetstream()
        .get_stream(env.bus.stream_name(StreamKind::Events))
        .await
        .unwrap();
    let n = stream_len(env).await;
    let mut ids = Vec::new();
    for seq in 1..=n {
        let msg = s.get_raw_message(seq).await.unwrap();
        ids.push(Envelope::parse(&msg.payload).unwrap().id);
    }
    ids
}

/// The committed events in the order the relay must publish them.
async fn commit_order(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query_scalar("SELECT event_id FROM events ORDER BY tx_id, global_position")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn insert(pool: &PgPool, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = Uuid::now_v7();
        sqlx::query(INSERT)
            .bind(id)
            .bind(format!("a{i}-{id}"))
            .execute(pool)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn out_of_order_commit_is_held_back_then_published_once_in_commit_order() {
    let env = TestEnv::new("store").await.unwrap();
    let pool = env.store.pool().clone();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(&env.store, env.bus.clone(), config()).start(shutdown.clone());
    eventually("relay leads", Duration::from_secs(10), || async {
        relay.stats().is_leader.load(Ordering::SeqCst).then_some(())
    })
    .await;

    for round in 0..25 {
        let before = stream_len(&env).await;
        // A takes the lower position and stays open; B takes a higher one and commits first.
        let mut a = pool.begin().await.unwrap();
        let a_id = Uuid::now_v7();
        sqlx::query(INSERT)
            .bind(a_id)
            .bind(format!("A{round}"))
            .execute(&mut *a)
            .await
            .unwrap();
        let b_id = Uuid::now_v7();
        sqlx::query(INSERT)
            .bind(b_id)
            .bind(format!("B{round}"))
            .execute(&pool)
            .await
            .unwrap();
        // Let the relay poll several times while A is open: nothing of A's range may appear.
        let polled = relay.stats().checkpoint_position.load(Ordering::SeqCst);
        let polls_before = relay_polls(&relay);
        eventually("relay polls while A is open", Duration::from_secs(10), || async {
            (relay_polls(&relay) >= polls_before + 3).then_some(())
        })
        .await;
        assert_eq!(
            stream_len(&env).await,
            before,
            "round {round}: published past an open transaction"
        );
        assert_eq!(relay.stats().checkpoint_position.load(Ordering::SeqCst), polled);
        if round % 5 == 4 {
            a.rollback().await.unwrap();
        } else {
            a.commit().await.unwrap();
        }
        let expected = commit_order(&pool).await;
        let last: i64 = sqlx::query_scalar("SELECT max(global_position) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap();
        eventually(
            "relay catches up and checkpoints",
            Duration::from_secs(10),
            || async {
                (stream_len(&env).await == expected.len() as u64
                    && relay.stats().checkpoint_position.load(Ordering::SeqCst) == last)
                    .then_some(())
            },
        )
        .await;
    }
    // Finally: every committed event exactly once, in commit order; rolled-back ones never.
    let expected = commit_order(&pool).await;
    assert_eq!(expected.len(), 25 + 20);
    assert_eq!(stream_ids(&env).await, expected);
    shutdown.cancel();
    relay.join().await.unwrap();
    env.cleanup().await.unwrap();
}

fn relay_polls(relay: &relay::RelayHandle) -> u64 {
    relay.stats().polls.load(Ordering::SeqCst)
}

#[tokio::test]
async fn concurrent_writers_are_published_exactly_once_in_commit_order() {
    let env = TestEnv::new("store").await.unwrap();
    let pool = env.store.pool().clone();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(&env.store, env.bus.clone(), config()).start(shutdown.clone());
    let mut writers = Vec::new();
    for w in 0..8 {
        let pool = pool.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(INSERT)
                    .bind(Uuid::now_v7())
                    .bind(format!("w{w}-{i}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                if i % 7 == 6 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let expected = commit_order(&pool).await;
    eventually("relay catches up", Duration::from_secs(20), || async {
        (stream_len(&env).await >= expected.len() as u64).then_some(())
    })
    .await;
    assert_eq!(stream_ids(&env).await, expected);
    shutdown.cancel();
    relay.join().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn relay_killed_before_checkpoint_republishes_and_stream_dedupes() {
    let env = TestEnv::new("store").await.unwrap();
    let pool = env.store.pool().clone();
    let ids = insert(&pool, 50).await;
    // First relay: publishes the batch and dies before it stores its checkpoint.
    {
        let crashed = Relay::new(&env.store, env.bus.clone(), config());
        let mut conn = pool.acquire().await.unwrap();
        let cursor = relay::read_checkpoint(&mut conn, "jetstream").await.unwrap();
        // Other tests' open transactions may hold the horizon back for a moment.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let batch = loop {
            let batch = relay::poll(&mut conn, cursor, 1000).await.unwrap();
            if batch.len() == 50 {
                break batch;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of 50 events below the horizon",
                batch.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        crashed.publish(&batch).await.unwrap();
    }
    assert_eq!(stream_len(&env).await, 50);
    // The restarted relay starts from the old checkpoint and publishes everything again.
    let shutdown = CancellationToken::new();
    let relay = Relay::new(&env.store, env.bus.clone(), config()).start(shutdown.clone());
    eventually("restarted relay checkpoints", Duration::from_secs(10), || async {
        (relay.stats().duplicates.load(Ordering::SeqCst) == 50).then_some(())
    })
    .await;
    assert_eq!(relay.stats().published.load(Ordering::SeqCst), 0);
    assert_eq!(
        stream_len(&env).await,
        50,
        "dedupe must keep one copy of each event"
    );
    // Inserted one per transaction, in sequence: commit order is insert order.
    assert_eq!(stream_ids(&env).await, ids);
    shutdown.cancel();
    relay.join().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn two_relays_started_at_once_never_both_publish() {
    let env = TestEnv::new("store").await.unwrap();
    let pool = env.store.pool().clone();
    let shutdown = CancellationToken::new();
    let r1 = Relay::new(&env.store, env.bus.clone(), config()).start(shutdown.clone());
    let r2 = Relay::new(&env.store, env.bus.clone(), config()).start(shutdown.clone());
    let ids = insert(&pool, 200).await;
    eventually("all published", Duration::from_secs(20), || async {
        (stream_len(&env).await == 200).then_some(())
    })
    .await;
    let sent = |r: &relay::RelayHandle| {
        r.stats().published.load(Ordering::SeqCst) + r.stats().duplicates.load(Ordering::SeqCst)
    };
    let leaders = [&r1, &r2]
        .iter()
        .filter(|r| r.stats().is_leader.load(Ordering::SeqCst))
        .count();
    assert_eq!(leaders, 1, "exactly one relay holds the lock");
    assert!(
        sent(&r1) == 0 || sent(&r2) == 0,
        "both relays published: {} and {}",
        sent(&r1),
        sent(&r2)
    );
    assert_eq!(sent(&r1) + sent(&r2), 200);
    assert_eq!(stream_ids(&env).await, ids);

    // The leader stops; the standby takes over and carries on from the checkpoint.
    let (leader, standby) = if r1.stats().is_leader.load(Ordering::SeqCst) {
        (r1, r2)
    } else {
        (r2, r1)
    };
    leader.abort();
    let _ = leader.join().await;
    let more = insert(&pool, 20).await;
    eventually("standby takes over", Duration::from_secs(20), || async {
        (stream_len(&env).await == 220).then_some(())
    })
    .await;
    assert_eq!(standby.stats().published.load(Ordering::SeqCst), 20);
    assert_eq!(stream_ids(&env).await[200..], more[..]);
    shutdown.cancel();
    standby.join().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn envelopes_carry_the_metadata_and_land_on_tenant_subjects() {
    let env = TestEnv::new("store").await.unwrap();
    let pool = env.store.pool().clone();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    sqlx::query(
        "INSERT INTO events (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, \
         payload, metadata) VALUES ($1, 'acme', 'tenant', 'acme', 1, 'TenantCreated', '1', '{\"x\": 1}', $2)",
    )
    .bind(Uuid::now_v7())
    .bind(serde_json::json!({"tenant_id": "acme", "actor": "user:alice", "traceparent": tp, "request_id": "r-1"}))
    .execute(&pool)
    .await
    .unwrap();
    let shutdown = CancellationToken::new();
    let relay = Relay::new(&env.store, env.bus.clone(), config()).start(shutdown.clone());
    eventually("published", Duration::from_secs(10), || async {
        (stream_len(&env).await == 1).then_some(())
    })
    .await;
    let s = env
        .bus
        .jetstream()
        .get_stream(env.bus.stream_name(StreamKind::Events))
        .await
        .unwrap();
    let msg = s.get_raw_message(1).await.unwrap();
    assert_eq!(
        msg.subject.as_str(),
        format!("{}.keel.evt.acme.store.TenantCreated", env.token)
    );
    let e = Envelope::parse(&msg.payload).unwrap();
    assert_eq!(e.event_type, "keel.store.TenantCreated.v1");
    assert_eq!(e.source, "keel/store");
    assert_eq!(e.subject, "tenant/acme");
    assert_eq!(e.actor, "user:alice");
    assert_eq!(e.traceparent.as_deref(), Some(tp));
    assert_eq!(msg.headers.get("traceparent").map(|v| v.as_str()), Some(tp));
    assert_eq!(
        msg.headers.get("Nats-Msg-Id").map(|v| v.as_str()),
        Some(e.id.to_string().as_str())
    );
    shutdown.cancel();
    relay.join().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn an_idle_relay_is_woken_by_the_commit_not_by_polling() {
    let env = TestEnv::new("store").await.unwrap();
    let pool = env.store.pool().clone();
    let shutdown = CancellationToken::new();
    // A fallback poll far longer than the deadline below: only the NOTIFY can deliver in time.
    let relay = Relay::new(
        &env.store,
        env.bus.clone(),
        RelayConfig {
            idle_poll: Duration::from_secs(3600),
            ..config()
        },
    )
    .start(shutdown.clone());
    eventually("relay leads", Duration::from_secs(10), || async {
        relay.stats().is_leader.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let idle_waits = || relay.stats().idle_waits.load(Ordering::SeqCst);
    for n in 1..=3u64 {
        // Idle: nothing to publish, nothing held back, so the relay waits for a NOTIFY (once
        // before the first commit and again after each one relayed).
        eventually("the relay waits idle", Duration::from_secs(10), || async {
            (idle_waits() >= n).then_some(())
        })
        .await;
        let id = insert(&pool, 1).await;
        eventually("the commit is relayed", Duration::from_secs(10), || async {
            (stream_len(&env).await == n).then_some(())
        })
        .await;
        assert_eq!(stream_ids(&env).await.last(), id.last());
    }
    shutdown.cancel();
    relay.join().await.unwrap();
    env.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_wakeup_hears_a_notify_on_its_channel() {
    use keel_store::wakeup::{Wakeup, Woken, outbox_channel};
    let env = TestEnv::new("store").await.unwrap();
    let pool = env.store.pool().clone();
    let channel = outbox_channel(env.store.schema());
    let mut wakeup = Wakeup::listen(&pool, channel.clone()).await;
    assert_eq!(wakeup.wait(Duration::from_millis(50)).await, Woken::Fallback);
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(&channel)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(wakeup.wait(Duration::from_secs(10)).await, Woken::Notified);
    insert(&pool, 1).await;
    assert_eq!(
        wakeup.wait(Duration::from_secs(10)).await,
        Woken::Notified,
        "the events trigger"
    );
    // The listener holds a connection of the pool, which cleanup closes.
    drop(wakeup);
    env.cleanup().await.unwrap();
}
