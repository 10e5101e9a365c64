//! What can go wrong when an envelope is parsed or built.

/// Why bytes (or a builder) did not yield a valid [`Envelope`](crate::Envelope).
///
/// Every variant but [`ParseError::Json`] and [`ParseError::TooLarge`] names the envelope field
/// at fault, so a consumer can log it and dead-letter the message with a precise reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The bytes are not JSON, not UTF-8, or not a JSON object.
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    /// A required field is absent (or `null`, which CloudEvents treats as absent).
    #[error("missing required field `{field}`")]
    MissingField { field: &'static str },
    /// A field is present but breaks its rule. Unknown top-level fields are reported with
    /// `field` = [`UNKNOWN_FIELD`] and their names in `reason`.
    #[error("invalid field `{field}`: {reason}")]
    InvalidField { field: &'static str, reason: String },
    /// `specversion` is not `"1.0"`.
    #[error("unsupported specversion {specversion:?} (expected \"1.0\")")]
    UnsupportedVersion { specversion: String },
    /// The serialized envelope is larger than [`MAX_ENVELOPE_BYTES`](crate::envelope::MAX_ENVELOPE_BYTES).
    #[error("envelope is {size} bytes, the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
}

/// The `field` of an [`ParseError::InvalidField`] raised for unknown top-level fields.
pub const UNKNOWN_FIELD: &str = "<unknown>";

impl ParseError {
    /// The envelope field this error is about, if it is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::MissingField { field } | Self::InvalidField { field, .. } => Some(field),
            Self::UnsupportedVersion { .. } => Some("specversion"),
            Self::Json { .. } | Self::TooLarge { .. } => None,
        }
    }

    /// Whether trying again with the same input could succeed: never, a malformed envelope stays
    /// malformed, so consumers send it to the DLQ instead of redelivering it.
    pub fn is_retryable(&self) -> bool {
        false
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidField {
            field,
            reason: reason.into(),
        }
    }
}

/// `Result` with [`ParseError`] as the default error.
pub type Result<T, E = ParseError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_the_field_when_there_is_one() {
        assert_eq!(
            ParseError::MissingField { field: "tenantid" }.field(),
            Some("tenantid")
        );
        assert_eq!(ParseError::invalid("actor", "bad").field(), Some("actor"));
        let version = ParseError::UnsupportedVersion {
            specversion: "0.3".into(),
        };
        assert_eq!(version.field(), Some("specversion"));
        let json = ParseError::Json {
            line: 1,
            column: 2,
            message: "eof".into(),
        };
        assert_eq!(json.field(), None);
        assert_eq!(ParseError::TooLarge { size: 2, limit: 1 }.field(), None);
    }

    #[test]
    fn messages_carry_the_details() {
        let e = ParseError::Json {
            line: 3,
            column: 7,
            message: "expected `:`".into(),
        };
        assert_eq!(e.to_string(), "invalid JSON at line 3, column 7: expected `:`");
        let e = ParseError::invalid("sequence", "must be at least 1");
        assert_eq!(e.to_string(), "invalid field `sequence`: must be at least 1");
        assert!(!e.is_retryable());
    }
}
