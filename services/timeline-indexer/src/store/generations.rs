//! The live generation as the database records it, which every replica follows, and what a tail
//! cursor of a replaced generation needs to resume in the live one.

use super::{TimelineStore, ddl};
use crate::error::{Error, Result};
use crate::store::read::TailCursor;

/// Where a tail cursor reads next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TailPlan {
    /// The cursor is of the live generation. `bridge`: the replaced table and the live table's
    /// position at the swap; rows at or before it that the replaced table also holds were
    /// delivered under the old generation and are skipped.
    Live {
        table: String,
        generation: i32,
        bridge: Option<(String, TailCursor)>,
    },
    /// The cursor is of the generation the live one replaced: the rest of that (frozen) table,
    /// then the live generation from its start, bridged.
    Replaced { table: String, live_generation: i32 },
}

fn stale() -> Error {
    Error::Precondition("the cursor is from before the previous projection rebuild; start a new tail".into())
}

impl TimelineStore {
    /// The live (table, generation) as stored.
    pub async fn stored_live(&self) -> Result<(String, i32)> {
        Ok(
            sqlx::query_as("SELECT live_table, generation FROM timeline_state WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Moves this process's pointer to the stored live generation; whether it moved.
    pub async fn follow(&self) -> Result<bool> {
        let (table, generation) = self.stored_live().await?;
        ddl::check_name(&table)?;
        if self.live.get().1 == generation {
            return Ok(false);
        }
        tracing::info!(%table, generation, "following the live generation");
        self.live.set(table, generation);
        Ok(true)
    }

    /// How a tail resumes from `cursor`, whatever generation this process is on.
    pub async fn tail_plan(&self, cursor: TailCursor) -> Result<TailPlan> {
        type Row = (
            i32,
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
        );
        let (generation, table, previous, bridge_tx, bridge_seq, cursor_table): Row = sqlx::query_as(
            "SELECT s.generation, s.live_table, g.previous_table, g.bridge_tx::text, g.bridge_seq, \
             (SELECT c.live_table FROM timeline_generations c WHERE c.generation = $1) \
             FROM timeline_state s LEFT JOIN timeline_generations g ON g.generation = s.generation WHERE s.id = 1",
        )
        .bind(cursor.generation)
        .fetch_one(&self.pool)
        .await?;
        let bridge = match (bridge_tx, bridge_seq) {
            (Some(tx), Some(seq)) => Some(TailCursor {
                generation,
                tx_id: tx.parse().unwrap_or_default(),
                seq,
            }),
            _ => None,
        };
        if cursor.generation == generation {
            let before_bridge = bridge.is_some_and(|b| (cursor.tx_id, cursor.seq) < (b.tx_id, b.seq));
            let bridge = match (before_bridge, previous, bridge) {
                (false, _, _) => None,
                (true, Some(prev), Some(b)) => Some((prev, b)),
                // The replaced table is gone (a later rebuild started): the skip is impossible.
                (true, _, _) => return Err(stale()),
            };
            return Ok(TailPlan::Live {
                table,
                generation,
                bridge,
            });
        }
        match (cursor_table, previous) {
            (Some(c), Some(p)) if c == p && bridge.is_some() => Ok(TailPlan::Replaced {
                table: p,
                live_generation: generation,
            }),
            _ => Err(stale()),
        }
    }
}
