//! A tenant's token reads and writes only its own usage, on every RPC.

use chrono::{Duration, Utc};
use keel_proto::v1 as pb;

use crate::harness::{World, event, ts};

#[tokio::test]
async fn a_tenants_token_reads_and_writes_only_its_own_usage() {
    let w = World::start(&[]).await;
    let (a, a_token) = w.tenant(&["usage:write", "billing:read"]).await;
    let (b, _) = w.tenant(&[]).await;
    let at = Utc::now() - Duration::minutes(5);
    let mut mine = w.meters_as(&a_token).await;
    let r = mine
        .record_usage(pb::RecordUsageRequest {
            events: vec![event(&a.id, "a-1", "api_requests", "3", at)],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.accepted, 1);
    // Writing another tenant's usage, alone or beside its own: refused, nothing stored.
    for events in [
        vec![event(&b.id, "b-1", "api_requests", "3", at)],
        vec![
            event(&a.id, "a-2", "api_requests", "3", at),
            event(&b.id, "b-2", "api_requests", "3", at),
        ],
    ] {
        let err = mine
            .record_usage(pb::RecordUsageRequest { events })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
        assert!(!err.message().contains(&b.id), "the refusal names no tenant");
    }
    let read = |tenant: &str| pb::GetUsageRequest {
        tenant_id: tenant.into(),
        meter: "api_requests".into(),
        from: Some(ts(at - Duration::hours(1))),
        to: Some(ts(at + Duration::hours(1))),
        granularity: pb::Granularity::Day as i32,
        as_recorded_at: None,
    };
    let own = mine.get_usage(read(&a.id)).await.unwrap().into_inner();
    assert_eq!(own.buckets.len(), 1);
    assert_eq!(own.buckets[0].value, "3");
    let err = mine.get_usage(read(&b.id)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // Meters are the platform's: readable; defining one is an operator's call.
    assert!(mine.list_meters(pb::ListMetersRequest {}).await.is_ok());
    let err = mine
        .create_meter(pb::CreateMeterRequest {
            name: "jobs".into(),
            aggregation: pb::Aggregation::Sum as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    // The operator sees b's usage as empty, a's as 3 (nothing of a's leaked into b).
    assert!(w.usage(&b.id, "api_requests", at, None).await.is_empty());
    w.cleanup().await;
}
