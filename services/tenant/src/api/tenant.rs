//! TenantService: lifecycle and members.

use keel_auth::scopes;
use keel_bus::audit::AuditResult;
use keel_proto::v1 as pb;
use keel_proto::v1::tenant_service_server::TenantService;
use tonic::{Request, Response, Status};

use super::convert::{role_from_pb, role_to_pb, status_from_name, tenant_to_pb, tier_from_pb};
use super::{Call, Shared};
use crate::domain::{TenantCommand, TenantError, page, validate};
use crate::error::{Error, Result};
use crate::reader::TenantRead;
use crate::store::Reservation;

pub struct TenantApi(pub Shared);

/// Page sizes of ListTenants and ListMembers: default 50, at most 500.
const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// Who may run a lifecycle command.
#[derive(Clone, Copy)]
enum Gate {
    /// Operators only (tier changes, suspension, reactivation).
    Operator,
    /// Operators, or a platform account holding `tenant:lifecycle` (provisioning's).
    Lifecycle,
    /// `tenant:write` on the tenant (its own admins may ask for deletion).
    TenantWrite,
}

impl TenantApi {
    async fn tenant(&self, tenant_id: &str) -> Result<pb::Tenant, Status> {
        let (t, v) = self.0.load_existing(tenant_id).await?;
        Ok(tenant_to_pb(&t, v, self.0.tables.created_at(tenant_id).await?))
    }

    /// As [`TenantApi::tenant`], read under row-level security as the tenant's reader.
    async fn tenant_as_reader(&self, tenant_id: &str) -> Result<pb::Tenant, Status> {
        let mut read = TenantRead::begin(self.0.store.pool(), tenant_id).await?;
        let (t, v) = read.tenant().await?;
        let created_at = read.created_at().await?;
        read.finish().await?;
        Ok(tenant_to_pb(&t, v, created_at))
    }

    /// The common shape of a lifecycle call: resolve, authorize, execute, answer.
    async fn lifecycle(
        &self,
        call: &Call,
        reference: Option<&pb::TenantRef>,
        action: &str,
        gate: Gate,
        command: TenantCommand,
    ) -> Result<Response<pb::Tenant>, Status> {
        let tenant_id = self.0.resolve(call, reference, scopes::TENANT_WRITE).await?;
        match gate {
            Gate::Operator => self.0.authorize_operator(call, &tenant_id, action).await?,
            Gate::Lifecycle => {
                self.0
                    .authorize_platform(call, scopes::TENANT_LIFECYCLE, &tenant_id, action)
                    .await?
            }
            Gate::TenantWrite => {
                self.0
                    .authorize(call, scopes::TENANT_WRITE, &tenant_id, action)
                    .await?
            }
        }
        self.0.execute(call, &tenant_id, action, command).await?;
        Ok(Response::new(self.tenant(&tenant_id).await?))
    }

    async fn create(&self, call: &Call, r: pb::CreateTenantRequest) -> Result<pb::Tenant, Status> {
        tracing::debug!(request = ?r, request_id = %call.request_id, "create tenant");
        validate::name("name", &r.name).map_err(Error::from)?;
        validate::slug("slug", &r.slug).map_err(Error::from)?;
        let tier = tier_from_pb("tier", r.tier).map_err(Error::from)?;
        let email = validate::email("owner_email", &r.owner_email).map_err(Error::from)?;
        validate::token("request_id", &r.request_id).map_err(Error::from)?;

        // Idempotency: the request id is reserved with the slug before anything else is written.
        let tenant_id = match self.0.tables.reserve(&r.request_id, &r.slug).await? {
            Reservation::Tenant(id) => id,
            Reservation::SlugTaken => {
                self.0
                    .audit(
                        call,
                        "*",
                        "create",
                        format!("slug/{}", r.slug),
                        AuditResult::Failed,
                        Some("slug is already taken".into()),
                    )
                    .await;
                return Err(Error::AlreadyExists { field: "slug" }.into());
            }
        };
        let (_, version) = self.0.load(&tenant_id).await?;
        if version > 0 {
            // A repeat of a request that already created its tenant: the first result, nothing new.
            return self.tenant(&tenant_id).await;
        }
        let key = self.0.data_keys.get_or_create(&tenant_id).await?;
        let command = TenantCommand::Create {
            tenant_id: tenant_id.clone(),
            name: r.name.trim().to_owned(),
            slug: r.slug.clone(),
            tier,
            owner_member_id: format!("mem_{}", uuid::Uuid::now_v7().simple()),
            owner_email_enc: key.encrypt(&email)?,
            owner_email_digest: key.digest(&email),
            request_id: r.request_id.clone(),
        };
        match self.0.execute(call, &tenant_id, "create", command).await {
            Ok(()) => {}
            // A concurrent repeat of the same request won the race: same answer.
            Err(s) if s.code() == tonic::Code::AlreadyExists || s.code() == tonic::Code::Aborted => {}
            Err(s) => return Err(s),
        }
        self.tenant(&tenant_id).await
    }
}

#[tonic::async_trait]
impl TenantService for TenantApi {
    async fn create_tenant(
        &self,
        req: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        self.0.authorize_operator(&call, "*", "create").await?;
        Ok(Response::new(self.create(&call, req.into_inner()).await?))
    }

    async fn get_tenant(&self, req: Request<pb::GetTenantRequest>) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        let tenant_id = self
            .0
            .resolve(&call, req.get_ref().tenant.as_ref(), scopes::TENANT_READ)
            .await?;
        self.0
            .authorize(&call, scopes::TENANT_READ, &tenant_id, "get")
            .await?;
        Ok(Response::new(self.tenant_as_reader(&tenant_id).await?))
    }

    async fn list_tenants(
        &self,
        req: Request<pb::ListTenantsRequest>,
    ) -> Result<Response<pb::ListTenantsResponse>, Status> {
        let call = Call::of(&req);
        let principal = call.principal()?;
        let r = req.get_ref();
        let page = r.page.clone().unwrap_or_default();
        let size = validate::page_size(page::SIZE_FIELD, page.page_size, DEFAULT_PAGE, MAX_PAGE)
            .map_err(Error::from)?;
        let after = page::parse_token(&page.page_token).map_err(Error::from)?;
        let status = match pb::TenantStatus::try_from(r.status) {
            Ok(pb::TenantStatus::Unspecified) => None,
            Ok(s) => Some(s.as_str_name().trim_start_matches("TENANT_STATUS_").to_owned()),
            Err(_) => {
                return Err(Error::from(validate::Invalid {
                    field: "status",
                    reason: "unknown status".into(),
                })
                .into());
            }
        };
        // A tenant token sees only its own tenant; an operator sees all.
        let only: Option<String> = if principal.is_operator() {
            None
        } else {
            principal.require(scopes::TENANT_READ, &principal.claims.tenant)?;
            Some(principal.claims.tenant.clone())
        };
        let limit = i64::from(size) + 1;
        let rows = match only {
            // One tenant's row: read as its reader, under row-level security.
            Some(tenant) => {
                let mut read = TenantRead::begin(self.0.store.pool(), &tenant).await?;
                let rows = read.view(status, after, limit).await?;
                read.finish().await?;
                rows
            }
            None => self.0.tables.list(None, status, after, limit).await?,
        };
        let more = rows.len() > size as usize;
        let tenants: Vec<pb::Tenant> = rows
            .into_iter()
            .take(size as usize)
            .map(|(id, slug, name, tier, status, reason, created_at, version)| {
                let tier = crate::domain::Tier::parse(&tier);
                pb::Tenant {
                    id,
                    name,
                    slug,
                    tier: tier
                        .map(super::convert::tier_to_pb)
                        .unwrap_or(pb::Tier::Unspecified) as i32,
                    status: super::convert::status_to_pb(status_from_name(&status)) as i32,
                    entitlements: tier.map(super::convert::entitlements),
                    status_reason: reason,
                    created_at: Some(super::convert::timestamp(created_at)),
                    version: u64::try_from(version).unwrap_or_default(),
                }
            })
            .collect();
        let next = if more {
            tenants.last().map(|t| page::token(&t.id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListTenantsResponse {
            tenants,
            page: Some(pb::PageInfo {
                next_page_token: next,
            }),
        }))
    }

    async fn change_tier(&self, req: Request<pb::ChangeTierRequest>) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        let tier = tier_from_pb("tier", r.tier).map_err(Error::from)?;
        let resp = self
            .lifecycle(
                &call,
                r.tenant.as_ref(),
                "change-tier",
                Gate::Operator,
                TenantCommand::ChangeTier { tier },
            )
            .await?;
        // A new tier means new entitlements: re-issue the license.
        if let Err(e) = super::license::issue(&self.0, &call, &resp.get_ref().id).await {
            tracing::warn!(error = %e.message(), "license not re-issued after tier change");
        }
        Ok(resp)
    }

    async fn suspend_tenant(
        &self,
        req: Request<pb::SuspendTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::reason("reason", &r.reason).map_err(Error::from)?;
        self.lifecycle(
            &call,
            r.tenant.as_ref(),
            "suspend",
            Gate::Operator,
            TenantCommand::Suspend { reason: r.reason },
        )
        .await
    }

    async fn reactivate_tenant(
        &self,
        req: Request<pb::ReactivateTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        self.lifecycle(
            &call,
            req.get_ref().tenant.as_ref(),
            "reactivate",
            Gate::Operator,
            TenantCommand::Reactivate,
        )
        .await
    }

    async fn delete_tenant(
        &self,
        req: Request<pb::DeleteTenantRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        let resp = self
            .lifecycle(
                &call,
                req.get_ref().tenant.as_ref(),
                "delete",
                Gate::TenantWrite,
                TenantCommand::RequestDeletion,
            )
            .await?;
        // Crypto-shredding: from here on no e-mail address of the tenant can be decrypted.
        self.0.data_keys.destroy(&resp.get_ref().id).await?;
        Ok(resp)
    }

    async fn mark_provisioning(
        &self,
        req: Request<pb::TenantLifecycleRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        self.lifecycle(
            &call,
            req.get_ref().tenant.as_ref(),
            "mark-provisioning",
            Gate::Lifecycle,
            TenantCommand::StartProvisioning,
        )
        .await
    }

    async fn mark_provisioned(
        &self,
        req: Request<pb::TenantLifecycleRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        self.lifecycle(
            &call,
            req.get_ref().tenant.as_ref(),
            "mark-provisioned",
            Gate::Lifecycle,
            TenantCommand::MarkProvisioned,
        )
        .await
    }

    async fn mark_failed(&self, req: Request<pb::MarkFailedRequest>) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::reason("reason", &r.reason).map_err(Error::from)?;
        self.lifecycle(
            &call,
            r.tenant.as_ref(),
            "mark-failed",
            Gate::Lifecycle,
            TenantCommand::MarkFailed { reason: r.reason },
        )
        .await
    }

    async fn mark_deleted(
        &self,
        req: Request<pb::TenantLifecycleRequest>,
    ) -> Result<Response<pb::Tenant>, Status> {
        let call = Call::of(&req);
        let resp = self
            .lifecycle(
                &call,
                req.get_ref().tenant.as_ref(),
                "mark-deleted",
                Gate::Lifecycle,
                TenantCommand::MarkDeleted,
            )
            .await?;
        self.0.data_keys.destroy(&resp.get_ref().id).await?;
        Ok(resp)
    }

    async fn invite_member(
        &self,
        req: Request<pb::InviteMemberRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        let email = validate::email("email", &r.email).map_err(Error::from)?;
        let role = role_from_pb("role", r.role).map_err(Error::from)?;
        let tenant_id = self
            .0
            .resolve(&call, r.tenant.as_ref(), scopes::MEMBER_WRITE)
            .await?;
        self.0
            .authorize(&call, scopes::MEMBER_WRITE, &tenant_id, "member-invite")
            .await?;
        let key = self
            .0
            .data_keys
            .get(&tenant_id)
            .await?
            .ok_or(Error::Domain(TenantError::NotFound))?;
        let member_id = format!("mem_{}", uuid::Uuid::now_v7().simple());
        let command = TenantCommand::InviteMember {
            member_id: member_id.clone(),
            email_enc: key.encrypt(&email)?,
            email_digest: key.digest(&email),
            role,
        };
        self.0
            .execute(&call, &tenant_id, "member-invite", command)
            .await?;
        Ok(Response::new(pb::Member {
            id: member_id,
            tenant_id,
            email,
            role: role_to_pb(role) as i32,
        }))
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let call = Call::of(&req);
        let r = req.get_ref();
        let paging = r.page.clone().unwrap_or_default();
        let size = validate::page_size(page::SIZE_FIELD, paging.page_size, DEFAULT_PAGE, MAX_PAGE)
            .map_err(Error::from)?;
        let after = page::parse_token(&paging.page_token).map_err(Error::from)?;
        let tenant_id = self
            .0
            .resolve(&call, r.tenant.as_ref(), scopes::TENANT_READ)
            .await?;
        self.0
            .authorize(&call, scopes::TENANT_READ, &tenant_id, "member-list")
            .await?;
        let mut read = TenantRead::begin(self.0.store.pool(), &tenant_id).await?;
        let (tenant, _) = read.tenant().await?;
        let key = read.data_key(&self.0.data_keys).await?;
        read.finish().await?;
        let (members, next) = page::of_map(&tenant.members, after.as_deref(), size as usize);
        let members = members
            .into_iter()
            .map(|(id, m)| pb::Member {
                id: id.clone(),
                tenant_id: tenant_id.clone(),
                // Empty once the data key is destroyed: the address is unrecoverable.
                email: key
                    .as_ref()
                    .and_then(|k| k.decrypt(&m.email_enc).ok())
                    .unwrap_or_default(),
                role: role_to_pb(m.role) as i32,
            })
            .collect();
        Ok(Response::new(pb::ListMembersResponse {
            members,
            page: Some(pb::PageInfo {
                next_page_token: next,
            }),
        }))
    }

    async fn change_member_role(
        &self,
        req: Request<pb::ChangeMemberRoleRequest>,
    ) -> Result<Response<pb::Member>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        let role = role_from_pb("role", r.role).map_err(Error::from)?;
        validate::token("member_id", &r.member_id).map_err(Error::from)?;
        let tenant_id = self
            .0
            .resolve(&call, r.tenant.as_ref(), scopes::MEMBER_WRITE)
            .await?;
        self.0
            .authorize(&call, scopes::MEMBER_WRITE, &tenant_id, "member-role")
            .await?;
        self.0
            .execute(
                &call,
                &tenant_id,
                "member-role",
                TenantCommand::ChangeMemberRole {
                    member_id: r.member_id.clone(),
                    role,
                },
            )
            .await?;
        Ok(Response::new(pb::Member {
            id: r.member_id,
            tenant_id,
            email: String::new(),
            role: role_to_pb(role) as i32,
        }))
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let call = Call::of(&req);
        let r = req.into_inner();
        validate::token("member_id", &r.member_id).map_err(Error::from)?;
        let tenant_id = self
            .0
            .resolve(&call, r.tenant.as_ref(), scopes::MEMBER_WRITE)
            .await?;
        self.0
            .authorize(&call, scopes::MEMBER_WRITE, &tenant_id, "member-remove")
            .await?;
        self.0
            .execute(
                &call,
                &tenant_id,
                "member-remove",
                TenantCommand::RemoveMember {
                    member_id: r.member_id,
                },
            )
            .await?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }
}
