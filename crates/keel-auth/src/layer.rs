//! The tower layer that authenticates and rate-limits every non-public gRPC call.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Request, Response};
use tonic::Status;

use crate::claims::Claims;
use crate::jwks::JwksCache;
use crate::principal::Principal;
use crate::quota::{Admission, Quotas};
use crate::ratelimit::{Decision, RateLimiter, TierLimits, TierLimitsFn};

/// Path prefixes that need no token: health checks and reflection.
pub const DEFAULT_PUBLIC_PATHS: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY_SECS: i64 = 30;
/// Tier assumed when a token carries none.
pub const DEFAULT_TIER: &str = "low";

/// What [`AuthLayer`] checks requests against.
pub struct AuthConfig {
    pub jwks: Arc<JwksCache>,
    /// Per-tenant limits; `None` disables rate limiting.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The limits of each tier, applied by `limiter` to a tenant without provisioned limits.
    pub tier_limits: TierLimitsFn,
    /// The tenants' provisioned quota hashes (limits, suspension); `None`: the token's tier
    /// alone, and no tenant is refused as suspended.
    pub quotas: Option<Arc<Quotas>>,
    /// Path prefixes served without a token (and without a [`Principal`]).
    pub public_paths: Vec<String>,
    /// Where `keel_rate_limit_hits_total` is counted and the auth counters are registered.
    pub metrics: Option<keel_runtime::metrics::Metrics>,
}

impl AuthConfig {
    /// Verification against `jwks`, [`DEFAULT_PUBLIC_PATHS`] public, no rate limit, no metrics.
    pub fn new(jwks: Arc<JwksCache>) -> Self {
        AuthConfig {
            jwks,
            limiter: None,
            tier_limits: no_tier_limits,
            quotas: None,
            public_paths: DEFAULT_PUBLIC_PATHS.iter().map(|p| p.to_string()).collect(),
            metrics: None,
        }
    }

    /// What every service installs: verification against `jwks`, admission by the tenants'
    /// quota hashes under `resource_prefix` (see [`crate::quota`]) and their rate limits
    /// (`tier_limits` where no hash gives limits) in the Redis at `redis_url`, counters in
    /// `metrics`.
    pub async fn standard(
        jwks: Arc<JwksCache>,
        redis_url: &str,
        resource_prefix: &str,
        metrics: keel_runtime::metrics::Metrics,
        tier_limits: TierLimitsFn,
    ) -> Self {
        let limiter = Arc::new(RateLimiter::connect(redis_url).await);
        let quotas = Arc::new(Quotas::new(limiter.connection(), resource_prefix));
        Self::new(jwks)
            .with_limiter(limiter, tier_limits)
            .with_quotas(quotas)
            .with_metrics(metrics)
    }

    /// Admission by the tenants' quota hashes: a suspended tenant is refused, provisioned
    /// limits replace the token's tier's.
    pub fn with_quotas(mut self, quotas: Arc<Quotas>) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// Rate limits per tenant, `tier_limits` of the caller's tier, counted in `limiter`.
    pub fn with_limiter(mut self, limiter: Arc<RateLimiter>, tier_limits: TierLimitsFn) -> Self {
        self.limiter = Some(limiter);
        self.tier_limits = tier_limits;
        self
    }

    /// Adds a public path prefix, e.g. `/keel.v1.TokenService/ExchangeApiKey`.
    pub fn with_public_path(mut self, prefix: impl Into<String>) -> Self {
        self.public_paths.push(prefix.into());
        self
    }

    pub fn with_metrics(mut self, metrics: keel_runtime::metrics::Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// Without a limiter nothing is limited; this is never called then.
fn no_tier_limits(_: &str) -> TierLimits {
    TierLimits {
        per_second: u32::MAX,
        burst: u32::MAX,
    }
}

/// Authenticates each call (`authorization: Bearer <jwt>`), stores the [`Principal`] in the
/// request extensions and applies the tenant's rate limit. Failures become gRPC error responses.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use std::{sync::Arc, time::Duration};
/// use keel_auth::{AuthConfig, AuthLayer, JwksCache};
///
/// let url = "http://127.0.0.1:8081/.well-known/jwks.json";
/// let jwks = Arc::new(JwksCache::new(url, Duration::from_secs(600)));
/// let auth = AuthLayer::new(
///     AuthConfig::new(jwks).with_public_path("/keel.v1.TokenService/ExchangeApiKey"),
/// );
/// let (_health, svc) = tonic_health::server::health_reporter();
/// tonic::transport::Server::builder()
///     .layer(auth)
///     .add_service(svc)
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AuthLayer {
    shared: Arc<AuthConfig>,
    /// Tokens whose signature was already checked: the same bytes verify the same way, so a
    /// client that sends one token many times pays for Ed25519 once. Expiry and the availability
    /// of the signing key in the JWKS are still checked on every call.
    verified: Arc<std::sync::Mutex<std::collections::HashMap<[u8; 32], Claims>>>,
}

/// Bound on remembered tokens; the map is emptied when it is full.
const VERIFIED_CACHE: usize = 10_000;

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("public_paths", &self.shared.public_paths)
            .finish_non_exhaustive()
    }
}

impl AuthLayer {
    /// The layer; registers `keel_auth_degraded_total` and `keel_rate_limit_failopen_total` in
    /// the metrics registry when metrics are configured.
    pub fn new(config: AuthConfig) -> Self {
        if let Some(metrics) = &config.metrics {
            let registry = metrics.registry();
            let mut counters = vec![config.jwks.degraded_counter().clone()];
            if let Some(limiter) = &config.limiter {
                counters.push(limiter.failopen_counter().clone());
            }
            for counter in counters {
                // AlreadyReg when a second layer shares the registry: the first one counts.
                if let Err(e) = registry.register(Box::new(counter)) {
                    tracing::debug!(error = %e, "auth metric not registered");
                }
            }
        }
        AuthLayer {
            shared: Arc::new(config),
            verified: Arc::default(),
        }
    }

    /// Whether `path` needs no token.
    pub fn is_public(&self, path: &str) -> bool {
        self.shared
            .public_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
    }

    async fn verify(&self, token: &str) -> crate::Result<Claims> {
        let cfg = &self.shared;
        let now = unix_now();
        let digest: [u8; 32] =
            sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(token.as_bytes())).into();
        let remembered = self.verified.lock().ok().and_then(|m| m.get(&digest).cloned());
        if let Some(claims) = remembered {
            let kid = crate::verify::decode_kid(token)?;
            // The key must still be published and usable (JWKS outage rules apply as before).
            let set = cfg.jwks.key_set_for(&kid).await?;
            if !set.contains(&kid) {
                return Err(crate::AuthError::UnknownKey { kid });
            }
            if claims.exp + DEFAULT_LEEWAY_SECS <= now {
                return Err(crate::AuthError::Expired);
            }
            return Ok(claims);
        }
        let claims: Claims = cfg.jwks.verify(token, now, DEFAULT_LEEWAY_SECS).await?;
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= VERIFIED_CACHE {
                m.clear();
            }
            m.insert(digest, claims.clone());
        }
        Ok(claims)
    }

    /// Verifies the bearer token in `headers`, admits the caller's tenant (refused while
    /// suspended) and applies its rate limit; the error is the status to answer with.
    /// Operator and platform tokens (tenant `*`) are no tenant's: neither admitted nor limited.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Status> {
        let cfg = &self.shared;
        let token = bearer(headers).ok_or_else(|| Status::unauthenticated("missing bearer token"))?;
        let claims = self.verify(token).await.map_err(|e| {
            tracing::debug!(error = %e, "token rejected");
            Status::from(e)
        })?;
        let principal = Principal::new(claims);
        if principal.claims.tenant == "*" {
            return Ok(principal);
        }
        let tenant = principal.claims.tenant.as_str();
        let tier = principal.claims.tier.as_deref().unwrap_or(DEFAULT_TIER);
        let token_limits = (cfg.tier_limits)(tier);
        let limits = match &cfg.quotas {
            Some(quotas) => match crate::quota::admit(quotas.lookup(tenant).await, token_limits) {
                Admission::Suspended => return Err(suspended(tenant)),
                Admission::Limit(limits) => limits,
            },
            None => token_limits,
        };
        if let Some(limiter) = &cfg.limiter
            && let Decision::Limited { retry_after } = limiter.check(tenant, limits).await
        {
            if let Some(metrics) = &cfg.metrics {
                metrics.rate_limit_hit(tenant);
            }
            return Err(rate_limited(retry_after));
        }
        Ok(principal)
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] wraps around a tonic router.
#[derive(Clone, Debug)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for AuthService<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        // The clone may not be ready; call the instance poll_ready was called on.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.layer.is_public(req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let layer = self.layer.clone();
        Box::pin(async move {
            let span = tracing::Span::current();
            match layer.authenticate(req.headers()).await {
                Ok(principal) => {
                    span.record("tenant_id", principal.claims.tenant.as_str());
                    span.record("enduser.id", principal.actor().as_str());
                    span.record("keel.auth", "authenticated");
                    let tenant = keel_runtime::RequestTenant(principal.claims.tenant.clone());
                    req.extensions_mut().insert(principal);
                    let mut resp = inner.call(req).await?;
                    resp.extensions_mut().insert(tenant);
                    Ok(resp)
                }
                Err(status) => {
                    let outcome = match status.code() {
                        tonic::Code::FailedPrecondition => "suspended",
                        tonic::Code::ResourceExhausted => "rate_limited",
                        _ => "unauthenticated",
                    };
                    span.record("keel.auth", outcome);
                    Ok(status.into_http())
                }
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && !token.contains(' ')).then_some(token)
}

/// FAILED_PRECONDITION `TENANT_SUSPENDED`: the caller is who it says, but its tenant may not
/// be served until it is reactivated (a state of the tenant, not a lack of permission).
fn suspended(tenant: &str) -> Status {
    keel_runtime::status::failed_precondition("TENANT_SUSPENDED", format!("tenant {tenant} is suspended"))
}

/// RESOURCE_EXHAUSTED with a `RetryInfo` and `retry-after` in whole seconds, at least 1.
fn rate_limited(retry_after: Duration) -> Status {
    keel_runtime::status::resource_exhausted("rate limit exceeded", retry_after)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn bearer_is_parsed_strictly() {
        assert_eq!(bearer(&headers("Bearer abc.def.ghi")), Some("abc.def.ghi"));
        assert_eq!(bearer(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Bearer a b")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let secs = |d| {
            let s = rate_limited(d);
            assert_eq!(s.code(), tonic::Code::ResourceExhausted);
            assert_eq!(s.message(), "rate limit exceeded");
            s.metadata()
                .get("retry-after")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(secs(Duration::from_millis(10)), "1");
        assert_eq!(secs(Duration::from_millis(1500)), "2");
        assert_eq!(secs(Duration::ZERO), "1");
    }

    #[test]
    fn default_public_paths() {
        let jwks = Arc::new(JwksCache::with_static(Default::default()));
        let layer =
            AuthLayer::new(AuthConfig::new(jwks).with_public_path("/keel.v1.TokenService/ExchangeApiKey"));
        assert!(layer.is_public("/grpc.health.v1.Health/Check"));
        assert!(layer.is_public("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(layer.is_public("/keel.v1.TokenService/ExchangeApiKey"));
        assert!(!layer.is_public("/keel.v1.TenantService/GetTenant"));
    }
}
