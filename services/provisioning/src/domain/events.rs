//! What happened in a run (stored as `keel.provisioning.<Event>.v1`).

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use super::kind::RunKind;
use super::run::PlannedStep;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RunEvent {
    ProvisioningStarted {
        run_id: String,
        tenant_id: String,
        slug: String,
        tier: String,
        suspended: bool,
        kind: RunKind,
        plan: Vec<PlannedStep>,
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
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    CompensationStarted {
        reason: String,
    },
    StepCompensated {
        step: String,
        removed: Vec<String>,
    },
    /// Undoing `step` failed; tried again at `retry_at`, or never again (`None`: abandoned).
    CompensationFailed {
        step: String,
        attempt: u32,
        error: String,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    /// The alert: undoing `step` failed on every attempt allowed, so its leftovers need an
    /// operator. The run undoes the other steps, then fails.
    CompensationAbandoned {
        step: String,
        attempts: u32,
        error: String,
        at: DateTime<Utc>,
    },
    ProvisioningCompleted {
        removed: Vec<String>,
        at: DateTime<Utc>,
    },
    ProvisioningFailed {
        reason: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for RunEvent {
    fn event_type(&self) -> String {
        match self {
            RunEvent::ProvisioningStarted { .. } => "ProvisioningStarted",
            RunEvent::StepStarted { .. } => "StepStarted",
            RunEvent::StepSucceeded { .. } => "StepSucceeded",
            RunEvent::StepFailed { .. } => "StepFailed",
            RunEvent::CompensationStarted { .. } => "CompensationStarted",
            RunEvent::StepCompensated { .. } => "StepCompensated",
            RunEvent::CompensationFailed { .. } => "CompensationFailed",
            RunEvent::CompensationAbandoned { .. } => "CompensationAbandoned",
            RunEvent::ProvisioningCompleted { .. } => "ProvisioningCompleted",
            RunEvent::ProvisioningFailed { .. } => "ProvisioningFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}
