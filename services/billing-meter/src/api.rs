//! MeterService: check everything, authorize, then store or read.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, TimeZone, Utc};
use keel_auth::claims::scopes;
use keel_proto::v1 as pb;
use keel_proto::v1::meter_service_server::MeterService;
use keel_runtime::status::invalid_argument;
use keel_store::audit::AuditLog;
use keel_store::{Framework, Metadata};
use sqlx::PgPool;
use tonic::{Request, Response, Status};

use crate::domain::meter::{Aggregation, Definition, Meter, MeterCommand, MeterDef};
use crate::domain::usage::{self, MAX_EVENTS, UsageInput};
use crate::store;

/// The tenant id of events about the platform itself (meter definitions).
pub const PLATFORM: &str = "platform";

pub struct MeterApi {
    pub pool: PgPool,
    pub meters: Framework<Meter>,
    pub audit: AuditLog,
    pub lateness: chrono::Duration,
    pub prices: crate::prices::PriceTable,
    /// The meters, read again at most every [`METERS_TTL`] (a meter defined on another replica
    /// is known here within it; one defined here at once).
    pub meter_cache: tokio::sync::RwLock<Option<(std::time::Instant, Meters)>>,
}

/// Every meter by name, shared by the calls that read it.
pub type Meters = std::sync::Arc<BTreeMap<String, MeterDef>>;

/// How long the meters read for a call stay in use.
pub const METERS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// `YYYY-MM` as [start, end) in UTC; empty: the current month.
pub fn month_range(month: &str, field: &str) -> Result<(DateTime<Utc>, DateTime<Utc>, String), Status> {
    use chrono::Datelike;
    let (y, m) = if month.is_empty() {
        let now = Utc::now();
        (now.year(), now.month())
    } else {
        let bad = || invalid_argument(field, "YYYY-MM");
        let (y, m) = month.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?)
    };
    let start = Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .filter(|_| (2000..=2200).contains(&y))
        .ok_or_else(|| invalid_argument(field, "a month between 2000-01 and 2200-12"))?;
    let end = if m == 12 {
        Utc.with_ymd_and_hms(y + 1, 1, 1, 0, 0, 0).single()
    } else {
        Utc.with_ymd_and_hms(y, m + 1, 1, 0, 0, 0).single()
    }
    .ok_or_else(|| invalid_argument(field, "a month"))?;
    Ok((start, end, format!("{y:04}-{m:02}")))
}

fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

fn from_ts(field: &str, t: &prost_types::Timestamp) -> Result<DateTime<Utc>, Status> {
    u32::try_from(t.nanos)
        .ok()
        .and_then(|n| Utc.timestamp_opt(t.seconds, n).single())
        .ok_or_else(|| invalid_argument(field, "is not a valid timestamp"))
}

fn aggregation_of(a: pb::Aggregation) -> Option<Aggregation> {
    Some(match a {
        pb::Aggregation::Sum => Aggregation::Sum,
        pb::Aggregation::Count => Aggregation::Count,
        pb::Aggregation::Max => Aggregation::Max,
        pb::Aggregation::UniqueCount => Aggregation::UniqueCount,
        pb::Aggregation::Latest => Aggregation::Latest,
        pb::Aggregation::Unspecified => return None,
    })
}

fn aggregation_pb(a: Aggregation) -> pb::Aggregation {
    match a {
        Aggregation::Sum => pb::Aggregation::Sum,
        Aggregation::Count => pb::Aggregation::Count,
        Aggregation::Max => pb::Aggregation::Max,
        Aggregation::UniqueCount => pb::Aggregation::UniqueCount,
        Aggregation::Latest => pb::Aggregation::Latest,
    }
}

fn meter_pb(m: &MeterDef) -> pb::Meter {
    pb::Meter {
        name: m.name.clone(),
        description: m.description.clone(),
        aggregation: aggregation_pb(m.aggregation) as i32,
        group_by: m.group_by.clone(),
        unit: m.unit.clone(),
        version: m.version,
        builtin: m.builtin,
        value_property: m.value_property.clone().unwrap_or_default(),
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    keel_runtime::status::internal(&e)
}

impl MeterApi {
    async fn meters(&self) -> Result<Meters, Status> {
        if let Some((at, m)) = self.meter_cache.read().await.as_ref()
            && at.elapsed() < METERS_TTL
        {
            return Ok(m.clone());
        }
        let fresh = std::sync::Arc::new(store::meters(&self.pool).await.map_err(internal)?);
        *self.meter_cache.write().await = Some((std::time::Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    async fn authorize<T>(
        &self,
        req: &Request<T>,
        scope: &str,
        tenant: &str,
        action: &str,
    ) -> Result<(), Status> {
        keel_auth::audit::authorize(&self.audit, "billing", action, req, scope, tenant).await
    }
}

#[tonic::async_trait]
impl MeterService for MeterApi {
    async fn record_usage(
        &self,
        req: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let events = &req.get_ref().events;
        if events.is_empty() || events.len() > MAX_EVENTS {
            return Err(invalid_argument(
                "events",
                &format!("1..={MAX_EVENTS} events per call"),
            ));
        }
        // Every event checked before anything is stored or anyone authorized: the first bad
        // one refuses the call, naming its index and field.
        let meters = self.meters().await?;
        let now = Utc::now();
        let mut checked = Vec::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            let time = match &e.time {
                Some(t) => Some(from_ts(&format!("events[{i}].time"), t)?),
                None => None,
            };
            let input = UsageInput {
                id: e.id.clone(),
                source: e.source.clone(),
                event_type: e.r#type.clone(),
                subject: e.subject.clone(),
                time,
                tenant_id: e.tenant_id.clone(),
                meter: e.meter.clone(),
                value: e.value.clone(),
                properties: e.properties.clone().into_iter().collect(),
            };
            let c = usage::check(&input, &meters, now, self.lateness)
                .map_err(|bad| invalid_argument(&format!("events[{i}].{}", bad.field), &bad.reason))?;
            checked.push(c);
        }
        let tenants: HashSet<&str> = checked.iter().map(|c| c.tenant_id.as_str()).collect();
        let mut tenants: Vec<&str> = tenants.into_iter().collect();
        tenants.sort_unstable();
        for t in tenants {
            self.authorize(&req, scopes::USAGE_WRITE, t, "usage-record")
                .await?;
        }
        // One statement (rows and window marks together): atomic without a transaction of its own.
        let mut conn = self.pool.acquire().await.map_err(internal)?;
        let fresh = store::insert(&mut conn, &checked).await.map_err(internal)?;
        drop(conn);
        let results: Vec<pb::UsageResult> = checked
            .iter()
            .zip(&fresh)
            .enumerate()
            .map(|(i, (c, f))| pb::UsageResult {
                index: i as u32,
                id: c.id.clone(),
                status: if *f { "accepted" } else { "duplicate" }.into(),
            })
            .collect();
        let accepted = fresh.iter().filter(|f| **f).count() as u32;
        Ok(Response::new(pb::RecordUsageResponse {
            accepted,
            duplicates: results.len() as u32 - accepted,
            results,
        }))
    }

    async fn create_meter(
        &self,
        req: Request<pb::CreateMeterRequest>,
    ) -> Result<Response<pb::Meter>, Status> {
        keel_auth::principal::from_request(&req)?.require_operator()?;
        let r = req.get_ref();
        let aggregation = aggregation_of(r.aggregation())
            .ok_or_else(|| invalid_argument("aggregation", "SUM, COUNT, MAX, UNIQUE_COUNT or LATEST"))?;
        let definition = Definition {
            name: r.name.clone(),
            description: r.description.clone(),
            aggregation,
            group_by: r.group_by.clone(),
            unit: r.unit.clone(),
            value_property: Some(r.value_property.clone()).filter(|p| !p.is_empty()),
        };
        crate::domain::meter::check_definition(&definition).map_err(|(f, why)| invalid_argument(f, &why))?;
        let actor = keel_auth::principal::from_request(&req)?.actor();
        self.meters
            .execute_with_metadata(
                &r.name,
                MeterCommand::Define {
                    definition,
                    at: Utc::now(),
                },
                Metadata::new(PLATFORM, &actor).into_map(),
            )
            .await
            .map_err(|e| match e {
                cqrs_es::AggregateError::UserError(e) => invalid_argument("meter", &e.to_string()),
                cqrs_es::AggregateError::AggregateConflict => keel_runtime::status::aborted(
                    "the meter changed meanwhile; try again",
                    std::time::Duration::from_millis(100),
                ),
                other => internal(other),
            })?;
        let (meter, _) =
            keel_store::rls::load::<Meter>(&mut *self.pool.acquire().await.map_err(internal)?, &r.name)
                .await
                .map_err(internal)?;
        let def = meter.def().ok_or_else(|| internal("the meter was not stored"))?;
        store::save_meter(&self.pool, &def).await.map_err(internal)?;
        *self.meter_cache.write().await = None;
        Ok(Response::new(meter_pb(&def)))
    }

    async fn list_meters(
        &self,
        req: Request<pb::ListMetersRequest>,
    ) -> Result<Response<pb::ListMetersResponse>, Status> {
        let p = keel_auth::principal::from_request(&req)?;
        if !(p.is_operator() || p.holds(scopes::BILLING_READ) || p.holds(scopes::USAGE_WRITE)) {
            return Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing scope {}", scopes::BILLING_READ),
            ));
        }
        let meters = self.meters().await?;
        Ok(Response::new(pb::ListMetersResponse {
            meters: meters.values().map(meter_pb).collect(),
        }))
    }

    async fn get_usage(
        &self,
        req: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        let r = req.get_ref();
        if !keel_events::subjects::is_valid_token(&r.tenant_id) {
            return Err(invalid_argument("tenant_id", "a tenant id"));
        }
        let from = from_ts(
            "from",
            r.from
                .as_ref()
                .ok_or_else(|| invalid_argument("from", "required"))?,
        )?;
        let to = from_ts(
            "to",
            r.to.as_ref().ok_or_else(|| invalid_argument("to", "required"))?,
        )?;
        if to <= from || to - from > chrono::Duration::days(400) {
            return Err(invalid_argument("to", "after from, at most 400 days later"));
        }
        let as_of = match &r.as_recorded_at {
            Some(t) => from_ts("as_recorded_at", t)?,
            None => Utc::now(),
        };
        let unit = match r.granularity() {
            pb::Granularity::Unspecified | pb::Granularity::Hour => "hour",
            pb::Granularity::Day => "day",
            pb::Granularity::Month => "month",
        };
        self.authorize(&req, scopes::BILLING_READ, &r.tenant_id, "usage-get")
            .await?;
        let meters = self.meters().await?;
        let def = meters
            .get(&r.meter)
            .ok_or_else(|| invalid_argument("meter", "unknown meter"))?;
        // As the tenant's reader: row-level security is the second wall.
        let mut tx = keel_store::rls::reader(&self.pool, "keel_billing_reader", &r.tenant_id)
            .await
            .map_err(internal)?;
        let buckets = store::usage(&mut tx, &r.tenant_id, def, (from, to), unit, as_of)
            .await
            .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        Ok(Response::new(pb::GetUsageResponse {
            meter: def.name.clone(),
            aggregation: aggregation_pb(def.aggregation) as i32,
            buckets: buckets
                .into_iter()
                .map(|b| pb::UsageBucket {
                    start: Some(ts(b.start)),
                    group: serde_json::from_str::<BTreeMap<String, String>>(&b.group_key)
                        .unwrap_or_default()
                        .into_iter()
                        .collect(),
                    value: store::normalise(b.value.as_deref().unwrap_or("0")),
                    events: u64::try_from(b.events).unwrap_or(0),
                })
                .collect(),
        }))
    }

    async fn estimate_cost(
        &self,
        req: Request<pb::EstimateCostRequest>,
    ) -> Result<Response<pb::CostEstimate>, Status> {
        use std::str::FromStr;
        let r = req.get_ref();
        if !keel_events::subjects::is_valid_token(&r.tenant_id) {
            return Err(invalid_argument("tenant_id", "a tenant id"));
        }
        let (from, to, month) = month_range(&r.month, "month")?;
        self.authorize(&req, scopes::BILLING_READ, &r.tenant_id, "cost-estimate")
            .await?;
        let mut tx = keel_store::rls::reader(&self.pool, "keel_billing_reader", &r.tenant_id)
            .await
            .map_err(internal)?;
        let tier: Option<String> = sqlx::query_scalar("SELECT tier FROM tenant_info WHERE tenant_id = $1")
            .bind(&r.tenant_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(internal)?;
        let tier = tier.ok_or_else(|| {
            keel_runtime::status::failed_precondition(
                "TENANT_UNKNOWN",
                "billing has not seen this tenant's creation yet",
            )
        })?;
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT meter, sum(value)::text FROM usage_events WHERE tenant_id = $1 AND meter = ANY($2) \
             AND valid_at >= $3 AND valid_at < $4 GROUP BY meter",
        )
        .bind(&r.tenant_id)
        .bind(crate::prices::BILLED.map(str::to_owned).to_vec())
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await
        .map_err(internal)?;
        tx.commit().await.map_err(internal)?;
        let usage: BTreeMap<String, rust_decimal::Decimal> = rows
            .into_iter()
            .filter_map(|(m, v)| Some((m, rust_decimal::Decimal::from_str(&v).ok()?)))
            .collect();
        let prices = self
            .prices
            .tiers
            .get(&tier)
            .ok_or_else(|| internal(format!("no prices for tier {tier}")))?;
        let committed = keel_tenancy::Tier::parse(&tier)
            .is_some_and(|t| t.entitlements().pricing == keel_tenancy::tier::Pricing::Committed);
        let (lines, total) = crate::prices::estimate(prices, committed, &usage);
        Ok(Response::new(pb::CostEstimate {
            tenant_id: r.tenant_id.clone(),
            tier,
            month,
            currency: self.prices.currency.clone(),
            base_fee: prices.base_fee.normalize().to_string(),
            lines: lines
                .into_iter()
                .map(|l| pb::CostLine {
                    meter: l.meter,
                    quantity: l.quantity.normalize().to_string(),
                    unit: l.unit.into(),
                    unit_price: l.unit_price.normalize().to_string(),
                    amount: l.amount.to_string(),
                    committed: l.committed.map(|c| c.normalize().to_string()).unwrap_or_default(),
                    over_commitment: l.over,
                })
                .collect(),
            total: total.to_string(),
            committed,
        }))
    }

    async fn reconcile(
        &self,
        req: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileResponse>, Status> {
        keel_auth::principal::from_request(&req)?.require_operator()?;
        let r = req.get_ref();
        if r.month.is_empty() {
            return Err(invalid_argument("month", "required: YYYY-MM"));
        }
        let (from, to, month) = month_range(&r.month, "month")?;
        if !r.tenant_id.is_empty() && !keel_events::subjects::is_valid_token(&r.tenant_id) {
            return Err(invalid_argument("tenant_id", "a tenant id"));
        }
        type Row = (String, String, i64, i64, i64, String, String, Vec<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "WITH recs AS ( \
                 SELECT DISTINCT ON (aggregate_id) tenant_id, payload->'UsageRecorded' AS r FROM events \
                 WHERE event_type = 'UsageRecorded' AND ($3 = '' OR tenant_id = $3) \
                   AND (payload->'UsageRecorded'->>'window_start')::timestamptz >= $1 \
                   AND (payload->'UsageRecorded'->>'window_start')::timestamptz < $2 \
                 ORDER BY aggregate_id, sequence DESC) \
             SELECT recs.tenant_id, recs.r->>'meter', count(*), count(x.record_id), count(x.message_id), \
                 COALESCE(sum((recs.r->>'quantity')::numeric), 0)::text, \
                 COALESCE(sum(x.quantity) FILTER (WHERE x.message_id IS NOT NULL), 0)::text, \
                 COALESCE((array_agg(recs.r->>'record_id' ORDER BY recs.r->>'record_id') \
                     FILTER (WHERE x.message_id IS NULL))[1:100], '{}') \
             FROM recs LEFT JOIN usage_exports x ON x.record_id = recs.r->>'record_id' \
             GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .bind(from)
        .bind(to)
        .bind(&r.tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(internal)?;
        Ok(Response::new(pb::ReconcileResponse {
            month,
            rows: rows
                .into_iter()
                .map(
                    |(tenant_id, meter, recorded, exported, acknowledged, rq, eq, missing)| {
                        pb::ReconcileRow {
                            tenant_id,
                            meter,
                            recorded: recorded as u64,
                            exported: exported as u64,
                            acknowledged: acknowledged as u64,
                            recorded_quantity: store::normalise(&rq),
                            exported_quantity: store::normalise(&eq),
                            missing,
                        }
                    },
                )
                .collect(),
        }))
    }
}
