//! The swap: freeze the live table, wait until the rebuilt one holds all of it, name it live;
//! and the clean-up of what earlier generations left.

use super::compare::CONTENT;
use super::{FREEZE, Job, POLL, Rebuilds, table_of};
use crate::error::{Error, Result};
use crate::indexer::{consumer_name, stream_of};
use crate::projection::Source;
use crate::store::ddl;

impl Rebuilds {
    /// Freezes the live table, waits until the new one holds every row of it, and names the new
    /// one live, in one transaction with the job's end. Whether it swapped.
    pub(super) async fn swap(&self, job: &Job, live: &str, target: &str) -> Result<bool> {
        let mut lock = self.pool().begin().await?;
        // Every live writer takes this row FOR SHARE before it writes: from here on the live
        // table is frozen, and stays so once this commits (it is no longer live).
        sqlx::query("SELECT 1 FROM timeline_state WHERE id = 1 FOR UPDATE")
            .execute(&mut *lock)
            .await?;
        let deadline = tokio::time::Instant::now() + FREEZE;
        let bridge = loop {
            if let Some(at) = self.contains(live, target).await? {
                break at;
            }
            if tokio::time::Instant::now() >= deadline {
                lock.rollback().await?;
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        };
        sqlx::query(
            "INSERT INTO timeline_generations (generation, live_table) \
             SELECT generation, live_table FROM timeline_state WHERE id = 1 ON CONFLICT (generation) DO NOTHING",
        )
        .execute(&mut *lock)
        .await?;
        sqlx::query("UPDATE timeline_state SET live_table = $1, generation = $2 WHERE id = 1")
            .bind(target)
            .bind(job.generation)
            .execute(&mut *lock)
            .await?;
        sqlx::query(
            "INSERT INTO timeline_generations (generation, live_table, previous_table, bridge_tx, bridge_seq) \
             VALUES ($1, $2, $3, $4::text::xid8, $5) ON CONFLICT (generation) DO UPDATE SET \
             live_table = EXCLUDED.live_table, previous_table = EXCLUDED.previous_table, \
             bridge_tx = EXCLUDED.bridge_tx, bridge_seq = EXCLUDED.bridge_seq, swapped_at = now()",
        )
        .bind(job.generation)
        .bind(target)
        .bind(live)
        .bind(bridge.0.to_string())
        .bind(bridge.1)
        .execute(&mut *lock)
        .await?;
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {target}"))
            .fetch_one(&mut *lock)
            .await?;
        let ended = sqlx::query(
            "UPDATE rebuild_jobs SET state = 'swapped', phase = 'done', rows_rebuilt = $3, missing = 0, extra = 0, \
             changed = 0, sample = '[]', lease_owner = NULL, lease_until = NULL, finished_at = now(), updated_at = now() \
             WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
        )
        .bind(job.id)
        .bind(self.replica)
        .bind(rows)
        .execute(&mut *lock)
        .await?;
        sqlx::query("DELETE FROM rebuild_diffs WHERE job_id = $1")
            .bind(job.id)
            .execute(&mut *lock)
            .await?;
        if ended.rows_affected() != 1 {
            lock.rollback().await?;
            return Err(Error::Internal(
                "the rebuild's lease was lost before the swap".into(),
            ));
        }
        lock.commit().await?;
        Ok(true)
    }

    /// If every row of the (frozen) live table is in the new one as it is, the new table's last
    /// position in the same snapshot: tails of the old generation resume after it.
    pub(super) async fn contains(&self, live: &str, target: &str) -> Result<Option<(u64, i64)>> {
        let mut snap = self.pool().begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *snap)
            .await?;
        let missing: bool = sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT {CONTENT} FROM {live} EXCEPT SELECT {CONTENT} FROM {target})"
        ))
        .fetch_one(&mut *snap)
        .await?;
        if missing {
            snap.rollback().await?;
            return Ok(None);
        }
        let at: Option<(String, i64)> = sqlx::query_as(&format!(
            "SELECT tx_id::text, seq FROM {target} ORDER BY tx_id DESC, seq DESC LIMIT 1"
        ))
        .fetch_optional(&mut *snap)
        .await?;
        snap.commit().await?;
        Ok(Some(
            at.map(|(tx, seq)| (tx.parse().unwrap_or_default(), seq))
                .unwrap_or((0, 0)),
        ))
    }

    /// Drops what earlier generations left: every timeline table but the live one and this
    /// job's (the replaced one was kept for resuming tails until now), and their consumers.
    pub(super) async fn drop_retired(&self, live: &str, live_gen: i32, target_gen: i32) -> Result<()> {
        let target = table_of(target_gen);
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind = 'p' AND c.relname ~ '^timeline_events_g[0-9]+$'",
        )
        .fetch_all(self.pool())
        .await?;
        for t in tables.iter().filter(|t| *t != live && **t != target) {
            ddl::check_name(t)?;
            sqlx::query("UPDATE timeline_generations SET previous_table = NULL WHERE previous_table = $1")
                .bind(t)
                .execute(self.pool())
                .await?;
            sqlx::query(&format!("DROP TABLE IF EXISTS {t}"))
                .execute(self.pool())
                .await?;
            tracing::info!(table = %t, "dropped a retired timeline table");
        }
        let bus = self.indexer.bus();
        for source in [Source::Events, Source::Audit] {
            let Ok(stream) = bus
                .jetstream()
                .get_stream(bus.stream_name(stream_of(source)))
                .await
            else {
                continue;
            };
            let last = live_gen.max(target_gen);
            for g in 1..last {
                if g != live_gen && g != target_gen {
                    let _ = stream.delete_consumer(&consumer_name(source, g)).await;
                }
            }
        }
        Ok(())
    }
}
