//! The Ed25519 keys the service signs with, in two separate key rings:
//!
//! - **token keys** (`signing_keys`) sign access tokens and are published at
//!   `/.well-known/jwks.json`; a retired one stays published for [`MAX_TOKEN_TTL_SECS`], the
//!   longest an access token lives;
//! - **license keys** (`license_signing_keys`) sign licenses only and are published at
//!   `/.well-known/license-jwks.json`; a retired one stays published for
//!   [`LICENSE_KEY_RETENTION_SECS`], the longest a license verifies (validity and grace), so a
//!   license issued just before a rotation verifies offline for its whole life.
//!
//! The rings rotate independently (`RotateSigningKey`, `RotateLicenseKey`), and neither's keys
//! are in the other's set: a token verifier never trusts a license key, and the year a license
//! key must stay published does not keep token keys around.

use chrono::{DateTime, Duration, Utc};
use keel_auth::{JwkSet, SigningKey};
use sqlx::PgPool;

use crate::clock::{self, SharedClock};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};

/// Longest lifetime of anything signed with a token key after it is retired (access tokens).
pub const MAX_TOKEN_TTL_SECS: i64 = 86_400;

/// How long a retired license key stays published: a license it signed at the last moment
/// verifies for its validity and then its grace period.
pub const LICENSE_KEY_RETENTION_SECS: i64 =
    (keel_tenancy::license::VALIDITY_DAYS + keel_tenancy::license::GRACE_DAYS) * 86_400;

/// Which key ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring {
    Tokens,
    Licenses,
}

impl Ring {
    /// The table (a constant: never from input).
    fn table(self) -> &'static str {
        match self {
            Ring::Tokens => "signing_keys",
            Ring::Licenses => "license_signing_keys",
        }
    }

    /// How long a retired key of this ring stays published.
    pub fn retention(self) -> Duration {
        Duration::seconds(match self {
            Ring::Tokens => MAX_TOKEN_TTL_SECS,
            Ring::Licenses => LICENSE_KEY_RETENTION_SECS,
        })
    }

    /// Whether a key retired at `retired_at` (`None`: active) is still published at `now`.
    pub fn published(self, retired_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        retired_at.is_none_or(|r| r > now - self.retention())
    }
}

#[derive(Clone)]
pub struct SigningKeys {
    pool: PgPool,
    master: MasterKey,
    ring: Ring,
    clock: SharedClock,
}

impl SigningKeys {
    /// The token ring.
    pub fn new(pool: PgPool, master: MasterKey) -> Self {
        Self::ring(pool, master, Ring::Tokens)
    }

    /// The license ring.
    pub fn licenses(pool: PgPool, master: MasterKey) -> Self {
        Self::ring(pool, master, Ring::Licenses)
    }

    pub fn ring(pool: PgPool, master: MasterKey, ring: Ring) -> Self {
        Self {
            pool,
            master,
            ring,
            clock: clock::system(),
        }
    }

    /// The same ring judged by `clock` (retirement times, what is still published).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The active key, created if there is none (concurrent creators agree on one).
    pub async fn active(&self) -> Result<SigningKey> {
        if let Some(k) = self.load_active().await? {
            return Ok(k);
        }
        let key = SigningKey::generate();
        sqlx::query(&format!(
            "INSERT INTO {} (kid, wrapped_seed, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            self.ring.table()
        ))
        .bind(key.kid())
        .bind(self.master.wrap(&key.seed())?)
        .bind(self.now())
        .execute(&self.pool)
        .await?;
        self.load_active().await?.ok_or(Error::Crypto)
    }

    async fn load_active(&self) -> Result<Option<SigningKey>> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as(&format!(
            "SELECT kid, wrapped_seed FROM {} WHERE retired_at IS NULL",
            self.ring.table()
        ))
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
        let now = self.now();
        let table = self.ring.table();
        let mut tx = self.pool.begin().await?;
        sqlx::query(&format!(
            "UPDATE {table} SET retired_at = $1 WHERE retired_at IS NULL"
        ))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "INSERT INTO {table} (kid, wrapped_seed, created_at) VALUES ($1, $2, $3)"
        ))
        .bind(key.kid())
        .bind(self.master.wrap(&key.seed())?)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(key.kid().to_owned())
    }

    /// Public keys still needed to verify: the active one and those retired less than the
    /// ring's retention ago, newest first.
    pub async fn jwks(&self) -> Result<JwkSet> {
        self.active().await?;
        let rows: Vec<(String, Vec<u8>, Option<DateTime<Utc>>)> = sqlx::query_as(&format!(
            "SELECT kid, wrapped_seed, retired_at FROM {} ORDER BY created_at DESC, kid",
            self.ring.table()
        ))
        .fetch_all(&self.pool)
        .await?;
        let now = self.now();
        let keys = rows
            .iter()
            .filter(|(_, _, retired)| self.ring.published(*retired, now))
            .map(|(kid, w, _)| self.key(kid, w).map(|k| k.public_jwk()))
            .collect::<Result<Vec<_>>>()?;
        Ok(JwkSet { keys })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_license_key_outlives_every_license_it_signed() {
        let retired = Utc::now();
        let signed_last = keel_tenancy::license::LicenseClaims::new("t", crate::domain::Tier::Low, retired);
        // The last moment the license still verifies (end of grace).
        let end = signed_last.expires_at() + Duration::days(keel_tenancy::license::GRACE_DAYS)
            - Duration::seconds(1);
        assert!(Ring::Licenses.published(Some(retired), end));
        assert!(!Ring::Licenses.published(Some(retired), end + Duration::days(2)));
        assert!(Ring::Licenses.published(None, end + Duration::days(3650)));
    }

    #[test]
    fn a_retired_token_key_goes_after_a_day() {
        let retired = Utc::now();
        assert!(Ring::Tokens.published(Some(retired), retired + Duration::hours(23)));
        assert!(!Ring::Tokens.published(Some(retired), retired + Duration::hours(25)));
    }
}
