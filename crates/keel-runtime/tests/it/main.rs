//! Integration tests of keel-runtime against the local PostgreSQL, NATS and Redis.

mod readiness;
mod service;
mod support;
mod tls;
