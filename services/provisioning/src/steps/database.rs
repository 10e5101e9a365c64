//! The tenant's PostgreSQL schema and login role. The role may use its own schema only: it gets
//! `USAGE, CREATE` there and nothing anywhere else, `PUBLIC` gets nothing on the schema, and its
//! generated password is kept wrapped by the master key in `tenant_credentials`.
//!
//! Role and grant DDL runs under one advisory lock: roles are cluster-wide and concurrent
//! GRANT/REVOKE on one object (the `public` schema) fail with "tuple concurrently updated".

use async_trait::async_trait;
use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::{Step, StepContext, StepError, Systems, failure, scram};

/// The advisory lock key of tenant role DDL: `keelprov` in ASCII.
const DDL_LOCK: i64 = 0x6b65_656c_7072_6f76;

/// Attributes every tenant role has, whatever its login state.
const ROLE_ATTRIBUTES: &str = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS";

pub struct Database;

/// The `database` step.
pub fn database() -> Box<dyn Step> {
    Box::new(Database)
}

/// `name` double-quoted after a strict check (`[a-z0-9_]{1,63}`): schema and role names are
/// built from validated slugs, but DDL cannot take them as bind parameters.
fn ident(name: &str) -> Result<String, StepError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(format!("\"{name}\""))
    } else {
        Err(StepError::Permanent(format!(
            "invalid PostgreSQL identifier {name:?}"
        )))
    }
}

/// 32 random bytes, hex: 64 characters of `[0-9a-f]`, no quoting concerns anywhere.
fn generate_password() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<(), StepError> {
    // The executor's own boxed future: `raw_sql(..).execute(..)` is not provably `Send` inside
    // the trait's boxed futures.
    sqlx::Executor::execute(&mut *conn, sql)
        .await
        .map(|_| ())
        .map_err(|e| failure::pg("database", e))
}

async fn ensure_credentials_table(conn: &mut PgConnection) -> Result<(), StepError> {
    exec(
        conn,
        "CREATE TABLE IF NOT EXISTS tenant_credentials (
             tenant_id        text        PRIMARY KEY,
             role             text        NOT NULL,
             password_wrapped bytea       NOT NULL,
             updated_at       timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
}

/// `Some(can_login)` when the role exists.
async fn role_login(conn: &mut PgConnection, role: &str) -> Result<Option<bool>, StepError> {
    sqlx::query_scalar("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
        .bind(role)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| failure::pg("reading pg_roles", e))
}

async fn schema_exists(conn: &mut PgConnection, schema: &str) -> Result<bool, StepError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| failure::pg("reading pg_namespace", e))
}

/// Ends the role's open sessions, so that blocking its login takes effect now. Best effort: a
/// service user without `pg_signal_backend` still blocks new logins.
async fn terminate_sessions(pg: &PgPool, role: &str) -> u64 {
    let ended = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE usename = $1 AND pid <> pg_backend_pid()",
    )
    .bind(role)
    .fetch_one(pg)
    .await;
    match ended {
        Ok(n) => u64::try_from(n).unwrap_or_default(),
        Err(e) => {
            tracing::warn!(role, error = %e, "could not end the tenant role's sessions");
            0
        }
    }
}

/// The stored password of `role`, when the credentials row is for that role.
async fn stored_password(
    conn: &mut PgConnection,
    sys: &Systems,
    tenant_id: &str,
    role: &str,
) -> Result<Option<String>, StepError> {
    let row: Option<(String, Vec<u8>)> =
        sqlx::query_as("SELECT role, password_wrapped FROM tenant_credentials WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| failure::pg("reading tenant_credentials", e))?;
    match row {
        Some((stored_role, wrapped)) if stored_role == role => unwrap_password(sys, &wrapped).map(Some),
        _ => Ok(None),
    }
}

fn unwrap_password(sys: &Systems, wrapped: &[u8]) -> Result<String, StepError> {
    let plain = sys
        .master
        .unwrap(wrapped)
        .map_err(|e| StepError::Permanent(format!("unwrapping a tenant role's password: {e}")))?;
    String::from_utf8(plain).map_err(|_| StepError::Permanent("a tenant role's password is not UTF-8".into()))
}

async fn store_password(
    conn: &mut PgConnection,
    sys: &Systems,
    ctx: &StepContext,
    password: &str,
) -> Result<(), StepError> {
    let wrapped = sys
        .master
        .wrap(password.as_bytes())
        .map_err(|e| StepError::Permanent(format!("wrapping a tenant role's password: {e}")))?;
    sqlx::query(
        "INSERT INTO tenant_credentials (tenant_id, role, password_wrapped) VALUES ($1, $2, $3) \
         ON CONFLICT (tenant_id) DO UPDATE \
         SET role = EXCLUDED.role, password_wrapped = EXCLUDED.password_wrapped, updated_at = now()",
    )
    .bind(&ctx.tenant_id)
    .bind(&ctx.names.role)
    .bind(wrapped)
    .execute(&mut *conn)
    .await
    .map(|_| ())
    .map_err(|e| failure::pg("writing tenant_credentials", e))
}

/// The tenant role's name and password, when the database step has created them.
pub async fn credentials(sys: &Systems, tenant_id: &str) -> Result<Option<(String, String)>, StepError> {
    let row: Result<Option<(String, Vec<u8>)>, sqlx::Error> =
        sqlx::query_as("SELECT role, password_wrapped FROM tenant_credentials WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_optional(&sys.pg)
            .await;
    match row {
        Ok(Some((role, wrapped))) => Ok(Some((role, unwrap_password(sys, &wrapped)?))),
        Ok(None) => Ok(None),
        // No tenant was ever provisioned here: the table does not exist yet.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => Ok(None),
        Err(e) => Err(failure::pg("reading tenant_credentials", e)),
    }
}

#[async_trait]
impl Step for Database {
    fn name(&self) -> &'static str {
        "database"
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        let (schema, role) = (ident(&ctx.names.schema)?, ident(&ctx.names.role)?);
        let login = if ctx.suspended { "NOLOGIN" } else { "LOGIN" };
        let mut tx = sys.pg.begin().await.map_err(|e| failure::pg("database", e))?;
        exec(&mut tx, &format!("SELECT pg_advisory_xact_lock({DDL_LOCK})")).await?;
        ensure_credentials_table(&mut tx).await?;

        let existing = role_login(&mut tx, &ctx.names.role).await?;
        let stored = stored_password(&mut tx, sys, &ctx.tenant_id, &ctx.names.role).await?;
        // (password to set, whether it is new and must be stored, what the report says)
        let (verb, new_password, outcome) = match (existing.is_some(), stored) {
            (false, Some(kept)) => ("CREATE", Some((kept, false)), "restored"),
            (false, None) => ("CREATE", Some((generate_password(), true)), "generated"),
            (true, Some(_)) => ("ALTER", None, "kept"),
            // The role is there but its password is not ours to hand out: replace it.
            (true, None) => ("ALTER", Some((generate_password(), true)), "generated"),
        };
        let mut statement = format!("{verb} ROLE {role} {login} {ROLE_ATTRIBUTES}");
        if let Some((password, _)) = &new_password {
            // Set as a SCRAM verifier: the plaintext never reaches the server or its logs.
            statement.push_str(&format!(" PASSWORD '{}'", scram::verifier(password)));
        }
        exec(&mut tx, &statement).await?;
        if let Some((password, true)) = &new_password {
            store_password(&mut tx, sys, ctx, password).await?;
        }

        exec(&mut tx, &format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await?;
        exec(&mut tx, &format!("REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")).await?;
        exec(
            &mut tx,
            &format!("GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}"),
        )
        .await?;
        exec(&mut tx, &format!("ALTER ROLE {role} SET search_path = {schema}")).await?;
        if schema_exists(&mut tx, "public").await? {
            exec(&mut tx, &format!("REVOKE CREATE ON SCHEMA public FROM {role}")).await?;
        }
        tx.commit().await.map_err(|e| failure::pg("database", e))?;

        let ended = if ctx.suspended {
            terminate_sessions(&sys.pg, &ctx.names.role).await
        } else {
            0
        };
        Ok(json!({
            "schema": ctx.names.schema,
            "role": ctx.names.role,
            "login": !ctx.suspended,
            "password": outcome,
            "sessions_ended": ended,
        }))
    }

    async fn compensate(&self, sys: &Systems, ctx: &StepContext) -> Result<Vec<String>, StepError> {
        let (schema, role) = (ident(&ctx.names.schema)?, ident(&ctx.names.role)?);
        let mut removed = Vec::new();
        let mut tx = sys.pg.begin().await.map_err(|e| failure::pg("database", e))?;
        exec(&mut tx, &format!("SELECT pg_advisory_xact_lock({DDL_LOCK})")).await?;
        let role_exists = role_login(&mut tx, &ctx.names.role).await?.is_some();
        if role_exists {
            // No new sessions from here on; open ones would hold locks DROP SCHEMA waits for.
            exec(&mut tx, &format!("ALTER ROLE {role} NOLOGIN")).await?;
            terminate_sessions(&sys.pg, &ctx.names.role).await;
        }
        if schema_exists(&mut tx, &ctx.names.schema).await? {
            exec(&mut tx, &format!("DROP SCHEMA {schema} CASCADE")).await?;
            removed.push(format!("schema {}", ctx.names.schema));
        }
        if role_exists {
            exec(&mut tx, &format!("DROP OWNED BY {role}")).await?;
            exec(&mut tx, &format!("DROP ROLE {role}")).await?;
            removed.push(format!("role {}", ctx.names.role));
        }
        let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('tenant_credentials')::text")
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| failure::pg("database", e))?;
        if table.is_some() {
            let deleted = sqlx::query("DELETE FROM tenant_credentials WHERE tenant_id = $1")
                .bind(&ctx.tenant_id)
                .execute(&mut *tx)
                .await
                .map_err(|e| failure::pg("deleting tenant_credentials", e))?;
            if deleted.rows_affected() > 0 {
                removed.push(format!("credentials {}", ctx.tenant_id));
            }
        }
        tx.commit().await.map_err(|e| failure::pg("database", e))?;
        Ok(removed)
    }

    async fn check(&self, sys: &Systems, ctx: &StepContext) -> Result<bool, StepError> {
        let mut conn = sys.pg.acquire().await.map_err(|e| failure::pg("database", e))?;
        let login = role_login(&mut conn, &ctx.names.role).await?;
        if login != Some(!ctx.suspended) || !schema_exists(&mut conn, &ctx.names.schema).await? {
            return Ok(false);
        }
        sqlx::query_scalar("SELECT has_schema_privilege($1, $2, 'USAGE, CREATE')")
            .bind(&ctx.names.role)
            .bind(&ctx.names.schema)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| failure::pg("database", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_after_a_strict_check() {
        assert_eq!(ident("t_acme_app").ok(), Some("\"t_acme_app\"".to_owned()));
        for bad in ["", "T_acme", "t-acme", "t\"; DROP ROLE x; --", &"a".repeat(64)] {
            assert!(ident(bad).is_err_and(|e| e.is_permanent()), "{bad:?}");
        }
    }

    #[test]
    fn passwords_are_long_and_fresh() {
        let (a, b) = (generate_password(), generate_password());
        assert!(a.len() >= 32 && a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
