//! Tiers and their entitlements, as data.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Low,
    Mid,
    High,
    Business,
}

/// What a tier grants. Feature names: topology, lineage, correlation, debugger, replay, sso,
/// custom_roles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entitlements {
    pub environments: u32,
    pub agent_limit: u32,
    pub retention_days: u32,
    pub features: &'static [&'static str],
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

    pub fn entitlements(self) -> Entitlements {
        match self {
            Tier::Low => Entitlements {
                environments: 1,
                agent_limit: 5,
                retention_days: 30,
                features: &["topology"],
            },
            Tier::Mid => Entitlements {
                environments: 3,
                agent_limit: 25,
                retention_days: 90,
                features: &["topology", "lineage", "correlation"],
            },
            Tier::High => Entitlements {
                environments: 10,
                agent_limit: 100,
                retention_days: 180,
                features: &["topology", "lineage", "correlation", "debugger", "replay"],
            },
            Tier::Business => Entitlements {
                environments: 50,
                agent_limit: 1000,
                retention_days: 365,
                features: &[
                    "topology",
                    "lineage",
                    "correlation",
                    "debugger",
                    "replay",
                    "sso",
                    "custom_roles",
                ],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_tiers_grant_at_least_what_lower_ones_do() {
        for pair in Tier::ALL.windows(2) {
            let (lo, hi) = (pair[0].entitlements(), pair[1].entitlements());
            assert!(hi.environments >= lo.environments && hi.agent_limit >= lo.agent_limit);
            assert!(hi.retention_days >= lo.retention_days);
            assert!(lo.features.iter().all(|f| hi.features.contains(f)), "{pair:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for t in Tier::ALL {
            assert_eq!(Tier::parse(t.as_str()), Some(t));
        }
        assert_eq!(Tier::parse("gold"), None);
    }
}
