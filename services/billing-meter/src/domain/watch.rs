//! What billing watches for: a tenant whose usage stopped (stale meters) and a committed-tier
//! tenant whose month's usage passed its commitment. Both are aggregates so that each alert is
//! raised once per occurrence however often, and by however many replicas, it is checked.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WatchEvent {
    /// An ACTIVE tenant sent no usage for longer than the threshold.
    MeterStale {
        tenant_id: String,
        last_event_at: DateTime<Utc>,
        threshold_secs: i64,
        at: DateTime<Utc>,
    },
    /// Usage resumed.
    MeterStaleCleared {
        tenant_id: String,
        last_event_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A committed-tier tenant's usage of a meter passed its commitment for the month.
    UsageOverCommitment {
        tenant_id: String,
        month: String,
        meter: String,
        used: String,
        committed: String,
        unit: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for WatchEvent {
    fn event_type(&self) -> String {
        match self {
            WatchEvent::MeterStale { .. } => "MeterStale",
            WatchEvent::MeterStaleCleared { .. } => "MeterStaleCleared",
            WatchEvent::UsageOverCommitment { .. } => "UsageOverCommitment",
        }
        .into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("watch: {0}")]
pub struct WatchError(String);

/// A tenant's staleness: id = the tenant.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Staleness {
    pub stale: bool,
}

/// What the watcher saw of a tenant's usage.
#[derive(Debug)]
pub struct Seen {
    pub tenant_id: String,
    pub last_event_at: DateTime<Utc>,
    pub threshold_secs: i64,
    pub now: DateTime<Utc>,
}

impl Staleness {
    pub fn decide(&self, s: Seen) -> Vec<WatchEvent> {
        let stale = (s.now - s.last_event_at).num_seconds() > s.threshold_secs;
        match (self.stale, stale) {
            (false, true) => vec![WatchEvent::MeterStale {
                tenant_id: s.tenant_id,
                last_event_at: s.last_event_at,
                threshold_secs: s.threshold_secs,
                at: s.now,
            }],
            (true, false) => vec![WatchEvent::MeterStaleCleared {
                tenant_id: s.tenant_id,
                last_event_at: s.last_event_at,
                at: s.now,
            }],
            _ => vec![],
        }
    }
}

impl Aggregate for Staleness {
    const TYPE: &'static str = "meter_staleness";
    type Command = Seen;
    type Event = WatchEvent;
    type Error = WatchError;
    type Services = ();

    async fn handle(&mut self, command: Seen, _: &(), sink: &EventSink<Self>) -> Result<(), WatchError> {
        for e in self.decide(command) {
            sink.write(e, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::MeterStale { .. } => self.stale = true,
            WatchEvent::MeterStaleCleared { .. } => self.stale = false,
            WatchEvent::UsageOverCommitment { .. } => {}
        }
    }
}

/// A tenant's month against its commitments: id = `<tenant>:<YYYY-MM>`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Commitment {
    pub over: BTreeSet<String>,
}

/// A meter's month-to-date usage and commitment, in billed units.
#[derive(Debug)]
pub struct Usage {
    pub tenant_id: String,
    pub month: String,
    pub meter: String,
    pub used: rust_decimal::Decimal,
    pub committed: rust_decimal::Decimal,
    pub unit: String,
    pub now: DateTime<Utc>,
}

impl Commitment {
    pub fn decide(&self, u: Usage) -> Vec<WatchEvent> {
        if u.used <= u.committed || self.over.contains(&u.meter) {
            return vec![];
        }
        vec![WatchEvent::UsageOverCommitment {
            tenant_id: u.tenant_id,
            month: u.month,
            meter: u.meter,
            used: u.used.normalize().to_string(),
            committed: u.committed.normalize().to_string(),
            unit: u.unit,
            at: u.now,
        }]
    }
}

impl Aggregate for Commitment {
    const TYPE: &'static str = "usage_commitment";
    type Command = Usage;
    type Event = WatchEvent;
    type Error = WatchError;
    type Services = ();

    async fn handle(&mut self, command: Usage, _: &(), sink: &EventSink<Self>) -> Result<(), WatchError> {
        for e in self.decide(command) {
            sink.write(e, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: WatchEvent) {
        if let WatchEvent::UsageOverCommitment { meter, .. } = event {
            self.over.insert(meter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn staleness_is_raised_once_and_cleared_by_the_next_event() {
        let now = Utc::now();
        let seen = |last: DateTime<Utc>| Seen {
            tenant_id: "t1".into(),
            last_event_at: last,
            threshold_secs: 3600,
            now,
        };
        let mut s = Staleness::default();
        assert!(s.decide(seen(now - Duration::minutes(30))).is_empty());
        let raised = s.decide(seen(now - Duration::hours(2)));
        assert!(matches!(raised[..], [WatchEvent::MeterStale { .. }]));
        for e in raised {
            s.apply(e);
        }
        assert!(s.decide(seen(now - Duration::hours(3))).is_empty(), "raised once");
        assert!(matches!(
            s.decide(seen(now))[..],
            [WatchEvent::MeterStaleCleared { .. }]
        ));
    }

    #[test]
    fn an_overage_is_raised_once_per_meter_and_month() {
        let u = |used: i64| Usage {
            tenant_id: "t1".into(),
            month: "2026-12".into(),
            meter: "cpu_core_seconds".into(),
            used: used.into(),
            committed: 100.into(),
            unit: "core·hours".into(),
            now: Utc::now(),
        };
        let mut c = Commitment::default();
        assert!(c.decide(u(100)).is_empty(), "at the commitment is not over it");
        let over = c.decide(u(101));
        assert_eq!(over.len(), 1);
        for e in over {
            c.apply(e);
        }
        assert!(c.decide(u(500)).is_empty());
    }
}
