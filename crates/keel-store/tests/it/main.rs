//! Integration tests of keel-store against the real local PostgreSQL and NATS JetStream.
//! Each test owns a schema and a bus namespace (`keel_store::testing::TestEnv`).

mod append;
mod audit;
mod counter;
mod projection;
mod relay;
