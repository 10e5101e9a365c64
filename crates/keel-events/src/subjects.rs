//! NATS subject names of the Keel streams (DESIGN.md §2).
//!
//! Every function takes a `prefix` that is either `""` or ends with `"."` (a namespace such as
//! `"test42."`, so parallel tests and environments never share subjects). Tokens (tenant,
//! service, event, kind, action) are put in as given: check untrusted ones with
//! [`is_valid_token`] first, because a `.`, `*` or `>` in a token would change what a subject
//! matches. The tenant id is part of every subject so NATS permissions can scope a subscriber to
//! one tenant.

/// Longest subject token Keel accepts.
pub const MAX_TOKEN_LEN: usize = 64;

/// Whether `s` is safe as one subject token: 1 to 64 characters of `[A-Za-z0-9_-]`.
/// Wildcards (`*`, `>`) and separators (`.`) are not.
pub fn is_valid_token(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOKEN_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `{prefix}keel.evt.{tenant}.{service}.{event}`: one domain event (stream KEEL_EVENTS).
pub fn event(prefix: &str, tenant: &str, service: &str, event: &str) -> String {
    format!("{prefix}keel.evt.{tenant}.{service}.{event}")
}

/// The three tokens after `keel.<kind>.` in `subject` (any namespace prefix before it).
fn parse_three<'a>(subject: &'a str, kind: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let marker = format!("keel.{kind}.");
    let at = subject.find(&marker)?;
    if at > 0 && !subject[..at].ends_with('.') {
        return None;
    }
    let mut rest = subject[at + marker.len()..].split('.');
    let (a, b, c) = (rest.next()?, rest.next()?, rest.next()?);
    (rest.next().is_none() && [a, b, c].iter().all(|t| is_valid_token(t))).then_some((a, b, c))
}

/// `(tenant, service, event)` of an event subject ([`event`]); `None` for anything else.
pub fn parse_event(subject: &str) -> Option<(&str, &str, &str)> {
    parse_three(subject, "evt")
}

/// `(tenant, service, action)` of an audit subject ([`audit`]); `None` for anything else.
pub fn parse_audit(subject: &str) -> Option<(&str, &str, &str)> {
    parse_three(subject, "audit")
}

/// `{prefix}keel.audit.{tenant}.{service}.{action}`: one audit record (stream KEEL_AUDIT).
pub fn audit(prefix: &str, tenant: &str, service: &str, action: &str) -> String {
    format!("{prefix}keel.audit.{tenant}.{service}.{action}")
}

/// `{prefix}keel.jobs.{kind}.{tenant}`: one job (work-queue stream KEEL_JOBS).
pub fn jobs(prefix: &str, kind: &str, tenant: &str) -> String {
    format!("{prefix}keel.jobs.{kind}.{tenant}")
}

/// `{prefix}keel.dlq.{kind}.{tenant}`: one poison message (stream KEEL_DLQ).
pub fn dlq(prefix: &str, kind: &str, tenant: &str) -> String {
    format!("{prefix}keel.dlq.{kind}.{tenant}")
}

/// `{prefix}keel.alerts.{tenant}.{service}`: a service's alerts about a tenant (core NATS).
pub fn alert(prefix: &str, tenant: &str, service: &str) -> String {
    format!("{prefix}keel.alerts.{tenant}.{service}")
}

/// `{prefix}keel.usage.{tenant}`: raw usage events (stream KEEL_USAGE).
pub fn usage(prefix: &str, tenant: &str) -> String {
    format!("{prefix}keel.usage.{tenant}")
}

/// `{prefix}keel.evt.>`: every domain event.
pub fn events_all(prefix: &str) -> String {
    format!("{prefix}keel.evt.>")
}

/// `{prefix}keel.evt.{tenant}.>`: every domain event of one tenant.
pub fn events_tenant(prefix: &str, tenant: &str) -> String {
    format!("{prefix}keel.evt.{tenant}.>")
}

/// `{prefix}keel.audit.>`: every audit record.
pub fn audit_all(prefix: &str) -> String {
    format!("{prefix}keel.audit.>")
}

/// `{prefix}keel.audit.{tenant}.>`: every audit record of one tenant (what a tenant's security
/// team subscribes to).
pub fn audit_tenant(prefix: &str, tenant: &str) -> String {
    format!("{prefix}keel.audit.{tenant}.>")
}

/// `{prefix}keel.jobs.>`: every job.
pub fn jobs_all(prefix: &str) -> String {
    format!("{prefix}keel.jobs.>")
}

/// `{prefix}keel.jobs.{kind}.>`: every job of one kind, all tenants.
pub fn jobs_kind(prefix: &str, kind: &str) -> String {
    format!("{prefix}keel.jobs.{kind}.>")
}

/// `{prefix}keel.dlq.>`: every dead-lettered message.
pub fn dlq_all(prefix: &str) -> String {
    format!("{prefix}keel.dlq.>")
}

/// `{prefix}keel.dlq.{kind}.>`: every dead-lettered message of one kind, all tenants.
pub fn dlq_kind(prefix: &str, kind: &str) -> String {
    format!("{prefix}keel.dlq.{kind}.>")
}

/// `{prefix}keel.usage.>`: every tenant's usage events.
pub fn usage_all(prefix: &str) -> String {
    format!("{prefix}keel.usage.>")
}

#[cfg(test)]
mod tests {
    #[test]
    fn subjects_parse_back_into_their_tokens() {
        assert_eq!(
            parse_event("t42.keel.evt.acme.tenant.TenantCreated"),
            Some(("acme", "tenant", "TenantCreated"))
        );
        assert_eq!(
            parse_event(&event("", "acme", "tenant", "TenantCreated")),
            Some(("acme", "tenant", "TenantCreated"))
        );
        assert_eq!(
            parse_audit("keel.audit.acme.tenant.suspend"),
            Some(("acme", "tenant", "suspend"))
        );
        for bad in [
            "keel.evt.acme.tenant",
            "keel.evt.acme.tenant.X.extra",
            "xkeel.evt.acme.tenant.X",
            "keel.audit.acme.tenant.x",
            "keel.evt.*.tenant.X",
            "",
        ] {
            assert_eq!(parse_event(bad), None, "{bad}");
        }
    }

    use super::*;

    const P: &str = "t_subjects_1.";

    #[test]
    fn tokens() {
        for ok in ["a", "acme", "ACME_corp-1", "0", &"x".repeat(64)] {
            assert!(is_valid_token(ok), "{ok:?} should be valid");
        }
        let long = "x".repeat(65);
        for bad in [
            "", "*", ">", "a.b", "a b", "a*", "tenant>", "é", "a/b", "a\n", &long,
        ] {
            assert!(!is_valid_token(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn concrete_subjects() {
        assert_eq!(
            event("", "acme", "tenant", "TenantCreated"),
            "keel.evt.acme.tenant.TenantCreated"
        );
        assert_eq!(
            event(P, "acme", "tenant", "TenantCreated"),
            "t_subjects_1.keel.evt.acme.tenant.TenantCreated"
        );
        assert_eq!(
            audit(P, "acme", "tenant", "invite_member"),
            format!("{P}keel.audit.acme.tenant.invite_member")
        );
        assert_eq!(
            audit("", "acme", "tenant", "login"),
            "keel.audit.acme.tenant.login"
        );
        assert_eq!(jobs(P, "http", "acme"), format!("{P}keel.jobs.http.acme"));
        assert_eq!(dlq(P, "http", "acme"), format!("{P}keel.dlq.http.acme"));
        assert_eq!(usage(P, "acme"), format!("{P}keel.usage.acme"));
        assert_eq!(usage("", "acme"), "keel.usage.acme");
    }

    #[test]
    fn wildcards() {
        assert_eq!(events_all(""), "keel.evt.>");
        assert_eq!(events_all(P), format!("{P}keel.evt.>"));
        assert_eq!(events_tenant(P, "acme"), format!("{P}keel.evt.acme.>"));
        assert_eq!(audit_all(P), format!("{P}keel.audit.>"));
        assert_eq!(audit_tenant(P, "acme"), format!("{P}keel.audit.acme.>"));
        assert_eq!(jobs_all(P), format!("{P}keel.jobs.>"));
        assert_eq!(jobs_kind(P, "http"), format!("{P}keel.jobs.http.>"));
        assert_eq!(dlq_all(P), format!("{P}keel.dlq.>"));
        assert_eq!(dlq_kind(P, "http"), format!("{P}keel.dlq.http.>"));
        assert_eq!(usage_all(P), format!("{P}keel.usage.>"));
    }

    /// A wildcard must match exactly the concrete subjects it is meant to: checked with a tiny
    /// NATS matcher so a typo in either family shows up here rather than as a silent consumer.
    #[test]
    fn wildcards_match_their_concrete_subjects() {
        fn matches(pattern: &str, subject: &str) -> bool {
            let (mut p, mut s) = (pattern.split('.'), subject.split('.'));
            loop {
                match (p.next(), s.next()) {
                    (Some(">"), Some(_)) => return true,
                    (Some("*"), Some(_)) => {}
                    (Some(a), Some(b)) if a == b => {}
                    (None, None) => return true,
                    _ => return false,
                }
            }
        }
        let evt = event(P, "acme", "tenant", "TenantCreated");
        assert!(matches(&events_all(P), &evt));
        assert!(matches(&events_tenant(P, "acme"), &evt));
        assert!(!matches(&events_tenant(P, "acme2"), &evt));
        assert!(!matches(&events_all(""), &evt), "a prefix isolates namespaces");
        let aud = audit(P, "acme", "tenant", "login");
        assert!(matches(&audit_all(P), &aud));
        assert!(matches(&audit_tenant(P, "acme"), &aud));
        assert!(!matches(&audit_tenant(P, "other"), &aud));
        assert!(!matches(&events_all(P), &aud));
        assert!(matches(&jobs_all(P), &jobs(P, "http", "acme")));
        assert!(matches(&jobs_kind(P, "http"), &jobs(P, "http", "acme")));
        assert!(!matches(&jobs_kind(P, "tcp"), &jobs(P, "http", "acme")));
        assert!(matches(&dlq_all(P), &dlq(P, "http", "acme")));
        assert!(matches(&dlq_kind(P, "http"), &dlq(P, "http", "acme")));
        assert!(matches(&usage_all(P), &usage(P, "acme")));
    }
}
