//! `keelctl timeline tail`: new events of a tenant's timeline as the indexer stores them, one
//! line each, until Ctrl-C. On the way out, whatever the reason, the cursor after the last
//! printed event goes to stderr so `--cursor` resumes with no gap and no duplicate.

use std::future::Future;

use keel_proto::v1 as pb;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};
use tonic::Streaming;

use super::Api;
use super::view::EventView;
use crate::output::{self, Format};

#[derive(Serialize)]
struct TailLine<'a> {
    cursor: &'a str,
    #[serde(flatten)]
    event: &'a EventView,
}

pub async fn run(
    api: &mut Api,
    tenant: &str,
    query: String,
    cursor: Option<String>,
    format: Format,
) -> anyhow::Result<()> {
    let tenant_id = api.tenant_id(tenant).await?;
    let stop = stop_signals()?;
    let stream = api
        .timeline
        .tail_timeline(pb::TailTimelineRequest {
            tenant_id,
            filter: None,
            query,
            cursor: cursor.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    // The service has fixed the starting point: anything stored from now on is printed.
    match &cursor {
        Some(_) => eprintln!("tailing the timeline of {tenant} after the given cursor (Ctrl-C to stop)"),
        None => eprintln!("tailing the timeline of {tenant} (Ctrl-C to stop)"),
    }
    let mut last = cursor;
    let result = follow(stream, stop, format, &mut last).await;
    if let Some(c) = last.filter(|c| !c.is_empty()) {
        eprintln!("last cursor: {c} (resume with --cursor {c})");
    }
    result
}

/// Prints events until Ctrl-C (Ok), the reader closes the pipe (Ok), or the stream fails or
/// ends (Err). `last` is the cursor of the last event written out.
async fn follow(
    mut stream: Streaming<pb::TailTimelineResponse>,
    stop: impl Future<Output = ()>,
    format: Format,
    last: &mut Option<String>,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    if format == Format::Table {
        let header = line(&super::view::HEADER.map(str::to_uppercase));
        if !write(&header)? {
            return Ok(());
        }
    }
    loop {
        let msg = tokio::select! {
            () = &mut stop => return Ok(()),
            next = stream.message() => match next {
                Ok(Some(msg)) => msg,
                Ok(None) => anyhow::bail!("the timeline service ended the tail"),
                Err(status) => return Err(status.into()),
            },
        };
        let Some(event) = msg.event.map(EventView::from) else {
            continue;
        };
        let text = match format {
            Format::Json => serde_json::to_string(&TailLine {
                cursor: &msg.cursor,
                event: &event,
            })?,
            Format::Table => line(&event.cells()),
        };
        if !write(&text)? {
            return Ok(());
        }
        // Only once the event is out: resuming from here must not skip it.
        *last = Some(msg.cursor);
    }
}

/// Ctrl-C or SIGTERM. The handlers are installed at once (not on first poll), so a signal that
/// comes as soon as the tail has started stops it cleanly instead of killing the process.
fn stop_signals() -> anyhow::Result<impl Future<Output = ()>> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Writes one line; `false` when the reader went away (`| head`).
fn write(text: &str) -> anyhow::Result<bool> {
    match output::write_stdout(&format!("{text}\n")) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        r => r.map(|()| true).map_err(Into::into),
    }
}

/// Fixed widths: events arrive one by one, so columns cannot be sized from the data.
fn line<S: AsRef<str>>(cells: &[S]) -> String {
    const WIDTHS: [usize; 6] = [24, 36, 7, 32, 48, 8];
    let mut out = String::new();
    for (i, cell) in cells.iter().enumerate() {
        let cell = cell.as_ref();
        if i > 0 {
            out.push_str("  ");
        }
        out.push_str(cell);
        let width = WIDTHS.get(i).copied().unwrap_or(0);
        out.extend(std::iter::repeat_n(
            ' ',
            width.saturating_sub(cell.chars().count()),
        ));
    }
    out.trim_end().replace(|c: char| c.is_control(), " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_fixed_columns_and_no_control_characters() {
        let a = line(&[
            "2025-03-14T09:30:00.012Z",
            "tenant.TenantCreated",
            "success",
            "user:a\nb",
        ]);
        assert_eq!(
            a,
            format!(
                "2025-03-14T09:30:00.012Z  {:<36}  success  user:a b",
                "tenant.TenantCreated"
            )
        );
    }
}
