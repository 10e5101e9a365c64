//! CreateServiceAccount is one atomic write: the account's events (ServiceAccountCreated,
//! ApiKeyIssued) commit in one transaction, and the key is usable exactly when they do.

use keel_proto::v1 as pb;
use keel_tenant::tokens::{ApiKeys, KeyGrant, new_api_key};

use crate::harness::{World, by_id, slug};

fn create(tenant_id: &str, name: &str) -> pb::CreateServiceAccountRequest {
    pb::CreateServiceAccountRequest {
        tenant: Some(by_id(tenant_id)),
        name: name.into(),
        scopes: vec!["tenant:read".into()],
    }
}

/// The account's events: (event type, transaction id).
async fn account_events(w: &World, tenant_id: &str, account_id: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT event_type, tx_id::text FROM events WHERE aggregate_id = $1 \
         AND event_type IN ('ServiceAccountCreated', 'ApiKeyIssued') \
         AND payload -> event_type ->> 'account_id' = $2 ORDER BY sequence",
    )
    .bind(tenant_id)
    .bind(account_id)
    .fetch_all(&w.pool)
    .await
    .unwrap()
}

async fn key_rows(w: &World, tenant_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE tenant_id = $1")
        .bind(tenant_id)
        .fetch_one(&w.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_account_and_its_key_commit_in_one_transaction() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let created = w
        .tokens(&w.operator)
        .create_service_account(create(&t.id, "ci"))
        .await
        .unwrap()
        .into_inner();
    let events = account_events(&w, &t.id, &created.account_id).await;
    let types: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(types, ["ServiceAccountCreated", "ApiKeyIssued"]);
    assert_eq!(events[0].1, events[1].1, "two transactions: {events:?}");
    // The key became active with the events (the same statement), so it works at once.
    let pending: bool = sqlx::query_scalar("SELECT pending FROM api_keys WHERE key_id = $1")
        .bind(&created.key_id)
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert!(!pending);
    let token = w.exchange(&created.api_key).await.unwrap();
    assert_eq!(token.tenant_id, t.id);
    w.cleanup().await;
}

/// The crash point between the two writes: the key row is stored, its events never are.
#[tokio::test]
async fn a_key_stored_without_its_events_is_never_usable_nor_listed() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let secret = new_api_key();
    let grant = KeyGrant {
        key_id: format!("key_{}", uuid::Uuid::now_v7().simple()),
        account_id: format!("sa_{}", uuid::Uuid::now_v7().simple()),
        tenant_id: t.id.clone(),
        scopes: vec!["tenant:read".into()],
    };
    ApiKeys::new(w.pool.clone())
        .store_pending(&grant, &secret)
        .await
        .unwrap();

    let e = w.exchange(&secret).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let listed = w
        .tokens(&w.operator)
        .list_api_keys(pb::ListApiKeysRequest {
            tenant: Some(by_id(&t.id)),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.keys.iter().all(|k| k.key_id != grant.key_id), "{listed:?}");
    let e = w
        .tokens(&w.operator)
        .revoke_api_key(pb::RevokeApiKeyRequest {
            key_id: grant.key_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(account_events(&w, &t.id, &grant.account_id).await.is_empty());
    w.cleanup().await;
}

/// A refused append leaves nothing: no account (whose key nobody got), no key row. Before the
/// change a tenant in FAILED kept a keyless account from the first of three writes.
#[tokio::test]
async fn a_refused_account_leaves_neither_an_account_nor_a_key() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let mut tokens = w.tokens(&w.operator);
    tokens.create_service_account(create(&t.id, "ci")).await.unwrap();
    assert_eq!(key_rows(&w, &t.id).await, 1);

    let e = tokens
        .create_service_account(create(&t.id, "ci"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert_eq!(
        key_rows(&w, &t.id).await,
        1,
        "the refused account's key row stayed"
    );

    let mut tenants = w.tenants(&w.operator);
    let lc = pb::TenantLifecycleRequest {
        tenant: Some(by_id(&t.id)),
    };
    tenants.mark_provisioning(lc).await.unwrap();
    tenants
        .mark_failed(pb::MarkFailedRequest {
            tenant: Some(by_id(&t.id)),
            reason: "database step".into(),
        })
        .await
        .unwrap();
    let created_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'ServiceAccountCreated'",
    )
    .bind(&t.id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    let e = tokens
        .create_service_account(create(&t.id, "deploy"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let created_after: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'ServiceAccountCreated'",
    )
    .bind(&t.id)
    .fetch_one(&w.pool)
    .await
    .unwrap();
    assert_eq!(
        created_after, created_before,
        "an account without its key was recorded"
    );
    assert_eq!(key_rows(&w, &t.id).await, 1);
    w.cleanup().await;
}
