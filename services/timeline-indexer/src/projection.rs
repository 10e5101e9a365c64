//! The two projections that fill the timeline: domain events from KEEL_EVENTS and audit records
//! from KEEL_AUDIT. A message that cannot be read becomes a DLQ entry (the runner does that
//! with the parse error as reason) and is counted; it never stops the projection.

use async_trait::async_trait;
use keel_store::projection::{ApplyError, Projection};
use prometheus::IntCounterVec;
use sqlx::PgConnection;

use crate::domain::TimelineRow;
use crate::store::{Live, insert_rows};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Events,
    Audit,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Events => "events",
            Source::Audit => "audit",
        }
    }
}

pub struct TimelineProjection {
    name: String,
    source: Source,
    table: Live,
    malformed: IntCounterVec,
}

impl TimelineProjection {
    /// `generation` names the durable consumer: a rebuild reads with a fresh one from the start.
    pub fn new(source: Source, generation: i32, table: Live, malformed: IntCounterVec) -> Self {
        Self {
            name: format!("timeline-{}-g{generation}", source.as_str()),
            source,
            table,
            malformed,
        }
    }
}

#[async_trait]
impl Projection for TimelineProjection {
    type Item = TimelineRow;

    fn name(&self) -> &str {
        &self.name
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<TimelineRow, String> {
        let row = match self.source {
            Source::Events => keel_store::projection::decode_envelope(subject, payload)
                .map(|e| TimelineRow::from_envelope(&e)),
            Source::Audit => serde_json::from_slice(payload)
                .map_err(|e| format!("malformed audit record: {e}"))
                .and_then(|v| audit_provenance(subject, &v).map(|()| v))
                .and_then(|v| TimelineRow::from_audit(&v)),
        };
        if row.is_err() {
            self.malformed.with_label_values(&[self.source.as_str()]).inc();
        }
        row
    }

    async fn apply(&self, conn: &mut PgConnection, item: &TimelineRow) -> Result<(), ApplyError> {
        self.apply_batch(conn, &[item]).await
    }

    async fn apply_batch(&self, conn: &mut PgConnection, items: &[&TimelineRow]) -> Result<(), ApplyError> {
        let (table, _) = self.table.get();
        if self.table.follows() {
            // Shared with every writer of the live table, exclusive with a rebuild's swap: once
            // a swap commits, the replaced table is frozen. A replica that has not followed the
            // swap yet writes nothing; the new generation's consumers read the same messages.
            let live: String =
                sqlx::query_scalar("SELECT live_table FROM timeline_state WHERE id = 1 FOR SHARE")
                    .fetch_one(&mut *conn)
                    .await?;
            if live != table {
                return Ok(());
            }
        }
        insert_rows(conn, &table, items)
            .await
            .map_err(|e| e.into_apply())?;
        // Open tails of these tenants wake when (and only if) this transaction commits.
        let mut tenants: Vec<&str> = items.iter().map(|r| r.tenant_id.as_str()).collect();
        tenants.sort_unstable();
        tenants.dedup();
        sqlx::query("SELECT pg_notify('keel_tail_' || current_schema(), t) FROM unnest($1::text[]) AS t")
            .bind(&tenants)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Empties the table and the tenant policies the rows set: a reset replays both sources
    /// from their start (a rebuild does not reset: it fills a new generation's table).
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ApplyError> {
        let (table, _) = self.table.get();
        crate::store::ddl::check_name(&table).map_err(|e| e.into_apply())?;
        sqlx::query(&format!("TRUNCATE {table}, tenant_policies"))
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// An audit record must agree with the subject it arrived on (tenant and service), or anyone
/// who can publish could write into another tenant's timeline.
fn audit_provenance(subject: &str, record: &serde_json::Value) -> Result<(), String> {
    let Some((tenant, service, _)) = keel_events::subjects::parse_audit(subject) else {
        return Err(format!("provenance: {subject:?} is not an audit subject"));
    };
    let field = |k: &str| {
        record
            .get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    };
    if (field("tenant"), field("service")) != (tenant, service) {
        return Err(format!(
            "provenance: subject names tenant {tenant:?}, service {service:?}; the record says tenant {:?}, service {:?}",
            field("tenant"),
            field("service")
        ));
    }
    Ok(())
}
