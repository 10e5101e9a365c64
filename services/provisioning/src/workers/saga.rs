//! The executor: picks up run requests (one run at a time per tenant, many tenants at once,
//! across every replica: a tenant's runs are driven by the holder of its [`Leases`] row), and
//! drives each run by asking it what to do next, doing it, and recording the outcome.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use cqrs_es::EventStore;
use cqrs_es::persist::PersistedEventStore;
use keel_store::{EventRepository, Framework, Metadata, Store};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::domain::faults::{After, Faults};
use crate::domain::{Next, Op, Run, RunCommand, RunKind};
use crate::steps::{self, ResourceNames, Step, StepContext, StepError, Systems};
use crate::workers::lease::Leases;

/// A run to execute, as the trigger projection recorded it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Request {
    pub run_id: String,
    pub tenant_id: String,
    pub kind: String,
    pub slug: String,
    pub tier: String,
    pub suspended: bool,
    pub traceparent: Option<String>,
}

pub struct Executor {
    pub store: Store,
    pub cqrs: Framework<Run>,
    pub loader: PersistedEventStore<EventRepository, Run>,
    pub systems: Systems,
    pub faults: Faults,
    pub prefix: String,
    pub steps: HashMap<&'static str, Box<dyn Step>>,
    pub concurrency: usize,
    /// Which replica drives which tenant's runs.
    pub leases: Leases,
    /// Attempts at undoing a step before it is abandoned with an alert.
    pub compensation_attempts: u32,
}

/// Longest the executor goes without looking for open requests when nothing woke it.
const IDLE_RESCAN: Duration = Duration::from_secs(1);

impl Executor {
    pub fn all_steps() -> HashMap<&'static str, Box<dyn Step>> {
        steps::all().into_iter().map(|s| (s.name(), s)).collect()
    }

    pub async fn load(&self, run_id: &str) -> anyhow::Result<Run> {
        Ok(self
            .loader
            .load_aggregate(run_id)
            .await
            .map_err(|e| anyhow::anyhow!("loading run {run_id}: {e}"))?
            .aggregate)
    }

    async fn record(&self, req: &Request, command: RunCommand) -> anyhow::Result<()> {
        let meta = Metadata::new(&req.tenant_id, "service:provisioning")
            .with_traceparent(req.traceparent.clone())
            .with_request_id(Some(req.run_id.clone()));
        self.cqrs
            .execute_with_metadata(&req.run_id, command, meta.into_map())
            .await
            .map_err(|e| anyhow::anyhow!("run {}: {e}", req.run_id))
    }

    /// Drives open requests until `shutdown`, up to `concurrency` tenants at once. Looks for
    /// work when a request is committed (NOTIFY from `run_requests`), when a drive ends (the
    /// tenant may have another request queued, or the run must resume), and at least every
    /// [`IDLE_RESCAN`].
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        tracing::info!(
            event = "provisioning.executor_started",
            owner = %self.leases.owner(),
            "saga executor started; it drives the runs of the tenants whose lease it holds"
        );
        let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
        let permits = Arc::new(Semaphore::new(self.concurrency.max(1)));
        let channel = keel_store::wakeup::channel("keel_runs_", self.store.schema());
        let mut wakeup = keel_store::wakeup::Wakeup::listen(self.store.pool(), channel).await;
        let drive_ended = Arc::new(tokio::sync::Notify::new());
        while !shutdown.is_cancelled() {
            // Each tenant's oldest open request, unless another replica holds the tenant's lease.
            let open: Result<Vec<Request>, sqlx::Error> = sqlx::query_as(
                "SELECT DISTINCT ON (r.tenant_id) r.run_id, r.tenant_id, r.kind, r.slug, r.tier, r.suspended, r.traceparent \
                 FROM run_requests r WHERE r.finished_at IS NULL AND NOT EXISTS ( \
                     SELECT 1 FROM run_leases l WHERE l.tenant_id = r.tenant_id AND l.owner <> $1 AND l.expires_at > now()) \
                 ORDER BY r.tenant_id, r.requested_at, r.run_id",
            )
            .bind(self.leases.owner())
            .fetch_all(self.store.pool())
            .await;
            let open = open.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read run requests");
                Vec::new()
            });
            for req in open {
                let claimed = busy
                    .lock()
                    .map(|mut b| b.insert(req.tenant_id.clone()))
                    .unwrap_or(false);
                if !claimed {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                // The permit first: a lease is claimed only when it can be driven (and renewed) at once.
                let leased = self.leases.claim(&req.tenant_id, &req.run_id).await;
                if !leased.as_ref().is_ok_and(|held| *held) {
                    if let Err(e) = leased {
                        tracing::warn!(tenant = %req.tenant_id, error = %e, "cannot claim run lease");
                    }
                    if let Ok(mut b) = busy.lock() {
                        b.remove(&req.tenant_id);
                    }
                    continue;
                }
                let (me, busy) = (self.clone(), busy.clone());
                // Cancelled on shutdown, when the lease is lost, and when the drive ends.
                let stop = shutdown.child_token();
                let ended = drive_ended.clone();
                tokio::spawn(async move {
                    let hold = me.leases.hold(&req.tenant_id, stop.clone());
                    let drive = async {
                        if let Err(e) = me.drive(&req, &stop).await {
                            tracing::warn!(run = %req.run_id, error = %e, "run interrupted; will resume");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                        stop.cancel();
                    };
                    tokio::join!(hold, drive);
                    if let Err(e) = me.leases.release(&req.tenant_id).await {
                        tracing::warn!(tenant = %req.tenant_id, error = %e, "cannot release run lease; it expires");
                    }
                    if let Ok(mut b) = busy.lock() {
                        b.remove(&req.tenant_id);
                    }
                    drop(permit);
                    ended.notify_one();
                });
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = wakeup.wait(IDLE_RESCAN) => {}
                () = drive_ended.notified() => {}
            }
        }
    }

    fn context(&self, req: &Request) -> StepContext {
        StepContext {
            tenant_id: req.tenant_id.clone(),
            slug: req.slug.clone(),
            tier: req.tier.clone(),
            suspended: req.suspended,
            names: ResourceNames::new(&self.prefix, &req.tenant_id, &req.slug, &self.systems.gitops_dir),
            traceparent: req.traceparent.clone(),
        }
    }

    /// Drives one run from wherever its events say it is to its end.
    pub async fn drive(&self, req: &Request, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let kind =
            RunKind::parse(&req.kind).ok_or_else(|| anyhow::anyhow!("unknown run kind {}", req.kind))?;
        let ctx = self.context(req);
        self.record(
            req,
            RunCommand::Start {
                run_id: req.run_id.clone(),
                tenant_id: req.tenant_id.clone(),
                slug: req.slug.clone(),
                tier: req.tier.clone(),
                suspended: req.suspended,
                kind,
                at: Utc::now(),
            },
        )
        .await?;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let run = self.load(&req.run_id).await?;
            match run.next(Utc::now()) {
                Next::Perform { step, op, attempt } => {
                    self.record(
                        req,
                        RunCommand::StepStarted {
                            step: step.clone(),
                            attempt,
                            at: Utc::now(),
                        },
                    )
                    .await?;
                    let (span, step_ctx) = step_span(
                        req,
                        &ctx,
                        &step,
                        if op == Op::Apply { "apply" } else { "remove" },
                        attempt,
                    );
                    let performed = self
                        .perform(&step_ctx, &step, op, attempt)
                        .instrument(span.clone())
                        .await;
                    if performed.is_err() {
                        span.record("otel.status_code", "ERROR");
                    }
                    drop(span);
                    let outcome = match performed {
                        Ok(done) => match self.faults.after(&step, attempt) {
                            Some(After::Fail(message)) => Err(StepError::Permanent(message)),
                            Some(After::Crash) => {
                                tracing::error!(run = %req.run_id, %step, "injected crash after the step's work");
                                std::process::exit(70);
                            }
                            None => Ok(done),
                        },
                        failed => failed,
                    };
                    let command = match outcome {
                        Ok((detail, removed)) => RunCommand::StepSucceeded {
                            step,
                            attempt,
                            detail,
                            removed,
                            at: Utc::now(),
                        },
                        Err(e) => {
                            tracing::warn!(run = %req.run_id, %step, attempt, error = %e, "step failed");
                            RunCommand::StepFailed {
                                step,
                                attempt,
                                permanent: !keel_runtime::Retryable::is_retryable(&e),
                                error: e.to_string(),
                                at: Utc::now(),
                            }
                        }
                    };
                    self.record(req, command).await?;
                }
                Next::Wait(until) => {
                    let pause = (until - Utc::now())
                        .to_std()
                        .unwrap_or_default()
                        .min(Duration::from_secs(30));
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(pause) => {}
                    }
                }
                Next::GiveUp { reason } => {
                    // Only a provision run undoes its work; a failed change keeps the tenant as it is.
                    let command = if kind == RunKind::Provision {
                        RunCommand::StartCompensation { reason }
                    } else {
                        RunCommand::Fail {
                            reason,
                            at: Utc::now(),
                        }
                    };
                    self.record(req, command).await?;
                }
                Next::Compensate { step, attempt } => match self.steps.get(step.as_str()) {
                    Some(s) => match self.traced_undo(req, &ctx, s.as_ref(), &step, attempt).await {
                        Ok(removed) => {
                            self.record(req, RunCommand::StepCompensated { step, removed })
                                .await?
                        }
                        Err(e) => {
                            let max_attempts = self.compensation_attempts.max(1);
                            if attempt >= max_attempts {
                                tracing::error!(
                                    event = "provisioning.compensation_abandoned",
                                    run = %req.run_id, tenant = %req.tenant_id, %step, attempt, error = %e,
                                    "compensation failed on every attempt; abandoning it (its leftovers need an operator)"
                                );
                            } else {
                                tracing::warn!(run = %req.run_id, %step, attempt, error = %e, "compensation failed; retrying with backoff");
                            }
                            self.record(
                                req,
                                RunCommand::CompensationFailed {
                                    step,
                                    attempt,
                                    error: e.to_string(),
                                    max_attempts,
                                    at: Utc::now(),
                                },
                            )
                            .await?
                        }
                    },
                    None => {
                        self.record(
                            req,
                            RunCommand::StepCompensated {
                                step,
                                removed: vec![],
                            },
                        )
                        .await?
                    }
                },
                Next::Fail { reason } => {
                    if kind == RunKind::Provision {
                        self.systems
                            .tenant
                            .fail(&req.tenant_id, &reason, req.traceparent.as_deref())
                            .await
                            .map_err(|e| anyhow::anyhow!("{e}"))?;
                    }
                    self.record(
                        req,
                        RunCommand::Fail {
                            reason,
                            at: Utc::now(),
                        },
                    )
                    .await?;
                }
                Next::Complete => self.record(req, RunCommand::Complete { at: Utc::now() }).await?,
                Next::Done => {
                    let status = if run.status == crate::domain::RunStatus::Completed {
                        "completed"
                    } else {
                        "failed"
                    };
                    sqlx::query("UPDATE run_requests SET finished_at = now(), status = $2 WHERE run_id = $1")
                        .bind(&req.run_id)
                        .bind(status)
                        .execute(self.store.pool())
                        .await?;
                    return Ok(());
                }
            }
        }
    }

    /// [`Self::undo`] in a span of its own.
    async fn traced_undo(
        &self,
        req: &Request,
        ctx: &StepContext,
        s: &dyn Step,
        step: &str,
        attempt: u32,
    ) -> Result<Vec<String>, StepError> {
        let (span, step_ctx) = step_span(req, ctx, step, "compensate", attempt);
        let undone = self.undo(s, &step_ctx, attempt).instrument(span.clone()).await;
        if undone.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        undone
    }

    /// Undoes one step (or fails as the injected faults say).
    async fn undo(&self, s: &dyn Step, ctx: &StepContext, attempt: u32) -> Result<Vec<String>, StepError> {
        if let Some(message) = self.faults.check_undo(s.name(), attempt) {
            return Err(StepError::Transient(message));
        }
        s.compensate(&self.systems, ctx).await
    }

    /// One step's side effect. Returns (detail, removed).
    async fn perform(
        &self,
        ctx: &StepContext,
        step: &str,
        op: Op,
        attempt: u32,
    ) -> Result<(serde_json::Value, Vec<String>), StepError> {
        if let Some((message, permanent)) = self.faults.check(step, attempt) {
            return Err(if permanent {
                StepError::Permanent(message)
            } else {
                StepError::Transient(message)
            });
        }
        let s = self
            .steps
            .get(step)
            .ok_or_else(|| StepError::Permanent(format!("no step {step}")))?;
        match op {
            Op::Apply => s.apply(&self.systems, ctx).await.map(|d| (d, vec![])),
            Op::Remove => s
                .compensate(&self.systems, ctx)
                .await
                .map(|removed| (serde_json::json!({}), removed)),
        }
    }
}

/// The span of one step's side effect (child of the run's trace), and the context whose
/// `traceparent` is that span's, so the calls the step makes are its children.
fn step_span(
    req: &Request,
    ctx: &StepContext,
    step: &str,
    op: &str,
    attempt: u32,
) -> (tracing::Span, StepContext) {
    let span = tracing::info_span!(
        parent: None,
        "saga.step",
        otel.name = %format!("provisioning step {step} {op}"),
        otel.kind = "internal",
        otel.status_code = tracing::field::Empty,
        "keel.run_id" = %req.run_id,
        "keel.step" = %step,
        "keel.step.op" = %op,
        "keel.step.attempt" = attempt,
        tenant_id = %req.tenant_id,
    );
    if let Some(tp) = &req.traceparent {
        keel_runtime::telemetry::set_parent_from_traceparent(&span, tp);
    }
    let mut step_ctx = ctx.clone();
    if let Some(tp) = keel_runtime::telemetry::traceparent_of(&span) {
        step_ctx.traceparent = Some(tp);
    }
    (span, step_ctx)
}
