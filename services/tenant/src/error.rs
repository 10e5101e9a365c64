//! Everything the tenant service can fail with, and its one mapping to gRPC status codes.

use cqrs_es::AggregateError;
use tonic::Status;

use crate::domain::{TenantError, validate::Invalid};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Domain(#[from] TenantError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{field} is already taken")]
    AlreadyExists { field: &'static str },
    #[error("the tenant was changed concurrently; retry")]
    Conflict,
    #[error("{0}")]
    Unauthenticated(&'static str),
    #[error("{0}")]
    Precondition(String),
    #[error(transparent)]
    Key(#[from] crate::tokens::KeyRefusal),
    #[error("configuration: {0}")]
    Config(String),
    #[error("encryption failed")]
    Crypto,
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store: {0}")]
    Store(String),
    #[error("bus: {0}")]
    Bus(#[from] keel_bus::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<AggregateError<TenantError>> for Error {
    fn from(e: AggregateError<TenantError>) -> Self {
        match e {
            AggregateError::UserError(e) => Error::Domain(e),
            AggregateError::AggregateConflict => Error::Conflict,
            other => Error::Store(other.to_string()),
        }
    }
}

impl From<keel_auth::seal::SealError> for Error {
    fn from(e: keel_auth::seal::SealError) -> Self {
        match e {
            keel_auth::seal::SealError::BadKey(m) => Error::Config(m),
            _ => Error::Crypto,
        }
    }
}

impl From<keel_store::Error> for Error {
    fn from(e: keel_store::Error) -> Self {
        match e {
            keel_store::Error::Database(e) => Error::Database(e),
            other => Error::Store(other.to_string()),
        }
    }
}

impl From<keel_auth::AuthError> for Error {
    fn from(e: keel_auth::AuthError) -> Self {
        Error::Store(format!("signing: {e}"))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use keel_runtime::status;
        match e {
            Error::Invalid(i) => status::invalid_argument(i.field, &i.reason),
            Error::Domain(d) => match d {
                TenantError::NotFound => status::not_found("tenant", ""),
                TenantError::MemberNotFound => status::not_found("member", ""),
                TenantError::AccountNotFound => status::not_found("service account", ""),
                TenantError::AlreadyExists => {
                    status::already_exists("TENANT_EXISTS", "tenant already exists")
                }
                TenantError::AlreadyMember => status::already_exists("ALREADY_MEMBER", d.to_string()),
                TenantError::AccountExists => status::already_exists("ACCOUNT_EXISTS", d.to_string()),
                TenantError::InvalidTransition { .. } => {
                    status::failed_precondition("INVALID_TRANSITION", d.to_string())
                }
                TenantError::LastOwner => status::failed_precondition("LAST_OWNER", d.to_string()),
            },
            Error::NotFound(what) => status::not_found(what, ""),
            Error::AlreadyExists { field } => {
                status::already_exists("ALREADY_TAKEN", format!("{field} is already taken"))
            }
            Error::Conflict => status::aborted(e.to_string(), std::time::Duration::from_millis(100)),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Precondition(m) => status::failed_precondition("PRECONDITION", m),
            Error::Key(k) => match k {
                crate::tokens::KeyRefusal::NotFound => status::not_found("API key", ""),
                crate::tokens::KeyRefusal::LastOperatorKey => {
                    status::failed_precondition("LAST_OPERATOR_KEY", k.to_string())
                }
            },
            internal => status::internal(&internal),
        }
    }
}
