//! License keys: a key ring apart from token keys, rotated apart, and published for a license's
//! whole life. Time is moved with a controlled clock (a year is not waited for).

use std::sync::Arc;

use base64::Engine;
use chrono::{Duration, Utc};
use keel_auth::JwkSet;
use keel_proto::v1 as pb;
use keel_tenancy::license::{GRACE_DAYS, LicenseStatus, VALIDITY_DAYS, verify};
use keel_tenant::clock::{Clock, ManualClock};
use keel_tenant::crypto::MasterKey;
use keel_tenant::signing::SigningKeys;

use crate::harness::{MASTER_KEY, World, by_id, slug};

fn kid_of(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap();
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .unwrap();
    let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

fn kids(set: &JwkSet) -> Vec<String> {
    set.keys.iter().map(|k| k.kid.clone()).collect()
}

async fn published(w: &World, path: &str) -> JwkSet {
    let (status, body) = w.http_get(path).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn issue(w: &World, tenant_id: &str) -> pb::License {
    w.licenses(&w.operator)
        .issue_license(pb::IssueLicenseRequest {
            tenant: Some(by_id(tenant_id)),
        })
        .await
        .unwrap()
        .into_inner()
}

fn master() -> MasterKey {
    MasterKey::from_setting(Some(MASTER_KEY)).unwrap()
}

#[tokio::test]
async fn a_license_issued_before_rotations_verifies_offline_for_its_whole_validity() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let t0 = Utc::now();
    let lic = issue(&w, &t.id).await;
    let lic_kid = kid_of(&lic.jwt);

    // Licenses are not signed with a token key, and neither set holds the other's keys.
    let tokens = published(&w, "/.well-known/jwks.json").await;
    let licenses = published(&w, "/.well-known/license-jwks.json").await;
    assert!(
        !kids(&tokens).contains(&lic_kid),
        "a token key signed the license"
    );
    assert!(kids(&licenses).contains(&lic_kid));
    assert!(kids(&tokens).iter().all(|k| !kids(&licenses).contains(k)));

    // A token key rotation leaves the license ring alone.
    let token_rotation = w
        .tokens(&w.operator)
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!token_rotation.published_kids.contains(&lic_kid));
    assert_eq!(kid_of(&issue(&w, &t.id).await.jwt), lic_kid);

    // A license key rotation: new licenses get the new key, the old one stays published.
    let rotated = w
        .licenses(&w.operator)
        .rotate_license_key(pb::RotateLicenseKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.kid, lic_kid);
    assert!(rotated.published_kids.contains(&lic_kid));
    assert!(rotated.published_kids.contains(&rotated.kid));
    let after = issue(&w, &t.id).await;
    assert_eq!(kid_of(&after.jwt), rotated.kid);

    // Time moves on (the rings read the service's own tables, judged by a controlled clock).
    let clock = ManualClock::at(t0);
    let license_ring = SigningKeys::licenses(w.pool.clone(), master()).with_clock(Arc::new(clock.clone()));
    let token_ring = SigningKeys::new(w.pool.clone(), master()).with_clock(Arc::new(clock.clone()));
    for days in [2, 30, 180, VALIDITY_DAYS - 1] {
        clock.set(t0 + Duration::days(days));
        let jwks = license_ring.jwks().await.unwrap();
        let (claims, status) = verify(&lic.jwt, &jwks, clock.now())
            .unwrap_or_else(|e| panic!("day {days}: the license no longer verifies: {e}"));
        assert_eq!(
            (claims.lid.as_str(), status),
            (lic.license_id.as_str(), LicenseStatus::Valid)
        );
    }
    // Past the day a token key stays: the retired token key is gone, the license key is not.
    clock.set(t0 + Duration::days(2));
    let token_keys = kids(&token_ring.jwks().await.unwrap());
    assert_eq!(
        token_keys,
        vec![token_rotation.kid.clone()],
        "a retired token key is kept a day"
    );

    // In grace after its validity, and still verifiable offline.
    clock.set(t0 + Duration::days(VALIDITY_DAYS + 1));
    let jwks = license_ring.jwks().await.unwrap();
    let (_, status) = verify(&lic.jwt, &jwks, clock.now()).unwrap();
    assert!(matches!(status, LicenseStatus::Grace { .. }), "{status:?}");

    // After its grace period: expired, and its retired key withdrawn; the active one stays.
    clock.set(t0 + Duration::days(VALIDITY_DAYS + GRACE_DAYS + 1));
    let jwks = license_ring.jwks().await.unwrap();
    assert_eq!(kids(&jwks), vec![rotated.kid.clone()]);
    assert!(verify(&lic.jwt, &jwks, clock.now()).is_err());
    w.cleanup().await;
}

#[tokio::test]
async fn the_service_keeps_publishing_a_license_key_long_after_token_keys_are_gone() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let lic = issue(&w, &t.id).await;
    let lic_kid = kid_of(&lic.jwt);
    let old_token_kid = w.signing_key().await.kid().to_owned();
    w.tokens(&w.operator)
        .rotate_signing_key(pb::RotateSigningKeyRequest {})
        .await
        .unwrap();
    w.licenses(&w.operator)
        .rotate_license_key(pb::RotateLicenseKeyRequest {})
        .await
        .unwrap();
    // Both rotations happened 300 days ago, as far as the running service can tell.
    for table in ["signing_keys", "license_signing_keys"] {
        sqlx::query(&format!(
            "UPDATE {table} SET retired_at = retired_at - interval '300 days' WHERE retired_at IS NOT NULL"
        ))
        .execute(&w.pool)
        .await
        .unwrap();
    }
    let tokens = published(&w, "/.well-known/jwks.json").await;
    assert!(!kids(&tokens).contains(&old_token_kid), "{:?}", kids(&tokens));
    let licenses = published(&w, "/.well-known/license-jwks.json").await;
    assert!(kids(&licenses).contains(&lic_kid), "{:?}", kids(&licenses));
    verify(&lic.jwt, &licenses, Utc::now()).expect("the license verifies offline");
    // The service's own check (GetLicense) agrees.
    let got = w
        .licenses(&w.operator)
        .get_license(pb::GetLicenseRequest {
            tenant: Some(by_id(&t.id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.license_id, lic.license_id);

    // Rotating license keys is the operator's: a tenant token is refused.
    let token = w.tenant_token(&t.id, &["license:read"]).await;
    let e = w
        .licenses(&token)
        .rotate_license_key(pb::RotateLicenseKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    w.cleanup().await;
}
