//! PostgreSQL side of the timeline: writing rows (from the projection), reading them (as the
//! RLS-bound reader role, tenant set per transaction), and the live-table pointer.

pub mod ddl;
pub mod generations;
pub mod read;
pub mod retention;

use std::sync::{Arc, RwLock};

use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};

use crate::domain::TimelineRow;
use crate::error::Result;

/// Which table is live and its generation. Shared by the projection, the API and the rebuild.
/// The process's copy of `timeline_state`: [`TimelineStore::follow`] moves it when another
/// replica (or this one) swaps a rebuilt generation in.
#[derive(Clone, Debug)]
pub struct Live {
    at: Arc<RwLock<(String, i32)>>,
    /// Whether writes through this pointer go only to the table the database names live (the
    /// live projections), or to this table whatever is live (a rebuild's target).
    follows: bool,
}

impl Live {
    /// A pointer that never moves (a rebuild writes its new table through one).
    pub fn fixed(table: String, generation: i32) -> Self {
        Live {
            at: Arc::new(RwLock::new((table, generation))),
            follows: false,
        }
    }

    /// Whether this pointer follows the database's live generation.
    pub fn follows(&self) -> bool {
        self.follows
    }

    pub fn get(&self) -> (String, i32) {
        self.at
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set(&self, table: String, generation: i32) {
        match self.at.write() {
            Ok(mut g) => *g = (table, generation),
            Err(p) => *p.into_inner() = (table, generation),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TimelineStore {
    pub pool: PgPool,
    /// Open tails read here, so that a thousand of them never take ingest's or queries'
    /// connections (the same pool as `pool` unless [`TimelineStore::with_tail_pool`]).
    pub tail_pool: PgPool,
    pub live: Live,
}

impl TimelineStore {
    /// Makes sure a live table exists and loads which one it is.
    pub async fn open(pool: PgPool) -> Result<Self> {
        let mut conn = pool.acquire().await?;
        sqlx::query("INSERT INTO timeline_state (id, live_table, generation) VALUES (1, 'timeline_events_g1', 1) ON CONFLICT (id) DO NOTHING")
            .execute(&mut *conn)
            .await?;
        let (table, generation): (String, i32) =
            sqlx::query_as("SELECT live_table, generation FROM timeline_state WHERE id = 1")
                .fetch_one(&mut *conn)
                .await?;
        ddl::create_table(&mut conn, &table).await?;
        // Tail cursors of the live generation resume after the next swap through this row.
        sqlx::query("INSERT INTO timeline_generations (generation, live_table) VALUES ($1, $2) ON CONFLICT (generation) DO NOTHING")
            .bind(generation)
            .bind(&table)
            .execute(&mut *conn)
            .await?;
        Ok(Self {
            tail_pool: pool.clone(),
            pool,
            live: Live {
                at: Arc::new(RwLock::new((table, generation))),
                follows: true,
            },
        })
    }

    /// Tails read on `pool` from now on.
    pub fn with_tail_pool(mut self, pool: PgPool) -> Self {
        self.tail_pool = pool;
        self
    }
}

/// Writes rows idempotently (a redelivered event conflicts on its key and is skipped) with one
/// statement, and records what retention needs (tier, legal hold) per tenant.
pub async fn insert_rows(conn: &mut PgConnection, table: &str, rows: &[&TimelineRow]) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    ddl::check_name(table)?;
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "INSERT INTO {table} (event_id, ts, tenant_id, project_id, kind, actor, resource_type, resource_id, \
         trace_id, result, digest, details, stored, source) "
    ));
    qb.push_values(rows.iter(), |mut b, r| {
        b.push_bind(r.event_id)
            .push_bind(r.ts)
            .push_bind(&r.tenant_id)
            .push_bind(&r.project_id)
            .push_bind(&r.kind)
            .push_bind(&r.actor)
            .push_bind(&r.resource_type)
            .push_bind(&r.resource_id)
            .push_bind(&r.trace_id)
            .push_bind(&r.result)
            .push_bind(&r.digest)
            .push_bind(&r.details)
            .push_bind(&r.stored)
            .push_bind(r.source);
    });
    qb.push(" ON CONFLICT (tenant_id, ts, event_id) DO NOTHING");
    qb.build().execute(&mut *conn).await?;
    // What a row says about its tenant's policies (tier, suspension, legal hold): one upsert
    // that changes only what the row sets, and only if the row is later than what set it (so
    // rows applied in any order leave the same policies).
    for r in rows {
        let (tier, suspended, hold) = (r.tier(), r.suspends(), r.legal_hold());
        if tier.is_none() && suspended.is_none() && hold.is_none() {
            continue;
        }
        sqlx::query(
            "INSERT INTO tenant_policies AS p (tenant_id, tier, suspended, legal_hold, tier_seq, suspended_seq, hold_at, hold_seq) \
             VALUES ($1, $2, COALESCE($3, false), COALESCE($4, false), \
                     CASE WHEN $2 IS NULL THEN 0 ELSE $5 END, CASE WHEN $3 IS NULL THEN 0 ELSE $5 END, \
                     CASE WHEN $4 IS NULL THEN '-infinity' ELSE $6 END, CASE WHEN $4 IS NULL THEN 0 ELSE $5 END) \
             ON CONFLICT (tenant_id) DO UPDATE SET \
               tier = CASE WHEN $2 IS NOT NULL AND $5 > p.tier_seq THEN $2 ELSE p.tier END, \
               tier_seq = CASE WHEN $2 IS NOT NULL THEN GREATEST(p.tier_seq, $5) ELSE p.tier_seq END, \
               suspended = CASE WHEN $3 IS NOT NULL AND $5 > p.suspended_seq THEN $3 ELSE p.suspended END, \
               suspended_seq = CASE WHEN $3 IS NOT NULL THEN GREATEST(p.suspended_seq, $5) ELSE p.suspended_seq END, \
               legal_hold = CASE WHEN $4 IS NOT NULL AND ($6, $5) > (p.hold_at, p.hold_seq) THEN $4 ELSE p.legal_hold END, \
               hold_seq = CASE WHEN $4 IS NOT NULL AND ($6, $5) > (p.hold_at, p.hold_seq) THEN $5 ELSE p.hold_seq END, \
               hold_at = CASE WHEN $4 IS NOT NULL AND ($6, $5) > (p.hold_at, p.hold_seq) THEN $6 ELSE p.hold_at END, \
               updated_at = now()",
        )
        .bind(&r.tenant_id)
        .bind(tier)
        .bind(suspended)
        .bind(hold)
        .bind(r.sequence())
        .bind(r.ts)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
