//! `keelctl timeline …`: a tenant's timeline in the timeline indexer. Query it (the default
//! form, `keelctl timeline "kind:tenant.*" --tenant acme --last 1h`), follow it (`tail`), show
//! one event as stored (`get`), and rebuild the projection (operator, `rebuild`).
//!
//! The access token comes from the tenant service as for every command, and is sent to the
//! timeline service (`--timeline-addr`); it needs `timeline:read` on the tenant.

mod tail;
pub mod view;

use std::time::Duration;

use clap::{Args, Subcommand};
use keel_proto::v1 as pb;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use serde::Serialize;

use crate::client::{self, Authed, ConnectionArgs, Session};
use crate::output::{self, Format, Table, key_values, or_dash};
use view::EventView;

/// Unary calls give up after this long (a rebuild is a job in the service: keelctl polls it).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TimelineArgs {
    #[command(subcommand)]
    command: Option<TimelineCommand>,
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Args)]
pub struct QueryArgs {
    /// What to match, e.g. `kind:provisioning.* result:failure actor:user:alice`. Fields: kind,
    /// result, actor, resource, project, trace, text; other words are free text. Empty: all.
    #[arg(value_name = "QUERY", default_value = "", hide_default_value = true)]
    query: String,
    /// Tenant id or slug.
    #[arg(long, required = true)]
    tenant: Option<String>,
    /// Only the last DURATION: 30s, 15m, 1h, 7d.
    #[arg(long, value_name = "DURATION", value_parser = view::parse_last, conflicts_with_all = ["from", "to"])]
    last: Option<prost_types::Duration>,
    /// Events at or after this time (RFC 3339, e.g. 2026-01-31T09:00:00Z).
    #[arg(long, value_name = "TIME", value_parser = view::parse_time)]
    from: Option<prost_types::Timestamp>,
    /// Events at or before this time (RFC 3339).
    #[arg(long, value_name = "TIME", value_parser = view::parse_time)]
    to: Option<prost_types::Timestamp>,
    /// Events per page, newest first (1-1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue from a previous page.
    #[arg(long, conflicts_with = "all")]
    page_token: Option<String>,
    /// Follow page tokens until every matching event is listed.
    #[arg(long)]
    all: bool,
}

#[derive(Subcommand)]
pub enum TimelineCommand {
    /// Print new events as they are indexed (Ctrl-C stops; the last cursor goes to stderr).
    Tail {
        /// Tenant id or slug.
        #[arg(long)]
        tenant: String,
        /// Only events matching this query (see `keelctl timeline --help`).
        #[arg(value_name = "QUERY", default_value = "", hide_default_value = true)]
        query: String,
        /// Resume right after this cursor (printed by an earlier tail) instead of from now.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One event: its fields, its digest and the envelope (or audit record) as stored.
    Get {
        /// Tenant id or slug.
        #[arg(long)]
        tenant: String,
        #[arg(value_name = "EVENT_ID", value_parser = view::parse_event_id)]
        event_id: String,
    },
    /// Rebuild the projection as a job in the service and wait for it: swapped in only when
    /// identical to the live one, else its differences are shown (operator). Interrupting
    /// keelctl leaves the job running; `rebuild --job <id>` watches it again.
    Rebuild {
        /// Watch this job instead of starting (or joining) the running one.
        #[arg(long)]
        job: Option<String>,
    },
}

/// The timeline service, authenticated, and the session that can still reach the tenant
/// service to turn a slug into a tenant id.
pub struct Api {
    pub timeline: TimelineServiceClient<Authed>,
    session: Session,
}

impl Api {
    pub async fn connect(conn: &ConnectionArgs) -> anyhow::Result<Self> {
        let session = Session::open(conn).await?;
        let channel = client::timeline_channel(conn).await?;
        Ok(Self {
            timeline: TimelineServiceClient::with_interceptor(channel, session.bearer.clone()),
            session,
        })
    }

    /// `tenant` as a tenant id: what looks like a slug is looked up in the tenant service.
    pub async fn tenant_id(&mut self, tenant: &str) -> anyhow::Result<String> {
        self.session.tenant_id(tenant).await
    }
}

/// A unary request that gives up after [`CALL_TIMEOUT`] (sent as `grpc-timeout`).
pub fn call<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(CALL_TIMEOUT);
    req
}

pub async fn run(args: TimelineArgs, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    let mut api = Api::connect(conn).await?;
    match args.command {
        None => query(&mut api, args.query, format).await,
        Some(TimelineCommand::Tail {
            tenant,
            query,
            cursor,
        }) => tail::run(&mut api, &tenant, query, cursor, format).await,
        Some(TimelineCommand::Get { tenant, event_id }) => {
            let tenant_id = api.tenant_id(&tenant).await?;
            let event = api
                .timeline
                .get_event(call(pb::GetEventRequest { tenant_id, event_id }))
                .await?;
            print_event(EventView::from(event.into_inner()), format)
        }
        Some(TimelineCommand::Rebuild { job }) => {
            let mut id = match job {
                Some(id) => id,
                None => {
                    let started = api
                        .timeline
                        .rebuild_projection(call(pb::RebuildProjectionRequest {}))
                        .await?
                        .into_inner();
                    let job = started.job.unwrap_or_default();
                    eprintln!("rebuild job {} (generation {})", job.job_id, job.generation);
                    job.job_id
                }
            };
            let job = loop {
                let job = api
                    .timeline
                    .get_rebuild(call(pb::GetRebuildRequest {
                        job_id: std::mem::take(&mut id),
                    }))
                    .await?
                    .into_inner();
                if job.state() != pb::RebuildState::Running {
                    break job;
                }
                id = job.job_id.clone();
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            print_rebuild(&Rebuilt::from(job), format)
        }
    }
}

#[derive(Serialize)]
struct EventList {
    events: Vec<EventView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

async fn query(api: &mut Api, args: QueryArgs, format: Format) -> anyhow::Result<()> {
    let tenant = args.tenant.unwrap_or_default();
    let tenant_id = api.tenant_id(&tenant).await?;
    let mut events = Vec::new();
    let mut token = args.page_token.unwrap_or_default();
    loop {
        let resp = api
            .timeline
            .query_timeline(call(pb::QueryTimelineRequest {
                tenant_id: tenant_id.clone(),
                from: args.from,
                to: args.to,
                last: args.last,
                filter: None,
                query: args.query.clone(),
                page: Some(pb::PageRequest {
                    page_size: args.limit,
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
        token = next;
        if !args.all || token.is_empty() {
            break;
        }
    }
    let list = EventList {
        events,
        next_page_token: token,
    };
    if format == Format::Json {
        return output::print_json(&list);
    }
    let mut table = Table::new(&view::HEADER);
    for e in &list.events {
        table.row(e.cells());
    }
    output::emit(&table.render())?;
    if !list.next_page_token.is_empty() {
        eprintln!("more events: --page-token {} (or --all)", list.next_page_token);
    }
    Ok(())
}

fn print_event(e: EventView, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return output::print_json(&e);
    }
    let mut pairs = vec![
        ("id", e.event_id.clone()),
        ("time", or_dash(e.ts.as_deref())),
        ("tenant", e.tenant_id.clone()),
    ];
    if !e.project_id.is_empty() {
        pairs.push(("project", e.project_id.clone()));
    }
    pairs.extend([
        ("kind", e.kind.clone()),
        ("source", or_dash(Some(&e.source))),
        ("actor", or_dash(Some(&e.actor))),
        ("resource", e.resource()),
        ("result", or_dash(Some(&e.result))),
        ("trace", or_dash(Some(&e.trace_id))),
        ("digest", e.digest.clone()),
    ]);
    let mut text = key_values(&pairs);
    for (title, doc) in [("details", Some(&e.details)), ("stored", e.stored.as_ref())] {
        if let Some(doc) = doc.filter(|d| !d.is_null()) {
            text.push_str(&format!("\n{title}:\n{}\n", serde_json::to_string_pretty(doc)?));
        }
    }
    output::emit(&text)
}

#[derive(Serialize)]
struct Rebuilt {
    job_id: String,
    state: String,
    generation: i32,
    rows: u64,
    carried_over: u64,
    identical: bool,
    missing: u64,
    extra: u64,
    changed: u64,
    sample: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    error: String,
}

impl From<pb::RebuildJob> for Rebuilt {
    fn from(j: pb::RebuildJob) -> Self {
        let state = j.state();
        Rebuilt {
            state: state
                .as_str_name()
                .trim_start_matches("REBUILD_STATE_")
                .to_lowercase(),
            identical: state == pb::RebuildState::Swapped,
            sample: j
                .sample
                .iter()
                .map(|d| format!("{} {}/{}", d.kind, d.tenant_id, d.event_id))
                .collect(),
            job_id: j.job_id,
            generation: j.generation,
            rows: j.rows,
            carried_over: j.carried_over,
            missing: j.missing,
            extra: j.extra,
            changed: j.changed,
            error: j.error,
        }
    }
}

fn print_rebuild(r: &Rebuilt, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        output::print_json(r)?;
    } else {
        output::emit(&key_values(&[
            ("job", r.job_id.clone()),
            ("state", r.state.clone()),
            ("generation", r.generation.to_string()),
            ("rows", r.rows.to_string()),
            ("carried over", r.carried_over.to_string()),
            ("identical", r.identical.to_string()),
            (
                "missing / extra / changed",
                format!("{} / {} / {}", r.missing, r.extra, r.changed),
            ),
        ]))?;
        for d in &r.sample {
            eprintln!("differs: {d}");
        }
    }
    if !r.error.is_empty() {
        anyhow::bail!("the rebuild failed: {}", r.error);
    }
    if !r.identical {
        eprintln!("the rebuilt projection differs from the live one, which stays");
    }
    Ok(())
}
