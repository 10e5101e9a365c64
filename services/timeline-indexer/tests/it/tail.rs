use std::collections::HashSet;
use std::time::Duration;

use keel_proto::v1 as pb;
use serde_json::json;

use crate::harness::{Mesh, envelope, slug};

async fn next(stream: &mut tonic::Streaming<pb::TailTimelineResponse>) -> pb::TailTimelineResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("tail stalled")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn tail_across_a_reconnect_misses_nothing_and_repeats_nothing() {
    let mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    let reader = mesh.reader(&t.id).await;
    let mut tl = mesh.timeline(&reader).await;
    let request = |cursor: &str| pb::TailTimelineRequest {
        tenant_id: t.id.clone(),
        query: "kind:provisioning.*".into(),
        cursor: cursor.into(),
        ..Default::default()
    };
    let mut stream = tl.tail_timeline(request("")).await.unwrap().into_inner();
    let all: Vec<_> = (1..=100)
        .map(|s| envelope(&t.id, "provisioning", "StepSucceeded", s, json!({"s": s}), None))
        .collect();
    for e in &all[..50] {
        mesh.publish(e).await;
    }
    let mut got = Vec::new();
    let mut cursor = String::new();
    for _ in 0..20 {
        let m = next(&mut stream).await;
        got.push(m.event.unwrap().event_id);
        cursor = m.cursor;
    }
    drop(stream); // the client disconnects
    for e in &all[50..] {
        mesh.publish(e).await;
    }
    let mut stream = tl.tail_timeline(request(&cursor)).await.unwrap().into_inner();
    while got.len() < 100 {
        got.push(next(&mut stream).await.event.unwrap().event_id);
    }
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 100, "duplicates across the reconnect");
    assert_eq!(
        got,
        all.iter().map(|e| e.id.to_string()).collect::<Vec<_>>(),
        "gap or reorder across the reconnect"
    );
    // Nothing more is pending.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err()
    );
    let bad = tl.tail_timeline(request("garbage")).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    mesh.cleanup().await;
}

/// The end of a tail: the status it ended with (`None` if it ended cleanly).
async fn ended(stream: &mut tonic::Streaming<pb::TailTimelineResponse>) -> Option<tonic::Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Err(_) => panic!("the tail did not end"),
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) => return None,
            Ok(Err(status)) => return Some(status),
        }
    }
}

#[tokio::test]
async fn a_tail_ends_when_its_token_expires() {
    let mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    let short = mesh
        .e2e
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            tenant_id: t.id.clone(),
            subject: "reader".into(),
            scopes: vec!["timeline:read".into()],
            ttl_seconds: 2,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let mut stream = mesh
        .timeline(&short)
        .await
        .tail_timeline(pb::TailTimelineRequest {
            tenant_id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = ended(&mut stream).await.expect("an error status");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_tail_ends_when_its_tenant_is_suspended() {
    let mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    let reader = mesh.reader(&t.id).await;
    let mut stream = mesh
        .timeline(&reader)
        .await
        .tail_timeline(pb::TailTimelineRequest {
            tenant_id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut api = mesh.e2e.tenants();
    let lc = || pb::TenantLifecycleRequest {
        tenant: Some(pb::TenantRef {
            r#ref: Some(pb::tenant_ref::Ref::Id(t.id.clone())),
        }),
    };
    api.mark_provisioning(lc()).await.unwrap();
    api.mark_provisioned(lc()).await.unwrap();
    api.suspend_tenant(pb::SuspendTenantRequest {
        tenant: lc().tenant,
        reason: "unpaid".into(),
    })
    .await
    .unwrap();
    let status = ended(&mut stream).await.expect("an error status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A new tail of the suspended tenant is refused at once.
    let again = mesh
        .timeline(&reader)
        .await
        .tail_timeline(pb::TailTimelineRequest {
            tenant_id: t.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::PermissionDenied);
    mesh.cleanup().await;
}

#[tokio::test]
async fn one_tenant_holds_at_most_n_tails_and_others_are_unaffected() {
    let mut mesh = Mesh::start().await;
    mesh.restart_timeline_with(std::collections::HashMap::from([(
        "KEEL_TIMELINE_MAX_TAILS_PER_TENANT".to_owned(),
        "2".to_owned(),
    )]))
    .await;
    let a = mesh.create_tenant(&slug()).await;
    let b = mesh.create_tenant(&slug()).await;
    let (reader_a, reader_b) = (mesh.reader(&a.id).await, mesh.reader(&b.id).await);
    let tail = |tenant: &str| pb::TailTimelineRequest {
        tenant_id: tenant.to_owned(),
        ..Default::default()
    };
    let mut tl_a = mesh.timeline(&reader_a).await;
    let first = tl_a.tail_timeline(tail(&a.id)).await.unwrap().into_inner();
    let _second = tl_a.tail_timeline(tail(&a.id)).await.unwrap().into_inner();
    let third = tl_a.tail_timeline(tail(&a.id)).await.unwrap_err();
    assert_eq!(third.code(), tonic::Code::ResourceExhausted, "{third:?}");
    // Another tenant's tail and this tenant's queries are unaffected.
    let mut tl_b = mesh.timeline(&reader_b).await;
    let _b_tail = tl_b.tail_timeline(tail(&b.id)).await.unwrap();
    tl_a.query_timeline(pb::QueryTimelineRequest {
        tenant_id: a.id.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    // A closed tail gives its slot back.
    drop(first);
    keel_store::testing::eventually("a slot free again", Duration::from_secs(20), || {
        let mut tl_a = tl_a.clone();
        let req = tail(&a.id);
        async move { tl_a.tail_timeline(req).await.ok() }
    })
    .await;
    mesh.cleanup().await;
}

/// New rows reach an open tail from the projection (PostgreSQL NOTIFY at commit), not by
/// polling: with the fallback read an hour away, a tail still gets every row as it commits.
#[tokio::test]
async fn an_idle_tail_is_woken_by_the_projection_not_by_polling() {
    let mesh = Mesh::start_with(&[("KEEL_TIMELINE_TAIL_FALLBACK_SECS", "3600")]).await;
    let t = mesh.create_tenant(&slug()).await;
    let reader = mesh.reader(&t.id).await;
    let mut tl = mesh.timeline(&reader).await;
    let mut stream = tl
        .tail_timeline(pb::TailTimelineRequest {
            tenant_id: t.id.clone(),
            query: "kind:provisioning.*".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for round in 1..=3 {
        let e = envelope(
            &t.id,
            "provisioning",
            "StepSucceeded",
            round,
            json!({"round": round}),
            None,
        );
        mesh.publish(&e).await;
        let got = next(&mut stream).await.event.unwrap();
        assert_eq!(got.event_id, e.id.to_string(), "round {round}");
    }
    mesh.cleanup().await;
}
