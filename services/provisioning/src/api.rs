//! ProvisioningService: status, runs, retry.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Utc};
use keel_auth::scopes;
use keel_proto::v1 as pb;
use keel_proto::v1::provisioning_service_server::ProvisioningService;
use tonic::{Request, Response, Status};

use keel_bus::StreamKind;
use keel_bus::acl::{self, Role};
use keel_runtime::nats::authority::UserSigner;

use crate::domain::{Run, RunStatus, StepStatus};
use crate::error::Error;
use crate::steps::ResourceNames;
use crate::workers::saga::Executor;

pub struct ProvisioningApi {
    pub executor: Arc<Executor>,
    /// Issues tenants' audit credentials (None: not configured).
    pub signer: Option<Arc<UserSigner>>,
    pub creds_ttl: std::time::Duration,
    /// Where every call's audit record goes.
    pub audit: keel_store::audit::AuditLog,
}

fn ts(t: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    t.map(|t| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    })
}

fn status_name(s: RunStatus) -> &'static str {
    match s {
        RunStatus::Absent => "pending",
        RunStatus::Running => "running",
        RunStatus::Compensating => "compensating",
        RunStatus::Completed => "completed",
        RunStatus::Failed => "failed",
    }
}

fn step_status(s: StepStatus) -> &'static str {
    match s {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::Compensated => "compensated",
        StepStatus::Abandoned => "abandoned",
    }
}

pub fn run_to_pb(run: &Run, run_id: &str, tenant_id: &str, kind: &str) -> pb::ProvisioningRun {
    pb::ProvisioningRun {
        run_id: run_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        kind: kind.to_owned(),
        status: status_name(run.status).to_owned(),
        steps: run
            .plan
            .iter()
            .map(|p| {
                let s = run.step(&p.step);
                pb::ProvisioningStep {
                    name: p.step.clone(),
                    op: format!("{:?}", p.op).to_lowercase(),
                    status: step_status(s.status).to_owned(),
                    attempts: s.attempts,
                    last_error: s.last_error.unwrap_or_default(),
                    started_at: ts(s.started_at),
                    finished_at: ts(s.finished_at),
                }
            })
            .collect(),
        failure: run.failure.clone().unwrap_or_default(),
        removed: run.removed.clone(),
        started_at: ts(run.started_at),
        finished_at: ts(run.finished_at),
    }
}

fn invalid(field: &'static str, reason: &str) -> Status {
    Error::invalid(field, reason).into()
}

/// The requests' validation, pure (no store, no bus), as the handlers run it. Public for the fuzz
/// targets; never panics, whatever the input.
pub mod validate {
    use super::*;

    /// A `tenant_id` field: a tenant id.
    pub fn tenant_id(tenant: &str) -> Result<(), Status> {
        if keel_events::subjects::is_valid_token(tenant) {
            Ok(())
        } else {
            Err(invalid("tenant_id", "must be a tenant id"))
        }
    }

    /// ListRuns' page: its size (default 50, at most 500) and the run id it starts after.
    pub fn list_runs_page(page: &pb::PageRequest) -> Result<(u32, Option<String>), Status> {
        let size = match page.page_size {
            0 => 50,
            s if s <= 500 => s,
            _ => return Err(invalid("page.page_size", "must be at most 500")),
        };
        let after = if page.page_token.is_empty() {
            None
        } else {
            let raw = B64URL
                .decode(&page.page_token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            Some(raw.ok_or_else(|| invalid("page.page_token", "is not a token this service issued"))?)
        };
        Ok((size, after))
    }

    /// Retry's `run_id`: present and at most 128 bytes.
    pub fn run_id(run_id: &str) -> Result<(), Status> {
        if run_id.is_empty() || run_id.len() > 128 {
            return Err(invalid("run_id", "must be a run id"));
        }
        Ok(())
    }

    /// Retry's `request_id`, its idempotency key: 1-128 of [A-Za-z0-9_-].
    pub fn request_id(request_id: &str) -> Result<(), Status> {
        let ok = (1..=128).contains(&request_id.len())
            && request_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(())
        } else {
            Err(invalid("request_id", "must be 1-128 of [A-Za-z0-9_-]"))
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Error::internal(e).into()
}

/// The NOLOGIN role of the provisioning service's tenant-scoped reads (migration
/// `20261210300001_row_level_security.sql`).
pub const READER_ROLE: &str = "keel_provisioning_reader";

/// (run id, kind) of a tenant's runs, newest first.
type RunRow = (String, String);

impl ProvisioningApi {
    async fn run_pb(&self, run_id: &str, tenant_id: &str, kind: &str) -> Result<pb::ProvisioningRun, Status> {
        let run = self.executor.load(run_id).await.map_err(internal)?;
        Ok(run_to_pb(&run, run_id, tenant_id, kind))
    }

    /// Up to `limit` runs of `tenant` (after the run id `after`) with their state, read in one
    /// transaction as the tenant's reader: row-level security shows it nothing of another tenant.
    async fn tenant_runs(
        &self,
        tenant: &str,
        after: Option<String>,
        limit: i64,
    ) -> Result<Vec<pb::ProvisioningRun>, Status> {
        let mut tx = keel_store::rls::reader(self.executor.store.pool(), READER_ROLE, tenant)
            .await
            .map_err(internal)?;
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT run_id, kind FROM run_requests WHERE tenant_id = $1 \
             AND ($2::text IS NULL OR run_id < $2) ORDER BY run_id DESC LIMIT $3",
        )
        .bind(tenant)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
        let mut runs = Vec::with_capacity(rows.len());
        for (run_id, kind) in &rows {
            let (run, _) = keel_store::rls::load::<Run>(&mut tx, run_id)
                .await
                .map_err(internal)?;
            runs.push(run_to_pb(&run, run_id, tenant, kind));
        }
        tx.commit().await.map_err(internal)?;
        Ok(runs)
    }

    /// The run an earlier Retry with `request_id` started, if there was one; INVALID_ARGUMENT
    /// when that Retry was of another run than `run_id`.
    async fn retried(&self, request_id: &str, run_id: &str) -> Result<Option<pb::ProvisioningRun>, Status> {
        let row: Option<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT run_id, tenant_id, kind, retry_of FROM run_requests WHERE request_id = $1",
        )
        .bind(request_id)
        .fetch_optional(self.executor.store.pool())
        .await
        .map_err(internal)?;
        let Some((started, tenant_id, kind, retry_of)) = row else {
            return Ok(None);
        };
        if retry_of.as_deref() != Some(run_id) {
            return Err(invalid("request_id", "was already used to retry another run"));
        }
        Ok(Some(self.run_pb(&started, &tenant_id, &kind).await?))
    }
}

#[tonic::async_trait]
impl ProvisioningService for ProvisioningApi {
    async fn get_status(
        &self,
        req: Request<pb::GetProvisioningStatusRequest>,
    ) -> Result<Response<pb::ProvisioningRun>, Status> {
        let tenant = req.get_ref().tenant_id.clone();
        validate::tenant_id(&tenant)?;
        keel_auth::audit::authorize(
            &self.audit,
            "provisioning",
            "status",
            &req,
            scopes::TENANT_READ,
            &tenant,
        )
        .await?;
        // Read as the tenant's reader: its latest request and the run's events, nothing else.
        let mut tx = keel_store::rls::reader(self.executor.store.pool(), READER_ROLE, &tenant)
            .await
            .map_err(internal)?;
        let row: Option<RunRow> =
            sqlx::query_as("SELECT run_id, kind FROM run_requests WHERE tenant_id = $1 ORDER BY requested_at DESC, run_id DESC LIMIT 1")
                .bind(&tenant)
                .fetch_optional(&mut *tx)
                .await
                .map_err(internal)?;
        let (run_id, kind) = row.ok_or_else(|| Status::from(Error::NotFound("provisioning run")))?;
        let (run, _) = keel_store::rls::load::<Run>(&mut tx, &run_id)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(run_to_pb(&run, &run_id, &tenant, &kind)))
    }

    async fn list_runs(
        &self,
        req: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let r = req.get_ref();
        let principal = keel_auth::from_request(&req)?;
        let tenant = if r.tenant_id.is_empty() {
            principal.require_operator()?;
            None
        } else {
            validate::tenant_id(&r.tenant_id)?;
            keel_auth::audit::authorize(
                &self.audit,
                "provisioning",
                "list-runs",
                &req,
                scopes::TENANT_READ,
                &r.tenant_id,
            )
            .await?;
            Some(r.tenant_id.clone())
        };
        let (size, after) = validate::list_runs_page(&r.page.clone().unwrap_or_default())?;
        let limit = i64::from(size) + 1;
        let mut runs = match tenant {
            Some(tenant) => self.tenant_runs(&tenant, after, limit).await?,
            // Every tenant's runs: operator-wide, as the service's own login.
            None => {
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT run_id, tenant_id, kind FROM run_requests WHERE ($1::text IS NULL OR run_id < $1) \
                     ORDER BY run_id DESC LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(self.executor.store.pool())
                .await
                .map_err(internal)?;
                let mut runs = Vec::with_capacity(rows.len());
                for (run_id, tenant_id, kind) in &rows {
                    runs.push(self.run_pb(run_id, tenant_id, kind).await?);
                }
                runs
            }
        };
        let more = runs.len() > size as usize;
        runs.truncate(size as usize);
        let next = if more {
            runs.last().map(|r| B64URL.encode(&r.run_id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListRunsResponse {
            runs,
            page: Some(pb::PageInfo {
                next_page_token: next,
            }),
        }))
    }

    async fn issue_audit_credentials(
        &self,
        req: Request<pb::IssueAuditCredentialsRequest>,
    ) -> Result<Response<pb::AuditCredentials>, Status> {
        let tenant = req.get_ref().tenant_id.clone();
        validate::tenant_id(&tenant)?;
        keel_auth::audit::authorize(
            &self.audit,
            "provisioning",
            "audit-credentials",
            &req,
            scopes::TIMELINE_READ,
            &tenant,
        )
        .await?;
        let signer = self.signer.as_ref().ok_or_else(|| {
            Status::from(Error::Precondition {
                reason: "NO_NATS_SIGNER",
                message: "this installation issues no NATS credentials (KEEL_PROVISIONING_NATS_SIGNER_FILE is unset)".into(),
            })
        })?;
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT slug, suspended FROM tenant_info WHERE tenant_id = $1")
                .bind(&tenant)
                .fetch_optional(self.executor.store.pool())
                .await
                .map_err(internal)?;
        let (slug, suspended) = row.ok_or_else(|| Status::from(Error::NotFound("tenant")))?;
        if suspended {
            return Err(keel_runtime::status::permission_denied(
                "TENANT_SUSPENDED",
                "the tenant is suspended",
            ));
        }
        let sys = &self.executor.systems;
        let names = ResourceNames::new(&self.executor.prefix, &tenant, &slug, &sys.gitops_dir);
        let stream = sys.bus.stream_name(StreamKind::Audit);
        // Only a provisioned tenant has its consumer; credentials to nothing help no one.
        sys.bus
            .jetstream()
            .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
                &names.audit_consumer,
                &stream,
            )
            .await
            .map_err(|_| {
                Status::from(Error::Precondition {
                    reason: "NOT_PROVISIONED",
                    message: "the tenant's audit consumer does not exist yet".into(),
                })
            })?;
        let role = Role::TenantAudit {
            tenant: tenant.clone(),
            consumer: names.audit_consumer.clone(),
        };
        let creds = acl::issue_with(signer, &role, sys.bus.namespace(), Some(self.creds_ttl));
        let expires = Utc::now() + chrono::Duration::from_std(self.creds_ttl).map_err(internal)?;
        Ok(Response::new(pb::AuditCredentials {
            tenant_id: tenant.clone(),
            creds: creds.to_file(),
            expires_at: ts(Some(expires)),
            subject: keel_events::subjects::audit_tenant(&sys.bus.subject_prefix(), &tenant),
            stream,
            consumer: names.audit_consumer,
        }))
    }

    async fn retry(
        &self,
        req: Request<pb::RetryRunRequest>,
    ) -> Result<Response<pb::ProvisioningRun>, Status> {
        let principal = keel_auth::from_request(&req)?;
        principal.require_operator()?;
        let run_id = req.get_ref().run_id.clone();
        let request_id = req.get_ref().request_id.clone();
        validate::run_id(&run_id)?;
        validate::request_id(&request_id)?;
        // A repeated Retry answers with the run the first one started, whatever it is now.
        if let Some(run) = self.retried(&request_id, &run_id).await? {
            return Ok(Response::new(run));
        }
        let row: Option<(String, String, String, String, bool, Option<String>)> = sqlx::query_as(
            "SELECT tenant_id, kind, slug, tier, suspended, traceparent FROM run_requests WHERE run_id = $1",
        )
        .bind(&run_id)
        .fetch_optional(self.executor.store.pool())
        .await
        .map_err(internal)?;
        let (tenant_id, kind, slug, tier, suspended, traceparent) =
            row.ok_or_else(|| Status::from(Error::NotFound("run")))?;
        let run = self.executor.load(&run_id).await.map_err(internal)?;
        if run.status != RunStatus::Failed {
            return Err(Error::Precondition {
                reason: "RUN_NOT_FAILED",
                message: format!(
                    "only a failed run can be retried; this one is {}",
                    status_name(run.status)
                ),
            }
            .into());
        }
        let new_id = format!("retry-{}", uuid::Uuid::now_v7());
        let inserted = sqlx::query(
            "INSERT INTO run_requests (run_id, tenant_id, kind, slug, tier, suspended, traceparent, request_id, retry_of) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&new_id)
        .bind(&tenant_id)
        .bind(&kind)
        .bind(slug)
        .bind(tier)
        .bind(suspended)
        .bind(traceparent)
        .bind(&request_id)
        .bind(&run_id)
        .execute(self.executor.store.pool())
        .await
        .map_err(internal)?;
        if inserted.rows_affected() == 0 {
            // The same request, concurrently (perhaps on another replica): its run, not a second.
            return self
                .retried(&request_id, &run_id)
                .await?
                .map(Response::new)
                .ok_or_else(|| internal("a retry's request vanished"));
        }
        let record = keel_bus::audit::AuditRecord::new(
            principal.actor(),
            &tenant_id,
            "provisioning",
            "retry",
            format!("run/{run_id}"),
            keel_bus::audit::AuditResult::Success,
            keel_auth::audit::source_ip(&req),
        );
        let _ = self.audit.record(&record).await;
        Ok(Response::new(pb::ProvisioningRun {
            run_id: new_id,
            tenant_id,
            kind,
            status: "pending".into(),
            ..Default::default()
        }))
    }
}
