//! The product's tier matrix, as data. Every consumer of a tier rule (rate limits, retention,
//! quotas, manifests, licenses, billing) reads [`Tier::entitlements`] and nothing else.
//!
//! "Unlimited" is `None`, never a large number: a consumer that needs a bound for an unlimited
//! entitlement must say so where it uses it.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Low,
    Mid,
    High,
    Business,
}

/// Where a tenant's workloads run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Infrastructure {
    Shared,
    Dedicated,
}

/// How much of a request's payload lineage is captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lineage {
    /// Route scope only, at most `captures_per_minute`.
    Limited {
        captures_per_minute: u32,
    },
    Full,
}

/// Team management features.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeamManagement {
    Basic,
    Full,
}

/// How the tenant is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pricing {
    /// Base fee + data volume GB, CPU core·hours, RAM GB·hours.
    Usage,
    /// Committed resources; usage above them raises overage alerts, not charges.
    Committed,
}

/// Days of timeline kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    Days(u32),
    /// Set per tenant by contract; [`CUSTOM_RETENTION_DEFAULT_DAYS`] until it is.
    Custom,
}

/// Retention of a `Custom` tenant that has no contract value yet.
pub const CUSTOM_RETENTION_DEFAULT_DAYS: u32 = 365;
/// Audit records stay at least this long, whatever the tier.
pub const AUDIT_RETENTION_DAYS: u32 = 365;

/// Sustained requests per second and burst, per tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// Namespace-wide resources of a tier's workloads (Kubernetes quantities) and the replicas of
/// the tenant's server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sizing {
    pub requests_cpu: &'static str,
    pub requests_memory: &'static str,
    pub limits_cpu: &'static str,
    pub limits_memory: &'static str,
    pub volume_claims: &'static str,
    pub storage: &'static str,
    pub replicas: u32,
}

/// What a tier grants.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entitlements {
    pub infrastructure: Infrastructure,
    /// Environments a tenant may have; `None` is unlimited.
    pub environments: Option<u32>,
    /// The environments a new tenant gets.
    pub default_environments: &'static [&'static str],
    /// Connected agents; `None` is unlimited.
    pub agent_limit: Option<u32>,
    pub retention: Retention,
    pub lineage: Lineage,
    pub team_management: TeamManagement,
    /// Secret vaults beside the platform-native store; `None` is unlimited.
    pub extra_vaults: Option<u32>,
    /// The availability promised, e.g. `99.9%`; `best effort` for none.
    pub sla: &'static str,
    pub pricing: Pricing,
    /// Feature flags: topology, lineage, correlation, debugger, replay, sso, custom_roles.
    pub features: &'static [&'static str],
    pub rate_limit: RateLimit,
    pub sizing: Sizing,
}

impl Entitlements {
    /// Pods a tenant's namespace may run: two per agent; `None` (no quota) when agents are
    /// unlimited.
    pub fn pod_quota(&self) -> Option<u32> {
        self.agent_limit.map(|a| a.saturating_mul(2))
    }
}

impl Entitlements {
    /// Days of (non-audit) timeline kept: the tier's, or the tenant's contract value for `Custom`.
    pub fn retention_days(&self, custom: Option<u32>) -> u32 {
        match self.retention {
            Retention::Days(d) => d,
            Retention::Custom => custom.unwrap_or(CUSTOM_RETENTION_DEFAULT_DAYS),
        }
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(&feature)
    }
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Low, Tier::Mid, Tier::High, Tier::Business];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Mid => "mid",
            Tier::High => "high",
            Tier::Business => "business",
        }
    }

    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The product's tier matrix. Agent limits (5 and 25) and the rate limits are Keel's
    /// choice; every other value is the matrix's.
    pub fn entitlements(self) -> Entitlements {
        match self {
            Tier::Low => Entitlements {
                infrastructure: Infrastructure::Shared,
                environments: Some(1),
                default_environments: &["prod"],
                agent_limit: Some(5),
                retention: Retention::Days(7),
                lineage: Lineage::Limited {
                    captures_per_minute: 10,
                },
                team_management: TeamManagement::Basic,
                extra_vaults: Some(0),
                sla: "best effort",
                pricing: Pricing::Usage,
                features: &["topology", "lineage"],
                rate_limit: RateLimit {
                    per_second: 20,
                    burst: 40,
                },
                sizing: Sizing {
                    requests_cpu: "2",
                    requests_memory: "4Gi",
                    limits_cpu: "4",
                    limits_memory: "8Gi",
                    volume_claims: "5",
                    storage: "20Gi",
                    replicas: 1,
                },
            },
            Tier::Mid => Entitlements {
                infrastructure: Infrastructure::Shared,
                environments: Some(2),
                default_environments: &["dev", "prod"],
                agent_limit: Some(25),
                retention: Retention::Days(30),
                lineage: Lineage::Full,
                team_management: TeamManagement::Basic,
                extra_vaults: Some(1),
                sla: "99.5%",
                pricing: Pricing::Usage,
                features: &["topology", "lineage", "correlation"],
                rate_limit: RateLimit {
                    per_second: 100,
                    burst: 200,
                },
                sizing: Sizing {
                    requests_cpu: "8",
                    requests_memory: "16Gi",
                    limits_cpu: "16",
                    limits_memory: "32Gi",
                    volume_claims: "20",
                    storage: "100Gi",
                    replicas: 1,
                },
            },
            Tier::High => Entitlements {
                infrastructure: Infrastructure::Dedicated,
                environments: None,
                default_environments: &["dev", "staging", "prod"],
                agent_limit: None,
                retention: Retention::Days(90),
                lineage: Lineage::Full,
                team_management: TeamManagement::Full,
                extra_vaults: None,
                sla: "99.9%",
                pricing: Pricing::Committed,
                features: FULL,
                rate_limit: RateLimit {
                    per_second: 500,
                    burst: 1000,
                },
                sizing: Sizing {
                    requests_cpu: "32",
                    requests_memory: "64Gi",
                    limits_cpu: "64",
                    limits_memory: "128Gi",
                    volume_claims: "50",
                    storage: "500Gi",
                    replicas: 2,
                },
            },
            Tier::Business => Entitlements {
                infrastructure: Infrastructure::Dedicated,
                environments: None,
                default_environments: &["dev", "staging", "prod"],
                agent_limit: None,
                retention: Retention::Custom,
                lineage: Lineage::Full,
                team_management: TeamManagement::Full,
                extra_vaults: None,
                sla: "99.95%+ custom",
                pricing: Pricing::Committed,
                features: FULL,
                rate_limit: RateLimit {
                    per_second: 2000,
                    burst: 4000,
                },
                sizing: Sizing {
                    requests_cpu: "128",
                    requests_memory: "256Gi",
                    limits_cpu: "256",
                    limits_memory: "512Gi",
                    volume_claims: "200",
                    storage: "2Ti",
                    replicas: 3,
                },
            },
        }
    }
}

const FULL: &[&str] = &[
    "topology",
    "lineage",
    "correlation",
    "debugger",
    "replay",
    "sso",
    "custom_roles",
];

/// The rate limit of a tier named by a token's `tier` claim; an unknown or missing name gets
/// the lowest tier's.
pub fn rate_limit(tier: &str) -> RateLimit {
    Tier::parse(tier).unwrap_or(Tier::Low).entitlements().rate_limit
}

/// [`rate_limit`] in the form the auth layer applies (`keel_auth::AuthConfig::with_limiter`).
pub fn auth_limits(tier: &str) -> keel_auth::TierLimits {
    let limit = rate_limit(tier);
    keel_auth::TierLimits {
        per_second: limit.per_second,
        burst: limit.burst,
    }
}

/// Days of non-audit timeline kept for a tenant of tier `tier` (by name); `None` when the tier
/// is not known yet.
pub fn retention_days(tier: &str) -> Option<u32> {
    Tier::parse(tier).map(|t| t.entitlements().retention_days(None))
}

/// The longest retention of any tier with a fixed one, and of audit records: rows older than
/// this are kept only for a legal hold or a custom contract.
pub fn max_fixed_retention_days() -> u32 {
    Tier::ALL
        .into_iter()
        .map(|t| t.entitlements().retention_days(None))
        .chain([AUDIT_RETENTION_DAYS])
        .max()
        .unwrap_or(AUDIT_RETENTION_DAYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product's tier matrix, row by row.
    #[test]
    fn the_table_is_the_product_matrix() {
        let [low, mid, high, business] = Tier::ALL.map(Tier::entitlements);
        let col = |f: fn(&Entitlements) -> String| [&low, &mid, &high, &business].map(f);

        assert_eq!(
            col(|e| format!("{:?}", e.infrastructure)),
            ["Shared", "Shared", "Dedicated", "Dedicated"]
        );
        assert_eq!(
            [&low, &mid, &high, &business].map(|e| e.environments),
            [Some(1), Some(2), None, None]
        );
        assert_eq!(low.default_environments, ["prod"]);
        assert_eq!(mid.default_environments, ["dev", "prod"]);
        assert_eq!(high.default_environments, ["dev", "staging", "prod"]);
        assert_eq!(
            [&low, &mid, &high, &business].map(|e| e.agent_limit),
            [Some(5), Some(25), None, None]
        );
        assert_eq!(
            [&low, &mid, &high, &business].map(|e| e.retention),
            [
                Retention::Days(7),
                Retention::Days(30),
                Retention::Days(90),
                Retention::Custom
            ]
        );
        assert_eq!(business.retention_days(Some(730)), 730);
        assert_eq!(
            low.lineage,
            Lineage::Limited {
                captures_per_minute: 10
            }
        );
        assert!(
            [&mid, &high, &business]
                .iter()
                .all(|e| e.lineage == Lineage::Full)
        );
        assert!([&low, &mid, &high, &business].iter().all(|e| e.has("topology")));
        assert_eq!(
            col(|e| e.has("correlation").to_string()),
            ["false", "true", "true", "true"]
        );
        for f in ["debugger", "replay", "sso", "custom_roles"] {
            assert_eq!(
                [&low, &mid, &high, &business].map(|e| e.has(f)),
                [false, false, true, true],
                "{f}"
            );
        }
        assert_eq!(
            col(|e| format!("{:?}", e.team_management)),
            ["Basic", "Basic", "Full", "Full"]
        );
        assert_eq!(
            [&low, &mid, &high, &business].map(|e| e.extra_vaults),
            [Some(0), Some(1), None, None]
        );
        assert_eq!(
            [&low, &mid, &high, &business].map(|e| e.sla),
            ["best effort", "99.5%", "99.9%", "99.95%+ custom"]
        );
        assert_eq!(
            col(|e| format!("{:?}", e.pricing)),
            ["Usage", "Usage", "Committed", "Committed"]
        );
    }

    #[test]
    fn higher_tiers_grant_at_least_what_lower_ones_do() {
        let at_least = |lo: Option<u32>, hi: Option<u32>| match (lo, hi) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(h)) => h >= l,
        };
        for pair in Tier::ALL.windows(2) {
            let (lo, hi) = (pair[0].entitlements(), pair[1].entitlements());
            assert!(at_least(lo.environments, hi.environments), "{pair:?}");
            assert!(at_least(lo.agent_limit, hi.agent_limit), "{pair:?}");
            assert!(hi.retention_days(None) >= lo.retention_days(None), "{pair:?}");
            assert!(lo.features.iter().all(|f| hi.has(f)), "{pair:?}");
            assert!(hi.rate_limit.per_second >= lo.rate_limit.per_second);
        }
    }

    #[test]
    fn names_round_trip_and_unknown_tiers_get_the_lowest_limits() {
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.as_str()), Some(t));
        }
        assert_eq!(Tier::parse("gold"), None);
        assert_eq!(rate_limit("platinum"), Tier::Low.entitlements().rate_limit);
        assert_eq!(rate_limit("business").per_second, 2000);
        assert_eq!(retention_days("low"), Some(7));
        assert_eq!(retention_days("nope"), None);
        assert_eq!(max_fixed_retention_days(), 365);
    }
}
