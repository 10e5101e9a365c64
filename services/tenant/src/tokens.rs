//! API keys (stored as SHA-256 hashes) and the short-lived access tokens they are exchanged for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Duration, Utc};
use keel_auth::{Claims, SigningKey, scopes};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::error::{Error, Result};

pub const DEFAULT_TTL_SECS: u32 = 900;
pub const MAX_TTL_SECS: u32 = crate::signing::MAX_TOKEN_TTL_SECS as u32;
/// The account behind `KEEL_BOOTSTRAP_TOKEN`.
pub const BOOTSTRAP_ACCOUNT: &str = "operator-bootstrap";

/// What an API key is allowed to become.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGrant {
    pub key_id: String,
    pub account_id: String,
    pub tenant_id: String,
    pub scopes: Vec<String>,
}

fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// A short, non-reversible name of a presented key for audit records and rate-limit buckets
/// (the first 8 bytes of its SHA-256, hex): the key itself is never logged or stored.
pub fn key_fingerprint(secret: &str) -> String {
    hex::encode(&hash(secret)[..8])
}

/// A new API key: `keel_<43 chars of base64url>` (256 random bits).
pub fn new_api_key() -> String {
    let mut b = [0u8; 32];
    rand::fill(&mut b);
    format!("keel_{}", B64URL.encode(b))
}

/// The key id of the operator key given in `KEEL_BOOTSTRAP_TOKEN`.
pub const BOOTSTRAP_KEY_ID: &str = "bootstrap";

/// One `api_keys` row as listed: everything but the secret's hash.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyRow {
    pub key_id: String,
    pub account_id: String,
    pub tenant_id: String,
    pub scopes: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

const KEY_COLUMNS: &str = "key_id, account_id, tenant_id, scopes, created_at, revoked_at";

/// A platform operator's key: tenant `*` with the `operator` scope (what makes a token from it
/// an operator token).
pub fn is_operator_key(tenant_id: &str, scopes: &[String]) -> bool {
    tenant_id == "*" && scopes.iter().any(|s| s == scopes::OPERATOR)
}

/// Why a key may not be revoked or the bootstrap key not disabled.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefusal {
    #[error("API key not found")]
    NotFound,
    /// Revoking it would leave no active operator key: nobody could operate the platform.
    #[error("this is the last active operator key: create another one first (CreateOperatorKey)")]
    LastOperatorKey,
}

/// Whether a key may be revoked: an active operator key only while another one stays active.
pub fn may_revoke(key: &KeyRow, other_active_operator_keys: usize) -> Result<(), KeyRefusal> {
    if key.revoked_at.is_none()
        && is_operator_key(&key.tenant_id, &key.scopes)
        && other_active_operator_keys == 0
    {
        return Err(KeyRefusal::LastOperatorKey);
    }
    Ok(())
}

/// What starting with `KEEL_BOOTSTRAP_TOKEN` does to the bootstrap key, given the stored one
/// (its secret's hash and whether it is revoked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootstrapAction {
    /// No bootstrap key yet: register it.
    Register,
    /// The same active key: nothing to do.
    Keep,
    /// An active key with another secret: the new token replaces it.
    Replace,
    /// Revoked, and the token is the revoked one: it stays revoked (a restart never revives a
    /// revoked key).
    StayRevoked,
    /// Revoked, and a new token is given: whoever controls the service's environment re-enables
    /// the bootstrap key with it (the way back in when every operator key is lost).
    Reenable,
}

pub fn bootstrap_action(stored: Option<(&[u8], bool)>, presented: &str) -> BootstrapAction {
    let presented = hash(presented);
    match stored {
        None => BootstrapAction::Register,
        Some((h, false)) if h == presented.as_slice() => BootstrapAction::Keep,
        Some((_, false)) => BootstrapAction::Replace,
        Some((h, true)) if h == presented.as_slice() => BootstrapAction::StayRevoked,
        Some((_, true)) => BootstrapAction::Reenable,
    }
}

/// What `KEEL_TENANT_BOOTSTRAP=off` did at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disabled {
    /// The bootstrap key was active and is revoked now.
    Revoked,
    /// There was no active bootstrap key.
    AlreadyOff,
}

#[derive(Clone)]
pub struct ApiKeys {
    pool: PgPool,
}

impl ApiKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Stores a new key, usable at once (platform keys: no tenant event records them). An
    /// operator account name already held by an active operator key is ALREADY_EXISTS (`name`).
    pub async fn store(&self, grant: &KeyGrant, secret: &str) -> Result<()> {
        self.insert(grant, secret, false).await
    }

    /// Stores a new tenant key **pending**: refused by [`ApiKeys::lookup`] and absent from
    /// [`ApiKeys::get`] and [`ApiKeys::list`] until its `ApiKeyIssued` event is appended, which
    /// activates it in the appending statement (the `events_activate_api_key` trigger). So the
    /// key becomes usable exactly when its event commits, and a crash in between leaves an inert
    /// row.
    pub async fn store_pending(&self, grant: &KeyGrant, secret: &str) -> Result<()> {
        self.insert(grant, secret, true).await
    }

    /// Removes a pending key whose events were refused (never when the append's outcome is
    /// unknown: a commit still in flight would then activate nothing). An active key is never
    /// removed.
    pub async fn discard_pending(&self, key_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM api_keys WHERE key_id = $1 AND pending")
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert(&self, grant: &KeyGrant, secret: &str, pending: bool) -> Result<()> {
        let stored = sqlx::query(
            "INSERT INTO api_keys (key_id, account_id, tenant_id, scopes, secret_hash, pending) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&grant.key_id)
        .bind(&grant.account_id)
        .bind(&grant.tenant_id)
        .bind(&grant.scopes)
        .bind(hash(secret))
        .bind(pending)
        .execute(&self.pool)
        .await;
        match stored {
            Err(sqlx::Error::Database(db)) if db.constraint() == Some("api_keys_active_operator_account") => {
                Err(Error::AlreadyExists { field: "name" })
            }
            Err(e) => Err(e.into()),
            Ok(_) => Ok(()),
        }
    }

    /// Registers the operator key given in `KEEL_BOOTSTRAP_TOKEN` (idempotent; a changed token
    /// replaces the previous one). A revoked bootstrap key stays revoked unless the token
    /// changed (see [`BootstrapAction`]).
    pub async fn bootstrap(&self, secret: &str) -> Result<BootstrapAction> {
        let mut tx = self.pool.begin().await?;
        let stored: Option<(Vec<u8>, bool)> = sqlx::query_as(
            "SELECT secret_hash, revoked_at IS NOT NULL FROM api_keys WHERE key_id = $1 FOR UPDATE",
        )
        .bind(BOOTSTRAP_KEY_ID)
        .fetch_optional(&mut *tx)
        .await?;
        let action = bootstrap_action(stored.as_ref().map(|(h, r)| (h.as_slice(), *r)), secret);
        let all: Vec<String> = scopes::ALL.iter().map(|s| (*s).to_owned()).collect();
        match action {
            BootstrapAction::Keep | BootstrapAction::StayRevoked => {}
            BootstrapAction::Register => {
                sqlx::query(
                    "INSERT INTO api_keys (key_id, account_id, tenant_id, scopes, secret_hash) VALUES ($1, $2, '*', $3, $4)",
                )
                .bind(BOOTSTRAP_KEY_ID)
                .bind(BOOTSTRAP_ACCOUNT)
                .bind(&all)
                .bind(hash(secret))
                .execute(&mut *tx)
                .await?;
            }
            BootstrapAction::Replace | BootstrapAction::Reenable => {
                sqlx::query(
                    "UPDATE api_keys SET secret_hash = $2, scopes = $3, revoked_at = NULL WHERE key_id = $1",
                )
                .bind(BOOTSTRAP_KEY_ID)
                .bind(hash(secret))
                .bind(&all)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(action)
    }

    /// `KEEL_TENANT_BOOTSTRAP=off`: revokes the bootstrap key, refused while no other operator
    /// key is active (with none at all the platform could not be operated).
    pub async fn disable_bootstrap(&self) -> Result<Result<Disabled, KeyRefusal>> {
        match self.revoke(BOOTSTRAP_KEY_ID).await? {
            Ok((_, true)) => Ok(Ok(Disabled::Revoked)),
            Ok((_, false)) | Err(KeyRefusal::NotFound) => {
                let active = self.active_operator_keys().await?;
                Ok(if active == 0 {
                    Err(KeyRefusal::LastOperatorKey)
                } else {
                    Ok(Disabled::AlreadyOff)
                })
            }
            Err(refusal) => Ok(Err(refusal)),
        }
    }

    async fn active_operator_keys(&self) -> Result<usize> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM api_keys WHERE tenant_id = '*' AND $1 = ANY(scopes) AND revoked_at IS NULL",
        )
        .bind(scopes::OPERATOR)
        .fetch_one(&self.pool)
        .await?;
        Ok(usize::try_from(n).unwrap_or_default())
    }

    /// One key, without its hash.
    pub async fn get(&self, key_id: &str) -> Result<Option<KeyRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1 AND NOT pending"
        ))
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Revokes `key_id` now: the key and whether this call revoked it (`false`: it already
    /// was). The last active operator key is refused. Concurrent revocations of operator keys
    /// lock every active operator key in key id order first, so two of them cannot each leave
    /// the other as "the remaining one".
    pub async fn revoke(&self, key_id: &str) -> Result<Result<(KeyRow, bool), KeyRefusal>> {
        let mut tx = self.pool.begin().await?;
        let operators: Vec<String> = sqlx::query_scalar(
            "SELECT key_id FROM api_keys WHERE tenant_id = '*' AND $1 = ANY(scopes) AND revoked_at IS NULL \
             ORDER BY key_id FOR UPDATE",
        )
        .bind(scopes::OPERATOR)
        .fetch_all(&mut *tx)
        .await?;
        let key: Option<KeyRow> = sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = $1 AND NOT pending FOR UPDATE"
        ))
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(key) = key else {
            return Ok(Err(KeyRefusal::NotFound));
        };
        if key.revoked_at.is_some() {
            return Ok(Ok((key, false)));
        }
        let others = operators.iter().filter(|k| *k != key_id).count();
        if let Err(refusal) = may_revoke(&key, others) {
            return Ok(Err(refusal));
        }
        let revoked: KeyRow = sqlx::query_as(&format!(
            "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 RETURNING {KEY_COLUMNS}"
        ))
        .bind(key_id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok((revoked, true)))
    }

    /// A page of keys in key id order: all of them, or `tenant`'s only, after `after`, at most
    /// `limit`. Runs on `conn`: the owner's pool for operator-wide lists, a tenant's reader
    /// transaction (row-level security) for one tenant's.
    pub async fn list<'c, E: sqlx::PgExecutor<'c>>(
        conn: E,
        tenant: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<KeyRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys WHERE NOT pending AND ($1::text IS NULL OR tenant_id = $1) \
             AND ($2::text IS NULL OR key_id > $2) ORDER BY key_id LIMIT $3"
        ))
        .bind(tenant)
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn lookup(&self, secret: &str) -> Result<KeyGrant> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(Error::Unauthenticated("invalid API key"));
        }
        let row: Option<(String, String, String, Vec<String>)> = sqlx::query_as(
            "SELECT key_id, account_id, tenant_id, scopes FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL AND NOT pending",
        )
        .bind(hash(secret))
        .fetch_optional(&self.pool)
        .await?;
        let (key_id, account_id, tenant_id, scopes) = row.ok_or(Error::Unauthenticated("invalid API key"))?;
        Ok(KeyGrant {
            key_id,
            account_id,
            tenant_id,
            scopes,
        })
    }
}

/// Claims of an access token for `subject` of `tenant` (or `*`), valid `ttl_secs` from `now`.
pub fn access_claims(
    subject: &str,
    tenant: &str,
    scopes: Vec<String>,
    tier: Option<String>,
    ttl_secs: u32,
    now: DateTime<Utc>,
) -> Claims {
    Claims {
        sub: subject.to_owned(),
        tenant: tenant.to_owned(),
        scopes,
        exp: (now + Duration::seconds(i64::from(ttl_secs))).timestamp(),
        iat: now.timestamp(),
        jti: uuid::Uuid::now_v7().to_string(),
        tier,
    }
}

pub fn sign(key: &SigningKey, claims: &Claims) -> Result<String> {
    Ok(key.sign(claims)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_long_random_and_url_safe() {
        let (a, b) = (new_api_key(), new_api_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 5 + 43);
        assert!(
            a[5..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(hash(&a), hash(&b));
    }

    fn key(tenant: &str, scopes: &[&str], revoked: bool) -> KeyRow {
        KeyRow {
            key_id: "k".into(),
            account_id: "a".into(),
            tenant_id: tenant.into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            created_at: Utc::now(),
            revoked_at: revoked.then(Utc::now),
        }
    }

    #[test]
    fn the_last_active_operator_key_cannot_be_revoked() {
        let op = key("*", &["operator", "tenant:read"], false);
        assert_eq!(may_revoke(&op, 0), Err(KeyRefusal::LastOperatorKey));
        assert_eq!(may_revoke(&op, 1), Ok(()));
        // Tenant keys, wildcard keys without the operator scope and revoked keys: always.
        assert_eq!(may_revoke(&key("t1", &["operator"], false), 0), Ok(()));
        assert_eq!(may_revoke(&key("*", &["tenant:read"], false), 0), Ok(()));
        assert_eq!(may_revoke(&key("*", &["operator"], true), 0), Ok(()));
    }

    #[test]
    fn a_restart_never_revives_a_revoked_bootstrap_key_with_the_same_token() {
        let h = hash("boot");
        let stored = |revoked| Some((h.as_slice(), revoked));
        assert_eq!(bootstrap_action(None, "boot"), BootstrapAction::Register);
        assert_eq!(bootstrap_action(stored(false), "boot"), BootstrapAction::Keep);
        assert_eq!(bootstrap_action(stored(false), "new"), BootstrapAction::Replace);
        assert_eq!(
            bootstrap_action(stored(true), "boot"),
            BootstrapAction::StayRevoked
        );
        assert_eq!(bootstrap_action(stored(true), "new"), BootstrapAction::Reenable);
    }
}
