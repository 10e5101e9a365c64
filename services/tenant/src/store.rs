//! The tenant service's own tables besides the event store: the create reservations
//! (`tenant_creates`: request id and slug, for idempotent creates and slug lookups) and the
//! `tenants_view` read model behind `ListTenants`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::error::{Error, Result};

/// One `tenants_view` row: id, slug, name, tier, status, status reason, created at, version.
pub type ViewRow = (String, String, String, String, String, String, DateTime<Utc>, i64);

#[derive(Clone, Debug)]
pub struct TenantTables {
    pool: PgPool,
}

/// What reserving a create request found.
pub enum Reservation {
    /// The tenant id this request creates (fresh, or the one an earlier attempt reserved).
    Tenant(String),
    /// Another request holds the slug.
    SlugTaken,
}

impl TenantTables {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// When the tenant was created (its reservation), if it was.
    pub async fn created_at(&self, tenant_id: &str) -> Result<Option<DateTime<Utc>>> {
        Self::created_at_on(&self.pool, tenant_id).await
    }

    /// As [`TenantTables::created_at`], read on `conn` (a tenant's reader transaction).
    pub async fn created_at_on<'c, E: sqlx::PgExecutor<'c>>(
        conn: E,
        tenant_id: &str,
    ) -> Result<Option<DateTime<Utc>>> {
        Ok(
            sqlx::query_scalar("SELECT created_at FROM tenant_creates WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(conn)
                .await?,
        )
    }

    /// Reserves `slug` for `request_id` before anything else is written: a repeated request
    /// gets the tenant id of its first attempt.
    pub async fn reserve(&self, request_id: &str, slug: &str) -> Result<Reservation> {
        let fresh = uuid::Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO tenant_creates (request_id, tenant_id, slug) VALUES ($1, $2, $3) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(request_id)
        .bind(&fresh)
        .bind(slug)
        .execute(&self.pool)
        .await;
        match inserted {
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("tenant_creates_slug_key") => {
                return Ok(Reservation::SlugTaken);
            }
            Err(e) => return Err(Error::from(e)),
            Ok(_) => {}
        }
        let tenant_id: String =
            sqlx::query_scalar("SELECT tenant_id FROM tenant_creates WHERE request_id = $1")
                .bind(request_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(Reservation::Tenant(tenant_id))
    }

    /// The tenant id reserved for `slug`.
    pub async fn by_slug(&self, slug: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT tenant_id FROM tenant_creates WHERE slug = $1")
                .bind(slug)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// A page of `tenants_view` in tenant id order: only `only` when set, of `status` when
    /// set, after the id `after`, at most `limit` rows.
    pub async fn list(
        &self,
        only: Option<String>,
        status: Option<String>,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<ViewRow>> {
        Self::list_on(&self.pool, only, status, after, limit).await
    }

    /// As [`TenantTables::list`], read on `conn` (a tenant's reader transaction for one tenant).
    pub async fn list_on<'c, E: sqlx::PgExecutor<'c>>(
        conn: E,
        only: Option<String>,
        status: Option<String>,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<ViewRow>> {
        Ok(sqlx::query_as(
            "SELECT tenant_id, slug, name, tier, status, status_reason, created_at, version FROM tenants_view \
             WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR tenant_id > $3) \
             ORDER BY tenant_id LIMIT $4",
        )
        .bind(only)
        .bind(status)
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?)
    }
}
