//! Tenant + provisioning (+ timeline) on the shared test mesh; each test its own schemas,
//! prefix and GitOps directory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use keel_bus::Bus;
use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh as E2e, Part, Tenants};
use keel_proto::v1 as pb;
use keel_proto::v1::provisioning_service_client::ProvisioningServiceClient;
use keel_provisioning::steps::ResourceNames;
use keel_store::testing::eventually;
use sqlx::PgPool;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

pub struct Mesh {
    pub e2e: E2e,
    pub token: String,
    pub operator: String,
    pub gitops: PathBuf,
    /// An administrative pool (no search path).
    pub pool: PgPool,
    pub bus: Bus,
    pub redis: redis::aio::ConnectionManager,
}

/// The run lease of the test processes: short, so that a takeover (by a replica, or by a
/// process restarted after a crash, which is a new owner) is quick.
pub const LEASE_SECS: &str = "3";

fn faults_env(faults: &str) -> HashMap<String, String> {
    HashMap::from([
        ("KEEL_PROVISIONING_FAULTS".to_owned(), faults.to_owned()),
        ("KEEL_PROVISIONING_LEASE_SECS".to_owned(), LEASE_SECS.to_owned()),
    ])
}

impl Mesh {
    pub async fn start(faults: &str, with_timeline: bool) -> Mesh {
        Self::build(&[("KEEL_PROVISIONING_FAULTS", faults)], with_timeline, false).await
    }

    /// Two processes of every service (`Part::Provisioning` and `Part::ProvisioningReplica`
    /// with `env`, and two tenant processes), sharing everything.
    pub async fn replicated(env: &[(&str, &str)]) -> Mesh {
        Self::build(env, false, true).await
    }

    /// Provisioning with `env` and a [`LEASE_SECS`] run lease (one process, or two with
    /// `replica`).
    pub async fn build(env: &[(&str, &str)], with_timeline: bool, replica: bool) -> Mesh {
        let mut env = env.to_vec();
        env.push(("KEEL_PROVISIONING_LEASE_SECS", LEASE_SECS));
        let mut builder = E2e::builder().provisioning(&env);
        if with_timeline {
            builder = builder.timeline(&[]);
        }
        if replica {
            // Two of every service: tenant (calls spread over both), provisioning, timeline.
            builder = builder.replicated();
        }
        let e2e = builder.start().await;
        let client = redis::Client::open(keel_store::testing::redis_url()).unwrap();
        let redis = redis::aio::ConnectionManager::new(client).await.unwrap();
        Mesh {
            token: e2e.token.clone(),
            operator: e2e.operator.clone(),
            gitops: e2e.gitops.clone(),
            pool: e2e.pool.clone(),
            bus: e2e.bus.clone(),
            redis,
            e2e,
        }
    }

    /// SIGKILLs provisioning, as a crash would.
    pub async fn kill_provisioning(&mut self) {
        self.e2e.proc_mut(Part::Provisioning).kill().await;
    }

    /// Restarts provisioning (after a kill) with other faults.
    pub async fn restart_provisioning(&mut self, faults: &str) {
        self.e2e
            .restart(Part::Provisioning, Some(faults_env(faults)))
            .await;
    }

    /// Whether provisioning has exited by itself (an injected crash).
    pub fn provisioning_exited(&mut self) -> bool {
        self.e2e.proc_mut(Part::Provisioning).exited().is_some()
    }

    /// The provisioning process (of `parts`) whose saga executor holds `tenant`'s run lease.
    pub async fn lease_holder(&self, tenant: &str, parts: &[Part]) -> Option<Part> {
        let owner: Option<String> = sqlx::query_scalar(&format!(
            "SELECT owner FROM test_{}_p.run_leases WHERE tenant_id = $1 AND expires_at > now()",
            self.token
        ))
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
        .unwrap();
        let owner = owner?;
        parts
            .iter()
            .copied()
            .find(|p| self.e2e.proc(*p).logs().contains(&owner))
    }

    /// Provisioning's events of type `name` (e.g. `ProvisioningStarted`) about `tenant`'s runs.
    pub async fn run_events(&self, tenant: &str, name: &str) -> i64 {
        self.count_events('p', tenant, name).await
    }

    /// The tenant service's events of type `name` (e.g. `LicenseIssued`) of `tenant`.
    pub async fn tenant_events(&self, tenant: &str, name: &str) -> i64 {
        self.count_events('t', tenant, name).await
    }

    /// Attempts of a step of `tenant`'s runs that were started more than once: a run driven by
    /// two replicas at once would show them (one replica resuming another's run does not).
    pub async fn doubled_attempts(&self, tenant: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM (SELECT aggregate_id, \
                 COALESCE(payload->'StepStarted', payload)->>'step' AS step, \
                 COALESCE(payload->'StepStarted', payload)->>'attempt' AS attempt \
             FROM test_{}_p.events WHERE tenant_id = $1 AND event_type = 'StepStarted' \
             GROUP BY 1, 2, 3 HAVING count(*) > 1) doubled",
            self.token
        ))
        .bind(tenant)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    async fn count_events(&self, suffix: char, tenant: &str, name: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM test_{}_{suffix}.events WHERE tenant_id = $1 AND event_type = $2",
            self.token
        ))
        .bind(tenant)
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// Provisioning's latest run of `tenant`.
    pub async fn run(&self, tenant: &str) -> pb::ProvisioningRun {
        self.provisioning()
            .await
            .get_status(pb::GetProvisioningStatusRequest {
                tenant_id: tenant.to_owned(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// `tenant`'s latest run as the provisioning process `part` answers (None: no answer).
    pub async fn run_via(&self, part: Part, tenant: &str) -> Option<pb::ProvisioningRun> {
        let mut api = self.provisioning_of(part).await?;
        let r = api
            .get_status(pb::GetProvisioningStatusRequest {
                tenant_id: tenant.to_owned(),
            })
            .await
            .ok()?;
        Some(r.into_inner())
    }

    /// The provisioning process `part` (either replica) as the operator.
    pub async fn provisioning_of(
        &self,
        part: Part,
    ) -> Option<ProvisioningServiceClient<InterceptedService<Channel, Bearer>>> {
        let channel = self.e2e.proc(part).channel().await.ok()?;
        Some(ProvisioningServiceClient::with_interceptor(
            channel,
            Bearer(Some(self.operator.clone())),
        ))
    }

    /// Waits for `tenant`'s latest run to have `status`.
    pub async fn wait_run(&self, tenant: &str, status: &str, timeout: Duration) -> pb::ProvisioningRun {
        eventually(&format!("run {status}"), timeout, || async {
            let r = self
                .provisioning()
                .await
                .get_status(pb::GetProvisioningStatusRequest {
                    tenant_id: tenant.to_owned(),
                })
                .await
                .ok()?
                .into_inner();
            (r.status == status).then_some(r)
        })
        .await
    }

    pub async fn tenants(&self) -> Tenants {
        self.e2e.tenants()
    }

    pub async fn provisioning(&self) -> ProvisioningServiceClient<InterceptedService<Channel, Bearer>> {
        ProvisioningServiceClient::with_interceptor(
            self.e2e.proc(Part::Provisioning).channel().await.unwrap(),
            Bearer(Some(self.operator.clone())),
        )
    }

    pub async fn create(&self, slug: &str) -> pb::Tenant {
        self.e2e.create_tenant(slug, pb::Tier::Mid).await
    }

    pub async fn status(&self, id: &str) -> pb::TenantStatus {
        let t = self
            .tenants()
            .await
            .get_tenant(pb::GetTenantRequest {
                tenant: Some(by_id(id)),
            })
            .await
            .unwrap()
            .into_inner();
        pb::TenantStatus::try_from(t.status).unwrap()
    }

    pub async fn wait_status(&self, id: &str, want: pb::TenantStatus, timeout: Duration) {
        eventually(&format!("tenant {want:?}"), timeout, || async {
            (self.status(id).await == want).then_some(())
        })
        .await;
    }

    pub fn names(&self, t: &pb::Tenant) -> ResourceNames {
        ResourceNames::new(&format!("{}_", self.token), &t.id, &t.slug, &self.gitops)
    }

    /// Which of the tenant's resources exist: (schema, role, kv bucket, audit consumer, redis key, manifest dir).
    pub async fn resources(&self, t: &pb::Tenant) -> [bool; 6] {
        let n = self.names(t);
        let schema: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&n.schema)
                .fetch_one(&self.pool)
                .await
                .unwrap();
        let role: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(&n.role)
            .fetch_one(&self.pool)
            .await
            .unwrap();
        let kv = self.bus.jetstream().get_key_value(&n.kv_bucket).await.is_ok();
        let consumer = match self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name(keel_bus::StreamKind::Audit))
            .await
        {
            Ok(s) => s.consumer_info(&n.audit_consumer).await.is_ok(),
            Err(_) => false,
        };
        let mut redis = self.redis.clone();
        let key: bool = redis::cmd("EXISTS")
            .arg(&n.redis_key)
            .query_async::<i64>(&mut redis)
            .await
            .unwrap()
            == 1;
        [schema, role, kv, consumer, key, n.manifest_dir.exists()]
    }

    pub async fn cleanup(self) {
        self.e2e.cleanup().await;
    }
}

pub fn by_id(id: &str) -> pb::TenantRef {
    pb::TenantRef {
        r#ref: Some(pb::tenant_ref::Ref::Id(id.into())),
    }
}

pub fn slug() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}
