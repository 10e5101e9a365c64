//! License parsing and verification (`keel_tenancy::license::verify`) against a fixed JWK set.
//!
//! The first byte picks the mode and the clock: even, the rest is the license JWT; odd, the rest
//! is a JSON payload signed as a license with the set's key, so claims parsing and the license
//! status behind a valid signature are reached. Never panics.
#![no_main]

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use keel_auth::{JwkSet, SigningKey};
use keel_tenancy::license::{self, LicenseStatus};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_seed("lk", [9; 32]));
static JWKS: LazyLock<JwkSet> = LazyLock::new(|| JwkSet {
    keys: vec![KEY.public_jwk()],
});

fn now_of(selector: u8) -> DateTime<Utc> {
    match selector >> 1 & 3 {
        0 => DateTime::from_timestamp(1_780_000_000, 0).unwrap_or_default(),
        1 => DateTime::UNIX_EPOCH,
        2 => DateTime::<Utc>::MAX_UTC,
        _ => DateTime::<Utc>::MIN_UTC,
    }
}

fn check(jwt: &str, now: DateTime<Utc>) {
    if let Ok((claims, status)) = license::verify(jwt, &JWKS, now) {
        let _ = (claims.issued_at(), claims.expires_at());
        assert_eq!(LicenseStatus::at(&claims, now), status);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let now = now_of(mode);
    if mode & 1 == 0 {
        check(&String::from_utf8_lossy(rest), now);
        return;
    }
    let Ok(payload) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    if let Ok(jwt) = KEY.sign_typed(&payload, keel_auth::LICENSE_TYP) {
        check(&jwt, now);
    }
});
