use std::time::Duration;

use keel_auth::{Decision, RateLimiter, TierLimits};

use crate::support::{REDIS_URL, unique_tenant};

#[tokio::test]
async fn gcra_allows_the_burst_then_limits_and_tenants_are_independent() {
    let limiter = RateLimiter::connect(REDIS_URL).await;
    // One per second keeps refill out of the picture while the test runs.
    let limits = TierLimits {
        per_second: 1,
        burst: 5,
    };
    let tenant = unique_tenant("rl");
    for i in 0..5 {
        assert_eq!(
            limiter.check(&tenant, limits).await,
            Decision::Allowed,
            "request {i} of the burst"
        );
    }
    match limiter.check(&tenant, limits).await {
        Decision::Limited { retry_after } => {
            assert!(retry_after > Duration::ZERO);
            assert!(retry_after <= Duration::from_secs(1), "{retry_after:?}");
        }
        other => panic!("expected Limited, got {other:?}"),
    }
    let other = unique_tenant("rl-other");
    assert_eq!(limiter.check(&other, limits).await, Decision::Allowed);
    assert_eq!(limiter.failopen_counter().get(), 0);
}

#[tokio::test]
async fn refill_allows_again_after_retry_after() {
    let limiter = RateLimiter::connect(REDIS_URL).await;
    let limits = TierLimits {
        per_second: 20,
        burst: 1,
    };
    let tenant = unique_tenant("refill");
    assert_eq!(limiter.check(&tenant, limits).await, Decision::Allowed);
    let Decision::Limited { retry_after } = limiter.check(&tenant, limits).await else {
        panic!("second request within 50 ms should be limited");
    };
    assert!(retry_after <= Duration::from_millis(50));
    tokio::time::sleep(retry_after).await;
    assert_eq!(limiter.check(&tenant, limits).await, Decision::Allowed);
}

#[tokio::test]
async fn unreachable_redis_fails_open() {
    let limiter = RateLimiter::connect("redis://127.0.0.1:1").await;
    let limits = keel_auth::TierLimits {
        per_second: 20,
        burst: 40,
    };
    assert_eq!(limiter.check("t-any", limits).await, Decision::FailedOpen);
    assert_eq!(limiter.check("t-any", limits).await, Decision::FailedOpen);
    assert!(limiter.failopen_counter().get() >= 2);
}

#[tokio::test]
async fn bad_url_fails_open() {
    let limiter = RateLimiter::connect("not a url").await;
    let limits = keel_auth::TierLimits {
        per_second: 100,
        burst: 200,
    };
    assert_eq!(limiter.check("t-any", limits).await, Decision::FailedOpen);
}
