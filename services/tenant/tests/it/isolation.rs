//! Row-level security on every tenant-keyed table: as `keel_tenant_reader`, another tenant's rows
//! are invisible whatever the query asks, and a tenant's own rows are all there.

use std::time::Duration;

use keel_e2e::rls;
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{World, by_id, slug};

const ROLE: &str = keel_tenant::reader::READER_ROLE;

#[tokio::test]
async fn the_reader_role_sees_one_tenant_in_every_tenant_table() {
    let w = World::start().await;
    let a = w.create(&slug(), "a@a.example").await;
    let b = w.create(&slug(), "b@b.example").await;
    for t in [&a, &b] {
        // A key and a license for each, so that every table has rows of both.
        w.tenant_token(&t.id, &["tenant:read"]).await;
        w.licenses(&w.operator)
            .issue_license(pb::IssueLicenseRequest {
                tenant: Some(by_id(&t.id)),
            })
            .await
            .unwrap();
    }
    eventually(
        "both tenants in tenants_view",
        Duration::from_secs(20),
        || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants_view WHERE tenant_id = ANY($1)")
                .bind(vec![a.id.clone(), b.id.clone()])
                .fetch_one(&w.pool)
                .await
                .unwrap();
            (n == 2).then_some(())
        },
    )
    .await;

    for table in [
        "events",
        "tenant_creates",
        "tenant_data_keys",
        "api_keys",
        "licenses",
        "tenants_view",
    ] {
        rls::assert_isolated(&w.pool, ROLE, table, &a.id, &b.id).await;
    }
    // The operators' keys (tenant '*') are no tenant's.
    assert_eq!(rls::owned(&w.pool, "api_keys", "*").await, 1);
    // A new tenant-keyed table without its policy would be listed here.
    assert_eq!(rls::unprotected_tables(&w.pool, ROLE).await, Vec::<String>::new());
    // Readers read their tables, and nothing else.
    for sql in [
        "DELETE FROM tenant_data_keys",
        "UPDATE api_keys SET revoked_at = NULL",
        "INSERT INTO licenses (license_id, tenant_id, tier, jwt, issued_at, expires_at) VALUES ('l', 'x', 'low', 'j', now(), now())",
        "SELECT count(*) FROM signing_keys",
    ] {
        assert!(!rls::permitted(&w.pool, ROLE, &a.id, sql).await, "{sql}");
    }

    // The tenant-scoped reads go through the reader and still answer (A's token, A's data).
    let token = w
        .tenant_token(&a.id, &["tenant:read", "license:read", "token:issue"])
        .await;
    let got = w
        .tenants(&token)
        .get_tenant(pb::GetTenantRequest {
            tenant: Some(by_id(&a.id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((got.id.as_str(), got.created_at.is_some()), (a.id.as_str(), true));
    let members = w
        .tenants(&token)
        .list_members(pb::ListMembersRequest {
            tenant: Some(by_id(&a.id)),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members[0].email, "a@a.example");
    let license = w
        .licenses(&token)
        .get_license(pb::GetLicenseRequest {
            tenant: Some(by_id(&a.id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(license.tenant_id, a.id);
    let keys = w
        .tokens(&token)
        .list_api_keys(pb::ListApiKeysRequest::default())
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k.tenant_id == a.id),
        "{keys:?}"
    );
    let listed = w
        .tenants(&token)
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tenants;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, a.id);
    w.cleanup().await;
}
