//! One test's world: the `Systems` the steps act on, scoped to a unique token.

use std::str::FromStr;
use std::time::Duration;

use base64::Engine;
use keel_auth::MasterKey;
use keel_provisioning::steps::{ResourceNames, StepContext, Systems};
use keel_store::testing::{database_url, redis_url, unique_token};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub struct World {
    pub token: String,
    pub schema: String,
    pub sys: Systems,
    _gitops: tempfile::TempDir,
}

impl World {
    pub async fn new() -> Self {
        let token = unique_token();
        let schema = format!("test_{token}");
        let base = PgConnectOptions::from_str(&database_url()).expect("database url");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
            .expect("connect to PostgreSQL");
        sqlx::raw_sql(&format!("CREATE SCHEMA \"{schema}\""))
            .execute(&admin)
            .await
            .expect("create the test schema");
        admin.close().await;
        let pg = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(base.options([("search_path", schema.as_str())]))
            .await
            .expect("connect to PostgreSQL");

        let bus = keel_store::testing::bus(&token).await.expect("connect to NATS");
        bus.ensure_streams().await.expect("streams");
        let client = redis::Client::open(redis_url()).expect("redis url");
        let redis = redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect to Redis");
        let gitops = tempfile::tempdir().expect("temp dir");

        let mut key = [0u8; 32];
        rand::fill(&mut key);
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        let master = MasterKey::from_setting(Some(&key)).expect("master key");
        let sys = Systems {
            pg,
            database_url: database_url(),
            bus,
            redis,
            gitops_dir: gitops.path().to_owned(),
            master,
            // The step tests drive local steps only; nothing answers here.
            tenant: keel_tenancy::TenantClient::new(
                "http://127.0.0.1:1",
                &keel_runtime::Tls::insecure(),
                "unused".into(),
            )
            .unwrap(),
        };
        Self {
            token,
            schema,
            sys,
            _gitops: gitops,
        }
    }

    /// A tenant of this world; `slug` tells tenants of one test apart.
    pub fn ctx(&self, slug: &str, tier: &str, suspended: bool) -> StepContext {
        let tenant_id = format!("tid-{}-{slug}", self.token);
        let names = ResourceNames::new(
            &format!("{}_", self.token),
            &tenant_id,
            slug,
            &self.sys.gitops_dir,
        );
        StepContext {
            tenant_id,
            slug: slug.to_owned(),
            tier: tier.to_owned(),
            suspended,
            names,
            traceparent: None,
        }
    }

    /// Drops the test schema and the namespace's streams (the steps' compensations have removed
    /// the tenants' own resources).
    pub async fn cleanup(self) {
        sqlx::raw_sql(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema))
            .execute(&self.sys.pg)
            .await
            .expect("drop the test schema");
        self.sys.pg.close().await;
        self.sys.bus.delete_streams().await.expect("delete streams");
    }
}
