//! The claims of a Keel access token and the scope vocabulary.

use serde::{Deserialize, Serialize};

/// Claims of an access token issued by the tenant service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: a user id, or a service-account id starting with `sa_`.
    pub sub: String,
    /// Tenant id, or `"*"` for platform operators.
    pub tenant: String,
    /// Granted scopes, e.g. `timeline:read`; see [`scopes`].
    pub scopes: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
    /// Tenant tier, selecting the rate limit (see [`crate::ratelimit::tier_limits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

impl Claims {
    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// Scope strings carried in [`Claims::scopes`].
pub mod scopes {
    pub const TENANT_READ: &str = "tenant:read";
    pub const TENANT_WRITE: &str = "tenant:write";
    pub const MEMBER_WRITE: &str = "member:write";
    pub const TOKEN_ISSUE: &str = "token:issue";
    pub const LICENSE_READ: &str = "license:read";
    pub const TIMELINE_READ: &str = "timeline:read";
    pub const EVIDENCE_CREATE: &str = "evidence:create";
    /// Send usage events to the billing meter (platform accounts for any tenant; a tenant's own
    /// key for its own tenant).
    pub const USAGE_WRITE: &str = "usage:write";
    /// Read a tenant's usage and cost estimates.
    pub const BILLING_READ: &str = "billing:read";
    pub const OPERATOR: &str = "operator";
    /// Platform accounts only: move tenants through provisioning (MarkProvisioning,
    /// MarkProvisioned, MarkFailed, MarkDeleted).
    pub const TENANT_LIFECYCLE: &str = "tenant:lifecycle";
    /// Platform accounts only: issue a tenant's license.
    pub const LICENSE_ISSUE: &str = "license:issue";

    /// Every scope, for validating requested scopes at issue time.
    pub const ALL: &[&str] = &[
        TENANT_READ,
        TENANT_WRITE,
        MEMBER_WRITE,
        TOKEN_ISSUE,
        LICENSE_READ,
        TIMELINE_READ,
        EVIDENCE_CREATE,
        USAGE_WRITE,
        BILLING_READ,
        OPERATOR,
        TENANT_LIFECYCLE,
        LICENSE_ISSUE,
    ];

    /// Scopes only a platform account can use (`Principal::require_platform`); an operator
    /// holds them without naming them.
    pub const PLATFORM_ONLY: &[&str] = &[TENANT_LIFECYCLE, LICENSE_ISSUE];

    /// Whether `scope` is one Keel knows.
    pub fn is_known(scope: &str) -> bool {
        ALL.contains(&scope)
    }
}
