use std::time::Duration;

use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{Mesh, slug};

#[tokio::test]
async fn a_step_failing_twice_then_succeeding_completes_with_its_attempts_recorded() {
    let mesh = Mesh::start("quotas:2", false).await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    let run = mesh
        .provisioning()
        .await
        .get_status(pb::GetProvisioningStatusRequest {
            tenant_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let quotas = run.steps.iter().find(|s| s.name == "quotas").unwrap();
    assert_eq!((quotas.status.as_str(), quotas.attempts), ("succeeded", 3));
    assert!(
        quotas.last_error.contains("injected fault"),
        "{}",
        quotas.last_error
    );
    assert_eq!(mesh.resources(&t).await, [true; 6]);
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_permanent_failure_compensates_leaves_nothing_and_marks_the_tenant_failed() {
    let mesh = Mesh::start("manifests:permanent", false).await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Failed, Duration::from_secs(60))
        .await;
    let tenant = mesh
        .tenants()
        .await
        .get_tenant(pb::GetTenantRequest {
            tenant: Some(crate::harness::by_id(&t.id)),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        tenant.status_reason.contains("manifests"),
        "{}",
        tenant.status_reason
    );
    let run = eventually("run failed", Duration::from_secs(20), || async {
        let r = mesh
            .provisioning()
            .await
            .get_status(pb::GetProvisioningStatusRequest {
                tenant_id: t.id.clone(),
            })
            .await
            .ok()?
            .into_inner();
        (r.status == "failed").then_some(r)
    })
    .await;
    let compensated: Vec<&str> = run
        .steps
        .iter()
        .filter(|s| s.status == "compensated")
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(compensated, ["database", "messaging", "quotas", "manifests"]);
    assert_eq!(mesh.resources(&t).await, [false; 6], "something was left behind");
    mesh.cleanup().await;
}

#[tokio::test]
async fn sigkill_mid_saga_resumes_and_completes_without_duplicate_resources() {
    // The messaging step fails three times first, so the saga sits in backoff: kill it there.
    let mut mesh = Mesh::start("messaging:3", false).await;
    let t = mesh.create(&slug()).await;
    eventually("saga under way", Duration::from_secs(30), || async {
        let r = mesh
            .provisioning()
            .await
            .get_status(pb::GetProvisioningStatusRequest {
                tenant_id: t.id.clone(),
            })
            .await
            .ok()?
            .into_inner();
        r.steps
            .iter()
            .any(|s| s.name == "messaging" && s.attempts >= 1)
            .then_some(())
    })
    .await;
    mesh.kill_provisioning().await;
    assert_ne!(mesh.status(&t.id).await, pb::TenantStatus::Active);
    mesh.restart_provisioning("").await;
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(60))
        .await;
    assert_eq!(mesh.resources(&t).await, [true; 6]);
    // One role, one bucket, one consumer: nothing doubled by the resumed run.
    let names = mesh.names(&t);
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1")
        .bind(format!("{}%", names.schema))
        .fetch_one(&mesh.pool)
        .await
        .unwrap();
    assert_eq!(roles, 1);
    let mut kv = 0;
    let mut streams = mesh.bus.jetstream().stream_names();
    use futures::StreamExt;
    while let Some(Ok(name)) = streams.next().await {
        if name.contains(&names.kv_bucket) {
            kv += 1;
        }
    }
    assert_eq!(kv, 1);
    let run = mesh
        .provisioning()
        .await
        .get_status(pb::GetProvisioningStatusRequest {
            tenant_id: t.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(run.status, "completed");
    mesh.cleanup().await;
}
