//! Pure verification of compact EdDSA JWS tokens against a JWK set; no I/O.

use std::sync::Once;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{AuthError, Result};
use crate::keys::JwkSet;

/// Tokens longer than this are rejected before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Pins jsonwebtoken to its RustCrypto provider: if feature unification ever enabled both of its
/// backends, the automatic choice would panic on first use.
pub(crate) fn ensure_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means a provider is already installed, which is just as good.
        let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
            &jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER,
        );
    });
}

/// The `kid` header of `token`, unverified; for choosing which key set to fetch.
pub fn decode_kid(token: &str) -> Result<String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    jsonwebtoken::decode_header(token)
        .map_err(|_| AuthError::InvalidToken("malformed header"))?
        .kid
        .ok_or(AuthError::InvalidToken("missing kid"))
}

/// Verifies `token` against `jwks` at `now_unix` and returns its claims as `T`.
///
/// Checks, in order: size, `alg` is EdDSA, `kid` is in the set ([`AuthError::UnknownKey`]),
/// signature, `exp` present and not past ([`AuthError::Expired`]), `nbf` not in the future,
/// `iat` not in the future nor after `exp`. `leeway_secs` absorbs clock skew for the time checks.
/// Generic so that licenses and other signed documents with an `exp` verify the same way.
pub fn verify<T: DeserializeOwned>(token: &str, jwks: &JwkSet, now_unix: i64, leeway_secs: i64) -> Result<T> {
    verify_typed(token, jwks, now_unix, leeway_secs, ACCESS_TOKEN_TYP)
}

/// The JWT header `typ` of access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The JWT header `typ` of licenses.
pub const LICENSE_TYP: &str = "keel-license+jwt";

/// As [`verify`] for a token whose header `typ` must be `typ`.
pub fn verify_typed<T: DeserializeOwned>(
    token: &str,
    jwks: &JwkSet,
    now_unix: i64,
    leeway_secs: i64,
    typ: &str,
) -> Result<T> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    // `alg: none` and unknown algorithms fail to parse here.
    let header =
        jsonwebtoken::decode_header(token).map_err(|_| AuthError::InvalidToken("malformed header"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::InvalidToken("algorithm"));
    }
    if !header.typ.as_deref().is_some_and(|t| t.eq_ignore_ascii_case(typ)) {
        return Err(AuthError::InvalidToken("type"));
    }
    let kid = header.kid.ok_or(AuthError::InvalidToken("missing kid"))?;
    let Some(jwk) = jwks.find(&kid) else {
        return Err(AuthError::UnknownKey { kid });
    };
    // Checked here because a short key would make the verifier slice out of bounds.
    if jwk.ed25519_public_key().is_none() {
        return Err(AuthError::InvalidToken("unusable key"));
    }
    let key = DecodingKey::from_ed_components(&jwk.x).map_err(|_| AuthError::InvalidToken("unusable key"))?;

    ensure_crypto_provider();
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Time claims are checked below against the caller's clock, keeping this function pure.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data =
        jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::InvalidToken("signature"),
            ErrorKind::InvalidAlgorithm => AuthError::InvalidToken("algorithm"),
            _ => AuthError::InvalidToken("malformed"),
        })?;
    check_times(&data.claims, now_unix, leeway_secs.max(0))?;
    serde_json::from_value(Value::Object(data.claims)).map_err(|_| AuthError::InvalidToken("claims"))
}

fn check_times(claims: &Map<String, Value>, now: i64, leeway: i64) -> Result<()> {
    let exp = time_claim(claims, "exp")?.ok_or(AuthError::InvalidToken("missing exp"))?;
    if exp.saturating_add(leeway) <= now {
        return Err(AuthError::Expired);
    }
    if let Some(nbf) = time_claim(claims, "nbf")?
        && nbf.saturating_sub(leeway) > now
    {
        return Err(AuthError::NotYetValid);
    }
    if let Some(iat) = time_claim(claims, "iat")?
        && (iat.saturating_sub(leeway) > now || iat > exp)
    {
        return Err(AuthError::InvalidToken("iat"));
    }
    Ok(())
}

fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<i64>> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or(AuthError::InvalidToken("time claim")),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;
    use crate::claims::{Claims, scopes};
    use crate::keys::SigningKey;

    const NOW: i64 = 1_700_000_000;

    fn claims(exp: i64) -> Claims {
        Claims {
            sub: "u_1".into(),
            tenant: "t_1".into(),
            scopes: vec![scopes::TENANT_READ.into()],
            exp,
            iat: NOW - 10,
            jti: "j1".into(),
            tier: Some("mid".into()),
        }
    }

    fn setup() -> (SigningKey, JwkSet) {
        let key = SigningKey::from_seed("k1", [1; 32]);
        let set = JwkSet {
            keys: vec![key.public_jwk()],
        };
        (key, set)
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn good_token_verifies() {
        let (key, set) = setup();
        let token = key.sign(&claims(NOW + 60)).unwrap();
        assert_eq!(verify::<Claims>(&token, &set, NOW, 0), Ok(claims(NOW + 60)));
        assert_eq!(decode_kid(&token).as_deref(), Ok("k1"));
    }

    #[test]
    fn expired_token_is_rejected_beyond_leeway() {
        let (key, set) = setup();
        let token = key.sign(&claims(NOW - 5)).unwrap();
        assert_eq!(verify::<Claims>(&token, &set, NOW, 0), Err(AuthError::Expired));
        assert!(verify::<Claims>(&token, &set, NOW, 30).is_ok());
    }

    #[test]
    fn missing_exp_is_rejected() {
        let (key, set) = setup();
        let token = key.sign(&serde_json::json!({"sub": "x"})).unwrap();
        assert_eq!(
            verify::<Value>(&token, &set, NOW, 0),
            Err(AuthError::InvalidToken("missing exp"))
        );
    }

    #[test]
    fn future_nbf_and_iat_are_rejected() {
        let (key, set) = setup();
        let nbf = key
            .sign(&serde_json::json!({"exp": NOW + 600, "nbf": NOW + 300}))
            .unwrap();
        assert_eq!(verify::<Value>(&nbf, &set, NOW, 0), Err(AuthError::NotYetValid));
        let iat = key
            .sign(&serde_json::json!({"exp": NOW + 600, "iat": NOW + 300}))
            .unwrap();
        assert!(matches!(
            verify::<Value>(&iat, &set, NOW, 0),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn unknown_kid_is_reported() {
        let (_, set) = setup();
        let other = SigningKey::from_seed("k2", [2; 32]);
        let token = other.sign(&claims(NOW + 60)).unwrap();
        assert_eq!(
            verify::<Claims>(&token, &set, NOW, 0),
            Err(AuthError::UnknownKey { kid: "k2".into() })
        );
    }

    #[test]
    fn key_swapped_under_a_known_kid_fails_the_signature() {
        let (_, set) = setup();
        let forger = SigningKey::from_seed("k1", [9; 32]);
        let token = forger.sign(&claims(NOW + 60)).unwrap();
        assert_eq!(
            verify::<Claims>(&token, &set, NOW, 0),
            Err(AuthError::InvalidToken("signature"))
        );
    }

    #[test]
    fn tampered_payload_is_rejected() {
        let (key, set) = setup();
        let token = key.sign(&claims(NOW + 60)).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = claims(NOW + 60);
        forged.tenant = "*".into();
        forged.scopes.push(scopes::OPERATOR.into());
        let payload = b64(&serde_json::to_value(&forged).unwrap());
        let tampered = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert_eq!(
            verify::<Claims>(&tampered, &set, NOW, 0),
            Err(AuthError::InvalidToken("signature"))
        );
    }

    #[test]
    fn tampered_signature_is_rejected() {
        let (key, set) = setup();
        let token = key.sign(&claims(NOW + 60)).unwrap();
        let (head, sig) = token.rsplit_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[0] ^= 1;
        let tampered = format!("{head}.{}", URL_SAFE_NO_PAD.encode(raw));
        assert!(matches!(
            verify::<Claims>(&tampered, &set, NOW, 0),
            Err(AuthError::InvalidToken(_))
        ));
        let truncated = format!("{head}.{}", &sig[..10]);
        assert!(matches!(
            verify::<Claims>(&truncated, &set, NOW, 0),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn alg_none_and_hs256_are_rejected() {
        let (key, set) = setup();
        let token = key.sign(&claims(NOW + 60)).unwrap();
        let mut parts = token.split('.').skip(1);
        let (payload, sig) = (parts.next().unwrap(), parts.next().unwrap());
        for alg in ["none", "HS256", "RS256"] {
            let header = b64(&serde_json::json!({"alg": alg, "typ": "JWT", "kid": "k1"}));
            for s in ["", sig] {
                let forged = format!("{header}.{payload}.{s}");
                assert!(
                    matches!(
                        verify::<Claims>(&forged, &set, NOW, 0),
                        Err(AuthError::InvalidToken(_))
                    ),
                    "alg {alg} accepted"
                );
            }
        }
        // An HS256 token "signed" with the public key as the HMAC secret: the classic confusion.
        let header = jsonwebtoken::Header::new(Algorithm::HS256);
        let secret = jsonwebtoken::EncodingKey::from_secret(set.keys[0].x.as_bytes());
        let hs = jsonwebtoken::encode(&header, &claims(NOW + 60), &secret).unwrap();
        assert!(matches!(
            verify::<Claims>(&hs, &set, NOW, 0),
            Err(AuthError::InvalidToken(_))
        ));
    }

    #[test]
    fn oversize_and_garbage_are_rejected() {
        let (key, set) = setup();
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verify::<Claims>(&big, &set, NOW, 0), Err(AuthError::TooLarge));
        // A license is not an access token, and the reverse.
        let license = key.sign_typed(&claims(NOW + 60), LICENSE_TYP).unwrap();
        assert_eq!(
            verify::<Claims>(&license, &set, NOW, 0),
            Err(AuthError::InvalidToken("type"))
        );
        let access = key.sign(&claims(NOW + 60)).unwrap();
        assert_eq!(
            verify_typed::<Claims>(&access, &set, NOW, 0, LICENSE_TYP),
            Err(AuthError::InvalidToken("type"))
        );
        assert!(verify_typed::<Claims>(&license, &set, NOW, 0, LICENSE_TYP).is_ok());
        assert_eq!(decode_kid(&big), Err(AuthError::TooLarge));
        for junk in ["", "abc", "a.b", "a.b.c", "..", "eyJhbGciOiJFZERTQSJ9.e30."] {
            assert!(matches!(
                verify::<Claims>(junk, &set, NOW, 0),
                Err(AuthError::InvalidToken(_))
            ));
        }
    }

    #[test]
    fn short_key_in_the_set_is_an_error_not_a_panic() {
        let (key, mut set) = setup();
        set.keys[0].x = "AAAA".into();
        let token = key.sign(&claims(NOW + 60)).unwrap();
        assert!(matches!(
            verify::<Claims>(&token, &set, NOW, 0),
            Err(AuthError::InvalidToken(_))
        ));
    }
}
