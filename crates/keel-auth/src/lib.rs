//! keel-auth: who is calling and may they. Ed25519 (EdDSA) JWTs signed by the tenant service,
//! a JWKS cache that rides out outages within its TTL, scope and tenant checks, admission by the
//! tenant's provisioned quota hash (suspension, limits) and per-tenant GCRA rate limits in Redis
//! — packaged as a tower layer every gRPC service installs.
//!
//! Start from [`AuthLayer`] (with [`AuthConfig`]); handlers read the caller with
//! [`principal::from_request`] and check it with [`Principal::require`].

pub mod audit;
pub mod claims;
pub mod error;
pub mod jwks;
pub mod keys;
pub mod layer;
pub mod principal;
pub mod quota;
pub mod ratelimit;
pub mod seal;
pub mod verify;

pub use claims::{Claims, scopes};
pub use error::{AuthError, Result};
pub use jwks::JwksCache;
pub use keys::{Jwk, JwkSet, SigningKey};
pub use layer::{AuthConfig, AuthLayer, AuthService};
pub use principal::{Principal, from_request, principal};
pub use quota::Quotas;
pub use ratelimit::{Decision, RateLimiter, TierLimits, TierLimitsFn};
pub use seal::MasterKey;
pub use verify::{ACCESS_TOKEN_TYP, LICENSE_TYP, decode_kid, verify, verify_typed};
