//! Cross-service end-to-end tests: the whole mesh (tenant, provisioning, timeline) as real
//! processes, spoken to the way a user would.

mod nats_auth;
mod otel;
mod quotas;
mod secrets;
mod tls;
mod trace;
