use std::time::Duration;

use keel_proto::v1 as pb;
use keel_store::testing::eventually;
use serde_json::json;

use crate::harness::{Mesh, envelope, slug};

fn page(size: u32, token: &str) -> Option<pb::PageRequest> {
    Some(pb::PageRequest {
        page_size: size,
        page_token: token.into(),
    })
}

#[tokio::test]
async fn queries_filter_page_and_trace() {
    let mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut published = Vec::new();
    for s in 1..=30u64 {
        let (event, data) = if s % 10 == 0 {
            ("StepFailed", json!({"error": "disk full on node 3"}))
        } else {
            ("StepSucceeded", json!({"step": s}))
        };
        let e = envelope(&t.id, "provisioning", event, s, data, (s <= 5).then_some(trace));
        mesh.publish(&e).await;
        published.push(e);
    }
    let reader = mesh.reader(&t.id).await;
    let mut tl = mesh.timeline(&reader).await;
    let query = |q: &str, size: u32, token: &str| pb::QueryTimelineRequest {
        tenant_id: t.id.clone(),
        query: q.into(),
        page: page(size, token),
        last: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    eventually("all projected", Duration::from_secs(20), || {
        let mut tl = tl.clone();
        let r = query("kind:provisioning.*", 1000, "");
        async move { (tl.query_timeline(r).await.ok()?.into_inner().events.len() == 30).then_some(()) }
    })
    .await;

    let failures = tl
        .query_timeline(query("kind:provisioning.* result:failure", 100, ""))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(failures.len(), 3);
    assert!(
        failures
            .iter()
            .all(|e| e.kind == "provisioning.StepFailed" && e.result == "failure")
    );
    let text = tl
        .query_timeline(query("\"disk full\"", 100, ""))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(text.len(), 3);
    let by_resource = tl
        .query_timeline(query(
            &format!("resource:run/run-{} actor:service:test", t.id),
            100,
            "",
        ))
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(by_resource.len(), 30);

    // Newest first, pages of 7, stable while new events arrive between pages.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut extra = 100;
    loop {
        let r = tl
            .query_timeline(query("kind:provisioning.*", 7, &token))
            .await
            .unwrap()
            .into_inner();
        seen.extend(r.events.iter().map(|e| e.event_id.clone()));
        extra += 1;
        mesh.publish(&envelope(
            &t.id,
            "provisioning",
            "StepSucceeded",
            extra,
            json!({}),
            None,
        ))
        .await;
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let mut expected: Vec<String> = published.iter().map(|e| e.id.to_string()).collect();
    expected.reverse(); // UUIDv7 and time both ascend with publication
    assert_eq!(
        seen, expected,
        "pages skipped or repeated rows while new events arrived"
    );

    // One trace, in causal order, whole and in pages of 2 (the last page has no next token);
    // and one event with its digest and stored envelope.
    let expected: Vec<String> = published[..5].iter().map(|e| e.id.to_string()).collect();
    let tr = tl
        .trace_events(pb::TraceEventsRequest {
            tenant_id: t.id.clone(),
            trace_id: trace.into(),
            page: None,
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = tr.events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, expected);
    assert_eq!(tr.page.unwrap().next_page_token, "");
    let (mut paged, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let r = tl
            .trace_events(pb::TraceEventsRequest {
                tenant_id: t.id.clone(),
                trace_id: trace.into(),
                page: page(2, &token),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.events.len() <= 2);
        paged.extend(r.events.into_iter().map(|e| e.event_id));
        pages += 1;
        token = r.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!((paged, pages), (expected, 3));
    let one = tl
        .get_event(pb::GetEventRequest {
            tenant_id: t.id.clone(),
            event_id: published[0].id.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one.digest, published[0].digest());
    let stored = keel_events::Envelope::parse(one.stored_json.as_bytes()).unwrap();
    assert_eq!(stored, published[0]);
    mesh.cleanup().await;
}

#[tokio::test]
async fn bad_filters_and_query_syntax_are_invalid_argument_naming_the_problem() {
    let mesh = Mesh::start().await;
    let t = mesh.create_tenant(&slug()).await;
    let reader = mesh.reader(&t.id).await;
    let mut tl = mesh.timeline(&reader).await;
    let now = chrono::Utc::now().timestamp();
    let ts = |s: i64| Some(prost_types::Timestamp { seconds: s, nanos: 0 });
    let base = || pb::QueryTimelineRequest {
        tenant_id: t.id.clone(),
        ..Default::default()
    };
    let cases: Vec<(pb::QueryTimelineRequest, &str)> = vec![
        (
            pb::QueryTimelineRequest {
                from: ts(now),
                to: ts(now - 60),
                ..base()
            },
            "to:",
        ),
        (
            pb::QueryTimelineRequest {
                page: page(1_000_000, ""),
                ..base()
            },
            "page.page_size:",
        ),
        (
            pb::QueryTimelineRequest {
                query: "kind:tenant.* colour:red".into(),
                ..base()
            },
            "query: unknown field \"colour\"",
        ),
        (
            pb::QueryTimelineRequest {
                query: "trace:xyz".into(),
                ..base()
            },
            "query: trace:",
        ),
        (
            pb::QueryTimelineRequest {
                query: "text:\"open".into(),
                ..base()
            },
            "query: unterminated quote at position 6",
        ),
        (
            pb::QueryTimelineRequest {
                filter: Some(pb::TimelineFilter {
                    result: "meh".into(),
                    ..Default::default()
                }),
                ..base()
            },
            "filter.result:",
        ),
        (
            pb::QueryTimelineRequest {
                page: page(10, "garbage"),
                ..base()
            },
            "page.page_token:",
        ),
        // Durations and timestamps chrono cannot hold: INVALID_ARGUMENT, never a panic.
        (
            pb::QueryTimelineRequest {
                last: Some(prost_types::Duration {
                    seconds: 1 << 62,
                    nanos: 0,
                }),
                ..base()
            },
            "last.seconds:",
        ),
        (
            pb::QueryTimelineRequest {
                last: Some(prost_types::Duration {
                    seconds: i64::MIN,
                    nanos: 0,
                }),
                ..base()
            },
            "last.seconds:",
        ),
        (
            pb::QueryTimelineRequest {
                last: Some(prost_types::Duration {
                    seconds: 60,
                    nanos: -1,
                }),
                ..base()
            },
            "last.nanos:",
        ),
        (
            pb::QueryTimelineRequest {
                from: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..base()
            },
            "from:",
        ),
        (
            pb::QueryTimelineRequest {
                tenant_id: "a.b".into(),
                ..base()
            },
            "tenant_id:",
        ),
    ];
    for (req, expected) in cases {
        let e = tl.query_timeline(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{expected}");
        assert!(
            e.message().starts_with(expected),
            "expected {expected:?}, got {:?}",
            e.message()
        );
    }
    let e = tl
        .get_event(pb::GetEventRequest {
            tenant_id: t.id.clone(),
            event_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert!(e.message().starts_with("event_id:"));
    let trace = |page| pb::TraceEventsRequest {
        tenant_id: t.id.clone(),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
        page,
    };
    for (req, expected) in [
        (trace(page(1001, "")), "page.page_size:"),
        (trace(page(u32::MAX, "")), "page.page_size:"),
        (trace(page(10, "garbage")), "page.page_token:"),
        (trace(page(10, &"QUFB".repeat(1000))), "page.page_token:"),
    ] {
        let e = tl.trace_events(req).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{expected}");
        assert!(
            e.message().starts_with(expected),
            "expected {expected:?}, got {:?}",
            e.message()
        );
    }
    mesh.cleanup().await;
}
