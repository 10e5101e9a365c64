//! A provisioning run: the plan, what happened to each step, and what to do next.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use cqrs_es::Aggregate;
use cqrs_es::event_sink::EventSink;
use serde::{Deserialize, Serialize};

pub use super::commands::RunCommand;
pub use super::events::RunEvent;
pub use super::kind::RunKind;

/// Attempts of one step before a transient failure counts as permanent.
pub const MAX_ATTEMPTS: u32 = 6;

/// Attempts at undoing one step before the saga abandons it with an alert (the executor's
/// default; `KEEL_PROVISIONING_COMPENSATION_ATTEMPTS`).
pub const MAX_COMPENSATION_ATTEMPTS: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Apply,
    Remove,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub step: String,
    pub op: Op,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    #[default]
    Pending,
    Running,
    Succeeded,
    Failed,
    Compensated,
    /// Undoing it failed on every attempt allowed: its leftovers need an operator.
    Abandoned,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub status: StepStatus,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub permanent: bool,
    pub retry_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Attempts at undoing the step so far.
    #[serde(default)]
    pub undo_attempts: u32,
    /// When a failed undo is tried again.
    #[serde(default)]
    pub undo_retry_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    #[default]
    Absent,
    Running,
    Compensating,
    Completed,
    Failed,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Run {
    pub run_id: String,
    pub tenant_id: String,
    pub slug: String,
    pub tier: String,
    pub suspended: bool,
    pub kind: Option<RunKind>,
    pub plan: Vec<PlannedStep>,
    pub steps: BTreeMap<String, StepState>,
    pub status: RunStatus,
    pub failure: Option<String>,
    pub removed: Vec<String>,
    /// Steps whose compensation was abandoned (each with a `CompensationAbandoned` alert).
    #[serde(default)]
    pub abandoned: Vec<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("run does not exist")]
    NotFound,
    #[error("run is {0:?}: nothing more can happen to it")]
    Finished(RunStatus),
    #[error("step {0} is not in the plan")]
    UnknownStep(String),
    /// The command was decided on a state that has moved on: another driver (a replica whose
    /// lease it outlived, or the one that took the lease over) recorded this step first. The
    /// stale driver stops; the run's events, not the drivers, say what happens next.
    #[error("step {step} attempt {attempt} is stale: the run has moved on ({now})")]
    Stale { step: String, attempt: u32, now: String },
}

/// What the executor should do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    Perform {
        step: String,
        op: Op,
        attempt: u32,
    },
    Wait(DateTime<Utc>),
    GiveUp {
        reason: String,
    },
    /// Undo `step`, for the `attempt`th time.
    Compensate {
        step: String,
        attempt: u32,
    },
    Complete,
    Fail {
        reason: String,
    },
    Done,
}

/// Exponential backoff with ±20% jitter, from 200 ms up to 30 s. `jitter` in [0, 1).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let wait = STEP_BACKOFF.delay(attempt, jitter);
    Duration::milliseconds(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
}

/// Retries of a failed step: 200 ms doubling to 30 s.
pub const STEP_BACKOFF: keel_runtime::Backoff = keel_runtime::Backoff::new(
    std::time::Duration::from_millis(200),
    std::time::Duration::from_secs(30),
);

/// Retries of a failed undo: 500 ms doubling to 60 s (with the default 8 attempts, about a
/// minute and a half before the saga gives up on it).
pub const COMPENSATION_BACKOFF: keel_runtime::Backoff = keel_runtime::Backoff::new(
    std::time::Duration::from_millis(500),
    std::time::Duration::from_secs(60),
);

fn compensation_backoff(attempt: u32, jitter: f64) -> Duration {
    let wait = COMPENSATION_BACKOFF.delay(attempt, jitter);
    Duration::milliseconds(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX))
}

impl Run {
    pub fn step(&self, name: &str) -> StepState {
        self.steps.get(name).cloned().unwrap_or_default()
    }

    pub fn next(&self, now: DateTime<Utc>) -> Next {
        match self.status {
            RunStatus::Absent | RunStatus::Completed | RunStatus::Failed => Next::Done,
            RunStatus::Running => {
                let Some(planned) = self
                    .plan
                    .iter()
                    .find(|p| self.step(&p.step).status != StepStatus::Succeeded)
                else {
                    return Next::Complete;
                };
                let s = self.step(&planned.step);
                match s.status {
                    StepStatus::Failed if s.permanent || s.attempts >= MAX_ATTEMPTS => Next::GiveUp {
                        reason: format!("{}: {}", planned.step, s.last_error.unwrap_or_default()),
                    },
                    StepStatus::Failed => match s.retry_at {
                        Some(at) if at > now => Next::Wait(at),
                        _ => Next::Perform {
                            step: planned.step.clone(),
                            op: planned.op,
                            attempt: s.attempts + 1,
                        },
                    },
                    // Pending, or Running when the process died mid-step: (re)run it, idempotently.
                    _ => Next::Perform {
                        step: planned.step.clone(),
                        op: planned.op,
                        attempt: s.attempts + 1,
                    },
                }
            }
            RunStatus::Compensating => {
                let undo = self.plan.iter().rev().find(|p| {
                    p.op == Op::Apply
                        && compensable(&p.step)
                        && matches!(
                            self.step(&p.step).status,
                            StepStatus::Succeeded | StepStatus::Running | StepStatus::Failed
                        )
                        && self.step(&p.step).attempts > 0
                });
                let Some(p) = undo else {
                    let mut reason = self.failure.clone().unwrap_or_default();
                    if !self.abandoned.is_empty() {
                        reason.push_str(&format!(
                            "; compensation abandoned for {} (left behind, needs an operator)",
                            self.abandoned.join(", ")
                        ));
                    }
                    return Next::Fail { reason };
                };
                let s = self.step(&p.step);
                match s.undo_retry_at {
                    Some(at) if at > now => Next::Wait(at),
                    _ => Next::Compensate {
                        step: p.step.clone(),
                        attempt: s.undo_attempts + 1,
                    },
                }
            }
        }
    }

    fn live(&self) -> Result<(), RunError> {
        match self.status {
            RunStatus::Absent => Err(RunError::NotFound),
            RunStatus::Completed | RunStatus::Failed => Err(RunError::Finished(self.status)),
            _ => Ok(()),
        }
    }

    fn known(&self, step: &str) -> Result<(), RunError> {
        if self.plan.iter().any(|p| p.step == step) {
            Ok(())
        } else {
            Err(RunError::UnknownStep(step.to_owned()))
        }
    }

    /// `step`'s `attempt` must be the one this command was decided for: `next` when it starts,
    /// the running one when it ends.
    fn fresh(&self, step: &str, attempt: u32, starting: bool) -> Result<(), RunError> {
        let s = self.step(step);
        let ok = if starting {
            attempt == s.attempts + 1 && s.status != StepStatus::Succeeded
        } else {
            attempt == s.attempts && s.status == StepStatus::Running
        };
        if ok {
            Ok(())
        } else {
            Err(RunError::Stale {
                step: step.to_owned(),
                attempt,
                now: format!("{:?} at attempt {}", s.status, s.attempts),
            })
        }
    }

    /// `step`'s undo `attempt` must be the next one, and the step not undone or given up yet.
    fn fresh_undo(&self, step: &str, attempt: Option<u32>) -> Result<(), RunError> {
        let s = self.step(step);
        let ok = self.status == RunStatus::Compensating
            && !matches!(s.status, StepStatus::Compensated | StepStatus::Abandoned)
            && attempt.is_none_or(|a| a == s.undo_attempts + 1);
        if ok {
            Ok(())
        } else {
            Err(RunError::Stale {
                step: step.to_owned(),
                attempt: attempt.unwrap_or(s.undo_attempts + 1),
                now: format!("{:?} after {} undo attempts", s.status, s.undo_attempts),
            })
        }
    }

    pub fn decide(&self, command: RunCommand) -> Result<Vec<RunEvent>, RunError> {
        use RunCommand as C;
        use RunEvent as E;
        Ok(match command {
            C::Start {
                run_id,
                tenant_id,
                slug,
                tier,
                suspended,
                kind,
                at,
            } => {
                if self.status != RunStatus::Absent {
                    return Ok(vec![]); // a redelivered trigger: the run exists, nothing new
                }
                vec![E::ProvisioningStarted {
                    run_id,
                    tenant_id,
                    slug,
                    tier,
                    suspended,
                    kind,
                    plan: kind.plan(),
                    at,
                }]
            }
            C::StepStarted { step, attempt, at } => {
                self.live()?;
                self.known(&step)?;
                self.fresh(&step, attempt, true)?;
                vec![E::StepStarted { step, attempt, at }]
            }
            C::StepSucceeded {
                step,
                attempt,
                detail,
                removed,
                at,
            } => {
                self.live()?;
                self.known(&step)?;
                self.fresh(&step, attempt, false)?;
                vec![E::StepSucceeded {
                    step,
                    attempt,
                    detail,
                    removed,
                    at,
                }]
            }
            C::StepFailed {
                step,
                attempt,
                error,
                permanent,
                at,
            } => {
                self.live()?;
                self.known(&step)?;
                self.fresh(&step, attempt, false)?;
                let retry_at = (!permanent && attempt < MAX_ATTEMPTS)
                    .then(|| at + backoff(attempt, rand::random::<f64>()));
                vec![E::StepFailed {
                    step,
                    attempt,
                    error,
                    permanent,
                    retry_at,
                    at,
                }]
            }
            C::StartCompensation { reason } => {
                self.live()?;
                if self.status == RunStatus::Compensating {
                    return Ok(vec![]);
                }
                vec![E::CompensationStarted { reason }]
            }
            C::StepCompensated { step, removed } => {
                self.live()?;
                self.known(&step)?;
                self.fresh_undo(&step, None)?;
                vec![E::StepCompensated { step, removed }]
            }
            C::CompensationFailed {
                step,
                attempt,
                error,
                max_attempts,
                at,
            } => {
                self.live()?;
                self.known(&step)?;
                self.fresh_undo(&step, Some(attempt))?;
                if attempt >= max_attempts {
                    vec![
                        E::CompensationFailed {
                            step: step.clone(),
                            attempt,
                            error: error.clone(),
                            retry_at: None,
                            at,
                        },
                        E::CompensationAbandoned {
                            step,
                            attempts: attempt,
                            error,
                            at,
                        },
                    ]
                } else {
                    let retry_at = at + compensation_backoff(attempt, rand::random::<f64>());
                    vec![E::CompensationFailed {
                        step,
                        attempt,
                        error,
                        retry_at: Some(retry_at),
                        at,
                    }]
                }
            }
            C::Complete { at } => {
                self.live()?;
                vec![E::ProvisioningCompleted {
                    removed: self.removed.clone(),
                    at,
                }]
            }
            C::Fail { reason, at } => {
                self.live()?;
                vec![E::ProvisioningFailed { reason, at }]
            }
        })
    }
}

/// Steps that leave something behind to undo (the gRPC ones do not).
pub fn compensable(step: &str) -> bool {
    matches!(step, "database" | "messaging" | "quotas" | "manifests")
}

impl Aggregate for Run {
    const TYPE: &'static str = "provisioning_run";
    type Command = RunCommand;
    type Event = RunEvent;
    type Error = RunError;
    type Services = ();

    async fn handle(&mut self, command: RunCommand, _: &(), sink: &EventSink<Self>) -> Result<(), RunError> {
        for e in self.decide(command)? {
            sink.write(e, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: RunEvent) {
        match event {
            RunEvent::ProvisioningStarted {
                run_id,
                tenant_id,
                slug,
                tier,
                suspended,
                kind,
                plan,
                at,
            } => {
                *self = Run {
                    run_id,
                    tenant_id,
                    slug,
                    tier,
                    suspended,
                    kind: Some(kind),
                    plan,
                    status: RunStatus::Running,
                    started_at: Some(at),
                    ..Run::default()
                };
            }
            RunEvent::StepStarted { step, attempt, at } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Running;
                s.attempts = attempt;
                s.started_at.get_or_insert(at);
            }
            RunEvent::StepSucceeded {
                step,
                attempt,
                removed,
                at,
                ..
            } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Succeeded;
                s.attempts = attempt;
                s.finished_at = Some(at);
                self.removed.extend(removed);
            }
            RunEvent::StepFailed {
                step,
                attempt,
                error,
                permanent,
                retry_at,
                at,
            } => {
                let s = self.steps.entry(step).or_default();
                s.status = StepStatus::Failed;
                s.attempts = attempt;
                s.last_error = Some(error);
                s.permanent = permanent;
                s.retry_at = retry_at;
                s.finished_at = Some(at);
            }
            RunEvent::CompensationStarted { reason } => {
                self.status = RunStatus::Compensating;
                self.failure = Some(reason);
            }
            RunEvent::StepCompensated { step, removed } => {
                self.steps.entry(step).or_default().status = StepStatus::Compensated;
                self.removed.extend(removed);
            }
            RunEvent::CompensationFailed {
                step,
                attempt,
                error,
                retry_at,
                ..
            } => {
                let s = self.steps.entry(step).or_default();
                s.undo_attempts = attempt;
                s.undo_retry_at = retry_at;
                s.last_error = Some(format!("compensation: {error}"));
            }
            RunEvent::CompensationAbandoned { step, .. } => {
                self.steps.entry(step.clone()).or_default().status = StepStatus::Abandoned;
                self.abandoned.push(step);
            }
            RunEvent::ProvisioningCompleted { at, .. } => {
                self.status = RunStatus::Completed;
                self.finished_at = Some(at);
            }
            RunEvent::ProvisioningFailed { reason, at } => {
                self.status = RunStatus::Failed;
                self.failure = Some(reason);
                self.finished_at = Some(at);
            }
        }
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
