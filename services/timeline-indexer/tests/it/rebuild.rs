//! Rebuilds as jobs: nothing older than the streams is lost, a differing rebuild is reported and
//! not swapped, a job outlives its caller and its process, every replica follows the swap, and a
//! tail cursor of the replaced generation resumes in the new one.

use std::collections::HashSet;
use std::time::Duration;

use keel_bus::StreamKind;
use keel_e2e::mesh::Part;
use keel_proto::v1 as pb;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use keel_store::testing::eventually;
use serde_json::json;
use sqlx::PgPool;

use crate::harness::{Mesh, Timeline, envelope, finished, rebuild, slug};

/// Short leases and a fast look at the live generation, so that tests do not wait long.
const ENV: &[(&str, &str)] = &[
    ("KEEL_TIMELINE_REBUILD_LEASE_SECS", "2"),
    ("KEEL_TIMELINE_GENERATION_POLL_MS", "200"),
];
const WAIT: Duration = Duration::from_secs(60);

type Row = (uuid::Uuid, String, String, String, chrono::DateTime<chrono::Utc>);

async fn snapshot(pool: &PgPool, table: &str) -> Vec<Row> {
    sqlx::query_as::<_, Row>(&format!(
        "SELECT event_id, tenant_id, digest, kind, ts FROM {table} ORDER BY event_id"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn count(pool: &PgPool, table: &str, tenant: &str, kind: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE tenant_id = $1 AND kind = $2"
    ))
    .bind(tenant)
    .bind(kind)
    .fetch_one(pool)
    .await
    .unwrap_or(0)
}

async fn has(pool: &PgPool, table: &str, event: &uuid::Uuid) -> bool {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE event_id = $1)"
    ))
    .bind(event)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn live(pool: &PgPool) -> (String, i32) {
    sqlx::query_as("SELECT live_table, generation FROM timeline_state WHERE id = 1")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn steps_in(mesh: &Mesh, table: &str, tenant: &str, n: i64) {
    eventually("the live projection caught up", WAIT, || async {
        (count(&mesh.pool, table, tenant, "provisioning.StepSucceeded").await >= n).then_some(())
    })
    .await;
}

fn steps(tenant: &str, n: u64) -> Vec<keel_events::Envelope> {
    (1..=n)
        .map(|s| envelope(tenant, "provisioning", "StepSucceeded", s, json!({"s": s}), None))
        .collect()
}

async fn purge(mesh: &Mesh, kind: StreamKind, keep: Option<u64>) {
    let stream = mesh
        .bus
        .jetstream()
        .get_stream(mesh.bus.stream_name(kind))
        .await
        .unwrap();
    match keep {
        Some(n) => stream.purge().keep(n).await.unwrap(),
        None => stream.purge().await.unwrap(),
    };
}

#[tokio::test]
async fn rows_older_than_the_streams_survive_a_rebuild_held_ones_included() {
    let mesh = Mesh::start_with(ENV).await;
    let t = mesh.create_tenant(&slug()).await;
    // A legal hold recorded 400 days ago: older than any stream keeps anything.
    let mut hold = envelope(&t.id, "evidence", "LegalHoldPlaced", 1000, json!({}), None);
    hold.time = chrono::Utc::now() - chrono::Duration::days(400);
    mesh.publish(&hold).await;
    let events = steps(&t.id, 30);
    for e in &events {
        mesh.publish(e).await;
    }
    steps_in(&mesh, "timeline_events_g1", &t.id, 30).await;
    eventually("the hold and the tenant's audit record are in", WAIT, || async {
        let held = has(&mesh.pool, "timeline_events_g1", &hold.id).await;
        let audited: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM timeline_events_g1 WHERE tenant_id = $1 AND source = 'audit')",
        )
        .bind(&t.id)
        .fetch_one(&mesh.pool)
        .await
        .unwrap();
        (held && audited).then_some(())
    })
    .await;
    // The streams forget: every domain event but the last 10, every audit record.
    purge(&mesh, StreamKind::Events, Some(10)).await;
    purge(&mesh, StreamKind::Audit, None).await;
    assert_eq!(mesh.stream_len(StreamKind::Events).await, 10);

    let tl = mesh.timeline(&mesh.operator).await;
    let r = rebuild(&tl).await;
    assert_eq!(r.state(), pb::RebuildState::Swapped, "{r:?}");
    assert!(r.carried_over >= 21, "the hold and 20 steps at least: {r:?}");
    assert_eq!(live(&mesh.pool).await, ("timeline_events_g2".into(), 2));
    // The replaced table is frozen: every row of it is in the new one, as it was.
    let before = snapshot(&mesh.pool, "timeline_events_g1").await;
    let after: HashSet<Row> = snapshot(&mesh.pool, "timeline_events_g2")
        .await
        .into_iter()
        .collect();
    for row in &before {
        assert!(after.contains(row), "lost in the rebuild: {row:?}");
    }
    assert!(has(&mesh.pool, "timeline_events_g2", &hold.id).await);
    assert_eq!(
        count(
            &mesh.pool,
            "timeline_events_g2",
            &t.id,
            "provisioning.StepSucceeded"
        )
        .await,
        30
    );
    // And it is what queries read.
    let reader = mesh.reader(&t.id).await;
    mesh.timeline(&reader)
        .await
        .get_event(pb::GetEventRequest {
            tenant_id: t.id.clone(),
            event_id: events[0].id.to_string(),
        })
        .await
        .expect("a purged event is still served");
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_differing_rebuild_is_reported_and_the_live_table_stays() {
    let mesh = Mesh::start_with(ENV).await;
    let t = mesh.create_tenant(&slug()).await;
    let events = steps(&t.id, 20);
    for e in &events {
        mesh.publish(e).await;
    }
    steps_in(&mesh, "timeline_events_g1", &t.id, 20).await;
    // One row no message says (recent, so no stream ever forgot it), one row that says
    // something else than its message.
    let phantom = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO timeline_events_g1 (event_id, ts, tenant_id, project_id, kind, actor, resource_type, \
         resource_id, trace_id, result, digest, details, stored, source) \
         SELECT $1, now(), tenant_id, project_id, kind, actor, resource_type, resource_id, trace_id, result, \
         digest, details, stored, source FROM timeline_events_g1 WHERE event_id = $2",
    )
    .bind(phantom)
    .bind(events[4].id)
    .execute(&mesh.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE timeline_events_g1 SET digest = 'tampered' WHERE event_id = $1")
        .bind(events[3].id)
        .execute(&mesh.pool)
        .await
        .unwrap();

    let tl = mesh.timeline(&mesh.operator).await;
    let r = rebuild(&tl).await;
    assert_eq!(r.state(), pb::RebuildState::Different, "{r:?}");
    assert_eq!((r.missing, r.changed, r.extra), (1, 1, 0), "{r:?}");
    let sample: HashSet<(String, String)> = r
        .sample
        .iter()
        .map(|d| (d.kind.clone(), d.event_id.clone()))
        .collect();
    assert_eq!(
        sample,
        HashSet::from([
            ("missing".to_owned(), phantom.to_string()),
            ("changed".to_owned(), events[3].id.to_string()),
        ])
    );
    // Not swapped: the live table is the one that was, and it is still written.
    assert_eq!(live(&mesh.pool).await, ("timeline_events_g1".into(), 1));
    let next = envelope(&t.id, "provisioning", "StepSucceeded", 21, json!({"s": 21}), None);
    mesh.publish(&next).await;
    steps_in(&mesh, "timeline_events_g1", &t.id, 22).await;
    assert!(has(&mesh.pool, "timeline_events_g1", &phantom).await);
    // The next rebuild is a new job of a new generation.
    let again = rebuild(&tl).await;
    assert_ne!(again.job_id, r.job_id);
    assert_eq!(again.generation, r.generation + 1);
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_rebuild_outlives_its_caller_and_a_restart_of_the_service() {
    let mut mesh = Mesh::start_with(ENV).await;
    let t = mesh.create_tenant(&slug()).await;
    let n = 10_000u64;
    let mut acks = Vec::new();
    for e in &steps(&t.id, n) {
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
    steps_in(&mesh, "timeline_events_g1", &t.id, n as i64).await;
    // The caller starts the job and goes away at once.
    let id = {
        let mut caller = mesh.timeline(&mesh.operator).await;
        let job = caller
            .rebuild_projection(pb::RebuildProjectionRequest {})
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        assert_eq!(job.state(), pb::RebuildState::Running);
        job.job_id
    };
    // The service dies mid-replay: once its worker has claimed the job (killed before the
    // claim, the restart would be the job's first attempt and resume nothing).
    keel_store::testing::eventually(
        "the job claimed by the worker",
        std::time::Duration::from_secs(30),
        || async {
            let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM rebuild_jobs WHERE id = $1::uuid")
                .bind(&id)
                .fetch_one(&mesh.pool)
                .await
                .ok()?;
            (attempts >= 1).then_some(())
        },
    )
    .await;
    mesh.e2e.proc_mut(Part::Timeline).kill().await;
    let state: String = sqlx::query_scalar("SELECT state FROM rebuild_jobs WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&mesh.pool)
        .await
        .unwrap();
    assert_eq!(
        state, "running",
        "the job ended before the kill; nothing was tested"
    );
    mesh.restart_timeline().await;
    let tl = mesh.timeline(&mesh.operator).await;
    let r = finished(&tl, &id).await;
    assert_eq!(r.state(), pb::RebuildState::Swapped, "{r:?}");
    assert!(r.attempts >= 2, "the job was not resumed: {r:?}");
    assert_eq!(
        count(
            &mesh.pool,
            "timeline_events_g2",
            &t.id,
            "provisioning.StepSucceeded"
        )
        .await,
        n as i64
    );
    let before = snapshot(&mesh.pool, "timeline_events_g1").await;
    let after = snapshot(&mesh.pool, "timeline_events_g2").await;
    assert_eq!(after, before);
    // Asking again starts nothing while one runs, and a finished job stays readable.
    let again = tl
        .clone()
        .get_rebuild(pb::GetRebuildRequest { job_id: id.clone() })
        .await
        .unwrap();
    assert_eq!(again.into_inner().job_id, id);
    mesh.cleanup().await;
}

#[tokio::test]
async fn both_replicas_follow_the_swap_and_write_the_new_generation() {
    let mut mesh = Mesh::start_with(ENV).await;
    let mut second = mesh.e2e.start_replica(Part::Timeline).await;
    let t = mesh.create_tenant(&slug()).await;
    for e in &steps(&t.id, 50) {
        mesh.publish(e).await;
    }
    steps_in(&mesh, "timeline_events_g1", &t.id, 50).await;
    let tl = mesh.timeline(&mesh.operator).await;
    let r = rebuild(&tl).await;
    assert_eq!(r.state(), pb::RebuildState::Swapped, "{r:?}");
    // Each replica says it switched (the one that ran the job at once, the other on its look).
    let first_logs = || mesh.e2e.proc(Part::Timeline).logs();
    eventually("both replicas follow generation 2", WAIT, || async {
        let followed = |logs: String| {
            logs.lines()
                .any(|l| l.contains("following the live generation") && l.contains("\"generation\":2"))
        };
        (followed(first_logs()) && followed(second.logs())).then_some(())
    })
    .await;
    // With each replica alone in turn, a new event lands in the new generation only.
    let reader = mesh.reader(&t.id).await;
    for (i, alone) in ["second", "first"].into_iter().enumerate() {
        let e = envelope(
            &t.id,
            "provisioning",
            "StepSucceeded",
            51 + i as u64,
            json!({"alone": alone}),
            None,
        );
        if alone == "second" {
            mesh.e2e.proc_mut(Part::Timeline).terminate().await.unwrap();
        } else {
            second.terminate().await.unwrap();
            mesh.restart_timeline().await;
        }
        mesh.publish(&e).await;
        eventually("the event in generation 2", WAIT, || async {
            has(&mesh.pool, "timeline_events_g2", &e.id).await.then_some(())
        })
        .await;
        assert!(
            !has(&mesh.pool, "timeline_events_g1", &e.id).await,
            "written to the replaced table"
        );
        if alone == "second" {
            let mut via_second = TimelineServiceClient::with_interceptor(
                second.channel().await.unwrap(),
                keel_e2e::Bearer(Some(reader.clone())),
            );
            via_second
                .get_event(pb::GetEventRequest {
                    tenant_id: t.id.clone(),
                    event_id: e.id.to_string(),
                })
                .await
                .expect("the second replica reads the new generation");
        }
    }
    mesh.cleanup().await;
}

async fn next(stream: &mut tonic::Streaming<pb::TailTimelineResponse>) -> pb::TailTimelineResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("tail stalled")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_tail_cursor_resumes_across_a_swap() {
    let mesh = Mesh::start_with(ENV).await;
    let t = mesh.create_tenant(&slug()).await;
    let reader = mesh.reader(&t.id).await;
    let mut tl: Timeline = mesh.timeline(&reader).await;
    let request = |cursor: &str| pb::TailTimelineRequest {
        tenant_id: t.id.clone(),
        query: "kind:provisioning.*".into(),
        cursor: cursor.into(),
        ..Default::default()
    };
    let all = steps(&t.id, 30);
    let mut stream = tl.tail_timeline(request("")).await.unwrap().into_inner();
    // A second tail stays open through the swap.
    let mut open = tl.tail_timeline(request("")).await.unwrap().into_inner();
    for e in &all[..10] {
        mesh.publish(e).await;
    }
    let mut got = Vec::new();
    let mut cursor = String::new();
    for _ in 0..5 {
        let m = next(&mut stream).await;
        got.push(m.event.unwrap().event_id);
        cursor = m.cursor;
    }
    drop(stream); // the client goes away with a cursor of generation 1
    for e in &all[10..20] {
        mesh.publish(e).await;
    }
    steps_in(&mesh, "timeline_events_g1", &t.id, 20).await;
    let r = rebuild(&mesh.timeline(&mesh.operator).await).await;
    assert_eq!(r.state(), pb::RebuildState::Swapped, "{r:?}");
    for e in &all[20..] {
        mesh.publish(e).await;
    }
    let mut stream = tl.tail_timeline(request(&cursor)).await.unwrap().into_inner();
    let mut last = String::new();
    while got.len() < 30 {
        let m = next(&mut stream).await;
        got.push(m.event.unwrap().event_id);
        last = m.cursor;
    }
    let unique: HashSet<&String> = got.iter().collect();
    assert_eq!(unique.len(), 30, "duplicates across the swap");
    assert_eq!(
        got,
        all.iter().map(|e| e.id.to_string()).collect::<Vec<_>>(),
        "gap or reorder across the swap"
    );
    drop(stream);
    let mut through = Vec::new();
    while through.len() < 30 {
        through.push(next(&mut open).await.event.unwrap().event_id);
    }
    assert_eq!(through, got, "the tail open through the swap");
    // The last cursor is of the new generation and resumes there.
    let more = envelope(&t.id, "provisioning", "StepSucceeded", 31, json!({"s": 31}), None);
    mesh.publish(&more).await;
    let mut stream = tl.tail_timeline(request(&last)).await.unwrap().into_inner();
    assert_eq!(
        next(&mut stream).await.event.unwrap().event_id,
        more.id.to_string()
    );
    mesh.cleanup().await;
}

#[tokio::test]
async fn get_rebuild_validates_and_is_for_operators() {
    let mesh = Mesh::start_with(ENV).await;
    let t = mesh.create_tenant(&slug()).await;
    let mut op = mesh.timeline(&mesh.operator).await;
    for bad in ["", "nope", &"x".repeat(5000)] {
        let e = op
            .get_rebuild(pb::GetRebuildRequest { job_id: bad.into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("job_id"), "{e:?}");
    }
    let e = op
        .get_rebuild(pb::GetRebuildRequest {
            job_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let reader = mesh.reader(&t.id).await;
    let e = mesh
        .timeline(&reader)
        .await
        .get_rebuild(pb::GetRebuildRequest {
            job_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    mesh.cleanup().await;
}

#[tokio::test]
async fn a_rebuild_under_traffic_swaps_and_loses_nothing() {
    let mesh = Mesh::start_with(ENV).await;
    let t = mesh.create_tenant(&slug()).await;
    for e in &steps(&t.id, 2000) {
        mesh.publish(e).await;
    }
    steps_in(&mesh, "timeline_events_g1", &t.id, 2000).await;
    // Events keep coming, acked one by one, while the job replays, compares and swaps.
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = {
        let (bus, tenant, stop) = (mesh.bus.clone(), t.id.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut s = 2000u64;
            while !stop.is_cancelled() {
                s += 1;
                let e = envelope(&tenant, "provisioning", "StepSucceeded", s, json!({"s": s}), None);
                let subject = keel_events::subjects::event(
                    &bus.subject_prefix(),
                    &tenant,
                    "provisioning",
                    "StepSucceeded",
                );
                bus.publish_envelope(subject, &e).await.unwrap().await.unwrap();
                sent.push(e.id);
            }
            sent
        })
    };
    let r = rebuild(&mesh.timeline(&mesh.operator).await).await;
    stop.cancel();
    let sent = publisher.await.unwrap();
    assert_eq!(r.state(), pb::RebuildState::Swapped, "{r:?}");
    assert!(!sent.is_empty());
    let before = snapshot(&mesh.pool, "timeline_events_g1").await;
    eventually(
        "every event published during the rebuild in generation 2",
        WAIT,
        || async {
            let n = count(
                &mesh.pool,
                "timeline_events_g2",
                &t.id,
                "provisioning.StepSucceeded",
            )
            .await;
            (n == 2000 + sent.len() as i64).then_some(())
        },
    )
    .await;
    let after: HashSet<Row> = snapshot(&mesh.pool, "timeline_events_g2")
        .await
        .into_iter()
        .collect();
    for row in &before {
        assert!(after.contains(row), "lost in the rebuild: {row:?}");
    }
    mesh.cleanup().await;
}
