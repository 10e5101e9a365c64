//! TokenService: service accounts, API keys, access tokens, key rotation.

use chrono::Utc;
use keel_auth::scopes;
use keel_proto::v1 as pb;
use keel_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use super::{Call, Shared};
use crate::domain::{Status as TenantStatus, TenantCommand, validate};
use crate::error::Error;
use crate::tokens::{self, DEFAULT_TTL_SECS, KeyGrant, MAX_TTL_SECS};

pub struct TokenApi(pub Shared);

/// Exchanges of one API key: 10/s, bursts of 20 (a client refreshes a 15-minute token).
const EXCHANGE_PER_KEY: keel_auth::TierLimits = keel_auth::TierLimits {
    per_second: 10,
    burst: 20,
};
/// Exchanges from one source address, whatever the key: 50/s, bursts of 100.
const EXCHANGE_PER_ADDRESS: keel_auth::TierLimits = keel_auth::TierLimits {
    per_second: 50,
    burst: 100,
};

impl TokenApi {
    async fn mint(
        &self,
        subject: &str,
        tenant: &str,
        scopes: Vec<String>,
        ttl: u32,
    ) -> Result<pb::AccessToken, Status> {
        let tier = if tenant == "*" {
            None
        } else {
            let (t, _) = self.0.load_existing(tenant).await?;
            if !matches!(
                t.status,
                TenantStatus::Pending | TenantStatus::Provisioning | TenantStatus::Active
            ) {
                return Err(Error::Precondition(format!("tenant is {}", t.status.as_str())).into());
            }
            t.tier.map(|t| t.as_str().to_owned())
        };
        let claims = tokens::access_claims(subject, tenant, scopes, tier, ttl, Utc::now());
        let key = self.0.signing.active().await?;
        let token = tokens::sign(&key, &claims)?;
        Ok(pb::AccessToken {
            token,
            expires_at: Some(prost_types::Timestamp {
                seconds: claims.exp,
                nanos: 0,
            }),
            tenant_id: claims.tenant,
            scopes: claims.scopes,
        })
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    /// The one call without a token: rate-limited per presented key and per source address,
    /// and audited whether it succeeds or not (a failure on the platform's audit subject, since
    /// the caller's tenant is unknown; the key appears only as a fingerprint).
    async fn exchange_api_key(
        &self,
        req: Request<pb::ExchangeApiKeyRequest>,
    ) -> Result<Response<pb::AccessToken>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::scopes("scopes", &r.scopes).map_err(Error::from)?;
        let fingerprint = tokens::key_fingerprint(&r.api_key);
        let scope = &self.0.limiter_scope;
        for (bucket, limits) in [
            (format!("{scope}xk:{fingerprint}"), EXCHANGE_PER_KEY),
            (format!("{scope}xip:{}", call.source_ip), EXCHANGE_PER_ADDRESS),
        ] {
            if let keel_auth::Decision::Limited { retry_after } =
                self.0.exchange_limiter.check(&bucket, limits).await
            {
                return Err(keel_runtime::status::resource_exhausted(
                    "too many API key exchanges",
                    retry_after,
                ));
            }
        }
        let grant = match self.0.api_keys.lookup(&r.api_key).await {
            Ok(grant) => grant,
            Err(e) => {
                self.0
                    .audit_as(
                        "anonymous".into(),
                        &call,
                        keel_bus::audit::PLATFORM_TENANT,
                        "api-key-exchange",
                        format!("api-key/{fingerprint}"),
                        keel_bus::audit::AuditResult::Failed,
                        Some("unknown or revoked API key".into()),
                    )
                    .await;
                return Err(e.into());
            }
        };
        let scopes = if r.scopes.is_empty() {
            grant.scopes.clone()
        } else if let Some(s) = r.scopes.iter().find(|s| !grant.scopes.contains(s)) {
            return Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing scope {s}"),
            ));
        } else {
            r.scopes
        };
        let token = self
            .mint(&grant.account_id, &grant.tenant_id, scopes, DEFAULT_TTL_SECS)
            .await?;
        let audit_tenant = match grant.tenant_id.as_str() {
            "*" => keel_bus::audit::PLATFORM_TENANT,
            t => t,
        };
        self.0
            .audit_as(
                format!("service:{}", grant.account_id),
                &call,
                audit_tenant,
                "api-key-exchange",
                format!("api-key/{}", grant.key_id),
                keel_bus::audit::AuditResult::Success,
                None,
            )
            .await;
        Ok(Response::new(token))
    }

    async fn create_service_account(
        &self,
        req: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccountCreated>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::account_name("name", &r.name).map_err(Error::from)?;
        validate::scopes("scopes", &r.scopes).map_err(Error::from)?;
        if r.scopes.iter().any(|s| s == scopes::OPERATOR) {
            return Err(Error::from(validate::Invalid {
                field: "scopes",
                reason: "operator cannot be granted to a tenant account".into(),
            })
            .into());
        }
        let tenant_id = self
            .0
            .resolve(&call, r.tenant.as_ref(), scopes::TOKEN_ISSUE)
            .await?;
        self.0
            .authorize(&call, scopes::TOKEN_ISSUE, &tenant_id, "account-create")
            .await?;
        // No escalation: a tenant caller can only grant scopes it holds itself.
        let principal = call.principal()?;
        if !principal.is_operator()
            && let Some(s) = r.scopes.iter().find(|s| !principal.claims.scopes.contains(s))
        {
            return Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing scope {s}"),
            ));
        }
        let account_id = format!("sa_{}", uuid::Uuid::now_v7().simple());
        let key_id = format!("key_{}", uuid::Uuid::now_v7().simple());
        self.0
            .execute(
                &call,
                &tenant_id,
                "account-create",
                TenantCommand::CreateServiceAccount {
                    account_id: account_id.clone(),
                    name: r.name,
                    scopes: r.scopes.clone(),
                },
            )
            .await?;
        let secret = tokens::new_api_key();
        let grant = KeyGrant {
            key_id: key_id.clone(),
            account_id: account_id.clone(),
            tenant_id: tenant_id.clone(),
            scopes: r.scopes,
        };
        self.0.api_keys.store(&grant, &secret).await?;
        self.0
            .execute(
                &call,
                &tenant_id,
                "key-issue",
                TenantCommand::IssueApiKey {
                    account_id: account_id.clone(),
                    key_id: key_id.clone(),
                },
            )
            .await?;
        Ok(Response::new(pb::ServiceAccountCreated {
            account_id,
            key_id,
            api_key: secret,
        }))
    }

    async fn issue_token(
        &self,
        req: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::AccessToken>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        if r.tenant_id != "*" && !keel_events::subjects::is_valid_token(&r.tenant_id) {
            return Err(Error::from(validate::Invalid {
                field: "tenant_id",
                reason: "must be a tenant id or *".into(),
            })
            .into());
        }
        validate::token("subject", &r.subject).map_err(Error::from)?;
        validate::scopes("scopes", &r.scopes).map_err(Error::from)?;
        let ttl = match r.ttl_seconds {
            0 => DEFAULT_TTL_SECS,
            t if t <= MAX_TTL_SECS => t,
            _ => {
                return Err(Error::from(validate::Invalid {
                    field: "ttl_seconds",
                    reason: format!("must be at most {MAX_TTL_SECS}"),
                })
                .into());
            }
        };
        if r.tenant_id != "*" && r.scopes.iter().any(|s| s == scopes::OPERATOR) {
            return Err(Error::from(validate::Invalid {
                field: "scopes",
                reason: "operator needs tenant_id *".into(),
            })
            .into());
        }
        self.0
            .authorize_operator(&call, &r.tenant_id, "token-issue")
            .await?;
        let token = self.mint(&r.subject, &r.tenant_id, r.scopes, ttl).await?;
        self.0
            .audit(
                &call,
                &r.tenant_id,
                "token-issue",
                format!("token/{}", r.subject),
                keel_bus::audit::AuditResult::Success,
                None,
            )
            .await;
        Ok(Response::new(token))
    }

    async fn rotate_signing_key(
        &self,
        req: Request<pb::RotateSigningKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let call = Call::of(&req);
        self.0.authorize_operator(&call, "*", "key-rotate").await?;
        let kid = self.0.signing.rotate().await?;
        let published = self
            .0
            .signing
            .jwks()
            .await?
            .keys
            .into_iter()
            .map(|k| k.kid)
            .collect();
        self.0
            .audit(
                &call,
                "*",
                "key-rotate",
                format!("signing-key/{kid}"),
                keel_bus::audit::AuditResult::Success,
                None,
            )
            .await;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            kid,
            published_kids: published,
        }))
    }
}
