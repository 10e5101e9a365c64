//! What the executor asks of a run.

use chrono::{DateTime, Utc};

use super::kind::RunKind;

#[derive(Clone, Debug)]
pub enum RunCommand {
    Start {
        run_id: String,
        tenant_id: String,
        slug: String,
        tier: String,
        suspended: bool,
        kind: RunKind,
        at: DateTime<Utc>,
    },
    StepStarted {
        step: String,
        attempt: u32,
        at: DateTime<Utc>,
    },
    StepSucceeded {
        step: String,
        attempt: u32,
        detail: serde_json::Value,
        removed: Vec<String>,
        at: DateTime<Utc>,
    },
    StepFailed {
        step: String,
        attempt: u32,
        error: String,
        permanent: bool,
        at: DateTime<Utc>,
    },
    StartCompensation {
        reason: String,
    },
    StepCompensated {
        step: String,
        removed: Vec<String>,
    },
    /// Undoing `step` failed on its `attempt`; at `max_attempts` the compensation is abandoned.
    CompensationFailed {
        step: String,
        attempt: u32,
        error: String,
        max_attempts: u32,
        at: DateTime<Utc>,
    },
    Complete {
        at: DateTime<Utc>,
    },
    Fail {
        reason: String,
        at: DateTime<Utc>,
    },
}
