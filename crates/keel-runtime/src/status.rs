//! The one way a Keel service turns an error into a `tonic::Status`: the standard rich error
//! model (`google.rpc.*` details in `grpc-status-details-bin`), so grpcio, grpc-go and grpc-java
//! clients read the field, the reason or the retry delay without Keel's protos.
//!
//! - INVALID_ARGUMENT carries a `BadRequest` naming the field;
//! - FAILED_PRECONDITION, PERMISSION_DENIED, ALREADY_EXISTS carry an `ErrorInfo` with a stable
//!   upper-snake `reason` in the [`DOMAIN`] domain;
//! - RESOURCE_EXHAUSTED and ABORTED carry a `RetryInfo` (and `retry-after` metadata, seconds);
//! - NOT_FOUND carries a `ResourceInfo`;
//! - INTERNAL carries a `RequestInfo` with the request id, and never the cause (which is logged).

use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Keel error.
pub const DOMAIN: &str = "keel.dev";

/// INVALID_ARGUMENT: `field` (a request field path, e.g. `slug` or `last.seconds`) is wrong.
pub fn invalid_argument(field: &str, description: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("{field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

fn with_info(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, std::collections::HashMap::new()),
    )
}

/// FAILED_PRECONDITION with a stable `reason`, e.g. `TENANT_NOT_ACTIVE`.
pub fn failed_precondition(reason: &str, message: impl Into<String>) -> Status {
    with_info(Code::FailedPrecondition, reason, message)
}

/// PERMISSION_DENIED with a stable `reason`, e.g. `MISSING_SCOPE`.
pub fn permission_denied(reason: &str, message: impl Into<String>) -> Status {
    with_info(Code::PermissionDenied, reason, message)
}

/// ALREADY_EXISTS with a stable `reason`, e.g. `SLUG_TAKEN`.
pub fn already_exists(reason: &str, message: impl Into<String>) -> Status {
    with_info(Code::AlreadyExists, reason, message)
}

/// NOT_FOUND of `resource_type` named `name`.
pub fn not_found(resource_type: &str, name: &str) -> Status {
    Status::with_error_details(
        Code::NotFound,
        format!("{resource_type} not found"),
        ErrorDetails::with_resource_info(resource_type, name, "", "not found"),
    )
}

fn retry(code: Code, message: impl Into<String>, after: Duration) -> Status {
    let mut metadata = MetadataMap::new();
    let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
    if let Ok(v) = secs.max(1).to_string().parse() {
        metadata.insert("retry-after", v);
    }
    Status::with_error_details_and_metadata(
        code,
        message,
        ErrorDetails::with_retry_info(Some(after)),
        metadata,
    )
}

/// RESOURCE_EXHAUSTED: try again after `after`.
pub fn resource_exhausted(message: impl Into<String>, after: Duration) -> Status {
    retry(Code::ResourceExhausted, message, after)
}

/// ABORTED (a concurrent change): try again after `after`.
pub fn aborted(message: impl Into<String>, after: Duration) -> Status {
    retry(Code::Aborted, message, after)
}

/// UNAVAILABLE: a dependency is down; try again after `after`.
pub fn unavailable(message: impl Into<String>, after: Duration) -> Status {
    retry(Code::Unavailable, message, after)
}

/// INTERNAL: logs `cause` with a fresh request id and returns an opaque status carrying that id.
pub fn internal(cause: &dyn std::fmt::Display) -> Status {
    let id = uuid::Uuid::now_v7().to_string();
    tracing::error!(request_id = %id, error = %cause, "internal error");
    Status::with_error_details(
        Code::Internal,
        format!("internal error (request {id})"),
        ErrorDetails::with_request_info(id, ""),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_decode_with_the_standard_messages() {
        let s = invalid_argument("slug", "must be 3 to 40 characters");
        assert_eq!(s.code(), Code::InvalidArgument);
        let bad = s.get_details_bad_request().expect("BadRequest");
        assert_eq!(bad.field_violations[0].field, "slug");
        assert!(!s.details().is_empty(), "grpc-status-details-bin is set");

        let s = failed_precondition("TENANT_NOT_ACTIVE", "tenant is SUSPENDED");
        let info = s.get_details_error_info().expect("ErrorInfo");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("TENANT_NOT_ACTIVE", DOMAIN)
        );

        let s = resource_exhausted("rate limit exceeded", Duration::from_millis(1500));
        assert_eq!(
            s.get_details_retry_info().unwrap().retry_delay,
            Some(Duration::from_millis(1500))
        );
        assert_eq!(s.metadata().get("retry-after").unwrap(), "2");

        let s = internal(&"boom: password=hunter2");
        assert!(!s.message().contains("boom"));
        let req = s.get_details_request_info().expect("RequestInfo");
        assert!(s.message().contains(&req.request_id));

        let s = not_found("tenant", "t-1");
        assert_eq!(s.get_details_resource_info().unwrap().resource_name, "t-1");
    }
}
