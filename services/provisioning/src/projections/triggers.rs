//! Tenant lifecycle events from KEEL_EVENTS become run requests, exactly once each.

use async_trait::async_trait;
use keel_events::Envelope;
use keel_store::projection::{ApplyError, Projection};
use keel_tenancy::TenantLifecycle;
use sqlx::PgConnection;

use crate::domain::RunKind;

pub struct Triggers;

#[async_trait]
impl Projection for Triggers {
    type Item = Envelope;

    fn name(&self) -> &str {
        "provisioning-triggers"
    }

    /// Each tenant's events in their order: a lifecycle event that arrives before
    /// `TenantCreated` (or before the one it follows) waits for it.
    fn position(&self, e: &Envelope) -> Option<keel_store::projection::Position> {
        keel_store::projection::Position::of(e)
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Envelope, String> {
        keel_store::projection::decode_envelope(subject, payload)
    }

    async fn apply(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        if e.service() != "tenant" || e.aggregatetype != "tenant" {
            return Ok(());
        }
        let tenant = &e.aggregateid;
        let lifecycle = TenantLifecycle::parse(e.event_name(), &e.data)
            .map_err(|err| ApplyError::Permanent(err.to_string()))?;
        match &lifecycle {
            Some(TenantLifecycle::Created(c)) => {
                sqlx::query("INSERT INTO tenant_info (tenant_id, slug, tier) VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO NOTHING")
                    .bind(tenant)
                    .bind(&c.slug)
                    .bind(c.tier.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            Some(TenantLifecycle::TierChanged(c)) => {
                sqlx::query("UPDATE tenant_info SET tier = $2, updated_at = now() WHERE tenant_id = $1")
                    .bind(tenant)
                    .bind(c.to.as_str())
                    .execute(&mut *conn)
                    .await?;
            }
            Some(TenantLifecycle::Suspended(_) | TenantLifecycle::Reactivated) => {
                sqlx::query("UPDATE tenant_info SET suspended = $2, updated_at = now() WHERE tenant_id = $1")
                    .bind(tenant)
                    .bind(matches!(lifecycle, Some(TenantLifecycle::Suspended(_))))
                    .execute(&mut *conn)
                    .await?;
            }
            _ => {}
        }
        let Some(kind) = RunKind::from_event(e.event_name()) else {
            return Ok(());
        };
        // The desired state at this point of the tenant's history.
        let info: Option<(String, String, bool)> =
            sqlx::query_as("SELECT slug, tier, suspended FROM tenant_info WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await?;
        let Some((slug, tier, suspended)) = info else {
            // A lifecycle event for a tenant whose creation we never saw: nothing to act on.
            return Err(ApplyError::Permanent(format!(
                "{} for unknown tenant",
                e.event_type
            )));
        };
        sqlx::query(
            "INSERT INTO run_requests (run_id, tenant_id, kind, slug, tier, suspended, traceparent) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(e.id.to_string())
        .bind(tenant)
        .bind(kind.as_str())
        .bind(slug)
        .bind(tier)
        .bind(suspended)
        .bind(&e.traceparent)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        sqlx::query("TRUNCATE tenant_info, run_requests")
            .execute(conn)
            .await?;
        Ok(())
    }
}
