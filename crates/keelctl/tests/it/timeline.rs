//! `timeline` and `obs trace` against a real tenant service and timeline indexer on one bus
//! namespace: the tenant's own events, as the indexer projected them.

use std::sync::Mutex;
use std::time::Duration;

use keel_store::testing::eventually;
use serde_json::Value;

use crate::harness::{Run, Tail, World, bare_keelctl, output, slug};

const WAIT: Duration = Duration::from_secs(30);

fn json_line(l: &str) -> Option<Value> {
    serde_json::from_str(l).ok()
}

#[tokio::test]
async fn timeline_query_get_trace_tail_and_rebuild() {
    let mut w = World::with_timeline().await;
    let s = slug();
    let id = w.create(&s).await;

    // The relay publishes the event and the indexer projects it: wait for it.
    let created = eventually("TenantCreated in the timeline", WAIT, || async {
        let list = w
            .json(&["timeline", "kind:tenant.*", "--tenant", &s, "--last", "1h"])
            .await;
        list["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "tenant.TenantCreated")
            .cloned()
    })
    .await;
    assert_eq!(created["tenant_id"].as_str(), Some(id.as_str()), "{created}");
    assert_eq!(created["resource_type"], "tenant", "{created}");
    assert_eq!(created["resource_id"].as_str(), Some(id.as_str()), "{created}");
    assert_eq!(created["source"], "events", "{created}");
    assert!(created["details"].is_object(), "{created}");
    let event_id = created["event_id"].as_str().unwrap().to_owned();
    let trace = created["trace_id"].as_str().unwrap().to_owned();
    assert_eq!(trace.len(), 32, "{created}");

    let table = w
        .ok(&["timeline", "kind:tenant.*", "--tenant", &id, "--limit", "5"])
        .await;
    assert!(table.starts_with("TIME") && table.contains("TRACE"), "{table}");
    assert!(
        table.lines().any(|l| l.contains("tenant.TenantCreated")
            && l.contains(&format!("tenant/{id}"))
            && l.contains(&trace[..8])
            && l.contains(&event_id)),
        "{table}"
    );

    // One event, with its envelope as stored.
    let got = w.json(&["timeline", "get", "--tenant", &s, &event_id]).await;
    assert_eq!(got["stored"]["type"], "keel.tenant.TenantCreated.v1", "{got}");
    assert_eq!(got["stored"]["id"].as_str(), Some(event_id.as_str()), "{got}");
    assert_eq!(got["digest"].as_str().map(str::len), Some(64), "{got}");
    let text = w.ok(&["timeline", "get", "--tenant", &id, &event_id]).await;
    assert!(text.contains("digest:") && text.contains("stored:"), "{text}");
    assert!(
        text.contains("\"specversion\": \"1.0\""),
        "not pretty-printed: {text}"
    );

    // A query the service cannot parse names where.
    let run = w.run(&["timeline", "colour:red", "--tenant", &s]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.starts_with("error: INVALID_ARGUMENT: query: ") && run.stderr.contains("position 1"),
        "{run:?}"
    );
    let run = w
        .run(&["timeline", "kind:tenant.* colour:red", "--tenant", &s])
        .await;
    assert!(run.stderr.contains("position 15"), "{run:?}");

    // The trace of the create call.
    let traced = w.json(&["obs", "trace", &trace, "--tenant", &s]).await;
    let events = traced["events"].as_array().unwrap();
    assert!(
        events.iter().any(|e| e["event_id"] == event_id.as_str()),
        "{traced}"
    );
    assert!(events.iter().all(|e| e["trace_id"] == trace.as_str()), "{traced}");
    assert_eq!(events[0]["offset_ms"], 0, "{traced}");
    let table = w.ok(&["obs", "trace", &trace, "--tenant", &id]).await;
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("OFFSET"), "{table}");
    assert!(lines.next().unwrap().starts_with("+0ms"), "{table}");
    assert!(table.contains("tenant.TenantCreated"), "{table}");

    // A live tail sees a later tier change, and says where to resume on Ctrl-C.
    let mut tail = Tail::spawn(w.keelctl(&[
        "timeline",
        "tail",
        "--tenant",
        &s,
        "kind:tenant.*",
        "--output",
        "json",
    ]));
    tail.stderr_line("tailing", WAIT).await;
    w.ok(&["tenant", "change-tier", &s, "--tier", "high"]).await;
    let line = tail
        .stdout_line(
            |l| json_line(l).is_some_and(|v| v["kind"] == "tenant.TenantTierChanged"),
            WAIT,
        )
        .await;
    let first = json_line(&line).unwrap();
    assert_eq!(first["details"]["to"], "high", "{first}");
    let cursor = first["cursor"].as_str().unwrap().to_owned();
    assert!(!cursor.is_empty(), "{first}");
    let (code, rest) = tail.interrupt(WAIT).await;
    assert_eq!(code, Some(0), "{rest}");
    assert!(rest.contains("resume with --cursor "), "{rest}");

    // Resuming after the first change: the next one, and not the first one again.
    w.ok(&["tenant", "change-tier", &s, "--tier", "mid"]).await;
    let mut resumed = Tail::spawn(w.keelctl(&["timeline", "tail", "--tenant", &id, "--cursor", &cursor]));
    let seen = Mutex::new(Vec::new());
    let line = resumed
        .stdout_line(
            |l| {
                seen.lock().unwrap().push(l.to_owned());
                l.contains("tenant.TenantTierChanged")
            },
            WAIT,
        )
        .await;
    let seen = seen.into_inner().unwrap();
    assert!(seen[0].starts_with("TIME"), "{seen:#?}");
    assert!(!line.contains(first["event_id"].as_str().unwrap()), "{seen:#?}");
    resumed.stop().await;

    // A token without timeline:read is refused; one with it works (the slug is looked up with it).
    let denied = timeline_as(&w, &s, &["tenant:read"]).await;
    assert_eq!(denied.code, Some(1), "{denied:?}");
    assert_eq!(
        denied.stderr.trim(),
        "error: PERMISSION_DENIED: missing scope timeline:read"
    );
    let allowed = timeline_as(&w, &s, &["tenant:read", "timeline:read"]).await;
    assert!(
        allowed.success() && allowed.stdout.contains("tenant.TenantCreated"),
        "{allowed:?}"
    );

    // The operator rebuilds the projection (a job keelctl waits for): identical, swapped in.
    let rebuilt = w.json(&["timeline", "rebuild"]).await;
    assert!(rebuilt["rows"].as_u64().unwrap() >= 3, "{rebuilt}");
    assert_eq!(rebuilt["state"], "swapped", "{rebuilt}");
    assert_eq!(rebuilt["identical"], true, "{rebuilt}");

    // A cursor from before the rebuild resumes in the new generation; one from before an
    // earlier rebuild (generation 0 never was) is refused.
    let mut resumed = Tail::spawn(w.keelctl(&["timeline", "tail", "--tenant", &id, "--cursor", &cursor]));
    resumed
        .stdout_line(|l| l.contains("tenant.TenantTierChanged"), WAIT)
        .await;
    resumed.stop().await;
    let stale = w
        .run(&["timeline", "tail", "--tenant", &id, "--cursor", "MDowOjA"])
        .await;
    assert_eq!(stale.code, Some(1), "{stale:?}");
    assert!(
        stale.stderr.starts_with("error: FAILED_PRECONDITION: ") && stale.stderr.contains("rebuild"),
        "{stale:?}"
    );
    // A tail whose service dies fails.
    let mut tail = Tail::spawn(w.keelctl(&["timeline", "tail", "--tenant", &id]));
    tail.stderr_line("tailing", WAIT).await;
    w.e2e.proc_mut(keel_e2e::mesh::Part::Timeline).kill().await;
    let status = tokio::time::timeout(WAIT, tail.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    tail.stderr_line("error: ", WAIT).await;
    w.cleanup().await;
}

/// `timeline "kind:tenant.*"` with a token for `tenant` holding `scopes` (and no API key).
async fn timeline_as(w: &World, tenant: &str, scopes: &[&str]) -> Run {
    let mut args = vec!["token", "issue", "--tenant", tenant, "--subject", "ci"];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    let token = w.ok(&args).await;
    let mut cmd = w.keelctl(&[
        "timeline",
        "kind:tenant.*",
        "--tenant",
        tenant,
        "--token",
        token.trim(),
    ]);
    cmd.env_remove("KEEL_API_KEY");
    output(cmd).await
}

#[tokio::test]
async fn timeline_usage_errors_exit_2_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let bare = |args: &[&str]| output(bare_keelctl(args, dir.path()));
    for last in ["90x", "1.5h", "0s", "h", "1h30m"] {
        let run = bare(&["timeline", "kind:tenant.*", "--tenant", "acme", "--last", last]).await;
        assert_eq!(run.code, Some(2), "{last}: {run:?}");
        assert!(run.stderr.contains("'--last <DURATION>'"), "{run:?}");
    }
    let run = bare(&[
        "timeline",
        "--tenant",
        "acme",
        "--last",
        "1h",
        "--from",
        "2026-01-01T00:00:00Z",
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    let run = bare(&["timeline", "--tenant", "acme", "--from", "yesterday"]).await;
    assert!(run.code == Some(2) && run.stderr.contains("RFC 3339"), "{run:?}");
    let run = bare(&["timeline", "kind:tenant.*"]).await;
    assert!(run.code == Some(2) && run.stderr.contains("--tenant"), "{run:?}");
    let run = bare(&["timeline", "get", "--tenant", "acme", "not-an-id"]).await;
    assert!(run.code == Some(2) && run.stderr.contains("UUID"), "{run:?}");
    let run = bare(&["obs", "trace", "abc", "--tenant", "acme"]).await;
    assert!(
        run.code == Some(2) && run.stderr.contains("32 hexadecimal"),
        "{run:?}"
    );
    let run = bare(&["timeline", "--tenant", "acme", "--limit", "0"]).await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}
