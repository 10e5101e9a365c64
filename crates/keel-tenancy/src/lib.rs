//! keel-tenancy: the tenant contracts every other crate uses, so that none depends on the
//! tenant service — the product's tier matrix as data ([`Tier::entitlements`]), license claims
//! and their offline verification ([`license::verify`]), the typed data of the tenant events
//! other services consume ([`events::TenantLifecycle`]), and the tenant service's gRPC client
//! ([`client::TenantClient`]).

pub mod client;
pub mod events;
pub mod license;
pub mod tier;

pub use client::{ClientError, TenantClient};
pub use events::TenantLifecycle;
pub use license::{LicenseClaims, LicenseStatus, Limits};
pub use tier::{Entitlements, Tier};
