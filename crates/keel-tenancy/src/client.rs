//! The tenant service's client for other services: it exchanges a service API key for
//! short-lived tokens, carries the caller's `traceparent`, and offers the lifecycle calls a
//! saga makes — begin (PROVISIONING), license, activate (ACTIVE), finalize a deletion, record a
//! failure. Each lifecycle call first reads the tenant's status so that running it twice is
//! harmless.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_proto::v1 as pb;
use keel_proto::v1::license_service_client::LicenseServiceClient;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use tokio::sync::Mutex;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// What went wrong calling the tenant service, and whether trying again can help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The service is unreachable, overloaded or raced: the same call may succeed later.
    #[error("{0}")]
    Transient(String),
    /// The call cannot succeed as made (bad state, denied, not found).
    #[error("{0}")]
    Permanent(String),
}

impl keel_runtime::Retryable for ClientError {
    fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Transient(_))
    }
}

/// A shared, lazily connecting client of the tenant service.
pub struct TenantClient {
    channel: keel_runtime::telemetry::client::Traced<Channel>,
    api_key: String,
    token: Mutex<Option<(String, i64)>>,
}

fn client_error(s: Status) -> ClientError {
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unknown => ClientError::Transient(format!("tenant service: {}: {}", s.code(), s.message())),
        _ => ClientError::Permanent(format!("tenant service: {}: {}", s.code(), s.message())),
    }
}

fn tenant_ref(id: &str) -> Option<pb::TenantRef> {
    Some(pb::TenantRef {
        r#ref: Some(pb::tenant_ref::Ref::Id(id.to_owned())),
    })
}

/// The scopes a platform service account needs for every call of this client (GetTenant,
/// the Mark* lifecycle calls, GetLicense, IssueLicense): what provisioning's own account holds
/// (`CreateOperatorKey` without `operator`), and no more.
pub const SCOPES_NEEDED: &[&str] = &[
    keel_auth::scopes::TENANT_READ,
    keel_auth::scopes::TENANT_LIFECYCLE,
    keel_auth::scopes::LICENSE_READ,
    keel_auth::scopes::LICENSE_ISSUE,
];

impl TenantClient {
    /// A lazily connecting client of the tenant service at `url` (`KEEL_TENANT_ADDR`) over
    /// `tls` (the calling service's certificate is presented: mTLS), using `api_key` (an
    /// operator or service key exchanged for short-lived tokens).
    pub fn new(url: &str, tls: &keel_runtime::Tls, api_key: String) -> Result<Arc<Self>, ClientError> {
        let channel = tls
            .endpoint(url, "KEEL_TENANT_ADDR")
            .map_err(|e| ClientError::Permanent(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        Ok(Arc::new(Self {
            channel: keel_runtime::telemetry::client::Traced::new(channel),
            api_key,
            token: Mutex::new(None),
        }))
    }

    async fn token(&self) -> Result<String, ClientError> {
        let mut cached = self.token.lock().await;
        if let Some((t, exp)) = cached.as_ref()
            && *exp > Utc::now().timestamp() + 60
        {
            return Ok(t.clone());
        }
        let resp = TokenServiceClient::new(self.channel.clone())
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: self.api_key.clone(),
                scopes: vec![],
            })
            .await
            .map_err(client_error)?
            .into_inner();
        let exp = resp.expires_at.map_or(0, |t| t.seconds);
        *cached = Some((resp.token.clone(), exp));
        Ok(resp.token)
    }

    async fn request<T>(&self, msg: T, traceparent: Option<&str>) -> Result<Request<T>, ClientError> {
        let mut req = Request::new(msg);
        let bearer = format!("Bearer {}", self.token().await?);
        req.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| ClientError::Permanent("bad token".into()))?,
        );
        if let Some(tp) = traceparent.and_then(|tp| tp.parse().ok()) {
            req.metadata_mut().insert("traceparent", tp);
        }
        Ok(req)
    }

    pub async fn status(&self, tenant_id: &str, tp: Option<&str>) -> Result<pb::TenantStatus, ClientError> {
        let t = self.get(tenant_id, tp).await?;
        Ok(pb::TenantStatus::try_from(t.status).unwrap_or(pb::TenantStatus::Unspecified))
    }

    /// The tenant as the tenant service, the source of truth, has it now.
    pub async fn get(&self, tenant_id: &str, tp: Option<&str>) -> Result<pb::Tenant, ClientError> {
        let req = self
            .request(
                pb::GetTenantRequest {
                    tenant: tenant_ref(tenant_id),
                },
                tp,
            )
            .await?;
        Ok(TenantServiceClient::new(self.channel.clone())
            .get_tenant(req)
            .await
            .map_err(client_error)?
            .into_inner())
    }

    fn tenants(&self) -> TenantServiceClient<keel_runtime::telemetry::client::Traced<Channel>> {
        TenantServiceClient::new(self.channel.clone())
    }

    /// PENDING or FAILED → PROVISIONING.
    pub async fn begin(&self, tenant_id: &str, tp: Option<&str>) -> Result<(), ClientError> {
        match self.status(tenant_id, tp).await? {
            pb::TenantStatus::Pending | pb::TenantStatus::Failed => {
                let req = self
                    .request(
                        pb::TenantLifecycleRequest {
                            tenant: tenant_ref(tenant_id),
                        },
                        tp,
                    )
                    .await?;
                self.tenants()
                    .mark_provisioning(req)
                    .await
                    .map_err(client_error)?;
                Ok(())
            }
            pb::TenantStatus::Provisioning => Ok(()),
            other => Err(ClientError::Permanent(format!(
                "tenant is {}",
                other.as_str_name()
            ))),
        }
    }

    /// A license for `tier`, unless the current one already is.
    pub async fn license(
        &self,
        tenant_id: &str,
        tier: &str,
        tp: Option<&str>,
    ) -> Result<String, ClientError> {
        let req = self
            .request(
                pb::GetLicenseRequest {
                    tenant: tenant_ref(tenant_id),
                },
                tp,
            )
            .await?;
        match LicenseServiceClient::new(self.channel.clone())
            .get_license(req)
            .await
        {
            Ok(l)
                if pb::Tier::try_from(l.get_ref().tier)
                    .is_ok_and(|t| t.as_str_name().eq_ignore_ascii_case(&format!("TIER_{tier}"))) =>
            {
                return Ok(l.into_inner().license_id);
            }
            Ok(_) => {}
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(client_error(s)),
        }
        let req = self
            .request(
                pb::IssueLicenseRequest {
                    tenant: tenant_ref(tenant_id),
                },
                tp,
            )
            .await?;
        let l = LicenseServiceClient::new(self.channel.clone())
            .issue_license(req)
            .await
            .map_err(client_error)?;
        Ok(l.into_inner().license_id)
    }

    /// PROVISIONING → ACTIVE.
    pub async fn activate(&self, tenant_id: &str, tp: Option<&str>) -> Result<(), ClientError> {
        match self.status(tenant_id, tp).await? {
            pb::TenantStatus::Provisioning => {
                let req = self
                    .request(
                        pb::TenantLifecycleRequest {
                            tenant: tenant_ref(tenant_id),
                        },
                        tp,
                    )
                    .await?;
                self.tenants().mark_provisioned(req).await.map_err(client_error)?;
                Ok(())
            }
            pb::TenantStatus::Active => Ok(()),
            other => Err(ClientError::Permanent(format!(
                "tenant is {}",
                other.as_str_name()
            ))),
        }
    }

    /// DELETING → DELETED.
    pub async fn finalize_deletion(&self, tenant_id: &str, tp: Option<&str>) -> Result<(), ClientError> {
        match self.status(tenant_id, tp).await? {
            pb::TenantStatus::Deleting => {
                let req = self
                    .request(
                        pb::TenantLifecycleRequest {
                            tenant: tenant_ref(tenant_id),
                        },
                        tp,
                    )
                    .await?;
                self.tenants().mark_deleted(req).await.map_err(client_error)?;
                Ok(())
            }
            pb::TenantStatus::Deleted => Ok(()),
            other => Err(ClientError::Permanent(format!(
                "tenant is {}",
                other.as_str_name()
            ))),
        }
    }

    /// PROVISIONING → FAILED with the reason.
    pub async fn fail(&self, tenant_id: &str, reason: &str, tp: Option<&str>) -> Result<(), ClientError> {
        if self.status(tenant_id, tp).await? == pb::TenantStatus::Provisioning {
            let reason: String = reason.chars().take(500).collect();
            let req = self
                .request(
                    pb::MarkFailedRequest {
                        tenant: tenant_ref(tenant_id),
                        reason,
                    },
                    tp,
                )
                .await?;
            self.tenants().mark_failed(req).await.map_err(client_error)?;
        }
        Ok(())
    }
}
