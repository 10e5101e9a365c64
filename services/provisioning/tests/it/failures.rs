use std::time::{Duration, Instant};

use keel_bus::StreamKind;
use keel_e2e::mesh::Part;
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{Mesh, slug};

/// The steps of a provision run, in order.
const PROVISION_STEPS: [&str; 7] = [
    "begin",
    "database",
    "messaging",
    "quotas",
    "manifests",
    "license",
    "activate",
];

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
    // The manifests step writes its files, then fails for good: a failed step that left
    // things behind, which compensation must find and remove like the finished ones.
    let mesh = Mesh::start("manifests:permanent-after", false).await;
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
    // The half-done step's files were there, and are reported removed.
    assert!(
        run.removed.iter().any(|r| r.contains("helmrelease.yaml")),
        "{:?}",
        run.removed
    );
    assert_eq!(mesh.resources(&t).await, [false; 6], "something was left behind");
    mesh.cleanup().await;
}

#[tokio::test]
async fn an_undo_that_keeps_failing_is_retried_with_backoff_then_abandoned_with_an_alert_on_nats() {
    let mesh = Mesh::build(
        &[
            (
                "KEEL_PROVISIONING_FAULTS",
                "manifests:permanent,quotas.undo:permanent",
            ),
            ("KEEL_PROVISIONING_COMPENSATION_ATTEMPTS", "3"),
        ],
        false,
        false,
    )
    .await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Failed, Duration::from_secs(60))
        .await;
    let run = mesh.wait_run(&t.id, "failed", Duration::from_secs(30)).await;
    let quotas = run.steps.iter().find(|s| s.name == "quotas").unwrap();
    assert_eq!(quotas.status, "abandoned");
    assert!(
        quotas.last_error.contains("compensation"),
        "{}",
        quotas.last_error
    );
    assert!(
        run.failure.contains("compensation abandoned for quotas"),
        "{}",
        run.failure
    );
    // Three attempts, not a loop: two failures with a retry time, then the abandoning one.
    assert_eq!(mesh.run_events(&t.id, "CompensationFailed").await, 3);
    assert_eq!(mesh.run_events(&t.id, "CompensationAbandoned").await, 1);
    // The other steps were still undone; only the quota hash is left, for an operator.
    assert_eq!(
        mesh.resources(&t).await,
        [false, false, false, false, true, false]
    );
    // The alert is relayed to NATS like every other event.
    eventually(
        "CompensationAbandoned on KEEL_EVENTS",
        Duration::from_secs(30),
        || async {
            mesh.e2e
                .stream(StreamKind::Events)
                .await
                .iter()
                .any(|(_, body)| {
                    body["type"] == "keel.provisioning.CompensationAbandoned.v1"
                        && body["data"]["step"] == "quotas"
                        && body["data"]["attempts"] == 3
                })
                .then_some(())
        },
    )
    .await;
    mesh.cleanup().await;
}

#[tokio::test]
async fn sigkill_between_each_steps_work_and_its_record_reruns_it_without_doubling_anything() {
    // Every step of the run exits the process after its first attempt's side effect and before
    // its StepSucceeded is recorded: seven crashes, each step done twice.
    let faults = PROVISION_STEPS.map(|s| format!("{s}:crash")).join(",");
    let mut mesh = Mesh::start(&faults, false).await;
    let t = mesh.create(&slug()).await;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut crashes = 0;
    loop {
        if mesh.provisioning_exited() {
            crashes += 1;
            mesh.restart_provisioning(&faults).await;
        } else if mesh
            .run_via(Part::Provisioning, &t.id)
            .await
            .is_some_and(|r| r.status == "completed")
        {
            // (No answer: the process is crashing; the next round restarts it.)
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run incomplete after {crashes} crashes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(crashes, PROVISION_STEPS.len());
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(30))
        .await;
    let run = mesh.run(&t.id).await;
    for s in &run.steps {
        // The crashed attempt (never recorded as done) and the one that re-ran it.
        assert_eq!((s.status.as_str(), s.attempts), ("succeeded", 2), "{}", s.name);
    }
    assert_eq!(mesh.resources(&t).await, [true; 6]);
    let names = mesh.names(&t);
    let roles: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1")
        .bind(format!("{}%", names.schema))
        .fetch_one(&mesh.pool)
        .await
        .unwrap();
    assert_eq!(roles, 1);
    // The remote steps re-ran against the tenant service without a second license or
    // lifecycle change.
    assert_eq!(mesh.tenant_events(&t.id, "LicenseIssued").await, 1);
    assert_eq!(mesh.tenant_events(&t.id, "TenantProvisioningStarted").await, 1);
    assert_eq!(mesh.tenant_events(&t.id, "TenantActivated").await, 1);
    assert_eq!(mesh.run_events(&t.id, "ProvisioningStarted").await, 1);
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_replica_killed_mid_run_loses_its_lease_and_the_other_resumes_the_run() {
    // Messaging fails five times first (about 6 s of backoff): the run is under way long
    // enough to kill whichever replica drives it.
    let mut mesh = Mesh::replicated(&[("KEEL_PROVISIONING_FAULTS", "messaging:5")]).await;
    let parts = [Part::Provisioning, Part::ProvisioningReplica];
    let t = mesh.create(&slug()).await;
    let holder = eventually("a replica drives the run", Duration::from_secs(30), || async {
        let holder = mesh.lease_holder(&t.id, &parts).await?;
        let run = mesh.run(&t.id).await;
        run.steps
            .iter()
            .any(|s| s.name == "messaging" && s.attempts >= 1 && s.status != "succeeded")
            .then_some(holder)
    })
    .await;
    mesh.e2e.proc_mut(holder).kill().await;
    let survivor = parts.into_iter().find(|p| *p != holder).unwrap();
    // The survivor claims the expired lease and resumes the run where its events say.
    let run = eventually(
        "the survivor completes the run",
        Duration::from_secs(60),
        || async {
            let r = mesh.run_via(survivor, &t.id).await?;
            (r.status == "completed").then_some(r)
        },
    )
    .await;
    mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(30))
        .await;
    let step = |name: &str| run.steps.iter().find(|s| s.name == name).unwrap().attempts;
    // Done before the kill, never again; messaging went on counting its attempts.
    assert_eq!((step("begin"), step("database")), (1, 1));
    assert_eq!(step("messaging"), 6);
    assert_eq!(mesh.run_events(&t.id, "ProvisioningStarted").await, 1);
    assert_eq!(mesh.tenant_events(&t.id, "LicenseIssued").await, 1);
    assert_eq!(mesh.resources(&t).await, [true; 6]);
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
