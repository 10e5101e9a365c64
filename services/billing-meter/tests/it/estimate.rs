//! Cost estimates at the tier's prices.

use chrono::{Datelike, Duration, TimeZone, Utc};
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{DEADLINE, World, event};

#[tokio::test]
async fn a_usage_tier_pays_base_fee_plus_its_usage_and_a_tenant_reads_only_its_own() {
    let w = World::start(&[]).await;
    let (t, token) = w.tenant(&["billing:read"]).await;
    let now = Utc::now();
    let start = Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0).unwrap();
    let at = (now - Duration::minutes(30)).max(start);
    w.meters()
        .await
        .record_usage(pb::RecordUsageRequest {
            events: vec![
                event(&t.id, "d", "data_volume_bytes", "2500000000", at),
                event(&t.id, "c", "cpu_core_seconds", "7200", at),
                event(&t.id, "r", "api_requests", "1000000", at),
            ],
        })
        .await
        .unwrap();
    let mut mine = w.meters_as(&token).await;
    let ask = |tenant: &str| pb::EstimateCostRequest {
        tenant_id: tenant.into(),
        month: String::new(),
    };
    // Billing learns the tenant (and its tier) from the tenant service's events.
    let estimate = eventually("the tenant known to billing", DEADLINE, || {
        let mut mine = mine.clone();
        let id = t.id.clone();
        async move { mine.estimate_cost(ask(&id)).await.ok().map(|r| r.into_inner()) }
    })
    .await;
    assert_eq!(estimate.tier, "low");
    assert!(!estimate.committed);
    assert_eq!(estimate.base_fee, "29");
    let line = |m: &str| estimate.lines.iter().find(|l| l.meter == m).unwrap().clone();
    assert_eq!(
        (
            line("data_volume_bytes").quantity.as_str(),
            line("data_volume_bytes").unit.as_str()
        ),
        ("2.5", "GB")
    );
    assert_eq!(line("data_volume_bytes").amount, "0.23");
    assert_eq!(line("cpu_core_seconds").quantity, "2");
    assert_eq!(line("cpu_core_seconds").amount, "0.09");
    assert_eq!(line("api_requests").amount, "2.00");
    assert_eq!(estimate.total, "31.32");
    // Bad months name the field; another tenant's estimate is refused.
    let err = mine
        .estimate_cost(pb::EstimateCostRequest {
            tenant_id: t.id.clone(),
            month: "2026-13".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("month"), "{}", err.message());
    let (other, _) = w.tenant(&[]).await;
    let err = mine.estimate_cost(ask(&other.id)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    w.cleanup().await;
}
