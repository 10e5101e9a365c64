//! The rule of each envelope field, shared by `Envelope::parse` and `EnvelopeBuilder::build`.

use chrono::Datelike;

use super::{DATA_CONTENT_TYPE, Envelope, SPEC_VERSION};
use crate::error::{ParseError, Result};
use crate::subjects;

pub(crate) const MAX_ACTOR_ID_CHARS: usize = 128;
pub(crate) const MAX_SUBJECT_CHARS: usize = 512;
pub(crate) const MAX_AGGREGATE_CHARS: usize = 256;

/// Checks every field of `env` in declaration order, reporting the first one at fault.
pub(crate) fn validate(env: &Envelope) -> Result<()> {
    if env.specversion != SPEC_VERSION {
        return Err(ParseError::UnsupportedVersion {
            specversion: env.specversion.clone(),
        });
    }
    if env.id.is_nil() {
        return Err(ParseError::invalid("id", "must not be the nil UUID"));
    }
    let service = source_service(&env.source)
        .ok_or_else(|| ParseError::invalid("source", format!("{:?} is not keel/<service>", env.source)))?;
    check_type(&env.event_type, service)?;
    check_subject(&env.subject)?;
    if !(1..=9999).contains(&env.time.year()) {
        return Err(ParseError::invalid(
            "time",
            "year must be between 1 and 9999 (RFC 3339)",
        ));
    }
    if env.datacontenttype != DATA_CONTENT_TYPE {
        return Err(ParseError::invalid(
            "datacontenttype",
            format!("must be {DATA_CONTENT_TYPE:?}"),
        ));
    }
    if !subjects::is_valid_token(&env.tenantid) {
        return Err(ParseError::invalid(
            "tenantid",
            "must be 1-64 characters of [A-Za-z0-9_-]",
        ));
    }
    check_actor(&env.actor)?;
    if let Some(tp) = &env.traceparent {
        check_traceparent(tp)?;
    }
    check_identifier("aggregatetype", &env.aggregatetype, false)?;
    check_identifier("aggregateid", &env.aggregateid, true)?;
    if env.sequence == 0 {
        return Err(ParseError::invalid("sequence", "must be at least 1"));
    }
    if !env.data.is_object() {
        return Err(ParseError::invalid("data", "must be a JSON object"));
    }
    Ok(())
}

/// `[a-z][a-z0-9-]*`, and short enough to be a subject token.
pub(crate) fn is_valid_service(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= subjects::MAX_TOKEN_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `[A-Z][A-Za-z0-9]*`, and short enough to be a subject token.
pub(crate) fn is_valid_event_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    s.len() <= subjects::MAX_TOKEN_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_alphanumeric())
}

/// The service of a `keel/<service>` source.
pub(crate) fn source_service(source: &str) -> Option<&str> {
    source.strip_prefix("keel/").filter(|s| is_valid_service(s))
}

/// `(service, Event, N)` of a well-formed `keel.<service>.<Event>.v<N>` type.
pub(crate) fn split_type(t: &str) -> Option<(&str, &str, u32)> {
    let mut parts = t.split('.');
    let (keel, service, event, version) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || keel != "keel" || !is_valid_service(service) || !is_valid_event_name(event) {
        return None;
    }
    let digits = version.strip_prefix('v')?;
    // No sign, no leading zero: exactly one spelling per version.
    if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    Some((service, event, n))
}

fn check_type(t: &str, source_service: &str) -> Result<()> {
    let (service, _, _) = split_type(t)
        .ok_or_else(|| ParseError::invalid("type", format!("{t:?} is not keel.<service>.<Event>.v<N>")))?;
    if service != source_service {
        return Err(ParseError::invalid(
            "type",
            format!("service {service:?} differs from the source's {source_service:?}"),
        ));
    }
    Ok(())
}

fn is_plain(c: char) -> bool {
    !c.is_whitespace() && !c.is_control()
}

fn check_subject(s: &str) -> Result<()> {
    let ok = s.chars().count() <= MAX_SUBJECT_CHARS
        && s.chars().all(is_plain)
        && s.split_once('/')
            .is_some_and(|(kind, id)| !kind.is_empty() && !id.is_empty());
    if ok {
        Ok(())
    } else {
        Err(ParseError::invalid(
            "subject",
            format!(
                "must be <resource_type>/<resource_id> without whitespace, at most {MAX_SUBJECT_CHARS} characters"
            ),
        ))
    }
}

fn check_actor(a: &str) -> Result<()> {
    if a == "system" {
        return Ok(());
    }
    let ok = match a.split_once(':') {
        Some(("user" | "service", id)) => {
            !id.is_empty() && id.chars().count() <= MAX_ACTOR_ID_CHARS && id.chars().all(is_plain)
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ParseError::invalid(
            "actor",
            format!(
                "must be user:<id>, service:<name> or system (id without whitespace, at most {MAX_ACTOR_ID_CHARS} characters)"
            ),
        ))
    }
}

/// W3C Trace Context, version 00: `00-<trace id>-<parent id>-<flags>`, lower-case hex, ids not
/// all zero.
pub(crate) fn is_valid_traceparent(tp: &str) -> bool {
    fn lower_hex(s: &str, len: usize) -> bool {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
    let mut parts = tp.split('-');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("00"), Some(trace), Some(parent), Some(flags), None) => {
            lower_hex(trace, 32)
                && lower_hex(parent, 16)
                && lower_hex(flags, 2)
                && trace.bytes().any(|b| b != b'0')
                && parent.bytes().any(|b| b != b'0')
        }
        _ => false,
    }
}

fn check_traceparent(tp: &str) -> Result<()> {
    if is_valid_traceparent(tp) {
        Ok(())
    } else {
        Err(ParseError::invalid(
            "traceparent",
            "must be W3C 00-<32 hex>-<16 hex>-<2 hex>, lower case, ids not all zero",
        ))
    }
}

fn check_identifier(field: &'static str, s: &str, slash_allowed: bool) -> Result<()> {
    let ok = !s.is_empty()
        && s.chars().count() <= MAX_AGGREGATE_CHARS
        && s.chars().all(|c| is_plain(c) && (slash_allowed || c != '/'));
    if ok {
        Ok(())
    } else {
        let slash = if slash_allowed { "" } else { " or '/'" };
        Err(ParseError::invalid(
            field,
            format!("must be 1-{MAX_AGGREGATE_CHARS} characters without whitespace{slash}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types() {
        assert_eq!(
            split_type("keel.tenant.TenantCreated.v1"),
            Some(("tenant", "TenantCreated", 1))
        );
        assert_eq!(
            split_type("keel.billing-meter.UsageRecorded.v12"),
            Some(("billing-meter", "UsageRecorded", 12))
        );
        for bad in [
            "",
            "keel",
            "keel.tenant.TenantCreated",
            "keel.tenant.TenantCreated.v0",
            "keel.tenant.TenantCreated.v01",
            "keel.tenant.TenantCreated.1",
            "keel.tenant.TenantCreated.v",
            "keel.tenant.TenantCreated.v+1",
            "keel.tenant.TenantCreated.v4294967296",
            "keel.Tenant.TenantCreated.v1",
            "keel.tenant.tenantCreated.v1",
            "keel.tenant.Tenant_Created.v1",
            "keel.1tenant.TenantCreated.v1",
            "keel..TenantCreated.v1",
            "kiel.tenant.TenantCreated.v1",
            "keel.tenant.TenantCreated.v1.x",
            "keel.tenant.TenantCreated.v1 ",
        ] {
            assert_eq!(split_type(bad), None, "{bad:?}");
        }
        assert_eq!(split_type("keel.t.E.v4294967295"), Some(("t", "E", u32::MAX)));
    }

    #[test]
    fn sources() {
        assert_eq!(source_service("keel/tenant"), Some("tenant"));
        assert_eq!(source_service("keel/timeline-indexer"), Some("timeline-indexer"));
        for bad in [
            "keel/",
            "keel/Tenant",
            "tenant",
            "keel/tenant/x",
            "keel/-x",
            "/keel/tenant",
            "keel/ten ant",
        ] {
            assert_eq!(source_service(bad), None, "{bad:?}");
        }
        assert_eq!(source_service(&format!("keel/{}", "a".repeat(65))), None);
    }

    #[test]
    fn actors() {
        for ok in [
            "system",
            "user:42",
            "service:provisioning",
            "user:a@b.c",
            &format!("user:{}", "x".repeat(128)),
        ] {
            assert!(check_actor(ok).is_ok(), "{ok:?}");
        }
        let long = format!("user:{}", "x".repeat(129));
        for bad in [
            "", "System", "user:", "service:", "user", "admin:1", "user:a b", "user:\t", "system:x", &long,
        ] {
            assert_eq!(check_actor(bad).unwrap_err().field(), Some("actor"), "{bad:?}");
        }
    }

    #[test]
    fn traceparents() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(ok));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(!is_valid_traceparent(bad), "{bad:?}");
        }
    }

    #[test]
    fn subjects_and_identifiers() {
        for ok in ["tenant/acme", "member/acme/42", "a/b"] {
            assert!(check_subject(ok).is_ok(), "{ok:?}");
        }
        let long = format!("tenant/{}", "x".repeat(512));
        for bad in [
            "",
            "tenant",
            "/acme",
            "tenant/",
            "tenant/a b",
            "tenant/a\u{0}",
            &long,
        ] {
            assert_eq!(
                check_subject(bad).unwrap_err().field(),
                Some("subject"),
                "{bad:?}"
            );
        }
        assert!(check_identifier("aggregateid", "member/1", true).is_ok());
        assert!(check_identifier("aggregatetype", "a/b", false).is_err());
        assert!(check_identifier("aggregatetype", "", false).is_err());
        assert!(check_identifier("aggregateid", &"x".repeat(257), true).is_err());
    }
}
