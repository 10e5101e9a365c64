//! Ed25519 signing keys (held by the tenant service) and the public JWK set every service fetches.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{AuthError, Result};

/// `kty` of an Ed25519 JWK.
pub const KTY_OKP: &str = "OKP";
/// `crv` of an Ed25519 JWK.
pub const CRV_ED25519: &str = "Ed25519";
/// JWS `alg` for Ed25519.
pub const ALG_EDDSA: &str = "EdDSA";

/// An Ed25519 private key with its key id. The tenant service signs tokens and licenses with it.
///
/// `Debug` prints only the key id.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh random key from the OS generator; its kid is the RFC 7638 thumbprint of the public
    /// key.
    pub fn generate() -> Self {
        let key = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let kid = thumbprint(&key.verifying_key().to_bytes());
        SigningKey { kid, key }
    }

    /// The key with this 32-byte seed (as stored by the tenant service) and key id.
    pub fn from_seed(kid: &str, seed: [u8; 32]) -> Self {
        SigningKey {
            kid: kid.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte seed, for storing the key. Secret.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key id put in the `kid` header of every token this key signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK, for `/.well-known/jwks.json`.
    pub fn public_jwk(&self) -> Jwk {
        Jwk::ed25519(&self.kid, &self.key.verifying_key().to_bytes())
    }

    /// `claims` as a compact JWS with header `{"alg":"EdDSA","typ":"at+jwt","kid":…}`.
    /// An access token (`typ: at+jwt`, RFC 9068) carrying `claims`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String> {
        self.sign_typed(claims, crate::verify::ACCESS_TOKEN_TYP)
    }

    /// A JWT of type `typ` carrying `claims`: the type keeps one kind of token from being
    /// accepted as another (a license as an access token, or the reverse).
    pub fn sign_typed<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String> {
        crate::verify::ensure_crypto_provider();
        let der = self
            .key
            .to_pkcs8_der()
            .map_err(|e| AuthError::Signing(e.to_string()))?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(typ.to_owned());
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(der.as_bytes()))
            .map_err(|e| AuthError::Signing(e.to_string()))
    }
}

/// A public key in JWK form (RFC 8037 OKP / Ed25519).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `"OKP"`.
    pub kty: String,
    /// `"Ed25519"`.
    pub crv: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
    /// Key id, matched against the token header's `kid`.
    pub kid: String,
    /// `"EdDSA"`.
    pub alg: String,
    /// `"sig"`.
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    /// The JWK of an Ed25519 public key.
    pub fn ed25519(kid: &str, public_key: &[u8; 32]) -> Jwk {
        Jwk {
            kty: KTY_OKP.to_owned(),
            crv: CRV_ED25519.to_owned(),
            x: URL_SAFE_NO_PAD.encode(public_key),
            kid: kid.to_owned(),
            alg: ALG_EDDSA.to_owned(),
            use_: "sig".to_owned(),
        }
    }

    /// The raw public key, if this is a well-formed Ed25519 signing key.
    pub fn ed25519_public_key(&self) -> Option<[u8; 32]> {
        if self.kty != KTY_OKP || self.crv != CRV_ED25519 || self.alg != ALG_EDDSA {
            return None;
        }
        if !self.use_.is_empty() && self.use_ != "sig" {
            return None;
        }
        URL_SAFE_NO_PAD.decode(&self.x).ok()?.try_into().ok()
    }
}

/// A JWK set as served at `/.well-known/jwks.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// The key with this key id.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid == kid)
    }

    /// Whether the set holds a key with this key id.
    pub fn contains(&self, kid: &str) -> bool {
        self.find(kid).is_some()
    }
}

/// RFC 7638 JWK thumbprint of an Ed25519 public key, base64url.
fn thumbprint(public_key: &[u8; 32]) -> String {
    // Members in lexicographic order, no whitespace, as RFC 7638 §3.2 requires.
    let canonical = format!(
        r#"{{"crv":"{CRV_ED25519}","kty":"{KTY_OKP}","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public_key)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_round_trips_and_jwk_is_ed25519() {
        let key = SigningKey::generate();
        let again = SigningKey::from_seed(key.kid(), key.seed());
        assert_eq!(key.public_jwk(), again.public_jwk());
        let jwk = key.public_jwk();
        assert_eq!(
            (jwk.kty.as_str(), jwk.crv.as_str(), jwk.alg.as_str()),
            ("OKP", "Ed25519", "EdDSA")
        );
        assert!(jwk.ed25519_public_key().is_some());
        let json = serde_json::to_value(&jwk).unwrap();
        assert_eq!(json["use"], "sig");
    }

    #[test]
    fn debug_hides_the_seed() {
        let key = SigningKey::from_seed("k1", [7; 32]);
        assert_eq!(format!("{key:?}"), r#"SigningKey { kid: "k1", .. }"#);
    }

    #[test]
    fn header_names_alg_typ_and_kid() {
        let key = SigningKey::from_seed("k1", [7; 32]);
        let token = key.sign(&serde_json::json!({"exp": 1})).unwrap();
        let header = token.split('.').next().unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "k1"})
        );
    }
}
