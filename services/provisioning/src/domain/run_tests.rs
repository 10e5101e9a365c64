//! The saga's decisions, without I/O.

use super::*;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-24T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn started(kind: RunKind) -> Run {
    let mut r = Run::default();
    for e in r
        .decide(RunCommand::Start {
            run_id: "r1".into(),
            tenant_id: "t1".into(),
            slug: "acme".into(),
            tier: "mid".into(),
            suspended: false,
            kind,
            at: t0(),
        })
        .unwrap()
    {
        r.apply(e);
    }
    r
}

fn record(r: &mut Run, c: RunCommand) {
    for e in r.decide(c).unwrap() {
        r.apply(e);
    }
}

fn succeed(r: &mut Run, step: &str) {
    record(
        r,
        RunCommand::StepStarted {
            step: step.into(),
            attempt: 1,
            at: t0(),
        },
    );
    record(
        r,
        RunCommand::StepSucceeded {
            step: step.into(),
            attempt: 1,
            detail: serde_json::json!({}),
            removed: vec![],
            at: t0(),
        },
    );
}

#[test]
fn a_provision_run_walks_its_plan_in_order_then_completes() {
    let mut r = started(RunKind::Provision);
    for step in [
        "begin",
        "database",
        "messaging",
        "quotas",
        "manifests",
        "license",
        "activate",
    ] {
        assert_eq!(
            r.next(t0()),
            Next::Perform {
                step: step.into(),
                op: Op::Apply,
                attempt: 1
            }
        );
        succeed(&mut r, step);
    }
    assert_eq!(r.next(t0()), Next::Complete);
    record(&mut r, RunCommand::Complete { at: t0() });
    assert_eq!(r.next(t0()), Next::Done);
}

#[test]
fn a_step_started_but_never_finished_is_run_again_after_a_crash() {
    let mut r = started(RunKind::Provision);
    succeed(&mut r, "begin");
    record(
        &mut r,
        RunCommand::StepStarted {
            step: "database".into(),
            attempt: 1,
            at: t0(),
        },
    );
    assert_eq!(
        r.next(t0()),
        Next::Perform {
            step: "database".into(),
            op: Op::Apply,
            attempt: 2
        }
    );
}

#[test]
fn transient_failures_wait_with_backoff_then_retry() {
    let mut r = started(RunKind::Provision);
    succeed(&mut r, "begin");
    record(
        &mut r,
        RunCommand::StepStarted {
            step: "database".into(),
            attempt: 1,
            at: t0(),
        },
    );
    record(
        &mut r,
        RunCommand::StepFailed {
            step: "database".into(),
            attempt: 1,
            error: "timeout".into(),
            permanent: false,
            at: t0(),
        },
    );
    let Next::Wait(at) = r.next(t0()) else {
        panic!("expected a wait, got {:?}", r.next(t0()))
    };
    assert!(at > t0() && at <= t0() + Duration::milliseconds(300));
    assert_eq!(
        r.next(at),
        Next::Perform {
            step: "database".into(),
            op: Op::Apply,
            attempt: 2
        }
    );
    assert_eq!(r.step("database").last_error.as_deref(), Some("timeout"));
}

#[test]
fn a_permanent_failure_compensates_what_was_done_in_reverse_then_fails() {
    let mut r = started(RunKind::Provision);
    for step in ["begin", "database", "messaging"] {
        succeed(&mut r, step);
    }
    record(
        &mut r,
        RunCommand::StepStarted {
            step: "quotas".into(),
            attempt: 1,
            at: t0(),
        },
    );
    record(
        &mut r,
        RunCommand::StepFailed {
            step: "quotas".into(),
            attempt: 1,
            error: "bad".into(),
            permanent: true,
            at: t0(),
        },
    );
    let Next::GiveUp { reason } = r.next(t0()) else {
        panic!()
    };
    assert_eq!(reason, "quotas: bad");
    record(&mut r, RunCommand::StartCompensation { reason });
    let mut undone = Vec::new();
    while let Next::Compensate { step, attempt } = r.next(t0()) {
        assert_eq!(attempt, 1);
        undone.push(step.clone());
        record(
            &mut r,
            RunCommand::StepCompensated {
                step,
                removed: vec![],
            },
        );
    }
    // The failed step may have half-done its work: it is undone too, before the earlier ones.
    assert_eq!(undone, ["quotas", "messaging", "database"]);
    assert_eq!(
        r.next(t0()),
        Next::Fail {
            reason: "quotas: bad".into()
        }
    );
}

/// A provision run that failed permanently at `quotas` after database and messaging, now
/// compensating.
fn compensating() -> Run {
    let mut r = started(RunKind::Provision);
    for step in ["begin", "database", "messaging"] {
        succeed(&mut r, step);
    }
    record(
        &mut r,
        RunCommand::StepStarted {
            step: "quotas".into(),
            attempt: 1,
            at: t0(),
        },
    );
    record(
        &mut r,
        RunCommand::StepFailed {
            step: "quotas".into(),
            attempt: 1,
            error: "bad".into(),
            permanent: true,
            at: t0(),
        },
    );
    record(
        &mut r,
        RunCommand::StartCompensation {
            reason: "quotas: bad".into(),
        },
    );
    r
}

fn undo_failed(r: &mut Run, step: &str, attempt: u32, max_attempts: u32, at: DateTime<Utc>) -> Vec<RunEvent> {
    let events = r
        .decide(RunCommand::CompensationFailed {
            step: step.into(),
            attempt,
            error: "redis down".into(),
            max_attempts,
            at,
        })
        .unwrap();
    for e in events.clone() {
        r.apply(e);
    }
    events
}

#[test]
fn a_failed_undo_is_retried_with_growing_backoff_not_at_once() {
    let mut r = compensating();
    let mut now = t0();
    let mut waits = Vec::new();
    for attempt in 1..4 {
        assert_eq!(
            r.next(now),
            Next::Compensate {
                step: "quotas".into(),
                attempt
            }
        );
        undo_failed(&mut r, "quotas", attempt, 8, now);
        let Next::Wait(until) = r.next(now) else {
            panic!("a failed undo waits before its next attempt")
        };
        waits.push(until - now);
        now = until;
    }
    // 500 ms, 1 s, 2 s (±20%): growing, never the old fixed 500 ms loop.
    assert!(waits[0] >= Duration::milliseconds(400), "{waits:?}");
    assert!(waits[1] > waits[0] && waits[2] > waits[1], "{waits:?}");
    assert_eq!(
        r.step("quotas").last_error.as_deref(),
        Some("compensation: redis down")
    );
}

#[test]
fn an_undo_failing_every_allowed_attempt_is_abandoned_with_an_alert_and_the_run_fails() {
    let mut r = compensating();
    let mut now = t0();
    for attempt in 1..3 {
        let events = undo_failed(&mut r, "quotas", attempt, 3, now);
        assert!(matches!(
            &events[..],
            [RunEvent::CompensationFailed {
                retry_at: Some(_),
                ..
            }]
        ));
        now += Duration::minutes(5);
    }
    let events = undo_failed(&mut r, "quotas", 3, 3, now);
    assert_eq!(
        events,
        [
            RunEvent::CompensationFailed {
                step: "quotas".into(),
                attempt: 3,
                error: "redis down".into(),
                retry_at: None,
                at: now,
            },
            RunEvent::CompensationAbandoned {
                step: "quotas".into(),
                attempts: 3,
                error: "redis down".into(),
                at: now,
            }
        ]
    );
    assert_eq!(r.step("quotas").status, StepStatus::Abandoned);
    // The other steps are still undone, then the run fails, naming what was left behind.
    let mut undone = Vec::new();
    while let Next::Compensate { step, .. } = r.next(now) {
        undone.push(step.clone());
        record(
            &mut r,
            RunCommand::StepCompensated {
                step,
                removed: vec![],
            },
        );
    }
    assert_eq!(undone, ["messaging", "database"]);
    let Next::Fail { reason } = r.next(now) else {
        panic!("the run fails")
    };
    assert!(reason.starts_with("quotas: bad"), "{reason}");
    assert!(reason.contains("compensation abandoned for quotas"), "{reason}");
    record(&mut r, RunCommand::Fail { reason, at: now });
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.next(now), Next::Done);
}

#[test]
fn too_many_transient_failures_count_as_permanent() {
    let mut r = started(RunKind::TierChange);
    // The tenant service agreed with the tier; then quotas keep failing.
    succeed(&mut r, "confirm-tier");
    for attempt in 1..=MAX_ATTEMPTS {
        record(
            &mut r,
            RunCommand::StepStarted {
                step: "quotas".into(),
                attempt,
                at: t0(),
            },
        );
        record(
            &mut r,
            RunCommand::StepFailed {
                step: "quotas".into(),
                attempt,
                error: "down".into(),
                permanent: false,
                at: t0(),
            },
        );
    }
    assert!(matches!(r.next(t0() + Duration::days(1)), Next::GiveUp { .. }));
}

#[test]
fn a_repeated_start_writes_nothing_and_finished_runs_refuse_records() {
    let mut r = started(RunKind::Delete);
    let again = r.decide(RunCommand::Start {
        run_id: "r1".into(),
        tenant_id: "t1".into(),
        slug: "acme".into(),
        tier: "mid".into(),
        suspended: false,
        kind: RunKind::Delete,
        at: t0(),
    });
    assert_eq!(again, Ok(vec![]));
    // A deletion first confirms the tenant is DELETING with the tenant service.
    assert_eq!(
        r.next(t0()),
        Next::Perform {
            step: "confirm-deleting".into(),
            op: Op::Apply,
            attempt: 1
        }
    );
    record(
        &mut r,
        RunCommand::Fail {
            reason: "x".into(),
            at: t0(),
        },
    );
    assert_eq!(
        r.decide(RunCommand::StepStarted {
            step: "quotas".into(),
            attempt: 1,
            at: t0()
        }),
        Err(RunError::Finished(RunStatus::Failed))
    );
    assert!(matches!(
        started(RunKind::Provision).decide(RunCommand::StepStarted {
            step: "nope".into(),
            attempt: 1,
            at: t0()
        }),
        Err(RunError::UnknownStep(_))
    ));
}

#[test]
fn destructive_and_granting_plans_confirm_the_tenant_state_first() {
    let first = |k: RunKind| k.plan().first().map(|p| (p.step.clone(), p.op));
    assert_eq!(
        first(RunKind::Delete),
        Some(("confirm-deleting".into(), Op::Apply))
    );
    assert_eq!(
        first(RunKind::Suspend),
        Some(("confirm-suspended".into(), Op::Apply))
    );
    assert_eq!(
        first(RunKind::Reactivate),
        Some(("confirm-active".into(), Op::Apply))
    );
    assert_eq!(
        first(RunKind::TierChange),
        Some(("confirm-tier".into(), Op::Apply))
    );
    assert_eq!(first(RunKind::Provision), Some(("begin".into(), Op::Apply)));
}

#[test]
fn backoff_grows_and_is_capped() {
    assert!(backoff(1, 0.5) < backoff(2, 0.5));
    assert!(backoff(30, 0.99) <= Duration::seconds(36));
}

#[test]
fn a_second_driver_deciding_on_the_same_state_is_refused_as_stale() {
    // Two replicas (one whose lease expired mid-step, one that took it over) both read the run
    // with `begin` pending and both decide to start attempt 1: only the first is recorded.
    let mut r = started(RunKind::Provision);
    let Next::Perform { step, attempt, .. } = r.next(t0()) else {
        panic!("begin first");
    };
    let start = RunCommand::StepStarted {
        step: step.clone(),
        attempt,
        at: t0(),
    };
    record(&mut r, start.clone());
    assert!(matches!(r.decide(start), Err(RunError::Stale { .. })));

    // The one that took over starts attempt 2; the late one's outcome of attempt 1 is refused.
    record(
        &mut r,
        RunCommand::StepStarted {
            step: step.clone(),
            attempt: 2,
            at: t0(),
        },
    );
    let late = |attempt| RunCommand::StepSucceeded {
        step: step.clone(),
        attempt,
        detail: serde_json::json!({}),
        removed: vec![],
        at: t0(),
    };
    assert!(matches!(r.decide(late(1)), Err(RunError::Stale { .. })));
    record(&mut r, late(2));
    // Once it succeeded nobody starts it again, nor records a second outcome.
    assert!(matches!(r.decide(late(2)), Err(RunError::Stale { .. })));
    assert!(matches!(
        r.decide(RunCommand::StepStarted {
            step,
            attempt: 3,
            at: t0()
        }),
        Err(RunError::Stale { .. })
    ));
}

#[test]
fn an_undo_is_recorded_once_and_its_attempts_in_order() {
    let mut r = started(RunKind::Provision);
    succeed(&mut r, "begin");
    succeed(&mut r, "database");
    record(&mut r, RunCommand::StartCompensation { reason: "x".into() });
    let failed = |attempt| RunCommand::CompensationFailed {
        step: "database".into(),
        attempt,
        error: "down".into(),
        max_attempts: 5,
        at: t0(),
    };
    record(&mut r, failed(1));
    assert!(matches!(r.decide(failed(1)), Err(RunError::Stale { .. })));
    let undone = RunCommand::StepCompensated {
        step: "database".into(),
        removed: vec![],
    };
    record(&mut r, undone.clone());
    assert!(matches!(r.decide(undone), Err(RunError::Stale { .. })));
}
