//! The Tenant aggregate: status machine, tier, members and service accounts.
//!
//! ```text
//! PENDING → PROVISIONING → ACTIVE ⇄ SUSPENDED
//!              ↓    ↑
//!             FAILED (retry)          any but DELETED → DELETING → DELETED
//! ```

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

use keel_tenancy::Tier;

pub use super::commands::TenantCommand;
pub use super::error::TenantError;
pub use super::events::TenantEvent;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Not created yet (the aggregate has no events).
    #[default]
    Absent,
    Pending,
    Provisioning,
    Active,
    Suspended,
    Failed,
    Deleting,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Absent => "ABSENT",
            Status::Pending => "PENDING",
            Status::Provisioning => "PROVISIONING",
            Status::Active => "ACTIVE",
            Status::Suspended => "SUSPENDED",
            Status::Failed => "FAILED",
            Status::Deleting => "DELETING",
            Status::Deleted => "DELETED",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Developer,
    Viewer,
}

/// A value encrypted under the tenant's data key; only the key id is in the clear.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encrypted {
    pub key_id: String,
    pub nonce: String,
    pub ciphertext: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub email_enc: Encrypted,
    pub email_digest: String,
    pub role: Role,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub scopes: Vec<String>,
    pub key_ids: Vec<String>,
    /// Keys of `key_ids` recorded as revoked.
    #[serde(default)]
    pub revoked_key_ids: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub tier: Option<Tier>,
    pub status: Status,
    pub status_reason: String,
    pub request_id: String,
    pub members: BTreeMap<String, Member>,
    pub accounts: BTreeMap<String, Account>,
    pub license_id: Option<String>,
}

impl Tenant {
    fn require(&self, action: &'static str, allowed: &[Status]) -> Result<(), TenantError> {
        match self.status {
            Status::Absent => Err(TenantError::NotFound),
            s if allowed.contains(&s) => Ok(()),
            current => Err(TenantError::InvalidTransition { action, current }),
        }
    }

    fn live(&self, action: &'static str) -> Result<(), TenantError> {
        use Status::*;
        self.require(action, &[Pending, Provisioning, Active, Suspended, Failed])
    }

    fn owners(&self) -> usize {
        self.members.values().filter(|m| m.role == Role::Owner).count()
    }

    /// Decides which events a command produces; no I/O, no state change.
    pub fn decide(&self, command: TenantCommand) -> Result<Vec<TenantEvent>, TenantError> {
        use Status::*;
        use TenantCommand as C;
        use TenantEvent as E;
        let events = match command {
            C::Create {
                tenant_id,
                name,
                slug,
                tier,
                owner_member_id,
                owner_email_enc,
                owner_email_digest,
                request_id,
            } => {
                if self.status != Absent {
                    return Err(TenantError::AlreadyExists);
                }
                vec![E::TenantCreated {
                    tenant_id,
                    name,
                    slug,
                    tier,
                    owner_member_id,
                    owner_email_enc,
                    owner_email_digest,
                    request_id,
                }]
            }
            C::ChangeTier { tier } => {
                self.require(
                    "change the tier of",
                    &[Pending, Provisioning, Active, Suspended, Failed],
                )?;
                match self.tier {
                    Some(from) if from != tier => vec![E::TenantTierChanged { from, to: tier }],
                    _ => vec![],
                }
            }
            C::Suspend { reason } => {
                self.require("suspend", &[Active])?;
                vec![E::TenantSuspended { reason }]
            }
            C::Reactivate => {
                self.require("reactivate", &[Suspended])?;
                vec![E::TenantReactivated {}]
            }
            C::StartProvisioning => {
                self.require("provision", &[Pending, Failed])?;
                vec![E::TenantProvisioningStarted {}]
            }
            C::MarkProvisioned => {
                self.require("activate", &[Provisioning])?;
                vec![E::TenantProvisioned {}, E::TenantActivated {}]
            }
            C::MarkFailed { reason } => {
                self.require("fail", &[Provisioning])?;
                vec![E::TenantProvisioningFailed { reason }]
            }
            C::RequestDeletion => {
                self.live("delete")?;
                vec![E::TenantDeletionRequested {}]
            }
            C::MarkDeleted => {
                self.require("complete deletion of", &[Deleting])?;
                vec![E::TenantDeleted {}]
            }
            C::InviteMember {
                member_id,
                email_enc,
                email_digest,
                role,
            } => {
                self.live("invite members to")?;
                if self.members.values().any(|m| m.email_digest == email_digest) {
                    return Err(TenantError::AlreadyMember);
                }
                vec![E::MemberInvited {
                    member_id,
                    email_enc,
                    email_digest,
                    role,
                }]
            }
            C::ChangeMemberRole { member_id, role } => {
                self.live("change members of")?;
                let member = self.members.get(&member_id).ok_or(TenantError::MemberNotFound)?;
                if member.role == role {
                    return Ok(vec![]);
                }
                if member.role == Role::Owner && self.owners() == 1 {
                    return Err(TenantError::LastOwner);
                }
                vec![E::MemberRoleChanged { member_id, role }]
            }
            C::RemoveMember { member_id } => {
                self.live("remove members of")?;
                let member = self.members.get(&member_id).ok_or(TenantError::MemberNotFound)?;
                if member.role == Role::Owner && self.owners() == 1 {
                    return Err(TenantError::LastOwner);
                }
                vec![E::MemberRemoved { member_id }]
            }
            C::RecordLicense {
                license_id,
                expires_at,
            } => {
                self.require("license", &[Pending, Provisioning, Active, Suspended])?;
                let tier = self.tier.ok_or(TenantError::NotFound)?;
                vec![E::LicenseIssued {
                    license_id,
                    tier,
                    expires_at,
                }]
            }
            C::CreateServiceAccount {
                account_id,
                name,
                scopes,
                key_id,
            } => {
                // The account comes with its key, so only where keys may be issued.
                self.require("add service accounts to", &[Pending, Provisioning, Active])?;
                if self.accounts.values().any(|a| a.name == name) {
                    return Err(TenantError::AccountExists);
                }
                vec![
                    E::ServiceAccountCreated {
                        account_id: account_id.clone(),
                        name,
                        scopes,
                    },
                    E::ApiKeyIssued { account_id, key_id },
                ]
            }
            C::IssueApiKey { account_id, key_id } => {
                self.require("issue keys for", &[Pending, Provisioning, Active])?;
                if !self.accounts.contains_key(&account_id) {
                    return Err(TenantError::AccountNotFound);
                }
                vec![E::ApiKeyIssued { account_id, key_id }]
            }
            C::RevokeApiKey { account_id, key_id } => {
                // Whatever the status: a key can always be taken away.
                if self.status == Absent {
                    return Err(TenantError::NotFound);
                }
                match self.accounts.get(&account_id) {
                    Some(a) if a.key_ids.contains(&key_id) && !a.revoked_key_ids.contains(&key_id) => {
                        vec![E::ApiKeyRevoked { account_id, key_id }]
                    }
                    _ => vec![],
                }
            }
        };
        Ok(events)
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = "tenant";
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = ();

    async fn handle(
        &mut self,
        command: TenantCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), TenantError> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: TenantEvent) {
        use TenantEvent as E;
        match event {
            E::TenantCreated {
                tenant_id,
                name,
                slug,
                tier,
                owner_member_id,
                owner_email_enc,
                owner_email_digest,
                request_id,
            } => {
                self.id = tenant_id;
                self.name = name;
                self.slug = slug;
                self.tier = Some(tier);
                self.status = Status::Pending;
                self.request_id = request_id;
                self.members.insert(
                    owner_member_id,
                    Member {
                        email_enc: owner_email_enc,
                        email_digest: owner_email_digest,
                        role: Role::Owner,
                    },
                );
            }
            E::TenantTierChanged { to, .. } => self.tier = Some(to),
            E::TenantSuspended { reason } => {
                self.status = Status::Suspended;
                self.status_reason = reason;
            }
            E::TenantReactivated {} | E::TenantActivated {} => {
                self.status = Status::Active;
                self.status_reason.clear();
            }
            E::TenantProvisioningStarted {} => {
                self.status = Status::Provisioning;
                self.status_reason.clear();
            }
            E::TenantProvisioned {} => {}
            E::TenantProvisioningFailed { reason } => {
                self.status = Status::Failed;
                self.status_reason = reason;
            }
            E::TenantDeletionRequested {} => self.status = Status::Deleting,
            E::TenantDeleted {} => self.status = Status::Deleted,
            E::MemberInvited {
                member_id,
                email_enc,
                email_digest,
                role,
            } => {
                self.members.insert(
                    member_id,
                    Member {
                        email_enc,
                        email_digest,
                        role,
                    },
                );
            }
            E::MemberRoleChanged { member_id, role } => {
                if let Some(m) = self.members.get_mut(&member_id) {
                    m.role = role;
                }
            }
            E::MemberRemoved { member_id } => {
                self.members.remove(&member_id);
            }
            E::LicenseIssued { license_id, .. } => self.license_id = Some(license_id),
            E::ServiceAccountCreated {
                account_id,
                name,
                scopes,
            } => {
                self.accounts.insert(
                    account_id,
                    Account {
                        name,
                        scopes,
                        key_ids: vec![],
                        revoked_key_ids: vec![],
                    },
                );
            }
            E::ApiKeyIssued { account_id, key_id } => {
                if let Some(a) = self.accounts.get_mut(&account_id) {
                    a.key_ids.push(key_id);
                }
            }
            E::ApiKeyRevoked { account_id, key_id } => {
                if let Some(a) = self.accounts.get_mut(&account_id) {
                    a.revoked_key_ids.push(key_id);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "tenant_tests.rs"]
mod tests;
