//! The authenticated caller of a request, and the scope/tenant checks handlers run against it.

use tonic::Status;

use crate::claims::{Claims, scopes};

/// The verified caller, stored in the request extensions by [`crate::AuthLayer`].
#[derive(Clone, Debug)]
pub struct Principal {
    pub claims: Claims,
}

impl Principal {
    pub fn new(claims: Claims) -> Self {
        Principal { claims }
    }

    /// The actor recorded on events: `service:<sub>` for service accounts (`sa_…`), else
    /// `user:<sub>`.
    pub fn actor(&self) -> String {
        if self.claims.sub.starts_with("sa_") {
            format!("service:{}", self.claims.sub)
        } else {
            format!("user:{}", self.claims.sub)
        }
    }

    /// A platform operator: tenant `*` and the `operator` scope.
    pub fn is_operator(&self) -> bool {
        self.claims.tenant == "*" && self.claims.has_scope(scopes::OPERATOR)
    }

    /// A platform account: tenant `*`. With the `operator` scope it is an operator; without
    /// it, a service account of the platform (provisioning, …) holding only its named scopes,
    /// on every tenant.
    pub fn is_platform(&self) -> bool {
        self.claims.tenant == "*"
    }

    /// Allows the call if the caller holds `scope` for `tenant_id`.
    ///
    /// Platform accounts (operators included) pass for any tenant when they hold `scope`.
    /// Everyone else must belong to `tenant_id`. The PERMISSION_DENIED message names only the
    /// scope, never a tenant.
    pub fn require(&self, scope: &str, tenant_id: &str) -> Result<(), Status> {
        let has_scope = self.claims.has_scope(scope);
        if self.is_platform() && has_scope {
            return Ok(());
        }
        if self.is_platform() || self.claims.tenant != tenant_id {
            return Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing scope {scope} for this tenant"),
            ));
        }
        if !has_scope {
            return Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing scope {scope}"),
            ));
        }
        Ok(())
    }

    /// Allows the call only for platform operators.
    /// Whether the caller holds `scope`: named in its token, or a platform-only scope held by
    /// every operator (what an operator may grant to a key it makes).
    pub fn holds(&self, scope: &str) -> bool {
        self.claims.has_scope(scope) || (self.is_operator() && scopes::PLATFORM_ONLY.contains(&scope))
    }

    /// Platform-only calls with a scope of their own (`tenant:lifecycle`, `license:issue`):
    /// an operator, or a platform account holding `scope`. A tenant's own token never passes,
    /// whatever its scopes.
    pub fn require_platform(&self, scope: &str) -> Result<(), Status> {
        if self.is_operator() || (self.is_platform() && self.claims.has_scope(scope)) {
            Ok(())
        } else {
            Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing platform scope {scope}"),
            ))
        }
    }

    pub fn require_operator(&self) -> Result<(), Status> {
        if self.is_operator() {
            Ok(())
        } else {
            Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing scope {}", scopes::OPERATOR),
            ))
        }
    }
}

/// The principal [`crate::AuthLayer`] stored in these extensions.
///
/// UNAUTHENTICATED when there is none: the path is public or the layer is not installed.
pub fn principal(req_extensions: &http::Extensions) -> Result<&Principal, Status> {
    req_extensions
        .get::<Principal>()
        .ok_or_else(|| Status::unauthenticated("missing bearer token"))
}

/// The principal of a tonic request (tonic carries the HTTP extensions over).
pub fn from_request<T>(req: &tonic::Request<T>) -> Result<&Principal, Status> {
    principal(req.extensions())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn who(sub: &str, tenant: &str, scopes: &[&str]) -> Principal {
        Principal::new(Claims {
            sub: sub.into(),
            tenant: tenant.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            exp: 0,
            iat: 0,
            jti: "j".into(),
            tier: None,
        })
    }

    #[test]
    fn same_tenant_with_scope_passes() {
        let p = who("u_1", "t_1", &[scopes::TIMELINE_READ]);
        assert!(p.require(scopes::TIMELINE_READ, "t_1").is_ok());
    }

    #[test]
    fn cross_tenant_is_denied_naming_only_the_scope() {
        let p = who("alice@example.com", "t_1", &[scopes::TIMELINE_READ]);
        let err = p.require(scopes::TIMELINE_READ, "t_2").unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "missing scope timeline:read for this tenant");
        assert!(!err.message().contains("t_1") && !err.message().contains("t_2"));
        assert!(!err.message().contains("alice"));
    }

    #[test]
    fn missing_scope_is_denied() {
        let p = who("u_1", "t_1", &[scopes::TENANT_READ]);
        let err = p.require(scopes::TENANT_WRITE, "t_1").unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "missing scope tenant:write");
    }

    #[test]
    fn operator_passes_any_tenant_with_the_scope() {
        let op = who("u_op", "*", &[scopes::OPERATOR, scopes::TENANT_READ]);
        assert!(op.is_operator());
        assert!(op.require(scopes::TENANT_READ, "t_9").is_ok());
        assert!(op.require_operator().is_ok());
        let err = op.require(scopes::EVIDENCE_CREATE, "t_9").unwrap_err();
        assert_eq!(err.message(), "missing scope evidence:create for this tenant");
    }

    #[test]
    fn a_platform_account_holds_only_its_scopes_on_every_tenant() {
        let p = who(
            "sa_op-provisioning",
            "*",
            &[scopes::TENANT_READ, scopes::TENANT_LIFECYCLE],
        );
        assert!(!p.is_operator() && p.is_platform());
        assert!(p.require(scopes::TENANT_READ, "t_1").is_ok());
        assert!(p.require(scopes::TENANT_WRITE, "t_1").is_err());
        assert!(p.require_platform(scopes::TENANT_LIFECYCLE).is_ok());
        let err = p.require_platform(scopes::LICENSE_ISSUE).unwrap_err();
        assert_eq!(err.message(), "missing platform scope license:issue");
        let err = p.require_operator().unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(err.message(), "missing scope operator");
    }

    #[test]
    fn platform_scopes_never_pass_for_a_tenants_own_token() {
        let t = who("sa_ci", "t_1", &[scopes::TENANT_LIFECYCLE, scopes::LICENSE_ISSUE]);
        assert!(t.require_platform(scopes::TENANT_LIFECYCLE).is_err());
        assert!(t.require_platform(scopes::LICENSE_ISSUE).is_err());
        let op = who("u_op", "*", &[scopes::OPERATOR]);
        assert!(op.require_platform(scopes::TENANT_LIFECYCLE).is_ok());
        // An operator holds the platform-only scopes (may grant them), nothing else unnamed.
        assert!(op.holds(scopes::LICENSE_ISSUE) && !op.holds(scopes::TENANT_READ));
        assert!(!t.holds(scopes::TENANT_READ) && t.holds(scopes::TENANT_LIFECYCLE));
    }

    #[test]
    fn actor_distinguishes_service_accounts() {
        assert_eq!(who("sa_build", "t", &[]).actor(), "service:sa_build");
        assert_eq!(who("u_1", "t", &[]).actor(), "user:u_1");
    }

    #[test]
    fn principal_is_read_from_extensions() {
        let mut req = tonic::Request::new(());
        assert_eq!(from_request(&req).unwrap_err().code(), Code::Unauthenticated);
        req.extensions_mut().insert(who("u_1", "t_1", &[]));
        assert_eq!(from_request(&req).unwrap().claims.sub, "u_1");
    }
}
