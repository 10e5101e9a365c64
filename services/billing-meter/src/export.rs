//! Usage records to the billing queue: every `UsageRecorded` event, relayed from the event
//! store's outbox to KEEL_EVENTS, is sent to an SQS FIFO queue by a durable consumer, in each
//! window's order (an ordered projection), with `MessageDeduplicationId` derived from the
//! record id and the record id as the idempotency key of the Stripe-shaped body. A send that
//! fails is retried with backoff for as long as it fails (the consumer's readiness watch shows
//! the stall); none is dead-lettered for an outage. Each attempt is counted before it is made
//! (`usage_exports.attempts`) and the queue's message id is stored in the transaction that
//! acks the record's message: a crash after the send and before that commit sends again, with
//! the same deduplication id, which the queue drops within its window and a consumer drops by
//! idempotency key after it.

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::types::QueueAttributeName;
use keel_events::Envelope;
use keel_store::projection::{ApplyError, Position, Projection};
use serde_json::{Value, json};
use sha2::Digest;
use sqlx::{PgConnection, PgPool};

/// Where usage records go.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// The SQS endpoint (moto locally and in tests); empty: AWS's for the region.
    pub endpoint: String,
    pub region: String,
    /// A FIFO queue's name (`….fifo`), created if it does not exist.
    pub queue: String,
}

/// An SQS client on one queue.
#[derive(Clone, Debug)]
pub struct Queue {
    client: Client,
    url: String,
}

impl Queue {
    /// Connects and creates the queue if needed (FIFO, deduplication by id). Credentials come
    /// from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (moto accepts any).
    pub async fn open(c: &QueueConfig) -> anyhow::Result<Self> {
        if !c.queue.ends_with(".fifo") || c.queue.len() > 80 {
            anyhow::bail!(
                "KEEL_BILLING_SQS_QUEUE must be a FIFO queue name (<name>.fifo, at most 80 characters)"
            );
        }
        let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "keel-local".into());
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "keel-local".into());
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut config = aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(c.region.clone()))
            .credentials_provider(Credentials::new(key, secret, None, None, "keel"));
        if !c.endpoint.is_empty() {
            config = config.endpoint_url(&c.endpoint);
        }
        let client = Client::from_conf(config.build());
        let created = client
            .create_queue()
            .queue_name(&c.queue)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "SQS queue {}: {}",
                    c.queue,
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        let url = created
            .queue_url()
            .ok_or_else(|| anyhow::anyhow!("SQS returned no URL for {}", c.queue))?
            .to_owned();
        Ok(Self { client, url })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends one record; returns the queue's message id.
    async fn send(&self, body: &Value, group: &str, dedupe: &str) -> Result<String, String> {
        let out = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body.to_string())
            .message_group_id(group)
            .message_deduplication_id(dedupe)
            .send()
            .await
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string())?;
        Ok(out.message_id().unwrap_or_default().to_owned())
    }
}

/// The body of a usage record on the queue: a Stripe usage record (`action` set, `quantity`,
/// `timestamp`, `idempotency_key`) with Keel's own fields beside it.
pub fn body(record: &Value) -> Value {
    let ts = record["window_start"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
        .unwrap_or_default();
    json!({
        "idempotency_key": record["record_id"],
        "action": record["action"],
        "quantity": record["quantity"],
        "timestamp": ts,
        "tenant_id": record["tenant_id"],
        "meter": record["meter"],
        "group": record["group"],
        "window_start": record["window_start"],
        "window_end": record["window_end"],
        "version": record["version"],
        "events": record["events"],
    })
}

/// SQS deduplication ids are at most 128 characters: the record id's SHA-256.
pub fn dedupe_id(record_id: &str) -> String {
    hex::encode(sha2::Sha256::digest(record_id.as_bytes()))
}

pub struct Exporter {
    pub config: QueueConfig,
    /// Opened at the first record (SQS may be down when the service starts).
    queue: tokio::sync::OnceCell<Queue>,
    /// For attempt counts, outside the batch's transaction.
    pool: PgPool,
}

impl Exporter {
    pub fn new(config: QueueConfig, pool: PgPool) -> Self {
        Self {
            config,
            queue: tokio::sync::OnceCell::new(),
            pool,
        }
    }

    async fn queue(&self) -> Result<&Queue, ApplyError> {
        self.queue
            .get_or_try_init(|| Queue::open(&self.config))
            .await
            .map_err(|e| ApplyError::Transient(e.to_string()))
    }
}

#[async_trait]
impl Projection for Exporter {
    type Item = Envelope;

    fn name(&self) -> &str {
        "billing-export"
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<Envelope, String> {
        keel_store::projection::decode_envelope(subject, payload)
    }

    fn position(&self, e: &Envelope) -> Option<Position> {
        Position::of(e)
    }

    async fn apply(&self, conn: &mut PgConnection, e: &Envelope) -> Result<(), ApplyError> {
        if e.service() != "billing" || e.event_name() != "UsageRecorded" {
            return Ok(());
        }
        let r = &e.data;
        let field = |k: &str| {
            r.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ApplyError::Permanent(format!("UsageRecorded lacks {k}")))
        };
        let record_id = field("record_id")?;
        if record_id.len() > 512 || e.tenantid != field("tenant_id")? {
            return Err(ApplyError::Permanent(
                "UsageRecorded: bad record id or tenant".into(),
            ));
        }
        let done: Option<Option<String>> =
            sqlx::query_scalar("SELECT message_id FROM usage_exports WHERE record_id = $1")
                .bind(&record_id)
                .fetch_optional(&mut *conn)
                .await?;
        if matches!(done, Some(Some(_))) {
            return Ok(());
        }
        // The attempt is counted first, on its own: a send whose answer is lost is still seen.
        sqlx::query(
            "INSERT INTO usage_exports (record_id, tenant_id, meter, window_start, version, quantity, attempts) \
             VALUES ($1, $2, $3, $4::timestamptz, $5, $6::numeric, 1) \
             ON CONFLICT (record_id) DO UPDATE SET attempts = usage_exports.attempts + 1, last_attempt_at = now()",
        )
        .bind(&record_id)
        .bind(&e.tenantid)
        .bind(field("meter")?)
        .bind(field("window_start")?)
        .bind(r.get("version").and_then(Value::as_i64).unwrap_or(0) as i32)
        .bind(field("quantity")?)
        .execute(&self.pool)
        .await?;
        let queue = self.queue().await?;
        match queue.send(&body(r), &e.tenantid, &dedupe_id(&record_id)).await {
            Ok(message_id) => {
                sqlx::query(
                    "UPDATE usage_exports SET message_id = $2, acknowledged_at = now(), last_error = NULL \
                     WHERE record_id = $1",
                )
                .bind(&record_id)
                .bind(&message_id)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }
            Err(error) => {
                let short: String = error.chars().take(512).collect();
                let _ = sqlx::query("UPDATE usage_exports SET last_error = $2 WHERE record_id = $1")
                    .bind(&record_id)
                    .bind(&short)
                    .execute(&self.pool)
                    .await;
                Err(ApplyError::Transient(format!("SQS: {short}")))
            }
        }
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), ApplyError> {
        // Exports are effects, not a read model: a replay sends only what was never acknowledged.
        Ok(())
    }
}
