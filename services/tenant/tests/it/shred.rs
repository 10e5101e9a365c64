use keel_proto::v1 as pb;

use crate::harness::{World, by_id, slug};

#[tokio::test]
async fn after_deletion_no_member_email_can_be_recovered_from_the_event_store() {
    let w = World::start().await;
    let t = w.create(&slug(), "owner.person@shred.example").await;
    let mut api = w.tenants(&w.operator);
    api.invite_member(pb::InviteMemberRequest {
        tenant: Some(by_id(&t.id)),
        email: "second.person@shred.example".into(),
        role: pb::Role::Admin as i32,
    })
    .await
    .unwrap();
    // Before: readable through the API, never in plaintext in the store.
    let members = api
        .list_members(pb::ListMembersRequest {
            tenant: Some(by_id(&t.id)),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert!(members.iter().any(|m| m.email == "second.person@shred.example"));
    let plaintext: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text ILIKE '%person@shred%' OR metadata::text ILIKE '%person@shred%'")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(plaintext, 0);

    api.delete_tenant(pb::DeleteTenantRequest {
        tenant: Some(by_id(&t.id)),
    })
    .await
    .unwrap();

    // The ciphertexts are still in the append-only store, but their key is gone.
    let encrypted: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_id = $1 AND event_type IN ('TenantCreated', 'MemberInvited')",
    )
    .bind(&t.id)
    .fetch_all(&w.pool)
    .await
    .unwrap();
    assert_eq!(encrypted.len(), 2);
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_data_keys WHERE tenant_id = $1")
        .bind(&t.id)
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(keys, 0, "the tenant's data key is destroyed");
    // No other key can open them either: try every key that remains, with the real master key.
    let master = keel_tenant::crypto::MasterKey::from_setting(Some(crate::harness::MASTER_KEY)).unwrap();
    let data_keys = keel_tenant::crypto::DataKeys::new(w.pool.clone(), master);
    let others: Vec<String> = sqlx::query_scalar("SELECT tenant_id FROM tenant_data_keys")
        .fetch_all(&w.pool)
        .await
        .unwrap();
    for payload in &encrypted {
        let enc = payload
            .get("TenantCreated")
            .map(|e| &e["owner_email_enc"])
            .or_else(|| payload.get("MemberInvited").map(|e| &e["email_enc"]))
            .unwrap();
        let enc: keel_tenant::domain::Encrypted = serde_json::from_value(enc.clone()).unwrap();
        for other in &others {
            let key = data_keys.get(other).await.unwrap().unwrap();
            assert!(key.decrypt(&enc).is_err());
        }
    }
    let members = api
        .list_members(pb::ListMembersRequest {
            tenant: Some(by_id(&t.id)),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 2);
    assert!(members.iter().all(|m| m.email.is_empty()), "{members:?}");
    w.cleanup().await;
}
