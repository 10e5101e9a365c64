use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use keel_store::testing::eventually;
use serde_json::json;

use crate::harness::{Mesh, envelope, slug};

#[tokio::test]
async fn retention_follows_the_tier_and_a_legal_hold_keeps_everything() {
    let mut mesh = Mesh::start().await;
    // Both tenants are tier mid: 30 days of events, 365 of audit records.
    let plain = mesh.create_tenant(&slug()).await;
    let held = mesh.create_tenant(&slug()).await;
    let old = Utc::now() - chrono::Duration::days(200);
    let recent = Utc::now() - chrono::Duration::days(10);
    let at = |tenant: &str, seq: u64, t: chrono::DateTime<Utc>| {
        let mut e = envelope(
            tenant,
            "provisioning",
            "StepSucceeded",
            seq,
            json!({"age": seq}),
            None,
        );
        e.time = t;
        e
    };
    let pool_for_audit = mesh.pool.clone();
    let events = [
        at(&plain.id, 1, old),
        at(&plain.id, 2, recent),
        at(&held.id, 1, old),
        at(&held.id, 2, recent),
    ];
    let hold = envelope(
        &held.id,
        "evidence",
        "LegalHoldPlaced",
        1,
        json!({"case": "c-1"}),
        None,
    );
    mesh.publish(&hold).await;
    for e in &events {
        mesh.publish(e).await;
    }
    // An audit record as old as the old events: audit outlives the tier's retention.
    let mut audit = keel_bus::audit::AuditRecord::new(
        "user:u-1",
        &plain.id,
        "tenant",
        "tenant-suspend",
        "tenant/x",
        keel_bus::audit::AuditResult::Success,
        "127.0.0.1",
    );
    audit.time = old;
    mesh.bus.publish_audit(&audit).await.unwrap();
    let audit_rows = |tenant: String| {
        let pool = pool_for_audit.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM timeline_events_g1 WHERE tenant_id = $1 AND source = 'audit' AND ts < now() - interval '90 days'",
            )
            .bind(tenant)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let pool = mesh.pool.clone();
    let count = |tenant: String, older: bool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM timeline_events_g1 WHERE tenant_id = $1 AND kind = 'provisioning.StepSucceeded' AND (ts < now() - interval '90 days') = $2",
            )
            .bind(tenant)
            .bind(older)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // Everything is in before retention runs.
    eventually("all projected", Duration::from_secs(20), || async {
        (count(plain.id.clone(), true).await == 1
            && count(held.id.clone(), true).await == 1
            && count(plain.id.clone(), false).await == 1
            && audit_rows(plain.id.clone()).await == 1)
            .then_some(())
    })
    .await;
    let hold_known: bool = sqlx::query_scalar("SELECT legal_hold FROM tenant_policies WHERE tenant_id = $1")
        .bind(&held.id)
        .fetch_one(&mesh.pool)
        .await
        .unwrap();
    assert!(hold_known);

    // Now let retention run every second.
    mesh.restart_timeline_with(HashMap::from([(
        "KEEL_TIMELINE_RETENTION_INTERVAL_SECS".to_owned(),
        "1".to_owned(),
    )]))
    .await;
    eventually(
        "the plain tenant's old row is gone",
        Duration::from_secs(30),
        || async { (count(plain.id.clone(), true).await == 0).then_some(()) },
    )
    .await;
    assert_eq!(count(plain.id.clone(), false).await, 1, "recent rows stay");
    assert_eq!(
        audit_rows(plain.id.clone()).await,
        1,
        "audit records stay 365 days whatever the tier"
    );
    assert_eq!(
        count(held.id.clone(), true).await,
        1,
        "a tenant under legal hold keeps everything"
    );
    assert_eq!(count(held.id.clone(), false).await, 1);
    mesh.cleanup().await;
}
