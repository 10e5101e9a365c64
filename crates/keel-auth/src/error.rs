//! What can go wrong while issuing or checking credentials, and how each maps to a gRPC status.

use tonic::Status;

/// An authentication failure or a key-handling error.
///
/// The messages carry no token contents, tenant ids or other PII; the `From<AuthError> for Status`
/// conversion chooses the exact wording callers see.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer …` header, or one that is not a bearer token.
    #[error("missing bearer token")]
    MissingToken,
    /// The token is larger than [`crate::verify::MAX_TOKEN_BYTES`].
    #[error("token too large")]
    TooLarge,
    /// Malformed, wrong algorithm, bad signature, or claims that do not parse.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// The token names a key id that the current key set does not hold.
    #[error("unknown signing key {kid}")]
    UnknownKey { kid: String },
    /// `exp` is in the past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// No usable key set: the JWKS endpoint has been unreachable for longer than the cache TTL.
    #[error("signing keys unavailable")]
    JwksUnavailable,
    /// Fetching or parsing the key set failed (internal to the cache; callers see
    /// [`AuthError::JwksUnavailable`] once the cached set is too old).
    #[error("fetching the key set failed: {0}")]
    Fetch(String),
    /// Producing a signature failed.
    #[error("signing failed: {0}")]
    Signing(String),
}

impl AuthError {
    /// Whether trying again later may succeed (the key set may come back, a key may rotate in).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            AuthError::JwksUnavailable | AuthError::Fetch(_) | AuthError::UnknownKey { .. }
        )
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        match e {
            AuthError::MissingToken => Status::unauthenticated("missing bearer token"),
            AuthError::Expired => Status::unauthenticated("token expired"),
            AuthError::UnknownKey { .. } => Status::unauthenticated("unknown signing key"),
            AuthError::JwksUnavailable | AuthError::Fetch(_) => {
                Status::unauthenticated("signing keys unavailable")
            }
            AuthError::TooLarge | AuthError::InvalidToken(_) | AuthError::NotYetValid => {
                Status::unauthenticated("invalid token")
            }
            AuthError::Signing(cause) => {
                tracing::error!(%cause, "token signing failed");
                Status::internal("signing failed")
            }
        }
    }
}

/// `Result` with [`AuthError`] as the default error.
pub type Result<T, E = AuthError> = std::result::Result<T, E>;
