//! Usage records exported to an SQS FIFO queue (moto): every record received once, also when
//! the endpoint is unreachable for 30 s in the middle of an export; reconcile shows the gap
//! while it lasts and none after.

use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use chrono::{Duration, DurationRound, Utc};
use keel_proto::v1 as pb;
use keel_store::testing::{TcpGate, eventually};

use crate::harness::{FAST, World, event};

fn sqs_addr() -> String {
    std::env::var("KEEL_TEST_SQS_ADDR").unwrap_or_else(|_| "127.0.0.1:4576".into())
}

fn sqs_client() -> aws_sdk_sqs::Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "test"))
        .endpoint_url(format!("http://{}", sqs_addr()))
        .build();
    aws_sdk_sqs::Client::from_conf(config)
}

async fn reconcile(w: &World, tenant: &str, month: &str) -> Vec<pb::ReconcileRow> {
    w.meters()
        .await
        .reconcile(pb::ReconcileRequest {
            month: month.into(),
            tenant_id: tenant.into(),
        })
        .await
        .expect("Reconcile")
        .into_inner()
        .rows
}

#[tokio::test]
async fn every_record_reaches_the_queue_once_also_through_a_30s_outage() {
    let gate = TcpGate::start(&sqs_addr()).await.expect("gate in front of SQS");
    let queue = format!("keel-{}.fifo", uuid::Uuid::new_v4().simple());
    let endpoint = format!("http://{}", gate.addr());
    let mut env: Vec<(&str, &str)> = FAST.to_vec();
    env.extend([
        ("KEEL_BILLING_SQS_ENDPOINT", endpoint.as_str()),
        ("KEEL_BILLING_SQS_QUEUE", queue.as_str()),
    ]);
    let w = World::start(&env).await;
    let (t, _) = w.tenant(&[]).await;
    // Hours well inside one month, whatever today is: the first hours of the previous day... of
    // this month if it is late enough, else of the last one.
    let base = (Utc::now() - Duration::hours(30))
        .duration_trunc(Duration::hours(1))
        .unwrap();
    let hour = |h: i64| base - Duration::hours(h);
    let record =
        |h: i64, id: &str, v: &str| event(&t.id, id, "api_requests", v, hour(h) + Duration::minutes(5));
    let send = |events: Vec<pb::UsageEvent>| {
        let w = &w;
        async move {
            w.meters()
                .await
                .record_usage(pb::RecordUsageRequest { events })
                .await
                .expect("RecordUsage");
        }
    };
    send((0..3).map(|h| record(h, &format!("a{h}"), "10")).collect()).await;
    let acked = |n: usize| {
        let w = &w;
        let t = t.id.clone();
        async move {
            let rows = sqlx::query_scalar::<_, i64>(&format!(
                "SELECT count(*) FROM {}.usage_exports WHERE tenant_id = $1 AND message_id IS NOT NULL",
                w.e2e.schema(keel_e2e::mesh::Part::Billing)
            ))
            .bind(&t)
            .fetch_one(&w.e2e.pool)
            .await
            .ok()?;
            (rows as usize == n).then_some(())
        }
    };
    eventually("three records acknowledged", StdDuration::from_secs(30), || {
        acked(3)
    })
    .await;

    // The endpoint goes away for 30 s while more windows close and one is corrected.
    gate.cut();
    send((3..7).map(|h| record(h, &format!("b{h}"), "4")).collect()).await;
    send(vec![record(0, "late", "5")]).await;
    eventually("eight records recorded", StdDuration::from_secs(30), || async {
        (w.records(&t.id, "UsageRecorded").await.len() == 8).then_some(())
    })
    .await;
    // An outage of a set length, not a wait for a condition.
    tokio::time::sleep(StdDuration::from_secs(30)).await;
    let month = hour(0).format("%Y-%m").to_string();
    let during: u64 = reconcile(&w, &t.id, &month)
        .await
        .iter()
        .map(|r| r.acknowledged)
        .sum();
    let all_months = |rows: Vec<pb::ReconcileRow>| rows.iter().map(|r| r.recorded).sum::<u64>();
    assert!(
        during < 7,
        "nothing new was acknowledged while SQS was unreachable: {during}"
    );
    gate.restore();
    eventually("every record acknowledged", StdDuration::from_secs(60), || {
        acked(8)
    })
    .await;

    // A consumer of the queue receives each record once.
    let sqs = sqs_client();
    let url = sqs
        .get_queue_url()
        .queue_name(&queue)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = std::time::Instant::now() + StdDuration::from_secs(30);
    while received.values().sum::<usize>() < 8 && std::time::Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            let body: serde_json::Value = serde_json::from_str(m.body().unwrap_or("{}")).unwrap();
            assert_eq!(body["action"], "set");
            *received
                .entry(body["idempotency_key"].as_str().unwrap().to_owned())
                .or_default() += 1;
            sqs.delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    // Nothing more comes after the eight.
    let extra = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .wait_time_seconds(2)
        .send()
        .await
        .unwrap();
    assert!(
        extra.messages().is_empty(),
        "a record arrived twice: {:?}",
        extra.messages()
    );
    assert_eq!(received.len(), 8, "{received:?}");
    assert!(received.values().all(|n| *n == 1), "{received:?}");
    // Reconcile: recorded = exported = acknowledged (latest version of each of 7 windows).
    let rows = reconcile(&w, &t.id, &month).await;
    let recorded = all_months(rows.clone());
    let acknowledged: u64 = rows.iter().map(|r| r.acknowledged).sum();
    assert!(rows.iter().all(|r| r.missing.is_empty()), "{rows:?}");
    assert_eq!(recorded, acknowledged);
    w.cleanup().await;
}
