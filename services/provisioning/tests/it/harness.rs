//! Tenant + provisioning (+ timeline) on one namespace; each test its own schemas, prefix and
//! GitOps directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_bus::Bus;
use keel_e2e::{Bearer, ServiceProc};
use keel_proto::v1 as pb;
use keel_proto::v1::provisioning_service_client::ProvisioningServiceClient;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use keel_provisioning::steps::ResourceNames;
use keel_store::testing::eventually;
use sqlx::PgPool;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

pub struct Mesh {
    pub token: String,
    pub tenant: ServiceProc,
    pub provisioning: ServiceProc,
    pub timeline: Option<ServiceProc>,
    pub bootstrap: String,
    pub operator: String,
    pub gitops: PathBuf,
    pub pool: PgPool,
    pub bus: Bus,
    pub redis: redis::aio::ConnectionManager,
    faults: String,
}

pub async fn admin_pool() -> PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&keel_store::testing::database_url())
        .await
        .unwrap()
}

impl Mesh {
    pub async fn start(faults: &str, with_timeline: bool) -> Mesh {
        let token = keel_store::testing::unique_token();
        let bootstrap = format!("boot-{}", uuid::Uuid::new_v4());
        let gitops = std::env::temp_dir().join(format!("keel-gitops-{token}"));
        let tenant_bin = keel_e2e::binary("keel-tenant").unwrap();
        let env = HashMap::from([("KEEL_BOOTSTRAP_TOKEN".to_owned(), bootstrap.clone())]);
        let tenant = ServiceProc::start(&tenant_bin, "tenant", &format!("test_{token}_t"), &token, &env)
            .await
            .unwrap();
        let timeline = if with_timeline {
            let env = HashMap::from([(
                "KEEL_JWKS_URL".to_owned(),
                format!("http://{}/.well-known/jwks.json", tenant.http),
            )]);
            let bin = keel_e2e::binary("keel-timeline").unwrap();
            Some(
                ServiceProc::start(&bin, "timeline", &format!("test_{token}_l"), &token, &env)
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let operator = TokenServiceClient::new(tenant.channel().await.unwrap())
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: bootstrap.clone(),
                scopes: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let client = redis::Client::open(keel_store::testing::redis_url()).unwrap();
        let redis = redis::aio::ConnectionManager::new(client).await.unwrap();
        let bus = Bus::connect(&keel_store::testing::nats_url(), &token)
            .await
            .unwrap();
        let mut mesh = Mesh {
            provisioning: Self::spawn_provisioning(&token, &tenant, &bootstrap, &gitops, faults).await,
            token,
            tenant,
            timeline,
            bootstrap,
            operator,
            gitops,
            pool: admin_pool().await,
            bus,
            redis,
            faults: faults.to_owned(),
        };
        mesh.faults = faults.to_owned();
        mesh
    }

    async fn spawn_provisioning(
        token: &str,
        tenant: &ServiceProc,
        bootstrap: &str,
        gitops: &Path,
        faults: &str,
    ) -> ServiceProc {
        let env = HashMap::from([
            ("KEEL_BOOTSTRAP_TOKEN".to_owned(), bootstrap.to_owned()),
            ("KEEL_TENANT_ADDR".to_owned(), tenant.grpc_url()),
            (
                "KEEL_JWKS_URL".to_owned(),
                format!("http://{}/.well-known/jwks.json", tenant.http),
            ),
            (
                "KEEL_PROVISIONING_GITOPS_DIR".to_owned(),
                gitops.display().to_string(),
            ),
            (
                "KEEL_PROVISIONING_RESOURCE_PREFIX".to_owned(),
                format!("{token}_"),
            ),
            ("KEEL_PROVISIONING_FAULTS".to_owned(), faults.to_owned()),
        ]);
        ServiceProc::start(
            Path::new(env!("CARGO_BIN_EXE_keel-provisioning")),
            "provisioning",
            &format!("test_{token}_p"),
            token,
            &env,
        )
        .await
        .unwrap()
    }

    /// Restarts provisioning (after a kill), optionally with other faults.
    pub async fn restart_provisioning(&mut self, faults: &str) {
        self.faults = faults.to_owned();
        self.provisioning =
            Self::spawn_provisioning(&self.token, &self.tenant, &self.bootstrap, &self.gitops, faults).await;
    }

    pub async fn tenants(&self) -> TenantServiceClient<InterceptedService<Channel, Bearer>> {
        TenantServiceClient::with_interceptor(
            self.tenant.channel().await.unwrap(),
            Bearer(Some(self.operator.clone())),
        )
    }

    pub async fn provisioning(&self) -> ProvisioningServiceClient<InterceptedService<Channel, Bearer>> {
        ProvisioningServiceClient::with_interceptor(
            self.provisioning.channel().await.unwrap(),
            Bearer(Some(self.operator.clone())),
        )
    }

    pub async fn create(&self, slug: &str) -> pb::Tenant {
        self.tenants()
            .await
            .create_tenant(pb::CreateTenantRequest {
                name: format!("Tenant {slug}"),
                slug: slug.into(),
                tier: pb::Tier::Mid as i32,
                owner_email: format!("owner@{slug}.example"),
                request_id: format!("req-{slug}"),
            })
            .await
            .unwrap()
            .into_inner()
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

    pub async fn cleanup(mut self) {
        let _ = self.provisioning.terminate().await;
        if let Some(t) = self.timeline.as_mut() {
            let _ = t.terminate().await;
        }
        let _ = self.tenant.terminate().await;
        if let Err(e) = keel_e2e::drop_everything(&self.token).await {
            eprintln!("cleanup of {} incomplete: {e}", self.token);
        }
        let _ = std::fs::remove_dir_all(&self.gitops);
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
