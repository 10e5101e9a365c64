use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use keel_auth::{Claims, SigningKey};
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{World, by_id, by_slug, slug};

fn claims(tenant: &str, scopes: &[&str], exp_in: i64) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: "mallory".into(),
        tenant: tenant.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        exp: now + exp_in,
        iat: now - 10,
        jti: uuid::Uuid::new_v4().to_string(),
        tier: None,
    }
}

fn get(id: &str) -> pb::GetTenantRequest {
    pb::GetTenantRequest {
        tenant: Some(by_id(id)),
    }
}

#[tokio::test]
async fn a_token_of_tenant_a_cannot_read_or_change_tenant_b_and_that_is_audited() {
    let w = World::start().await;
    let a = w.create(&slug(), "a@a.example").await;
    let b_slug = slug();
    let b = w.create(&b_slug, "b@b.example").await;
    let token_a = w
        .tenant_token(&a.id, &["tenant:read", "tenant:write", "member:write"])
        .await;
    let mut api = w.tenants(&token_a);
    assert_eq!(api.get_tenant(get(&a.id)).await.unwrap().into_inner().id, a.id);

    let read = api.get_tenant(get(&b.id)).await.unwrap_err();
    assert_eq!(read.code(), tonic::Code::PermissionDenied);
    assert_eq!(read.message(), "missing scope tenant:read for this tenant");
    let by_slug_err = api
        .get_tenant(pb::GetTenantRequest {
            tenant: Some(by_slug(&b_slug)),
        })
        .await
        .unwrap_err();
    assert_eq!(by_slug_err.code(), tonic::Code::PermissionDenied);
    let write = api
        .invite_member(pb::InviteMemberRequest {
            tenant: Some(by_id(&b.id)),
            email: "evil@a.example".into(),
            role: pb::Role::Owner as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(write.code(), tonic::Code::PermissionDenied);
    assert!(!write.message().contains(&b.id) && !write.message().contains("b@b.example"));
    let delete = api
        .delete_tenant(pb::DeleteTenantRequest {
            tenant: Some(by_id(&b.id)),
        })
        .await
        .unwrap_err();
    assert_eq!(delete.code(), tonic::Code::PermissionDenied);
    let members = w
        .tenants(&w.operator)
        .list_members(pb::ListMembersRequest {
            tenant: Some(by_id(&b.id)),
            page: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 1, "nothing was written to B");

    // Denials are recorded on the caller's audit subject (A), naming the target (B) inside:
    // A cannot write into B's audit stream by being refused.
    let denied = eventually("denied audit records on A", Duration::from_secs(10), || async {
        let d: Vec<_> = w
            .audit_of(&a.id)
            .await
            .into_iter()
            .filter(|r| r["result"] == "denied")
            .collect();
        (d.len() >= 3).then_some(d)
    })
    .await;
    assert!(
        denied
            .iter()
            .all(|r| r["actor"].as_str().unwrap().starts_with("service:sa_"))
    );
    let actions: Vec<&str> = denied.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert!(
        actions.contains(&"member-invite") && actions.contains(&"delete") && actions.contains(&"get"),
        "{actions:?}"
    );
    assert!(
        denied
            .iter()
            .all(|r| r["reason"].as_str().unwrap_or_default().contains(&b.id)),
        "{denied:?}"
    );
    assert!(
        w.audit_of(&b.id).await.iter().all(|r| r["result"] != "denied"),
        "a denial was written into the target's audit stream"
    );
    w.cleanup().await;
}

#[tokio::test]
async fn expired_unknown_key_tampered_and_missing_scope_tokens_are_refused() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let real = w.signing_key().await;
    let good = real.sign(&claims(&t.id, &["tenant:read"], 300)).unwrap();
    assert!(w.tenants(&good).get_tenant(get(&t.id)).await.is_ok());

    let expired = real.sign(&claims(&t.id, &["tenant:read"], -3600)).unwrap();
    let e = w.tenants(&expired).get_tenant(get(&t.id)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::Unauthenticated, "token expired")
    );

    let stranger = SigningKey::generate()
        .sign(&claims(&t.id, &["tenant:read"], 300))
        .unwrap();
    let e = w.tenants(&stranger).get_tenant(get(&t.id)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::Unauthenticated, "unknown signing key")
    );

    // Same header and signature, payload claiming the operator tenant.
    let parts: Vec<&str> = good.split('.').collect();
    use base64::Engine;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&claims("*", &["operator"], 300)).unwrap());
    let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
    let e = w.tenants(&tampered).get_tenant(get(&t.id)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::Unauthenticated, "invalid token")
    );

    let e = w.tenants_anonymous().get_tenant(get(&t.id)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);

    let read_only = real.sign(&claims(&t.id, &["tenant:read"], 300)).unwrap();
    let e = w
        .tenants(&read_only)
        .invite_member(pb::InviteMemberRequest {
            tenant: Some(by_id(&t.id)),
            email: "x@o.example".into(),
            role: pb::Role::Viewer as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::PermissionDenied, "missing scope member:write")
    );
    w.cleanup().await;
}

#[derive(Clone, Default)]
struct Proxy {
    upstream: Arc<Mutex<Option<String>>>,
    up: Arc<Mutex<bool>>,
}

async fn jwks_proxy(State(p): State<Proxy>) -> (StatusCode, String) {
    let up = *p.up.lock().unwrap();
    let upstream = p.upstream.lock().unwrap().clone();
    match (up, upstream) {
        (true, Some(body)) => (StatusCode::OK, body),
        _ => (StatusCode::SERVICE_UNAVAILABLE, String::new()),
    }
}

#[tokio::test]
async fn jwks_outage_serves_cached_keys_within_ttl_then_fails_then_recovers() {
    // The service verifies through a JWKS endpoint the test controls.
    let proxy = Proxy::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/jwks.json", axum::routing::get(jwks_proxy))
        .with_state(proxy.clone());
    // Over TLS with a certificate of the test CA, as the service only fetches keys over HTTPS.
    let tls = keel_store::testing::tls_service("tenant")
        .http_server()
        .unwrap()
        .unwrap();
    let listener = keel_runtime::tls::listener::TlsListener::new(listener, tls).unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let env = HashMap::from([
        ("KEEL_JWKS_URL".to_owned(), format!("https://{addr}/jwks.json")),
        ("KEEL_JWKS_TTL_SECS".to_owned(), "3".to_owned()),
    ]);
    let w = World::start_with(env).await;
    let (status, body) = w.http_get("/.well-known/jwks.json").await;
    assert_eq!(status, 200);
    *proxy.upstream.lock().unwrap() = Some(body);
    *proxy.up.lock().unwrap() = true;

    let t = w.create(&slug(), "o@o.example").await;
    let mut api = w.tenants(&w.operator);
    api.get_tenant(get(&t.id)).await.unwrap();

    *proxy.up.lock().unwrap() = false;
    // Within the TTL: still served from the cache (the next refresh fails), and the
    // degradation is reported.
    let outage = std::time::Instant::now();
    eventually("auth-degraded audit record", Duration::from_secs(10), || {
        let mut api = api.clone();
        let id = t.id.clone();
        let w = &w;
        async move {
            let r = api.get_tenant(get(&id)).await;
            if outage.elapsed() < Duration::from_secs(2) {
                r.expect("cached keys serve within the TTL");
            }
            w.audit_of("_platform")
                .await
                .iter()
                .any(|r| r["action"] == "auth-degraded")
                .then_some(())
        }
    })
    .await;
    // After the TTL: refused.
    let err = eventually("refusal after the TTL", Duration::from_secs(15), || {
        let mut api = api.clone();
        let id = t.id.clone();
        async move { api.get_tenant(get(&id)).await.err() }
    })
    .await;
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::Unauthenticated, "signing keys unavailable")
    );
    // Back up: accepted again.
    *proxy.up.lock().unwrap() = true;
    eventually("recovery", Duration::from_secs(15), || {
        let mut api = api.clone();
        let id = t.id.clone();
        async move { api.get_tenant(get(&id)).await.ok() }
    })
    .await;
    w.cleanup().await;
}

#[tokio::test]
async fn a_tenant_over_its_rate_limit_is_told_when_to_retry_and_others_are_unaffected() {
    let w = World::start().await;
    let a = w.create(&slug(), "a@a.example").await;
    let b = w.create(&slug(), "b@b.example").await;
    let (token_a, token_b) = (
        w.tenant_token(&a.id, &["tenant:read"]).await,
        w.tenant_token(&b.id, &["tenant:read"]).await,
    );
    // Tier low allows 20/s with a burst of 40: 120 calls at once exceed it.
    let mut calls = Vec::new();
    for _ in 0..120 {
        let mut api = w.tenants(&token_a);
        let id = a.id.clone();
        calls.push(tokio::spawn(async move { api.get_tenant(get(&id)).await }));
    }
    let mut limited = Vec::new();
    for c in calls {
        if let Err(s) = c.await.unwrap() {
            limited.push(s);
        }
    }
    assert!(!limited.is_empty(), "120 concurrent calls never hit the limit");
    for s in &limited {
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let retry: u64 = s
            .metadata()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1);
    }
    // Tenant B is not affected.
    for _ in 0..10 {
        w.tenants(&token_b)
            .get_tenant(get(&b.id))
            .await
            .expect("another tenant is unaffected");
    }
    w.cleanup().await;
}

#[tokio::test]
async fn licenses_verify_offline_with_the_jwks_and_fail_on_one_changed_byte() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let lic = w
        .licenses(&w.operator)
        .issue_license(pb::IssueLicenseRequest {
            tenant: Some(by_id(&t.id)),
        })
        .await
        .unwrap()
        .into_inner();
    let token = w.tenant_token(&t.id, &["license:read"]).await;
    let got = w
        .licenses(&token)
        .get_license(pb::GetLicenseRequest {
            tenant: Some(by_id(&t.id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.jwt, lic.jwt);
    let (_, body) = w.http_get("/.well-known/license-jwks.json").await;
    let jwks: keel_auth::JwkSet = serde_json::from_str(&body).unwrap();
    let (claims, status) = keel_tenancy::license::verify(&lic.jwt, &jwks, chrono::Utc::now()).unwrap();
    assert_eq!(
        (claims.tenant.as_str(), status),
        (t.id.as_str(), keel_tenancy::license::LicenseStatus::Valid)
    );
    assert_eq!(claims.limits.retention_days, 7);
    let mut bytes = lic.jwt.clone().into_bytes();
    let i = bytes.len() / 3;
    bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
    assert!(
        keel_tenancy::license::verify(&String::from_utf8(bytes).unwrap(), &jwks, chrono::Utc::now()).is_err()
    );

    // A license key rotation keeps the old key published, so the license still verifies.
    let rotated = w
        .licenses(&w.operator)
        .rotate_license_key(pb::RotateLicenseKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.published_kids.len(), 2);
    let (_, body) = w.http_get("/.well-known/license-jwks.json").await;
    let jwks: keel_auth::JwkSet = serde_json::from_str(&body).unwrap();
    assert!(keel_tenancy::license::verify(&lic.jwt, &jwks, chrono::Utc::now()).is_ok());
    // A license is not an access token: presented as a bearer token it is refused.
    let as_token = w.tenants(&lic.jwt).get_tenant(get(&t.id)).await.unwrap_err();
    assert_eq!(as_token.code(), tonic::Code::Unauthenticated, "{as_token:?}");
    w.cleanup().await;
}

#[tokio::test]
async fn api_key_exchanges_are_audited_and_rate_limited() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    w.tenant_token(&t.id, &["tenant:read"]).await;
    let ok = eventually(
        "a successful exchange audited on the tenant",
        Duration::from_secs(10),
        || async {
            w.audit_of(&t.id)
                .await
                .into_iter()
                .find(|r| r["action"] == "api-key-exchange" && r["result"] == "success")
        },
    )
    .await;
    assert!(ok["actor"].as_str().unwrap().starts_with("service:sa_"), "{ok}");

    let unknown = format!("keel_{}", uuid::Uuid::new_v4().simple());
    let e = w.exchange(&unknown).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let failed = eventually(
        "a failed exchange audited on the platform",
        Duration::from_secs(10),
        || async {
            w.audit_of("_platform")
                .await
                .into_iter()
                .find(|r| r["action"] == "api-key-exchange" && r["result"] == "failed")
        },
    )
    .await;
    assert!(
        !failed.to_string().contains(&unknown),
        "the key itself was recorded: {failed}"
    );

    // Guessing keys is throttled: one key 10/s (burst 20), one address 50/s (burst 100).
    let mut limited = None;
    for _ in 0..60 {
        if let Err(e) = w.exchange(&unknown).await
            && e.code() == tonic::Code::ResourceExhausted
        {
            limited = Some(e);
            break;
        }
    }
    let limited = limited.expect("60 rapid exchanges of one key were never limited");
    assert!(limited.metadata().get("retry-after").is_some());
    w.cleanup().await;
}
