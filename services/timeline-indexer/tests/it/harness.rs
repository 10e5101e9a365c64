//! A tenant service and a timeline indexer on one bus namespace, each with its own schema.

use std::collections::HashMap;
use std::path::Path;

use keel_bus::{Bus, StreamKind};
use keel_e2e::{Bearer, ServiceProc};
use keel_events::{Envelope, subjects};
use keel_proto::v1 as pb;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use sqlx::PgPool;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

pub type Timeline = TimelineServiceClient<InterceptedService<Channel, Bearer>>;

pub struct Mesh {
    pub tenant: ServiceProc,
    pub timeline: ServiceProc,
    pub token: String,
    pub bus: Bus,
    pub pool: PgPool,
    pub operator: String,
    tenant_channel: Channel,
}

async fn pool_for(schema: &str) -> PgPool {
    let options: sqlx::postgres::PgConnectOptions = keel_store::testing::database_url().parse().unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options.options([("search_path", schema)]))
        .await
        .unwrap()
}

impl Mesh {
    pub async fn start() -> Mesh {
        let token = keel_store::testing::unique_token();
        let bootstrap = format!("boot-{}", uuid::Uuid::new_v4());
        let env = HashMap::from([("KEEL_BOOTSTRAP_TOKEN".to_owned(), bootstrap.clone())]);
        let tenant_bin = keel_e2e::binary("keel-tenant").unwrap();
        let tenant = ServiceProc::start(&tenant_bin, "tenant", &format!("test_{token}_t"), &token, &env)
            .await
            .unwrap();
        let timeline = Self::start_timeline(&token, &tenant).await;
        let bus = Bus::connect(&keel_store::testing::nats_url(), &token)
            .await
            .unwrap();
        let tenant_channel = tenant.channel().await.unwrap();
        let operator = TokenServiceClient::new(tenant_channel.clone())
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: bootstrap,
                scopes: vec![],
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let pool = pool_for(&timeline.schema).await;
        Mesh {
            tenant,
            timeline,
            token,
            bus,
            pool,
            operator,
            tenant_channel,
        }
    }

    pub async fn start_timeline(token: &str, tenant: &ServiceProc) -> ServiceProc {
        Self::start_timeline_with(token, tenant, HashMap::new()).await
    }

    pub async fn start_timeline_with(
        token: &str,
        tenant: &ServiceProc,
        mut env: HashMap<String, String>,
    ) -> ServiceProc {
        env.insert(
            "KEEL_JWKS_URL".to_owned(),
            format!("http://{}/.well-known/jwks.json", tenant.http),
        );
        ServiceProc::start(
            Path::new(env!("CARGO_BIN_EXE_keel-timeline")),
            "timeline",
            &format!("test_{token}_l"),
            token,
            &env,
        )
        .await
        .unwrap()
    }

    pub async fn restart_timeline(&mut self) {
        self.timeline = Self::start_timeline(&self.token, &self.tenant).await;
    }

    pub async fn restart_timeline_with(&mut self, env: HashMap<String, String>) {
        let _ = self.timeline.terminate().await;
        self.timeline = Self::start_timeline_with(&self.token, &self.tenant, env).await;
    }

    pub async fn timeline(&self, token: &str) -> Timeline {
        TimelineServiceClient::with_interceptor(
            self.timeline.channel().await.unwrap(),
            Bearer(Some(token.to_owned())),
        )
    }

    pub fn tenants(&self, token: &str) -> TenantServiceClient<InterceptedService<Channel, Bearer>> {
        TenantServiceClient::with_interceptor(self.tenant_channel.clone(), Bearer(Some(token.to_owned())))
    }

    pub async fn create_tenant(&self, slug: &str) -> pb::Tenant {
        self.tenants(&self.operator)
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

    /// A token for `tenant` with `timeline:read` (and tenant:read), minted by the operator.
    pub async fn reader(&self, tenant: &str) -> String {
        TokenServiceClient::with_interceptor(self.tenant_channel.clone(), Bearer(Some(self.operator.clone())))
            .issue_token(pb::IssueTokenRequest {
                tenant_id: tenant.into(),
                subject: "reader".into(),
                scopes: vec!["timeline:read".into(), "tenant:read".into()],
                ttl_seconds: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    /// Publishes a domain event as a producer service would (through JetStream, deduplicated).
    pub async fn publish(&self, e: &Envelope) {
        let subject = subjects::event(
            &self.bus.subject_prefix(),
            &e.tenantid,
            e.service(),
            e.event_name(),
        );
        self.bus
            .publish_envelope(subject, e)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn stream_len(&self, kind: StreamKind) -> u64 {
        let mut s = self
            .bus
            .jetstream()
            .get_stream(self.bus.stream_name(kind))
            .await
            .unwrap();
        s.info().await.unwrap().state.messages
    }

    pub async fn cleanup(mut self) {
        let _ = self.timeline.terminate().await;
        let _ = self.tenant.terminate().await;
        for schema in [&self.timeline.schema, &self.tenant.schema] {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                .execute(&self.pool)
                .await;
        }
        let _ = self.bus.delete_streams().await;
    }
}

pub fn envelope(
    tenant: &str,
    service: &str,
    event: &str,
    seq: u64,
    data: serde_json::Value,
    trace: Option<&str>,
) -> Envelope {
    Envelope::builder(service, event, 1)
        .tenant(tenant)
        .actor("service:test")
        .traceparent(trace.map(|t| format!("00-{t}-00f067aa0ba902b7-01")))
        .aggregate("run", format!("run-{tenant}"), seq)
        .data(data)
        .build()
        .unwrap()
}

pub fn slug() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}
