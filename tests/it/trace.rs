//! One trace from a tenant's creation over gRPC to ACTIVE, through provisioning's saga and the
//! tenant service's lifecycle calls, as the tenant's timeline shows it.

use std::time::Duration;

use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh, Part};
use keel_proto::v1 as pb;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use keel_store::testing::eventually;

#[tokio::test]
async fn a_created_tenant_becomes_active_under_one_trace_across_the_mesh() {
    let mesh = Mesh::builder().provisioning(&[]).timeline(&[]).start().await;
    let slug = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let a = mesh.create_tenant(&slug, pb::Tier::Mid).await;
    eventually("the tenant ACTIVE", Duration::from_secs(90), || async {
        let t = mesh
            .tenants()
            .get_tenant(pb::GetTenantRequest {
                tenant: Some(pb::TenantRef {
                    r#ref: Some(pb::tenant_ref::Ref::Id(a.id.clone())),
                }),
            })
            .await
            .ok()?
            .into_inner();
        (t.status == pb::TenantStatus::Active as i32).then_some(())
    })
    .await;

    let reader = mesh
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            tenant_id: a.id.clone(),
            subject: "reader".into(),
            scopes: vec!["timeline:read".into()],
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let tl = TimelineServiceClient::with_interceptor(
        mesh.proc(Part::Timeline).channel().await.unwrap(),
        Bearer(Some(reader)),
    );
    let created = eventually("TenantCreated in the timeline", Duration::from_secs(30), || {
        let mut tl = tl.clone();
        let id = a.id.clone();
        async move {
            let r = tl
                .query_timeline(pb::QueryTimelineRequest {
                    tenant_id: id,
                    query: "kind:tenant.TenantCreated".into(),
                    ..Default::default()
                })
                .await
                .ok()?;
            r.into_inner().events.into_iter().next()
        }
    })
    .await;
    assert_eq!(created.trace_id.len(), 32);
    let kinds = eventually(
        "the whole chain under the create trace",
        Duration::from_secs(30),
        || {
            let mut tl = tl.clone();
            let (id, trace) = (a.id.clone(), created.trace_id.clone());
            async move {
                let ev = tl
                    .trace_events(pb::TraceEventsRequest {
                        tenant_id: id,
                        trace_id: trace,
                        page: None,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .events;
                let kinds: Vec<String> = ev.into_iter().map(|e| e.kind).collect();
                (kinds.contains(&"tenant.TenantActivated".to_owned())
                    && kinds.contains(&"provisioning.ProvisioningCompleted".to_owned()))
                .then_some(kinds)
            }
        },
    )
    .await;
    // The create call's audit record carries the trace too; it commits with TenantCreated, in
    // the same statement, so the two may come in either order. Of the events, TenantCreated is first.
    assert!(kinds.contains(&"audit.tenant.create".to_owned()), "{kinds:?}");
    assert_eq!(
        kinds
            .iter()
            .find(|k| !k.starts_with("audit."))
            .map(String::as_str),
        Some("tenant.TenantCreated")
    );
    for step in [
        "provisioning.ProvisioningStarted",
        "provisioning.StepSucceeded",
        "tenant.TenantProvisioningStarted",
        "tenant.LicenseIssued",
        "provisioning.ProvisioningCompleted",
    ] {
        assert!(
            kinds.contains(&step.to_owned()),
            "{step} missing from the trace: {kinds:?}"
        );
    }
    // begin, database, messaging, quotas, manifests, license, activate: once each.
    assert_eq!(
        kinds
            .iter()
            .filter(|k| *k == "provisioning.StepSucceeded")
            .count(),
        7,
        "{kinds:?}"
    );
    mesh.cleanup().await;
}
