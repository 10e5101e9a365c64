//! What the timeline indexer can fail with, and its one mapping to gRPC codes.

use keel_store::projection::ApplyError;
use tonic::Status;

use crate::domain::filter::Invalid;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Precondition(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("store: {0}")]
    Store(#[from] keel_store::Error),
    #[error("bus: {0}")]
    Bus(#[from] keel_bus::Error),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn into_apply(self) -> ApplyError {
        match self {
            Error::Database(e) => ApplyError::from(e),
            other => ApplyError::Permanent(other.to_string()),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use keel_runtime::status;
        match e {
            Error::Invalid(i) => status::invalid_argument(&i.field, &i.reason),
            Error::NotFound(what) => status::not_found(what, ""),
            Error::Precondition(m) => status::failed_precondition("PRECONDITION", m),
            internal => status::internal(&internal),
        }
    }
}
