//! Sealing secrets at rest: the master key wraps what a service must store but never show —
//! tenant data keys, signing-key seeds, tenant database passwords (ChaCha20-Poly1305, a random
//! nonce per value). There is no built-in key.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

const NONCE_LEN: usize = 12;

/// Why a value could not be sealed or opened, or a key read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    BadKey(String),
    /// Wrong key, or the sealed bytes were changed.
    #[error("sealed value cannot be opened")]
    Open,
    #[error("value cannot be sealed")]
    Seal,
}

/// The key that wraps data keys, signing-key seeds and credentials.
#[derive(Clone)]
pub struct MasterKey(ChaCha20Poly1305);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// From `value` (base64 of 32 bytes, `KEEL_MASTER_KEY` or the file `KEEL_MASTER_KEY_FILE`).
    /// There is no built-in key: without one this is an error naming the setting, and the
    /// service does not start (`just up` generates one into `.keel/master-key` for development).
    pub fn from_setting(value: Option<&str>) -> Result<Self, SealError> {
        let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return Err(SealError::BadKey(
                "KEEL_MASTER_KEY (or KEEL_MASTER_KEY_FILE) is not set: a Keel service does not start \
                 without a master key (base64 of 32 random bytes; `just up` makes one in .keel/master-key)"
                    .into(),
            ));
        };
        let bytes: [u8; 32] = B64
            .decode(v)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| SealError::BadKey("KEEL_MASTER_KEY must be base64 of 32 bytes".into()))?;
        Ok(Self(ChaCha20Poly1305::new(Key::from_slice(&bytes))))
    }

    /// `nonce ‖ ciphertext ‖ tag` of `plaintext`.
    pub fn wrap(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let mut out = nonce.to_vec();
        out.extend(
            self.0
                .encrypt(Nonce::from_slice(&nonce), plaintext)
                .map_err(|_| SealError::Seal)?,
        );
        Ok(out)
    }

    /// The plaintext of a [`MasterKey::wrap`] output.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<Vec<u8>, SealError> {
        if wrapped.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ct) = wrapped.split_at(NONCE_LEN);
        self.0
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_opens_and_refuses_tampering_or_another_key() {
        let key = MasterKey::from_setting(Some(&B64.encode([7u8; 32]))).unwrap();
        let sealed = key.wrap(b"secret").unwrap();
        assert_eq!(key.unwrap(&sealed).unwrap(), b"secret");
        assert_ne!(key.wrap(b"secret").unwrap(), sealed, "a fresh nonce per value");
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(key.unwrap(&bad), Err(SealError::Open));
        let other = MasterKey::from_setting(Some(&B64.encode([8u8; 32]))).unwrap();
        assert_eq!(other.unwrap(&sealed), Err(SealError::Open));
        assert_eq!(key.unwrap(b"short"), Err(SealError::Open));
        assert!(MasterKey::from_setting(Some("not base64!")).is_err());
        let missing = MasterKey::from_setting(None).unwrap_err().to_string();
        assert!(missing.contains("KEEL_MASTER_KEY"), "{missing}");
        assert!(MasterKey::from_setting(Some("  ")).is_err());
        assert!(MasterKey::from_setting(Some(&B64.encode([1u8; 16]))).is_err());
    }
}
