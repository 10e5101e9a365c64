//! The Ed25519 keys that sign access tokens and licenses, and the JWKS that publishes them.
//! Rotation retires the active key; retired public keys stay published until every token they
//! signed has expired.

use chrono::{DateTime, Duration, Utc};
use keel_auth::{JwkSet, SigningKey};
use sqlx::PgPool;

use crate::crypto::MasterKey;
use crate::error::{Error, Result};

/// Longest lifetime of anything signed with a key after it is retired (access tokens).
pub const MAX_TOKEN_TTL_SECS: i64 = 86_400;

#[derive(Clone)]
pub struct SigningKeys {
    pool: PgPool,
    master: MasterKey,
}

impl SigningKeys {
    pub fn new(pool: PgPool, master: MasterKey) -> Self {
        Self { pool, master }
    }

    /// The active key, created if there is none (concurrent creators agree on one).
    pub async fn active(&self) -> Result<SigningKey> {
        if let Some(k) = self.load_active().await? {
            return Ok(k);
        }
        let key = SigningKey::generate();
        sqlx::query("INSERT INTO signing_keys (kid, wrapped_seed) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(key.kid())
            .bind(self.master.wrap(&key.seed())?)
            .execute(&self.pool)
            .await?;
        self.load_active().await?.ok_or(Error::Crypto)
    }

    async fn load_active(&self) -> Result<Option<SigningKey>> {
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT kid, wrapped_seed FROM signing_keys WHERE retired_at IS NULL")
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(kid, wrapped)| self.key(&kid, &wrapped)).transpose()
    }

    fn key(&self, kid: &str, wrapped: &[u8]) -> Result<SigningKey> {
        let seed = <[u8; 32]>::try_from(self.master.unwrap(wrapped)?).map_err(|_| Error::Crypto)?;
        Ok(SigningKey::from_seed(kid, seed))
    }

    /// Retires the active key and makes a new one active; returns the new kid.
    pub async fn rotate(&self) -> Result<String> {
        let key = SigningKey::generate();
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE signing_keys SET retired_at = now() WHERE retired_at IS NULL")
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO signing_keys (kid, wrapped_seed) VALUES ($1, $2)")
            .bind(key.kid())
            .bind(self.master.wrap(&key.seed())?)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(key.kid().to_owned())
    }

    /// Public keys still needed to verify: the active one and those retired less than
    /// [`MAX_TOKEN_TTL_SECS`] ago.
    pub async fn jwks(&self) -> Result<JwkSet> {
        self.active().await?;
        let cutoff: DateTime<Utc> = Utc::now() - Duration::seconds(MAX_TOKEN_TTL_SECS);
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT kid, wrapped_seed FROM signing_keys WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at DESC",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        let keys = rows
            .iter()
            .map(|(kid, w)| self.key(kid, w).map(|k| k.public_jwk()))
            .collect::<Result<Vec<_>>>()?;
        Ok(JwkSet { keys })
    }
}
