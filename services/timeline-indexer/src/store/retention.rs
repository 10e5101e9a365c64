//! Retention: each tenant keeps its tier's days of events (the tier table in `keel-tenancy`;
//! the longest fixed retention while the tier is not known yet) and audit records for at least
//! [`AUDIT_RETENTION_DAYS`]; a tenant under legal hold keeps everything. Rows go in bounded
//! batches; whole partitions go once they are older than the longest retention of any tier and
//! hold no row of a tenant under legal hold.

use chrono::{Duration, Utc};

use super::{TimelineStore, ddl};
use crate::error::Result;
use keel_tenancy::tier::{AUDIT_RETENTION_DAYS, max_fixed_retention_days, retention_days};

/// What one sweep removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub rows_deleted: u64,
    pub partitions_dropped: Vec<String>,
}

pub const BATCH: i64 = 10_000;

impl TimelineStore {
    pub async fn sweep_retention(&self) -> Result<Sweep> {
        let (table, _) = self.live.get();
        ddl::check_name(&table)?;
        let mut sweep = Sweep::default();
        let held: Vec<String> = sqlx::query_scalar("SELECT tenant_id FROM tenant_policies WHERE legal_hold")
            .fetch_all(&self.pool)
            .await?;

        // Whole partitions first: cheap, and only where no held tenant has a row.
        let mut conn = self.pool.acquire().await?;
        let cutoff = Utc::now() - Duration::days(i64::from(max_fixed_retention_days()));
        for part in ddl::partitions_before(&mut conn, &table, cutoff).await? {
            let held_rows: bool = sqlx::query_scalar(&format!(
                "SELECT EXISTS (SELECT 1 FROM {part} WHERE tenant_id = ANY($1))"
            ))
            .bind(&held)
            .fetch_one(&mut *conn)
            .await?;
            if !held_rows {
                sqlx::query(&format!("DROP TABLE {part}"))
                    .execute(&mut *conn)
                    .await?;
                sweep.partitions_dropped.push(part);
            }
        }

        // Then rows, tenant by tenant, in bounded batches.
        let tenants: Vec<(String, Option<String>, bool)> = sqlx::query_as(&format!(
            "SELECT t.tenant_id, p.tier, COALESCE(p.legal_hold, false) FROM (SELECT DISTINCT tenant_id FROM {table}) t \
             LEFT JOIN tenant_policies p USING (tenant_id)"
        ))
        .fetch_all(&mut *conn)
        .await?;
        for (tenant, tier, hold) in tenants {
            if hold {
                continue;
            }
            let days = tier
                .as_deref()
                .and_then(retention_days)
                .unwrap_or_else(max_fixed_retention_days);
            let events_before = Utc::now() - Duration::days(i64::from(days));
            let audit_before = Utc::now() - Duration::days(i64::from(days.max(AUDIT_RETENTION_DAYS)));
            for (is_audit, before) in [(false, events_before), (true, audit_before)] {
                loop {
                    let done = sqlx::query(&format!(
                        "DELETE FROM {table} WHERE (tenant_id, ts, event_id) IN \
                         (SELECT tenant_id, ts, event_id FROM {table} \
                          WHERE tenant_id = $1 AND ts < $2 AND (source = 'audit') = $4 LIMIT $3)"
                    ))
                    .bind(&tenant)
                    .bind(before)
                    .bind(BATCH)
                    .bind(is_audit)
                    .execute(&mut *conn)
                    .await?;
                    sweep.rows_deleted += done.rows_affected();
                    if done.rows_affected() < BATCH as u64 {
                        break;
                    }
                }
            }
        }
        Ok(sweep)
    }
}
