//! The contract every projection keeps, as one test suite run against each of them
//! ([`projection_contract!`](crate::projection_contract)): redelivery is idempotent, delivery
//! in any order (shuffled and duplicated) gives the rows of delivery in order, a rebuild
//! from the stream gives identical rows, malformed input goes to the DLQ without blocking
//! what follows it, and a message whose subject disagrees with its envelope is never applied. A new consumer gets the suite by writing a [`Fixture`].

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use keel_bus::{Outgoing, StreamKind};
use keel_events::{Envelope, subjects};
use tokio_util::sync::CancellationToken;

use crate::projection::{Projection, ProjectionConfig, ProjectionRunner};
use crate::testing::{TestEnv, eventually};

const DEADLINE: Duration = Duration::from_secs(30);

/// One projection under test, in a fresh [`TestEnv`].
#[async_trait]
pub trait Fixture: Send + Sync + 'static {
    type P: Projection + 'static;

    /// The service whose schema the test env is made for.
    const SERVICE: &'static str;

    /// The projection and its config; creates the tables it writes in `env`'s schema.
    async fn setup(env: &TestEnv) -> (Self::P, ProjectionConfig);

    /// A history the projection consumes, in publication order (tenants mixed).
    fn history() -> Vec<Envelope>;

    /// Every row the projection wrote, in a canonical order and form (leave out columns that
    /// record when a row was written, which a rebuild cannot reproduce).
    async fn rows(env: &TestEnv) -> Vec<String>;
}

fn subject(env: &TestEnv, e: &Envelope) -> String {
    subjects::event(
        &env.bus.subject_prefix(),
        &e.tenantid,
        e.service(),
        e.event_name(),
    )
}

async fn publish(env: &TestEnv, e: &Envelope, msg_id: String) {
    env.bus
        .publish_acked(Outgoing {
            subject: subject(env, e),
            payload: Bytes::from(e.to_json_bytes()),
            msg_id,
            traceparent: e.traceparent.clone(),
            headers: vec![],
        })
        .await
        .expect("publish");
}

async fn runner<F: Fixture>(env: &TestEnv) -> ProjectionRunner<F::P> {
    let (projection, mut config) = F::setup(env).await;
    config.max_deliver = 3;
    config.backoff_base = Duration::from_millis(20);
    ProjectionRunner::new(env.store.pool().clone(), env.bus.clone(), projection, config)
}

async fn drained<P: Projection + 'static>(runner: &ProjectionRunner<P>, what: &str) {
    eventually(what, DEADLINE, || async {
        (runner.lag().await.ok()? == 0).then_some(())
    })
    .await;
}

/// Every message delivered twice (a relay's republish after a crash, outside the dedupe
/// window) gives the rows of one delivery.
pub async fn redelivery_is_idempotent<F: Fixture>() {
    let env = TestEnv::new(F::SERVICE).await.expect("test env");
    let history = F::history();
    let runner = runner::<F>(&env).await;
    for e in &history {
        publish(&env, e, e.id.to_string()).await;
    }
    let stop = CancellationToken::new();
    let task = runner.clone().spawn(stop.clone());
    drained(&runner, "the history projected").await;
    let once = F::rows(&env).await;
    assert!(
        !once.is_empty(),
        "the history projects to no row: the suite would prove nothing"
    );
    for e in &history {
        publish(&env, e, format!("again-{}", e.id)).await;
    }
    drained(&runner, "the redelivery projected").await;
    assert_eq!(
        F::rows(&env).await,
        once,
        "a redelivered history changed the rows"
    );
    stop.cancel();
    task.await.expect("runner task").expect("runner");
    env.cleanup().await.expect("cleanup");
}

/// The history delivered out of order, many messages twice (the order nak-with-backoff
/// redelivery makes real), gives the rows of the history delivered in order, and leaves
/// nothing waiting.
pub async fn any_order_gives_the_rows_of_the_order<F: Fixture>() {
    let history = F::history();
    let in_order = {
        let env = TestEnv::new(F::SERVICE).await.expect("test env");
        let runner = runner::<F>(&env).await;
        for e in &history {
            publish(&env, e, e.id.to_string()).await;
        }
        let stop = CancellationToken::new();
        let task = runner.clone().spawn(stop.clone());
        drained(&runner, "the history projected in order").await;
        let rows = F::rows(&env).await;
        stop.cancel();
        task.await.expect("runner task").expect("runner");
        env.cleanup().await.expect("cleanup");
        rows
    };
    assert!(!in_order.is_empty(), "the history projects to no row");
    // Reversed (every aggregate's last event first), then interleaved with a second copy of
    // every other event in a different permutation.
    let mut shuffled: Vec<(&Envelope, String)> =
        history.iter().rev().map(|e| (e, e.id.to_string())).collect();
    let n = history.len();
    for k in 0..n {
        let i = (k * 7 + 3) % n;
        if k % 2 == 0 {
            let at = (k * 5) % (shuffled.len() + 1);
            shuffled.insert(at, (&history[i], format!("again-{}-{k}", history[i].id)));
        }
    }
    let env = TestEnv::new(F::SERVICE).await.expect("test env");
    let runner = runner::<F>(&env).await;
    for (e, msg_id) in &shuffled {
        publish(&env, e, msg_id.clone()).await;
    }
    let stop = CancellationToken::new();
    let task = runner.clone().spawn(stop.clone());
    drained(&runner, "the shuffled history projected").await;
    eventually("nothing left parked", DEADLINE, || async {
        let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_parked")
            .fetch_one(env.store.pool())
            .await
            .ok()?;
        (parked == 0).then_some(())
    })
    .await;
    assert_eq!(
        F::rows(&env).await,
        in_order,
        "delivery out of order gave other rows than delivery in order"
    );
    stop.cancel();
    task.await.expect("runner task").expect("runner");
    env.cleanup().await.expect("cleanup");
}

/// Reset and replay from the stream's first message gives the rows the live run gave.
pub async fn rebuild_gives_identical_rows<F: Fixture>() {
    let env = TestEnv::new(F::SERVICE).await.expect("test env");
    let runner = runner::<F>(&env).await;
    for e in F::history() {
        publish(&env, &e, e.id.to_string()).await;
    }
    let stop = CancellationToken::new();
    let task = runner.clone().spawn(stop.clone());
    drained(&runner, "the live run caught up").await;
    let live = F::rows(&env).await;
    stop.cancel();
    task.await.expect("runner task").expect("runner");

    runner.reset().await.expect("reset");
    assert!(F::rows(&env).await.is_empty(), "reset left rows behind");
    let stop = CancellationToken::new();
    let task = runner.clone().spawn(stop.clone());
    drained(&runner, "the rebuild caught up").await;
    assert_eq!(
        F::rows(&env).await,
        live,
        "the rebuild differs from the live rows"
    );
    stop.cancel();
    task.await.expect("runner task").expect("runner");
    env.cleanup().await.expect("cleanup");
}

/// A message that is not an envelope is dead-lettered at once and the history behind it is
/// projected as if it were not there.
pub async fn malformed_input_goes_to_the_dlq<F: Fixture>() {
    let env = TestEnv::new(F::SERVICE).await.expect("test env");
    let history = F::history();
    let runner = runner::<F>(&env).await;
    let first = history.first().expect("a history");
    env.bus
        .publish_acked(Outgoing {
            subject: subject(&env, first),
            payload: Bytes::from_static(b"{\"specversion\": \"1.0\", \"id\": 42"),
            msg_id: "malformed-1".into(),
            traceparent: None,
            headers: vec![],
        })
        .await
        .expect("publish");
    for e in &history {
        publish(&env, e, e.id.to_string()).await;
    }
    let stop = CancellationToken::new();
    let task = runner.clone().spawn(stop.clone());
    drained(&runner, "the history behind the malformed message projected").await;
    assert!(
        !F::rows(&env).await.is_empty(),
        "nothing projected behind the malformed message"
    );
    let dlq = env
        .bus
        .jetstream()
        .get_stream(env.bus.stream_name(StreamKind::Dlq))
        .await
        .expect("DLQ stream");
    eventually("the malformed message dead-lettered", DEADLINE, || async {
        let mut dlq = dlq.clone();
        (dlq.info().await.ok()?.state.messages == 1).then_some(())
    })
    .await;
    stop.cancel();
    task.await.expect("runner task").expect("runner");
    env.cleanup().await.expect("cleanup");
}

/// Every envelope of the history published on a subject that names another tenant (a forgery:
/// anyone who can publish chooses the subject) is dead-lettered and changes no row.
pub async fn forged_provenance_goes_to_the_dlq<F: Fixture>() {
    let env = TestEnv::new(F::SERVICE).await.expect("test env");
    let history = F::history();
    let runner = runner::<F>(&env).await;
    for e in &history {
        let forged = subjects::event(&env.bus.subject_prefix(), "t-victim", e.service(), e.event_name());
        env.bus
            .publish_acked(Outgoing {
                subject: forged,
                payload: Bytes::from(e.to_json_bytes()),
                msg_id: e.id.to_string(),
                traceparent: None,
                headers: vec![],
            })
            .await
            .expect("publish");
    }
    let stop = CancellationToken::new();
    let task = runner.clone().spawn(stop.clone());
    drained(&runner, "the forged messages handled").await;
    let dlq = env
        .bus
        .jetstream()
        .get_stream(env.bus.stream_name(StreamKind::Dlq))
        .await
        .expect("DLQ stream");
    let expected = history.len() as u64;
    eventually("every forgery dead-lettered", DEADLINE, || async {
        let mut dlq = dlq.clone();
        (dlq.info().await.ok()?.state.messages == expected).then_some(())
    })
    .await;
    assert!(F::rows(&env).await.is_empty(), "a forged message was applied");
    let mut dlq = dlq.clone();
    let last = dlq.info().await.expect("DLQ info").state.last_sequence;
    let reason = dlq
        .get_raw_message(last)
        .await
        .expect("DLQ message")
        .headers
        .get(keel_bus::headers::DLQ_REASON)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(reason.contains("provenance"), "{reason}");
    stop.cancel();
    task.await.expect("runner task").expect("runner");
    env.cleanup().await.expect("cleanup");
}

/// The contract suite as five `#[tokio::test]`s for the [`Fixture`] `$fixture`.
#[macro_export]
macro_rules! projection_contract {
    ($fixture:ty) => {
        #[tokio::test]
        async fn redelivery_is_idempotent() {
            $crate::contract::redelivery_is_idempotent::<$fixture>().await;
        }

        #[tokio::test]
        async fn any_order_gives_the_rows_of_the_order() {
            $crate::contract::any_order_gives_the_rows_of_the_order::<$fixture>().await;
        }

        #[tokio::test]
        async fn rebuild_gives_identical_rows() {
            $crate::contract::rebuild_gives_identical_rows::<$fixture>().await;
        }

        #[tokio::test]
        async fn malformed_input_goes_to_the_dlq() {
            $crate::contract::malformed_input_goes_to_the_dlq::<$fixture>().await;
        }

        #[tokio::test]
        async fn forged_provenance_goes_to_the_dlq() {
            $crate::contract::forged_provenance_goes_to_the_dlq::<$fixture>().await;
        }
    };
}
