//! End-to-end tests of the `keelctl` binary against a real `keel-tenant` process, real
//! PostgreSQL and NATS: each test has its own schema and bus namespace.

mod audit;
mod harness;
mod input;
mod license;
mod tenant;
