//! `audit tail`: live records over a core subscription, and a replay from the stream.

use std::time::Duration;

use crate::harness::{Tail, World, slug};

#[tokio::test]
async fn audit_tail_receives_a_later_suspension_and_replays_it_from_the_stream() {
    let w = World::start().await;
    let s = slug();
    let id = w.create(&s).await;
    w.activate(&id).await;

    let mut tail = Tail::spawn(w.keelctl(&["audit", "tail", "--tenant", &id]));
    tail.stderr_line("tailing", Duration::from_secs(20)).await;
    w.ok(&["tenant", "suspend", &id, "--reason", "audit test"]).await;
    let line = tail
        .stdout_line(
            |l| l.contains(" suspend ") && l.contains("success"),
            Duration::from_secs(20),
        )
        .await;
    assert!(line.contains(&format!("tenant/{id}")), "{line}");
    assert!(line.contains(":operator-bootstrap"), "{line}");
    tail.stop().await;

    let mut replay = Tail::spawn(w.keelctl(&[
        "audit",
        "tail",
        "--tenant",
        &id,
        "--from-start",
        "--output",
        "json",
    ]));
    let line = replay
        .stdout_line(
            |l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .is_ok_and(|v| v["action"] == "suspend" && v["result"] == "success")
            },
            Duration::from_secs(20),
        )
        .await;
    let record: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(record["tenant"].as_str(), Some(id.as_str()));
    assert_eq!(record["service"], "tenant");
    replay.stop().await;
    w.cleanup().await;
}
