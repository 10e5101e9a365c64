//! The JWK set cache every service verifies tokens against.
//!
//! Refreshes every `min(ttl/4, 60 s)`, and at once (at most every 5 s) when a token names a key id
//! the cached set lacks, so key rotation takes effect without waiting. When the endpoint fails, the
//! last good set keeps being served until it is `ttl` old, with the cache marked degraded; after
//! that, verification fails with [`AuthError::JwksUnavailable`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use serde::de::DeserializeOwned;

use crate::error::{AuthError, Result};
use crate::keys::{Jwk, JwkSet};

/// Time allowed for one fetch, connect to last body byte.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// Minimum spacing of refetches triggered by an unknown key id.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(5);
/// Cap on the periodic refresh interval.
const MAX_REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Responses larger than this are not key sets.
const MAX_JWKS_BYTES: usize = 256 * 1024;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

enum Source {
    Static,
    Http { url: String, client: Box<HttpClient> },
}

#[derive(Default)]
struct State {
    set: Option<Arc<JwkSet>>,
    /// When `set` was last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch last started, successful or not; spaces out retries.
    last_attempt: Option<Instant>,
    /// When an unknown key id last forced a fetch.
    last_forced: Option<Instant>,
}

/// A cached JWK set fetched from the tenant service: over HTTPS against the mesh CA, or over
/// plain HTTP in plaintext mode (`KEEL_TLS_INSECURE=true`).
pub struct JwksCache {
    source: Source,
    ttl: Duration,
    refresh_every: Duration,
    state: Mutex<State>,
    /// One fetch at a time; others serve the cached set or wait for the fetch's result.
    fetching: tokio::sync::Mutex<()>,
    degraded: AtomicBool,
    degraded_total: IntCounter,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match &self.source {
            Source::Static => "<static>",
            Source::Http { url, .. } => url,
        };
        f.debug_struct("JwksCache")
            .field("url", &url)
            .field("ttl", &self.ttl)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// A cache of the set at `url` (`http://…/.well-known/jwks.json`), usable for `ttl` after the
    /// last successful fetch, fetched over plain HTTP. Fetches lazily, on first use.
    pub fn new(url: impl Into<String>, ttl: Duration) -> Self {
        Self::with_tls(url, ttl, None)
    }

    /// As [`JwksCache::new`]; with `tls` the URL must be `https://` and the server's
    /// certificate must chain to the roots of `tls` (plain `http://` is refused).
    pub fn with_tls(url: impl Into<String>, ttl: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        http.enforce_http(false);
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match tls {
            Some(config) => builder.with_tls_config((*config).clone()).https_only(),
            None => builder
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(keel_runtime::tls::provider())
                        .with_safe_default_protocol_versions()
                        .unwrap_or_else(|_| unreachable!("ring supports the default protocol versions"))
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http(),
        }
        .enable_http1()
        .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self::build(
            Source::Http {
                url: url.into(),
                client: Box::new(client),
            },
            ttl,
            State::default(),
        )
    }

    /// The mesh's cache: `config.jwks_url` (`KEEL_JWKS_URL`, else `own`, else the local tenant
    /// service's), TTL `config.jwks_ttl_secs`, over the process's TLS. Every service builds its
    /// cache this way (in `keel-service`).
    pub fn from_config(
        config: &keel_runtime::Config,
        tls: &keel_runtime::Tls,
        own: Option<&str>,
    ) -> keel_runtime::Result<Self> {
        let client = tls.http_client()?;
        Ok(Self::with_tls(
            config.jwks_url_or(own),
            Duration::from_secs(config.jwks_ttl_secs),
            client,
        ))
    }

    /// A cache that always serves `set` and never fetches; for tests and offline tools.
    pub fn with_static(set: JwkSet) -> Self {
        let state = State {
            set: Some(Arc::new(set)),
            fetched_at: Some(Instant::now()),
            ..State::default()
        };
        Self::build(Source::Static, Duration::MAX, state)
    }

    fn build(source: Source, ttl: Duration, state: State) -> Self {
        JwksCache {
            source,
            ttl,
            refresh_every: (ttl / 4).min(MAX_REFRESH_EVERY),
            state: Mutex::new(state),
            fetching: tokio::sync::Mutex::new(()),
            degraded: AtomicBool::new(false),
            degraded_total: IntCounter::new(
                "keel_auth_degraded_total",
                "JWKS fetches that failed, leaving verification on cached keys or none.",
            )
            .unwrap_or_else(|_| unreachable!("static metric name and help are valid")),
        }
    }

    /// Whether the last fetch failed (verification runs on cached keys, or fails once they are
    /// older than the TTL).
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// `keel_auth_degraded_total`, for registering in a service's registry.
    pub fn degraded_counter(&self) -> &IntCounter {
        &self.degraded_total
    }

    /// Verifies `token` with the key set for its `kid` (see [`crate::verify::verify`]).
    pub async fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        now_unix: i64,
        leeway_secs: i64,
    ) -> Result<T> {
        let kid = crate::verify::decode_kid(token)?;
        let set = self.key_set_for(&kid).await?;
        crate::verify::verify(token, &set, now_unix, leeway_secs)
    }

    /// The key set to verify a token signed with `kid` against.
    ///
    /// Serves the cached set while fresh and holding `kid`; refetches when stale, or when `kid`
    /// is unknown (rate-limited). The returned set may still lack `kid`: verification then
    /// reports [`AuthError::UnknownKey`].
    pub async fn key_set_for(&self, kid: &str) -> Result<Arc<JwkSet>> {
        let Source::Http { url, client } = &self.source else {
            return self.usable(Instant::now()).ok_or(AuthError::JwksUnavailable);
        };
        let now = Instant::now();
        enum Plan {
            Serve(Arc<JwkSet>),
            AwaitInFlight,
            Fetch(Option<Instant>, bool),
        }
        let plan = {
            let st = self.lock();
            let fresh = st
                .fetched_at
                .is_some_and(|t| now.saturating_duration_since(t) < self.refresh_every);
            let recently_tried = st
                .last_attempt
                .is_some_and(|t| now.saturating_duration_since(t) < self.retry_after_failure());
            match &st.set {
                Some(set) if fresh && set.contains(kid) => Plan::Serve(set.clone()),
                Some(set) if fresh => {
                    let may_force = st
                        .last_forced
                        .is_none_or(|t| now.saturating_duration_since(t) >= UNKNOWN_KID_REFRESH);
                    if may_force {
                        Plan::Fetch(st.last_attempt, true)
                    } else {
                        Plan::Serve(set.clone())
                    }
                }
                _ if recently_tried => match self.usable_locked(&st, now) {
                    Some(set) => Plan::Serve(set),
                    None => Plan::AwaitInFlight,
                },
                _ => Plan::Fetch(st.last_attempt, false),
            }
        };
        let (seen_attempt, forced) = match plan {
            Plan::Serve(set) => return Ok(set),
            Plan::AwaitInFlight => {
                // Nothing usable and an attempt moments ago: if it is still under way, wait for
                // its outcome (a cold start under load must not fail every concurrent call); if
                // it failed, do not hammer the endpoint.
                let _wait = self.fetching.lock().await;
                return self.usable(Instant::now()).ok_or(AuthError::JwksUnavailable);
            }
            Plan::Fetch(seen, forced) => (seen, forced),
        };

        // Someone else is fetching: serve what we have rather than queue, unless we have nothing.
        let _guard = match self.fetching.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                if let Some(set) = self.usable(now) {
                    return Ok(set);
                }
                self.fetching.lock().await
            }
        };
        if self.lock().last_attempt != seen_attempt {
            // A fetch finished while we waited; use its outcome.
            return self.usable(Instant::now()).ok_or(AuthError::JwksUnavailable);
        }
        self.refresh(url, client, forced).await
    }

    async fn refresh(&self, url: &str, client: &HttpClient, forced: bool) -> Result<Arc<JwkSet>> {
        let started = Instant::now();
        {
            let mut st = self.lock();
            st.last_attempt = Some(started);
            if forced {
                st.last_forced = Some(started);
            }
        }
        match fetch(client, url).await {
            Ok(set) => {
                let set = Arc::new(set);
                {
                    let mut st = self.lock();
                    st.set = Some(set.clone());
                    st.fetched_at = Some(Instant::now());
                }
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(event = "auth.recovered", "JWKS fetch succeeded again");
                }
                Ok(set)
            }
            Err(e) => {
                self.degraded.store(true, Ordering::Relaxed);
                self.degraded_total.inc();
                let now = Instant::now();
                let usable = self.usable(now);
                tracing::warn!(
                    event = "auth.degraded",
                    error = %e,
                    serving_cached = usable.is_some(),
                    "JWKS fetch failed"
                );
                usable.ok_or(AuthError::JwksUnavailable)
            }
        }
    }

    /// The cached set if younger than the TTL.
    fn usable(&self, now: Instant) -> Option<Arc<JwkSet>> {
        let st = self.lock();
        self.usable_locked(&st, now)
    }

    fn usable_locked(&self, st: &State, now: Instant) -> Option<Arc<JwkSet>> {
        let fetched_at = st.fetched_at?;
        if now.saturating_duration_since(fetched_at) < self.ttl {
            st.set.clone()
        } else {
            None
        }
    }

    /// Spacing of attempts after a failed one, so an outage is not hammered per request.
    fn retry_after_failure(&self) -> Duration {
        self.refresh_every.min(UNKNOWN_KID_REFRESH)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// GETs and parses the set; keys that are not well-formed Ed25519 signing keys are dropped.
async fn fetch(client: &HttpClient, url: &str) -> Result<JwkSet> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| AuthError::Fetch(format!("{what}: {e}"));
    let uri: http::Uri = url.parse().map_err(|e| fail("url", &e))?;
    let req = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| fail("request", &e))?;
    let exchange = async {
        let resp = client.request(req).await.map_err(|e| fail("connect", &e))?;
        if !resp.status().is_success() {
            return Err(fail("status", &resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|e| fail("body", &e))?
            .to_bytes();
        let raw: RawSet = serde_json::from_slice(&body).map_err(|e| fail("json", &e))?;
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
            .filter(|k| k.ed25519_public_key().is_some())
            .collect();
        Ok(JwkSet { keys })
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| AuthError::Fetch("timed out".to_owned()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::SigningKey;

    #[tokio::test]
    async fn static_cache_serves_its_set() {
        let key = SigningKey::from_seed("k1", [3; 32]);
        let cache = JwksCache::with_static(JwkSet {
            keys: vec![key.public_jwk()],
        });
        let set = cache.key_set_for("k1").await.unwrap();
        assert!(set.contains("k1"));
        assert!(cache.key_set_for("nope").await.is_ok());
        assert!(!cache.is_degraded());
    }

    #[tokio::test]
    async fn unreachable_endpoint_without_cache_is_unavailable() {
        let cache = JwksCache::new(
            "http://127.0.0.1:1/.well-known/jwks.json",
            Duration::from_secs(60),
        );
        assert_eq!(cache.key_set_for("k1").await, Err(AuthError::JwksUnavailable));
        assert!(cache.is_degraded());
        assert_eq!(cache.degraded_counter().get(), 1);
        // Retries are spaced out: an immediate second call does not fetch again.
        assert_eq!(cache.key_set_for("k1").await, Err(AuthError::JwksUnavailable));
        assert_eq!(cache.degraded_counter().get(), 1);
    }
}
