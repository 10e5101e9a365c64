//! What the provisioning API can fail with, and its one mapping to gRPC status codes.

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The run is not in a state that allows the call; `reason` is the stable ErrorInfo reason.
    #[error("{message}")]
    Precondition { reason: &'static str, message: String },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field,
            reason: reason.into(),
        }
    }

    pub fn internal(e: impl std::fmt::Display) -> Self {
        Error::Internal(e.to_string())
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use keel_runtime::status;
        match e {
            Error::Invalid { field, reason } => status::invalid_argument(field, &reason),
            Error::NotFound(what) => status::not_found(what, ""),
            Error::Precondition { reason, message } => status::failed_precondition(reason, message),
            internal @ Error::Internal(_) => status::internal(&internal),
        }
    }
}
