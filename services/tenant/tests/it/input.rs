use keel_proto::v1 as pb;

use crate::harness::{World, by_id, slug};

fn create(name: &str, slug: &str, tier: i32, email: &str) -> pb::CreateTenantRequest {
    pb::CreateTenantRequest {
        name: name.into(),
        slug: slug.into(),
        tier,
        owner_email: email.into(),
        request_id: uuid::Uuid::new_v4().to_string(),
    }
}

async fn rows(w: &World) -> (i64, i64) {
    let creates: i64 = sqlx::query_scalar("SELECT count(*) FROM tenant_creates")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    (w.event_count().await, creates)
}

#[tokio::test]
async fn bad_input_is_invalid_argument_naming_the_field_and_writes_nothing() {
    let w = World::start().await;
    let t = w.create(&slug(), "o@o.example").await;
    let before = rows(&w).await;
    let mut api = w.tenants(&w.operator);
    let low = pb::Tier::Low as i32;
    let cases: Vec<(pb::CreateTenantRequest, &str)> = vec![
        (create("", &slug(), low, "a@b.example"), "name"),
        (
            create(&"x".repeat(10 * 1024), &slug(), low, "a@b.example"),
            "name",
        ),
        (create("Acme", "Not A Slug!", low, "a@b.example"), "slug"),
        (create("Acme", &slug(), 99, "a@b.example"), "tier"),
        (create("Acme", &slug(), 0, "a@b.example"), "tier"),
        (create("Acme", &slug(), low, "not-an-email"), "owner_email"),
        (create("Acme", &slug(), low, "a@b"), "owner_email"),
        (
            pb::CreateTenantRequest {
                request_id: String::new(),
                ..create("Acme", &slug(), low, "a@b.example")
            },
            "request_id",
        ),
    ];
    for (req, field) in cases {
        let e = api.create_tenant(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().starts_with(&format!("{field}:")),
            "expected the message to name {field}: {}",
            e.message()
        );
        // The standard rich error model: a google.rpc.BadRequest in grpc-status-details-bin.
        let bad = tonic_types::StatusExt::get_details_bad_request(&e)
            .unwrap_or_else(|| panic!("{field}: no BadRequest in the status details: {e:?}"));
        assert_eq!(bad.field_violations.len(), 1, "{field}");
        assert_eq!(bad.field_violations[0].field, field);
    }
    let e = api
        .list_tenants(pb::ListTenantsRequest {
            page: Some(pb::PageRequest {
                page_size: 1_000_000,
                page_token: String::new(),
            }),
            status: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().starts_with("page.page_size:"), "{}", e.message());
    let e = api
        .list_tenants(pb::ListTenantsRequest {
            page: Some(pb::PageRequest {
                page_size: 10,
                page_token: "!!garbage".into(),
            }),
            status: 0,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("page.page_token:"), "{}", e.message());
    let e = api
        .invite_member(pb::InviteMemberRequest {
            tenant: Some(by_id(&t.id)),
            email: "bad".into(),
            role: pb::Role::Admin as i32,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("email:"), "{}", e.message());
    let e = api
        .invite_member(pb::InviteMemberRequest {
            tenant: Some(by_id(&t.id)),
            email: "ok@o.example".into(),
            role: 42,
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("role:"), "{}", e.message());
    let e = api
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant: Some(by_id(&t.id)),
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("reason:"), "{}", e.message());
    let e = api
        .get_tenant(pb::GetTenantRequest { tenant: None })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("tenant:"), "{}", e.message());
    let e = api
        .get_tenant(pb::GetTenantRequest {
            tenant: Some(by_id("a.b>c")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        rows(&w).await,
        before,
        "nothing may be written by a rejected request"
    );
    w.cleanup().await;
}
