//! Access-token decoding and verification against a fixed JWK set.
//!
//! The first byte picks the mode: even, the rest is the token itself (`decode_kid`, `verify`);
//! odd, the rest is a JSON payload that is signed with the set's key and then verified, so the
//! claims and time checks behind a valid signature are reached too. Never panics; a token
//! signed by the set's key never fails on its signature.
#![no_main]

use std::sync::LazyLock;

use keel_auth::{AuthError, Claims, Jwk, JwkSet, SigningKey};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const NOW: i64 = 1_780_000_000;

static KEY: LazyLock<SigningKey> = LazyLock::new(|| SigningKey::from_seed("k1", [1; 32]));
static JWKS: LazyLock<JwkSet> = LazyLock::new(|| {
    let mut short = Jwk::ed25519("short", &[2; 32]);
    short.x = "AAAA".into();
    let mut rsa = Jwk::ed25519("rsa", &[3; 32]);
    rsa.kty = "RSA".into();
    JwkSet {
        keys: vec![KEY.public_jwk(), short, rsa],
    }
});

fn now_of(selector: u8) -> i64 {
    match selector >> 1 & 3 {
        0 => NOW,
        1 => 0,
        2 => i64::MAX,
        _ => i64::MIN,
    }
}

fn check(token: &str, now: i64) {
    let _ = keel_auth::decode_kid(token);
    for leeway in [0, 60, i64::MAX] {
        let _ = keel_auth::verify::<Claims>(token, &JWKS, now, leeway);
    }
    let _ = keel_auth::verify::<Value>(token, &JWKS, now, 60);
    let _ = keel_auth::verify_typed::<Value>(token, &JWKS, now, 60, keel_auth::LICENSE_TYP);
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
    let Ok(token) = KEY.sign(&payload) else {
        return;
    };
    // Signature checks are slow: once as claims, once as any JSON, with a chosen leeway.
    let leeway = [0, 60, -1, i64::MAX][usize::from(mode >> 3 & 3)];
    let _ = keel_auth::verify::<Claims>(&token, &JWKS, now, leeway);
    match keel_auth::verify::<Value>(&token, &JWKS, now, leeway) {
        Err(AuthError::InvalidToken("signature")) => panic!("our own signature refused"),
        Err(AuthError::UnknownKey { kid }) => panic!("our own key {kid} unknown"),
        _ => {}
    }
});
