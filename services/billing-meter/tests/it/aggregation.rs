//! Hourly windows into usage records: idempotent, corrected by late events, reproducible as
//! known at any recorded time, and the same after a SIGKILL mid-aggregation.

use std::collections::BTreeMap;

use chrono::{Duration, DurationRound, Utc};
use keel_e2e::mesh::Part;
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{DEADLINE, FAST, World, event, total};

#[tokio::test]
async fn a_late_event_corrects_its_window_and_the_old_number_stays_readable_as_recorded() {
    let w = World::start(FAST).await;
    let (t, _) = w.tenant(&[]).await;
    let hour = (Utc::now() - Duration::hours(3))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let at = hour + Duration::minutes(10);
    w.meters()
        .await
        .record_usage(pb::RecordUsageRequest {
            events: vec![event(&t.id, "e1", "cpu_core_seconds", "10.5", at)],
        })
        .await
        .unwrap();
    let first = eventually("the window recorded", DEADLINE, || async {
        let r = w.records(&t.id, "UsageRecorded").await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(first.len(), 1);
    let rec = &first[0].1["UsageRecorded"];
    assert_eq!(rec["quantity"], "10.5");
    assert_eq!(rec["version"], 1);
    assert_eq!(rec["action"], "set");
    let known_before = Utc::now();

    // A late event in the same hour: a correction with before and after, and record version 2.
    w.meters()
        .await
        .record_usage(pb::RecordUsageRequest {
            events: vec![event(
                &t.id,
                "e2",
                "cpu_core_seconds",
                "4.5",
                hour + Duration::minutes(50),
            )],
        })
        .await
        .unwrap();
    let corrected = eventually("the correction recorded", DEADLINE, || async {
        let r = w.records(&t.id, "UsageCorrected").await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    let c = &corrected[0].1["UsageCorrected"];
    assert_eq!(
        (c["before"].as_str(), c["after"].as_str()),
        (Some("10.5"), Some("15"))
    );
    let records = w.records(&t.id, "UsageRecorded").await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].0, records[1].0, "one window");
    assert_eq!(records[1].1["UsageRecorded"]["version"], 2);

    // The bill as it was known before the late event, and as it is known now.
    assert_eq!(
        total(&w.usage(&t.id, "cpu_core_seconds", at, Some(known_before)).await).0,
        "10.5"
    );
    assert_eq!(total(&w.usage(&t.id, "cpu_core_seconds", at, None).await).0, "15");
    w.cleanup().await;
}

/// Every window's records: aggregate id → (quantity, version) of each UsageRecorded.
async fn windows(w: &World, tenant: &str) -> BTreeMap<String, Vec<(String, i64)>> {
    let mut out: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for (id, p) in w.records(tenant, "UsageRecorded").await {
        let r = &p["UsageRecorded"];
        out.entry(id).or_default().push((
            r["quantity"].as_str().unwrap_or_default().to_owned(),
            r["version"].as_i64().unwrap_or_default(),
        ));
    }
    out
}

#[tokio::test]
async fn a_crash_between_records_and_marks_then_restart_gives_the_totals_of_an_uninterrupted_run() {
    // The aggregator dies right after recording its 20th window, before clearing that
    // window's mark: the record exists, the mark says it is still due.
    let crash: Vec<(&str, &str)> = FAST
        .iter()
        .copied()
        .chain([("KEEL_BILLING_CRASH_AFTER_WINDOWS", "20")])
        .collect();
    let mut w = World::start(&crash).await;
    let (t, _) = w.tenant(&[]).await;
    let (u, _) = w.tenant(&[]).await;
    // 48 closed hours of usage for two tenants, the same history each.
    let start = (Utc::now() - Duration::hours(60))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    for tenant in [&t.id, &u.id] {
        let events: Vec<pb::UsageEvent> = (0..480)
            .map(|i| {
                event(
                    tenant,
                    &format!("e{i}"),
                    "data_volume_bytes",
                    &format!("{}.25", i % 7),
                    start + Duration::minutes(6 * i),
                )
            })
            .collect();
        w.meters()
            .await
            .record_usage(pb::RecordUsageRequest { events })
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    while w.e2e.proc_mut(Part::Billing).exited().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "no injected crash within {DEADLINE:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let at_crash = windows(&w, &t.id).await.len() + windows(&w, &u.id).await.len();
    assert_eq!(at_crash, 20, "it crashed after its 20th record");
    let restart: Vec<(String, String)> = FAST
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    w.e2e
        .restart(Part::Billing, Some(restart.into_iter().collect()))
        .await;
    let all = |tenant: String| {
        let w = &w;
        async move {
            let done = windows(w, &tenant).await;
            (done.len() == 48).then_some(done)
        }
    };
    let one = eventually("every window of t recorded", DEADLINE, || all(t.id.clone())).await;
    let two = eventually("every window of u recorded", DEADLINE, || all(u.id.clone())).await;
    // Every window recorded once (the repeat after the restart recorded nothing), at v1, with
    // the same quantities for both tenants; every mark cleared.
    assert!(
        one.values()
            .chain(two.values())
            .all(|v| v.len() == 1 && v[0].1 == 1),
        "{one:?}"
    );
    let quantities = |m: &BTreeMap<String, Vec<(String, i64)>>| -> Vec<String> {
        let mut q: Vec<String> = m.values().map(|v| v[0].0.clone()).collect();
        q.sort();
        q
    };
    assert_eq!(quantities(&one), quantities(&two));
    eventually("every mark cleared", DEADLINE, || async {
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.window_marks",
            w.e2e.schema(Part::Billing)
        ))
        .fetch_one(&w.e2e.pool)
        .await
        .ok()?;
        (left == 0).then_some(())
    })
    .await;
    assert_eq!(
        total(
            &w.usage(&t.id, "data_volume_bytes", start + Duration::hours(24), None)
                .await
        ),
        total(
            &w.usage(&u.id, "data_volume_bytes", start + Duration::hours(24), None)
                .await
        )
    );
    w.cleanup().await;
}

#[tokio::test]
async fn a_custom_unique_count_meter_counts_distinct_values_per_group() {
    let w = World::start(FAST).await;
    let (t, _) = w.tenant(&[]).await;
    let m = w
        .meters()
        .await
        .create_meter(pb::CreateMeterRequest {
            name: format!("users_{}", &t.id[t.id.len() - 6..]).replace('-', "_"),
            description: "distinct users".into(),
            aggregation: pb::Aggregation::UniqueCount as i32,
            group_by: vec!["region".into()],
            unit: "users".into(),
            value_property: "user".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.version, 1);
    let at = Utc::now() - Duration::minutes(3);
    let events: Vec<pb::UsageEvent> = [("u1", "eu"), ("u2", "eu"), ("u1", "eu"), ("u3", "us")]
        .iter()
        .enumerate()
        .map(|(i, (user, region))| {
            let mut e = event(&t.id, &format!("e{i}"), &m.name, "", at);
            e.properties.insert("user".into(), (*user).into());
            e.properties.insert("region".into(), (*region).into());
            e
        })
        .collect();
    w.meters()
        .await
        .record_usage(pb::RecordUsageRequest { events })
        .await
        .unwrap();
    let buckets = w.usage(&t.id, &m.name, at, None).await;
    let by_region: BTreeMap<String, String> = buckets
        .iter()
        .map(|b| (b.group["region"].clone(), b.value.clone()))
        .collect();
    assert_eq!(
        by_region,
        BTreeMap::from([("eu".into(), "2".into()), ("us".into(), "1".into())])
    );
    // The same definition again is no new version; a changed one is.
    let again = w
        .meters()
        .await
        .create_meter(pb::CreateMeterRequest {
            name: m.name.clone(),
            description: "distinct users".into(),
            aggregation: pb::Aggregation::UniqueCount as i32,
            group_by: vec!["region".into()],
            unit: "users".into(),
            value_property: "user".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.version, 1);
    w.cleanup().await;
}
