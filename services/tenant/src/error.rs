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

impl From<keel_auth::AuthError> for Error {
    fn from(e: keel_auth::AuthError) -> Self {
        Error::Store(format!("signing: {e}"))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(i) => Status::invalid_argument(i.to_string()),
            Error::Domain(d) => match d {
                TenantError::NotFound => Status::not_found("tenant not found"),
                TenantError::MemberNotFound => Status::not_found("member not found"),
                TenantError::AccountNotFound => Status::not_found("service account not found"),
                TenantError::AlreadyExists => Status::already_exists("tenant already exists"),
                TenantError::AlreadyMember => Status::already_exists(d.to_string()),
                TenantError::AccountExists => Status::already_exists(d.to_string()),
                TenantError::InvalidTransition { .. } | TenantError::LastOwner => {
                    Status::failed_precondition(d.to_string())
                }
            },
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            Error::AlreadyExists { field } => Status::already_exists(format!("{field} is already taken")),
            Error::Conflict => Status::aborted(e.to_string()),
            Error::Unauthenticated(m) => Status::unauthenticated(m),
            Error::Precondition(m) => Status::failed_precondition(m),
            internal => {
                let id = uuid::Uuid::now_v7();
                tracing::error!(request_id = %id, error = %internal, "internal error");
                Status::internal(format!("internal error (request {id})"))
            }
        }
    }
}
