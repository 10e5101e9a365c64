//! Tenant-scoped reads under row-level security: one transaction as `keel_tenant_reader` with
//! `keel.tenant_id` set to the tenant (`keel_store::rls`), so each of these reads sees that
//! tenant's rows only, whatever its query says. Each query still names the tenant as well.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};

use crate::crypto::{DataKey, DataKeys};
use crate::domain::{Tenant, TenantError};
use crate::error::{Error, Result};
use crate::store::{TenantTables, ViewRow};
use crate::tokens::{ApiKeys, KeyRow};

/// The NOLOGIN role of the tenant service's tenant-scoped reads (migration
/// `20261210100002_row_level_security.sql`).
pub const READER_ROLE: &str = "keel_tenant_reader";

/// One tenant's reads, in one reader transaction.
pub struct TenantRead {
    tx: Transaction<'static, Postgres>,
    tenant: String,
}

impl TenantRead {
    pub async fn begin(pool: &PgPool, tenant: &str) -> Result<Self> {
        Ok(Self {
            tx: keel_store::rls::reader(pool, READER_ROLE, tenant).await?,
            tenant: tenant.to_owned(),
        })
    }

    /// The tenant's state and version, folded from the events this transaction sees.
    pub async fn tenant(&mut self) -> Result<(Tenant, usize)> {
        let (t, v) = keel_store::rls::load::<Tenant>(&mut self.tx, &self.tenant).await?;
        if v == 0 {
            return Err(Error::Domain(TenantError::NotFound));
        }
        Ok((t, v))
    }

    pub async fn created_at(&mut self) -> Result<Option<DateTime<Utc>>> {
        TenantTables::created_at_on(&mut *self.tx, &self.tenant).await
    }

    pub async fn data_key(&mut self, keys: &DataKeys) -> Result<Option<DataKey>> {
        keys.get_on(&mut *self.tx, &self.tenant).await
    }

    /// The latest license: (license id, JWT).
    pub async fn license(&mut self) -> Result<Option<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT license_id, jwt FROM licenses WHERE tenant_id = $1 ORDER BY issued_at DESC LIMIT 1",
        )
        .bind(&self.tenant)
        .fetch_optional(&mut *self.tx)
        .await?)
    }

    pub async fn api_keys(&mut self, after: Option<&str>, limit: i64) -> Result<Vec<KeyRow>> {
        ApiKeys::list(&mut *self.tx, Some(&self.tenant), after, limit).await
    }

    /// The tenant's `tenants_view` row as a page of ListTenants.
    pub async fn view(
        &mut self,
        status: Option<String>,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<ViewRow>> {
        TenantTables::list_on(&mut *self.tx, Some(self.tenant.clone()), status, after, limit).await
    }

    /// Ends the transaction (it only read).
    pub async fn finish(self) -> Result<()> {
        Ok(self.tx.commit().await?)
    }
}
