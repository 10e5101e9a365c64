//! Integration tests of keel-auth against a real Redis, a real HTTP JWKS endpoint and a real
//! tonic server. One binary so the build links once.

mod jwks;
mod layer;
mod quota;
mod ratelimit;
mod support;
