//! An optional record of when JetStream acked each event, for measuring commit → ack latency.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use uuid::Uuid;

/// The most recent `capacity` acks a relay received: event id and the instant its ack arrived.
#[derive(Debug)]
pub struct AckLog {
    capacity: usize,
    acks: Mutex<VecDeque<(Uuid, Instant)>>,
}

impl AckLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            acks: Mutex::new(VecDeque::new()),
        }
    }

    pub(super) fn record(&self, acks: Vec<(Uuid, Instant)>) {
        let Ok(mut log) = self.acks.lock() else { return };
        log.extend(acks);
        let excess = log.len().saturating_sub(self.capacity);
        log.drain(..excess);
    }

    /// Takes every recorded ack, oldest first.
    pub fn take(&self) -> Vec<(Uuid, Instant)> {
        self.acks
            .lock()
            .map(|mut log| log.drain(..).collect())
            .unwrap_or_default()
    }
}
