//! SCRAM-SHA-256 password verifiers (RFC 5802/7677) in PostgreSQL's `rolpassword` format, so a
//! tenant role's password is set as a verifier and never appears in a statement that the server
//! could log or keep in `pg_stat_statements`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// PostgreSQL's default (`scram_iterations` of 16 is 4096 as well).
const ITERATIONS: u32 = 4096;

/// A verifier for `password` with a fresh random salt:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
pub(crate) fn verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    verifier_with(password, &salt, ITERATIONS)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one output block (32 bytes), which is what SCRAM's `Hi` is.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        out.iter_mut().zip(u.iter()).for_each(|(o, b)| *o ^= b);
    }
    out
}

/// Passwords are generated ASCII, for which SASLprep (what PostgreSQL applies) is the identity.
fn verifier_with(password: &str, salt: &[u8], iterations: u32) -> String {
    let salted = hi(password.as_bytes(), salt, iterations);
    let stored_key = Sha256::digest(hmac(&salted, b"Client Key"));
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        B64.encode(salt),
        B64.encode(stored_key),
        B64.encode(server_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed by PostgreSQL 15 (`ALTER ROLE … PASSWORD 'correct horse battery staple'`).
    const FROM_POSTGRES: &str = "SCRAM-SHA-256$4096:mXOyKIXhxC4uAFvQVL2T+Q==$lP+A3B0mkMwzYViXqoB5cJ2cAjwcwJO5ibgmpP+aLM8=:oSx5rFp4y8u5l9cTGJxsNtR9YQdkDpUl4AmFHbSBTZE=";

    #[test]
    fn matches_the_verifier_postgres_computes() {
        let salt = B64.decode("mXOyKIXhxC4uAFvQVL2T+Q==").unwrap_or_default();
        assert_eq!(
            verifier_with("correct horse battery staple", &salt, 4096),
            FROM_POSTGRES
        );
    }

    #[test]
    fn fresh_salts_make_different_verifiers() {
        let (a, b) = (verifier("pw"), verifier("pw"));
        assert_ne!(a, b);
        assert!(a.starts_with("SCRAM-SHA-256$4096:"));
    }
}
