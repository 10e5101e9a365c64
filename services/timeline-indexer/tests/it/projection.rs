//! The projection contract (keel-store's suite) run against the timeline's events projection.

use async_trait::async_trait;
use keel_bus::StreamKind;
use keel_events::Envelope;
use keel_store::contract::Fixture;
use keel_store::projection::ProjectionConfig;
use keel_store::testing::TestEnv;
use keel_timeline::projection::{Source, TimelineProjection};
use keel_timeline::store::TimelineStore;
use prometheus::{IntCounterVec, Opts};
use serde_json::json;

use crate::harness::envelope;

pub struct Rows;

#[async_trait]
impl Fixture for Rows {
    type P = TimelineProjection;
    const SERVICE: &'static str = "timeline";

    async fn setup(env: &TestEnv) -> (TimelineProjection, ProjectionConfig) {
        keel_store::migrate(env.store.pool(), sqlx::migrate!("./migrations"))
            .await
            .unwrap();
        let store = TimelineStore::open(env.store.pool().clone()).await.unwrap();
        let (_, generation) = store.live.get();
        let malformed = IntCounterVec::new(Opts::new("malformed_total", "test"), &["source"]).unwrap();
        let mut config = ProjectionConfig::new(StreamKind::Events);
        config.filter_subject = "keel.evt.>".into();
        (
            TimelineProjection::new(Source::Events, generation, store.live.clone(), malformed),
            config,
        )
    }

    fn history() -> Vec<Envelope> {
        // Policies: the tenant's tier and suspension, and a legal hold placed then released.
        let lifecycle = |tenant: &str, service: &str, aggregate: &str, seq: u64, name: &str, data| {
            Envelope::builder(service, name, 1)
                .tenant(tenant)
                .actor("user:u-1")
                .aggregate(aggregate, format!("{aggregate}-{tenant}"), seq)
                .data(data)
                .build()
                .unwrap()
        };
        let mut policies = vec![
            lifecycle(
                "t-acme",
                "tenant",
                "tenant",
                1,
                "TenantCreated",
                json!({"name": "A", "slug": "acme", "tier": "low"}),
            ),
            lifecycle(
                "t-acme",
                "tenant",
                "tenant",
                2,
                "TenantSuspended",
                json!({"reason": "unpaid"}),
            ),
            lifecycle("t-acme", "tenant", "tenant", 3, "TenantReactivated", json!({})),
            lifecycle(
                "t-acme",
                "tenant",
                "tenant",
                4,
                "TenantTierChanged",
                json!({"from": "low", "to": "high"}),
            ),
            lifecycle(
                "t-globex",
                "tenant",
                "tenant",
                1,
                "TenantCreated",
                json!({"name": "G", "slug": "globex", "tier": "mid"}),
            ),
            lifecycle(
                "t-globex",
                "tenant",
                "tenant",
                2,
                "TenantSuspended",
                json!({"reason": "abuse"}),
            ),
            lifecycle("t-acme", "evidence", "hold", 1, "LegalHoldPlaced", json!({})),
            lifecycle("t-acme", "evidence", "hold", 2, "LegalHoldReleased", json!({})),
            lifecycle("t-globex", "evidence", "hold", 1, "LegalHoldPlaced", json!({})),
        ];
        let steps: Vec<Envelope> = (1..=40)
            .map(|seq| {
                let tenant = if seq % 2 == 0 { "t-acme" } else { "t-globex" };
                envelope(
                    tenant,
                    "provisioning",
                    "StepSucceeded",
                    seq,
                    json!({"step": seq}),
                    None,
                )
            })
            .collect();
        policies.extend(steps);
        policies
    }

    async fn rows(env: &TestEnv) -> Vec<String> {
        let store = TimelineStore::open(env.store.pool().clone()).await.unwrap();
        let (table, _) = store.live.get();
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT row_to_json(v)::text FROM (SELECT event_id, ts, tenant_id, kind, actor, resource_type, \
             resource_id, trace_id, result, digest, details, source FROM {table} ORDER BY tenant_id, ts, event_id) v"
        ))
        .fetch_all(env.store.pool())
        .await
        .unwrap();
        let mut rows = rows;
        rows.extend(
            sqlx::query_scalar::<_, String>(
                "SELECT row_to_json(v)::text FROM (SELECT tenant_id, tier, suspended, legal_hold \
                 FROM tenant_policies ORDER BY tenant_id) v",
            )
            .fetch_all(env.store.pool())
            .await
            .unwrap(),
        );
        rows
    }
}

keel_store::projection_contract!(Rows);
