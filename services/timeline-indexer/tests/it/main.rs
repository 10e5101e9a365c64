//! End-to-end tests of the `keel-timeline` binary beside a real `keel-tenant`, sharing one bus
//! namespace, against real PostgreSQL, NATS and Redis.

mod harness;
mod ingest;
mod isolation;
mod projection;
mod query;
mod rebuild;
mod retention;
mod tail;
