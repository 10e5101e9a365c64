//! Background workers of the provisioning service.

pub mod saga;

pub use saga::Executor;
