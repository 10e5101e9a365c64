//! Each aggregate's events applied in sequence, whatever order the bus delivers them in.
//!
//! JetStream redelivers a nak'ed message after its backoff, so a projection sees an aggregate's
//! event 3 before its event 2 whenever event 2 once failed; a last-writer-wins read model then
//! loses event 2 (or lets a late "hold placed" undo the "hold released" that followed it). A
//! projection that names each item's [`Position`] gets, instead:
//! - `projection_positions`: per aggregate (`stream`), the last sequence applied;
//! - an item at or below it is a duplicate and is skipped;
//! - the next one is applied, then any parked successors it unblocks, in order;
//! - one further ahead is *parked* (`projection_parked`, the raw message) and acked;
//! - a gap older than the projection's gap timeout is declared lost: the parked items after it
//!   are applied from the earliest, with a warning (an event dead-lettered before it could be
//!   read, or a stream whose early messages its retention removed, would otherwise block its
//!   aggregate for ever). The position moves past the gap only when the jump is plausible (the
//!   aggregate is new to the projection, or the gap is at most [`MAX_JUMP`]); an item far ahead
//!   of a known position (a producer's bug, or a forgery by someone holding the producer's bus
//!   credentials) is applied on its own and the position stays, so it cannot make the
//!   projection skip the real events that follow.
//!
//! An ordered projection must see every event of the aggregates it reads: filter its consumer by
//! service, never by event type, or each filtered-out sequence is a gap.
//!
//! Writers of one aggregate are serialised by a transaction-scoped advisory lock per stream
//! (taken in hash order, so two replicas of a projection cannot deadlock).

use std::collections::{HashMap, HashSet};

use keel_events::Envelope;
use sqlx::PgConnection;

/// The largest gap declared lost that moves a known aggregate's position past it.
pub const MAX_JUMP: i64 = 64;

/// Where an item stands in its aggregate's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// The aggregate: `<service>/<aggregate type>/<aggregate id>`.
    pub stream: String,
    /// Its sequence in the aggregate, from 1.
    pub sequence: i64,
}

impl Position {
    /// An envelope's place in its aggregate (none for a sequence that is 0 or out of range).
    pub fn of(e: &Envelope) -> Option<Self> {
        let sequence = i64::try_from(e.sequence).ok().filter(|s| *s > 0)?;
        Some(Self {
            stream: format!("{}/{}/{}", e.service(), e.aggregatetype, e.aggregateid),
            sequence,
        })
    }
}

pub(crate) fn migrator() -> sqlx::migrate::Migrator {
    sqlx::migrate!("./projection-migrations")
}

/// A message parked ahead of a gap.
#[derive(Clone, Debug, sqlx::FromRow)]
pub(crate) struct Parked {
    pub stream: String,
    pub sequence: i64,
    pub subject: String,
    pub payload: Vec<u8>,
}

/// Where an entry to apply comes from: the batch (by index) or the parked rows (by index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum From {
    Batch(usize),
    Parked(usize),
}

/// What happens to one positioned message of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Its turn: it is in [`Plan::ready`].
    Apply,
    /// Already applied (a redelivery): acked, nothing written.
    Skip,
    /// Ahead of a gap: stored in `projection_parked`, acked.
    Park,
}

/// What to do with one transaction's messages, decided from the stored positions.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Per batch index; `None` for a message without a position.
    pub verdicts: Vec<Option<Verdict>>,
    /// Entries to apply, in order (per stream, by sequence).
    pub ready: Vec<(String, i64, From)>,
    /// Parked entries to apply on their own, without moving their stream's position (an
    /// implausible jump past an overdue gap).
    pub detached: Vec<(String, i64, From)>,
    /// Parked rows that are duplicates of what is applied: delete them.
    pub stale: Vec<(String, i64)>,
    /// Streams whose gap was declared lost: (stream, last applied, first applied after it).
    pub gaps: Vec<(String, i64, i64)>,
}

/// Decides, without I/O: `applied` per stream, the batch's positions, the parked rows of the
/// same streams, and the streams whose gap is `overdue`.
pub(crate) fn plan(
    applied: &HashMap<String, i64>,
    batch: &[Option<Position>],
    parked: &[Parked],
    overdue: &HashSet<String>,
) -> Plan {
    let mut candidates: HashMap<&str, Vec<(i64, From)>> = HashMap::new();
    for (i, p) in batch.iter().enumerate() {
        if let Some(p) = p {
            candidates
                .entry(p.stream.as_str())
                .or_default()
                .push((p.sequence, From::Batch(i)));
        }
    }
    for (j, p) in parked.iter().enumerate() {
        candidates
            .entry(p.stream.as_str())
            .or_default()
            .push((p.sequence, From::Parked(j)));
    }
    let mut plan = Plan {
        verdicts: batch.iter().map(|p| p.as_ref().map(|_| Verdict::Skip)).collect(),
        ..Plan::default()
    };
    let mut streams: Vec<&str> = candidates.keys().copied().collect();
    streams.sort_unstable();
    for stream in streams {
        let mut entries = candidates.remove(stream).unwrap_or_default();
        // By sequence; a parked copy before a batch copy of the same sequence.
        entries.sort_by_key(|(seq, from)| (*seq, matches!(from, From::Batch(_))));
        let known = applied.get(stream).copied();
        let mut cur = known.unwrap_or(0);
        if overdue.contains(stream)
            && let Some(first) = entries.iter().map(|(s, _)| *s).find(|s| *s > cur)
            && first > cur + 1
        {
            plan.gaps.push((stream.to_owned(), cur, first));
            if known.is_none() || first - cur <= MAX_JUMP {
                cur = first - 1;
            } else {
                // The run of parked entries from `first`, applied apart; the position stays.
                let mut next = first;
                entries.retain(|(seq, from)| {
                    if *seq == next && matches!(from, From::Parked(_)) {
                        plan.detached.push((stream.to_owned(), *seq, *from));
                        next += 1;
                        false
                    } else {
                        true
                    }
                });
            }
        }
        for (seq, from) in entries {
            let verdict = if seq <= cur {
                Verdict::Skip
            } else if seq == cur + 1 {
                cur = seq;
                plan.ready.push((stream.to_owned(), seq, from));
                Verdict::Apply
            } else {
                Verdict::Park
            };
            match (from, verdict) {
                (From::Batch(i), v) => plan.verdicts[i] = Some(v),
                (From::Parked(_), Verdict::Skip) => plan.stale.push((stream.to_owned(), seq)),
                (From::Parked(_), _) => {}
            }
        }
    }
    plan
}

/// Takes the streams' locks (in hash order) and reads their positions and parked rows.
pub(crate) async fn load(
    conn: &mut PgConnection,
    projection: &str,
    streams: &[String],
) -> sqlx::Result<(HashMap<String, i64>, Vec<Parked>)> {
    sqlx::query(
        "SELECT pg_advisory_xact_lock(h) FROM ( \
             SELECT DISTINCT hashtextextended($1 || '|' || s, 0) AS h FROM unnest($2::text[]) s ORDER BY 1) locks",
    )
    .bind(projection)
    .bind(streams)
    .execute(&mut *conn)
    .await?;
    let applied: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream, applied FROM projection_positions WHERE projection = $1 AND stream = ANY($2)",
    )
    .bind(projection)
    .bind(streams)
    .fetch_all(&mut *conn)
    .await?;
    let parked: Vec<Parked> = sqlx::query_as(
        "SELECT stream, sequence, subject, payload FROM projection_parked \
         WHERE projection = $1 AND stream = ANY($2) ORDER BY stream, sequence",
    )
    .bind(projection)
    .bind(streams)
    .fetch_all(&mut *conn)
    .await?;
    Ok((applied.into_iter().collect(), parked))
}

/// A message to park: its position, tenant and raw form.
pub(crate) struct ToPark<'a> {
    pub stream: &'a str,
    pub sequence: i64,
    pub tenant: &'a str,
    pub subject: &'a str,
    pub payload: &'a [u8],
}

/// Stores what the transaction did: the streams' new positions, the parked rows it applied or
/// found stale, and the messages it parked.
pub(crate) async fn record(
    conn: &mut PgConnection,
    projection: &str,
    advanced: &HashMap<String, i64>,
    unparked: &[(String, i64)],
    park: &[ToPark<'_>],
) -> sqlx::Result<()> {
    if !advanced.is_empty() {
        let (streams, seqs): (Vec<&str>, Vec<i64>) = advanced.iter().map(|(s, q)| (s.as_str(), *q)).unzip();
        sqlx::query(
            "INSERT INTO projection_positions (projection, stream, applied) \
             SELECT $1, s, q FROM UNNEST($2::text[], $3::int8[]) AS u(s, q) \
             ON CONFLICT (projection, stream) DO UPDATE \
             SET applied = GREATEST(projection_positions.applied, EXCLUDED.applied), updated_at = now()",
        )
        .bind(projection)
        .bind(&streams)
        .bind(&seqs)
        .execute(&mut *conn)
        .await?;
    }
    if !unparked.is_empty() {
        let (streams, seqs): (Vec<&str>, Vec<i64>) = unparked.iter().map(|(s, q)| (s.as_str(), *q)).unzip();
        sqlx::query(
            "DELETE FROM projection_parked p USING UNNEST($2::text[], $3::int8[]) AS u(s, q) \
             WHERE p.projection = $1 AND p.stream = u.s AND p.sequence = u.q",
        )
        .bind(projection)
        .bind(&streams)
        .bind(&seqs)
        .execute(&mut *conn)
        .await?;
    }
    if !park.is_empty() {
        sqlx::query(
            "INSERT INTO projection_parked (projection, stream, sequence, tenant_id, subject, payload) \
             SELECT $1, * FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[], $6::bytea[]) \
             ON CONFLICT (projection, stream, sequence) DO NOTHING",
        )
        .bind(projection)
        .bind(park.iter().map(|p| p.stream).collect::<Vec<_>>())
        .bind(park.iter().map(|p| p.sequence).collect::<Vec<_>>())
        .bind(park.iter().map(|p| p.tenant).collect::<Vec<_>>())
        .bind(park.iter().map(|p| p.subject).collect::<Vec<_>>())
        .bind(park.iter().map(|p| p.payload).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Streams of `projection` with a message parked longer than `timeout` (at most `limit`).
pub(crate) async fn overdue(
    pool: &sqlx::PgPool,
    projection: &str,
    timeout: std::time::Duration,
    limit: i64,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT stream FROM projection_parked \
         WHERE projection = $1 AND parked_at < now() - make_interval(secs => $2) LIMIT $3",
    )
    .bind(projection)
    .bind(timeout.as_secs_f64())
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Forgets `projection`'s positions and parked messages (a reset replays from the start).
pub(crate) async fn forget(conn: &mut PgConnection, projection: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM projection_positions WHERE projection = $1")
        .bind(projection)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM projection_parked WHERE projection = $1")
        .bind(projection)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: &str, sequence: i64) -> Option<Position> {
        Some(Position {
            stream: stream.into(),
            sequence,
        })
    }

    fn parked(stream: &str, sequence: i64) -> Parked {
        Parked {
            stream: stream.into(),
            sequence,
            subject: String::new(),
            payload: vec![],
        }
    }

    #[test]
    fn a_shuffled_duplicated_batch_applies_each_stream_in_sequence_once() {
        let batch = [
            at("a", 3),
            at("a", 1),
            None,
            at("b", 1),
            at("a", 2),
            at("a", 1),
            at("a", 5),
        ];
        let p = plan(&HashMap::new(), &batch, &[], &HashSet::new());
        let order: Vec<(&str, i64)> = p.ready.iter().map(|(s, q, _)| (s.as_str(), *q)).collect();
        assert_eq!(order, [("a", 1), ("a", 2), ("a", 3), ("b", 1)]);
        use Verdict::*;
        assert_eq!(
            p.verdicts,
            [
                Some(Apply),
                Some(Apply),
                None,
                Some(Apply),
                Some(Apply),
                Some(Skip),
                Some(Park)
            ]
        );
    }

    #[test]
    fn what_is_applied_is_skipped_and_a_filled_gap_releases_the_parked() {
        let applied = HashMap::from([("a".to_owned(), 4)]);
        let rows = [parked("a", 4), parked("a", 6), parked("a", 7), parked("a", 9)];
        let p = plan(&applied, &[at("a", 5), at("a", 2)], &rows, &HashSet::new());
        assert_eq!(
            p.ready,
            [
                ("a".to_owned(), 5, From::Batch(0)),
                ("a".to_owned(), 6, From::Parked(1)),
                ("a".to_owned(), 7, From::Parked(2)),
            ]
        );
        assert_eq!(p.verdicts, [Some(Verdict::Apply), Some(Verdict::Skip)]);
        assert_eq!(p.stale, [("a".to_owned(), 4)]);
    }

    #[test]
    fn an_overdue_gap_is_declared_lost_and_what_follows_it_applied() {
        let rows = [parked("a", 3), parked("a", 4), parked("a", 6)];
        let p = plan(&HashMap::new(), &[], &rows, &HashSet::from(["a".to_owned()]));
        let order: Vec<i64> = p.ready.iter().map(|(_, q, _)| *q).collect();
        assert_eq!(order, [3, 4]);
        assert_eq!(p.gaps, [("a".to_owned(), 0, 3)]);
        // Not overdue: it waits.
        let waiting = plan(&HashMap::new(), &[], &rows, &HashSet::new());
        assert!(waiting.ready.is_empty() && waiting.gaps.is_empty());
    }

    #[test]
    fn an_implausible_jump_is_applied_apart_and_the_position_stays() {
        let applied = HashMap::from([("a".to_owned(), 4)]);
        let rows = [parked("a", 99), parked("a", 100)];
        let p = plan(&applied, &[], &rows, &HashSet::from(["a".to_owned()]));
        assert_eq!(
            p.detached,
            [
                ("a".to_owned(), 99, From::Parked(0)),
                ("a".to_owned(), 100, From::Parked(1))
            ]
        );
        assert!(p.ready.is_empty());
        // The real next event still follows the position, which stayed.
        let next = plan(&applied, &[at("a", 5)], &[], &HashSet::new());
        assert_eq!(next.ready, [("a".to_owned(), 5, From::Batch(0))]);
        // A new aggregate's first event far ahead moves the position (its start expired).
        let fresh = plan(&HashMap::new(), &[], &rows, &HashSet::from(["a".to_owned()]));
        assert_eq!(fresh.ready.len(), 2);
        assert!(fresh.detached.is_empty());
    }

    #[test]
    fn a_batch_copy_of_a_parked_message_is_a_duplicate() {
        let applied = HashMap::from([("a".to_owned(), 1)]);
        let p = plan(
            &applied,
            &[at("a", 3), at("a", 2)],
            &[parked("a", 3)],
            &HashSet::new(),
        );
        assert_eq!(
            p.ready,
            [
                ("a".to_owned(), 2, From::Batch(1)),
                ("a".to_owned(), 3, From::Parked(0))
            ]
        );
        assert_eq!(p.verdicts, [Some(Verdict::Skip), Some(Verdict::Apply)]);
    }
}
