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

#[derive(Clone)]
pub struct ApiKeys {
    pool: PgPool,
}

impl ApiKeys {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn store(&self, grant: &KeyGrant, secret: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, account_id, tenant_id, scopes, secret_hash) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (key_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, scopes = EXCLUDED.scopes, revoked_at = NULL",
        )
        .bind(&grant.key_id)
        .bind(&grant.account_id)
        .bind(&grant.tenant_id)
        .bind(&grant.scopes)
        .bind(hash(secret))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Registers the operator key given in `KEEL_BOOTSTRAP_TOKEN` (idempotent; a changed
    /// token replaces the previous one).
    pub async fn bootstrap(&self, secret: &str) -> Result<()> {
        let grant = KeyGrant {
            key_id: "bootstrap".into(),
            account_id: BOOTSTRAP_ACCOUNT.into(),
            tenant_id: "*".into(),
            scopes: scopes::ALL.iter().map(|s| (*s).to_owned()).collect(),
        };
        self.store(&grant, secret).await
    }

    pub async fn lookup(&self, secret: &str) -> Result<KeyGrant> {
        if secret.is_empty() || secret.len() > 256 {
            return Err(Error::Unauthenticated("invalid API key"));
        }
        let row: Option<(String, String, String, Vec<String>)> = sqlx::query_as(
            "SELECT key_id, account_id, tenant_id, scopes FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
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
}
