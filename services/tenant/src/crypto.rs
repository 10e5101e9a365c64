//! Envelope encryption of personal data: the master key (`keel_auth::MasterKey`) wraps one
//! data key per tenant; the data key encrypts the tenant's e-mail addresses (ChaCha20-Poly1305)
//! and keys their digests (HMAC-SHA256). Destroying a tenant's data key crypto-shreds every such
//! value in the append-only event store.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;

pub use keel_auth::MasterKey;

use crate::domain::Encrypted;
use crate::error::{Error, Result};

const NONCE_LEN: usize = 12;

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::fill(&mut b);
    b
}

/// One tenant's data key.
pub struct DataKey {
    pub key_id: String,
    key: [u8; 32],
}

impl DataKey {
    pub fn encrypt(&self, plaintext: &str) -> Result<Encrypted> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key));
        let nonce = random::<NONCE_LEN>();
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), plaintext.as_bytes())
            .map_err(|_| Error::Crypto)?;
        Ok(Encrypted {
            key_id: self.key_id.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ct),
        })
    }

    pub fn decrypt(&self, value: &Encrypted) -> Result<String> {
        if value.key_id != self.key_id {
            return Err(Error::Crypto);
        }
        let nonce = B64.decode(&value.nonce).map_err(|_| Error::Crypto)?;
        let ct = B64.decode(&value.ciphertext).map_err(|_| Error::Crypto)?;
        if nonce.len() != NONCE_LEN {
            return Err(Error::Crypto);
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key));
        let pt = cipher
            .decrypt(Nonce::from_slice(&nonce), ct.as_slice())
            .map_err(|_| Error::Crypto)?;
        String::from_utf8(pt).map_err(|_| Error::Crypto)
    }

    /// Keyed digest of a normalised e-mail address, for duplicate checks without plaintext.
    pub fn digest(&self, email: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("any key length"));
        mac.update(email.to_lowercase().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The `tenant_data_keys` table.
#[derive(Clone)]
pub struct DataKeys {
    pool: PgPool,
    master: MasterKey,
}

impl DataKeys {
    pub fn new(pool: PgPool, master: MasterKey) -> Self {
        Self { pool, master }
    }

    /// The tenant's key, created on first use. Two concurrent callers get the same key.
    pub async fn get_or_create(&self, tenant_id: &str) -> Result<DataKey> {
        let key = random::<32>();
        sqlx::query(
            "INSERT INTO tenant_data_keys (tenant_id, key_id, wrapped_key) VALUES ($1, $2, $3) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenant_id)
        .bind(format!("dek-{}", uuid::Uuid::now_v7()))
        .bind(self.master.wrap(&key)?)
        .execute(&self.pool)
        .await?;
        self.get(tenant_id).await?.ok_or(Error::Crypto)
    }

    /// The tenant's key, or `None` once it has been destroyed.
    pub async fn get(&self, tenant_id: &str) -> Result<Option<DataKey>> {
        self.get_on(&self.pool, tenant_id).await
    }

    /// As [`DataKeys::get`], read on `conn` (a tenant's reader transaction).
    pub async fn get_on<'c, E: sqlx::PgExecutor<'c>>(
        &self,
        conn: E,
        tenant_id: &str,
    ) -> Result<Option<DataKey>> {
        let row: Option<(String, Vec<u8>)> =
            sqlx::query_as("SELECT key_id, wrapped_key FROM tenant_data_keys WHERE tenant_id = $1")
                .bind(tenant_id)
                .fetch_optional(conn)
                .await?;
        let Some((key_id, wrapped)) = row else {
            return Ok(None);
        };
        let key = <[u8; 32]>::try_from(self.master.unwrap(&wrapped)?).map_err(|_| Error::Crypto)?;
        Ok(Some(DataKey { key_id, key }))
    }

    /// Crypto-shredding: after this no encrypted value of the tenant can be read.
    pub async fn destroy(&self, tenant_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM tenant_data_keys WHERE tenant_id = $1")
            .bind(tenant_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> DataKey {
        DataKey {
            key_id: "k1".into(),
            key: random::<32>(),
        }
    }

    #[test]
    fn encrypt_round_trips_and_hides_the_plaintext() {
        let k = key();
        let e = k.encrypt("alice@example.com").unwrap();
        assert!(!e.ciphertext.contains("alice"));
        assert_eq!(k.decrypt(&e).unwrap(), "alice@example.com");
        assert_ne!(k.encrypt("alice@example.com").unwrap().nonce, e.nonce);
    }

    #[test]
    fn another_key_cannot_decrypt() {
        let (a, mut b) = (key(), key());
        b.key_id = "k1".into();
        assert!(b.decrypt(&a.encrypt("alice@example.com").unwrap()).is_err());
    }

    #[test]
    fn digests_are_keyed_and_case_insensitive() {
        let (a, b) = (key(), key());
        assert_eq!(a.digest("Alice@Example.com"), a.digest("alice@example.com"));
        assert_ne!(a.digest("alice@example.com"), b.digest("alice@example.com"));
    }
}
