//! The projection contract (keel-store's suite) run against the provisioning triggers.

use async_trait::async_trait;
use keel_bus::StreamKind;
use keel_events::Envelope;
use keel_provisioning::projections::Triggers;
use keel_store::contract::Fixture;
use keel_store::projection::ProjectionConfig;
use keel_store::testing::TestEnv;
use serde_json::{Value, json};

pub struct RunRequests;

fn event(tenant: &str, seq: u64, name: &str, data: Value) -> Envelope {
    Envelope::builder("tenant", name, 1)
        .tenant(tenant)
        .actor("user:u-1")
        .traceparent(Some(format!("00-{:032x}-00f067aa0ba902b7-01", seq + 7)))
        .aggregate("tenant", tenant, seq)
        .data(data)
        .build()
        .unwrap()
}

#[async_trait]
impl Fixture for RunRequests {
    type P = Triggers;
    const SERVICE: &'static str = "provisioning";

    async fn setup(env: &TestEnv) -> (Triggers, ProjectionConfig) {
        keel_store::migrate(env.store.pool(), sqlx::migrate!("./migrations"))
            .await
            .unwrap();
        let mut config = ProjectionConfig::new(StreamKind::Events);
        config.filter_subject = "keel.evt.*.tenant.>".into();
        (Triggers, config)
    }

    fn history() -> Vec<Envelope> {
        let mut out = Vec::new();
        for (t, tier) in [("t-acme", "low"), ("t-globex", "business")] {
            out.push(event(
                t,
                1,
                "TenantCreated",
                json!({"name": t, "slug": t, "tier": tier}),
            ));
            out.push(event(t, 2, "MemberInvited", json!({"member_id": "m-1"})));
        }
        out.push(event(
            "t-acme",
            3,
            "TenantTierChanged",
            json!({"from": "low", "to": "mid"}),
        ));
        out.push(event("t-acme", 4, "TenantSuspended", json!({"reason": "unpaid"})));
        out.push(event("t-acme", 5, "TenantReactivated", json!({})));
        out.push(event("t-globex", 3, "TenantDeletionRequested", json!({})));
        out
    }

    async fn rows(env: &TestEnv) -> Vec<String> {
        // Not `updated_at` / `requested_at`: when a row was written is not part of the contract.
        let mut rows: Vec<String> = sqlx::query_scalar(
            "SELECT row_to_json(v)::text FROM (SELECT tenant_id, slug, tier, suspended FROM tenant_info ORDER BY tenant_id) v",
        )
        .fetch_all(env.store.pool())
        .await
        .unwrap();
        rows.extend(
            sqlx::query_scalar::<_, String>(
                "SELECT row_to_json(v)::text FROM (SELECT run_id, tenant_id, kind, slug, tier, suspended, traceparent, status \
                 FROM run_requests ORDER BY run_id) v",
            )
            .fetch_all(env.store.pool())
            .await
            .unwrap(),
        );
        rows
    }
}

keel_store::projection_contract!(RunRequests);
