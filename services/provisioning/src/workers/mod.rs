//! Background workers of the provisioning service.

pub mod lease;
pub mod saga;

pub use lease::Leases;
pub use saga::Executor;
