//! The saga, pure: a provisioning run is an event-sourced aggregate whose state says what to do
//! next. The executor does it and records the outcome; after a crash the state rebuilt from
//! the events says where to resume.

pub mod commands;
pub mod events;
pub mod faults;
pub mod kind;
pub mod run;

pub use run::{Next, Op, PlannedStep, Run, RunCommand, RunError, RunEvent, RunKind, RunStatus, StepStatus};
