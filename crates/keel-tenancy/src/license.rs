//! Licenses: EdDSA-signed JWTs carrying tenant, tier, features and limits, verifiable offline
//! with the JWKS. After expiry a license has 7 days of read-only grace, then it is expired.

use chrono::{DateTime, Duration, TimeZone, Utc};
use keel_auth::{JwkSet, SigningKey};
use serde::{Deserialize, Serialize};

use crate::tier::Tier;

pub const VALIDITY_DAYS: i64 = 365;
pub const GRACE_DAYS: i64 = 7;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// `None` (absent in the JWT) is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environments: Option<u32>,
    /// `None` (absent in the JWT) is unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_limit: Option<u32>,
    pub retention_days: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LicenseClaims {
    pub iss: String,
    pub sub: String,
    pub lid: String,
    pub tenant: String,
    pub tier: Tier,
    pub features: Vec<String>,
    pub limits: Limits,
    pub iat: i64,
    pub exp: i64,
}

impl LicenseClaims {
    pub fn new(tenant_id: &str, tier: Tier, now: DateTime<Utc>) -> Self {
        let e = tier.entitlements();
        Self {
            iss: "keel".into(),
            sub: tenant_id.into(),
            lid: format!("lic-{}", uuid::Uuid::now_v7()),
            tenant: tenant_id.into(),
            tier,
            features: e.features.iter().map(|f| (*f).to_owned()).collect(),
            limits: Limits {
                environments: e.environments,
                agent_limit: e.agent_limit,
                retention_days: e.retention_days(None),
            },
            iat: now.timestamp(),
            exp: (now + Duration::days(VALIDITY_DAYS)).timestamp(),
        }
    }

    pub fn issued_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.iat, 0).single().unwrap_or_default()
    }

    pub fn expires_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.exp, 0).single().unwrap_or_default()
    }

    /// The license JWT (`typ: keel-license+jwt`): never accepted as an access token.
    pub fn sign(&self, key: &SigningKey) -> Result<String, keel_auth::AuthError> {
        key.sign_typed(self, keel_auth::LICENSE_TYP)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LicenseStatus {
    Valid,
    /// Expired less than [`GRACE_DAYS`] ago: the deployment runs read-only until `until`.
    Grace {
        until: DateTime<Utc>,
    },
    Expired,
}

impl LicenseStatus {
    pub fn at(claims: &LicenseClaims, now: DateTime<Utc>) -> Self {
        let exp = claims.expires_at();
        // Within a week of the end of chrono's range the grace period ends there: `+` would panic.
        let until = exp
            .checked_add_signed(Duration::days(GRACE_DAYS))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        if now < exp {
            LicenseStatus::Valid
        } else if now < until {
            LicenseStatus::Grace { until }
        } else {
            LicenseStatus::Expired
        }
    }
}

/// Verifies a license offline: signature against `jwks`, then its status at `now`. A license
/// past its grace period fails to verify.
pub fn verify(
    jwt: &str,
    jwks: &JwkSet,
    now: DateTime<Utc>,
) -> Result<(LicenseClaims, LicenseStatus), keel_auth::AuthError> {
    let claims: LicenseClaims = keel_auth::verify_typed(
        jwt.trim(),
        jwks,
        now.timestamp(),
        GRACE_DAYS * 86_400,
        keel_auth::LICENSE_TYP,
    )?;
    let status = LicenseStatus::at(&claims, now);
    Ok((claims, status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_offline_and_one_changed_byte_fails() {
        let key = SigningKey::generate();
        let jwks = JwkSet {
            keys: vec![key.public_jwk()],
        };
        let now = Utc::now();
        let claims = LicenseClaims::new("t1", Tier::High, now);
        let jwt = claims.sign(&key).unwrap();
        let (got, status) = verify(&jwt, &jwks, now).unwrap();
        assert_eq!((got, status), (claims, LicenseStatus::Valid));
        for i in [3, jwt.len() / 2, jwt.len() - 3] {
            let mut bytes = jwt.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let tampered = String::from_utf8(bytes).unwrap();
            assert!(
                verify(&tampered, &jwks, now).is_err(),
                "byte {i} changed and it still verified"
            );
        }
    }

    #[test]
    fn status_near_the_end_of_time_does_not_overflow() {
        let mut claims = LicenseClaims::new("t1", Tier::Low, Utc::now());
        let end = DateTime::<Utc>::MAX_UTC;
        claims.exp = end.timestamp() - 60;
        let exp = claims.expires_at();
        assert_eq!(
            LicenseStatus::at(&claims, exp),
            LicenseStatus::Grace { until: end }
        );
        assert_eq!(LicenseStatus::at(&claims, end), LicenseStatus::Expired);
    }

    #[test]
    fn grace_then_expired() {
        let key = SigningKey::generate();
        let jwks = JwkSet {
            keys: vec![key.public_jwk()],
        };
        let issued = Utc::now() - Duration::days(VALIDITY_DAYS + 2);
        let jwt = LicenseClaims::new("t1", Tier::Low, issued).sign(&key).unwrap();
        let (_, status) = verify(&jwt, &jwks, Utc::now()).unwrap();
        assert!(matches!(status, LicenseStatus::Grace { .. }));
        let old = LicenseClaims::new("t1", Tier::Low, Utc::now() - Duration::days(VALIDITY_DAYS + 8))
            .sign(&key)
            .unwrap();
        assert!(verify(&old, &jwks, Utc::now()).is_err());
    }
}
