//! The one test mesh: real service binaries on port 0, one bus namespace, one schema per service,
//! one GitOps directory, all named by a unique token so tests run in parallel.
//!
//! ```no_run
//! # async fn t() {
//! use keel_e2e::mesh::Mesh;
//! let mesh = Mesh::builder().provisioning(&[("KEEL_PROVISIONING_FAULTS", "database:1")]).timeline(&[]).start().await;
//! let tenant = mesh.create_tenant("acme", keel_proto::v1::Tier::Mid).await;
//! mesh.cleanup().await;
//! # }
//! ```

use std::collections::HashMap;
use std::path::PathBuf;

use keel_bus::{Bus, StreamKind};
use keel_proto::v1 as pb;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use serde_json::Value;
use sqlx::PgPool;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

use crate::{Bearer, ServiceProc};

pub type Tenants = TenantServiceClient<InterceptedService<Channel, Bearer>>;
pub type Tokens = TokenServiceClient<InterceptedService<Channel, Bearer>>;

/// The services of the mesh, with their binaries and schema suffixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Tenant,
    Provisioning,
    /// A second provisioning process on the same schema, bus namespace and resources: a replica.
    ProvisioningReplica,
    Timeline,
    /// A second tenant process on the same schema and bus namespace.
    TenantReplica,
    /// A second timeline process on the same schema and bus namespace.
    TimelineReplica,
    Billing,
}

impl Part {
    fn binary(self) -> &'static str {
        match self {
            Part::Tenant | Part::TenantReplica => "keel-tenant",
            Part::Provisioning | Part::ProvisioningReplica => "keel-provisioning",
            Part::Timeline | Part::TimelineReplica => "keel-timeline",
            Part::Billing => "keel-billing",
        }
    }

    fn service(self) -> &'static str {
        match self {
            Part::Tenant | Part::TenantReplica => "tenant",
            Part::Provisioning | Part::ProvisioningReplica => "provisioning",
            Part::Timeline | Part::TimelineReplica => "timeline",
            Part::Billing => "billing",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Part::Tenant | Part::TenantReplica => "t",
            Part::Provisioning | Part::ProvisioningReplica => "p",
            Part::Timeline | Part::TimelineReplica => "l",
            Part::Billing => "b",
        }
    }
}

fn env_of<I, K, V>(vars: I) -> HashMap<String, String>
where
    I: IntoIterator<Item = (K, V)>,
    K: Into<String>,
    V: Into<String>,
{
    vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

/// Which services to start, with what extra environment.
#[derive(Default)]
pub struct MeshBuilder {
    tenant: HashMap<String, String>,
    provisioning: Option<HashMap<String, String>>,
    provisioning_replica: bool,
    replicated: bool,
    timeline: Option<HashMap<String, String>>,
    billing: Option<HashMap<String, String>>,
}

impl MeshBuilder {
    /// Extra environment of the tenant service (always started).
    pub fn tenant(mut self, env: &[(&str, &str)]) -> Self {
        self.tenant = env_of(env.iter().copied());
        self
    }

    /// Starts provisioning too, with `env` on top of the mesh's.
    pub fn provisioning(mut self, env: &[(&str, &str)]) -> Self {
        self.provisioning = Some(env_of(env.iter().copied()));
        self
    }

    /// Starts a second provisioning process ([`Part::ProvisioningReplica`]) with the same
    /// environment as the first (needs [`MeshBuilder::provisioning`]).
    pub fn provisioning_replica(mut self) -> Self {
        self.provisioning_replica = true;
        self
    }

    /// Two processes of every service started: each `*Replica` part too. The mesh's tenant
    /// clients spread their calls over both tenant processes.
    pub fn replicated(mut self) -> Self {
        self.replicated = true;
        self.provisioning_replica = true;
        self
    }

    /// Starts the billing meter too, with `env` on top of the mesh's.
    pub fn billing(mut self, env: &[(&str, &str)]) -> Self {
        self.billing = Some(env_of(env.iter().copied()));
        self
    }

    /// Starts the timeline too, with `env` on top of the mesh's.
    pub fn timeline(mut self, env: &[(&str, &str)]) -> Self {
        self.timeline = Some(env_of(env.iter().copied()));
        self
    }

    pub async fn start(self) -> Mesh {
        let token = keel_store::testing::unique_token();
        let bootstrap = format!("boot-{}", uuid::Uuid::new_v4());
        let gitops = std::env::temp_dir().join(format!("keel-gitops-{token}"));
        let bus = keel_store::testing::bus(&token)
            .await
            .expect("NATS for the test mesh");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&keel_store::testing::database_url())
            .await
            .expect("PostgreSQL for the test mesh");
        let mut mesh = Mesh {
            token,
            bootstrap,
            operator: String::new(),
            gitops,
            bus,
            pool,
            procs: HashMap::new(),
            envs: HashMap::new(),
            tenant_channel: None,
            provisioning_key: None,
        };
        mesh.start_part(Part::Tenant, self.tenant.clone()).await;
        let channel = if self.replicated {
            mesh.start_part(Part::TenantReplica, self.tenant).await;
            // Calls spread over both processes (tonic's balancer over the two endpoints).
            let endpoints = [Part::Tenant, Part::TenantReplica].map(|p| {
                keel_store::testing::tls_client()
                    .endpoint(&mesh.proc(p).grpc_url(), "grpc url")
                    .expect("tenant endpoint")
            });
            Channel::balance_list(endpoints.into_iter())
        } else {
            mesh.proc(Part::Tenant).channel().await.expect("tenant channel")
        };
        mesh.operator = TokenServiceClient::new(channel.clone())
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: mesh.bootstrap.clone(),
                scopes: vec![],
            })
            .await
            .expect("the bootstrap key exchanges")
            .into_inner()
            .token;
        // Provisioning runs as its own platform account with only the scopes it needs.
        if self.provisioning.is_some() {
            let created = TokenServiceClient::with_interceptor(
                channel.clone(),
                crate::Bearer(Some(mesh.operator.clone())),
            )
            .create_operator_key(pb::CreateOperatorKeyRequest {
                name: "provisioning".into(),
                scopes: keel_tenancy::client::SCOPES_NEEDED
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            })
            .await
            .expect("provisioning's platform key")
            .into_inner();
            mesh.provisioning_key = Some(created.api_key);
        }
        mesh.tenant_channel = Some(channel);
        let replica = self.provisioning.clone().filter(|_| self.provisioning_replica);
        let timeline_replica = self.timeline.clone().filter(|_| self.replicated);
        for (part, env) in [
            (Part::Timeline, self.timeline),
            (Part::TimelineReplica, timeline_replica),
            (Part::Provisioning, self.provisioning),
            (Part::ProvisioningReplica, replica),
            (Part::Billing, self.billing),
        ] {
            if let Some(env) = env {
                mesh.start_part(part, env).await;
            }
        }
        mesh
    }
}

/// A running mesh; [`Mesh::cleanup`] stops it and removes everything it named.
pub struct Mesh {
    /// Names the bus namespace, schemas (`test_<token>_<t|p|l>`) and resource prefixes.
    pub token: String,
    pub bootstrap: String,
    /// An operator access token (from the bootstrap key).
    pub operator: String,
    pub gitops: PathBuf,
    pub bus: Bus,
    /// An administrative pool on the test database (no search path).
    pub pool: PgPool,
    procs: HashMap<Part, ServiceProc>,
    envs: HashMap<Part, HashMap<String, String>>,
    tenant_channel: Option<Channel>,
    /// Provisioning's own platform key (`KEEL_PROVISIONING_API_KEY`): tenant:read,
    /// tenant:lifecycle, license:read, license:issue, never `operator`.
    pub provisioning_key: Option<String>,
}

impl Mesh {
    pub fn builder() -> MeshBuilder {
        MeshBuilder::default()
    }

    /// `KEEL_RESOURCE_PREFIX` of every part: names the tenants' resources (`keel:<prefix>quota:…`).
    pub fn resource_prefix(&self) -> String {
        format!("{}_", self.token)
    }

    /// The Redis key of `tenant`'s quota hash, as provisioning writes it and the services read it.
    pub fn quota_key(&self, tenant: &str) -> String {
        format!("keel:{}quota:{tenant}", self.resource_prefix())
    }

    /// The schema the mesh gives `part`.
    pub fn schema(&self, part: Part) -> String {
        format!("test_{}_{}", self.token, part.suffix())
    }

    /// The environment every part gets from the mesh, before its own.
    fn base_env(&self, part: Part) -> HashMap<String, String> {
        // Every service reads the tenants' quota hashes under the prefix provisioning writes them.
        let mut env = env_of([
            ("KEEL_BOOTSTRAP_TOKEN", self.bootstrap.clone()),
            ("KEEL_RESOURCE_PREFIX", self.resource_prefix()),
        ]);
        if matches!(part, Part::Tenant | Part::TenantReplica) {
            return env;
        }
        let tenant = self.proc(Part::Tenant);
        env.extend(env_of([
            ("KEEL_TENANT_ADDR", tenant.grpc_url()),
            (
                "KEEL_JWKS_URL",
                format!("{}/.well-known/jwks.json", tenant.http_url()),
            ),
        ]));
        if matches!(part, Part::Provisioning | Part::ProvisioningReplica) {
            if let Some(key) = &self.provisioning_key {
                env.insert("KEEL_PROVISIONING_API_KEY".into(), key.clone());
            }
            env.extend(env_of([(
                "KEEL_PROVISIONING_GITOPS_DIR",
                self.gitops.display().to_string(),
            )]));
        }
        env
    }

    async fn start_part(&mut self, part: Part, own: HashMap<String, String>) {
        let mut env = self.base_env(part);
        env.extend(own.clone());
        let binary = crate::binary(part.binary()).expect("service binary");
        let proc = ServiceProc::start(&binary, part.service(), &self.schema(part), &self.token, &env)
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e:#}", part.binary()));
        self.procs.insert(part, proc);
        self.envs.insert(part, own);
    }

    /// Another instance of `part` on the same schema and bus namespace, with the environment
    /// `part` was started with (a second replica); the caller owns and stops it.
    pub async fn start_replica(&self, part: Part) -> ServiceProc {
        let mut env = self.base_env(part);
        env.extend(self.envs.get(&part).cloned().unwrap_or_default());
        let binary = crate::binary(part.binary()).expect("service binary");
        ServiceProc::start(&binary, part.service(), &self.schema(part), &self.token, &env)
            .await
            .unwrap_or_else(|e| panic!("starting a replica of {}: {e:#}", part.binary()))
    }

    /// The running process of `part` (panics when the mesh was built without it).
    pub fn proc(&self, part: Part) -> &ServiceProc {
        self.procs
            .get(&part)
            .unwrap_or_else(|| panic!("the mesh has no {part:?}"))
    }

    pub fn proc_mut(&mut self, part: Part) -> &mut ServiceProc {
        self.procs
            .get_mut(&part)
            .unwrap_or_else(|| panic!("the mesh has no {part:?}"))
    }

    pub fn has(&self, part: Part) -> bool {
        self.procs.contains_key(&part)
    }

    /// Stops `part` (gracefully; it may already be dead) and starts it again with `env` in place
    /// of its own environment (`None`: the one it had).
    pub async fn restart(&mut self, part: Part, env: Option<HashMap<String, String>>) {
        if let Some(mut proc) = self.procs.remove(&part) {
            let _ = proc.terminate().await;
        }
        let own = env.unwrap_or_else(|| self.envs.get(&part).cloned().unwrap_or_default());
        self.start_part(part, own).await;
    }

    /// A pool whose search path is `part`'s schema.
    pub async fn pool_of(&self, part: Part) -> PgPool {
        let options: sqlx::postgres::PgConnectOptions =
            keel_store::testing::database_url().parse().expect("database URL");
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(options.options([("search_path", self.schema(part))]))
            .await
            .expect("PostgreSQL")
    }

    fn tenant_channel(&self) -> Channel {
        self.tenant_channel.clone().expect("tenant channel")
    }

    /// The tenant service as `token`.
    pub fn tenants_as(&self, token: &str) -> Tenants {
        TenantServiceClient::with_interceptor(self.tenant_channel(), Bearer(Some(token.to_owned())))
    }

    /// The tenant service as the operator.
    pub fn tenants(&self) -> Tenants {
        self.tenants_as(&self.operator)
    }

    /// The token service as the operator.
    pub fn tokens(&self) -> Tokens {
        TokenServiceClient::with_interceptor(self.tenant_channel(), Bearer(Some(self.operator.clone())))
    }

    /// Creates a tenant of `tier` as the operator (owner `owner@<slug>.example`).
    pub async fn create_tenant(&self, slug: &str, tier: pb::Tier) -> pb::Tenant {
        self.tenants()
            .create_tenant(pb::CreateTenantRequest {
                name: format!("Tenant {slug}"),
                slug: slug.into(),
                tier: tier as i32,
                owner_email: format!("owner@{slug}.example"),
                request_id: format!("req-{slug}"),
            })
            .await
            .expect("CreateTenant")
            .into_inner()
    }

    /// Messages on one of the namespace's streams.
    pub async fn stream_len(&self, kind: StreamKind) -> u64 {
        let mut s = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name(kind))
            .await
            .expect("stream");
        s.info().await.expect("stream info").state.messages
    }

    /// Every message on one of the namespace's streams: (subject, JSON body).
    pub async fn stream(&self, kind: StreamKind) -> Vec<(String, Value)> {
        let mut s = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name(kind))
            .await
            .expect("stream");
        let info = s.info().await.expect("stream info").state.clone();
        let mut out = Vec::new();
        if info.messages == 0 {
            return out;
        }
        for seq in info.first_sequence..=info.last_sequence {
            if let Ok(m) = s.get_raw_message(seq).await {
                let body = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                out.push((m.subject.to_string(), body));
            }
        }
        out
    }

    /// Stops every process and removes everything the mesh named: schemas, roles, streams,
    /// Redis keys, the GitOps directory.
    pub async fn cleanup(mut self) {
        for part in [
            Part::Billing,
            Part::ProvisioningReplica,
            Part::Provisioning,
            Part::TimelineReplica,
            Part::Timeline,
            Part::TenantReplica,
            Part::Tenant,
        ] {
            if let Some(mut proc) = self.procs.remove(&part) {
                let _ = proc.terminate().await;
            }
        }
        if let Err(e) = crate::drop_everything(&self.token).await {
            eprintln!("cleanup of {} incomplete: {e}", self.token);
        }
        let _ = std::fs::remove_dir_all(&self.gitops);
    }
}
