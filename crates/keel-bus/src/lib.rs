//! The NATS JetStream side of Keel: the five streams of DESIGN.md §2 created idempotently,
//! publishing with JetStream dedupe (`Nats-Msg-Id`) and W3C `traceparent` headers, and the
//! namespace (prefix) that lets every test own its own streams and subjects.
//!
//! Start from [`Bus`].

pub mod acl;
pub mod audit;
pub mod error;
pub mod headers;
pub mod streams;

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishAckFuture};
use bytes::Bytes;

pub use error::{Error, Result};
pub use streams::StreamKind;

/// A JetStream connection scoped to a namespace.
///
/// The namespace is `""` in production; tests pass a unique token (`t3f9a`) so that subjects
/// become `t3f9a.keel.evt.…` and streams `t3f9a_KEEL_EVENTS`, and parallel tests never meet.
#[derive(Clone, Debug)]
pub struct Bus {
    client: async_nats::Client,
    js: jetstream::Context,
    namespace: String,
}

/// One message to publish: subject, body, the id JetStream deduplicates on, optional trace.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub subject: String,
    pub payload: Bytes,
    pub msg_id: String,
    pub traceparent: Option<String>,
    /// Extra headers (e.g. the DLQ reason).
    pub headers: Vec<(String, String)>,
}

impl Bus {
    /// Connects to NATS at `url` with the credentials file `creds`, in namespace `namespace`
    /// (`""` or a subject-safe token).
    pub async fn connect(url: &str, creds: Option<&std::path::Path>, namespace: &str) -> Result<Self> {
        let client = keel_runtime::nats::connect(url, creds, "keel")
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        Self::new(client, namespace)
    }

    /// [`Bus::connect`] with credentials in memory.
    pub async fn connect_with(
        url: &str,
        creds: &keel_runtime::nats::Credentials,
        namespace: &str,
    ) -> Result<Self> {
        let client = keel_runtime::nats::connect_with(url, Some(creds), "keel")
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        Self::new(client, namespace)
    }

    pub fn new(client: async_nats::Client, namespace: &str) -> Result<Self> {
        if !namespace.is_empty() && !keel_events::subjects::is_valid_token(namespace) {
            return Err(Error::InvalidNamespace(namespace.to_owned()));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .max_ack_inflight(20_000)
            // Over the limit a publisher waits for a permit instead of failing.
            .backpressure_on_inflight(true)
            .build(client.clone());
        Ok(Self {
            client,
            js,
            namespace: namespace.to_owned(),
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The prefix to put in front of every subject: `""` or `"<namespace>."`.
    pub fn subject_prefix(&self) -> String {
        if self.namespace.is_empty() {
            String::new()
        } else {
            format!("{}.", self.namespace)
        }
    }

    /// The full name of one of the Keel streams in this namespace.
    pub fn stream_name(&self, kind: StreamKind) -> String {
        if self.namespace.is_empty() {
            kind.base_name().to_owned()
        } else {
            format!("{}_{}", self.namespace, kind.base_name())
        }
    }

    /// Creates (or updates to the current config) every Keel stream. Safe to call from every
    /// service at start-up, concurrently.
    pub async fn ensure_streams(&self) -> Result<()> {
        for kind in StreamKind::ALL {
            self.ensure_stream(kind).await?;
        }
        Ok(())
    }

    pub async fn ensure_stream(&self, kind: StreamKind) -> Result<()> {
        let config = streams::config(kind, &self.stream_name(kind), &self.subject_prefix());
        self.js
            .create_or_update_stream(config)
            .await
            .map_err(|e| Error::Stream {
                stream: self.stream_name(kind),
                message: e.to_string(),
            })?;
        Ok(())
    }

    /// Deletes every stream of this namespace (test clean-up). Missing streams are fine.
    pub async fn delete_streams(&self) -> Result<()> {
        for kind in StreamKind::ALL {
            let _ = self.js.delete_stream(self.stream_name(kind)).await;
        }
        Ok(())
    }

    /// Sends one message and returns the future of its JetStream ack, so callers can pipeline
    /// many publishes and await the acks together.
    ///
    /// A message that carries a `traceparent` gets a producer span (`messaging.*`), child of
    /// that trace; the header sent is the span's, so a consumer's span is its child.
    pub async fn publish(&self, msg: Outgoing) -> Result<PublishAckFuture> {
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg.msg_id.as_str());
        if let Some(tp) = &msg.traceparent {
            let span = tracing::info_span!(
                "nats.publish",
                otel.name = "nats publish",
                otel.kind = "producer",
                "messaging.system" = "nats",
                "messaging.operation.type" = "send",
                "messaging.destination.name" = %msg.subject,
                "messaging.message.id" = %msg.msg_id,
            );
            keel_runtime::telemetry::set_parent_from_traceparent(&span, tp);
            let sent = keel_runtime::telemetry::traceparent_of(&span).unwrap_or_else(|| tp.clone());
            headers.insert(headers::TRACEPARENT, sent.as_str());
        }
        for (k, v) in &msg.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        self.js
            .publish_with_headers(msg.subject.clone(), headers, msg.payload)
            .await
            .map_err(|e| Error::Publish {
                subject: msg.subject,
                message: e.to_string(),
            })
    }

    /// Publishes and waits for the ack. Returns whether JetStream saw it as a duplicate.
    pub async fn publish_acked(&self, msg: Outgoing) -> Result<jetstream::publish::PublishAck> {
        let subject = msg.subject.clone();
        let ack = self.publish(msg).await?;
        ack.await.map_err(|e| Error::Publish {
            subject,
            message: e.to_string(),
        })
    }

    /// Publishes a Keel envelope on `subject`, deduplicated on the envelope id.
    pub async fn publish_envelope(
        &self,
        subject: String,
        envelope: &keel_events::Envelope,
    ) -> Result<PublishAckFuture> {
        self.publish(Outgoing {
            subject,
            payload: Bytes::from(envelope.to_json_bytes()),
            msg_id: envelope.id.to_string(),
            traceparent: envelope.traceparent.clone(),
            headers: Vec::new(),
        })
        .await
    }
}
