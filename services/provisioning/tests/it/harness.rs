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

fn faults_env(faults: &str) -> HashMap<String, String> {
    HashMap::from([("KEEL_PROVISIONING_FAULTS".to_owned(), faults.to_owned())])
}

impl Mesh {
    pub async fn start(faults: &str, with_timeline: bool) -> Mesh {
        let mut builder = E2e::builder().provisioning(&[("KEEL_PROVISIONING_FAULTS", faults)]);
        if with_timeline {
            builder = builder.timeline(&[]);
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
