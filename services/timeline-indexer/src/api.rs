//! TimelineService: validate, authorize (timeline:read on the tenant), read.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, TimeZone, Utc};
use keel_auth::scopes;
use keel_proto::v1 as pb;
use keel_proto::v1::timeline_service_server::TimelineService;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::domain::filter::invalid;
use crate::domain::{Filter, TimeRange, query};
use crate::error::{Error, Result};
use crate::indexer::Indexer;
use crate::rebuild::{Job, Rebuilds};
use crate::store::read::{StoredRow, TailCursor, TraceKey};
pub use crate::tails::TailSlots;

pub const MAX_PAGE: u32 = 1000;
pub const DEFAULT_PAGE: u32 = 100;
const TAIL_BATCH: i64 = 500;
/// After a wake-up that found nothing yet (an older transaction still open), read again soon.
const TAIL_SOON: Duration = Duration::from_millis(25);

pub struct TimelineApi {
    pub indexer: Arc<Indexer>,
    /// Rebuild jobs (started here, run by whichever replica holds the lease).
    pub rebuilds: Arc<Rebuilds>,
    /// Where refused calls are recorded.
    pub audit: keel_store::audit::AuditLog,
    pub shutdown: CancellationToken,
    /// Open tails per tenant, capped at `max_tails_per_tenant`.
    pub tails: Arc<TailSlots>,
    /// An idle tail reads again after this even without a wake-up (a lost notification; rows
    /// held back by an older open transaction elsewhere) and re-checks its tenant's suspension.
    pub tail_fallback: Duration,
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn from_ts(field: &str, t: &prost_types::Timestamp) -> Result<DateTime<Utc>> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| Utc.timestamp_opt(t.seconds, n).single())
        .ok_or_else(|| invalid(field, "is not a valid timestamp").into())
}

/// A protobuf duration as chrono's, refusing what chrono cannot hold (it would panic).
fn duration_of(d: &prost_types::Duration) -> Result<chrono::Duration> {
    if !(0..1_000_000_000).contains(&d.nanos) {
        return Err(invalid("last.nanos", "must be 0 to 999,999,999").into());
    }
    chrono::Duration::try_seconds(d.seconds)
        .and_then(|s| s.checked_add(&chrono::Duration::nanoseconds(i64::from(d.nanos))))
        .ok_or_else(|| invalid("last.seconds", "is out of range").into())
}

pub fn to_pb(r: &StoredRow, with_stored: bool) -> pb::TimelineEvent {
    pb::TimelineEvent {
        event_id: r.event_id.to_string(),
        ts: Some(ts(r.ts)),
        tenant_id: r.tenant_id.clone(),
        project_id: r.project_id.clone(),
        kind: r.kind.clone(),
        actor: r.actor.clone(),
        resource_type: r.resource_type.clone(),
        resource_id: r.resource_id.clone(),
        trace_id: r.trace_id.clone(),
        result: r.result.clone(),
        digest: r.digest.clone(),
        details_json: r.details.to_string(),
        stored_json: if with_stored {
            r.stored.to_string()
        } else {
            String::new()
        },
        source: r.source.clone(),
    }
}

fn tenant(field: &str, id: &str) -> Result<()> {
    if keel_events::subjects::is_valid_token(id) {
        Ok(())
    } else {
        Err(invalid(field, "must be a tenant id").into())
    }
}

/// The request filter and the query language, combined.
pub fn filter_of(f: Option<&pb::TimelineFilter>, q: &str) -> Result<Filter> {
    let mut filter = Filter::default();
    if let Some(f) = f {
        filter.add_kinds("filter.kinds", &f.kinds)?;
        let set = |v: &str, apply: &mut dyn FnMut(&str) -> Result<(), crate::domain::filter::Invalid>| {
            if v.is_empty() { Ok(()) } else { apply(v) }
        };
        set(&f.resource, &mut |v| filter.set_resource("filter.resource", v))?;
        set(&f.project, &mut |v| filter.set_project("filter.project", v))?;
        set(&f.actor, &mut |v| filter.set_actor("filter.actor", v))?;
        set(&f.trace_id, &mut |v| filter.set_trace("filter.trace_id", v))?;
        set(&f.result, &mut |v| filter.set_result("filter.result", v))?;
        set(&f.text, &mut |v| filter.set_text("filter.text", v))?;
    }
    query::parse_into(q, &mut filter)?;
    Ok(filter)
}

fn page_token(r: &StoredRow) -> String {
    B64URL.encode(format!("{}:{}", r.ts.timestamp_micros(), r.event_id))
}

fn parse_page_token(t: &str) -> Result<Option<(DateTime<Utc>, Uuid)>> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || Error::from(invalid("page.page_token", "is not a token this service issued"));
    let raw = String::from_utf8(B64URL.decode(t).map_err(|_| bad())?).map_err(|_| bad())?;
    let (micros, id) = raw.split_once(':').ok_or_else(bad)?;
    let ts = micros
        .parse::<i64>()
        .ok()
        .and_then(|m| Utc.timestamp_micros(m).single())
        .ok_or_else(bad)?;
    Ok(Some((ts, id.parse().map_err(|_| bad())?)))
}

fn trace_token(k: TraceKey) -> String {
    B64URL.encode(format!(
        "{}:{}:{}",
        k.ts.timestamp_micros(),
        k.sequence,
        k.event_id
    ))
}

fn parse_trace_token(t: &str) -> Result<Option<TraceKey>> {
    if t.is_empty() {
        return Ok(None);
    }
    let bad = || Error::from(invalid("page.page_token", "is not a token this service issued"));
    if t.len() > 256 {
        return Err(bad());
    }
    let raw = String::from_utf8(B64URL.decode(t).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = raw.splitn(3, ':');
    let mut next = || parts.next().ok_or_else(bad);
    let ts = next()?
        .parse::<i64>()
        .ok()
        .and_then(|m| Utc.timestamp_micros(m).single())
        .ok_or_else(bad)?;
    let sequence = next()?.parse::<u64>().map_err(|_| bad())?;
    let event_id = next()?.parse::<Uuid>().map_err(|_| bad())?;
    Ok(Some(TraceKey {
        ts,
        sequence,
        event_id,
    }))
}

/// A request's page size: 0 is the default, above `MAX_PAGE` is refused naming the field.
fn page_size(page: &pb::PageRequest) -> Result<u32> {
    match page.page_size {
        0 => Ok(DEFAULT_PAGE),
        s if s <= MAX_PAGE => Ok(s),
        _ => Err(invalid("page.page_size", format!("must be at most {MAX_PAGE}")).into()),
    }
}

fn cursor_token(c: TailCursor) -> String {
    B64URL.encode(format!("{}:{}:{}", c.generation, c.tx_id, c.seq))
}

fn parse_cursor(t: &str) -> Result<TailCursor> {
    let bad = || Error::from(invalid("cursor", "is not a cursor this service issued"));
    let raw = String::from_utf8(B64URL.decode(t).map_err(|_| bad())?).map_err(|_| bad())?;
    let mut parts = raw.split(':');
    let mut next = || parts.next().ok_or_else(bad);
    Ok(TailCursor {
        generation: next()?.parse().map_err(|_| bad())?,
        tx_id: next()?.parse().map_err(|_| bad())?,
        seq: next()?.parse().map_err(|_| bad())?,
    })
}

/// What a QueryTimeline request asks for, validated.
pub struct QueryArgs {
    pub range: TimeRange,
    pub filter: Filter,
    pub size: u32,
    pub after: Option<(DateTime<Utc>, Uuid)>,
}

/// Each request's validation, pure (no store, no bus): what the handlers check before
/// authorizing. Public for the fuzz targets; never panics, whatever the request.
pub mod validate {
    use super::*;

    /// QueryTimeline: tenant, time range (at `now`), filter and query, page.
    pub fn query(r: &pb::QueryTimelineRequest, now: DateTime<Utc>) -> Result<QueryArgs> {
        tenant("tenant_id", &r.tenant_id)?;
        let from = r.from.as_ref().map(|t| from_ts("from", t)).transpose()?;
        let to = r.to.as_ref().map(|t| from_ts("to", t)).transpose()?;
        let last = r.last.as_ref().map(duration_of).transpose()?;
        let range = TimeRange::new(from, to, last, now).map_err(Error::from)?;
        let filter = filter_of(r.filter.as_ref(), &r.query)?;
        let page = r.page.clone().unwrap_or_default();
        let size = page_size(&page)?;
        let after = parse_page_token(&page.page_token)?;
        Ok(QueryArgs {
            range,
            filter,
            size,
            after,
        })
    }

    /// GetEvent: tenant and event id.
    pub fn get_event(r: &pb::GetEventRequest) -> Result<Uuid> {
        tenant("tenant_id", &r.tenant_id)?;
        r.event_id
            .parse()
            .map_err(|_| Error::from(invalid("event_id", "must be a UUID")))
    }

    /// TraceEvents: tenant, trace id, page size and token.
    pub fn trace_events(r: &pb::TraceEventsRequest) -> Result<(u32, Option<TraceKey>)> {
        tenant("tenant_id", &r.tenant_id)?;
        Filter::default()
            .set_trace("trace_id", &r.trace_id)
            .map_err(Error::from)?;
        let page = r.page.clone().unwrap_or_default();
        let size = page_size(&page)?;
        let after = parse_trace_token(&page.page_token)?;
        Ok((size, after))
    }

    /// GetRebuild: the job id.
    pub fn get_rebuild(r: &pb::GetRebuildRequest) -> Result<Uuid> {
        if r.job_id.len() > 64 {
            return Err(invalid("job_id", "must be a UUID").into());
        }
        r.job_id
            .parse()
            .map_err(|_| Error::from(invalid("job_id", "must be a UUID")))
    }

    /// TailTimeline: tenant, filter and query, and the cursor if one is given.
    pub fn tail(r: &pb::TailTimelineRequest) -> Result<(Filter, Option<TailCursor>)> {
        tenant("tenant_id", &r.tenant_id)?;
        let filter = filter_of(r.filter.as_ref(), &r.query)?;
        let cursor = if r.cursor.is_empty() {
            None
        } else {
            Some(parse_cursor(&r.cursor)?)
        };
        Ok((filter, cursor))
    }
}

impl TimelineApi {
    /// `timeline:read` on `tenant_id`; a refusal is audited as denied.
    async fn authorize<T>(&self, req: &Request<T>, tenant_id: &str, action: &str) -> Result<(), Status> {
        keel_auth::audit::authorize(
            &self.audit,
            "timeline",
            action,
            req,
            scopes::TIMELINE_READ,
            tenant_id,
        )
        .await
    }
}

type TailStream = ReceiverStream<Result<pb::TailTimelineResponse, Status>>;

#[tonic::async_trait]
impl TimelineService for TimelineApi {
    async fn query_timeline(
        &self,
        req: Request<pb::QueryTimelineRequest>,
    ) -> Result<Response<pb::QueryTimelineResponse>, Status> {
        let r = req.get_ref();
        let QueryArgs {
            range,
            filter,
            size,
            after,
        } = validate::query(r, Utc::now())?;
        self.authorize(&req, &r.tenant_id, "timeline-query").await?;
        let rows = self
            .indexer
            .store
            .query(&r.tenant_id, range, &filter, after, i64::from(size) + 1)
            .await?;
        let more = rows.len() > size as usize;
        let rows = &rows[..rows.len().min(size as usize)];
        let next = if more {
            rows.last().map(page_token).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::QueryTimelineResponse {
            events: rows.iter().map(|r| to_pb(r, false)).collect(),
            page: Some(pb::PageInfo {
                next_page_token: next,
            }),
        }))
    }

    async fn get_event(
        &self,
        req: Request<pb::GetEventRequest>,
    ) -> Result<Response<pb::TimelineEvent>, Status> {
        let r = req.get_ref();
        let id = validate::get_event(r)?;
        self.authorize(&req, &r.tenant_id, "timeline-get").await?;
        let row = self
            .indexer
            .store
            .get(&r.tenant_id, id)
            .await?
            .ok_or(Error::NotFound("event"))?;
        Ok(Response::new(to_pb(&row, true)))
    }

    async fn trace_events(
        &self,
        req: Request<pb::TraceEventsRequest>,
    ) -> Result<Response<pb::TraceEventsResponse>, Status> {
        let r = req.get_ref();
        let (size, after) = validate::trace_events(r)?;
        self.authorize(&req, &r.tenant_id, "timeline-trace").await?;
        let rows = self
            .indexer
            .store
            .trace(&r.tenant_id, &r.trace_id, after, i64::from(size) + 1)
            .await?;
        let more = rows.len() > size as usize;
        let rows = &rows[..rows.len().min(size as usize)];
        let next = match rows.last() {
            Some(last) if more => trace_token(TraceKey::of(last)),
            _ => String::new(),
        };
        Ok(Response::new(pb::TraceEventsResponse {
            events: rows.iter().map(|r| to_pb(r, false)).collect(),
            page: Some(pb::PageInfo {
                next_page_token: next,
            }),
        }))
    }

    type TailTimelineStream = TailStream;

    async fn tail_timeline(
        &self,
        req: Request<pb::TailTimelineRequest>,
    ) -> Result<Response<TailStream>, Status> {
        let r = req.get_ref();
        let (filter, given) = validate::tail(r)?;
        let mut cursor = match given {
            Some(cursor) => cursor,
            None => self.indexer.store.tail_start().await?,
        };
        // A cursor of the generation a rebuild replaced resumes; an older one is refused now.
        self.indexer.store.tail_plan(cursor).await?;
        self.authorize(&req, &r.tenant_id, "timeline-tail").await?;
        let principal = keel_auth::from_request(&req)?;
        let (expires, operator) = (principal.claims.exp, principal.is_operator());
        if !operator && self.indexer.store.tenant_suspended(&r.tenant_id).await? {
            return Err(keel_runtime::status::permission_denied(
                "TENANT_SUSPENDED",
                "the tenant is suspended",
            ));
        }
        let Some(slot) = self.tails.take(&r.tenant_id) else {
            return Err(keel_runtime::status::resource_exhausted(
                format!("at most {} open tails per tenant", self.tails.max),
                Duration::from_secs(1),
            ));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(TAIL_BATCH as usize);
        let (indexer, tenant_id, shutdown) =
            (self.indexer.clone(), r.tenant_id.clone(), self.shutdown.clone());
        let fallback = self.tail_fallback;
        tokio::spawn(async move {
            let expiry = tokio::time::Instant::now()
                + Duration::from_secs(u64::try_from(expires - Utc::now().timestamp()).unwrap_or(0));
            // Rows may be held back by an older open transaction: after a wake-up that found
            // nothing, read again soon a few times before waiting long.
            let mut soon = 0u8;
            let mut check_policy = false;
            loop {
                // Authorization holds for the life of the stream, not only its start.
                if Utc::now().timestamp() >= expires {
                    let _ = tx.send(Err(Status::unauthenticated("token expired"))).await;
                    return;
                }
                if !operator && check_policy {
                    match indexer.store.tail_tenant_suspended(&tenant_id).await {
                        Ok(false) => {}
                        Ok(true) => {
                            let denied = keel_runtime::status::permission_denied(
                                "TENANT_SUSPENDED",
                                "the tenant is suspended",
                            );
                            let _ = tx.send(Err(denied)).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
                let page = match indexer.store.tail(&tenant_id, &filter, cursor, TAIL_BATCH).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                let (rows, generation) = (page.rows, page.generation);
                let (idle, full) = (rows.is_empty(), rows.len() as i64 >= TAIL_BATCH);
                for row in rows {
                    cursor = TailCursor {
                        generation,
                        tx_id: row.tx_id,
                        seq: row.seq,
                    };
                    let msg = pb::TailTimelineResponse {
                        event: Some(to_pb(&row, false)),
                        cursor: cursor_token(cursor),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return; // the client went away
                    }
                }
                if let Some(next) = page.moved {
                    cursor = next; // the replaced generation is done: on to the live one
                    continue;
                }
                if full {
                    continue; // more is waiting
                }
                if !idle {
                    soon = 0;
                }
                let wait = if idle && soon > 0 {
                    soon -= 1;
                    TAIL_SOON
                } else {
                    fallback
                };
                check_policy = true;
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tx.closed() => return,
                    () = slot.wake.notified() => soon = 8,
                    () = tokio::time::sleep_until(expiry) => {}
                    () = tokio::time::sleep(wait) => check_policy = wait == fallback,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn rebuild_projection(
        &self,
        req: Request<pb::RebuildProjectionRequest>,
    ) -> Result<Response<pb::RebuildProjectionResponse>, Status> {
        let principal = keel_auth::from_request(&req)?;
        principal.require_operator()?;
        let job = self.rebuilds.start(&principal.claims.sub).await?;
        Ok(Response::new(pb::RebuildProjectionResponse {
            job: Some(job_pb(&job)),
        }))
    }

    async fn get_rebuild(
        &self,
        req: Request<pb::GetRebuildRequest>,
    ) -> Result<Response<pb::RebuildJob>, Status> {
        let id = validate::get_rebuild(req.get_ref())?;
        keel_auth::from_request(&req)?.require_operator()?;
        let job = self
            .rebuilds
            .get(id)
            .await?
            .ok_or(Error::NotFound("rebuild job"))?;
        Ok(Response::new(job_pb(&job)))
    }
}

/// A job as the API shows it.
pub fn job_pb(j: &Job) -> pb::RebuildJob {
    let state = match j.state.as_str() {
        "running" => pb::RebuildState::Running,
        "swapped" => pb::RebuildState::Swapped,
        "different" => pb::RebuildState::Different,
        "failed" => pb::RebuildState::Failed,
        _ => pb::RebuildState::Unspecified,
    };
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    let sample = j
        .sample
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    let s = |k: &str| {
                        d.get(k)
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or_default()
                            .to_owned()
                    };
                    pb::RebuildDifference {
                        kind: s("kind"),
                        tenant_id: s("tenant_id"),
                        event_id: s("event_id"),
                        ts: s("ts").parse::<DateTime<Utc>>().ok().map(ts),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    pb::RebuildJob {
        job_id: j.id.to_string(),
        state: state as i32,
        phase: j.phase.clone(),
        generation: j.generation,
        rows: count(j.rows_rebuilt),
        carried_over: count(j.carried_over),
        missing: count(j.missing),
        extra: count(j.extra),
        changed: count(j.changed),
        sample,
        error: j.error.clone(),
        attempts: u32::try_from(j.attempts).unwrap_or(0),
        created_at: Some(ts(j.created_at)),
        updated_at: Some(ts(j.updated_at)),
        finished_at: j.finished_at.map(ts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_invalid() {
        let c = TailCursor {
            generation: 3,
            tx_id: 12345,
            seq: 99,
        };
        assert_eq!(parse_cursor(&cursor_token(c)).unwrap(), c);
        assert!(parse_cursor("nope").is_err());
        assert!(parse_page_token("!!").is_err());
        assert_eq!(parse_page_token("").unwrap(), None);
        let k = TraceKey {
            ts: Utc.timestamp_micros(1_764_000_000_123_456).unwrap(),
            sequence: u64::MAX,
            event_id: Uuid::now_v7(),
        };
        assert_eq!(parse_trace_token(&trace_token(k)).unwrap(), Some(k));
        assert_eq!(parse_trace_token("").unwrap(), None);
        for bad in [
            "!!".to_owned(),
            B64URL.encode("1:2"),
            B64URL.encode("x:1:00000000-0000-0000-0000-000000000000"),
            B64URL.encode("1:-1:00000000-0000-0000-0000-000000000000"),
            B64URL.encode("1:1:not-a-uuid"),
            "A".repeat(4096),
        ] {
            let e = parse_trace_token(&bad).unwrap_err();
            assert!(e.to_string().contains("page.page_token"), "{bad}: {e}");
        }
    }

    #[test]
    fn filters_combine_request_and_query() {
        let f = pb::TimelineFilter {
            actor: "user:alice".into(),
            ..Default::default()
        };
        let filter = filter_of(Some(&f), "kind:tenant.* result:failure").unwrap();
        assert_eq!(filter.actor.as_deref(), Some("user:alice"));
        assert_eq!(filter.result.as_deref(), Some("failure"));
        let e = filter_of(Some(&f), "actor:user:bob").unwrap_err();
        assert!(e.to_string().starts_with("query"), "{e}");
        assert!(
            filter_of(None, "bogus:1")
                .unwrap_err()
                .to_string()
                .contains("position 1")
        );
    }
}
