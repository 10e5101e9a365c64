//! Whether a failure of PostgreSQL, Redis, NATS or the disk is worth retrying: the saga retries
//! transient failures with backoff and compensates after a permanent one, so an outage must
//! never look permanent and a bad name must never be retried forever.

use super::StepError;

/// PostgreSQL: connection trouble, serialization failures, deadlocks, lack of resources,
/// shutdowns and concurrent catalog updates are transient; anything the statement itself got
/// wrong (syntax, privileges, bad names) is permanent.
pub(crate) fn pg(context: &str, e: sqlx::Error) -> StepError {
    let message = format!("{context}: {e}");
    let transient = match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // 08 connection, 40 rollback (serialization, deadlock), 53 resources, 55P03 lock
            // not available, 57 operator intervention (shutdown), XX000 "tuple concurrently
            // updated" from concurrent GRANTs on one object.
            ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "55P03"
                || (code == "XX000" && db.message().contains("concurrently"))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    };
    if transient {
        StepError::Transient(message)
    } else {
        StepError::Permanent(message)
    }
}

/// Redis: whatever the client would retry (connection drops, timeouts, LOADING, TRYAGAIN) is
/// transient; WRONGTYPE and the like are permanent.
pub(crate) fn redis(context: &str, e: redis::RedisError) -> StepError {
    let message = format!("{context}: {e}");
    if matches!(e.retry_method(), redis::RetryMethod::NoRetry) {
        StepError::Permanent(message)
    } else {
        StepError::Transient(message)
    }
}

/// NATS: the server or the connection failed us; JetStream answers that are about the request
/// itself are classified where they are handled (e.g. "not found"), so the rest is transient.
pub(crate) fn nats(context: &str, e: impl std::fmt::Display) -> StepError {
    StepError::Transient(format!("{context}: {e}"))
}

/// The disk: a missing permission or a read-only file system will not fix itself; anything
/// else (full disk, interrupted I/O) may.
pub(crate) fn io(context: &str, e: std::io::Error) -> StepError {
    let message = format!("{context}: {e}");
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            StepError::Permanent(message)
        }
        _ => StepError::Transient(message),
    }
}

/// A tier the steps do not know is a permanent failure of the request.
pub(crate) fn tier(tier: &str) -> Result<keel_tenancy::Tier, StepError> {
    keel_tenancy::Tier::parse(tier).ok_or_else(|| StepError::Permanent(format!("unknown tier {tier:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_timeouts_are_transient_and_bad_rows_permanent() {
        assert!(!pg("x", sqlx::Error::PoolTimedOut).is_permanent());
        assert!(pg("x", sqlx::Error::RowNotFound).is_permanent());
    }

    #[test]
    fn denied_disk_access_is_permanent_and_a_full_disk_is_not() {
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(io("x", denied).is_permanent());
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert!(!io("x", full).is_permanent());
    }

    #[test]
    fn unknown_tiers_are_permanent() {
        assert!(tier("gold").is_err_and(|e| e.is_permanent()));
        assert!(tier("business").is_ok());
    }
}
