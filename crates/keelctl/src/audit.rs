//! `keelctl audit tail`: follow one tenant's audit records on NATS, live (core subscription) or
//! from the start of the KEEL_AUDIT stream (ordered push consumer), until Ctrl-C.

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull, push};
use clap::{Args, Subcommand};
use futures::{Stream, StreamExt};
use keel_bus::{Bus, StreamKind};
use keel_proto::v1 as pb;
use serde::Deserialize;

use crate::output::{self, Format};

#[derive(Args, Clone, Debug)]
pub struct BusArgs {
    /// NATS server for `audit tail`.
    #[arg(
        long,
        global = true,
        env = "KEEL_NATS_URL",
        default_value = "nats://127.0.0.1:4333"
    )]
    pub nats_url: String,
    /// NATS credentials file: a tenant's audit credentials (`keelctl audit creds`) or any
    /// other the operator issued (`keelctl nats creds`).
    #[arg(long, global = true, env = "KEEL_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// Bus namespace the services run with ("" in production).
    #[arg(long, global = true, env = "KEEL_BUS_PREFIX", default_value = "")]
    pub bus_prefix: String,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print a tenant's audit records as they arrive (Ctrl-C stops).
    Tail {
        /// Tenant id (not a slug): 1-64 of [A-Za-z0-9_-], no wildcards.
        #[arg(long, value_parser = tenant_token)]
        tenant: String,
        /// Replay the tenant's records kept in the KEEL_AUDIT stream first, then follow
        /// (operator credentials: it creates a consumer).
        #[arg(long, conflicts_with = "durable")]
        from_start: bool,
        /// Pull from the tenant's durable consumer (`audit creds` names it) and acknowledge
        /// each record: at-least-once delivery that resumes where the last reader stopped.
        #[arg(long, value_parser = tenant_token)]
        durable: Option<String>,
    },
    /// Issue NATS credentials for the tenant's audit subscribers and write them to a file.
    Creds {
        /// Tenant id (not a slug).
        #[arg(long, value_parser = tenant_token)]
        tenant: String,
        /// The credentials file to write (0600).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// Rejects anything that would widen the subscription (`*`, `>`, `.`) or is no tenant id.
fn tenant_token(s: &str) -> Result<String, String> {
    if keel_events::subjects::is_valid_token(s) {
        Ok(s.to_owned())
    } else {
        Err("must be a tenant id: 1-64 of [A-Za-z0-9_-] (no wildcards or dots)".into())
    }
}

/// The fields shown in a table line; the rest of the record is in `--output json`.
#[derive(Deserialize)]
struct Record {
    #[serde(default)]
    time: String,
    #[serde(default)]
    result: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    source_ip: String,
    #[serde(default)]
    reason: Option<String>,
}

pub async fn run(
    cmd: AuditCommand,
    conn: &crate::client::ConnectionArgs,
    bus: &BusArgs,
    format: Format,
) -> anyhow::Result<()> {
    let (tenant, from_start, durable) = match cmd {
        AuditCommand::Creds { tenant, out } => return creds(conn, &tenant, &out).await,
        AuditCommand::Tail {
            tenant,
            from_start,
            durable,
        } => (tenant, from_start, durable),
    };
    let client = keel_runtime::nats::connect(&bus.nats_url, bus.nats_creds.as_deref(), "keelctl")
        .await
        .with_context(|| format!("cannot connect to NATS at {}", bus.nats_url))?;
    let bus = Bus::new(client, &bus.bus_prefix).context("--bus-prefix")?;
    let subject = keel_events::subjects::audit_tenant(&bus.subject_prefix(), &tenant);
    if let Some(name) = durable {
        let stream_name = bus.stream_name(StreamKind::Audit);
        let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = bus
            .jetstream()
            .get_consumer_from_stream(&name, &stream_name)
            .await
            .with_context(|| format!("durable consumer {name} on {stream_name}"))?;
        let messages = consumer.messages().await.context("consumer messages")?;
        eprintln!("pulling {subject} from {stream_name}/{name} (Ctrl-C to stop)");
        let payloads = messages.then(|m| async move {
            let m = m.map_err(anyhow::Error::from)?;
            m.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            Ok(m.message.payload.clone())
        });
        return follow(payloads, format).await;
    }
    if from_start {
        let stream_name = bus.stream_name(StreamKind::Audit);
        let stream = bus
            .jetstream()
            .get_stream(&stream_name)
            .await
            .with_context(|| format!("stream {stream_name}"))?;
        let consumer = stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: bus.client().new_inbox(),
                filter_subject: subject.clone(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .with_context(|| format!("consumer on {stream_name}"))?;
        let messages = consumer.messages().await.context("consumer messages")?;
        eprintln!("tailing {subject} from the start of {stream_name} (Ctrl-C to stop)");
        let payloads = messages.map(|m| m.map(|m| m.message.payload.clone()).map_err(anyhow::Error::from));
        follow(payloads, format).await
    } else {
        let subscriber = bus.client().subscribe(subject.clone()).await?;
        // The subscription is registered on the server before we say we are listening.
        bus.client().flush().await?;
        eprintln!("tailing {subject} (Ctrl-C to stop)");
        follow(subscriber.map(|m| Ok(m.payload)), format).await
    }
}

async fn creds(
    conn: &crate::client::ConnectionArgs,
    tenant: &str,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let session = crate::client::Session::open(conn).await?;
    let channel = crate::client::provisioning_channel(conn).await?;
    let mut client = pb::provisioning_service_client::ProvisioningServiceClient::with_interceptor(
        channel,
        session.bearer.clone(),
    );
    let issued = client
        .issue_audit_credentials(pb::IssueAuditCredentialsRequest {
            tenant_id: tenant.to_owned(),
        })
        .await?
        .into_inner();
    keel_runtime::nats::authority::write_private(out, &issued.creds)?;
    let expires = issued
        .expires_at
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.to_rfc3339())
        .unwrap_or_default();
    eprintln!(
        "wrote audit credentials for {tenant} to {} (expire {expires}); they read {} live and the durable consumer {} on {}",
        out.display(),
        issued.subject,
        issued.consumer,
        issued.stream
    );
    eprintln!(
        "  keelctl audit tail --tenant {tenant} --nats-creds {}            # live",
        out.display()
    );
    eprintln!(
        "  keelctl audit tail --tenant {tenant} --nats-creds {} --durable {}   # at least once",
        out.display(),
        issued.consumer
    );
    Ok(())
}

async fn follow(
    payloads: impl Stream<Item = anyhow::Result<bytes::Bytes>>,
    format: Format,
) -> anyhow::Result<()> {
    let mut payloads = std::pin::pin!(payloads);
    let stop = interrupted();
    tokio::pin!(stop);
    let mut pending = None;
    if format == Format::Table {
        pending = Some(table_line(
            "TIME",
            "RESULT",
            "ACTOR",
            "ACTION",
            "RESOURCE",
            "SOURCE IP",
        ));
    }
    loop {
        if let Some(line) = pending.take() {
            match output::write_stdout(&format!("{line}\n")) {
                // The reader went away (`| head`): nothing left to do.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                r => r?,
            }
        }
        tokio::select! {
            () = &mut stop => return Ok(()),
            next = payloads.next() => match next {
                None => anyhow::bail!("the NATS connection closed"),
                Some(Err(e)) => return Err(e),
                Some(Ok(payload)) => pending = render(&payload, format),
            },
        }
    }
}

/// The line to print for one message, or `None` (with a note on stderr) for one that is not
/// an audit record.
fn render(payload: &[u8], format: Format) -> Option<String> {
    match format {
        Format::Json => match serde_json::from_slice::<serde_json::Value>(payload) {
            // The record as published, unless a producer spread it over several lines.
            Ok(v) => match std::str::from_utf8(payload) {
                Ok(raw) if !raw.trim().contains('\n') => Some(raw.trim().to_owned()),
                _ => Some(v.to_string()),
            },
            Err(_) => {
                eprintln!("skipped a message that is not JSON ({} bytes)", payload.len());
                None
            }
        },
        Format::Table => match serde_json::from_slice::<Record>(payload) {
            Ok(r) => {
                let mut line = table_line(&r.time, &r.result, &r.actor, &r.action, &r.resource, &r.source_ip);
                if let Some(reason) = r.reason.filter(|s| !s.is_empty()) {
                    line.push_str(&format!("  ({reason})"));
                }
                Some(line.replace(|c: char| c.is_control(), " "))
            }
            Err(e) => {
                eprintln!("skipped a message that is not an audit record: {e}");
                None
            }
        },
    }
}

/// Fixed widths: records arrive one by one, so columns cannot be sized from the data.
fn table_line(time: &str, result: &str, actor: &str, action: &str, resource: &str, ip: &str) -> String {
    format!("{time:<27}  {result:<7}  {actor:<40}  {action:<16}  {resource:<46}  {ip}")
        .trim_end()
        .to_owned()
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_must_be_one_subject_token() {
        assert!(tenant_token("0192f0c0-aaaa-7bbb-8ccc-dddddddddddd").is_ok());
        for bad in ["", "*", ">", "a.b", "a.>", "a b", &"x".repeat(65)] {
            assert!(tenant_token(bad).is_err(), "{bad:?} accepted");
        }
    }
}
