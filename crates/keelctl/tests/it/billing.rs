//! `billing …` against a real tenant service and billing meter: usage errors exit 2 before any
//! call, recorded usage is counted once and read back, meters are listed and defined, a
//! tenant's key reads only its own usage; `estimate` and `reconcile` as the proto describes them.

use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use keel_store::testing::eventually;
use rust_decimal::Decimal;
use serde_json::Value;

use crate::harness::{Run, World, bare_keelctl, output, slug};

const WAIT: Duration = Duration::from_secs(30);

async fn bare(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.json"), "[{\"id\": \"a\", \"data\": ").unwrap();
    std::fs::write(
        dir.path().join("no-tenant.json"),
        r#"{"id": "a", "data": {"meter": "api_requests", "value": "1"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.path().join("bad-field.json"),
        r#"[{"id": "a", "tenantid": "t", "data": {"meter": "api_requests"}}, {"id": 7, "data": {}}]"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.json"), "[]").unwrap();
    output(bare_keelctl(args, dir.path())).await
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(v.as_str().unwrap_or_else(|| panic!("not a decimal string: {v}")))
        .unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// A tenant's own API key with `scopes`.
async fn tenant_key(w: &World, tenant: &str, scopes: &[&str]) -> String {
    let mut args = vec!["token", "create-account", tenant, "--name", "meter"];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let account = w.json(&args).await;
    account["api_key"].as_str().unwrap().to_owned()
}

async fn run_as(w: &World, key: &str, args: &[&str]) -> Run {
    let mut cmd = w.keelctl(args);
    cmd.env("KEEL_API_KEY", key);
    output(cmd).await
}

#[tokio::test]
async fn billing_usage_errors_exit_2_before_any_call() {
    // No credentials and no services: anything that got as far as a call would exit 1 saying so.
    let cases: &[(&[&str], &str)] = &[
        (&["billing", "usage", "--tenant", "acme"], "--meter"),
        (
            &["billing", "usage", "--tenant", "*", "--meter", "api_requests"],
            "tenant slug or id",
        ),
        (
            &["billing", "usage", "--tenant", "acme", "--meter", "API"],
            "[a-z0-9_]",
        ),
        (
            &[
                "billing",
                "usage",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--granularity",
                "week",
            ],
            "hour, day, month",
        ),
        (
            &[
                "billing",
                "usage",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--to",
                "2026-11-02T00:00:00Z",
            ],
            "--from",
        ),
        (
            &[
                "billing",
                "usage",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--last",
                "1h",
                "--from",
                "2026-11-01T00:00:00Z",
            ],
            "cannot be used with",
        ),
        (
            &[
                "billing",
                "usage",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--from",
                "2026-11-02T00:00:00Z",
                "--to",
                "2026-11-01T00:00:00Z",
            ],
            "the period is empty",
        ),
        (
            &[
                "billing",
                "usage",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--as-of",
                "yesterday",
            ],
            "RFC 3339",
        ),
        (
            &[
                "billing",
                "usage",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--last",
                "1w",
            ],
            "30s, 15m",
        ),
        (
            &["billing", "estimate", "--tenant", "acme", "--month", "2026-13"],
            "YYYY-MM",
        ),
        (
            &["billing", "estimate", "--tenant", "acme", "--month", "2026-11-01"],
            "YYYY-MM",
        ),
        (&["billing", "estimate", "--month", "2026-11"], "--tenant"),
        (&["billing", "reconcile"], "--month"),
        (&["billing", "reconcile", "--month", "11-2026"], "YYYY-MM"),
        (
            &["billing", "reconcile", "--month", "2026-11", "--tenant", "a.>"],
            "tenant slug or id",
        ),
        (
            &["billing", "record", "--tenant", "acme", "--value", "1"],
            "--meter",
        ),
        (
            &["billing", "record", "--meter", "api_requests", "--value", "1"],
            "--tenant",
        ),
        (
            &[
                "billing",
                "record",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--value",
                "NaN",
            ],
            "expected a decimal",
        ),
        (
            &[
                "billing",
                "record",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--value",
                "1e3",
            ],
            "expected a decimal",
        ),
        (
            &[
                "billing",
                "record",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--property",
                "region",
            ],
            "KEY=VALUE",
        ),
        (
            &[
                "billing",
                "record",
                "--tenant",
                "acme",
                "--meter",
                "api_requests",
                "--time",
                "now",
            ],
            "RFC 3339",
        ),
        (
            &[
                "billing",
                "record",
                "--file",
                "events.json",
                "--meter",
                "api_requests",
            ],
            "cannot be used with",
        ),
        (&["billing", "record", "--file", "missing.json"], "missing.json"),
        (&["billing", "record", "--file", "bad.json"], "not JSON"),
        (
            &["billing", "record", "--file", "no-tenant.json"],
            "event 0 names no tenantid",
        ),
        (
            &[
                "billing",
                "record",
                "--file",
                "bad-field.json",
                "--tenant",
                "acme",
            ],
            "event 1: id",
        ),
        (
            &["billing", "record", "--file", "empty.json", "--tenant", "acme"],
            "no usage events",
        ),
        (&["billing", "meters", "create", "jobs"], "--aggregation"),
        (
            &["billing", "meters", "create", "jobs", "--aggregation", "avg"],
            "sum, count, max",
        ),
        (
            &[
                "billing",
                "meters",
                "create",
                "users",
                "--aggregation",
                "unique-count",
            ],
            "--value-property",
        ),
        (
            &["billing", "meters", "create", "Jobs", "--aggregation", "count"],
            "[a-z0-9_]",
        ),
    ];
    for (args, needle) in cases {
        let run = bare(args).await;
        assert_eq!(run.code, Some(2), "{args:?}: {run:?}");
        assert!(
            run.stderr.contains(needle),
            "{args:?}: expected {needle:?} in {run:?}"
        );
        assert!(
            !run.stderr.contains("credentials") && !run.stderr.contains("cannot reach"),
            "{args:?} went as far as a call: {run:?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:?}");
    }
}

#[tokio::test]
async fn recorded_usage_is_counted_once_and_read_back() {
    let w = World::with_billing().await;
    let s = slug();
    let id = w.create(&s).await;
    let before = Utc::now();
    let at = (Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
    let one = [
        "billing",
        "record",
        "--tenant",
        &s,
        "--meter",
        "api_requests",
        "--value",
        "3",
        "--id",
        "req-1",
        "--time",
        &at,
    ];
    let r = w.json(&one).await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(1), Some(0)),
        "{r}"
    );
    assert_eq!(r["results"][0]["id"], "req-1", "{r}");
    assert_eq!(r["results"][0]["status"], "accepted", "{r}");
    // Sent again: a duplicate, counted once.
    let again = w.json(&one).await;
    assert_eq!(again["duplicates"].as_u64(), Some(1), "{again}");
    assert_eq!(again["results"][0]["status"], "duplicate", "{again}");

    // A generated id, as a table; the tenant named by id this time.
    let table = w
        .ok(&[
            "billing",
            "record",
            "--tenant",
            &id,
            "--meter",
            "api_requests",
            "--value",
            "4.5",
        ])
        .await;
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("INDEX  ID"), "{table}");
    assert!(lines.next().unwrap().ends_with("accepted"), "{table}");
    assert!(
        table.contains("accepted:    1") && table.contains("duplicates:  0"),
        "{table}"
    );

    // A file: one new event, and req-1 again (no tenantid: --tenant's; no source: keelctl's).
    let file = w.path("usage.json");
    std::fs::write(
        &file,
        serde_json::json!([
            {"id": "f-1", "source": "keelctl", "time": at, "tenantid": id,
             "data": {"meter": "api_requests", "value": "2.25"}},
            {"id": "req-1", "time": at, "data": {"meter": "api_requests", "value": 3}},
        ])
        .to_string(),
    )
    .unwrap();
    let r = w
        .json(&[
            "billing",
            "record",
            "--file",
            file.to_str().unwrap(),
            "--tenant",
            &s,
        ])
        .await;
    assert_eq!(
        (r["accepted"].as_u64(), r["duplicates"].as_u64()),
        (Some(1), Some(1)),
        "{r}"
    );
    assert_eq!(r["results"][1]["index"], 1, "{r}");
    assert_eq!(r["results"][1]["status"], "duplicate", "{r}");

    // 3 + 4.5 + 2.25, three events.
    let u = w
        .json(&[
            "billing",
            "usage",
            "--tenant",
            &s,
            "--meter",
            "api_requests",
            "--last",
            "1h",
        ])
        .await;
    assert_eq!(u["tenant_id"].as_str(), Some(id.as_str()), "{u}");
    assert_eq!(u["aggregation"], "sum", "{u}");
    assert_eq!(u["total"], "9.75", "{u}");
    assert_eq!(u["events"], 3, "{u}");
    let buckets = u["buckets"].as_array().unwrap();
    assert!(
        !buckets.is_empty()
            && buckets
                .iter()
                .all(|b| b["start"].as_str().unwrap().ends_with(":00:00Z"))
    );
    let table = w
        .ok(&[
            "billing",
            "usage",
            "--tenant",
            &s,
            "--meter",
            "api_requests",
            "--last",
            "1h",
            "--granularity",
            "day",
        ])
        .await;
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("START ") && header.ends_with("GROUP  VALUE  EVENTS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains("T00:00:00Z") && l.ends_with("9.75   3")),
        "{table}"
    );
    assert!(table.lines().any(|l| l == "total:   9.75"), "{table}");

    // As known before anything was recorded: nothing.
    let then = w
        .json(&[
            "billing",
            "usage",
            "--tenant",
            &s,
            "--meter",
            "api_requests",
            "--last",
            "1h",
            "--as-of",
            &before.to_rfc3339(),
        ])
        .await;
    assert_eq!(then["total"], "0", "{then}");
    assert!(then["buckets"].as_array().unwrap().is_empty(), "{then}");

    // Refusals by the service exit 1 with the code and the field.
    let run = w
        .run(&[
            "billing",
            "usage",
            "--tenant",
            &s,
            "--meter",
            "no_such_meter",
            "--last",
            "1h",
        ])
        .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.starts_with("error: INVALID_ARGUMENT: meter"),
        "{run:?}"
    );
    let run = w
        .run(&[
            "billing",
            "record",
            "--tenant",
            &s,
            "--meter",
            "api_requests",
            "--value",
            "-1",
        ])
        .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.contains("INVALID_ARGUMENT: events[0].value"),
        "{run:?}"
    );
    w.cleanup().await;
}

#[tokio::test]
async fn meters_are_listed_and_defined_and_a_tenant_reads_only_its_own_usage() {
    let w = World::with_billing().await;
    let listed = w.json(&["billing", "meters"]).await;
    let meters = listed["meters"].as_array().unwrap();
    for name in [
        "data_volume_bytes",
        "cpu_core_seconds",
        "ram_gb_seconds",
        "api_requests",
    ] {
        let m = meters
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {listed}"));
        assert_eq!(
            (m["builtin"].as_bool(), m["aggregation"].as_str()),
            (Some(true), Some("sum")),
            "{m}"
        );
    }
    let table = w.ok(&["billing", "meters"]).await;
    assert!(
        table.starts_with("NAME") && table.contains("AGGREGATION"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api_requests") && l.contains("requests") && l.contains(" yes ")),
        "{table}"
    );

    // An operator defines a meter; defining it again changes nothing.
    let define = [
        "billing",
        "meters",
        "create",
        "jobs",
        "--aggregation",
        "count",
        "--group-by",
        "queue,region",
        "--unit",
        "jobs",
        "--description",
        "Jobs run",
    ];
    let m = w.json(&define).await;
    assert_eq!(m["name"], "jobs", "{m}");
    assert_eq!(m["aggregation"], "count", "{m}");
    assert_eq!(m["group_by"], serde_json::json!(["queue", "region"]), "{m}");
    assert_eq!(m["version"], 1, "{m}");
    assert_eq!(w.json(&define).await["version"], 1);
    let listed = w.json(&["billing", "meters"]).await;
    assert!(
        listed["meters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "jobs" && m["builtin"] == false),
        "{listed}"
    );

    // Usage of the custom meter, grouped.
    let (s, other) = (slug(), slug());
    let sid = w.create(&s).await;
    let oid = w.create(&other).await;
    for (id, queue) in [("j1", "build"), ("j2", "build"), ("j3", "deploy")] {
        w.ok(&[
            "billing",
            "record",
            "--tenant",
            &s,
            "--meter",
            "jobs",
            "--id",
            id,
            "--property",
            &format!("queue={queue}"),
            "--property",
            "region=eu",
        ])
        .await;
    }
    let u = w
        .json(&[
            "billing",
            "usage",
            "--tenant",
            &s,
            "--meter",
            "jobs",
            "--last",
            "1h",
            "--granularity",
            "month",
        ])
        .await;
    assert_eq!(u["total"], "3", "{u}");
    let groups: Vec<(String, String)> = u["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["group"]["queue"].as_str().unwrap().to_owned(),
                b["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [("build".into(), "2".into()), ("deploy".into(), "1".into())],
        "{u}"
    );
    let table = w
        .ok(&[
            "billing",
            "usage",
            "--tenant",
            &s,
            "--meter",
            "jobs",
            "--last",
            "1h",
            "--granularity",
            "month",
        ])
        .await;
    assert!(table.contains("queue=build, region=eu"), "{table}");

    // A tenant's key with billing:read: its own usage and the meters, nothing else. (It names
    // tenants by id: looking a slug up would need tenant:read.)
    let key = tenant_key(&w, &s, &["billing:read"]).await;
    let own = run_as(
        &w,
        &key,
        &[
            "billing", "usage", "--tenant", &sid, "--meter", "jobs", "--last", "1h", "--output", "json",
        ],
    )
    .await;
    assert!(own.success(), "{own:?}");
    let own: Value = serde_json::from_str(&own.stdout).unwrap();
    assert_eq!(own["total"], "3", "{own}");
    let run = run_as(
        &w,
        &key,
        &[
            "billing", "usage", "--tenant", &oid, "--meter", "jobs", "--last", "1h",
        ],
    )
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: PERMISSION_DENIED"), "{run:?}");
    assert!(run_as(&w, &key, &["billing", "meters"]).await.success());
    for args in [
        &["billing", "record", "--tenant", &sid, "--meter", "jobs"][..],
        &["billing", "meters", "create", "jobs2", "--aggregation", "count"][..],
    ] {
        let run = run_as(&w, &key, args).await;
        assert_eq!(run.code, Some(1), "{args:?}: {run:?}");
        assert!(
            run.stderr.starts_with("error: PERMISSION_DENIED"),
            "{args:?}: {run:?}"
        );
    }
    w.cleanup().await;
}

#[tokio::test]
async fn estimate_prices_a_months_usage() {
    let w = World::with_billing().await;
    let s = slug();
    let id = w.create(&s).await;
    // Two core·hours in the current month.
    w.ok(&[
        "billing",
        "record",
        "--tenant",
        &s,
        "--meter",
        "cpu_core_seconds",
        "--value",
        "7200",
    ])
    .await;
    let e = w.json(&["billing", "estimate", "--tenant", &s]).await;
    assert_eq!(e["tenant_id"].as_str(), Some(id.as_str()), "{e}");
    assert_eq!(
        e["month"].as_str(),
        Some(Utc::now().format("%Y-%m").to_string().as_str()),
        "{e}"
    );
    assert_eq!(e["committed"], false, "a low tier is billed on usage: {e}");
    let lines = e["lines"].as_array().unwrap();
    let cpu = lines
        .iter()
        .find(|l| l["meter"] == "cpu_core_seconds")
        .unwrap_or_else(|| panic!("no cpu line: {e}"));
    assert_eq!(dec(&cpu["quantity"]), Decimal::from(2), "in core·hours: {e}");
    assert_eq!(
        dec(&cpu["amount"]),
        dec(&cpu["quantity"]) * dec(&cpu["unit_price"]),
        "{e}"
    );
    let amounts: Decimal = lines.iter().map(|l| dec(&l["amount"])).sum();
    assert_eq!(dec(&e["total"]), dec(&e["base_fee"]) + amounts, "{e}");
    let table = w.ok(&["billing", "estimate", "--tenant", &id]).await;
    assert!(
        table.starts_with("tenant:") && table.contains("base fee:"),
        "{table}"
    );
    assert!(
        table.lines().any(|l| l.starts_with("cpu_core_seconds")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("total:")), "{table}");
    // An explicit month.
    let month = Utc::now().format("%Y-%m").to_string();
    let again = w
        .json(&["billing", "estimate", "--tenant", &s, "--month", &month])
        .await;
    assert_eq!(again["total"], e["total"], "{again}");
    w.cleanup().await;
}

#[tokio::test]
async fn reconcile_shows_recorded_exported_and_acknowledged() {
    let w = World::with_billing().await;
    let s = slug();
    let id = w.create(&s).await;
    // An hour that has closed, so the aggregator records its window at once.
    let at = Utc::now() - chrono::Duration::minutes(70);
    let month = at.format("%Y-%m").to_string();
    w.ok(&[
        "billing",
        "record",
        "--tenant",
        &s,
        "--meter",
        "api_requests",
        "--value",
        "5",
        "--time",
        &at.to_rfc3339(),
    ])
    .await;
    let args = ["billing", "reconcile", "--month", &month, "--tenant", &s];
    let r = eventually(
        "the window's usage record in the reconciliation",
        WAIT,
        || async {
            let r = w.json(&args).await;
            r["rows"]
                .as_array()
                .unwrap()
                .iter()
                .any(|row| row["meter"] == "api_requests" && row["recorded"].as_u64() >= Some(1))
                .then_some(r)
        },
    )
    .await;
    assert_eq!(r["month"].as_str(), Some(month.as_str()), "{r}");
    let rows = r["rows"].as_array().unwrap();
    assert!(
        rows.iter().all(|row| row["tenant_id"] == id.as_str()),
        "only the tenant asked for: {r}"
    );
    let row = rows.iter().find(|row| row["meter"] == "api_requests").unwrap();
    assert_eq!(row["recorded"], 1, "{r}");
    assert_eq!(dec(&row["recorded_quantity"]), Decimal::from(5), "{r}");
    let (recorded, exported, acked) = (
        row["recorded"].as_u64().unwrap(),
        row["exported"].as_u64().unwrap(),
        row["acknowledged"].as_u64().unwrap(),
    );
    assert!(acked <= exported && exported <= recorded, "{r}");
    assert_eq!(row["not_exported"].as_u64(), Some(recorded - exported), "{r}");
    assert_eq!(row["not_acknowledged"].as_u64(), Some(exported - acked), "{r}");
    let exported_qty = row["exported_quantity"]
        .as_str()
        .filter(|q| !q.is_empty())
        .unwrap_or("0");
    assert_eq!(
        dec(&row["quantity_difference"]),
        dec(&row["recorded_quantity"]) - Decimal::from_str(exported_qty).unwrap(),
        "{r}"
    );
    assert_eq!(
        row["missing"].as_array().unwrap().len() as u64,
        recorded - acked,
        "{r}"
    );

    let table = w.ok(&args).await;
    assert!(
        table.starts_with("TENANT") && table.contains("ACKNOWLEDGED") && table.contains("QTY DIFF"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("api_requests")),
        "{table}"
    );
    // Every tenant's rows without --tenant; operator only.
    let all = w.json(&["billing", "reconcile", "--month", &month]).await;
    assert!(
        all["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["tenant_id"] == id.as_str()),
        "{all}"
    );
    let key = tenant_key(&w, &s, &["billing:read"]).await;
    let run = run_as(&w, &key, &args).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: PERMISSION_DENIED"), "{run:?}");
    w.cleanup().await;
}
