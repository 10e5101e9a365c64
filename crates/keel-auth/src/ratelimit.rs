//! Per-tenant rate limits: GCRA in Redis, one atomic Lua script per check.
//!
//! The limiter fails open: when Redis cannot answer, requests are allowed and counted in
//! `keel_rate_limit_failopen_total`, because an outage of the limiter must not become an outage
//! of every service.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Upper bound on one check, connection attempts included.
const CHECK_TIMEOUT: Duration = Duration::from_millis(750);
/// At most one fail-open warning per this interval, so an outage does not flood the logs.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// GCRA with the server's clock (`TIME`), in microseconds. Returns `{allowed, wait_us}`.
///
/// KEYS[1] = bucket key; ARGV[1] = emission interval (µs per request); ARGV[2] = burst.
/// The theoretical arrival time is stored as a decimal string: Lua numbers are doubles and
/// `tostring` would round a 16-digit microsecond timestamp.
const GCRA_LUA: &str = r#"
local emission = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + emission
local allow_at = new_tat - emission * burst
if allow_at > now then
  return {0, allow_at - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
return {1, 0}
"#;

/// Sustained rate and burst of one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierLimits {
    pub per_second: u32,
    pub burst: u32,
}

/// The limits of the tier a token names (`tier` claim, [`crate::layer::DEFAULT_TIER`] when it
/// names none). The table is the product's, in `keel-tenancy`; this crate only applies it.
pub type TierLimitsFn = fn(&str) -> TierLimits;

/// The outcome of one rate-limit check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit; the next request conforms after `retry_after`.
    Limited {
        retry_after: Duration,
    },
    /// Redis could not answer; the request is allowed.
    FailedOpen,
}

/// Checks requests against per-tenant GCRA buckets `keel:rl:<tenant>` in Redis.
pub struct RateLimiter {
    conn: Option<ConnectionManager>,
    script: redis::Script,
    failopen_total: IntCounter,
    last_warn: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("configured", &self.conn.is_some())
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// A limiter on the Redis at `redis_url`. Never fails: when Redis is down the connection is
    /// retried lazily by later checks, which fail open meanwhile; an unparsable URL leaves the
    /// limiter failing open for good (logged once here).
    pub async fn connect(redis_url: &str) -> Self {
        let conn = lazy_connection(redis_url);
        let limiter = RateLimiter {
            conn,
            script: redis::Script::new(GCRA_LUA),
            failopen_total: new_counter(),
            last_warn: Mutex::new(None),
        };
        limiter.warm_up().await;
        limiter
    }

    /// The limiter's Redis connection (multiplexed), for the quota lookups of the same layer.
    pub fn connection(&self) -> Option<ConnectionManager> {
        self.conn.clone()
    }

    /// `keel_rate_limit_failopen_total`, for registering in a service's registry.
    pub fn failopen_counter(&self) -> &IntCounter {
        &self.failopen_total
    }

    /// Counts one request of `tenant` against `limits`.
    pub async fn check(&self, tenant: &str, limits: TierLimits) -> Decision {
        let Some(conn) = &self.conn else {
            return self.fail_open("no redis configured");
        };
        let per_second = u64::from(limits.per_second.max(1));
        let emission_us = 1_000_000 / per_second;
        let burst = limits.burst.max(1);
        let mut conn = conn.clone();
        let mut invocation = self.script.key(format!("keel:rl:{tenant}"));
        invocation.arg(emission_us.max(1)).arg(burst);
        let reply =
            tokio::time::timeout(CHECK_TIMEOUT, invocation.invoke_async::<(i64, i64)>(&mut conn)).await;
        match reply {
            Ok(Ok((1, _))) => Decision::Allowed,
            Ok(Ok((_, wait_us))) => Decision::Limited {
                retry_after: Duration::from_micros(u64::try_from(wait_us).unwrap_or(0).max(1)),
            },
            Ok(Err(e)) => self.fail_open(&e.to_string()),
            Err(_) => self.fail_open("timed out"),
        }
    }

    /// Loads the script and opens the connection now, so the first request does not pay for it.
    async fn warm_up(&self) {
        let Some(conn) = &self.conn else { return };
        let mut conn = conn.clone();
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(GCRA_LUA);
        match tokio::time::timeout(CHECK_TIMEOUT, load.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "rate limiter: redis unavailable at start; will retry"),
            Err(_) => tracing::warn!("rate limiter: redis timed out at start; will retry"),
        }
    }

    fn fail_open(&self, cause: &str) -> Decision {
        self.failopen_total.inc();
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(%cause, "rate limiter unavailable; allowing requests");
        }
        Decision::FailedOpen
    }
}

/// A reconnecting connection to `redis_url` that connects on first use; `None` (logged) when
/// the URL or the client setup is unusable.
pub(crate) fn lazy_connection(redis_url: &str) -> Option<ConnectionManager> {
    match redis::Client::open(redis_url) {
        Ok(client) => {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(Duration::from_millis(500)))
                .set_response_timeout(Some(Duration::from_millis(500)))
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(1));
            match ConnectionManager::new_lazy_with_config(client, config) {
                Ok(conn) => Some(conn),
                Err(e) => {
                    tracing::error!(error = %e, "rate limiter: redis client setup failed; failing open");
                    None
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "rate limiter: bad redis url; failing open");
            None
        }
    }
}

fn new_counter() -> IntCounter {
    IntCounter::new(
        "keel_rate_limit_failopen_total",
        "Requests allowed because the rate limiter's Redis could not answer.",
    )
    .unwrap_or_else(|_| unreachable!("static metric name and help are valid"))
}
