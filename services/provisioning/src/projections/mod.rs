//! Projections of the provisioning service: what it reads from the bus.

pub mod triggers;

pub use triggers::Triggers;
