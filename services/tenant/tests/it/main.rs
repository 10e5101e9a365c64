//! End-to-end tests of the `keel-tenant` binary: real process, real PostgreSQL, NATS, Redis,
//! spoken to over gRPC and NATS the way a user would.

mod accounts;
mod auth;
mod harness;
mod input;
mod isolation;
mod keys;
mod licenses;
mod lifecycle;
mod logs;
mod projection;
mod readiness;
mod reflection;
mod shred;
mod tiers;
