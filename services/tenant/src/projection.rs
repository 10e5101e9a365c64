//! `tenants_view`, the read model behind ListTenants, projected from the tenant service's own
//! events on KEEL_EVENTS, applied in each tenant's order by the runner (see
//! `keel_store::projection::order`); a row also only moves forward in `version`.

use async_trait::async_trait;
use keel_events::Envelope;
use keel_store::projection::{ApplyError, Projection};
use sqlx::PgConnection;

pub struct TenantsView;

fn str_field<'a>(e: &'a Envelope, key: &str) -> Result<&'a str, ApplyError> {
    e.data
        .get(key)
        .and_then(|v| v.as_str())
        .ok_or_else(|| ApplyError::Permanent(format!("{} lacks data.{key}", e.event_type)))
}

#[async_trait]
impl Projection for TenantsView {
    type Item = Envelope;

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Envelope, String> {
        keel_store::projection::decode_envelope(subject, payload)
    }

    fn name(&self) -> &str {
        "tenant-tenants-view"
    }

    /// Each tenant's events in their order: a lifecycle event that arrives before
    /// `TenantCreated` (or before the one it follows) waits for it.
    fn position(&self, e: &Envelope) -> Option<keel_store::projection::Position> {
        keel_store::projection::Position::of(e)
    }

    async fn apply(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        if e.service() != "tenant" || e.aggregatetype != "tenant" {
            return Ok(());
        }
        let version = i64::try_from(e.sequence).map_err(|err| ApplyError::Permanent(err.to_string()))?;
        if e.event_name() == "TenantCreated" {
            sqlx::query(
                "INSERT INTO tenants_view (tenant_id, slug, name, tier, status, created_at, version) \
                 VALUES ($1, $2, $3, $4, 'PENDING', $5, $6) ON CONFLICT (tenant_id) DO NOTHING",
            )
            .bind(&e.aggregateid)
            .bind(str_field(e, "slug")?)
            .bind(str_field(e, "name")?)
            .bind(str_field(e, "tier")?)
            .bind(e.time)
            .bind(version)
            .execute(conn)
            .await?;
            return Ok(());
        }
        let (status, reason, tier): (Option<&str>, Option<&str>, Option<&str>) = match e.event_name() {
            "TenantTierChanged" => (None, None, Some(str_field(e, "to")?)),
            "TenantSuspended" => (Some("SUSPENDED"), Some(str_field(e, "reason")?), None),
            "TenantReactivated" | "TenantActivated" => (Some("ACTIVE"), Some(""), None),
            "TenantProvisioningStarted" => (Some("PROVISIONING"), Some(""), None),
            "TenantProvisioningFailed" => (Some("FAILED"), Some(str_field(e, "reason")?), None),
            "TenantDeletionRequested" => (Some("DELETING"), None, None),
            "TenantDeleted" => (Some("DELETED"), None, None),
            _ => (None, None, None),
        };
        sqlx::query(
            "UPDATE tenants_view SET status = COALESCE($2, status), status_reason = COALESCE($3, status_reason), \
             tier = COALESCE($4, tier), version = $5 WHERE tenant_id = $1 AND version < $5",
        )
        .bind(&e.aggregateid)
        .bind(status)
        .bind(reason)
        .bind(tier)
        .bind(version)
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        sqlx::query("TRUNCATE tenants_view").execute(conn).await?;
        Ok(())
    }
}
