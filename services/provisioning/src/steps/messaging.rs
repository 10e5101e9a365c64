//! The tenant's JetStream resources: a KV bucket with the tenant's tier, suspension and the NATS
//! permission set of its audit subscribers, and a durable pull consumer on the namespace's
//! KEEL_AUDIT stream that sees the tenant's audit records only.

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{self, ConsumerErrorKind, DiscardPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use keel_bus::StreamKind;
use serde_json::json;

use super::{Step, StepContext, StepError, Systems, failure};

pub struct Messaging;

/// The `messaging` step.
pub fn messaging() -> Box<dyn Step> {
    Box::new(Messaging)
}

/// The subjects of the tenant's audit records: `<prefix>keel.audit.<tenant_id>.>`.
pub fn audit_filter(sys: &Systems, tenant_id: &str) -> Result<String, StepError> {
    if !keel_events::subjects::is_valid_token(tenant_id) {
        return Err(StepError::Permanent(format!(
            "tenant id {tenant_id:?} is not a valid subject token"
        )));
    }
    Ok(keel_events::subjects::audit_tenant(
        &sys.bus.subject_prefix(),
        tenant_id,
    ))
}

/// The NATS permission set of the tenant's audit subscribers: subscribe to its own audit
/// subjects, publish nothing.
pub fn permissions(audit_filter: &str) -> serde_json::Value {
    json!({
        "subscribe": { "allow": [audit_filter] },
        "publish": { "deny": [">"] },
    })
}

/// The bucket's keys and values as `ctx` wants them.
fn desired_keys(sys: &Systems, ctx: &StepContext) -> Result<[(&'static str, String); 3], StepError> {
    failure::tier(&ctx.tier)?;
    let filter = audit_filter(sys, &ctx.tenant_id)?;
    Ok([
        ("tier", ctx.tier.clone()),
        ("suspended", ctx.suspended.to_string()),
        ("permissions", permissions(&filter).to_string()),
    ])
}

fn consumer_config(ctx: &StepContext, filter: String) -> pull::Config {
    pull::Config {
        durable_name: Some(ctx.names.audit_consumer.clone()),
        description: Some(format!("audit records of tenant {}", ctx.tenant_id)),
        filter_subject: filter,
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ..Default::default()
    }
}

/// What JetStream accepts as a bucket name: `[A-Za-z0-9_-]+`.
fn is_bucket_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

fn is_not_found(code: ErrorCode) -> bool {
    code == ErrorCode::STREAM_NOT_FOUND || code == ErrorCode::CONSUMER_NOT_FOUND
}

/// Whether the stream exists; "not found" is an answer, anything else a failure.
async fn stream_exists(js: &jetstream::Context, name: &str) -> Result<bool, StepError> {
    match js.get_stream(name).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(js_err) if is_not_found(js_err.error_code()) => Ok(false),
            _ => Err(failure::nats(&format!("stream {name}"), e)),
        },
    }
}

/// The filter subject of the durable consumer, when it exists.
async fn consumer_filter(sys: &Systems, ctx: &StepContext) -> Result<Option<String>, StepError> {
    let stream = sys.bus.stream_name(StreamKind::Audit);
    let found = sys
        .bus
        .jetstream()
        .get_consumer_from_stream::<pull::Config, _, _>(&ctx.names.audit_consumer, &stream)
        .await;
    match found {
        Ok(consumer) => Ok(Some(consumer.cached_info().config.filter_subject.clone())),
        Err(e) => match e.kind() {
            ConsumerErrorKind::JetStream(js_err) if is_not_found(js_err.error_code()) => Ok(None),
            _ => Err(failure::nats("audit consumer", e)),
        },
    }
}

/// The stream behind the tenant's bucket, as `create_key_value` would configure it (history 1,
/// file storage). It is created as a stream because async-nats' KV creation first asks for the
/// account info, which it cannot read from a NATS 2.9 server.
fn bucket_stream_config(ctx: &StepContext) -> stream::Config {
    stream::Config {
        name: kv_stream(&ctx.names.kv_bucket),
        description: Some(format!("KV bucket of tenant {}", ctx.tenant_id)),
        subjects: vec![format!("$KV.{}.>", ctx.names.kv_bucket)],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        num_replicas: 1,
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    }
}

/// The tenant's bucket, created (or its settings restored) when needed.
async fn ensure_bucket(js: &jetstream::Context, ctx: &StepContext) -> Result<kv::Store, StepError> {
    let bucket = &ctx.names.kv_bucket;
    if !is_bucket_name(bucket) {
        return Err(StepError::Permanent(format!("invalid bucket name {bucket:?}")));
    }
    js.create_or_update_stream(bucket_stream_config(ctx))
        .await
        .map_err(|e| failure::nats("creating the tenant bucket", e))?;
    js.get_key_value(bucket)
        .await
        .map_err(|e| failure::nats("opening the tenant bucket", e))
}

#[async_trait]
impl Step for Messaging {
    fn name(&self) -> &'static str {
        "messaging"
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        let keys = desired_keys(sys, ctx)?;
        let js = sys.bus.jetstream();
        let store = ensure_bucket(js, ctx).await?;
        // Only changed values are written, so a second apply leaves the revisions alone.
        let mut written = Vec::new();
        for (key, value) in keys {
            let current = store
                .get(key)
                .await
                .map_err(|e| failure::nats("reading the tenant bucket", e))?;
            if current.as_deref() != Some(value.as_bytes()) {
                store
                    .put(key, value.into())
                    .await
                    .map_err(|e| failure::nats("writing the tenant bucket", e))?;
                written.push(key);
            }
        }

        let filter = audit_filter(sys, &ctx.tenant_id)?;
        let stream = sys.bus.stream_name(StreamKind::Audit);
        js.create_consumer_on_stream(consumer_config(ctx, filter.clone()), &stream)
            .await
            .map_err(|e| failure::nats("creating the audit consumer", e))?;
        Ok(json!({
            "bucket": ctx.names.kv_bucket,
            "keys_written": written,
            "consumer": ctx.names.audit_consumer,
            "stream": stream,
            "filter": filter,
        }))
    }

    async fn compensate(&self, sys: &Systems, ctx: &StepContext) -> Result<Vec<String>, StepError> {
        let js = sys.bus.jetstream();
        let mut removed = Vec::new();
        let stream = sys.bus.stream_name(StreamKind::Audit);
        match js
            .delete_consumer_from_stream(&ctx.names.audit_consumer, &stream)
            .await
        {
            Ok(_) => removed.push(format!("consumer {}", ctx.names.audit_consumer)),
            Err(e) => match e.kind() {
                ConsumerErrorKind::JetStream(js_err) if is_not_found(js_err.error_code()) => {}
                _ => return Err(failure::nats("deleting the audit consumer", e)),
            },
        }
        // The bucket is its stream; deleting the stream directly tells "not found" apart.
        let bucket_stream = kv_stream(&ctx.names.kv_bucket);
        match js.delete_stream(&bucket_stream).await {
            Ok(_) => removed.push(format!("bucket {}", ctx.names.kv_bucket)),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js_err) if is_not_found(js_err.error_code()) => {}
                _ => return Err(failure::nats("deleting the tenant bucket", e)),
            },
        }
        Ok(removed)
    }

    async fn check(&self, sys: &Systems, ctx: &StepContext) -> Result<bool, StepError> {
        let keys = desired_keys(sys, ctx)?;
        let js = sys.bus.jetstream();
        if !stream_exists(js, &kv_stream(&ctx.names.kv_bucket)).await? {
            return Ok(false);
        }
        let store = js
            .get_key_value(&ctx.names.kv_bucket)
            .await
            .map_err(|e| failure::nats("opening the tenant bucket", e))?;
        for (key, value) in keys {
            let current = store
                .get(key)
                .await
                .map_err(|e| failure::nats("reading the tenant bucket", e))?;
            if current.as_deref() != Some(value.as_bytes()) {
                return Ok(false);
            }
        }
        let filter = audit_filter(sys, &ctx.tenant_id)?;
        Ok(consumer_filter(sys, ctx).await? == Some(filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_may_read_their_tenant_and_publish_nothing() {
        let p = permissions("ns.keel.audit.tenant-1.>");
        assert_eq!(p["subscribe"]["allow"], json!(["ns.keel.audit.tenant-1.>"]));
        assert_eq!(p["publish"]["deny"], json!([">"]));
        assert!(p["publish"].get("allow").is_none());
    }
}
