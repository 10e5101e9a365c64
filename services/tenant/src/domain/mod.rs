//! The tenant domain: pure, no I/O. The aggregate decides; the API encrypts, stores and
//! publishes around it.

pub mod commands;
pub mod error;
pub mod events;
pub mod page;
pub mod tenant;
pub mod validate;

pub use keel_tenancy::tier::{Entitlements, Tier};
pub use tenant::{Account, Encrypted, Member, Role, Status, Tenant, TenantCommand, TenantError, TenantEvent};
