//! End-to-end tests of the `keelctl` binary against real `keel-tenant` (and `keel-timeline`,
//! `keel-billing`) processes, real PostgreSQL and NATS: each test has its own schemas and bus
//! namespace.

mod audit;
mod billing;
mod harness;
mod input;
mod license;
mod tenant;
mod timeline;
mod token;
