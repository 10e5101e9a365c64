//! `keelctl audit tail`: follow one tenant's audit records on NATS, live (core subscription) or
//! from the start of the KEEL_AUDIT stream (ordered push consumer), until Ctrl-C.

use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, push};
use clap::{Args, Subcommand};
use futures::{Stream, StreamExt};
use keel_bus::{Bus, StreamKind};
use serde::Deserialize;

use crate::output::{self, Format};

#[derive(Args, Clone, Debug)]
pub struct BusArgs {
    /// NATS server for `audit tail`.
    #[arg(
        long,
        global = true,
        env = "KEEL_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
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
        /// Replay the tenant's records kept in the KEEL_AUDIT stream first, then follow.
        #[arg(long)]
        from_start: bool,
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

pub async fn run(cmd: AuditCommand, bus: &BusArgs, format: Format) -> anyhow::Result<()> {
    let AuditCommand::Tail { tenant, from_start } = cmd;
    let client = async_nats::ConnectOptions::new()
        .name("keelctl")
        .connection_timeout(Duration::from_secs(5))
        .connect(bus.nats_url.as_str())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", bus.nats_url))?;
    let bus = Bus::new(client, &bus.bus_prefix).context("--bus-prefix")?;
    let subject = keel_events::subjects::audit_tenant(&bus.subject_prefix(), &tenant);
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
