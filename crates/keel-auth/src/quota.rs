//! The tenant's provisioned quotas as admission reads them: the Redis hash
//! `keel:<prefix>quota:<tenant>` that provisioning's `quotas` step writes (tier limits and the
//! suspended flag), cached per tenant for [`DEFAULT_TTL`].
//!
//! What [`admit`] decides, for a tenant's token (operator and platform tokens, tenant `*`, are
//! no tenant's and never looked up):
//! - the hash says `suspended = 1`: refused, FAILED_PRECONDITION `TENANT_SUSPENDED`;
//! - the hash holds `rate_per_second` and `burst`: those are the limits, whatever the token's
//!   `tier` claim says (a tier change or an operator's override applies within the TTL, not at
//!   the token's expiry);
//! - no hash (not provisioned yet, or deleted) or no limits in it: the token's tier claim, as
//!   before the hash existed.
//!
//! When Redis cannot answer, the last thing read for the tenant is kept and used, however old
//! (a tenant known suspended stays refused; one known active keeps its limits, which the
//! limiter then fails open on); a tenant never read is admitted on its token's tier, and the
//! limiter's `keel_rate_limit_failopen_total` counts the requests it lets through. A failed
//! lookup is remembered for the TTL too, so an outage costs one Redis attempt per tenant per TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use crate::ratelimit::TierLimits;

/// How long a tenant's hash is trusted before it is read again: the longest a suspension or a
/// reactivation takes to reach every service once provisioning has written it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(2);
/// Tenants remembered at once (see [`evict`] for which are forgotten first).
pub const DEFAULT_CAPACITY: usize = 10_000;
/// Upper bound on one lookup, connection attempts included.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// At most one warning per this interval while Redis does not answer.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The fields of the hash (written by provisioning's `quotas` step).
pub mod field {
    pub const TIER: &str = "tier";
    pub const RATE_PER_SECOND: &str = "rate_per_second";
    pub const BURST: &str = "burst";
    /// `1` while the tenant is suspended, `0` otherwise.
    pub const SUSPENDED: &str = "suspended";
}

/// The Redis key of `tenant`'s quota hash; `prefix` (`KEEL_RESOURCE_PREFIX`) isolates
/// installations and tests sharing one Redis.
pub fn key(prefix: &str, tenant: &str) -> String {
    format!("keel:{prefix}quota:{tenant}")
}

/// What admission uses of one tenant's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TenantQuota {
    /// `None` when the hash has no (usable) limits: the token's tier applies.
    pub limits: Option<TierLimits>,
    pub suspended: bool,
}

impl TenantQuota {
    /// The quota in the fields of a hash; `None` for no hash (Redis answers an absent key with
    /// no fields).
    pub fn from_fields(fields: &HashMap<String, String>) -> Option<Self> {
        if fields.is_empty() {
            return None;
        }
        let number = |name: &str| fields.get(name).and_then(|v| v.trim().parse::<u32>().ok());
        let limits = match (number(field::RATE_PER_SECOND), number(field::BURST)) {
            (Some(per_second), Some(burst)) => Some(TierLimits { per_second, burst }),
            _ => None,
        };
        let suspended = fields
            .get(field::SUSPENDED)
            .is_some_and(|v| matches!(v.trim(), "1" | "true"));
        Some(TenantQuota { limits, suspended })
    }
}

/// What is known of one tenant's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Known {
    /// The hash as last read.
    Provisioned(TenantQuota),
    /// Redis said there is no hash.
    Absent,
    /// Redis has never answered for this tenant.
    Unknown,
}

/// What admission does with one call of a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The tenant is suspended: refuse.
    Suspended,
    /// Count the call against these limits.
    Limit(TierLimits),
}

/// The decision for a tenant of whom `known` is known, whose token's tier has `token_limits`.
pub fn admit(known: Known, token_limits: TierLimits) -> Admission {
    match known {
        Known::Provisioned(TenantQuota { suspended: true, .. }) => Admission::Suspended,
        Known::Provisioned(TenantQuota {
            limits: Some(limits), ..
        }) => Admission::Limit(limits),
        Known::Provisioned(_) | Known::Absent | Known::Unknown => Admission::Limit(token_limits),
    }
}

/// What to remember after a lookup: what Redis answered (`Some(None)`: no hash), or, when it
/// did not answer (`None`), what was known before.
pub fn remember(previous: Option<Known>, fetched: Option<Option<TenantQuota>>) -> Known {
    match fetched {
        Some(Some(quota)) => Known::Provisioned(quota),
        Some(None) => Known::Absent,
        None => previous.unwrap_or(Known::Unknown),
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    known: Known,
    checked: Instant,
}

impl Entry {
    fn suspended(&self) -> bool {
        matches!(
            self.known,
            Known::Provisioned(TenantQuota { suspended: true, .. })
        )
    }
}

/// Makes room for one more entry in `entries` (at most `capacity`): first the entries older
/// than `ttl` that are not suspensions, then any that are not, then any. Suspensions go last
/// because they are what an outage of Redis must not forget.
fn evict(entries: &mut HashMap<String, Entry>, now: Instant, ttl: Duration, capacity: usize) {
    if entries.len() < capacity {
        return;
    }
    entries.retain(|_, e| e.suspended() || now.saturating_duration_since(e.checked) < ttl);
    // Down to nine tenths, so a full cache is not swept on every insert.
    let target = capacity.saturating_sub(capacity / 10).max(1).min(capacity);
    if entries.len() >= target {
        let mut victims: Vec<(bool, Instant, String)> = entries
            .iter()
            .map(|(k, e)| (e.suspended(), e.checked, k.clone()))
            .collect();
        victims.sort();
        for (_, _, k) in victims.into_iter().take(entries.len() + 1 - target) {
            entries.remove(&k);
        }
    }
}

/// Reads tenants' quota hashes from Redis through a bounded per-tenant cache.
pub struct Quotas {
    conn: Option<ConnectionManager>,
    prefix: String,
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
    last_warn: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Quotas {
    /// Hashes under `prefix`, read on `conn` (`None`: Redis not configured, every tenant is
    /// [`Known::Unknown`]).
    pub fn new(conn: Option<ConnectionManager>, prefix: &str) -> Self {
        Quotas {
            conn,
            prefix: prefix.to_owned(),
            ttl: DEFAULT_TTL,
            capacity: DEFAULT_CAPACITY,
            entries: Mutex::default(),
            last_warn: Mutex::default(),
        }
    }

    /// Hashes under `prefix` in the Redis at `redis_url`, on a connection of their own.
    pub fn connect(redis_url: &str, prefix: &str) -> Self {
        Self::new(crate::ratelimit::lazy_connection(redis_url), prefix)
    }

    /// Another cache lifetime (tests; the default is [`DEFAULT_TTL`]).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// What is known of `tenant`, read from Redis when the cached answer is older than the TTL.
    pub async fn lookup(&self, tenant: &str) -> Known {
        let cached = self.lock().get(tenant).copied();
        if let Some(e) = cached
            && e.checked.elapsed() < self.ttl
        {
            return e.known;
        }
        let fetched = self.fetch(tenant).await;
        let mut entries = self.lock();
        let previous = entries.get(tenant).map(|e| e.known);
        let known = remember(previous, fetched);
        let now = Instant::now();
        if !entries.contains_key(tenant) {
            evict(&mut entries, now, self.ttl, self.capacity);
        }
        entries.insert(tenant.to_owned(), Entry { known, checked: now });
        known
    }

    /// The hash of `tenant`: `Some(None)` when there is none, `None` when Redis did not answer.
    async fn fetch(&self, tenant: &str) -> Option<Option<TenantQuota>> {
        let Some(conn) = &self.conn else {
            return None;
        };
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(key(&self.prefix, tenant));
        let reply = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            cmd.query_async::<HashMap<String, String>>(&mut conn),
        )
        .await;
        match reply {
            Ok(Ok(fields)) => Some(TenantQuota::from_fields(&fields)),
            Ok(Err(e)) => self.unanswered(&e.to_string()),
            Err(_) => self.unanswered("timed out"),
        }
    }

    fn unanswered(&self, cause: &str) -> Option<Option<TenantQuota>> {
        let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *last = Some(Instant::now());
            tracing::warn!(%cause, "tenant quotas unavailable; using what is cached, else the token's tier");
        }
        None
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: TierLimits = TierLimits {
        per_second: 20,
        burst: 40,
    };
    const TINY: TierLimits = TierLimits {
        per_second: 1,
        burst: 1,
    };

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn quota(limits: Option<TierLimits>, suspended: bool) -> Known {
        Known::Provisioned(TenantQuota { limits, suspended })
    }

    #[test]
    fn the_hash_is_read_as_provisioning_writes_it() {
        let q = TenantQuota::from_fields(&fields(&[
            ("tier", "low"),
            ("rate_per_second", "1"),
            ("burst", "1"),
            ("suspended", "0"),
        ]));
        assert_eq!(
            q,
            Some(TenantQuota {
                limits: Some(TINY),
                suspended: false
            })
        );
        let q = TenantQuota::from_fields(&fields(&[("suspended", "1")]));
        assert_eq!(
            q,
            Some(TenantQuota {
                limits: None,
                suspended: true
            })
        );
        assert_eq!(TenantQuota::from_fields(&HashMap::new()), None, "no hash");
        let junk = TenantQuota::from_fields(&fields(&[("rate_per_second", "many"), ("burst", "2")]));
        assert_eq!(junk.and_then(|q| q.limits), None, "unusable limits are none");
    }

    #[test]
    fn a_suspended_tenant_is_refused_whatever_its_limits() {
        assert_eq!(admit(quota(Some(TINY), true), TOKEN), Admission::Suspended);
        assert_eq!(admit(quota(None, true), TOKEN), Admission::Suspended);
    }

    #[test]
    fn the_hash_limits_win_over_the_token_tier() {
        assert_eq!(admit(quota(Some(TINY), false), TOKEN), Admission::Limit(TINY));
    }

    #[test]
    fn without_hash_limits_the_token_tier_applies() {
        assert_eq!(admit(Known::Absent, TOKEN), Admission::Limit(TOKEN));
        assert_eq!(admit(Known::Unknown, TOKEN), Admission::Limit(TOKEN));
        assert_eq!(admit(quota(None, false), TOKEN), Admission::Limit(TOKEN));
    }

    #[test]
    fn an_unanswered_lookup_keeps_what_was_known() {
        let suspended = quota(None, true);
        assert_eq!(remember(Some(suspended), None), suspended, "stays refused");
        assert_eq!(remember(Some(Known::Absent), None), Known::Absent);
        assert_eq!(remember(None, None), Known::Unknown);
        // An answer replaces whatever was known, reactivation included.
        let active = TenantQuota {
            limits: Some(TINY),
            suspended: false,
        };
        assert_eq!(
            remember(Some(suspended), Some(Some(active))),
            Known::Provisioned(active)
        );
        assert_eq!(remember(Some(suspended), Some(None)), Known::Absent);
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_suspensions_last() {
        let ttl = Duration::from_secs(2);
        let start = Instant::now();
        let later = start + Duration::from_secs(10);
        let mut entries = HashMap::new();
        for i in 0..10 {
            let known = if i < 3 { quota(None, true) } else { Known::Absent };
            entries.insert(
                format!("t{i}"),
                Entry {
                    known,
                    checked: start,
                },
            );
        }
        evict(&mut entries, later, ttl, 10);
        assert_eq!(entries.len(), 3, "stale non-suspensions go first");
        assert!(entries.values().all(Entry::suspended));

        let mut fresh = HashMap::new();
        for i in 0..10 {
            let known = if i == 0 { quota(None, true) } else { Known::Absent };
            let checked = start + Duration::from_millis(i);
            fresh.insert(format!("t{i}"), Entry { known, checked });
        }
        evict(&mut fresh, start, ttl, 10);
        assert!(fresh.len() < 10, "room made: {}", fresh.len());
        assert!(fresh.contains_key("t0"), "the suspension is kept");
        assert!(!fresh.contains_key("t1"), "the oldest other goes");

        let mut all_suspended: HashMap<String, Entry> = (0..4)
            .map(|i| {
                let entry = Entry {
                    known: quota(None, true),
                    checked: start,
                };
                (format!("t{i}"), entry)
            })
            .collect();
        evict(&mut all_suspended, later, ttl, 4);
        assert!(all_suspended.len() < 4, "the bound holds even for suspensions");
    }

    #[test]
    fn keys_are_the_provisioned_ones() {
        assert_eq!(key("", "t1"), "keel:quota:t1");
        assert_eq!(key("ab_", "t1"), "keel:ab_quota:t1");
    }
}
