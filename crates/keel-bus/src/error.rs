//! What can go wrong talking to NATS.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("invalid bus namespace {0:?}: use 1-64 characters of [A-Za-z0-9_-]")]
    InvalidNamespace(String),
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("publish to {subject}: {message}")]
    Publish { subject: String, message: String },
    #[error("consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
}

impl Error {
    /// Every bus error is worth retrying: NATS reconnects, streams come back.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::InvalidNamespace(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
