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
