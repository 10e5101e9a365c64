//! The tenant service: the identity plane of Keel. Tenants and their lifecycle, members (e-mail
//! addresses encrypted per tenant and crypto-shredded on deletion), licenses, service accounts,
//! API keys and the access tokens every other service verifies.
//!
//! Start from [`app::App`], which wires the store, the relay, the projection and the gRPC APIs.

pub mod api;
pub mod app;
pub mod clock;
pub mod crypto;
pub mod domain;
pub mod error;
pub mod projection;
pub mod reader;
pub mod signing;
pub mod store;
pub mod tokens;
