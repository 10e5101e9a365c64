use std::time::Duration;

use keel_proto::v1 as pb;
use keel_store::testing::eventually;
use serde_json::json;

use crate::harness::{Mesh, envelope, slug};

fn q(tenant: &str) -> pb::QueryTimelineRequest {
    pb::QueryTimelineRequest {
        tenant_id: tenant.into(),
        page: Some(pb::PageRequest {
            page_size: 1000,
            page_token: String::new(),
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn tenant_events_reach_the_timeline_and_tenants_never_see_each_other() {
    let mesh = Mesh::start().await;
    let a = mesh.create_tenant(&slug()).await;
    let b = mesh.create_tenant(&slug()).await;
    let (ra, rb) = (mesh.reader(&a.id).await, mesh.reader(&b.id).await);
    let mut ta = mesh.timeline(&ra).await;

    // The tenant service's own events and audit records arrive in the tenant's timeline.
    let rows = eventually("A's creation in its timeline", Duration::from_secs(20), || {
        let mut ta = ta.clone();
        let id = a.id.clone();
        async move {
            let ev = ta.query_timeline(q(&id)).await.ok()?.into_inner().events;
            let kinds: Vec<String> = ev.iter().map(|e| e.kind.clone()).collect();
            (kinds.contains(&"tenant.TenantCreated".to_owned())
                && kinds.contains(&"audit.tenant.create".to_owned()))
            .then_some(ev)
        }
    })
    .await;
    assert!(rows.iter().all(|e| e.tenant_id == a.id));

    // B's events, published while A tails its own timeline.
    let trace_b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    let mut tail = ta
        .tail_timeline(pb::TailTimelineRequest {
            tenant_id: a.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let b_events: Vec<_> = (1..=5)
        .map(|s| {
            envelope(
                &b.id,
                "provisioning",
                "StepSucceeded",
                s,
                json!({"step": s}),
                Some(trace_b),
            )
        })
        .collect();
    for e in &b_events {
        mesh.publish(e).await;
    }
    let a_marker = envelope(
        &a.id,
        "provisioning",
        "StepSucceeded",
        1,
        json!({"marker": true}),
        None,
    );
    mesh.publish(&a_marker).await;
    // The tail delivers A's marker and nothing of B before it.
    let got = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let m = tail.message().await.unwrap().unwrap();
            let e = m.event.unwrap();
            assert_eq!(e.tenant_id, a.id, "the tail leaked another tenant's event");
            if e.event_id == a_marker.id.to_string() {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "A's marker never arrived on the tail");
    drop(tail);

    let tb = mesh.timeline(&rb).await;
    eventually("B's events projected", Duration::from_secs(20), || {
        let mut tb = tb.clone();
        let id = b.id.clone();
        async move {
            let r = tb
                .trace_events(pb::TraceEventsRequest {
                    tenant_id: id,
                    trace_id: trace_b.into(),
                    page: None,
                })
                .await
                .ok()?;
            (r.into_inner().events.len() == 5).then_some(())
        }
    })
    .await;

    // A's token, every RPC: B's tenant id is refused, B's data is invisible under A's.
    let e = ta.query_timeline(q(&b.id)).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            tonic::Code::PermissionDenied,
            "missing scope timeline:read for this tenant"
        )
    );
    let e = ta
        .get_event(pb::GetEventRequest {
            tenant_id: b.id.clone(),
            event_id: b_events[0].id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = ta
        .get_event(pb::GetEventRequest {
            tenant_id: a.id.clone(),
            event_id: b_events[0].id.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let tr = ta
        .trace_events(pb::TraceEventsRequest {
            tenant_id: a.id.clone(),
            trace_id: trace_b.into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tr.events.is_empty());
    let e = ta
        .trace_events(pb::TraceEventsRequest {
            tenant_id: b.id.clone(),
            trace_id: trace_b.into(),
            page: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = ta
        .tail_timeline(pb::TailTimelineRequest {
            tenant_id: b.id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let all_a = ta.query_timeline(q(&a.id)).await.unwrap().into_inner().events;
    assert!(all_a.iter().all(|e| e.tenant_id == a.id));

    // Row-level security alone: the reader role with A set sees none of B's rows, even when asked.
    let mut tx = mesh.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE keel_timeline_reader")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("SELECT set_config('keel.tenant_id', $1, true)")
        .bind(&a.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let leaked: i64 = sqlx::query_scalar("SELECT count(*) FROM timeline_events_g1 WHERE tenant_id = $1")
        .bind(&b.id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(leaked, 0);
    let others: i64 = sqlx::query_scalar("SELECT count(*) FROM timeline_events_g1 WHERE tenant_id <> $1")
        .bind(&a.id)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(others, 0);
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM timeline_events_g1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert!(own > 0);
    tx.rollback().await.unwrap();
    // And with no tenant set at all, nothing.
    let mut tx = mesh.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE keel_timeline_reader")
        .execute(&mut *tx)
        .await
        .unwrap();
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM timeline_events_g1")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(none, 0);
    tx.rollback().await.unwrap();
    mesh.cleanup().await;
}
