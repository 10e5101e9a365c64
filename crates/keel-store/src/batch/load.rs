//! Loads of several aggregates' events in one `SELECT`.
//!
//! Each request is `(aggregate_type, aggregate_id, after)`; the group asks once per aggregate for
//! the events after the smallest `after` asked for it, and gives each caller its own slice. The
//! statement starts after every request of its group was queued, so a caller never gets an
//! answer older than its call.

use std::collections::HashMap;

use cqrs_es::persist::{PersistenceError, SerializedEvent};
use sqlx::PgPool;

use super::{Grouped, Pending, shared_error};
use crate::repository::{db_error, row_to_event};

pub(crate) const SELECT_EVENTS: &str = "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata \
     FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence";

const SELECT_GROUP: &str = "SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata \
     FROM UNNEST($1::text[], $2::text[], $3::int8[]) WITH ORDINALITY AS k(aggregate_type, aggregate_id, after, n) \
     JOIN events e ON e.aggregate_type = k.aggregate_type AND e.aggregate_id = k.aggregate_id AND e.sequence > k.after \
     ORDER BY k.n, e.sequence";

/// The events of one aggregate after sequence `after`.
pub(crate) struct Load {
    pub aggregate_type: &'static str,
    pub aggregate_id: String,
    pub after: i64,
}

impl Load {
    async fn alone(&self, pool: &PgPool) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let rows = sqlx::query(SELECT_EVENTS)
            .bind(self.aggregate_type)
            .bind(&self.aggregate_id)
            .bind(self.after)
            .fetch_all(pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(row_to_event).collect()
    }
}

impl Grouped for Load {
    type Output = Vec<SerializedEvent>;

    fn weight(&self) -> usize {
        1
    }

    async fn run(pool: PgPool, mut group: Vec<Pending<Self>>) {
        if group.len() == 1
            && let Some(only) = group.pop()
        {
            let outcome = only.request.alone(&pool).await;
            only.answer(outcome);
            return;
        }
        // One key per aggregate, with the smallest `after` any caller asked for.
        let mut keys: HashMap<(&str, &str), usize> = HashMap::new();
        let (mut types, mut ids, mut afters) = (Vec::new(), Vec::new(), Vec::<i64>::new());
        for p in &group {
            let r = &p.request;
            match keys.get(&(r.aggregate_type, r.aggregate_id.as_str())) {
                Some(&k) => afters[k] = afters[k].min(r.after),
                None => {
                    keys.insert((r.aggregate_type, r.aggregate_id.as_str()), types.len());
                    types.push(r.aggregate_type);
                    ids.push(r.aggregate_id.as_str());
                    afters.push(r.after);
                }
            }
        }
        let rows = sqlx::query(SELECT_GROUP)
            .bind(&types)
            .bind(&ids)
            .bind(&afters)
            .fetch_all(&pool)
            .await;
        let mut events: Vec<Vec<SerializedEvent>> = (0..types.len()).map(|_| Vec::new()).collect();
        let decoded = rows.map_err(|e| shared_error(&e)).and_then(|rows| {
            for row in &rows {
                let e = row_to_event(row)?;
                let k = keys[&(e.aggregate_type.as_str(), e.aggregate_id.as_str())];
                events[k].push(e);
            }
            Ok(())
        });
        if decoded.is_err() {
            // Give every caller the outcome it would have had alone.
            let pool = &pool;
            futures::future::join_all(group.into_iter().map(|p| async move {
                let outcome = p.request.alone(pool).await;
                p.answer(outcome);
            }))
            .await;
            return;
        }
        // Callers of the same aggregate share its rows; the last one takes them, the others copy.
        let mut remaining = vec![0usize; types.len()];
        let slots: Vec<usize> = group
            .iter()
            .map(|p| keys[&(p.request.aggregate_type, p.request.aggregate_id.as_str())])
            .collect();
        for &k in &slots {
            remaining[k] += 1;
        }
        for (p, k) in group.into_iter().zip(slots) {
            remaining[k] -= 1;
            let after = p.request.after;
            let mine = if remaining[k] == 0 {
                let mut all = std::mem::take(&mut events[k]);
                all.retain(|e| i64::try_from(e.sequence).is_ok_and(|s| s > after));
                all
            } else {
                events[k]
                    .iter()
                    .filter(|e| i64::try_from(e.sequence).is_ok_and(|s| s > after))
                    .cloned()
                    .collect()
            };
            p.answer(Ok(mine));
        }
    }
}
