//! The kinds of provisioning run, what starts each, and the steps each plans.

use serde::{Deserialize, Serialize};

use super::run::{Op, PlannedStep};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    Provision,
    TierChange,
    Suspend,
    Reactivate,
    Delete,
}

impl RunKind {
    pub const ALL: [RunKind; 5] = [
        RunKind::Provision,
        RunKind::TierChange,
        RunKind::Suspend,
        RunKind::Reactivate,
        RunKind::Delete,
    ];

    /// The run a tenant lifecycle event asks for, if any.
    pub fn from_event(event: &str) -> Option<RunKind> {
        match event {
            "TenantCreated" => Some(RunKind::Provision),
            "TenantTierChanged" => Some(RunKind::TierChange),
            "TenantSuspended" => Some(RunKind::Suspend),
            "TenantReactivated" => Some(RunKind::Reactivate),
            "TenantDeletionRequested" => Some(RunKind::Delete),
            _ => None,
        }
    }

    /// The kind named `s` (as stored, see [`RunKind::as_str`]).
    pub fn parse(s: &str) -> Option<RunKind> {
        RunKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Provision => "provision",
            RunKind::TierChange => "tier_change",
            RunKind::Suspend => "suspend",
            RunKind::Reactivate => "reactivate",
            RunKind::Delete => "delete",
        }
    }

    /// The steps of each kind of run, in order.
    pub fn plan(self) -> Vec<PlannedStep> {
        let apply = |names: &[&str]| {
            names
                .iter()
                .map(|n| PlannedStep {
                    step: (*n).to_owned(),
                    op: Op::Apply,
                })
                .collect::<Vec<_>>()
        };
        match self {
            RunKind::Provision => apply(&[
                "begin",
                "database",
                "messaging",
                "quotas",
                "manifests",
                "license",
                "activate",
            ]),
            // A tier change or reactivation grants more: it too runs only when the tenant
            // service agrees (the tier it asks for is the tenant's, the tenant is ACTIVE).
            RunKind::TierChange => apply(&["confirm-tier", "quotas", "manifests", "license"]),
            // Destructive plans first confirm the tenant's state with the tenant service, the
            // source of truth: a forged or stale trigger cannot suspend or delete a live tenant.
            RunKind::Suspend => apply(&["confirm-suspended", "database", "quotas", "manifests"]),
            RunKind::Reactivate => apply(&["confirm-active", "database", "quotas", "manifests"]),
            RunKind::Delete => {
                let mut plan = apply(&["confirm-deleting"]);
                plan.extend(
                    ["manifests", "quotas", "messaging", "database"]
                        .iter()
                        .map(|n| PlannedStep {
                            step: (*n).to_owned(),
                            op: Op::Remove,
                        }),
                );
                plan.push(PlannedStep {
                    step: "finalize".into(),
                    op: Op::Apply,
                });
                plan
            }
        }
    }
}
