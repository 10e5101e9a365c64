//! End-to-end tests of `keel-provisioning` with a real `keel-tenant` (and `keel-timeline` where
//! the trace is checked) on one bus namespace, against real PostgreSQL, NATS, Redis and disk.

mod failures;
mod forgery;
mod harness;
mod isolation;
mod lifecycle;
mod projection;
mod retry;
