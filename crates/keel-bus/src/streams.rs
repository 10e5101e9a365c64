//! The Keel streams and their retention (DESIGN.md §2).

use std::time::Duration;

use async_nats::jetstream::stream::{Config, RetentionPolicy, StorageType};

const DAY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// All domain events: `keel.evt.<tenant>.<service>.<Event>`.
    Events,
    /// Audit records for subscribers: `keel.audit.<tenant>.<service>.<action>`.
    Audit,
    /// Evaluation jobs (work queue): `keel.jobs.<kind>.<tenant>`.
    Jobs,
    /// Poison messages with reason headers: `keel.dlq.<kind>.<tenant>`.
    Dlq,
    /// Raw usage into billing: `keel.usage.<tenant>`.
    Usage,
}

impl StreamKind {
    pub const ALL: [StreamKind; 5] = [
        StreamKind::Events,
        StreamKind::Audit,
        StreamKind::Jobs,
        StreamKind::Dlq,
        StreamKind::Usage,
    ];

    pub fn base_name(self) -> &'static str {
        match self {
            StreamKind::Events => "KEEL_EVENTS",
            StreamKind::Audit => "KEEL_AUDIT",
            StreamKind::Jobs => "KEEL_JOBS",
            StreamKind::Dlq => "KEEL_DLQ",
            StreamKind::Usage => "KEEL_USAGE",
        }
    }

    /// The subject root of the stream without prefix (`keel.evt`).
    pub fn subject_root(self) -> &'static str {
        match self {
            StreamKind::Events => "keel.evt",
            StreamKind::Audit => "keel.audit",
            StreamKind::Jobs => "keel.jobs",
            StreamKind::Dlq => "keel.dlq",
            StreamKind::Usage => "keel.usage",
        }
    }

    pub fn retention(self) -> (RetentionPolicy, Duration) {
        match self {
            StreamKind::Events => (RetentionPolicy::Limits, 180 * DAY),
            StreamKind::Audit => (RetentionPolicy::Limits, 365 * DAY),
            StreamKind::Jobs => (RetentionPolicy::WorkQueue, 7 * DAY),
            StreamKind::Dlq => (RetentionPolicy::Limits, 30 * DAY),
            StreamKind::Usage => (RetentionPolicy::Limits, 7 * DAY),
        }
    }
}

/// The JetStream config of one stream, with `subject_prefix` (`""` or `"ns."`).
pub fn config(kind: StreamKind, name: &str, subject_prefix: &str) -> Config {
    let (retention, max_age) = kind.retention();
    Config {
        name: name.to_owned(),
        subjects: vec![format!("{subject_prefix}{}.>", kind.subject_root())],
        retention,
        max_age,
        storage: StorageType::File,
        duplicate_window: Duration::from_secs(120),
        // 1 MiB envelopes at most (keel-events enforces the same limit).
        max_message_size: 1 << 20,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_stream_keeps_180_days_and_dedupes_two_minutes() {
        let c = config(StreamKind::Events, "KEEL_EVENTS", "");
        assert_eq!(c.subjects, vec!["keel.evt.>".to_owned()]);
        assert_eq!(c.max_age, 180 * DAY);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.retention, RetentionPolicy::Limits);
    }

    #[test]
    fn jobs_is_a_work_queue_and_prefix_applies() {
        let c = config(StreamKind::Jobs, "t1_KEEL_JOBS", "t1.");
        assert_eq!(c.subjects, vec!["t1.keel.jobs.>".to_owned()]);
        assert_eq!(c.retention, RetentionPolicy::WorkQueue);
    }
}
