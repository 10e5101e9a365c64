//! Group commit for the repository (the dataloader pattern).
//!
//! Every `persist` without a snapshot and every event load goes through a [`Dispatcher`], which
//! keeps at most a few statements of its kind in flight. A request that finds a slot free and
//! nobody waiting runs at once, alone, on the caller's task (no hand-off: nothing added at low
//! concurrency). Requests that arrive while every slot is busy queue up for a background task,
//! which takes all of them (up to a weight limit) as one group when a slot frees and runs the
//! group as one statement, so under load one round trip and one commit serve many commands.
//!
//! The task is spawned on first use, on the runtime of that first caller, and stops when the
//! last clone of its repository is dropped.

pub(crate) mod append;
pub(crate) mod load;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use cqrs_es::persist::PersistenceError;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// How a kind of request is grouped and run.
pub(crate) trait Grouped: Send + 'static {
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
    /// Requests waiting at most; one more is refused at once (the caller sees "overloaded",
    /// retryable) instead of queueing without bound.
    pub max_queued: usize,
}

/// The queue of one kind of request and the task that drains it.
pub(crate) struct Dispatcher<R: Grouped> {
    pool: sqlx::PgPool,
    limits: Limits,
    queue: OnceLock<mpsc::UnboundedSender<Pending<R>>>,
    /// Statements running now, at most `limits.in_flight`.
    slots: Arc<Semaphore>,
    /// Requests sent to the task and not yet part of a running group.
    queued: Arc<AtomicUsize>,
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
            slots: Arc::new(Semaphore::new(limits.in_flight.max(1))),
            queued: Arc::default(),
        }
    }

    /// Runs `request` at once if a slot is free and nobody waits, else queues it for the next
    /// group; waits for its outcome either way.
    pub async fn call(&self, request: R) -> Result<R::Output, PersistenceError> {
        let (reply, outcome) = oneshot::channel();
        let pending = Pending { request, reply };
        if self.queued.load(Ordering::Acquire) == 0
            && let Ok(slot) = self.slots.clone().try_acquire_owned()
        {
            // The common case when idle: no hand-off to another task, no added latency.
            R::run(self.pool.clone(), vec![pending]).await;
            drop(slot);
            return outcome.await.unwrap_or_else(|_| Err(stopped()));
        }
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (pool, slots, queued) = (self.pool.clone(), self.slots.clone(), self.queued.clone());
            tokio::spawn(dispatch(pool, rx, slots, queued, self.limits.max_weight));
            tx
        });
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.limits.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(overloaded(self.limits.max_queued));
        }
        if let Err(mpsc::error::SendError(pending)) = queue.send(pending) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            // The task is gone with the runtime that spawned it: run this request here, alone.
            R::run(self.pool.clone(), vec![pending]).await;
        }
        outcome.await.unwrap_or_else(|_| Err(stopped()))
    }
}

/// The message callers (and `keel_store::Error::is_overload`) recognise.
pub(crate) const OVERLOADED: &str = "the event store is overloaded";

fn overloaded(limit: usize) -> PersistenceError {
    PersistenceError::ConnectionError(format!("{OVERLOADED}: {limit} writes already wait").into())
}

fn stopped() -> PersistenceError {
    PersistenceError::ConnectionError("the repository's group-commit task stopped before answering".into())
}

async fn dispatch<R: Grouped>(
    pool: sqlx::PgPool,
    mut queue: mpsc::UnboundedReceiver<Pending<R>>,
    slots: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    max_weight: usize,
) {
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
        while weight < max_weight {
            let Ok(next) = queue.try_recv() else { break };
            let w = next.request.weight();
            if weight + w > max_weight {
                carried = Some(next);
                break;
            }
            weight += w;
            group.push(next);
        }
        queued.fetch_sub(group.len(), Ordering::AcqRel);
        let pool = pool.clone();
        tokio::spawn(async move {
            R::run(pool, group).await;
            drop(slot);
        });
    }
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
