use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_auth::{AuthConfig, AuthLayer, JwksCache, RateLimiter, SigningKey};
use tonic::transport::{Channel, Server};
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::{REDIS_URL, claims, now, set_of, unique_tenant};

/// A tonic server on a free port serving Health behind `config` (no public paths).
async fn start(mut config: AuthConfig) -> HealthClient<Channel> {
    config.public_paths.clear();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        Server::builder()
            .layer(AuthLayer::new(config))
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

fn check(token: Option<&str>) -> Request<HealthCheckRequest> {
    let mut req = Request::new(HealthCheckRequest {
        service: String::new(),
    });
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    req
}

#[tokio::test]
async fn protected_health_needs_a_valid_token() {
    let key = SigningKey::generate();
    let jwks = Arc::new(JwksCache::with_static(set_of(&[&key])));
    let mut client = start(AuthConfig::new(jwks)).await;

    let err = client.check(check(None)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "missing bearer token");

    let expired = key.sign(&claims("t1", now() - 120)).unwrap();
    let err = client.check(check(Some(&expired))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "token expired");

    let stranger = SigningKey::from_seed("stranger", [6; 32]);
    let unknown = stranger.sign(&claims("t1", now() + 300)).unwrap();
    let err = client.check(check(Some(&unknown))).await.unwrap_err();
    assert_eq!(err.message(), "unknown signing key");

    let mut tampered = key.sign(&claims("t1", now() + 300)).unwrap();
    tampered.push('A');
    let err = client.check(check(Some(&tampered))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "invalid token");

    let good = key.sign(&claims("t1", now() + 300)).unwrap();
    let resp = client.check(check(Some(&good))).await.unwrap();
    assert_eq!(resp.into_inner().status, 1, "SERVING");
}

#[tokio::test]
async fn unavailable_keys_are_unauthenticated() {
    let key = SigningKey::generate();
    let jwks = Arc::new(JwksCache::new(
        "http://127.0.0.1:1/.well-known/jwks.json",
        Duration::from_secs(60),
    ));
    let mut client = start(AuthConfig::new(jwks)).await;
    let good = key.sign(&claims("t1", now() + 300)).unwrap();
    let err = client.check(check(Some(&good))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "signing keys unavailable");
}

#[tokio::test]
async fn over_the_limit_is_resource_exhausted_with_retry_after() {
    let key = SigningKey::generate();
    let jwks = Arc::new(JwksCache::with_static(set_of(&[&key])));
    let limiter = Arc::new(RateLimiter::connect(REDIS_URL).await);
    let metrics = keel_runtime::Metrics::new().unwrap();
    let config = AuthConfig::new(jwks)
        .with_limiter(limiter, |_| keel_auth::TierLimits {
            per_second: 20,
            burst: 40,
        })
        .with_metrics(metrics.clone());
    let mut client = start(config).await;

    let tenant = unique_tenant("layer");
    let token = key.sign(&claims(&tenant, now() + 300)).unwrap();
    // 20/s with a burst of 40.
    let mut limited = None;
    for _ in 0..200 {
        match client.check(check(Some(&token))).await {
            Ok(_) => {}
            Err(status) => {
                limited = Some(status);
                break;
            }
        }
    }
    let status = limited.expect("the burst should run out");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded");
    let secs: u64 = status
        .metadata()
        .get("retry-after")
        .expect("retry-after")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs >= 1);
    let hits = metrics
        .rate_limit_hits_total()
        .with_label_values(&[tenant.as_str()]);
    assert!(hits.get() >= 1);

    // Operators are not rate limited.
    let mut op = claims("*", now() + 300);
    op.scopes = vec![keel_auth::scopes::OPERATOR.into()];
    let op_token = key.sign(&op).unwrap();
    for _ in 0..5 {
        assert!(client.check(check(Some(&op_token))).await.is_ok());
    }
}
