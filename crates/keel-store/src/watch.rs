//! Whether a worker makes progress while work waits for it, judged from outside the worker:
//! a relay from its outbox table and checkpoint row, a consumer from JetStream's view of its
//! durable. Both views are shared by every replica, so a standby replica (whose own relay holds
//! no lock) is not called stalled while the leader publishes. Readiness fails on a stall, and
//! the figures are exported as metrics (`keel_relay_lag_seconds`, `keel_queue_depth`,
//! `keel_consumer_lag`, `keel_dlq_messages_total`).

use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::Result;
use crate::relay::Source;

/// Detects a stall: work has been waiting and the progress mark has not moved for `limit`.
#[derive(Debug)]
pub struct Stall {
    limit: Duration,
    mark: Option<u64>,
    since: Option<Instant>,
}

impl Stall {
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            mark: None,
            since: None,
        }
    }

    /// Feeds one observation: whether work is waiting, and a mark that moves with progress.
    /// Returns whether the worker is stalled.
    pub fn observe(&mut self, now: Instant, waiting: bool, mark: u64) -> bool {
        let moved = self.mark != Some(mark);
        self.mark = Some(mark);
        if !waiting {
            self.since = None;
            return false;
        }
        if moved || self.since.is_none() {
            self.since = Some(now);
        }
        self.since.is_some_and(|s| now.duration_since(s) >= self.limit)
    }
}

/// What is waiting in one relay's outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Backlog {
    /// Committed rows after the checkpoint (counted up to 100,000).
    pub rows: i64,
    /// Age of the oldest of them, in seconds (0 when there is none).
    pub oldest_secs: f64,
    /// Seconds since the checkpoint last moved (`None`: never stored).
    pub checkpoint_age_secs: Option<f64>,
}

/// The backlog of relay `name` of `source` in `pool`'s schema.
pub async fn backlog(pool: &PgPool, source: Source, name: &str) -> Result<Backlog> {
    let (table, position, time) = match source {
        Source::Events => ("events", "global_position", "recorded_at"),
        Source::Audit => ("audit_outbox", "position", "recorded_at"),
    };
    let sql = format!(
        "WITH c AS (SELECT tx_id, global_position, updated_at FROM relay_checkpoints WHERE relay = $1), \
         waiting AS (SELECT t.{time} AS at FROM {table} t \
             WHERE (t.tx_id, t.{position}) > (coalesce((SELECT tx_id FROM c), '0'::xid8), coalesce((SELECT global_position FROM c), 0)) \
             LIMIT 100000) \
         SELECT (SELECT count(*) FROM waiting)::int8, \
                coalesce(extract(epoch FROM now() - (SELECT min(at) FROM waiting)), 0)::float8, \
                extract(epoch FROM now() - (SELECT updated_at FROM c))::float8"
    );
    let (rows, oldest_secs, checkpoint_age_secs): (i64, f64, Option<f64>) =
        sqlx::query_as(&sql).bind(name).fetch_one(pool).await?;
    Ok(Backlog {
        rows,
        oldest_secs,
        checkpoint_age_secs,
    })
}

impl Backlog {
    /// Stalled: rows have waited longer than `limit` and the checkpoint has not moved for as long.
    pub fn stalled(&self, limit: Duration) -> bool {
        let limit = limit.as_secs_f64();
        self.rows > 0 && self.oldest_secs >= limit && self.checkpoint_age_secs.is_none_or(|age| age >= limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_work_waiting_with_no_progress_for_the_limit() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut stall = Stall::new(Duration::from_secs(10));
        assert!(!stall.observe(s(0), false, 1));
        // Idle for ever is not a stall.
        assert!(!stall.observe(s(100), false, 1));
        // Work arrives; no progress yet.
        assert!(!stall.observe(s(101), true, 1));
        assert!(!stall.observe(s(110), true, 1));
        assert!(stall.observe(s(111), true, 1));
        // Progress resets the clock.
        assert!(!stall.observe(s(112), true, 2));
        assert!(!stall.observe(s(121), true, 2));
        assert!(stall.observe(s(122), true, 2));
        // Drained.
        assert!(!stall.observe(s(123), false, 2));
    }

    #[test]
    fn a_backlog_stalls_only_when_old_and_the_checkpoint_still() {
        let limit = Duration::from_secs(30);
        let b = |rows, oldest_secs, age| Backlog {
            rows,
            oldest_secs,
            checkpoint_age_secs: age,
        };
        assert!(!b(0, 0.0, Some(500.0)).stalled(limit));
        assert!(!b(10, 5.0, Some(500.0)).stalled(limit));
        assert!(
            !b(10, 50.0, Some(1.0)).stalled(limit),
            "draining a backlog is progress"
        );
        assert!(b(10, 50.0, Some(40.0)).stalled(limit));
        assert!(b(10, 50.0, None).stalled(limit));
    }
}
