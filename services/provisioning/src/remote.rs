//! The tenant service, as the saga's remote steps see it: begin (PROVISIONING), license,
//! activate (ACTIVE), finalize a deletion, record a failure. Each call first reads the tenant's
//! status so that running it twice is harmless, and carries the run's `traceparent`.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use keel_proto::v1 as pb;
use keel_proto::v1::license_service_client::LicenseServiceClient;
use keel_proto::v1::tenant_service_client::TenantServiceClient;
use keel_proto::v1::token_service_client::TokenServiceClient;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::steps::StepError;

pub struct TenantClient {
    channel: Channel,
    api_key: String,
    token: Mutex<Option<(String, i64)>>,
}

fn step_error(s: Status) -> StepError {
    match s.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Internal
        | Code::Aborted
        | Code::ResourceExhausted
        | Code::Unknown => StepError::Transient(format!("tenant service: {}: {}", s.code(), s.message())),
        _ => StepError::Permanent(format!("tenant service: {}: {}", s.code(), s.message())),
    }
}

fn tenant_ref(id: &str) -> Option<pb::TenantRef> {
    Some(pb::TenantRef {
        r#ref: Some(pb::tenant_ref::Ref::Id(id.to_owned())),
    })
}

impl TenantClient {
    /// A lazily connecting client of the tenant service at `url` using `api_key` (an operator or
    /// service key exchanged for short-lived tokens).
    pub fn new(url: &str, api_key: String) -> anyhow::Result<Arc<Self>> {
        let channel = Endpoint::from_shared(url.to_owned())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        Ok(Arc::new(Self {
            channel,
            api_key,
            token: Mutex::new(None),
        }))
    }

    async fn token(&self) -> Result<String, StepError> {
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
            .map_err(step_error)?
            .into_inner();
        let exp = resp.expires_at.map_or(0, |t| t.seconds);
        *cached = Some((resp.token.clone(), exp));
        Ok(resp.token)
    }

    async fn request<T>(&self, msg: T, traceparent: Option<&str>) -> Result<Request<T>, StepError> {
        let mut req = Request::new(msg);
        let bearer = format!("Bearer {}", self.token().await?);
        req.metadata_mut().insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| StepError::Permanent("bad token".into()))?,
        );
        if let Some(tp) = traceparent.and_then(|tp| tp.parse().ok()) {
            req.metadata_mut().insert("traceparent", tp);
        }
        Ok(req)
    }

    pub async fn status(&self, tenant_id: &str, tp: Option<&str>) -> Result<pb::TenantStatus, StepError> {
        let req = self
            .request(
                pb::GetTenantRequest {
                    tenant: tenant_ref(tenant_id),
                },
                tp,
            )
            .await?;
        let t = TenantServiceClient::new(self.channel.clone())
            .get_tenant(req)
            .await
            .map_err(step_error)?
            .into_inner();
        Ok(pb::TenantStatus::try_from(t.status).unwrap_or(pb::TenantStatus::Unspecified))
    }

    fn tenants(&self) -> TenantServiceClient<Channel> {
        TenantServiceClient::new(self.channel.clone())
    }

    /// PENDING or FAILED → PROVISIONING.
    pub async fn begin(&self, tenant_id: &str, tp: Option<&str>) -> Result<(), StepError> {
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
                self.tenants().mark_provisioning(req).await.map_err(step_error)?;
                Ok(())
            }
            pb::TenantStatus::Provisioning => Ok(()),
            other => Err(StepError::Permanent(format!("tenant is {}", other.as_str_name()))),
        }
    }

    /// A license for `tier`, unless the current one already is.
    pub async fn license(&self, tenant_id: &str, tier: &str, tp: Option<&str>) -> Result<String, StepError> {
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
            Err(s) => return Err(step_error(s)),
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
            .map_err(step_error)?;
        Ok(l.into_inner().license_id)
    }

    /// PROVISIONING → ACTIVE.
    pub async fn activate(&self, tenant_id: &str, tp: Option<&str>) -> Result<(), StepError> {
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
                self.tenants().mark_provisioned(req).await.map_err(step_error)?;
                Ok(())
            }
            pb::TenantStatus::Active => Ok(()),
            other => Err(StepError::Permanent(format!("tenant is {}", other.as_str_name()))),
        }
    }

    /// DELETING → DELETED.
    pub async fn finalize_deletion(&self, tenant_id: &str, tp: Option<&str>) -> Result<(), StepError> {
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
                self.tenants().mark_deleted(req).await.map_err(step_error)?;
                Ok(())
            }
            pb::TenantStatus::Deleted => Ok(()),
            other => Err(StepError::Permanent(format!("tenant is {}", other.as_str_name()))),
        }
    }

    /// PROVISIONING → FAILED with the reason.
    pub async fn fail(&self, tenant_id: &str, reason: &str, tp: Option<&str>) -> Result<(), StepError> {
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
            self.tenants().mark_failed(req).await.map_err(step_error)?;
        }
        Ok(())
    }
}
