//! API keys: listing (scoped, paged, never a secret), revocation (idempotent, audited, no
//! existence leak across tenants), operator keys and disabling the bootstrap key.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{World, by_id, slug};

async fn account(w: &World, tenant_id: &str, scopes: &[&str]) -> pb::ServiceAccountCreated {
    w.tokens(&w.operator)
        .create_service_account(pb::CreateServiceAccountRequest {
            tenant: Some(by_id(tenant_id)),
            name: format!("sa-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
}

fn list(tenant: Option<&str>, size: u32, token: &str) -> pb::ListApiKeysRequest {
    pb::ListApiKeysRequest {
        tenant: tenant.map(by_id),
        page: Some(pb::PageRequest {
            page_size: size,
            page_token: token.into(),
        }),
    }
}

fn revoke(key_id: &str) -> pb::RevokeApiKeyRequest {
    pb::RevokeApiKeyRequest {
        key_id: key_id.into(),
    }
}

fn operator_key(name: &str, scopes: &[&str]) -> pb::CreateOperatorKeyRequest {
    pb::CreateOperatorKeyRequest {
        name: name.into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Every key `token` may list (no tenant named), page by page.
async fn all_keys(w: &World, token: &str, size: u32) -> Vec<pb::ApiKey> {
    let mut api = w.tokens(token);
    let (mut keys, mut next) = (Vec::new(), String::new());
    loop {
        let r = api
            .list_api_keys(list(None, size, &next))
            .await
            .unwrap()
            .into_inner();
        assert!(r.keys.len() <= size as usize);
        keys.extend(r.keys);
        next = r.page.unwrap().next_page_token;
        if next.is_empty() {
            return keys;
        }
    }
}

fn reason(e: &tonic::Status) -> String {
    tonic_types::StatusExt::get_details_error_info(e)
        .map(|i| i.reason)
        .unwrap_or_default()
}

#[tokio::test]
async fn keys_are_listed_per_tenant_and_revoked_at_once_without_leaking_across_tenants() {
    let w = World::start().await;
    let a = w.create(&slug(), "a@a.example").await;
    let b = w.create(&slug(), "b@b.example").await;
    let admin_a = account(&w, &a.id, &["token:issue", "tenant:read"]).await;
    let ci_a = account(&w, &a.id, &["tenant:read"]).await;
    let key_b = account(&w, &b.id, &["tenant:read"]).await;
    let admin = w.exchange(&admin_a.api_key).await.unwrap().token;
    let ci_token = w.exchange(&ci_a.api_key).await.unwrap();

    // A tenant admin sees its own tenant's keys only, and never a secret.
    let own = all_keys(&w, &admin, 500).await;
    let ids: BTreeSet<&str> = own.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([admin_a.key_id.as_str(), ci_a.key_id.as_str()])
    );
    for k in &own {
        assert_eq!(k.tenant_id, a.id);
        assert!(k.created_at.is_some() && k.revoked_at.is_none(), "{k:?}");
        let shown = format!("{k:?}");
        assert!(!shown.contains(&admin_a.api_key) && !shown.contains(&ci_a.api_key));
    }
    let ci = own.iter().find(|k| k.key_id == ci_a.key_id).unwrap();
    assert_eq!(
        (ci.account_id.as_str(), ci.scopes.clone()),
        (ci_a.account_id.as_str(), vec!["tenant:read".to_owned()])
    );
    let e = w
        .tokens(&admin)
        .list_api_keys(list(Some(&b.id), 0, ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = w
        .tokens(&ci_token.token)
        .list_api_keys(list(None, 0, ""))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (tonic::Code::PermissionDenied, "missing scope token:issue")
    );

    // The operator sees every key, the bootstrap key included, in pages; or one tenant's.
    let everything = all_keys(&w, &w.operator, 1).await;
    let ids: Vec<&str> = everything.iter().map(|k| k.key_id.as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "key id order, no repeats across pages");
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert!(ids.contains(&"bootstrap") && ids.contains(&key_b.key_id.as_str()));
    let bootstrap = everything.iter().find(|k| k.key_id == "bootstrap").unwrap();
    assert_eq!(bootstrap.tenant_id, "*");
    let only_b = w
        .tokens(&w.operator)
        .list_api_keys(list(Some(&b.id), 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(only_b.keys.len(), 1);
    assert_eq!(only_b.keys[0].key_id, key_b.key_id);

    // Another tenant's key, an operator key and an unknown key look the same to A: NOT_FOUND.
    let mut tokens_a = w.tokens(&admin);
    let mut seen = Vec::new();
    for id in [key_b.key_id.as_str(), "bootstrap", "key_doesnotexist"] {
        let e = tokens_a.revoke_api_key(revoke(id)).await.unwrap_err();
        seen.push((e.code(), e.message().to_owned()));
    }
    assert!(
        seen.iter()
            .all(|s| *s == (tonic::Code::NotFound, "API key not found".to_owned())),
        "{seen:?}"
    );
    assert!(w.exchange(&key_b.api_key).await.is_ok(), "B's key still works");
    assert!(
        w.exchange(&w.bootstrap).await.is_ok(),
        "the bootstrap key still works"
    );

    // A revokes its own CI key: refused by ExchangeApiKey at once; a repeat changes nothing.
    let revoked = tokens_a
        .revoke_api_key(revoke(&ci_a.key_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.key_id, ci_a.key_id);
    assert!(revoked.revoked_at.is_some());
    let e = w.exchange(&ci_a.api_key).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let again = tokens_a
        .revoke_api_key(revoke(&ci_a.key_id))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, revoked, "idempotent: same key, same revocation time");
    let listed = all_keys(&w, &admin, 500).await;
    assert_eq!(
        listed
            .iter()
            .find(|k| k.key_id == ci_a.key_id)
            .unwrap()
            .revoked_at,
        revoked.revoked_at
    );
    // A token it was exchanged for before lives out its TTL (900 s) and no longer.
    let exp = ci_token.expires_at.unwrap().seconds;
    let now = chrono::Utc::now().timestamp();
    assert!(
        exp > now && exp <= now + 900,
        "exchanged tokens live at most 900 s"
    );
    w.tenants(&ci_token.token)
        .get_tenant(pb::GetTenantRequest {
            tenant: Some(by_id(&a.id)),
        })
        .await
        .unwrap();

    // Recorded in A's history, once.
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'ApiKeyRevoked' \
         AND payload->'ApiKeyRevoked'->>'key_id' = $2",
    )
    .bind(&a.id)
    .bind(&ci_a.key_id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);

    // Audited on A: the two revocations, and the three refusals exactly alike. Nothing on B.
    let records = eventually(
        "key-revoke audit records on A",
        Duration::from_secs(10),
        || async {
            let r: Vec<_> = w
                .audit_of(&a.id)
                .await
                .into_iter()
                .filter(|r| r["action"] == "key-revoke")
                .collect();
            (r.len() >= 5).then_some(r)
        },
    )
    .await;
    let ok: Vec<_> = records.iter().filter(|r| r["result"] == "success").collect();
    assert_eq!(ok.len(), 2, "{records:?}");
    assert!(
        ok.iter()
            .all(|r| r["resource"] == format!("api-key/{}", ci_a.key_id))
    );
    assert!(
        ok.iter()
            .all(|r| r["actor"] == format!("service:{}", admin_a.account_id))
    );
    let failed: Vec<_> = records.iter().filter(|r| r["result"] == "failed").collect();
    assert_eq!(failed.len(), 3, "{records:?}");
    assert!(
        failed.iter().all(|r| r["reason"] == "unknown API key"),
        "{failed:?}"
    );
    assert!(
        w.audit_of(&b.id)
            .await
            .iter()
            .all(|r| r["action"] != "key-revoke"),
        "A's attempt on B's key reached B's audit stream"
    );

    // Hostile input: INVALID_ARGUMENT naming the field.
    for (req, field) in [
        (revoke(""), "key_id"),
        (revoke("../../bootstrap"), "key_id"),
        (revoke(&"k".repeat(10_000)), "key_id"),
    ] {
        let e = tokens_a.revoke_api_key(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(e.message().starts_with(&format!("{field}:")), "{}", e.message());
    }
    for (req, field) in [
        (list(None, 501, ""), "page.page_size"),
        (list(None, 10, "!!garbage"), "page.page_token"),
        (
            pb::ListApiKeysRequest {
                tenant: Some(by_id("a.b>c")),
                page: None,
            },
            "tenant.id",
        ),
    ] {
        let e = tokens_a.list_api_keys(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(e.message().starts_with(&format!("{field}:")), "{}", e.message());
    }
    w.cleanup().await;
}

#[tokio::test]
async fn the_bootstrap_key_is_disabled_only_while_another_operator_key_is_active() {
    let mut w = World::start().await;
    let mut ops = w.tokens(&w.operator);

    // Alone, the bootstrap key cannot be revoked: nobody could operate the platform after.
    let e = ops.revoke_api_key(revoke("bootstrap")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(reason(&e), "LAST_OPERATOR_KEY");
    assert!(w.exchange(&w.bootstrap).await.is_ok());

    // Platform keys: operator only, at least one scope, names unique while active.
    for (req, field) in [
        (operator_key("ops", &[]), "scopes"),
        (operator_key("Not A Name", &["operator"]), "name"),
        (operator_key("ops", &["operator", "root"]), "scopes"),
    ] {
        let e = ops.create_operator_key(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(e.message().starts_with(&format!("{field}:")), "{}", e.message());
    }
    let t = w.create(&slug(), "o@o.example").await;
    let tenant_admin = w.tenant_token(&t.id, &["token:issue"]).await;
    let e = w
        .tokens(&tenant_admin)
        .create_operator_key(operator_key("evil", &["operator"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let first = ops
        .create_operator_key(operator_key("ops", &["operator", "tenant:read"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.account_id, "sa_op-ops");
    let e = ops
        .create_operator_key(operator_key("ops", &["operator"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let op_token = w.exchange(&first.api_key).await.unwrap();
    assert_eq!(op_token.tenant_id, "*");

    // KEEL_TENANT_BOOTSTRAP=off now disables the bootstrap key at start.
    w.restart(&[("KEEL_TENANT_BOOTSTRAP", "off")]).await;
    let e = w.exchange(&w.bootstrap).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let op_token = w.exchange(&first.api_key).await.unwrap().token;
    // Back to the default: the same token does not revive the revoked key.
    w.restart(&[]).await;
    assert_eq!(
        w.exchange(&w.bootstrap).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    let mut ops = w.tokens(&op_token);
    let listed = all_keys(&w, &op_token, 500).await;
    assert!(
        listed
            .iter()
            .find(|k| k.key_id == "bootstrap")
            .unwrap()
            .revoked_at
            .is_some()
    );

    // The remaining operator key is now the last one; revoking the bootstrap key again is a no-op.
    let e = ops.revoke_api_key(revoke(&first.key_id)).await.unwrap_err();
    assert_eq!(reason(&e), "LAST_OPERATOR_KEY");
    ops.revoke_api_key(revoke("bootstrap")).await.unwrap();
    // With a second one, the first can go (through RevokeApiKey this time).
    let second = ops
        .create_operator_key(operator_key("ops-2", &["operator"]))
        .await
        .unwrap()
        .into_inner();
    ops.revoke_api_key(revoke(&first.key_id)).await.unwrap();
    assert_eq!(
        w.exchange(&first.api_key).await.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert!(w.exchange(&second.api_key).await.is_ok());
    let created = eventually("operator key audit", Duration::from_secs(10), || async {
        let r: Vec<_> = w
            .audit_of("_platform")
            .await
            .into_iter()
            .filter(|r| r["action"] == "operator-key-create" && r["result"] == "success")
            .collect();
        (r.len() == 2).then_some(r)
    })
    .await;
    assert!(
        created
            .iter()
            .any(|r| r["resource"] == format!("api-key/{}", second.key_id))
    );
    w.cleanup().await;
}

#[tokio::test]
async fn bootstrap_off_without_another_operator_key_refuses_to_start() {
    let w = World::start().await;
    let binary = keel_e2e::binary("keel-tenant").unwrap();
    let proc = w.proc();
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.env("KEEL_DATABASE_URL", keel_store::testing::database_url())
        .env("KEEL_NATS_URL", keel_store::testing::nats_url())
        .env("KEEL_REDIS_URL", keel_store::testing::redis_url())
        .env("KEEL_TENANT_SCHEMA", &proc.schema)
        .env("KEEL_BUS_PREFIX", &proc.namespace)
        .env("KEEL_TENANT_GRPC_ADDR", "127.0.0.1:0")
        .env("KEEL_TENANT_HTTP_ADDR", "127.0.0.1:0")
        .env("KEEL_LOG_FORMAT", "json")
        .env("KEEL_MASTER_KEY", keel_e2e::TEST_MASTER_KEY)
        .env("KEEL_BOOTSTRAP_TOKEN", &w.bootstrap)
        .env("KEEL_TENANT_BOOTSTRAP", "off")
        .env("KEEL_TLS_DIR", keel_store::testing::tls_dir())
        .env(
            "KEEL_NATS_CREDS",
            keel_store::testing::nats_creds_file(
                &keel_bus::acl::Role::Service("tenant".into()),
                &proc.namespace,
            ),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("keel-tenant kept running with KEEL_TENANT_BOOTSTRAP=off and no operator key")
        .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("KEEL_TENANT_BOOTSTRAP=off refused"), "{said}");
    assert!(!said.contains("\"event\":\"listening\""), "{said}");
    // The running service's bootstrap key is untouched.
    assert!(w.exchange(&w.bootstrap).await.is_ok());
    // A bad value is named at start too.
    let mut bad = tokio::process::Command::new(&binary);
    bad.env("KEEL_TENANT_BOOTSTRAP", "maybe")
        .env("KEEL_MASTER_KEY", keel_e2e::TEST_MASTER_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), bad.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("KEEL_TENANT_BOOTSTRAP"), "{said}");
    w.cleanup().await;
}

#[tokio::test]
async fn provisioning_s_platform_account_does_only_what_its_scopes_allow() {
    let w = World::start().await;
    let created = w
        .tokens(&w.operator)
        .create_operator_key(operator_key("provisioning", keel_tenancy::client::SCOPES_NEEDED))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.account_id, "sa_pf-provisioning");
    let token = w.exchange(&created.api_key).await.unwrap();
    assert_eq!(token.tenant_id, "*");
    assert!(
        !token.scopes.iter().any(|s| s == "operator"),
        "{:?}",
        token.scopes
    );
    let token = token.token;
    let t = w.create(&slug(), "o@o.example").await;
    let target = || pb::TenantLifecycleRequest {
        tenant: Some(by_id(&t.id)),
    };

    // What the saga needs, on any tenant.
    let mut tenants = w.tenants(&token);
    tenants
        .get_tenant(pb::GetTenantRequest {
            tenant: Some(by_id(&t.id)),
        })
        .await
        .expect("tenant:read on every tenant");
    // Platform-only calls need the key *and* the service's mesh client certificate (mTLS).
    let e = tenants.mark_provisioning(target()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("client certificate"), "{}", e.message());
    let with_cert = keel_store::testing::tls_service("provisioning")
        .endpoint(&w.proc().grpc_url(), "grpc url")
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer = || keel_e2e::Bearer(Some(token.clone()));
    keel_proto::v1::tenant_service_client::TenantServiceClient::with_interceptor(with_cert.clone(), bearer())
        .mark_provisioning(target())
        .await
        .expect("tenant:lifecycle with the client certificate");
    keel_proto::v1::license_service_client::LicenseServiceClient::with_interceptor(with_cert, bearer())
        .issue_license(pb::IssueLicenseRequest {
            tenant: Some(by_id(&t.id)),
        })
        .await
        .expect("license:issue with the client certificate");

    // Nothing else: no operator action, no escalation.
    let denied = |r: Result<tonic::Code, tonic::Code>, what: &str| {
        assert_eq!(r, Err(tonic::Code::PermissionDenied), "{what}");
    };
    let code = |e: tonic::Status| e.code();
    denied(
        tenants
            .create_tenant(pb::CreateTenantRequest {
                name: "Evil".into(),
                slug: slug(),
                tier: pb::Tier::Low as i32,
                owner_email: "e@e.example".into(),
                request_id: slug(),
            })
            .await
            .map(|_| tonic::Code::Ok)
            .map_err(code),
        "create tenant",
    );
    denied(
        tenants
            .suspend_tenant(pb::SuspendTenantRequest {
                tenant: Some(by_id(&t.id)),
                reason: "no".into(),
            })
            .await
            .map(|_| tonic::Code::Ok)
            .map_err(code),
        "suspend",
    );
    let mut tokens = w.tokens(&token);
    denied(
        tokens
            .issue_token(pb::IssueTokenRequest {
                tenant_id: "*".into(),
                subject: "x".into(),
                scopes: vec!["operator".into()],
                ttl_seconds: 60,
            })
            .await
            .map(|_| tonic::Code::Ok)
            .map_err(code),
        "issue token",
    );
    denied(
        tokens
            .create_operator_key(operator_key("more", &["tenant:read"]))
            .await
            .map(|_| tonic::Code::Ok)
            .map_err(code),
        "create another platform key",
    );
    denied(
        tokens
            .rotate_signing_key(pb::RotateSigningKeyRequest {})
            .await
            .map(|_| tonic::Code::Ok)
            .map_err(code),
        "rotate signing key",
    );

    // A tenant account cannot be given a platform-only scope, and a tenant token naming one
    // (minted by an operator) never passes a platform-only check.
    let e = w
        .tokens(&w.operator)
        .create_service_account(pb::CreateServiceAccountRequest {
            tenant: Some(by_id(&t.id)),
            name: "sneaky".into(),
            scopes: vec!["tenant:lifecycle".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("scopes:"), "{}", e.message());
    let own = w
        .tokens(&w.operator)
        .issue_token(pb::IssueTokenRequest {
            tenant_id: t.id.clone(),
            subject: "sa_ci".into(),
            scopes: vec!["tenant:lifecycle".into(), "license:issue".into()],
            ttl_seconds: 60,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    denied(
        w.tenants(&own)
            .mark_provisioned(target())
            .await
            .map(|_| tonic::Code::Ok)
            .map_err(code),
        "a tenant marking itself provisioned",
    );
    w.cleanup().await;
}
