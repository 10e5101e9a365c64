//! One tenant service per test, with its own schema and bus namespace.

use std::collections::HashMap;

use keel_bus::{Bus, StreamKind};
use keel_e2e::mesh::{Mesh as E2e, Part};
use keel_e2e::{Bearer, ServiceProc};
use keel_proto::v1 as pb;
use keel_proto::v1::license_service_client::LicenseServiceClient;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use serde_json::Value;
use sqlx::PgPool;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

pub type Tenants = TenantServiceClient<InterceptedService<Channel, Bearer>>;
pub type Tokens = TokenServiceClient<InterceptedService<Channel, Bearer>>;
pub type Licenses = LicenseServiceClient<InterceptedService<Channel, Bearer>>;

/// base64 of 32 bytes of 42: tests know the master key, so they can forge tokens with the
/// service's real signing key (expired, missing scope …).
pub const MASTER_KEY: &str = keel_e2e::TEST_MASTER_KEY;

pub struct World {
    pub e2e: E2e,
    /// A pool on the tenant service's schema.
    pub pool: PgPool,
    pub bus: Bus,
    pub bootstrap: String,
    pub operator: String,
    channel: Channel,
}

impl World {
    pub async fn start() -> World {
        Self::start_with(HashMap::new()).await
    }

    /// The tenant service alone on the shared test mesh (with the mesh's test master key), `env`
    /// on top.
    pub async fn start_with(env: HashMap<String, String>) -> World {
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let e2e = E2e::builder().tenant(&vars).start().await;
        let channel = e2e.proc(Part::Tenant).channel().await.unwrap();
        World {
            pool: e2e.pool_of(Part::Tenant).await,
            bus: e2e.bus.clone(),
            bootstrap: e2e.bootstrap.clone(),
            operator: e2e.operator.clone(),
            channel,
            e2e,
        }
    }

    /// Stops the service and starts it again on the same schema and bus namespace with `env`
    /// (on top of the mesh's); clients made afterwards reach the new process.
    pub async fn restart(&mut self, env: &[(&str, &str)]) {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.e2e.restart(Part::Tenant, Some(env)).await;
        self.channel = self.e2e.proc(Part::Tenant).channel().await.unwrap();
    }

    /// The tenant service's process (ports, logs).
    pub fn proc(&self) -> &ServiceProc {
        self.e2e.proc(Part::Tenant)
    }

    pub fn tenants(&self, token: &str) -> Tenants {
        TenantServiceClient::with_interceptor(self.channel.clone(), Bearer(Some(token.to_owned())))
    }

    /// The channel to the service, for clients that bring their own stubs (reflection).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub fn tenants_anonymous(&self) -> Tenants {
        TenantServiceClient::with_interceptor(self.channel.clone(), Bearer(None))
    }

    pub fn tokens(&self, token: &str) -> Tokens {
        TokenServiceClient::with_interceptor(self.channel.clone(), Bearer(Some(token.to_owned())))
    }

    pub fn licenses(&self, token: &str) -> Licenses {
        LicenseServiceClient::with_interceptor(self.channel.clone(), Bearer(Some(token.to_owned())))
    }

    pub async fn exchange(&self, api_key: &str) -> Result<pb::AccessToken, tonic::Status> {
        TokenServiceClient::with_interceptor(self.channel.clone(), Bearer(None))
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: api_key.into(),
                scopes: vec![],
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Creates a tenant as the operator.
    pub async fn create(&self, slug: &str, email: &str) -> pb::Tenant {
        self.tenants(&self.operator)
            .create_tenant(pb::CreateTenantRequest {
                name: format!("Tenant {slug}"),
                slug: slug.into(),
                tier: pb::Tier::Low as i32,
                owner_email: email.into(),
                request_id: format!("req-{slug}"),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// A tenant-scoped token (through a service account and its API key, as a tenant's CI would).
    pub async fn tenant_token(&self, tenant_id: &str, scopes: &[&str]) -> String {
        let created = self
            .tokens(&self.operator)
            .create_service_account(pb::CreateServiceAccountRequest {
                tenant: Some(by_id(tenant_id)),
                name: format!("ci-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            })
            .await
            .unwrap()
            .into_inner();
        self.exchange(&created.api_key).await.unwrap().token
    }

    /// The service's active signing key, unwrapped with the test master key.
    pub async fn signing_key(&self) -> keel_auth::SigningKey {
        let (kid, wrapped): (String, Vec<u8>) =
            sqlx::query_as("SELECT kid, wrapped_seed FROM signing_keys WHERE retired_at IS NULL")
                .fetch_one(&self.pool)
                .await
                .unwrap();
        let master = keel_tenant::crypto::MasterKey::from_setting(Some(MASTER_KEY)).unwrap();
        let seed: [u8; 32] = master.unwrap(&wrapped).unwrap().try_into().unwrap();
        keel_auth::SigningKey::from_seed(&kid, seed)
    }

    /// GET on the service's HTTP port: (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        self.proc().http_get(path).await.unwrap()
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// Every message on one of the namespace's streams: (subject, JSON body).
    pub async fn stream(&self, kind: StreamKind) -> Vec<(String, Value)> {
        self.e2e.stream(kind).await
    }

    pub async fn audit_of(&self, tenant: &str) -> Vec<Value> {
        let prefix = format!("{}keel.audit.{tenant}.", self.bus.subject_prefix());
        self.stream(StreamKind::Audit)
            .await
            .into_iter()
            .filter(|(s, _)| s.starts_with(&prefix))
            .map(|(_, v)| v)
            .collect()
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

pub fn by_slug(slug: &str) -> pb::TenantRef {
    pb::TenantRef {
        r#ref: Some(pb::tenant_ref::Ref::Slug(slug.into())),
    }
}

pub fn slug() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}
