//! The messaging step: the tenant's KV bucket and its audit consumer on KEEL_AUDIT.

use std::time::Duration;

use async_nats::jetstream::consumer::{PullConsumer, pull};
use futures::StreamExt;
use keel_bus::{Outgoing, StreamKind};
use keel_events::subjects;
use keel_provisioning::steps::{self, StepContext};
use keel_store::testing::eventually;
use serde_json::json;

use crate::world::World;

async fn consumer(w: &World, ctx: &StepContext) -> Option<PullConsumer> {
    w.sys
        .bus
        .jetstream()
        .get_consumer_from_stream::<pull::Config, _, _>(
            &ctx.names.audit_consumer,
            w.sys.bus.stream_name(StreamKind::Audit),
        )
        .await
        .ok()
}

async fn kv_value(w: &World, ctx: &StepContext, key: &str) -> Option<String> {
    let store = w
        .sys
        .bus
        .jetstream()
        .get_key_value(&ctx.names.kv_bucket)
        .await
        .ok()?;
    let value = store.get(key).await.expect("read the bucket")?;
    Some(String::from_utf8_lossy(&value).into_owned())
}

async fn revision(w: &World, ctx: &StepContext, key: &str) -> u64 {
    let store = w
        .sys
        .bus
        .jetstream()
        .get_key_value(&ctx.names.kv_bucket)
        .await
        .expect("bucket");
    store
        .entry(key)
        .await
        .expect("entry")
        .expect("key present")
        .revision
}

async fn publish_audit(w: &World, tenant: &str) {
    let subject = subjects::audit(&w.sys.bus.subject_prefix(), tenant, "tenant", "member_added");
    w.sys
        .bus
        .publish_acked(Outgoing {
            subject,
            payload: b"{}".to_vec().into(),
            msg_id: uuid::Uuid::new_v4().to_string(),
            traceparent: None,
            headers: Vec::new(),
        })
        .await
        .expect("publish an audit record");
}

#[tokio::test]
async fn the_audit_consumer_and_permissions_see_one_tenant_only() {
    let w = World::new().await;
    let step = steps::messaging();
    let ctx = w.ctx("acme", "mid", false);
    let prefix = w.sys.bus.subject_prefix();
    let filter = format!("{prefix}keel.audit.{}.>", ctx.tenant_id);

    step.apply(&w.sys, &ctx).await.expect("apply");
    assert!(step.check(&w.sys, &ctx).await.expect("check"));
    assert_eq!(kv_value(&w, &ctx, "tier").await.as_deref(), Some("mid"));
    assert_eq!(kv_value(&w, &ctx, "suspended").await.as_deref(), Some("false"));
    let permissions: serde_json::Value =
        serde_json::from_str(&kv_value(&w, &ctx, "permissions").await.expect("permissions")).expect("JSON");
    assert_eq!(
        permissions,
        json!({ "subscribe": { "allow": [filter] }, "publish": { "deny": [">"] } })
    );
    let info = w
        .sys
        .bus
        .jetstream()
        .get_stream(format!("KV_{}", ctx.names.kv_bucket))
        .await
        .expect("bucket stream");
    assert_eq!(info.cached_info().config.max_messages_per_subject, 1, "history 1");
    assert_eq!(
        info.cached_info().config.storage,
        async_nats::jetstream::stream::StorageType::File
    );

    let mut audit = consumer(&w, &ctx).await.expect("the audit consumer");
    assert_eq!(audit.cached_info().config.filter_subject, filter);
    assert_eq!(
        audit.cached_info().config.durable_name.as_deref(),
        Some(ctx.names.audit_consumer.as_str())
    );

    // It delivers the tenant's audit records and nobody else's.
    publish_audit(&w, "someone-else").await;
    publish_audit(&w, &ctx.tenant_id).await;
    eventually(
        "the tenant's record to be pending",
        Duration::from_secs(10),
        || {
            let mut audit = audit.clone();
            async move { (audit.info().await.ok()?.num_pending == 1).then_some(()) }
        },
    )
    .await;
    let mut batch = audit
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .expect("fetch");
    let msg = batch.next().await.expect("one message").expect("message");
    assert!(
        msg.subject
            .starts_with(&format!("{prefix}keel.audit.{}.", ctx.tenant_id)),
        "{}",
        msg.subject
    );
    msg.ack().await.expect("ack");
    assert!(batch.next().await.is_none(), "only the tenant's record");
    assert_eq!(audit.info().await.expect("info").num_pending, 0);

    // A second apply rewrites nothing.
    let tier_revision = revision(&w, &ctx, "tier").await;
    let again = step.apply(&w.sys, &ctx).await.expect("apply again");
    assert_eq!(again["keys_written"], json!([]), "{again}");
    assert_eq!(revision(&w, &ctx, "tier").await, tier_revision);
    assert!(step.check(&w.sys, &ctx).await.expect("check"));

    // A tier change and a suspension show in the bucket; the old state no longer checks.
    let changed = StepContext {
        tier: "high".into(),
        suspended: true,
        ..ctx.clone()
    };
    assert!(!step.check(&w.sys, &changed).await.expect("check before"));
    let report = step.apply(&w.sys, &changed).await.expect("apply the change");
    assert_eq!(report["keys_written"], json!(["tier", "suspended"]), "{report}");
    assert!(step.check(&w.sys, &changed).await.expect("check after"));
    assert!(!step.check(&w.sys, &ctx).await.expect("old state"));

    let removed = step.compensate(&w.sys, &ctx).await.expect("compensate");
    assert_eq!(
        removed,
        vec![
            format!("consumer {}", ctx.names.audit_consumer),
            format!("bucket {}", ctx.names.kv_bucket)
        ]
    );
    assert!(!step.check(&w.sys, &ctx).await.expect("check"));
    assert!(consumer(&w, &ctx).await.is_none(), "consumer left");
    assert!(
        w.sys
            .bus
            .jetstream()
            .get_key_value(&ctx.names.kv_bucket)
            .await
            .is_err(),
        "bucket left"
    );
    assert!(
        step.compensate(&w.sys, &ctx)
            .await
            .expect("compensate again")
            .is_empty()
    );
    w.cleanup().await;
}

#[tokio::test]
async fn tenant_ids_that_would_widen_the_filter_are_refused() {
    let w = World::new().await;
    let mut ctx = w.ctx("wild", "low", false);
    ctx.tenant_id = "a.>".into();
    let err = steps::messaging()
        .apply(&w.sys, &ctx)
        .await
        .expect_err("a wildcard tenant id");
    assert!(err.is_permanent(), "{err}");
    w.cleanup().await;
}
