//! Between domain types and their protobuf messages.

use chrono::{DateTime, Utc};
use keel_proto::v1 as pb;

use crate::domain::validate::Invalid;
use crate::domain::{Role, Status, Tenant, Tier};

pub fn tier_to_pb(t: Tier) -> pb::Tier {
    match t {
        Tier::Low => pb::Tier::Low,
        Tier::Mid => pb::Tier::Mid,
        Tier::High => pb::Tier::High,
        Tier::Business => pb::Tier::Business,
    }
}

pub fn tier_from_pb(field: &'static str, value: i32) -> Result<Tier, Invalid> {
    match pb::Tier::try_from(value) {
        Ok(pb::Tier::Low) => Ok(Tier::Low),
        Ok(pb::Tier::Mid) => Ok(Tier::Mid),
        Ok(pb::Tier::High) => Ok(Tier::High),
        Ok(pb::Tier::Business) => Ok(Tier::Business),
        _ => Err(Invalid {
            field,
            reason: "must be one of TIER_LOW, TIER_MID, TIER_HIGH, TIER_BUSINESS".into(),
        }),
    }
}

pub fn role_to_pb(r: Role) -> pb::Role {
    match r {
        Role::Owner => pb::Role::Owner,
        Role::Admin => pb::Role::Admin,
        Role::Developer => pb::Role::Developer,
        Role::Viewer => pb::Role::Viewer,
    }
}

pub fn role_from_pb(field: &'static str, value: i32) -> Result<Role, Invalid> {
    match pb::Role::try_from(value) {
        Ok(pb::Role::Owner) => Ok(Role::Owner),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Developer) => Ok(Role::Developer),
        Ok(pb::Role::Viewer) => Ok(Role::Viewer),
        _ => Err(Invalid {
            field,
            reason: "must be one of ROLE_OWNER, ROLE_ADMIN, ROLE_DEVELOPER, ROLE_VIEWER".into(),
        }),
    }
}

pub fn status_to_pb(s: Status) -> pb::TenantStatus {
    match s {
        Status::Absent => pb::TenantStatus::Unspecified,
        Status::Pending => pb::TenantStatus::Pending,
        Status::Provisioning => pb::TenantStatus::Provisioning,
        Status::Active => pb::TenantStatus::Active,
        Status::Suspended => pb::TenantStatus::Suspended,
        Status::Failed => pb::TenantStatus::Failed,
        Status::Deleting => pb::TenantStatus::Deleting,
        Status::Deleted => pb::TenantStatus::Deleted,
    }
}

pub fn status_from_name(s: &str) -> Status {
    match s {
        "PENDING" => Status::Pending,
        "PROVISIONING" => Status::Provisioning,
        "ACTIVE" => Status::Active,
        "SUSPENDED" => Status::Suspended,
        "FAILED" => Status::Failed,
        "DELETING" => Status::Deleting,
        "DELETED" => Status::Deleted,
        _ => Status::Absent,
    }
}

pub fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// The serde name of a unit enum value (`shared`, `full`, `usage`, …).
fn label<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn entitlements(t: Tier) -> pb::Entitlements {
    use keel_tenancy::tier::{Lineage, Retention};
    let e = t.entitlements();
    let (lineage, captures) = match e.lineage {
        Lineage::Full => ("full", None),
        Lineage::Limited { captures_per_minute } => ("limited", Some(captures_per_minute)),
    };
    pb::Entitlements {
        environments: e.environments,
        agent_limit: e.agent_limit,
        retention_days: e.retention_days(None),
        features: e.features.iter().map(|f| (*f).to_owned()).collect(),
        default_environments: e.default_environments.iter().map(|f| (*f).to_owned()).collect(),
        infrastructure: label(&e.infrastructure),
        lineage: lineage.into(),
        lineage_captures_per_minute: captures,
        team_management: label(&e.team_management),
        extra_vaults: e.extra_vaults,
        sla: e.sla.into(),
        pricing: label(&e.pricing),
        custom_retention: e.retention == Retention::Custom,
    }
}

pub fn tenant_to_pb(t: &Tenant, version: usize, created_at: Option<DateTime<Utc>>) -> pb::Tenant {
    pb::Tenant {
        id: t.id.clone(),
        name: t.name.clone(),
        slug: t.slug.clone(),
        tier: t.tier.map(tier_to_pb).unwrap_or(pb::Tier::Unspecified) as i32,
        status: status_to_pb(t.status) as i32,
        entitlements: t.tier.map(entitlements),
        status_reason: t.status_reason.clone(),
        created_at: created_at.map(timestamp),
        version: version as u64,
    }
}
