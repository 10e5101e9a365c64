//! Retry is idempotent on its request id, whichever replica answers.

use std::time::Duration;

use keel_e2e::mesh::Part;
use keel_proto::v1 as pb;
use keel_store::testing::eventually;
use tonic::Code;

use crate::harness::{Mesh, slug};

fn retry(run_id: &str, request_id: &str) -> pb::RetryRunRequest {
    pb::RetryRunRequest {
        run_id: run_id.into(),
        request_id: request_id.into(),
    }
}

#[tokio::test]
async fn a_repeated_retry_starts_one_run_whichever_replica_answers() {
    let mesh = Mesh::replicated(&[("KEEL_PROVISIONING_FAULTS", "manifests:permanent")]).await;
    let t = mesh.create(&slug()).await;
    mesh.wait_status(&t.id, pb::TenantStatus::Failed, Duration::from_secs(60))
        .await;
    let failed = mesh.wait_run(&t.id, "failed", Duration::from_secs(30)).await;
    let mut one = mesh.provisioning_of(Part::Provisioning).await.unwrap();
    let mut two = mesh.provisioning_of(Part::ProvisioningReplica).await.unwrap();

    for bad in ["", "has space", &"x".repeat(129)] {
        let err = one.retry(retry(&failed.run_id, bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().starts_with("request_id:"), "{}", err.message());
    }

    let first = one
        .retry(retry(&failed.run_id, "retry-1"))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(first.run_id, failed.run_id);
    let again = two
        .retry(retry(&failed.run_id, "retry-1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.run_id, first.run_id, "a repeated Retry started another run");
    // The key names one retry of one run.
    let err = one.retry(retry("another-run", "retry-1")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("request_id:"), "{}", err.message());

    // The same new request at both replicas at once: still one run.
    let (a, b) = tokio::join!(
        one.retry(retry(&failed.run_id, "retry-2")),
        two.retry(retry(&failed.run_id, "retry-2"))
    );
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert_eq!(a.run_id, b.run_id);
    assert_ne!(a.run_id, first.run_id);

    let pool = mesh.e2e.pool_of(Part::Provisioning).await;
    let retries: i64 = sqlx::query_scalar("SELECT count(*) FROM run_requests WHERE retry_of = $1")
        .bind(&failed.run_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(retries, 2);
    eventually("every run finished", Duration::from_secs(90), || async {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM run_requests WHERE tenant_id = $1 AND finished_at IS NULL",
        )
        .bind(&t.id)
        .fetch_one(&pool)
        .await
        .ok()?;
        (open == 0).then_some(())
    })
    .await;
    // The first run and the two retries, each once.
    assert_eq!(mesh.run_events(&t.id, "ProvisioningStarted").await, 3);
    assert_eq!(mesh.doubled_attempts(&t.id).await, 0);
    mesh.cleanup().await;
}
