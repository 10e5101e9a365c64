//! What can go wrong in the event store, the relay and the projections.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("bus: {0}")]
    Bus(#[from] keel_bus::Error),
    #[error("invalid schema name {0:?}: use [a-z_][a-z0-9_]{{0,62}}")]
    InvalidSchema(String),
    #[error("invalid role name {0:?}: use [a-z_][a-z0-9_]{{0,62}}")]
    InvalidName(String),
    #[error("a reader needs one tenant id, not {0:?}")]
    InvalidTenant(String),
    #[error("event {sequence} of {aggregate_id} cannot be read: {reason}")]
    Decode {
        aggregate_id: String,
        sequence: i64,
        reason: String,
    },
    #[error("event metadata lacks {0}")]
    MissingMetadata(&'static str),
    #[error("event {event_id} cannot be enveloped: {reason}")]
    Envelope { event_id: uuid::Uuid, reason: String },
    #[error("audit record: {0}")]
    Audit(String),
    #[error("projection {projection}: {message}")]
    Projection { projection: String, message: String },
}

impl Error {
    /// Whether trying again later can succeed (database or NATS blips), as opposed to input that
    /// will never be accepted.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Database(e) => !matches!(e, sqlx::Error::Database(_) | sqlx::Error::ColumnDecode { .. }),
            Error::Bus(e) => e.is_retryable(),
            Error::Migrate(_)
            | Error::InvalidSchema(_)
            | Error::InvalidName(_)
            | Error::InvalidTenant(_)
            | Error::Decode { .. }
            | Error::MissingMetadata(_)
            | Error::Envelope { .. }
            | Error::Audit(_) => false,
            Error::Projection { .. } => true,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
