//! Row-level security on every tenant-keyed table: as `keel_provisioning_reader`, another
//! tenant's rows are invisible whatever the query asks; GetStatus and ListRuns of one tenant read
//! through it.

use std::time::Duration;

use keel_e2e::Bearer;
use keel_e2e::mesh::Part;
use keel_e2e::rls;
use keel_proto::v1 as pb;
use keel_proto::v1::provisioning_service_client::ProvisioningServiceClient;

use crate::harness::{Mesh, by_id, slug};

const ROLE: &str = keel_provisioning::api::READER_ROLE;

/// A token of `tenant` with `tenant:read`, through a service account's API key.
async fn tenant_token(mesh: &Mesh, tenant: &str) -> String {
    let created = mesh
        .e2e
        .tokens()
        .create_service_account(pb::CreateServiceAccountRequest {
            tenant: Some(by_id(tenant)),
            name: "reader".into(),
            scopes: vec!["tenant:read".into()],
        })
        .await
        .unwrap()
        .into_inner();
    keel_proto::v1::token_service_client::TokenServiceClient::new(
        mesh.e2e.proc(Part::Tenant).channel().await.unwrap(),
    )
    .exchange_api_key(pb::ExchangeApiKeyRequest {
        api_key: created.api_key,
        scopes: vec![],
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

#[tokio::test]
async fn the_reader_role_sees_one_tenant_in_every_tenant_table() {
    let mesh = Mesh::start("", false).await;
    let a = mesh.create(&slug()).await;
    let b = mesh.create(&slug()).await;
    for t in [&a, &b] {
        mesh.wait_status(&t.id, pb::TenantStatus::Active, Duration::from_secs(60))
            .await;
    }
    let pool = mesh.e2e.pool_of(Part::Provisioning).await;
    for table in ["events", "tenant_info", "run_requests", "tenant_credentials"] {
        rls::assert_isolated(&pool, ROLE, table, &a.id, &b.id).await;
    }
    assert_eq!(rls::unprotected_tables(&pool, ROLE).await, Vec::<String>::new());
    for sql in [
        "DELETE FROM run_requests",
        "UPDATE tenant_info SET suspended = true",
        "SELECT count(*) FROM snapshots",
    ] {
        assert!(!rls::permitted(&pool, ROLE, &a.id, sql).await, "{sql}");
    }

    // GetStatus and ListRuns of one tenant read as its reader and still answer in full.
    let token = tenant_token(&mesh, &a.id).await;
    let mut api = ProvisioningServiceClient::with_interceptor(
        mesh.e2e.proc(Part::Provisioning).channel().await.unwrap(),
        Bearer(Some(token)),
    );
    let status = api
        .get_status(pb::GetProvisioningStatusRequest {
            tenant_id: a.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (status.tenant_id.as_str(), status.status.as_str()),
        (a.id.as_str(), "completed")
    );
    assert!(!status.steps.is_empty() && status.steps.iter().all(|s| s.status == "succeeded"));
    let runs = api
        .list_runs(pb::ListRunsRequest {
            tenant_id: a.id.clone(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].run_id.as_str(), runs[0].status.as_str()),
        (status.run_id.as_str(), "completed")
    );
    let e = api
        .get_status(pb::GetProvisioningStatusRequest {
            tenant_id: b.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    // The operator still lists every tenant's runs, as the service's own login.
    let all = mesh
        .provisioning()
        .await
        .list_runs(pb::ListRunsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .runs;
    assert!(all.iter().any(|r| r.tenant_id == a.id) && all.iter().any(|r| r.tenant_id == b.id));
    mesh.cleanup().await;
}
