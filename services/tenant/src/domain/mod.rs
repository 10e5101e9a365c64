//! The tenant domain: pure, no I/O. The aggregate decides; the API encrypts, stores and
//! publishes around it.

pub mod tenant;
pub mod tier;
pub mod validate;

pub use tenant::{Account, Encrypted, Member, Role, Status, Tenant, TenantCommand, TenantError, TenantEvent};
pub use tier::{Entitlements, Tier};
