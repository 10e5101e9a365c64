//! Row-level security for tenant-scoped reads. A service's tenant-keyed tables carry the policy
//! `tenant_isolation`: `USING (tenant_id = current_setting('keel.tenant_id', true))`, and its
//! NOLOGIN reader role may only `SELECT` them. [`reader`] opens a transaction as that role with
//! `keel.tenant_id` set to one tenant, so every query in it sees that tenant's rows and nothing
//! else, whatever its `WHERE` clause says. The service's own login (the tables' owner, or a
//! superuser) is not restrained: writes and operator-wide reads keep using it.
//!
//! A migration sets a table up like this (roles are cluster-wide, so the role is created
//! idempotently; grants and policies are per schema):
//!
//! ```sql
//! DO $$ BEGIN CREATE ROLE keel_x_reader NOLOGIN;
//! EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;
//! ALTER TABLE t ENABLE ROW LEVEL SECURITY;
//! CREATE POLICY tenant_isolation ON t USING (tenant_id = current_setting('keel.tenant_id', true));
//! GRANT SELECT ON t TO keel_x_reader;
//! ```

use cqrs_es::Aggregate;
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};

use crate::{Error, Result};

/// The setting the `tenant_isolation` policies compare `tenant_id` with.
pub const TENANT_SETTING: &str = "keel.tenant_id";

/// Whether `role` may be spliced into `SET LOCAL ROLE` (it cannot be a bind parameter).
fn valid_role(role: &str) -> bool {
    let mut chars = role.chars();
    role.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A transaction as the reader `role` that sees only `tenant`'s rows. Commit it (or drop it)
/// when done; the role and the setting end with it. `tenant` must be a tenant id: never `*` or
/// empty, which would name no tenant (or the operators' rows).
pub async fn reader(pool: &PgPool, role: &str, tenant: &str) -> Result<Transaction<'static, Postgres>> {
    if !valid_role(role) {
        return Err(Error::InvalidName(role.to_owned()));
    }
    if !keel_events::subjects::is_valid_token(tenant) {
        return Err(Error::InvalidTenant(tenant.to_owned()));
    }
    let mut tx = pool.begin().await?;
    sqlx::query(&format!("SET LOCAL ROLE {role}"))
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT set_config($1, $2, true)")
        .bind(TENANT_SETTING)
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The state and version (last sequence; 0 when it has no events) of aggregate `id`, folded from
/// its events as `conn` may see them: in a [`reader`] transaction, only the reader's tenant's
/// events. Snapshots are not read (they are only a shortcut to the same state).
pub async fn load<A: Aggregate>(conn: &mut PgConnection, id: &str) -> Result<(A, usize)> {
    let rows = sqlx::query(
        "SELECT sequence, payload FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(A::TYPE)
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let mut state = A::default();
    let mut version = 0;
    for row in &rows {
        let sequence: i64 = row.try_get("sequence")?;
        let payload: serde_json::Value = row.try_get("payload")?;
        let event: A::Event = serde_json::from_value(payload).map_err(|e| Error::Decode {
            aggregate_id: id.to_owned(),
            sequence,
            reason: e.to_string(),
        })?;
        state.apply(event);
        version = usize::try_from(sequence).unwrap_or_default();
    }
    Ok((state, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_role_names_are_spliced() {
        assert!(valid_role("keel_tenant_reader"));
        for bad in ["", "Keel", "r; RESET ROLE", "r\"x", "1r", &"r".repeat(64)] {
            assert!(!valid_role(bad), "{bad:?}");
        }
    }
}
