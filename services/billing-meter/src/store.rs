//! What keel-billing keeps in PostgreSQL: raw usage events, window marks and meters.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::domain::meter::{self, MeterDef};
use crate::domain::usage::Checked;

/// Stores `events` (each claimed by its dedupe key in the same statement) and marks their
/// windows; returns, per event, whether it was new. One statement each, in `conn`'s transaction.
pub async fn insert(conn: &mut PgConnection, events: &[Checked]) -> sqlx::Result<Vec<bool>> {
    if events.is_empty() {
        return Ok(vec![]);
    }
    let col = |f: fn(&Checked) -> String| events.iter().map(f).collect::<Vec<_>>();
    // One statement: the rows (each claimed by its dedupe key) and the marks of the windows of
    // the rows that are new, atomically, in one round trip.
    let stored: Vec<(String, String, String)> = sqlx::query_as(
        "WITH ins AS ( \
             INSERT INTO usage_events (tenant_id, source, event_id, meter, meter_version, event_type, subject, \
                 valid_at, value, unique_key, group_key, properties) \
             SELECT t, s, i, m, mv, et, sj, va, v::numeric, u, g, p FROM UNNEST( \
                 $1::text[], $2::text[], $3::text[], $4::text[], $5::int4[], $6::text[], $7::text[], \
                 $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::jsonb[]) \
                 AS x(t, s, i, m, mv, et, sj, va, v, u, g, p) \
             ON CONFLICT (tenant_id, source, event_id) DO NOTHING \
             RETURNING tenant_id, source, event_id, meter, group_key, valid_at), \
         marks AS ( \
             INSERT INTO window_marks (tenant_id, meter, group_key, window_start) \
             SELECT DISTINCT tenant_id, meter, group_key, date_trunc('hour', valid_at, 'UTC') FROM ins \
             ON CONFLICT (tenant_id, meter, group_key, window_start) DO UPDATE \
             SET generation = window_marks.generation + 1, marked_at = now()) \
         SELECT tenant_id, source, event_id FROM ins",
    )
    .bind(col(|e| e.tenant_id.clone()))
    .bind(col(|e| e.source.clone()))
    .bind(col(|e| e.id.clone()))
    .bind(col(|e| e.meter.clone()))
    .bind(events.iter().map(|e| e.meter_version as i32).collect::<Vec<_>>())
    .bind(col(|e| e.event_type.clone()))
    .bind(col(|e| e.subject.clone()))
    .bind(events.iter().map(|e| e.time).collect::<Vec<_>>())
    .bind(col(|e| e.value.to_string()))
    .bind(events.iter().map(|e| e.unique_key.clone()).collect::<Vec<_>>())
    .bind(col(|e| e.group_key.clone()))
    .bind(events.iter().map(|e| e.properties.clone()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let stored: std::collections::HashSet<(String, String, String)> = stored.into_iter().collect();
    // Within one call the same key may appear twice: the first is the new one.
    let mut seen = std::collections::HashSet::new();
    Ok(events
        .iter()
        .map(|e| {
            let key = (e.tenant_id.clone(), e.source.clone(), e.id.clone());
            stored.contains(&key) && seen.insert(key)
        })
        .collect())
}

/// Every meter usage may name: the built-in ones and the custom ones defined so far.
pub async fn meters<'c>(db: impl sqlx::PgExecutor<'c>) -> sqlx::Result<BTreeMap<String, MeterDef>> {
    let rows: Vec<(serde_json::Value,)> = sqlx::query_as("SELECT definition FROM meters ORDER BY name")
        .fetch_all(db)
        .await?;
    Ok(meter::catalog(
        rows.into_iter()
            .filter_map(|(d,)| serde_json::from_value::<MeterDef>(d).ok()),
    ))
}

/// Stores a custom meter's current definition (from its aggregate), if newer than what is stored.
pub async fn save_meter(pool: &PgPool, def: &MeterDef) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO meters (name, definition, version) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, version = EXCLUDED.version \
         WHERE meters.version < EXCLUDED.version",
    )
    .bind(&def.name)
    .bind(serde_json::to_value(def).unwrap_or_default())
    .bind(def.version as i32)
    .execute(pool)
    .await?;
    Ok(())
}

/// A window waiting to be recorded.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Mark {
    pub tenant_id: String,
    pub meter: String,
    pub group_key: String,
    pub window_start: DateTime<Utc>,
    pub generation: i64,
}

/// Windows that closed before `closed_before` and changed since they were last recorded.
pub async fn due_marks(pool: &PgPool, closed_before: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<Mark>> {
    sqlx::query_as(
        "SELECT tenant_id, meter, group_key, window_start, generation FROM window_marks \
         WHERE window_start + interval '1 hour' <= $1 ORDER BY window_start LIMIT $2",
    )
    .bind(closed_before)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Clears `m` if no event changed its window since it was read.
pub async fn clear_mark(pool: &PgPool, m: &Mark) -> sqlx::Result<()> {
    sqlx::query(
        "DELETE FROM window_marks WHERE tenant_id = $1 AND meter = $2 AND group_key = $3 \
         AND window_start = $4 AND generation = $5",
    )
    .bind(&m.tenant_id)
    .bind(&m.meter)
    .bind(&m.group_key)
    .bind(m.window_start)
    .bind(m.generation)
    .execute(pool)
    .await?;
    Ok(())
}

/// The aggregate of one window's events as stored now: (value, events).
pub async fn window_value(conn: &mut PgConnection, m: &Mark, def: &MeterDef) -> sqlx::Result<(String, i64)> {
    let (value, events): (Option<String>, i64) = sqlx::query_as(&format!(
        "SELECT ({})::text, count(*) FROM usage_events WHERE tenant_id = $1 AND meter = $2 AND group_key = $3 \
         AND valid_at >= $4 AND valid_at < $4 + interval '1 hour'",
        aggregate_sql(def)
    ))
    .bind(&m.tenant_id)
    .bind(&m.meter)
    .bind(&m.group_key)
    .bind(m.window_start)
    .fetch_one(&mut *conn)
    .await?;
    Ok((normalise(value.as_deref().unwrap_or("0")), events))
}

/// The SQL aggregate of a meter over `usage_events` rows.
fn aggregate_sql(def: &MeterDef) -> &'static str {
    use crate::domain::meter::Aggregation::*;
    match def.aggregation {
        Sum => "COALESCE(sum(value), 0)",
        Count => "count(*)",
        Max => "max(value)",
        UniqueCount => "count(DISTINCT unique_key)",
        Latest => "(array_agg(value ORDER BY valid_at DESC, event_id DESC))[1]",
    }
}

/// A decimal as text without trailing zeros (`12.50` → `12.5`, `3.000` → `3`).
pub fn normalise(v: &str) -> String {
    use std::str::FromStr;
    rust_decimal::Decimal::from_str(v)
        .map(|d| d.normalize().to_string())
        .unwrap_or_else(|_| v.to_owned())
}

/// One bucket of a usage query.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Bucket {
    pub start: DateTime<Utc>,
    pub group_key: String,
    pub value: Option<String>,
    pub events: i64,
}

/// `meter`'s usage by `tenant` in [from, to) per `unit` (hour, day, month: UTC), counting only
/// events recorded at or before `as_of`. Runs in `conn` (a reader transaction of the tenant).
pub async fn usage(
    conn: &mut PgConnection,
    tenant: &str,
    def: &MeterDef,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
    unit: &str,
    as_of: DateTime<Utc>,
) -> sqlx::Result<Vec<Bucket>> {
    let unit = match unit {
        "day" | "month" => unit,
        _ => "hour",
    };
    sqlx::query_as(&format!(
        "SELECT date_trunc('{unit}', valid_at, 'UTC') AS start, group_key, ({})::text AS value, count(*) AS events \
         FROM usage_events WHERE tenant_id = $1 AND meter = $2 AND valid_at >= $3 AND valid_at < $4 \
         AND recorded_at <= $5 GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 10000",
        aggregate_sql(def)
    ))
    .bind(tenant)
    .bind(&def.name)
    .bind(from)
    .bind(to)
    .bind(as_of)
    .fetch_all(conn)
    .await
}
