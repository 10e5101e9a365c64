//! Run leases: which replica drives a tenant's runs. A replica claims a tenant's lease before
//! it drives the tenant's next run, renews it while it drives, and releases it when the drive
//! ends; a replica that dies stops renewing and, once the lease has expired (by the database's
//! clock), another claims it and resumes the run from its events.
//!
//! A lease keeps two replicas from driving one run; it does not fence a replica that stalls
//! past its expiry mid-step. That case stays correct because every step is idempotent and the
//! event store appends a run's events with optimistic concurrency: the late replica's next
//! record fails and it stops.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug)]
pub struct Leases {
    pool: PgPool,
    owner: String,
    ttl: Duration,
}

impl Leases {
    /// Leases held as a new owner (one per process) for `ttl` at a time.
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        Self {
            pool,
            owner: format!("provisioning-{}", uuid::Uuid::now_v7()),
            ttl,
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    fn ttl_secs(&self) -> f64 {
        self.ttl.as_secs_f64()
    }

    /// Claims `tenant`'s lease for driving `run_id`: true when this owner holds it now (it was
    /// free, expired, or already ours).
    pub async fn claim(&self, tenant: &str, run_id: &str) -> sqlx::Result<bool> {
        let row: Option<(String,)> = sqlx::query_as(
            "INSERT INTO run_leases (tenant_id, run_id, owner, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (tenant_id) DO UPDATE SET run_id = EXCLUDED.run_id, owner = EXCLUDED.owner, \
                 claimed_at = now(), expires_at = EXCLUDED.expires_at \
             WHERE run_leases.expires_at <= now() OR run_leases.owner = EXCLUDED.owner \
             RETURNING owner",
        )
        .bind(tenant)
        .bind(run_id)
        .bind(&self.owner)
        .bind(self.ttl_secs())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Extends `tenant`'s lease: false when it is no longer this owner's.
    pub async fn renew(&self, tenant: &str) -> sqlx::Result<bool> {
        let done = sqlx::query(
            "UPDATE run_leases SET expires_at = now() + make_interval(secs => $3) \
             WHERE tenant_id = $1 AND owner = $2",
        )
        .bind(tenant)
        .bind(&self.owner)
        .bind(self.ttl_secs())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives `tenant`'s lease up (if this owner still holds it), so that any replica may drive
    /// the tenant's next run at once.
    pub async fn release(&self, tenant: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM run_leases WHERE tenant_id = $1 AND owner = $2")
            .bind(tenant)
            .bind(&self.owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Renews `tenant`'s lease every third of its lifetime until `drive` is cancelled; cancels
    /// `drive` when the lease is lost (taken by another owner, or not renewed in time).
    pub async fn hold(&self, tenant: &str, drive: CancellationToken) {
        let mut renewed = Instant::now();
        loop {
            tokio::select! {
                () = drive.cancelled() => return,
                () = tokio::time::sleep(self.ttl / 3) => {}
            }
            match self.renew(tenant).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    tracing::warn!(tenant, owner = %self.owner, "run lease lost to another replica; stopping");
                    drive.cancel();
                    return;
                }
                Err(e) if renewed.elapsed() >= self.ttl => {
                    tracing::warn!(tenant, error = %e, "run lease not renewed before it expired; stopping");
                    drive.cancel();
                    return;
                }
                Err(e) => tracing::warn!(tenant, error = %e, "cannot renew run lease; trying again"),
            }
        }
    }
}
