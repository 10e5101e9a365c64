//! Admission by the provisioned quota hash, against the real Redis: the hash's limits replace
//! the token's tier, a suspension refuses the tenant within the cache's TTL and a reactivation
//! admits it again, operators are no tenant's, and a Redis outage keeps a known suspension.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_auth::quota::{self, DEFAULT_TTL};
use keel_auth::{AuthConfig, AuthLayer, JwksCache, Quotas, RateLimiter, SigningKey, TierLimits};
use keel_store::testing::TcpGate;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;

use crate::support::{REDIS_URL, claims, eventually, now, set_of, unique_tenant};

/// The token tiers of these tests: `business` is generous, anything else 20/s.
fn tiers(tier: &str) -> TierLimits {
    match tier {
        "business" => TierLimits {
            per_second: 2000,
            burst: 4000,
        },
        _ => TierLimits {
            per_second: 20,
            burst: 40,
        },
    }
}

struct Fixture {
    client: HealthClient<Channel>,
    key: SigningKey,
    prefix: String,
    redis: redis::aio::MultiplexedConnection,
    limiter: Arc<RateLimiter>,
}

/// A Health server behind the standard layer, the limiter and quotas on `redis_url` (the real
/// Redis or a gate in front of it), hashes under a prefix of its own, quotas cached for `ttl`.
async fn fixture(redis_url: &str, ttl: Duration) -> Fixture {
    let key = SigningKey::generate();
    let jwks = Arc::new(JwksCache::with_static(set_of(&[&key])));
    let prefix = format!("{}_", unique_tenant("qp"));
    let limiter = Arc::new(RateLimiter::connect(redis_url).await);
    let quotas = Arc::new(Quotas::new(limiter.connection(), &prefix).with_ttl(ttl));
    let mut config = AuthConfig::new(jwks)
        .with_limiter(limiter.clone(), tiers)
        .with_quotas(quotas);
    config.public_paths.clear();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(AuthLayer::new(config))
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let redis = redis::Client::open(REDIS_URL)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    Fixture {
        client: HealthClient::new(channel),
        key,
        prefix,
        redis,
        limiter,
    }
}

impl Fixture {
    /// A token of `tenant` naming `tier`.
    fn token(&self, tenant: &str, tier: &str) -> String {
        let mut c = claims(tenant, now() + 300);
        c.tier = Some(tier.into());
        self.key.sign(&c).unwrap()
    }

    async fn call(&self, token: &str) -> Result<(), Status> {
        let mut req = Request::new(HealthCheckRequest {
            service: String::new(),
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        self.client.clone().check(req).await.map(|_| ())
    }

    /// Writes `tenant`'s hash as provisioning's quotas step does.
    async fn write(&self, tenant: &str, fields: &[(&str, &str)]) {
        let mut conn = self.redis.clone();
        let key = quota::key(&self.prefix, tenant);
        redis::pipe()
            .atomic()
            .del(&key)
            .ignore()
            .hset_multiple(&key, fields)
            .ignore()
            .expire(&key, 300)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

fn hash(rate: &str, burst: &str, suspended: bool) -> Vec<(&'static str, String)> {
    vec![
        ("tier", "low".into()),
        ("rate_per_second", rate.into()),
        ("burst", burst.into()),
        ("suspended", if suspended { "1" } else { "0" }.into()),
    ]
}

fn pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn is_suspension(status: &Status, tenant: &str) -> bool {
    status.code() == Code::FailedPrecondition
        && status.message() == format!("tenant {tenant} is suspended")
        && status
            .get_details_error_info()
            .is_some_and(|info| info.reason == "TENANT_SUSPENDED" && info.domain == "keel.dev")
}

#[tokio::test]
async fn the_limiter_applies_the_hash_limits_not_the_token_tier() {
    let f = fixture(REDIS_URL, DEFAULT_TTL).await;
    let tiny = unique_tenant("tiny");
    f.write(&tiny, &pairs(&hash("1", "1", false))).await;
    let token = f.token(&tiny, "business");
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        outcomes.push(f.call(&token).await.map_err(|s| s.code()));
    }
    assert_eq!(outcomes[0], Ok(()), "the burst of one is allowed");
    assert!(
        outcomes[1..].contains(&Err(Code::ResourceExhausted)),
        "a burst of one, whatever the business claim: {outcomes:?}"
    );

    // No hash: the token's tier, as before (40 would exhaust the low tier's burst of 40).
    let unprovisioned = unique_tenant("unprov");
    let token = f.token(&unprovisioned, "business");
    for i in 0..60 {
        f.call(&token)
            .await
            .unwrap_or_else(|s| panic!("call {i} of a business token without a hash: {s:?}"));
    }
    // A hash without usable limits (only the flag): the token's tier too.
    let flag_only = unique_tenant("flag");
    f.write(&flag_only, &[("suspended", "0")]).await;
    let token = f.token(&flag_only, "business");
    for _ in 0..60 {
        f.call(&token).await.unwrap();
    }
}

#[tokio::test]
async fn a_suspended_tenant_is_refused_within_the_ttl_and_admitted_again_after_reactivation() {
    let f = fixture(REDIS_URL, DEFAULT_TTL).await;
    let tenant = unique_tenant("susp");
    f.write(&tenant, &pairs(&hash("100", "200", false))).await;
    let token = f.token(&tenant, "low");
    f.call(&token).await.unwrap();

    f.write(&tenant, &pairs(&hash("100", "200", true))).await;
    let suspended_at = Instant::now();
    eventually("the suspension enforced", Duration::from_secs(10), || async {
        f.call(&token).await.is_err_and(|s| is_suspension(&s, &tenant))
    })
    .await;
    let took = suspended_at.elapsed();
    assert!(
        took <= DEFAULT_TTL + Duration::from_millis(500),
        "refused after {took:?}, beyond the cache's TTL"
    );
    // Refused every time while suspended (the cache does not flap).
    for _ in 0..5 {
        assert!(f.call(&token).await.is_err_and(|s| is_suspension(&s, &tenant)));
    }

    // Operators (tenant `*`) are no tenant's: a hash under `*` is never read.
    f.write("*", &pairs(&hash("1", "1", true))).await;
    let mut op = claims("*", now() + 300);
    op.scopes = vec![keel_auth::scopes::OPERATOR.into()];
    let op_token = f.key.sign(&op).unwrap();
    for _ in 0..5 {
        f.call(&op_token).await.unwrap();
    }

    f.write(&tenant, &pairs(&hash("100", "200", false))).await;
    let reactivated_at = Instant::now();
    eventually("the reactivation admitted", Duration::from_secs(10), || async {
        f.call(&token).await.is_ok()
    })
    .await;
    let took = reactivated_at.elapsed();
    assert!(
        took <= DEFAULT_TTL + Duration::from_millis(500),
        "admitted after {took:?}"
    );
    println!("suspension and reactivation each took at most {took:?} (TTL {DEFAULT_TTL:?})");
}

#[tokio::test]
async fn a_known_suspension_outlives_a_redis_outage_and_limits_fail_open() {
    let gate = TcpGate::start("127.0.0.1:6379").await.unwrap();
    let ttl = Duration::from_millis(200);
    let f = fixture(&format!("redis://{}", gate.addr()), ttl).await;
    let (suspended, active, stranger) = (
        unique_tenant("out-s"),
        unique_tenant("out-a"),
        unique_tenant("out-n"),
    );
    f.write(&suspended, &pairs(&hash("100", "200", true))).await;
    f.write(&active, &pairs(&hash("100", "200", false))).await;
    let (s_token, a_token) = (f.token(&suspended, "low"), f.token(&active, "low"));
    assert!(
        f.call(&s_token)
            .await
            .is_err_and(|s| is_suspension(&s, &suspended))
    );
    f.call(&a_token).await.unwrap();

    gate.cut();
    let failed_open = f.limiter.failopen_counter().get();
    // Well past the TTL, every lookup unanswered: the suspension is kept, the others fail open.
    let until = Instant::now() + ttl * 5;
    while Instant::now() < until {
        let s = f.call(&s_token).await;
        assert!(
            s.is_err_and(|s| is_suspension(&s, &suspended)),
            "still refused from cache"
        );
        f.call(&a_token).await.expect("a tenant known active is admitted");
        tokio::time::sleep(ttl / 4).await;
    }
    f.call(&f.token(&stranger, "low"))
        .await
        .expect("a tenant never read is admitted on its token's tier");
    assert!(
        f.limiter.failopen_counter().get() > failed_open,
        "the limiter counts what it let through"
    );

    gate.restore();
    f.write(&suspended, &pairs(&hash("100", "200", false))).await;
    eventually(
        "the reactivation read once Redis answers",
        Duration::from_secs(10),
        || async { f.call(&s_token).await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn quotas_read_the_hash_provisioning_writes() {
    let f = fixture(REDIS_URL, DEFAULT_TTL).await;
    let quotas = Quotas::connect(REDIS_URL, &f.prefix);
    let tenant = unique_tenant("read");
    assert_eq!(quotas.lookup(&tenant).await, quota::Known::Absent);
    let fields: HashMap<String, String> = pairs(&hash("7", "9", true))
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    f.write(&tenant, &pairs(&hash("7", "9", true))).await;
    let fresh = Quotas::connect(REDIS_URL, &f.prefix);
    assert_eq!(
        fresh.lookup(&tenant).await,
        quota::Known::Provisioned(quota::TenantQuota::from_fields(&fields).unwrap())
    );
}
