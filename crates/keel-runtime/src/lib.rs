//! keel-runtime: what every Keel service shares — configuration (defaults → `KEEL_*` env →
//! flags), scrubbed JSON logs and OTLP traces, Prometheus metrics, `/livez` `/readyz`
//! `/metrics`, grpc.health.v1 + reflection (v1 and v1alpha), the one error-to-status mapping
//! ([`status`]), typed settings ([`settings`]) and graceful shutdown. Services are assembled from
//! these by `keel-service`.
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
//! let introspection = rt
//!     .grpc_health_and_reflection(FILE_DESCRIPTOR_SET, &["keel.v1.TenantService"])
//!     .await?;
//! // Health and reflection v1 + v1alpha; then .add_service(TenantServiceServer::new(api))
//! let router = introspection.add_to(&mut rt.grpc_server()?)?;
//! rt.serve(router, health, axum::Router::new()).await
//! # }
//! ```

pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
pub mod metrics;
pub mod nats;
pub mod request_log;
pub mod retry;
mod service;
pub mod settings;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;

pub use config::{Config, ConfigOrPrint, LogFormat};
pub use error::{Error, Result};
pub use health::{Health, Readiness};
pub use metrics::Metrics;
pub use request_log::{RequestLogLayer, RequestTenant};
pub use retry::{Backoff, Retryable};
pub use service::Service;
pub use settings::{NoSettings, Settings};
pub use shutdown::Shutdown;
pub use telemetry::TelemetryGuard;
pub use tls::{Tls, TlsSetting};
