//! keel-runtime: what every Keel service shares — configuration (defaults → `KEEL_*` env →
//! flags), scrubbed JSON logs and OTLP traces, Prometheus metrics, `/livez` `/readyz`
//! `/metrics`, grpc.health.v1 + reflection, and graceful shutdown.
//!
//! Start from [`Service`]:
//!
//! ```no_run
//! # const FILE_DESCRIPTOR_SET: &[u8] = tonic_health::pb::FILE_DESCRIPTOR_SET;
//! # async fn run() -> anyhow::Result<()> {
//! let rt = keel_runtime::Service::from_env("tenant")?;
//! let health = keel_runtime::Health::new()
//!     .with_postgres(rt.connect_postgres().await?)
//!     .with_nats(rt.connect_nats().await?)
//!     .with_redis(rt.connect_redis().await?);
//! let (grpc_health, reflection) = rt
//!     .grpc_health_and_reflection(FILE_DESCRIPTOR_SET, &["keel.tenant.v1.TenantService"])
//!     .await?;
//! let router = keel_runtime::grpc::grpc_server_builder()
//!     .add_service(grpc_health)
//!     .add_service(reflection); // .add_service(TenantServiceServer::new(api))
//! rt.serve(router, health, axum::Router::new()).await
//! # }
//! ```

pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod request_log;
mod service;
pub mod shutdown;
pub mod telemetry;

pub use config::{Config, ConfigOrPrint, LogFormat};
pub use error::{Error, Result};
pub use health::{Health, Readiness};
pub use metrics::Metrics;
pub use request_log::{RequestLogLayer, RequestTenant};
pub use service::Service;
pub use shutdown::Shutdown;
pub use telemetry::TelemetryGuard;
