//! The mesh over TLS end to end: every service process serves gRPC and HTTP over TLS with the
//! mesh CA, services call each other presenting their certificates, provisioning fetches the
//! JWKS over HTTPS. A plaintext client and a client trusting another CA are refused by each.

use std::time::Duration;

use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh, Part};
use keel_proto::v1 as pb;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use keel_runtime::Tls;
use keel_runtime::tls::local;

const LIMIT: Duration = Duration::from_secs(20);

async fn connect(tls: &Tls, url: &str) -> Result<tonic::transport::Channel, String> {
    let endpoint = tls.endpoint(url, "url").map_err(|e| e.to_string())?;
    tokio::time::timeout(LIMIT, endpoint.connect())
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test]
async fn every_service_speaks_tls_only_and_only_to_clients_of_its_ca() {
    let mesh = Mesh::builder().provisioning(&[]).timeline(&[]).start().await;
    let other = std::env::temp_dir().join(format!("keel-e2e-other-ca-{}", mesh.token));
    local::ensure(&other, &["tenant"]).unwrap();
    let stranger = Tls::client_of(&other.join(local::CA_CERT)).unwrap();
    let ours = keel_store::testing::tls_client();

    // Through the CA: the tenant service serves the operator, and the timeline (which verifies
    // the operator's token against the JWKS it fetched over HTTPS) answers too.
    let tenant = mesh.proc(Part::Tenant);
    let channel = connect(&ours, &tenant.grpc_url()).await.unwrap();
    let mut tenants = TenantServiceClient::with_interceptor(channel, Bearer(Some(mesh.operator.clone())));
    tenants
        .list_tenants(pb::ListTenantsRequest::default())
        .await
        .expect("the operator lists tenants over TLS");
    let timeline = mesh.proc(Part::Timeline);
    let channel = connect(&ours, &timeline.grpc_url()).await.unwrap();
    let mut api = TimelineServiceClient::with_interceptor(channel, Bearer(Some(mesh.operator.clone())));
    let err = api
        .get_event(pb::GetEventRequest {
            tenant_id: "t-none".into(),
            event_id: "e-none".into(),
        })
        .await
        .expect_err("no such event");
    assert_ne!(
        err.code(),
        tonic::Code::Unauthenticated,
        "the timeline could not verify the token: {err}"
    );

    for part in [Part::Tenant, Part::Provisioning, Part::Timeline] {
        let proc = mesh.proc(part);
        let plain = connect(&Tls::insecure(), &format!("http://{}", proc.grpc)).await;
        let plain = match plain {
            // A plaintext HTTP/2 connection may open; no call gets through it.
            Ok(channel) => tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        assert!(plain.is_err(), "{part:?} answered a plaintext gRPC client");
        let refused = connect(&stranger, &proc.grpc_url()).await.unwrap_err();
        assert!(
            refused.to_lowercase().contains("certificate"),
            "{part:?}: {refused}"
        );
        let (status, _) = proc.http_get("/readyz").await.unwrap();
        assert_eq!(status, 200, "{part:?} /readyz over TLS");
        let plain_http = keel_runtime::tls::http_get(&Tls::insecure(), proc.http, "/readyz").await;
        assert!(
            !matches!(plain_http, Ok((200, _))),
            "{part:?} served plaintext HTTP: {plain_http:?}"
        );
        assert!(
            keel_runtime::tls::http_get(&stranger, proc.http, "/readyz")
                .await
                .is_err(),
            "{part:?} HTTP accepted by a client of another CA"
        );
    }
    std::fs::remove_dir_all(&other).unwrap();
    mesh.cleanup().await;
}
