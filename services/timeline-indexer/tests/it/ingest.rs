use std::collections::HashMap;
use std::time::Duration;

use keel_bus::{Outgoing, StreamKind, headers};
use keel_proto::v1 as pb;
use keel_store::testing::eventually;
use serde_json::json;

use crate::harness::{Mesh, envelope, slug};

#[tokio::test]
async fn sigkill_mid_batch_loses_nothing_and_doubles_nothing() {
    let mut mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    mesh.e2e.proc_mut(keel_e2e::mesh::Part::Timeline).kill().await;
    // A backlog the restarted indexer takes in many batches.
    let n = 20_000u64;
    let events: Vec<_> = (1..=n)
        .map(|s| envelope(&t.id, "provisioning", "StepSucceeded", s, json!({"i": s}), None))
        .collect();
    let mut acks = Vec::new();
    for e in &events {
        let subject = keel_events::subjects::event(
            &mesh.bus.subject_prefix(),
            &e.tenantid,
            "provisioning",
            "StepSucceeded",
        );
        acks.push(mesh.bus.publish_envelope(subject, e).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    mesh.restart_timeline().await;
    let count = |mesh: &Mesh| {
        let pool = mesh.pool.clone();
        let id = t.id.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM timeline_events_g1 WHERE tenant_id = $1 AND kind = 'provisioning.StepSucceeded'")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap_or(0)
        }
    };
    let partial = eventually("some batches in", Duration::from_secs(60), || async {
        let c = count(&mesh).await;
        (c > 0).then_some(c)
    })
    .await;
    mesh.e2e.proc_mut(keel_e2e::mesh::Part::Timeline).kill().await; // SIGKILL, mid-stream
    assert!(
        partial < n as i64,
        "the whole backlog went in before the kill; nothing was tested"
    );
    mesh.restart_timeline().await;
    eventually("backlog complete", Duration::from_secs(120), || async {
        (count(&mesh).await >= n as i64).then_some(())
    })
    .await;
    // Exactly once, with the digests of what was published.
    let rows: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("SELECT event_id, digest FROM timeline_events_g1 WHERE tenant_id = $1 AND kind = 'provisioning.StepSucceeded'")
            .bind(&t.id)
            .fetch_all(&mesh.pool)
            .await
            .unwrap();
    assert_eq!(rows.len() as u64, n, "rows doubled");
    let published: HashMap<uuid::Uuid, String> = events.iter().map(|e| (e.id, e.digest())).collect();
    for (id, digest) in &rows {
        assert_eq!(
            published.get(id),
            Some(digest),
            "row {id} differs from the stream"
        );
    }
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_malformed_envelope_goes_to_the_dlq_and_the_next_good_event_is_projected() {
    let mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    for (i, body) in [&b"not json at all"[..], br#"{"specversion":"0.3","id":"x"}"#]
        .iter()
        .enumerate()
    {
        mesh.bus
            .publish_acked(Outgoing {
                subject: format!(
                    "{}keel.evt.{}.provisioning.StepSucceeded",
                    mesh.bus.subject_prefix(),
                    t.id
                ),
                payload: bytes::Bytes::copy_from_slice(body),
                msg_id: format!("bad-{i}"),
                traceparent: None,
                headers: vec![],
            })
            .await
            .unwrap();
    }
    let good = envelope(
        &t.id,
        "provisioning",
        "StepSucceeded",
        1,
        json!({"after": "poison"}),
        None,
    );
    mesh.publish(&good).await;
    let reader = mesh.reader(&t.id).await;
    let tl = mesh.timeline(&reader).await;
    eventually("the good event", Duration::from_secs(20), || {
        let mut tl = tl.clone();
        let (tenant, id) = (t.id.clone(), good.id.to_string());
        async move {
            tl.get_event(pb::GetEventRequest {
                tenant_id: tenant,
                event_id: id,
            })
            .await
            .ok()
        }
    })
    .await;
    eventually("two DLQ entries", Duration::from_secs(20), || async {
        (mesh.stream_len(StreamKind::Dlq).await == 2).then_some(())
    })
    .await;
    let dlq = mesh
        .bus
        .jetstream()
        .get_stream(mesh.bus.stream_name(StreamKind::Dlq))
        .await
        .unwrap();
    for seq in 1..=2 {
        let m = dlq.get_raw_message(seq).await.unwrap();
        let reason = m.headers.get(headers::DLQ_REASON).unwrap().as_str().to_owned();
        assert!(reason.starts_with("malformed envelope"), "{reason}");
    }
    let last = dlq.get_raw_message(2).await.unwrap();
    assert!(
        last.headers
            .get(headers::DLQ_REASON)
            .unwrap()
            .as_str()
            .contains("0.3"),
        "the unsupported version is named"
    );
    mesh.cleanup().await;
}

#[tokio::test]
async fn rebuild_equals_the_live_projection_row_for_row() {
    let mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    for s in 1..=300 {
        mesh.publish(&envelope(
            &t.id,
            "provisioning",
            "StepSucceeded",
            s,
            json!({"s": s}),
            None,
        ))
        .await;
    }
    type Row = (uuid::Uuid, String, String, String, chrono::DateTime<chrono::Utc>);
    let snapshot = |table: &'static str| {
        let pool = mesh.pool.clone();
        async move {
            sqlx::query_as::<_, Row>(&format!(
                "SELECT event_id, tenant_id, digest, kind, ts FROM {table} ORDER BY event_id"
            ))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let before = eventually("live projection caught up", Duration::from_secs(30), || async {
        let rows = snapshot("timeline_events_g1").await;
        (rows
            .iter()
            .filter(|r| r.3 == "provisioning.StepSucceeded")
            .count()
            == 300)
            .then_some(rows)
    })
    .await;
    let tl = mesh.timeline(&mesh.operator).await;
    let r = crate::harness::rebuild(&tl).await;
    assert_eq!(
        r.state(),
        pb::RebuildState::Swapped,
        "the rebuild differs from the live table: {r:?}"
    );
    assert_eq!(r.rows as usize, before.len());
    let after = snapshot("timeline_events_g2").await;
    assert_eq!(after, before);
    // The rebuilt table is live: queries and new events go to it.
    let next = envelope(
        &t.id,
        "provisioning",
        "StepSucceeded",
        301,
        json!({"s": 301}),
        None,
    );
    mesh.publish(&next).await;
    eventually("new event after the swap", Duration::from_secs(20), || {
        let mut tl = tl.clone();
        let (tenant, id) = (t.id.clone(), next.id.to_string());
        async move {
            tl.get_event(pb::GetEventRequest {
                tenant_id: tenant,
                event_id: id,
            })
            .await
            .ok()
        }
    })
    .await;
    // A tenant token may not rebuild.
    let reader = mesh.reader(&t.id).await;
    let e = mesh
        .timeline(&reader)
        .await
        .rebuild_projection(pb::RebuildProjectionRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    mesh.cleanup().await;
}
