//! The projection contract (keel-store's suite) run against `tenants_view`.

use async_trait::async_trait;
use keel_bus::StreamKind;
use keel_events::Envelope;
use keel_store::contract::Fixture;
use keel_store::projection::ProjectionConfig;
use keel_store::testing::TestEnv;
use keel_tenant::projection::TenantsView;
use serde_json::{Value, json};

pub struct View;

fn event(tenant: &str, seq: u64, name: &str, data: Value) -> Envelope {
    Envelope::builder("tenant", name, 1)
        .tenant(tenant)
        .actor("user:u-1")
        .aggregate("tenant", tenant, seq)
        .data(data)
        .build()
        .unwrap()
}

#[async_trait]
impl Fixture for View {
    type P = TenantsView;
    const SERVICE: &'static str = "tenant";

    async fn setup(env: &TestEnv) -> (TenantsView, ProjectionConfig) {
        keel_store::migrate(env.store.pool(), sqlx::migrate!("./migrations"))
            .await
            .unwrap();
        let mut config = ProjectionConfig::new(StreamKind::Events);
        config.filter_subject = "keel.evt.*.tenant.>".into();
        (TenantsView, config)
    }

    fn history() -> Vec<Envelope> {
        let mut out = Vec::new();
        for (t, tier) in [("t-acme", "low"), ("t-globex", "high")] {
            out.push(event(
                t,
                1,
                "TenantCreated",
                json!({"name": t, "slug": t, "tier": tier}),
            ));
            out.push(event(t, 2, "TenantProvisioningStarted", json!({})));
            out.push(event(t, 3, "TenantActivated", json!({})));
        }
        out.push(event(
            "t-acme",
            4,
            "TenantTierChanged",
            json!({"from": "low", "to": "mid"}),
        ));
        out.push(event("t-acme", 5, "TenantSuspended", json!({"reason": "unpaid"})));
        out.push(event("t-globex", 4, "TenantDeletionRequested", json!({})));
        out
    }

    async fn rows(env: &TestEnv) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT row_to_json(v)::text FROM (SELECT * FROM tenants_view ORDER BY tenant_id) v",
        )
        .fetch_all(env.store.pool())
        .await
        .unwrap()
    }
}

keel_store::projection_contract!(View);
