//! `keelctl obs trace`: everything one trace did across the mesh, as the timeline recorded it,
//! in causal order with each event's offset from the first.

use clap::Subcommand;
use keel_proto::v1 as pb;
use serde::Serialize;

use crate::client::ConnectionArgs;
use crate::output::{self, Format, Table, or_dash};
use crate::timeline::view::{self, EventView};
use crate::timeline::{Api, call};

/// Events per TraceEvents call (the timeline's maximum page).
const TRACE_PAGE: u32 = 1000;

#[derive(Subcommand)]
pub enum ObsCommand {
    /// The events of one trace, across services, with offsets from the first (+0ms, +12ms…).
    Trace {
        /// W3C trace id: 32 hexadecimal digits (`trace_id` in `keelctl timeline … --output json`).
        #[arg(value_name = "TRACE_ID", value_parser = view::parse_trace_id)]
        trace_id: String,
        /// Tenant id or slug.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Serialize)]
struct TraceEvent {
    /// Milliseconds after the first event of the trace (negative when a later event in causal
    /// order carries an earlier clock).
    offset_ms: Option<i64>,
    #[serde(flatten)]
    event: EventView,
}

#[derive(Serialize)]
struct TraceView {
    trace_id: String,
    events: Vec<TraceEvent>,
}

pub async fn run(cmd: ObsCommand, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    let ObsCommand::Trace { trace_id, tenant } = cmd;
    let mut api = Api::connect(conn).await?;
    let tenant_id = api.tenant_id(&tenant).await?;
    // The whole trace: every page, in causal order.
    let mut events: Vec<EventView> = Vec::new();
    let mut token = String::new();
    loop {
        let resp = api
            .timeline
            .trace_events(call(pb::TraceEventsRequest {
                tenant_id: tenant_id.clone(),
                trace_id: trace_id.clone(),
                page: Some(pb::PageRequest {
                    page_size: TRACE_PAGE,
                    page_token: token.clone(),
                }),
            }))
            .await?
            .into_inner();
        events.extend(resp.events.into_iter().map(EventView::from));
        let next = resp.page.map(|p| p.next_page_token).unwrap_or_default();
        // A server handing back the same token would loop forever.
        anyhow::ensure!(
            next.is_empty() || next != token,
            "the service repeated a page token"
        );
        if next.is_empty() {
            break;
        }
        token = next;
    }
    let start = events.first().and_then(|e| e.time);
    let events = events
        .into_iter()
        .map(|event| TraceEvent {
            offset_ms: start
                .zip(event.time)
                .map(|(start, t)| (t - start).num_milliseconds()),
            event,
        })
        .collect();
    print(TraceView { trace_id, events }, format)
}

fn print(trace: TraceView, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return output::print_json(&trace);
    }
    if trace.events.is_empty() {
        eprintln!("no events recorded for trace {}", trace.trace_id);
        return Ok(());
    }
    let mut table = Table::new(&["offset", "kind", "actor", "resource", "result", "time", "id"]);
    for t in &trace.events {
        let e = &t.event;
        table.row(vec![
            t.offset_ms.map_or_else(|| "-".to_owned(), offset),
            or_dash(Some(&e.kind)),
            or_dash(Some(&e.actor)),
            e.resource(),
            or_dash(Some(&e.result)),
            e.time_cell(),
            e.event_id.clone(),
        ]);
    }
    output::emit(&table.render())
}

/// `+0ms`, `+12ms`, `-3ms`.
fn offset(ms: i64) -> String {
    if ms < 0 {
        format!("{ms}ms")
    } else {
        format!("+{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_carry_their_sign() {
        assert_eq!(offset(0), "+0ms");
        assert_eq!(offset(12), "+12ms");
        assert_eq!(offset(-3), "-3ms");
    }
}
