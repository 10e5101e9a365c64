//! Given events, when command, then events — one short test per rule.

use cqrs_es::DomainEvent;
use cqrs_es::test::TestFramework;

use super::*;

type F = TestFramework<Tenant>;

fn enc(s: &str) -> Encrypted {
    Encrypted {
        key_id: "k1".into(),
        nonce: "bm9uY2U=".into(),
        ciphertext: s.into(),
    }
}

fn created() -> TenantEvent {
    TenantEvent::TenantCreated {
        tenant_id: "t1".into(),
        name: "Acme".into(),
        slug: "acme".into(),
        tier: Tier::Mid,
        owner_member_id: "m-owner".into(),
        owner_email_enc: enc("owner"),
        owner_email_digest: "d-owner".into(),
        request_id: "r1".into(),
    }
}

fn active() -> Vec<TenantEvent> {
    vec![
        created(),
        TenantEvent::TenantProvisioningStarted {},
        TenantEvent::TenantProvisioned {},
        TenantEvent::TenantActivated {},
    ]
}

fn invite(id: &str, digest: &str, role: Role) -> TenantCommand {
    TenantCommand::InviteMember {
        member_id: id.into(),
        email_enc: enc(id),
        email_digest: digest.into(),
        role,
    }
}

#[test]
fn create_makes_a_pending_tenant_with_its_owner() {
    let TenantEvent::TenantCreated {
        tenant_id,
        name,
        slug,
        tier,
        owner_member_id,
        owner_email_enc,
        owner_email_digest,
        request_id,
    } = created()
    else {
        unreachable!()
    };
    F::with(())
        .given_no_previous_events()
        .when(TenantCommand::Create {
            tenant_id,
            name,
            slug,
            tier,
            owner_member_id,
            owner_email_enc,
            owner_email_digest,
            request_id,
        })
        .then_expect_events(vec![created()]);
}

#[test]
fn create_twice_is_refused() {
    let TenantEvent::TenantCreated {
        tenant_id,
        name,
        slug,
        tier,
        owner_member_id,
        owner_email_enc,
        owner_email_digest,
        request_id,
    } = created()
    else {
        unreachable!()
    };
    F::with(())
        .given(vec![created()])
        .when(TenantCommand::Create {
            tenant_id,
            name,
            slug,
            tier,
            owner_member_id,
            owner_email_enc,
            owner_email_digest,
            request_id,
        })
        .then_expect_error(TenantError::AlreadyExists);
}

#[test]
fn commands_on_an_absent_tenant_are_not_found() {
    F::with(())
        .given_no_previous_events()
        .when(TenantCommand::Suspend { reason: "x".into() })
        .then_expect_error(TenantError::NotFound);
}

#[test]
fn provisioning_then_activation() {
    F::with(())
        .given(vec![created()])
        .when(TenantCommand::StartProvisioning)
        .then_expect_events(vec![TenantEvent::TenantProvisioningStarted {}]);
    F::with(())
        .given(vec![created(), TenantEvent::TenantProvisioningStarted {}])
        .when(TenantCommand::MarkProvisioned)
        .then_expect_events(vec![
            TenantEvent::TenantProvisioned {},
            TenantEvent::TenantActivated {},
        ]);
}

#[test]
fn failed_provisioning_can_be_retried() {
    let failed = vec![
        created(),
        TenantEvent::TenantProvisioningStarted {},
        TenantEvent::TenantProvisioningFailed { reason: "db".into() },
    ];
    F::with(())
        .given(failed)
        .when(TenantCommand::StartProvisioning)
        .then_expect_events(vec![TenantEvent::TenantProvisioningStarted {}]);
}

#[test]
fn pending_cannot_be_activated_and_the_error_names_the_status() {
    F::with(())
        .given(vec![created()])
        .when(TenantCommand::MarkProvisioned)
        .then_expect_error_message("cannot activate a tenant in status PENDING");
}

#[test]
fn suspend_and_reactivate() {
    F::with(())
        .given(active())
        .when(TenantCommand::Suspend {
            reason: "unpaid".into(),
        })
        .then_expect_events(vec![TenantEvent::TenantSuspended {
            reason: "unpaid".into(),
        }]);
    let mut suspended = active();
    suspended.push(TenantEvent::TenantSuspended {
        reason: "unpaid".into(),
    });
    F::with(())
        .given(suspended)
        .when(TenantCommand::Reactivate)
        .then_expect_events(vec![TenantEvent::TenantReactivated {}]);
}

#[test]
fn only_active_tenants_can_be_suspended() {
    F::with(())
        .given(vec![created()])
        .when(TenantCommand::Suspend { reason: "x".into() })
        .then_expect_error(TenantError::InvalidTransition {
            action: "suspend",
            current: Status::Pending,
        });
}

#[test]
fn tier_change_records_from_and_to_and_same_tier_is_a_no_op() {
    F::with(())
        .given(active())
        .when(TenantCommand::ChangeTier { tier: Tier::High })
        .then_expect_events(vec![TenantEvent::TenantTierChanged {
            from: Tier::Mid,
            to: Tier::High,
        }]);
    F::with(())
        .given(active())
        .when(TenantCommand::ChangeTier { tier: Tier::Mid })
        .then_expect_events(vec![]);
}

#[test]
fn deletion_is_requested_then_completed_and_final() {
    F::with(())
        .given(active())
        .when(TenantCommand::RequestDeletion)
        .then_expect_events(vec![TenantEvent::TenantDeletionRequested {}]);
    let mut deleting = active();
    deleting.push(TenantEvent::TenantDeletionRequested {});
    F::with(())
        .given(deleting.clone())
        .when(TenantCommand::MarkDeleted)
        .then_expect_events(vec![TenantEvent::TenantDeleted {}]);
    deleting.push(TenantEvent::TenantDeleted {});
    F::with(())
        .given(deleting)
        .when(TenantCommand::Reactivate)
        .then_expect_error(TenantError::InvalidTransition {
            action: "reactivate",
            current: Status::Deleted,
        });
}

#[test]
fn the_same_email_cannot_be_invited_twice() {
    F::with(())
        .given(active())
        .when(invite("m2", "d-owner", Role::Viewer))
        .then_expect_error(TenantError::AlreadyMember);
}

#[test]
fn the_last_owner_cannot_be_removed_or_demoted() {
    F::with(())
        .given(active())
        .when(TenantCommand::RemoveMember {
            member_id: "m-owner".into(),
        })
        .then_expect_error(TenantError::LastOwner);
    F::with(())
        .given(active())
        .when(TenantCommand::ChangeMemberRole {
            member_id: "m-owner".into(),
            role: Role::Admin,
        })
        .then_expect_error(TenantError::LastOwner);
}

#[test]
fn an_owner_can_leave_when_another_owner_remains() {
    let mut events = active();
    events.push(TenantEvent::MemberInvited {
        member_id: "m2".into(),
        email_enc: enc("m2"),
        email_digest: "d2".into(),
        role: Role::Owner,
    });
    F::with(())
        .given(events)
        .when(TenantCommand::RemoveMember {
            member_id: "m-owner".into(),
        })
        .then_expect_events(vec![TenantEvent::MemberRemoved {
            member_id: "m-owner".into(),
        }]);
}

#[test]
fn unknown_member_is_not_found() {
    F::with(())
        .given(active())
        .when(TenantCommand::RemoveMember {
            member_id: "nobody".into(),
        })
        .then_expect_error(TenantError::MemberNotFound);
}

#[test]
fn service_account_names_are_unique_and_keys_need_an_account() {
    let mut events = active();
    events.push(TenantEvent::ServiceAccountCreated {
        account_id: "sa1".into(),
        name: "ci".into(),
        scopes: vec!["tenant:read".into()],
    });
    F::with(())
        .given(events.clone())
        .when(TenantCommand::CreateServiceAccount {
            account_id: "sa2".into(),
            name: "ci".into(),
            scopes: vec![],
            key_id: "key2".into(),
        })
        .then_expect_error(TenantError::AccountExists);
    F::with(())
        .given(events)
        .when(TenantCommand::IssueApiKey {
            account_id: "sa9".into(),
            key_id: "k".into(),
        })
        .then_expect_error(TenantError::AccountNotFound);
}

#[test]
fn an_account_is_created_with_its_key_in_one_command() {
    F::with(())
        .given(active())
        .when(TenantCommand::CreateServiceAccount {
            account_id: "sa1".into(),
            name: "ci".into(),
            scopes: vec!["tenant:read".into()],
            key_id: "key1".into(),
        })
        .then_expect_events(with_key()[active().len()..].to_vec());
}

#[test]
fn no_account_where_no_key_may_be_issued() {
    let mut suspended = active();
    suspended.push(TenantEvent::TenantSuspended {
        reason: "unpaid".into(),
    });
    F::with(())
        .given(suspended)
        .when(TenantCommand::CreateServiceAccount {
            account_id: "sa1".into(),
            name: "ci".into(),
            scopes: vec![],
            key_id: "key1".into(),
        })
        .then_expect_error(TenantError::InvalidTransition {
            action: "add service accounts to",
            current: Status::Suspended,
        });
}

fn with_key() -> Vec<TenantEvent> {
    let mut events = active();
    events.extend([
        TenantEvent::ServiceAccountCreated {
            account_id: "sa1".into(),
            name: "ci".into(),
            scopes: vec!["tenant:read".into()],
        },
        TenantEvent::ApiKeyIssued {
            account_id: "sa1".into(),
            key_id: "key1".into(),
        },
    ]);
    events
}

fn revoke(account: &str, key: &str) -> TenantCommand {
    TenantCommand::RevokeApiKey {
        account_id: account.into(),
        key_id: key.into(),
    }
}

#[test]
fn revoking_a_key_is_recorded_once() {
    F::with(())
        .given(with_key())
        .when(revoke("sa1", "key1"))
        .then_expect_events(vec![TenantEvent::ApiKeyRevoked {
            account_id: "sa1".into(),
            key_id: "key1".into(),
        }]);
    let mut revoked = with_key();
    revoked.push(TenantEvent::ApiKeyRevoked {
        account_id: "sa1".into(),
        key_id: "key1".into(),
    });
    F::with(())
        .given(revoked)
        .when(revoke("sa1", "key1"))
        .then_expect_events(vec![]);
}

#[test]
fn revoking_works_in_any_status_but_records_only_keys_the_tenant_issued() {
    for extra in [
        vec![TenantEvent::TenantSuspended { reason: "x".into() }],
        vec![
            TenantEvent::TenantDeletionRequested {},
            TenantEvent::TenantDeleted {},
        ],
    ] {
        let mut events = with_key();
        events.extend(extra);
        F::with(())
            .given(events)
            .when(revoke("sa1", "key1"))
            .then_expect_events(vec![TenantEvent::ApiKeyRevoked {
                account_id: "sa1".into(),
                key_id: "key1".into(),
            }]);
    }
    F::with(())
        .given(with_key())
        .when(revoke("sa1", "key-of-someone-else"))
        .then_expect_events(vec![]);
    F::with(())
        .given(with_key())
        .when(revoke("sa9", "key1"))
        .then_expect_events(vec![]);
    F::with(())
        .given_no_previous_events()
        .when(revoke("sa1", "key1"))
        .then_expect_error(TenantError::NotFound);
}

#[test]
fn every_event_is_in_the_catalog() {
    let samples = {
        let mut v = active();
        v.extend([
            TenantEvent::TenantTierChanged {
                from: Tier::Low,
                to: Tier::Mid,
            },
            TenantEvent::TenantSuspended { reason: "x".into() },
            TenantEvent::TenantReactivated {},
            TenantEvent::TenantProvisioningFailed { reason: "x".into() },
            TenantEvent::TenantDeletionRequested {},
            TenantEvent::TenantDeleted {},
            TenantEvent::MemberInvited {
                member_id: "m".into(),
                email_enc: enc("x"),
                email_digest: "d".into(),
                role: Role::Admin,
            },
            TenantEvent::MemberRoleChanged {
                member_id: "m".into(),
                role: Role::Viewer,
            },
            TenantEvent::MemberRemoved {
                member_id: "m".into(),
            },
            TenantEvent::LicenseIssued {
                license_id: "l".into(),
                tier: Tier::Low,
                expires_at: "2027-01-01T00:00:00Z".into(),
            },
            TenantEvent::ServiceAccountCreated {
                account_id: "a".into(),
                name: "n".into(),
                scopes: vec![],
            },
            TenantEvent::ApiKeyIssued {
                account_id: "a".into(),
                key_id: "k".into(),
            },
            TenantEvent::ApiKeyRevoked {
                account_id: "a".into(),
                key_id: "k".into(),
            },
        ]);
        v
    };
    for e in samples {
        assert!(
            keel_events::catalog::lookup("tenant", &e.event_type(), 1).is_some(),
            "{} has no schema",
            e.event_type()
        );
    }
}
