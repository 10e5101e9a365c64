//! `Service::serve_on`: gRPC health and reflection, HTTP routes, and the drain sequence.

use std::time::Duration;

use futures::StreamExt as _;
use keel_runtime::grpc::{self, HEALTH_SERVICE, REFLECTION_SERVICE, REFLECTION_SERVICE_V1ALPHA};
use keel_runtime::{Config, Health, Service};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::support::*;

const LIMIT: Duration = Duration::from_secs(10);

fn config() -> Config {
    // Plaintext here (and its warning); `tls.rs` serves the same over TLS.
    config_with(vec![("KEEL_TLS_INSECURE".to_owned(), "true".to_owned())]).unwrap()
}

fn health_request() -> HealthCheckRequest {
    HealthCheckRequest {
        service: HEALTH_SERVICE.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_until_shutdown_then_flips_readiness_and_drains() {
    keel_runtime::telemetry::init_for_tests();
    let rt = Service::from_config(config()).unwrap();
    let introspection = rt
        .grpc_health_and_reflection(tonic_health::pb::FILE_DESCRIPTOR_SET, &[HEALTH_SERVICE])
        .await
        .unwrap();
    let router = introspection.add_to(&mut rt.grpc_server().unwrap()).unwrap();
    let extra = axum::Router::new().route("/hello", axum::routing::get(|| async { "hi" }));
    let (grpc_listener, grpc_addr) = grpc::bind(rt.config.grpc_addr).await.unwrap();
    let (http_listener, http_addr) = grpc::bind(rt.config.http_addr).await.unwrap();
    let shutdown = rt.shutdown();
    let served = tokio::spawn(rt.serve_on(grpc_listener, http_listener, router, Health::new(), extra));

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());
    let status = health.check(health_request()).await.unwrap().into_inner().status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [HEALTH_SERVICE, REFLECTION_SERVICE, REFLECTION_SERVICE_V1ALPHA]
    );
    drop(replies);

    assert_eq!(http_get(http_addr, "/readyz").await.0, 200);
    assert_eq!(http_get(http_addr, "/hello").await, (200, "hi".to_owned()));

    // A streaming call stays in flight across shutdown, holding the drain open.
    let mut watch = health.watch(health_request()).await.unwrap().into_inner();
    let first = within(LIMIT, "first watch update", watch.next()).await;
    assert_eq!(first.unwrap().unwrap().status, ServingStatus::Serving as i32);

    shutdown.trigger();
    let update = within(LIMIT, "NOT_SERVING update", watch.next()).await;
    assert_eq!(update.unwrap().unwrap().status, ServingStatus::NotServing as i32);
    let (status, body) = http_get(http_addr, "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    assert!(!served.is_finished());

    drop(watch);
    drop(health);
    drop(channel);
    let outcome = within(LIMIT, "drained shutdown", served).await.unwrap();
    outcome.unwrap();
    assert!(tokio::net::TcpStream::connect(http_addr).await.is_err());
}

#[tokio::test]
async fn connects_to_the_configured_dependencies() {
    let mut config = config();
    config.database_url = POSTGRES_URL.to_owned();
    config.nats_url = NATS_URL.to_owned();
    config.nats_creds = Some(nats_creds_file());
    config.redis_url = REDIS_URL.to_owned();
    let rt = Service::from_config(config.clone()).unwrap();
    let health = Health::new()
        .with_postgres(rt.connect_postgres().await.unwrap())
        .with_nats(rt.connect_nats().await.unwrap())
        .with_redis(rt.connect_redis().await.unwrap());
    assert!(health.check().await.is_ready());

    config.redis_url = CLOSED_REDIS_URL.to_owned();
    let rt = Service::from_config(config).unwrap();
    let err = within(LIMIT, "failed connect", rt.connect_redis())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("redis"), "{err}");
    assert!(err.is_retryable());
}
