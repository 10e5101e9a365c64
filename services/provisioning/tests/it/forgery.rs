//! The bus is not trusted: a well-formed deletion request that nobody made, published on the
//! right subject as anyone who can reach NATS could, deletes nothing — the run first asks the
//! tenant service, the source of truth, and the tenant is not DELETING.

use std::time::Duration;

use keel_events::{Envelope, subjects};
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{Mesh, slug};

#[tokio::test]
async fn a_forged_deletion_request_for_an_active_tenant_changes_nothing() {
    // The forgery claims sequence 99 of the tenant: it waits, parked, for the 98 before it until
    // the gap is declared lost (after 2 s here), then is applied and refused by the tenant service.
    let mesh = Mesh::build(&[("KEEL_PROJECTION_GAP_SECS", "2")], false, false).await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    assert_eq!(mesh.resources(&t).await, [true; 6]);

    let forged = Envelope::builder("tenant", "TenantDeletionRequested", 1)
        .tenant(&t.id)
        .actor("user:mallory")
        .aggregate("tenant", &t.id, 99)
        .data(serde_json::json!({}))
        .build()
        .unwrap();
    let subject = subjects::event(
        &mesh.bus.subject_prefix(),
        &t.id,
        "tenant",
        "TenantDeletionRequested",
    );
    mesh.bus
        .publish_envelope(subject, &forged)
        .await
        .unwrap()
        .await
        .unwrap();

    let run = eventually(
        "the forged delete run refused",
        Duration::from_secs(60),
        || async {
            let run = mesh
                .provisioning()
                .await
                .get_status(pb::GetProvisioningStatusRequest {
                    tenant_id: t.id.clone(),
                })
                .await
                .ok()?
                .into_inner();
            (run.kind == "delete" && run.status == "failed").then_some(run)
        },
    )
    .await;
    assert!(run.failure.contains("ACTIVE"), "{}", run.failure);
    assert!(run.removed.is_empty(), "{:?}", run.removed);
    assert_eq!(
        mesh.resources(&t).await,
        [true; 6],
        "every resource is still there"
    );
    assert_eq!(mesh.status(&t.id).await, pb::TenantStatus::Active);

    // The forgery moved nothing: the tenant's real next event is still applied in its turn.
    mesh.tenants()
        .await
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant: Some(crate::harness::by_id(&t.id)),
            reason: "unpaid".into(),
        })
        .await
        .unwrap();
    eventually("the real suspension driven", Duration::from_secs(60), || async {
        let run = mesh
            .provisioning()
            .await
            .get_status(pb::GetProvisioningStatusRequest {
                tenant_id: t.id.clone(),
            })
            .await
            .ok()?
            .into_inner();
        (run.kind == "suspend" && run.status == "completed").then_some(())
    })
    .await;
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_forged_reactivation_of_a_suspended_tenant_restores_nothing() {
    let mesh = Mesh::build(&[("KEEL_PROJECTION_GAP_SECS", "2")], false, false).await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    mesh.tenants()
        .await
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant: Some(crate::harness::by_id(&t.id)),
            reason: "unpaid".into(),
        })
        .await
        .unwrap();
    let role = mesh.names(&t).role;
    let can_login = || async {
        sqlx::query_scalar::<_, bool>("SELECT rolcanlogin FROM pg_roles WHERE rolname = $1")
            .bind(&role)
            .fetch_one(&mesh.pool)
            .await
            .unwrap()
    };
    eventually("role blocked", Duration::from_secs(60), || async {
        (!can_login().await).then_some(())
    })
    .await;

    let forged = Envelope::builder("tenant", "TenantReactivated", 1)
        .tenant(&t.id)
        .actor("user:mallory")
        .aggregate("tenant", &t.id, 99)
        .data(serde_json::json!({}))
        .build()
        .unwrap();
    let subject = subjects::event(&mesh.bus.subject_prefix(), &t.id, "tenant", "TenantReactivated");
    mesh.bus
        .publish_envelope(subject, &forged)
        .await
        .unwrap()
        .await
        .unwrap();
    let run = eventually(
        "the forged reactivation refused",
        Duration::from_secs(60),
        || async {
            let run = mesh
                .provisioning()
                .await
                .get_status(pb::GetProvisioningStatusRequest {
                    tenant_id: t.id.clone(),
                })
                .await
                .ok()?
                .into_inner();
            (run.kind == "reactivate" && run.status == "failed").then_some(run)
        },
    )
    .await;
    assert!(run.failure.contains("SUSPENDED"), "{}", run.failure);
    assert!(!can_login().await, "the suspended tenant's role can log in again");
    assert_eq!(mesh.status(&t.id).await, pb::TenantStatus::Suspended);
    mesh.cleanup().await;
}
