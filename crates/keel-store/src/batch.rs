//! Group commit for the repository (the dataloader pattern).
//!
//! Every `persist` without a snapshot and every event load goes through a [`Dispatcher`]: a
//! background task that takes the requests waiting in its queue and runs them as one statement,
//! with at most a few statements of its kind in flight. A request that arrives while a slot is
//! free runs at once, alone; requests that arrive while every slot is busy wait for the next one
//! and share it, so under load one round trip and one commit serve many commands instead of one.
//!
//! The task is spawned on first use, on the runtime of that first caller, and stops when the
//! last clone of its repository is dropped.

pub(crate) mod append;
pub(crate) mod load;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use cqrs_es::persist::PersistenceError;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// How a kind of request is grouped and run.
pub(crate) trait Grouped: Send + 'static {
    const KIND: usize;
    type Output: Send + 'static;
    /// The size of a request toward [`Limits::max_weight`] (events for appends, keys for loads).
    fn weight(&self) -> usize;
    /// Runs `group` and answers each request with exactly its own outcome.
    fn run(pool: sqlx::PgPool, group: Vec<Pending<Self>>) -> impl Future<Output = ()> + Send
    where
        Self: Sized;
}

/// One request waiting for its answer.
pub(crate) struct Pending<R: Grouped> {
    pub request: R,
    pub reply: oneshot::Sender<Result<R::Output, PersistenceError>>,
}

impl<R: Grouped> Pending<R> {
    pub fn answer(self, outcome: Result<R::Output, PersistenceError>) {
        // The caller may have gone away (its future dropped); the outcome stands regardless.
        let _ = self.reply.send(outcome);
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Statements of this kind running at once. Fewer means larger groups (fewer commits) but
    /// less overlap between the database and the network.
    pub in_flight: usize,
    /// A group stops growing at this weight (a single heavier request still runs, alone).
    pub max_weight: usize,
}

/// The queue of one kind of request and the task that drains it.
pub(crate) struct Dispatcher<R: Grouped> {
    pool: sqlx::PgPool,
    limits: Limits,
    queue: OnceLock<mpsc::UnboundedSender<Pending<R>>>,
}

impl<R: Grouped> std::fmt::Debug for Dispatcher<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<R: Grouped> Dispatcher<R> {
    pub fn new(pool: sqlx::PgPool, limits: Limits) -> Self {
        Self {
            pool,
            limits,
            queue: OnceLock::new(),
        }
    }

    /// Queues `request` and waits for its outcome.
    pub async fn call(&self, request: R) -> Result<R::Output, PersistenceError> {
        let (reply, outcome) = oneshot::channel();
        let pending = Pending { request, reply };
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(dispatch(self.pool.clone(), rx, self.limits));
            tx
        });
        if let Err(mpsc::error::SendError(pending)) = queue.send(pending) {
            // The task is gone with the runtime that spawned it: run this request here, alone.
            R::run(self.pool.clone(), vec![pending]).await;
        }
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> PersistenceError {
    PersistenceError::ConnectionError("the repository's group-commit task stopped before answering".into())
}

async fn dispatch<R: Grouped>(
    pool: sqlx::PgPool,
    mut queue: mpsc::UnboundedReceiver<Pending<R>>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    let mut carried: Option<Pending<R>> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // While every slot is busy, requests pile up in the queue: that is the group.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut weight = first.request.weight();
        let mut group = vec![first];
        while weight < limits.max_weight {
            let Ok(next) = queue.try_recv() else { break };
            let w = next.request.weight();
            if weight + w > limits.max_weight {
                carried = Some(next);
                break;
            }
            weight += w;
            group.push(next);
        }
        let pool = pool.clone();
        let n = group.len() as u64;
        tokio::spawn(async move {
            let t = std::time::Instant::now();
            R::run(pool, group).await;
            DBG[R::KIND].0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            DBG[R::KIND].1.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            DBG[R::KIND].2.fetch_add(
                t.elapsed().as_micros() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            drop(slot);
        });
    }
}

// TEMP
pub static DBG: [(
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicU64,
    std::sync::atomic::AtomicU64,
); 2] = [
    (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ),
    (
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ),
];
/// TEMP
pub fn debug_take() -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let f = |i: usize| {
        let (g, n, us) = (
            DBG[i].0.swap(0, Relaxed),
            DBG[i].1.swap(0, Relaxed),
            DBG[i].2.swap(0, Relaxed),
        );
        format!(
            "groups={g} avg_size={:.2} avg_us={:.0}",
            n as f64 / g.max(1) as f64,
            us as f64 / g.max(1) as f64
        )
    };
    format!("append[{}] load[{}]", f(0), f(1))
}

/// An error for each of several callers from one failed statement (errors are not `Clone`).
pub(crate) fn shared_error(e: &sqlx::Error) -> PersistenceError {
    let message = e.to_string();
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_) => {
            PersistenceError::ConnectionError(message.into())
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            PersistenceError::DeserializationError(message.into())
        }
        _ => PersistenceError::UnknownError(message.into()),
    }
}
