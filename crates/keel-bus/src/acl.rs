//! Who may publish and subscribe what on Keel's NATS: the permissions written into each user
//! JWT. Pure data, built per namespace (tests) so that a test's users reach only its streams.
//!
//! - A **service** publishes only its own events, audit records and alerts
//!   (`keel.evt.*.<service>.>`, `keel.audit.*.<service>.>`, `keel.alerts.*.<service>`) and dead letters; manages the Keel streams' configuration but
//!   may not delete or purge them; reads (through JetStream consumers) only the streams it
//!   consumes; receives replies only on its own inbox.
//! - A **tenant's audit reader** subscribes to `keel.audit.<tenant>.>` live and pulls from
//!   the tenant's durable consumer on KEEL_AUDIT, whose filter provisioning set to the tenant's
//!   subjects; it can create no consumer and change no filter, so it reads nothing else.
//! - An **admin** (operators' tools, tests) may do anything in the account.

use std::time::Duration;

use keel_events::subjects;
use keel_runtime::nats::Credentials;
pub use keel_runtime::nats::authority::Permissions;
use keel_runtime::nats::authority::{Authority, UserSigner};

use crate::streams::StreamKind;

/// What one kind of Keel user is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A Keel service, by name (`tenant`, `provisioning`, `timeline`, …).
    Service(String),
    /// A tenant's audit subscribers: live records, and the tenant's durable consumer on
    /// KEEL_AUDIT (filtered to the tenant by provisioning, which made it).
    TenantAudit { tenant: String, consumer: String },
    /// Everything in the account.
    Admin,
}

/// A namespace's names: `""` in production, a test's token otherwise.
#[derive(Clone, Debug)]
pub struct Namespace<'a>(pub &'a str);

impl Namespace<'_> {
    pub fn subject_prefix(&self) -> String {
        if self.0.is_empty() {
            String::new()
        } else {
            format!("{}.", self.0)
        }
    }

    pub fn stream(&self, base: &str) -> String {
        if self.0.is_empty() {
            base.to_owned()
        } else {
            format!("{}_{base}", self.0)
        }
    }
}

/// The streams a service reads. Unknown services read nothing.
pub fn consumes(service: &str) -> &'static [StreamKind] {
    match service {
        "tenant" | "provisioning" => &[StreamKind::Events],
        "timeline" => &[StreamKind::Events, StreamKind::Audit],
        "billing" => &[StreamKind::Usage, StreamKind::Events],
        "evaluator" => &[StreamKind::Jobs, StreamKind::Events],
        "scheduler" | "evidence" => &[StreamKind::Events],
        _ => &[],
    }
}

/// The JetStream API subjects that read `stream` through consumers (create, info, pull, ack,
/// flow control, delete of one's consumers).
fn read_stream(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.NAMES.{stream}"),
        format!("$JS.API.CONSUMER.LIST.{stream}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// The permissions of `role` in namespace `ns` for the user whose inbox prefix is `inbox`
/// (see `keel_runtime::nats::inbox_prefix`).
pub fn permissions(role: &Role, ns: &Namespace<'_>, inbox: &str) -> Permissions {
    let p = ns.subject_prefix();
    let inbox_sub = format!("{inbox}.>");
    match role {
        Role::Admin => Permissions::admin(),
        Role::TenantAudit { tenant, consumer } => {
            let stream = ns.stream(StreamKind::Audit.base_name());
            Permissions {
                publish: vec![
                    format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                    format!("$JS.ACK.{stream}.{consumer}.>"),
                ],
                publish_deny: vec![],
                subscribe: vec![subjects::audit_tenant(&p, tenant), inbox_sub],
            }
        }
        Role::Service(service) => {
            let mut publish = vec![
                format!("{p}{}.*.{service}.>", StreamKind::Events.subject_root()),
                format!("{p}{}.*.{service}.>", StreamKind::Audit.subject_root()),
                // Its own alerts about any tenant (core NATS).
                format!("{p}keel.alerts.*.{service}"),
                subjects::dlq_all(&p),
                "$JS.API.INFO".to_owned(),
            ];
            for kind in StreamKind::ALL {
                let stream = ns.stream(kind.base_name());
                for op in ["CREATE", "UPDATE", "INFO"] {
                    publish.push(format!("$JS.API.STREAM.{op}.{stream}"));
                }
            }
            for kind in consumes(service) {
                publish.extend(read_stream(&ns.stream(kind.base_name())));
            }
            match service.as_str() {
                "billing" => publish.push(subjects::usage_all(&p)),
                "scheduler" => publish.push(subjects::jobs_all(&p)),
                _ => {}
            }
            let mut publish_deny = vec![];
            if service == "provisioning" {
                // The tenant's resources: its KV bucket and its audit consumer.
                let audit = ns.stream(StreamKind::Audit.base_name());
                for op in ["CREATE", "DURABLE.CREATE", "INFO", "DELETE"] {
                    publish.push(format!("$JS.API.CONSUMER.{op}.{audit}.>"));
                }
                publish.extend([
                    "$JS.API.STREAM.>".to_owned(),
                    "$JS.API.DIRECT.GET.>".to_owned(),
                    "$KV.>".to_owned(),
                ]);
                // …but never the Keel streams themselves.
                for kind in StreamKind::ALL {
                    let stream = ns.stream(kind.base_name());
                    for op in ["DELETE", "PURGE", "MSG.DELETE", "MSG.GET"] {
                        publish_deny.push(format!("$JS.API.STREAM.{op}.{stream}"));
                    }
                }
            }
            Permissions {
                publish,
                publish_deny,
                subscribe: vec![inbox_sub],
            }
        }
    }
}

/// The user name credentials of `role` carry (shown in the server's connection list).
pub fn user_name(role: &Role) -> String {
    match role {
        Role::Admin => "admin".into(),
        Role::Service(s) => format!("keel-{s}"),
        Role::TenantAudit { tenant, .. } => format!("audit-{tenant}"),
    }
}

/// Credentials for `role` in namespace `ns` from the whole authority (operators, tests).
pub fn issue(authority: &Authority, role: &Role, ns: &str, ttl: Option<Duration>) -> Credentials {
    authority.user(
        &user_name(role),
        |inbox| permissions(role, &Namespace(ns), inbox),
        ttl,
    )
}

/// Credentials for `role` from the user-signing key alone (provisioning).
pub fn issue_with(signer: &UserSigner, role: &Role, ns: &str, ttl: Option<Duration>) -> Credentials {
    signer.issue(
        &user_name(role),
        |inbox| permissions(role, &Namespace(ns), inbox),
        ttl,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(patterns: &[String], subject: &str) -> bool {
        patterns.iter().any(|p| matches(p, subject))
    }

    /// NATS subject matching: `*` one token, `>` the rest.
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

    fn can_publish(perms: &Permissions, subject: &str) -> bool {
        allows(&perms.publish, subject) && !allows(&perms.publish_deny, subject)
    }

    #[test]
    fn a_service_publishes_only_its_own_events_and_audit() {
        let perms = permissions(&Role::Service("tenant".into()), &Namespace("t1"), "_INBOX.U1");
        assert!(can_publish(&perms, "t1.keel.evt.acme.tenant.TenantCreated"));
        assert!(can_publish(&perms, "t1.keel.audit.acme.tenant.tenant.create"));
        assert!(!can_publish(&perms, "t1.keel.evt.acme.provisioning.RunStarted"));
        assert!(!can_publish(&perms, "t1.keel.audit.acme.timeline.query"));
        assert!(
            !can_publish(&perms, "keel.evt.acme.tenant.TenantCreated"),
            "other namespaces"
        );
        assert!(!can_publish(&perms, "$JS.API.STREAM.DELETE.t1_KEEL_EVENTS"));
        assert!(can_publish(
            &perms,
            "$JS.API.CONSUMER.CREATE.t1_KEEL_EVENTS.tenants_view.t1.keel.evt.>"
        ));
        assert!(
            !can_publish(&perms, "$JS.API.CONSUMER.CREATE.t1_KEEL_AUDIT"),
            "tenant reads no audit"
        );
        assert_eq!(perms.subscribe, vec!["_INBOX.U1.>".to_owned()]);
    }

    #[test]
    fn provisioning_manages_tenant_streams_but_never_deletes_keel_streams() {
        let perms = permissions(&Role::Service("provisioning".into()), &Namespace(""), "_INBOX.U2");
        assert!(can_publish(&perms, "$JS.API.STREAM.CREATE.KV_keel_acme"));
        assert!(can_publish(&perms, "$JS.API.STREAM.DELETE.KEEL_AUDIT_acme"));
        for stream in ["KEEL_EVENTS", "KEEL_AUDIT", "KEEL_DLQ"] {
            assert!(!can_publish(&perms, &format!("$JS.API.STREAM.DELETE.{stream}")));
            assert!(!can_publish(&perms, &format!("$JS.API.STREAM.PURGE.{stream}")));
        }
        assert!(!can_publish(
            &perms,
            "keel.evt.acme.tenant.TenantDeletionRequested"
        ));
    }

    #[test]
    fn a_tenant_audit_reader_reaches_only_its_tenant() {
        let role = Role::TenantAudit {
            tenant: "acme".into(),
            consumer: "audit-acme".into(),
        };
        let perms = permissions(&role, &Namespace(""), "_INBOX.U3");
        assert!(allows(&perms.subscribe, "keel.audit.acme.tenant.member.invite"));
        assert!(!allows(
            &perms.subscribe,
            "keel.audit.globex.tenant.member.invite"
        ));
        assert!(!allows(&perms.subscribe, "keel.evt.acme.tenant.TenantCreated"));
        assert!(can_publish(
            &perms,
            "$JS.API.CONSUMER.MSG.NEXT.KEEL_AUDIT.audit-acme"
        ));
        assert!(can_publish(&perms, "$JS.ACK.KEEL_AUDIT.audit-acme.1.5.5.123.0"));
        assert!(!can_publish(
            &perms,
            "$JS.API.CONSUMER.MSG.NEXT.KEEL_AUDIT.audit-globex"
        ));
        assert!(!can_publish(
            &perms,
            "$JS.API.CONSUMER.MSG.NEXT.KEEL_AUDIT.timeline_audit"
        ));
        assert!(!can_publish(&perms, "$JS.API.CONSUMER.CREATE.KEEL_AUDIT"));
        assert!(!can_publish(
            &perms,
            "$JS.API.CONSUMER.CREATE.KEEL_AUDIT.x.keel.audit.>"
        ));
        assert!(
            !can_publish(&perms, "keel.audit.acme.tenant.forged"),
            "readers publish no records"
        );
    }
}
