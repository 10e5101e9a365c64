//! TokenService: service accounts, API keys, access tokens, key rotation.

use chrono::Utc;
use keel_auth::scopes;
use keel_proto::v1 as pb;
use keel_proto::v1::token_service_server::TokenService;
use tonic::{Request, Response, Status};

use keel_bus::audit::{AuditResult, PLATFORM_TENANT};

use super::convert::timestamp;
use super::{Call, Shared};
use crate::domain::{Status as TenantStatus, TenantCommand, page, validate};
use crate::error::Error;
use crate::reader::TenantRead;
use crate::tokens::{self, DEFAULT_TTL_SECS, KeyGrant, KeyRefusal, KeyRow, MAX_TTL_SECS};

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

/// Page sizes of ListApiKeys: default 50, at most 500.
const DEFAULT_KEY_PAGE: u32 = 50;
const MAX_KEY_PAGE: u32 = 500;

/// The audit subject of a key's tenant (`*`: the platform's).
fn audit_tenant(tenant_id: &str) -> &str {
    match tenant_id {
        "*" => PLATFORM_TENANT,
        t => t,
    }
}

/// Whether a failed command certainly appended nothing (refused by the domain or by the
/// optimistic lock), as opposed to failing with an unknown outcome.
fn refused(status: &Status) -> bool {
    use tonic::Code::*;
    matches!(
        status.code(),
        InvalidArgument | NotFound | AlreadyExists | PermissionDenied | FailedPrecondition | Aborted
    )
}

fn key_pb(k: KeyRow) -> pb::ApiKey {
    pb::ApiKey {
        key_id: k.key_id,
        account_id: k.account_id,
        tenant_id: k.tenant_id,
        scopes: k.scopes,
        created_at: Some(timestamp(k.created_at)),
        revoked_at: k.revoked_at.map(timestamp),
    }
}

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

    /// One atomic write. The key row is stored first but **pending** (refused by
    /// `ExchangeApiKey`, not listed); then one command appends `ServiceAccountCreated` and
    /// `ApiKeyIssued` in one statement, whose trigger (`events_activate_api_key`) activates the
    /// key in the same transaction. So a key is usable exactly when its account's events are
    /// committed: a crash before the append leaves an inert pending row and no account; a
    /// refused append (name taken, tenant suspended) leaves no account either, and its pending
    /// row is removed. The secret is answered only after the commit. (A response lost after the
    /// commit is the one case left: the account exists, its key can be revoked, and a retry
    /// under another name gets a new key.)
    async fn create_service_account(
        &self,
        req: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccountCreated>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::account_name("name", &r.name).map_err(Error::from)?;
        validate::scopes("scopes", &r.scopes).map_err(Error::from)?;
        if let Some(s) = r
            .scopes
            .iter()
            .find(|s| *s == scopes::OPERATOR || scopes::PLATFORM_ONLY.contains(&s.as_str()))
        {
            return Err(Error::from(validate::Invalid {
                field: "scopes",
                reason: format!("{s} cannot be granted to a tenant account (platform accounts only)"),
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
        let secret = tokens::new_api_key();
        let grant = KeyGrant {
            key_id: key_id.clone(),
            account_id: account_id.clone(),
            tenant_id: tenant_id.clone(),
            scopes: r.scopes.clone(),
        };
        self.0.api_keys.store_pending(&grant, &secret).await?;
        let command = TenantCommand::CreateServiceAccount {
            account_id: account_id.clone(),
            name: r.name,
            scopes: r.scopes,
            key_id: key_id.clone(),
        };
        if let Err(status) = self.0.execute(&call, &tenant_id, "account-create", command).await {
            if refused(&status)
                && let Err(e) = self.0.api_keys.discard_pending(&key_id).await
            {
                // Harmless: a pending key is never accepted.
                tracing::warn!(error = %e, key_id, "a refused account's pending key stays");
            }
            return Err(status);
        }
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

    async fn create_operator_key(
        &self,
        req: Request<pb::CreateOperatorKeyRequest>,
    ) -> Result<Response<pb::ServiceAccountCreated>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::account_name("name", &r.name).map_err(Error::from)?;
        validate::scopes("scopes", &r.scopes).map_err(Error::from)?;
        if r.scopes.is_empty() {
            return Err(Error::from(validate::Invalid {
                field: "scopes",
                reason: "a platform key needs at least one scope (operator for an operator key)".into(),
            })
            .into());
        }
        // With `operator`: an operator key. Without: a platform service account holding only
        // these scopes, on every tenant (provisioning's: tenant:read, tenant:lifecycle,
        // license:read, license:issue).
        let operator = r.scopes.iter().any(|s| s == scopes::OPERATOR);
        self.0
            .authorize_operator(&call, "*", "operator-key-create")
            .await?;
        // No escalation: an operator grants only scopes it holds itself.
        let principal = call.principal()?;
        if let Some(s) = r.scopes.iter().find(|s| !principal.holds(s)) {
            return Err(keel_runtime::status::permission_denied(
                "MISSING_SCOPE",
                format!("missing scope {s}"),
            ));
        }
        let grant = KeyGrant {
            key_id: format!("key_{}", uuid::Uuid::now_v7().simple()),
            account_id: if operator {
                format!("sa_op-{}", r.name)
            } else {
                format!("sa_pf-{}", r.name)
            },
            tenant_id: "*".into(),
            scopes: r.scopes,
        };
        let secret = tokens::new_api_key();
        let resource = format!("api-key/{}", grant.key_id);
        if let Err(e) = self.0.api_keys.store(&grant, &secret).await {
            self.0
                .audit(
                    &call,
                    "*",
                    "operator-key-create",
                    resource,
                    AuditResult::Failed,
                    Some(e.to_string()),
                )
                .await;
            return Err(e.into());
        }
        self.0
            .audit(
                &call,
                "*",
                "operator-key-create",
                resource,
                AuditResult::Success,
                None,
            )
            .await;
        Ok(Response::new(pb::ServiceAccountCreated {
            account_id: grant.account_id,
            key_id: grant.key_id,
            api_key: secret,
        }))
    }

    async fn list_api_keys(
        &self,
        req: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        let paging = r.page.unwrap_or_default();
        let size = validate::page_size(page::SIZE_FIELD, paging.page_size, DEFAULT_KEY_PAGE, MAX_KEY_PAGE)
            .map_err(Error::from)?;
        let after = page::parse_token(&paging.page_token).map_err(Error::from)?;
        let principal = call.principal()?;
        // Whose keys: the named tenant's, else every key for an operator and the caller's own
        // tenant's for anyone else.
        let tenant = match r.tenant {
            Some(ref reference) => Some(
                self.0
                    .resolve(&call, Some(reference), scopes::TOKEN_ISSUE)
                    .await?,
            ),
            None if principal.is_operator() => None,
            None => Some(principal.claims.tenant.clone()),
        };
        match &tenant {
            Some(t) => {
                self.0
                    .authorize(&call, scopes::TOKEN_ISSUE, t, "key-list")
                    .await?
            }
            None => self.0.authorize_operator(&call, "*", "key-list").await?,
        }
        let limit = i64::from(size) + 1;
        let rows = match &tenant {
            // One tenant's keys: read as its reader, under row-level security.
            Some(t) => {
                let mut read = TenantRead::begin(self.0.store.pool(), t).await?;
                let rows = read.api_keys(after.as_deref(), limit).await?;
                read.finish().await?;
                rows
            }
            None => tokens::ApiKeys::list(self.0.api_keys.pool(), None, after.as_deref(), limit).await?,
        };
        let (rows, next) = page::of_rows(rows, size as usize, |k| &k.key_id);
        Ok(Response::new(pb::ListApiKeysResponse {
            keys: rows.into_iter().map(key_pb).collect(),
            page: Some(pb::PageInfo {
                next_page_token: next,
            }),
        }))
    }

    /// Audited like ExchangeApiKey: every outcome, on the key's tenant (the platform's for an
    /// operator key), the key named by its id. A key the caller may not see is NOT_FOUND, audited
    /// on the caller's own tenant exactly like an unknown key.
    async fn revoke_api_key(
        &self,
        req: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::ApiKey>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::token("key_id", &r.key_id).map_err(Error::from)?;
        let principal = call.principal()?;
        let resource = format!("api-key/{}", r.key_id);
        let found = self.0.api_keys.get(&r.key_id).await?;
        let visible = |k: &KeyRow| {
            principal.is_operator() || (k.tenant_id != "*" && k.tenant_id == principal.claims.tenant)
        };
        let Some(key) = found.filter(visible) else {
            self.0
                .audit(
                    &call,
                    &principal.claims.tenant,
                    "key-revoke",
                    resource,
                    AuditResult::Failed,
                    Some("unknown API key".into()),
                )
                .await;
            return Err(Error::from(KeyRefusal::NotFound).into());
        };
        if key.tenant_id == "*" {
            self.0.authorize_operator(&call, "*", "key-revoke").await?;
        } else {
            self.0
                .authorize(&call, scopes::TOKEN_ISSUE, &key.tenant_id, "key-revoke")
                .await?;
        }
        let tenant = audit_tenant(&key.tenant_id).to_owned();
        let (row, newly) = match self.0.api_keys.revoke(&key.key_id).await? {
            Ok(done) => done,
            Err(refusal) => {
                self.0
                    .audit(
                        &call,
                        &tenant,
                        "key-revoke",
                        resource,
                        AuditResult::Failed,
                        Some(refusal.to_string()),
                    )
                    .await;
                return Err(Error::from(refusal).into());
            }
        };
        // A tenant's key: its history records the revocation too. Idempotent, so a retry after a
        // failure here records it then.
        if row.tenant_id != "*" {
            let command = TenantCommand::RevokeApiKey {
                account_id: row.account_id.clone(),
                key_id: row.key_id.clone(),
            };
            if let Err(e) = self.0.record(&call, &row.tenant_id, command).await {
                self.0
                    .audit(
                        &call,
                        &tenant,
                        "key-revoke",
                        resource,
                        AuditResult::Failed,
                        Some(format!("key revoked, not yet recorded: {e}")),
                    )
                    .await;
                return Err(e.into());
            }
        }
        self.0
            .audit(
                &call,
                &tenant,
                "key-revoke",
                resource,
                AuditResult::Success,
                (!newly).then(|| "already revoked".to_owned()),
            )
            .await;
        Ok(Response::new(key_pb(row)))
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
