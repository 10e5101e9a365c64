use keel_bus::StreamKind;
use keel_proto::v1 as pb;
use keel_store::testing::eventually;
use std::time::Duration;

use crate::harness::{World, by_id, by_slug, slug};

fn status(t: &pb::Tenant) -> pb::TenantStatus {
    pb::TenantStatus::try_from(t.status).unwrap()
}

#[tokio::test]
async fn full_lifecycle_over_grpc_with_events_and_audit_records() {
    let w = World::start().await;
    let s = slug();
    let created = w.create(&s, "owner@acme.example").await;
    assert_eq!(status(&created), pb::TenantStatus::Pending);
    assert_eq!(created.entitlements.as_ref().unwrap().retention_days, 7);
    let id = created.id.clone();
    let mut api = w.tenants(&w.operator);
    let lc = |id: &str| pb::TenantLifecycleRequest {
        tenant: Some(by_id(id)),
    };

    // PENDING → ACTIVE is not a legal jump, and the error names the current status.
    let err = api.mark_provisioned(lc(&id)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("PENDING"), "{}", err.message());

    // PROVISIONING → FAILED → PROVISIONING (retry) → ACTIVE
    assert_eq!(
        status(&api.mark_provisioning(lc(&id)).await.unwrap().into_inner()),
        pb::TenantStatus::Provisioning
    );
    let failed = api
        .mark_failed(pb::MarkFailedRequest {
            tenant: Some(by_id(&id)),
            reason: "database step".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status(&failed), failed.status_reason.as_str()),
        (pb::TenantStatus::Failed, "database step")
    );
    api.mark_provisioning(lc(&id)).await.unwrap();
    assert_eq!(
        status(&api.mark_provisioned(lc(&id)).await.unwrap().into_inner()),
        pb::TenantStatus::Active
    );

    let t = api
        .change_tier(pb::ChangeTierRequest {
            tenant: Some(by_slug(&s)),
            tier: pb::Tier::Business as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.tier, pb::Tier::Business as i32);
    assert!(t.entitlements.unwrap().features.contains(&"sso".to_owned()));
    let t = api
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant: Some(by_id(&id)),
            reason: "unpaid invoice".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&t), pb::TenantStatus::Suspended);
    let t = api
        .reactivate_tenant(pb::ReactivateTenantRequest {
            tenant: Some(by_id(&id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&t), pb::TenantStatus::Active);
    let t = api
        .delete_tenant(pb::DeleteTenantRequest {
            tenant: Some(by_id(&id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&t), pb::TenantStatus::Deleting);
    let t = api.mark_deleted(lc(&id)).await.unwrap().into_inner();
    assert_eq!(status(&t), pb::TenantStatus::Deleted);
    let err = api
        .reactivate_tenant(pb::ReactivateTenantRequest {
            tenant: Some(by_id(&id)),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("DELETED"));

    // Every change is an event on KEEL_EVENTS under the tenant's subject, in order.
    let expected = [
        "TenantCreated",
        "TenantProvisioningStarted",
        "TenantProvisioningFailed",
        "TenantProvisioningStarted",
        "TenantProvisioned",
        "TenantActivated",
        "TenantTierChanged",
        "LicenseIssued",
        "TenantSuspended",
        "TenantReactivated",
        "TenantDeletionRequested",
        "TenantDeleted",
    ];
    let prefix = format!("{}keel.evt.{id}.tenant.", w.bus.subject_prefix());
    let events = eventually("events relayed", Duration::from_secs(20), || async {
        let evs: Vec<String> = w
            .stream(StreamKind::Events)
            .await
            .into_iter()
            .filter(|(s, _)| s.starts_with(&prefix))
            .map(|(s, _)| s[prefix.len()..].to_owned())
            .collect();
        (evs.len() >= expected.len()).then_some(evs)
    })
    .await;
    assert_eq!(events, expected);
    // The envelope carries who did it and the schema-valid data.
    let (_, created_env) = w
        .stream(StreamKind::Events)
        .await
        .into_iter()
        .find(|(s, _)| s.ends_with("TenantCreated"))
        .unwrap();
    assert_eq!(created_env["type"], "keel.tenant.TenantCreated.v1");
    assert_eq!(created_env["actor"], "user:operator-bootstrap");
    assert_eq!(created_env["data"]["slug"], s.as_str());
    assert!(created_env["traceparent"].as_str().unwrap().starts_with("00-"));

    // Every envelope and its data conform to the published schemas (schemas/).
    let envelope_schema =
        jsonschema::validator_for(&serde_json::from_str(keel_events::catalog::ENVELOPE_SCHEMA).unwrap())
            .unwrap();
    for (subject, env) in w.stream(StreamKind::Events).await {
        assert!(
            envelope_schema.is_valid(&env),
            "{subject}: envelope does not match schemas/envelope.json"
        );
        let entry = keel_events::catalog::lookup_type(env["type"].as_str().unwrap())
            .expect("event type in the catalog");
        let data_schema = jsonschema::validator_for(&entry.schema_json().unwrap()).unwrap();
        let errors: Vec<String> = data_schema
            .iter_errors(&env["data"])
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{subject}: data does not match {}: {errors:?}",
            entry.schema_path()
        );
    }

    // And an audit record per state-changing call on KEEL_AUDIT.
    let audit = eventually("audit records", Duration::from_secs(10), || async {
        let a = w.audit_of(&id).await;
        (a.len() >= 10).then_some(a)
    })
    .await;
    let actions: Vec<&str> = audit.iter().map(|r| r["action"].as_str().unwrap()).collect();
    for a in [
        "create",
        "mark-provisioning",
        "mark-failed",
        "mark-provisioned",
        "change-tier",
        "suspend",
        "reactivate",
        "delete",
        "mark-deleted",
    ] {
        assert!(actions.contains(&a), "no audit record for {a}: {actions:?}");
    }
    let failed = audit
        .iter()
        .find(|r| r["result"] == "failed")
        .expect("the illegal transition is audited as failed");
    assert_eq!(failed["action"], "mark-provisioned");
    assert!(
        audit
            .iter()
            .all(|r| r["actor"] == "user:operator-bootstrap" && r["source_ip"] == "127.0.0.1")
    );
    w.cleanup().await;
}

#[tokio::test]
async fn create_is_idempotent_on_request_id_and_slugs_are_unique() {
    let w = World::start().await;
    let s = slug();
    let first = w.create(&s, "owner@acme.example").await;
    let before = w.event_count().await;
    let again = w.create(&s, "owner@acme.example").await;
    assert_eq!(again.id, first.id);
    assert_eq!(w.event_count().await, before, "a repeated request writes nothing");
    let err = w
        .tenants(&w.operator)
        .create_tenant(pb::CreateTenantRequest {
            name: "Other".into(),
            slug: s.clone(),
            tier: pb::Tier::Mid as i32,
            owner_email: "x@other.example".into(),
            request_id: "another-request".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains("slug"));
    w.cleanup().await;
}

#[tokio::test]
async fn members_roles_and_the_last_owner() {
    let w = World::start().await;
    let t = w.create(&slug(), "owner@acme.example").await;
    let mut api = w.tenants(&w.operator);
    let member = api
        .invite_member(pb::InviteMemberRequest {
            tenant: Some(by_id(&t.id)),
            email: "dev@acme.example".into(),
            role: pb::Role::Developer as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let dup = api
        .invite_member(pb::InviteMemberRequest {
            tenant: Some(by_id(&t.id)),
            email: "DEV@acme.example".into(),
            role: pb::Role::Viewer as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
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
    let owner = members.iter().find(|m| m.role == pb::Role::Owner as i32).unwrap();
    assert_eq!(owner.email, "owner@acme.example");
    let err = api
        .remove_member(pb::RemoveMemberRequest {
            tenant: Some(by_id(&t.id)),
            member_id: owner.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    api.change_member_role(pb::ChangeMemberRoleRequest {
        tenant: Some(by_id(&t.id)),
        member_id: member.id.clone(),
        role: pb::Role::Owner as i32,
    })
    .await
    .unwrap();
    api.remove_member(pb::RemoveMemberRequest {
        tenant: Some(by_id(&t.id)),
        member_id: owner.id.clone(),
    })
    .await
    .unwrap();
    let members = api
        .list_members(pb::ListMembersRequest {
            tenant: Some(by_id(&t.id)),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    assert_eq!(members.len(), 1);
    assert_eq!(
        (members[0].email.as_str(), members[0].role),
        ("dev@acme.example", pb::Role::Owner as i32)
    );
    w.cleanup().await;
}

#[tokio::test]
async fn list_members_pages_in_id_order() {
    let w = World::start().await;
    let t = w.create(&slug(), "owner@acme.example").await;
    let mut api = w.tenants(&w.operator);
    for i in 0..4 {
        api.invite_member(pb::InviteMemberRequest {
            tenant: Some(by_id(&t.id)),
            email: format!("m{i}@acme.example"),
            role: pb::Role::Viewer as i32,
        })
        .await
        .unwrap();
    }
    let list = |size: u32, token: String| pb::ListMembersRequest {
        tenant: Some(by_id(&t.id)),
        page: Some(pb::PageRequest {
            page_size: size,
            page_token: token,
        }),
    };
    let all = api
        .list_members(list(0, String::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.members.len(), 5);
    assert_eq!(
        all.page.unwrap().next_page_token,
        "",
        "one default page holds five"
    );
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let r = api
            .list_members(list(2, token.clone()))
            .await
            .unwrap()
            .into_inner();
        assert!(r.members.len() <= 2);
        seen.extend(r.members.into_iter().map(|m| m.id));
        pages += 1;
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "members come in id order");
    let expected: Vec<String> = all.members.into_iter().map(|m| m.id).collect();
    assert_eq!((seen, pages), (expected, 3));
    for (req, field) in [
        (list(501, String::new()), "page.page_size"),
        (list(u32::MAX, String::new()), "page.page_size"),
        (list(2, "!!garbage".into()), "page.page_token"),
        (list(2, "A".repeat(100_000)), "page.page_token"),
    ] {
        let e = api.list_members(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{field}");
        assert!(e.message().starts_with(&format!("{field}:")), "{}", e.message());
        let bad = tonic_types::StatusExt::get_details_bad_request(&e).unwrap();
        assert_eq!(bad.field_violations[0].field, field);
    }
    w.cleanup().await;
}

#[tokio::test]
async fn list_tenants_pages_and_a_tenant_sees_only_itself() {
    let w = World::start().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(w.create(&slug(), "o@acme.example").await.id);
    }
    let mut api = w.tenants(&w.operator);
    // The view is projected from the stream: wait for it.
    eventually("view has all tenants", Duration::from_secs(20), || {
        let mut api = api.clone();
        async move {
            let r = api
                .list_tenants(pb::ListTenantsRequest {
                    page: Some(pb::PageRequest {
                        page_size: 500,
                        page_token: String::new(),
                    }),
                    status: 0,
                })
                .await
                .ok()?;
            (r.into_inner().tenants.len() == 5).then_some(())
        }
    })
    .await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = api
            .list_tenants(pb::ListTenantsRequest {
                page: Some(pb::PageRequest {
                    page_size: 2,
                    page_token: token.clone(),
                }),
                status: 0,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(r.tenants.into_iter().map(|t| t.id));
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    ids.sort();
    assert_eq!(seen, ids);
    let own = w.tenant_token(&ids[0], &["tenant:read"]).await;
    let r = w
        .tenants(&own)
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.tenants.iter().map(|t| t.id.clone()).collect::<Vec<_>>(),
        vec![ids[0].clone()]
    );
    w.cleanup().await;
}
