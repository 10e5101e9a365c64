//! The provisioning service: one event-sourced saga per tenant request that builds (and on
//! deletion removes) the tenant's real resources — PostgreSQL schema and role, JetStream bucket
//! and consumer, Redis quotas, GitOps manifests — then licenses and activates it through the
//! tenant service. Every step is idempotent; a crash anywhere resumes where the events say.
//!
//! Start from [`app::run`]; the saga is [`domain::Run`] driven by [`workers::Executor`].

pub mod api;
pub mod app;
pub mod domain;
pub mod error;
pub mod projections;
pub mod steps;
pub mod workers;
