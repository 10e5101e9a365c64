//! Why the aggregate refuses a command.

use super::tenant::Status;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("tenant does not exist")]
    NotFound,
    #[error("tenant already exists")]
    AlreadyExists,
    #[error("cannot {action} a tenant in status {current}", current = .current.as_str())]
    InvalidTransition { action: &'static str, current: Status },
    #[error("member does not exist")]
    MemberNotFound,
    #[error("a member with this e-mail address already exists")]
    AlreadyMember,
    #[error("the last owner cannot be removed or demoted")]
    LastOwner,
    #[error("service account does not exist")]
    AccountNotFound,
    #[error("a service account with this name already exists")]
    AccountExists,
}
