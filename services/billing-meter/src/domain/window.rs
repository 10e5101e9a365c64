//! One hour of one tenant's usage of one meter (and group): an event-sourced aggregate whose
//! `UsageRecorded` events are the usage records a bill is made from. Recording the same value
//! again records nothing, so aggregating twice, or again after a crash, gives the same records;
//! a different value (a late event) records a correction with the value before and after.

use chrono::{DateTime, Duration, DurationRound, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

/// The window an instant falls in: its UTC hour.
pub fn window_start(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(Duration::hours(1)).unwrap_or(t)
}

/// The aggregate id of a window: tenant, meter, hour and group (hashed: group values are free text).
pub fn window_id(tenant: &str, meter: &str, start: DateTime<Utc>, group_key: &str) -> String {
    use sha2::Digest;
    let group = hex::encode(&sha2::Sha256::digest(group_key.as_bytes())[..8]);
    format!("{tenant}:{meter}:{}:{group}", start.format("%Y%m%dT%H"))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum WindowEvent {
    /// The window's value as of `at`: version 1 when first closed, then one per correction.
    /// Shaped as a Stripe usage record: `action` `set` with `quantity`, and an idempotency key
    /// (the record id) that stays the same however often it is exported.
    UsageRecorded {
        record_id: String,
        tenant_id: String,
        meter: String,
        group: serde_json::Value,
        window_start: DateTime<Utc>,
        window_end: DateTime<Utc>,
        quantity: String,
        events: i64,
        action: String,
        version: u32,
        at: DateTime<Utc>,
    },
    /// A late event changed a window already recorded.
    UsageCorrected {
        tenant_id: String,
        meter: String,
        window_start: DateTime<Utc>,
        before: String,
        after: String,
        version: u32,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for WindowEvent {
    fn event_type(&self) -> String {
        match self {
            WindowEvent::UsageRecorded { .. } => "UsageRecorded",
            WindowEvent::UsageCorrected { .. } => "UsageCorrected",
        }
        .into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

/// The value a window's events give now.
#[derive(Debug)]
pub struct Record {
    pub tenant_id: String,
    pub meter: String,
    pub group_key: String,
    pub window_start: DateTime<Utc>,
    /// A normalised decimal.
    pub quantity: String,
    pub events: i64,
    pub at: DateTime<Utc>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("window {0} belongs to another tenant, meter or hour")]
    Mismatch(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Window {
    pub tenant_id: String,
    pub meter: String,
    pub window_start: Option<DateTime<Utc>>,
    pub quantity: Option<String>,
    pub events: i64,
    pub version: u32,
}

impl Window {
    pub fn decide(&self, r: Record) -> Result<Vec<WindowEvent>, WindowError> {
        if self.version > 0
            && (self.tenant_id != r.tenant_id
                || self.meter != r.meter
                || self.window_start != Some(r.window_start))
        {
            return Err(WindowError::Mismatch(window_id(
                &r.tenant_id,
                &r.meter,
                r.window_start,
                &r.group_key,
            )));
        }
        if self.quantity.as_deref() == Some(r.quantity.as_str()) && self.events == r.events {
            return Ok(vec![]);
        }
        let version = self.version + 1;
        let id = window_id(&r.tenant_id, &r.meter, r.window_start, &r.group_key);
        let mut out = Vec::new();
        if let Some(before) = &self.quantity {
            out.push(WindowEvent::UsageCorrected {
                tenant_id: r.tenant_id.clone(),
                meter: r.meter.clone(),
                window_start: r.window_start,
                before: before.clone(),
                after: r.quantity.clone(),
                version,
                at: r.at,
            });
        }
        out.push(WindowEvent::UsageRecorded {
            record_id: format!("{id}:v{version}"),
            tenant_id: r.tenant_id,
            meter: r.meter,
            group: serde_json::from_str(&r.group_key).unwrap_or_default(),
            window_start: r.window_start,
            window_end: r.window_start + Duration::hours(1),
            quantity: r.quantity,
            events: r.events,
            action: "set".into(),
            version,
            at: r.at,
        });
        Ok(out)
    }
}

impl Aggregate for Window {
    const TYPE: &'static str = "usage_window";
    type Command = Record;
    type Event = WindowEvent;
    type Error = WindowError;
    type Services = ();

    async fn handle(&mut self, command: Record, _: &(), sink: &EventSink<Self>) -> Result<(), WindowError> {
        for e in self.decide(command)? {
            sink.write(e, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: WindowEvent) {
        if let WindowEvent::UsageRecorded {
            tenant_id,
            meter,
            window_start,
            quantity,
            events,
            version,
            ..
        } = event
        {
            self.tenant_id = tenant_id;
            self.meter = meter;
            self.window_start = Some(window_start);
            self.quantity = Some(quantity);
            self.events = events;
            self.version = version;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(q: &str, events: i64) -> Record {
        Record {
            tenant_id: "t1".into(),
            meter: "api_requests".into(),
            group_key: "{}".into(),
            window_start: window_start(
                DateTime::parse_from_rfc3339("2026-12-04T10:17:00Z")
                    .unwrap()
                    .into(),
            ),
            quantity: q.into(),
            events,
            at: Utc::now(),
        }
    }

    #[test]
    fn the_same_value_twice_records_once_and_a_change_is_a_correction() {
        let mut w = Window::default();
        for e in w.decide(record("10", 2)).unwrap() {
            w.apply(e);
        }
        assert_eq!(w.version, 1);
        assert!(
            w.decide(record("10", 2)).unwrap().is_empty(),
            "aggregating again records nothing"
        );
        let late = w.decide(record("15", 3)).unwrap();
        assert!(matches!(
            &late[..],
            [WindowEvent::UsageCorrected { before, after, version: 2, .. }, WindowEvent::UsageRecorded { version: 2, .. }]
                if before == "10" && after == "15"
        ));
    }

    #[test]
    fn windows_are_utc_hours_and_ids_are_stable() {
        let t: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-12-04T10:59:59.999Z")
            .unwrap()
            .into();
        assert_eq!(window_start(t).to_rfc3339(), "2026-12-04T10:00:00+00:00");
        let a = window_id("t1", "m", window_start(t), r#"{"region":"eu"}"#);
        assert_eq!(a, window_id("t1", "m", window_start(t), r#"{"region":"eu"}"#));
        assert_ne!(a, window_id("t1", "m", window_start(t), r#"{"region":"us"}"#));
    }
}
