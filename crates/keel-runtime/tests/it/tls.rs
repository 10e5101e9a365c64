//! A service over TLS: clients trusting the CA get through, with or without a certificate of
//! their own; a plaintext client and a client trusting another CA are refused, on gRPC and on
//! HTTP; a service with no TLS material does not start.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_runtime::grpc::{self, HEALTH_SERVICE};
use keel_runtime::tls::local;
use keel_runtime::{Health, Service, Tls};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(10);

fn ca_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "keel-runtime-tls-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    local::ensure(&dir, &["tenant", "timeline"]).unwrap();
    dir
}

fn config(vars: Vec<(String, String)>) -> keel_runtime::Result<keel_runtime::Config> {
    config_with(vars)
}

async fn health_of(tls: &Tls, url: &str) -> Result<i32, String> {
    let endpoint = tls.endpoint(url, "url").map_err(|e| e.to_string())?;
    let channel = tokio::time::timeout(LIMIT, endpoint.connect())
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: HEALTH_SERVICE.to_owned(),
        })
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(reply.into_inner().status)
}

fn ca(dir: &Path) -> PathBuf {
    dir.join(local::CA_CERT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_to_clients_of_its_ca_only() {
    keel_runtime::telemetry::init_for_tests();
    let dir = ca_dir("mesh");
    let other = ca_dir("other");
    let rt = Service::from_config(config(vec![("KEEL_TLS_DIR".into(), dir.display().to_string())]).unwrap())
        .unwrap();
    assert!(rt.tls().is_on());
    let introspection = rt
        .grpc_health_and_reflection(tonic_health::pb::FILE_DESCRIPTOR_SET, &[HEALTH_SERVICE])
        .await
        .unwrap();
    let router = introspection.add_to(&mut rt.grpc_server().unwrap()).unwrap();
    let (grpc_listener, grpc_addr) = grpc::bind(rt.config.grpc_addr).await.unwrap();
    let (http_listener, http_addr) = grpc::bind(rt.config.http_addr).await.unwrap();
    let shutdown = rt.shutdown();
    let served = tokio::spawn(rt.serve_on(
        grpc_listener,
        http_listener,
        router,
        Health::new(),
        axum::Router::new(),
    ));
    let https = format!("https://{grpc_addr}");

    // A token-bearing client: only the CA.
    let client = Tls::client_of(&ca(&dir)).unwrap();
    assert_eq!(
        health_of(&client, &https).await,
        Ok(ServingStatus::Serving as i32)
    );
    // A service calling another: presents its own certificate (mTLS).
    let service = Tls::load(
        &ca(&dir),
        Some((
            &dir.join(local::cert_file("timeline")),
            &dir.join(local::key_file("timeline")),
        )),
    )
    .unwrap();
    assert_eq!(
        health_of(&service, &https).await,
        Ok(ServingStatus::Serving as i32)
    );
    // HTTPS for /livez, /readyz, /metrics.
    let (status, body) = keel_runtime::tls::http_get(&client, http_addr, "/livez")
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));

    // Plaintext is refused on both ports.
    let plain = health_of(&Tls::insecure(), &format!("http://{grpc_addr}")).await;
    assert!(plain.is_err(), "a plaintext gRPC client got through: {plain:?}");
    let plain_http = tokio::time::timeout(
        LIMIT,
        keel_runtime::tls::http_get(&Tls::insecure(), http_addr, "/livez"),
    )
    .await
    .expect("the HTTPS port answers a plaintext request at once");
    assert!(
        !matches!(plain_http, Ok((200, _))),
        "a plaintext HTTP client got through: {plain_http:?}"
    );
    // A client trusting another CA refuses the server's certificate.
    let stranger = Tls::client_of(&ca(&other)).unwrap();
    let refused = health_of(&stranger, &https).await.unwrap_err();
    assert!(
        refused.to_lowercase().contains("certificate") || refused.contains("invalid peer"),
        "{refused}"
    );
    assert!(
        keel_runtime::tls::http_get(&stranger, http_addr, "/livez")
            .await
            .is_err()
    );
    // A client certificate from another CA is refused by the server even though the client
    // trusts the server.
    let forged = Tls::load(
        &ca(&dir),
        Some((
            &other.join(local::cert_file("timeline")),
            &other.join(local::key_file("timeline")),
        )),
    )
    .unwrap();
    assert!(
        health_of(&forged, &https).await.is_err(),
        "a foreign client certificate was accepted"
    );

    shutdown.trigger();
    within(LIMIT, "drained shutdown", served).await.unwrap().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}

#[test]
fn a_service_without_tls_material_does_not_start_naming_the_settings() {
    let err = Service::from_config(config(vec![]).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("KEEL_TLS_DIR") && err.contains("KEEL_TLS_INSECURE"),
        "{err}"
    );
    let missing = std::env::temp_dir().join("keel-no-such-tls-dir");
    let err =
        Service::from_config(config(vec![("KEEL_TLS_DIR".into(), missing.display().to_string())]).unwrap())
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("KEEL_TLS_CA") && err.contains("keel-no-such-tls-dir"),
        "{err}"
    );
}
