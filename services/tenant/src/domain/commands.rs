//! What can be asked of a tenant: the commands the aggregate decides on.

use keel_tenancy::Tier;

use super::tenant::{Encrypted, Role};

#[derive(Debug)]
pub enum TenantCommand {
    Create {
        tenant_id: String,
        name: String,
        slug: String,
        tier: Tier,
        owner_member_id: String,
        owner_email_enc: Encrypted,
        owner_email_digest: String,
        request_id: String,
    },
    ChangeTier {
        tier: Tier,
    },
    Suspend {
        reason: String,
    },
    Reactivate,
    StartProvisioning,
    MarkProvisioned,
    MarkFailed {
        reason: String,
    },
    RequestDeletion,
    MarkDeleted,
    InviteMember {
        member_id: String,
        email_enc: Encrypted,
        email_digest: String,
        role: Role,
    },
    ChangeMemberRole {
        member_id: String,
        role: Role,
    },
    RemoveMember {
        member_id: String,
    },
    RecordLicense {
        license_id: String,
        expires_at: String,
    },
    /// A service account and its first API key, as one command: both events or neither (the
    /// key row, stored pending beforehand, becomes usable with them; see `api::token`).
    CreateServiceAccount {
        account_id: String,
        name: String,
        scopes: Vec<String>,
        key_id: String,
    },
    /// A further key of an existing account (no RPC issues one yet): like the first, its row is
    /// stored pending and activated by this event.
    IssueApiKey {
        account_id: String,
        key_id: String,
    },
    /// Records that a key of the tenant's account was revoked (the key table already refuses
    /// it); nothing when the key is unknown to the tenant or already recorded as revoked.
    RevokeApiKey {
        account_id: String,
        key_id: String,
    },
}
