//! The typed data of the tenant events other services consume, read from an envelope's `data`.
//! The tenant service writes these fields; a consumer that finds one missing or malformed has a
//! poison message, not a tenant.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::tier::Tier;

/// The tenant lifecycle events other services act on, with their data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantLifecycle {
    Created(TenantCreated),
    TierChanged(TenantTierChanged),
    Suspended(TenantSuspended),
    Reactivated,
    DeletionRequested,
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TenantCreated {
    #[serde(default)]
    pub name: String,
    pub slug: String,
    pub tier: Tier,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TenantTierChanged {
    pub from: Tier,
    pub to: Tier,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TenantSuspended {
    #[serde(default)]
    pub reason: String,
}

/// Why an event's data could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{event}: {reason}")]
pub struct DataError {
    pub event: String,
    pub reason: String,
}

fn read<T: DeserializeOwned>(event: &str, data: &serde_json::Value) -> Result<T, DataError> {
    T::deserialize(data).map_err(|e| DataError {
        event: event.to_owned(),
        reason: e.to_string(),
    })
}

impl TenantLifecycle {
    /// The lifecycle event named `event` (e.g. `TenantCreated`) with `data`; `Ok(None)` for a
    /// tenant event that is not a lifecycle event (members, licenses, …).
    pub fn parse(event: &str, data: &serde_json::Value) -> Result<Option<Self>, DataError> {
        Ok(Some(match event {
            "TenantCreated" => Self::Created(read(event, data)?),
            "TenantTierChanged" => Self::TierChanged(read(event, data)?),
            "TenantSuspended" => Self::Suspended(read(event, data)?),
            "TenantReactivated" => Self::Reactivated,
            "TenantDeletionRequested" => Self::DeletionRequested,
            "TenantDeleted" => Self::Deleted,
            _ => return Ok(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_lifecycle_data_and_rejects_what_is_malformed() {
        let created = TenantLifecycle::parse(
            "TenantCreated",
            &json!({"name": "Acme", "slug": "acme", "tier": "mid", "extra": 1}),
        )
        .unwrap();
        assert_eq!(
            created,
            Some(TenantLifecycle::Created(TenantCreated {
                name: "Acme".into(),
                slug: "acme".into(),
                tier: Tier::Mid
            }))
        );
        let bad = TenantLifecycle::parse("TenantTierChanged", &json!({"from": "low", "to": "gold"}));
        assert!(bad.unwrap_err().reason.contains("gold"));
        assert!(TenantLifecycle::parse("TenantCreated", &json!({"slug": "x"})).is_err());
        assert_eq!(TenantLifecycle::parse("MemberInvited", &json!({})), Ok(None));
    }
}
