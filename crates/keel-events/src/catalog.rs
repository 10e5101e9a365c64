//! The event catalog: every event type Keel publishes, with the JSON Schema (draft 2020-12) of
//! its `data`. The schemas live in `schemas/events/<service>/<Name>.v<N>.json` at the workspace
//! root and are compiled in; the integration tests check that the two lists agree, that every
//! schema compiles and that its examples validate.

use serde_json::Value;

/// One event type and the schema of its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventType {
    /// The producing service, e.g. `tenant`.
    pub service: &'static str,
    /// The event, a past-tense noun, e.g. `TenantCreated`.
    pub name: &'static str,
    /// From 1; a breaking change of `data` is a new version.
    pub version: u32,
    /// The JSON Schema of `data`, as text.
    pub schema: &'static str,
}

impl EventType {
    /// The CloudEvents `type`: `keel.<service>.<Name>.v<N>`.
    pub fn type_name(&self) -> String {
        crate::envelope::event_type(self.service, self.name, self.version)
    }

    /// Where the schema lives, relative to the `schemas/` directory.
    pub fn schema_path(&self) -> String {
        format!("events/{}/{}.v{}.json", self.service, self.name, self.version)
    }

    /// The schema parsed as JSON.
    pub fn schema_json(&self) -> serde_json::Result<Value> {
        serde_json::from_str(self.schema)
    }
}

/// JSON Schema of the envelope (`schemas/envelope.json`).
pub const ENVELOPE_SCHEMA: &str = include_str!("../../../schemas/envelope.json");
/// JSON Schema of an audit record on KEEL_AUDIT (`schemas/audit-record.json`).
pub const AUDIT_RECORD_SCHEMA: &str = include_str!("../../../schemas/audit-record.json");

macro_rules! event_type {
    ($service:literal, $name:literal, $version:literal) => {
        EventType {
            service: $service,
            name: $name,
            version: $version,
            schema: include_str!(concat!(
                "../../../schemas/events/",
                $service,
                "/",
                $name,
                ".v",
                $version,
                ".json"
            )),
        }
    };
}

/// Every event type, grouped by service.
pub static CATALOG: &[EventType] = &[
    // tenant: lifecycle PENDING -> PROVISIONING -> ACTIVE -> SUSPENDED -> DELETED
    event_type!("tenant", "TenantCreated", 1),
    event_type!("tenant", "TenantTierChanged", 1),
    event_type!("tenant", "TenantSuspended", 1),
    event_type!("tenant", "TenantReactivated", 1),
    event_type!("tenant", "TenantDeletionRequested", 1),
    event_type!("tenant", "TenantProvisioningStarted", 1),
    event_type!("tenant", "TenantProvisioned", 1),
    event_type!("tenant", "TenantProvisioningFailed", 1),
    event_type!("tenant", "TenantActivated", 1),
    event_type!("tenant", "TenantDeleted", 1),
    // tenant: members, licenses, service accounts
    event_type!("tenant", "MemberInvited", 1),
    event_type!("tenant", "MemberRoleChanged", 1),
    event_type!("tenant", "MemberRemoved", 1),
    event_type!("tenant", "LicenseIssued", 1),
    event_type!("tenant", "ServiceAccountCreated", 1),
    event_type!("tenant", "ApiKeyIssued", 1),
    event_type!("tenant", "ApiKeyRevoked", 1),
    // provisioning: one saga run per tenant lifecycle event
    event_type!("provisioning", "ProvisioningStarted", 1),
    event_type!("provisioning", "StepStarted", 1),
    event_type!("provisioning", "StepSucceeded", 1),
    event_type!("provisioning", "StepFailed", 1),
    event_type!("provisioning", "CompensationStarted", 1),
    event_type!("provisioning", "StepCompensated", 1),
    event_type!("provisioning", "CompensationFailed", 1),
    event_type!("provisioning", "CompensationAbandoned", 1),
    event_type!("provisioning", "ProvisioningCompleted", 1),
    event_type!("provisioning", "ProvisioningFailed", 1),
    // billing: usage records (one aggregate per tenant, meter, hour and group) and meters
    event_type!("billing", "UsageRecorded", 1),
    event_type!("billing", "UsageCorrected", 1),
    event_type!("billing", "MeterDefined", 1),
    event_type!("billing", "MeterStale", 1),
    event_type!("billing", "MeterStaleCleared", 1),
    event_type!("billing", "UsageOverCommitment", 1),
];

/// The catalog entry of `service`'s event `name` version `version`.
pub fn lookup(service: &str, name: &str, version: u32) -> Option<&'static EventType> {
    CATALOG
        .iter()
        .find(|e| e.service == service && e.name == name && e.version == version)
}

/// The catalog entry of a CloudEvents `type` (`keel.<service>.<Name>.v<N>`).
pub fn lookup_type(event_type: &str) -> Option<&'static EventType> {
    let (service, name, version) = crate::envelope::rules::split_type(event_type)?;
    lookup(service, name, version)
}

/// The catalog entries of one service.
pub fn of_service(service: &str) -> impl Iterator<Item = &'static EventType> + '_ {
    CATALOG.iter().filter(move |e| e.service == service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::rules;
    use std::collections::HashSet;

    #[test]
    fn lookups() {
        let created = lookup("tenant", "TenantCreated", 1).expect("in catalog");
        assert_eq!(created.type_name(), "keel.tenant.TenantCreated.v1");
        assert_eq!(created.schema_path(), "events/tenant/TenantCreated.v1.json");
        assert_eq!(lookup_type("keel.tenant.TenantCreated.v1"), Some(created));
        assert_eq!(lookup("tenant", "TenantCreated", 2), None);
        assert_eq!(lookup("billing", "TenantCreated", 1), None);
        assert!(lookup("billing", "UsageRecorded", 1).is_some());
        assert_eq!(lookup_type("keel.tenant.TenantCreated"), None);
        assert_eq!(
            of_service("tenant").count() + of_service("provisioning").count() + of_service("billing").count(),
            CATALOG.len()
        );
        assert_eq!(of_service("nope").count(), 0);
    }

    #[test]
    fn entries_are_unique_well_named_json() {
        let mut seen = HashSet::new();
        for e in CATALOG {
            assert!(
                seen.insert((e.service, e.name, e.version)),
                "duplicate {}",
                e.type_name()
            );
            assert!(
                rules::split_type(&e.type_name()).is_some(),
                "bad name {}",
                e.type_name()
            );
            let schema = e
                .schema_json()
                .unwrap_or_else(|err| panic!("{}: {err}", e.schema_path()));
            assert_eq!(schema["title"], e.type_name(), "{}", e.schema_path());
        }
        for text in [ENVELOPE_SCHEMA, AUDIT_RECORD_SCHEMA] {
            serde_json::from_str::<Value>(text).expect("schema is JSON");
        }
    }
}
