//! Staleness and overage: raised once as events, told on `keel.alerts.<tenant>.billing`,
//! staleness cleared by the next usage event.

use std::time::Duration as StdDuration;

use chrono::{Duration, Utc};
use futures::StreamExt;
use keel_proto::v1 as pb;

use crate::harness::{World, event};

/// The next alert of `kind` about `tenant` (others are skipped), within 90 s.
async fn next_alert(alerts: &mut async_nats::Subscriber, tenant: &str, kind: &str) -> serde_json::Value {
    let deadline = StdDuration::from_secs(90);
    tokio::time::timeout(deadline, async {
        while let Some(m) = alerts.next().await {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            if v["kind"] == kind && v["tenant_id"] == tenant {
                assert!(
                    m.subject
                        .as_str()
                        .ends_with(&format!("keel.alerts.{tenant}.billing"))
                );
                return v;
            }
        }
        panic!("alert subscription ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no {kind} alert within {deadline:?}"))
}

#[tokio::test]
async fn staleness_fires_for_a_silent_tenant_clears_when_it_sends_and_overage_is_alerted() {
    let w = World::start_provisioned(&[
        ("KEEL_BILLING_STALE_AFTER_SECS", "3"),
        ("KEEL_BILLING_WATCH_EVERY_MS", "200"),
    ])
    .await;
    let mut alerts = w
        .e2e
        .bus
        .client()
        .subscribe(format!("{}keel.alerts.*.billing", w.e2e.bus.subject_prefix()))
        .await
        .unwrap();
    let slug = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let t = w.e2e.create_tenant(&slug, pb::Tier::High).await;
    let tenant = t.id.clone();
    // Active (provisioned) and silent for longer than 3 s: stale, once.
    let stale = next_alert(&mut alerts, &tenant, "MeterStale").await;
    assert_eq!(stale["data"]["threshold_secs"], 3);
    assert_eq!(w.records(&t.id, "MeterStale").await.len(), 1);
    let (code, metrics) = w
        .e2e
        .proc(keel_e2e::mesh::Part::Billing)
        .http_get("/metrics")
        .await
        .unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains("keel_meter_last_event_age_seconds"),
        "the gauge is exported"
    );

    // Usage resumes, over the high tier's CPU commitment (20,000 core·hours).
    w.meters()
        .await
        .record_usage(pb::RecordUsageRequest {
            events: vec![event(
                &t.id,
                "cpu",
                "cpu_core_seconds",
                "72003600",
                Utc::now() - Duration::seconds(5),
            )],
        })
        .await
        .unwrap();
    next_alert(&mut alerts, &tenant, "MeterStaleCleared").await;
    let over = next_alert(&mut alerts, &tenant, "UsageOverCommitment").await;
    assert_eq!(over["data"]["meter"], "cpu_core_seconds");
    assert_eq!(over["data"]["used"], "20001");
    assert_eq!(over["data"]["committed"], "20000");
    // One event each (the watcher looks every 200 ms; the aggregates raise each once).
    assert_eq!(w.records(&t.id, "MeterStale").await.len(), 1);
    assert_eq!(w.records(&t.id, "UsageOverCommitment").await.len(), 1);
    w.cleanup().await;
}
