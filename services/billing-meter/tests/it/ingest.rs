//! Ingest: exactly once over both paths, hostile input refused whole.

use chrono::{Duration, Utc};
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{DEADLINE, World, event, total};

#[tokio::test]
async fn the_same_event_three_times_over_grpc_and_three_over_nats_is_counted_once() {
    let w = World::start(&[]).await;
    let (t, _) = w.tenant(&[]).await;
    let at = Utc::now() - Duration::minutes(10);
    let e = event(&t.id, "evt-1", "api_requests", "7", at);
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let r = w
            .meters()
            .await
            .record_usage(pb::RecordUsageRequest {
                events: vec![e.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        statuses.push(r.results[0].status.clone());
    }
    assert_eq!(statuses, ["accepted", "duplicate", "duplicate"]);
    for copy in 0..3 {
        w.publish(&e, &format!("copy-{copy}")).await;
    }
    // A second event behind the copies: once it is visible, the copies were handled.
    let marker = event(&t.id, "evt-2", "api_requests", "5", at);
    w.publish(&marker, "marker").await;
    let buckets = eventually("the marker counted", DEADLINE, || async {
        let b = w.usage(&t.id, "api_requests", at, None).await;
        (total(&b).1 == 2).then_some(b)
    })
    .await;
    assert_eq!(total(&buckets), ("12".to_owned(), 2), "7 once and 5 once");
    // Also in the same call: a repeated key is a duplicate of the first.
    let r = w
        .meters()
        .await
        .record_usage(pb::RecordUsageRequest {
            events: vec![
                event(&t.id, "evt-3", "api_requests", "1", at),
                event(&t.id, "evt-3", "api_requests", "1", at),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.accepted, r.duplicates), (1, 1));
    w.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_index_and_field_and_nothing_is_stored() {
    let w = World::start(&[]).await;
    let (t, _) = w.tenant(&[]).await;
    let at = Utc::now() - Duration::minutes(1);
    let good = event(&t.id, "good", "api_requests", "1", at);
    let mut huge = event(&t.id, "big", "api_requests", "1", at);
    for i in 0..16 {
        huge.properties.insert(format!("p{i}"), "x".repeat(256));
    }
    let cases: Vec<(pb::UsageEvent, &str)> = vec![
        (
            event(&t.id, "neg", "cpu_core_seconds", "-1", at),
            "events[1].value",
        ),
        (
            event(&t.id, "nan", "cpu_core_seconds", "NaN", at),
            "events[1].value",
        ),
        (event(&t.id, "unk", "no_such_meter", "1", at), "events[1].meter"),
        (
            event(
                &t.id,
                "ahead",
                "api_requests",
                "1",
                Utc::now() + Duration::hours(1),
            ),
            "events[1].time",
        ),
        (huge, "events[1].properties"),
    ];
    for (bad, field) in cases {
        let err = w
            .meters()
            .await
            .record_usage(pb::RecordUsageRequest {
                events: vec![good.clone(), bad],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    let too_many: Vec<pb::UsageEvent> = (0..1001)
        .map(|i| event(&t.id, &format!("e{i}"), "api_requests", "1", at))
        .collect();
    let err = w
        .meters()
        .await
        .record_usage(pb::RecordUsageRequest { events: too_many })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("events"), "{}", err.message());
    // Nothing of any refused call was stored, not even the good event beside the bad one.
    assert!(w.usage(&t.id, "api_requests", at, None).await.is_empty());
    let stored: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {}.usage_events",
        w.e2e.schema(keel_e2e::mesh::Part::Billing)
    ))
    .fetch_one(&w.e2e.pool)
    .await
    .unwrap();
    assert_eq!(stored, 0);
    w.cleanup().await;
}
