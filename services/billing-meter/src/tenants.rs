//! The tenants billing knows: tier and status from the tenant service's events on KEEL_EVENTS,
//! in each tenant's order (an ordered projection, so a lifecycle event that arrives before
//! `TenantCreated` waits for it).

use async_trait::async_trait;
use keel_events::Envelope;
use keel_store::projection::{ApplyError, Position, Projection};
use keel_tenancy::TenantLifecycle;
use sqlx::PgConnection;

pub struct TenantDirectory;

#[async_trait]
impl Projection for TenantDirectory {
    type Item = Envelope;

    fn name(&self) -> &str {
        "billing-tenants"
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Envelope, String> {
        keel_store::projection::decode_envelope(subject, payload)
    }

    fn position(&self, e: &Envelope) -> Option<Position> {
        Position::of(e)
    }

    async fn apply(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        if e.service() != "tenant" || e.aggregatetype != "tenant" {
            return Ok(());
        }
        let tenant = &e.aggregateid;
        let lifecycle = TenantLifecycle::parse(e.event_name(), &e.data)
            .map_err(|err| ApplyError::Permanent(err.to_string()))?;
        let (tier, status): (Option<&str>, Option<&str>) = match (&lifecycle, e.event_name()) {
            (Some(TenantLifecycle::Created(c)), _) => {
                sqlx::query(
                    "INSERT INTO tenant_info (tenant_id, tier, status) VALUES ($1, $2, 'PENDING') \
                     ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(c.tier.as_str())
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            (Some(TenantLifecycle::TierChanged(c)), _) => (Some(c.to.as_str()), None),
            (Some(TenantLifecycle::Suspended(_)), _) => (None, Some("SUSPENDED")),
            (Some(TenantLifecycle::Reactivated), _) | (_, "TenantActivated") => (None, Some("ACTIVE")),
            (Some(TenantLifecycle::DeletionRequested), _) => (None, Some("DELETING")),
            (Some(TenantLifecycle::Deleted), _) => (None, Some("DELETED")),
            (_, "TenantProvisioningStarted") => (None, Some("PROVISIONING")),
            (_, "TenantProvisioningFailed") => (None, Some("FAILED")),
            _ => return Ok(()),
        };
        sqlx::query(
            "UPDATE tenant_info SET tier = COALESCE($2, tier), status = COALESCE($3, status), updated_at = now() \
             WHERE tenant_id = $1",
        )
        .bind(tenant)
        .bind(tier)
        .bind(status)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        sqlx::query("TRUNCATE tenant_info").execute(conn).await?;
        Ok(())
    }
}
