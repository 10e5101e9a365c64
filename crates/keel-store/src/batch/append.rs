//! Appends of several commands in one `INSERT … SELECT FROM UNNEST` (one round trip, one commit).
//!
//! Each command's events must be stored all together or not at all, and a command whose
//! sequence is already taken must get `OptimisticLockError`, exactly as if it had run alone:
//! - two commands of one group that claim the same `(aggregate_type, aggregate_id, sequence)`
//!   are settled in memory: the first one queued goes into the statement, the others wait for
//!   its outcome;
//! - if the statement fails (typically a unique violation on `events_pkey`: some command
//!   conflicts with a row already stored), nothing of the group was stored, and every command
//!   of the group runs again on its own, so each gets its own outcome.

use std::collections::HashSet;
use std::ops::Range;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{Grouped, Pending, shared_error};
use crate::metadata;
use crate::repository::db_error;

const INSERT_EVENTS: &str = "INSERT INTO events \
     (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::jsonb[], $9::jsonb[])";

/// The same, with the audit records of the commands in the same statement (a data-modifying
/// CTE: both inserts commit together or not at all, in one transaction id).
const INSERT_EVENTS_AND_AUDIT: &str = "WITH appended AS (INSERT INTO events \
     (event_id, tenant_id, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
     SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::jsonb[], $9::jsonb[])) \
     INSERT INTO audit_outbox (record_id, tenant_id, record) \
     SELECT * FROM UNNEST($10::uuid[], $11::text[], $12::jsonb[])";

/// The columns of rows to insert, one `Vec` per column as `UNNEST` takes them, and the audit
/// records that go with them (each attached to its command's first row).
#[derive(Debug, Default)]
pub(crate) struct Columns {
    audit_at: Vec<usize>,
    audit_ids: Vec<Uuid>,
    audit_tenants: Vec<String>,
    audit_records: Vec<Value>,
    ids: Vec<Uuid>,
    tenants: Vec<String>,
    agg_types: Vec<String>,
    agg_ids: Vec<String>,
    seqs: Vec<i64>,
    types: Vec<String>,
    versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
}

impl Columns {
    /// Checks and copies the events of one command; refuses events without a tenant.
    pub fn from_events(events: &[SerializedEvent]) -> Result<Self, PersistenceError> {
        let mut c = Columns::default();
        for e in events {
            let tenant = e
                .metadata
                .get(metadata::TENANT_ID)
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    PersistenceError::UnknownError(Box::new(crate::Error::MissingMetadata("tenant_id")))
                })?;
            c.ids.push(Uuid::now_v7());
            c.tenants.push(tenant.to_owned());
            c.agg_types.push(e.aggregate_type.clone());
            c.agg_ids.push(e.aggregate_id.clone());
            c.seqs
                .push(i64::try_from(e.sequence).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?);
            c.types.push(e.event_type.clone());
            c.versions.push(e.event_version.clone());
            c.payloads.push(e.payload.clone());
            c.metadata.push(e.metadata.clone());
        }
        Ok(c)
    }

    /// Attaches a command's audit record to its rows (see [`crate::audit`]).
    pub fn with_audit(mut self, row: Option<crate::audit::Row>) -> Self {
        if let Some(row) = row
            && !self.ids.is_empty()
        {
            self.audit_at.push(0);
            self.audit_ids.push(row.id);
            self.audit_tenants.push(row.tenant);
            self.audit_records.push(row.record);
        }
        self
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    fn append(&mut self, mut other: Columns) -> Range<usize> {
        let start = self.len();
        self.audit_at.extend(other.audit_at.iter().map(|i| i + start));
        self.audit_ids.append(&mut other.audit_ids);
        self.audit_tenants.append(&mut other.audit_tenants);
        self.audit_records.append(&mut other.audit_records);
        self.ids.append(&mut other.ids);
        self.tenants.append(&mut other.tenants);
        self.agg_types.append(&mut other.agg_types);
        self.agg_ids.append(&mut other.agg_ids);
        self.seqs.append(&mut other.seqs);
        self.types.append(&mut other.types);
        self.versions.append(&mut other.versions);
        self.payloads.append(&mut other.payloads);
        self.metadata.append(&mut other.metadata);
        start..self.len()
    }

    fn key(&self, i: usize) -> (&str, &str, i64) {
        (&self.agg_types[i], &self.agg_ids[i], self.seqs[i])
    }

    /// Inserts rows `range` in one statement: all of them or none. On a pool the statement
    /// commits on its own; on a transaction's connection it is part of that transaction.
    pub async fn insert<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        r: Range<usize>,
    ) -> Result<(), sqlx::Error> {
        let audits: Vec<usize> = (0..self.audit_at.len())
            .filter(|&k| r.contains(&self.audit_at[k]))
            .collect();
        let sql = if audits.is_empty() {
            INSERT_EVENTS
        } else {
            INSERT_EVENTS_AND_AUDIT
        };
        let mut q = sqlx::query(sql)
            .bind(&self.ids[r.clone()])
            .bind(&self.tenants[r.clone()])
            .bind(&self.agg_types[r.clone()])
            .bind(&self.agg_ids[r.clone()])
            .bind(&self.seqs[r.clone()])
            .bind(&self.types[r.clone()])
            .bind(&self.versions[r.clone()])
            .bind(&self.payloads[r.clone()])
            .bind(&self.metadata[r]);
        if !audits.is_empty() {
            let pick = |k: &usize| *k;
            q = q
                .bind(audits.iter().map(|k| self.audit_ids[pick(k)]).collect::<Vec<_>>())
                .bind(
                    audits
                        .iter()
                        .map(|k| self.audit_tenants[pick(k)].clone())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    audits
                        .iter()
                        .map(|k| self.audit_records[pick(k)].clone())
                        .collect::<Vec<_>>(),
                );
        }
        q.execute(db).await?;
        Ok(())
    }
}

/// The events of one command, checked and ready to insert.
pub(crate) struct Append(pub Columns);

type Reply = oneshot::Sender<Result<(), PersistenceError>>;
/// A command's rows in the group and its caller.
type Waiting = (Range<usize>, Reply);

impl Grouped for Append {
    type Output = ();

    fn weight(&self) -> usize {
        self.0.len()
    }

    async fn run(pool: PgPool, group: Vec<Pending<Self>>) {
        // Who goes into the statement: a command none of whose keys an earlier one claimed.
        let wins: Vec<bool> = {
            let mut claimed = HashSet::new();
            group
                .iter()
                .map(|p| {
                    let c = &p.request.0;
                    let free = (0..c.len()).all(|i| !claimed.contains(&c.key(i)));
                    if free {
                        claimed.extend((0..c.len()).map(|i| c.key(i)));
                    }
                    free
                })
                .collect()
        };
        // Winners' rows first, so that they form one range.
        let mut rows = Columns::default();
        let (mut winners, mut losers): (Vec<Waiting>, Vec<Waiting>) = (vec![], vec![]);
        let (won, lost): (Vec<_>, Vec<_>) = group.into_iter().zip(wins).partition(|(_, w)| *w);
        for (p, _) in won {
            winners.push((rows.append(p.request.0), p.reply));
        }
        let won_rows = 0..rows.len();
        for (p, _) in lost {
            losers.push((rows.append(p.request.0), p.reply));
        }
        let alone = winners.len() + losers.len() == 1;
        match rows.insert(&pool, won_rows).await {
            Ok(()) => {
                for (_, reply) in winners {
                    let _ = reply.send(Ok(()));
                }
                // Each loser's sequence is now taken by a winner's committed row.
                for (_, reply) in losers {
                    let _ = reply.send(Err(PersistenceError::OptimisticLockError));
                }
            }
            Err(e) if alone => {
                if let Some((_, reply)) = winners.pop() {
                    let _ = reply.send(Err(db_error(e)));
                }
            }
            Err(sqlx::Error::Database(_)) => {
                // Nothing of the group was stored. Every command runs again on its own: winners
                // side by side (their keys are distinct), then losers against what winners left.
                let (pool, rows) = (&pool, &rows);
                let run_alone = |(range, reply): Waiting| async move {
                    let _ = reply.send(rows.insert(pool, range).await.map_err(db_error));
                };
                futures::future::join_all(winners.into_iter().map(run_alone)).await;
                futures::future::join_all(losers.into_iter().map(run_alone)).await;
            }
            Err(e) => {
                // The outcome is unknown (connection lost mid-statement): every caller hears so.
                for (_, reply) in winners.into_iter().chain(losers) {
                    let _ = reply.send(Err(shared_error(&e)));
                }
            }
        }
    }
}
