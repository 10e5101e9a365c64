//! LicenseService: signed licenses for the tenant's tier, signed with the license key ring
//! (`Core::license_keys`, never a token key) and verifiable offline with the license JWKS.

use keel_auth::scopes;
use keel_proto::v1 as pb;
use keel_proto::v1::license_service_server::LicenseService;
use tonic::{Request, Response, Status};

use super::convert::{tier_to_pb, timestamp};
use super::{Call, Core, Shared};
use crate::domain::{TenantCommand, TenantError, Tier};
use crate::error::Error;
use crate::reader::TenantRead;
use keel_tenancy::license::LicenseClaims;

pub struct LicenseApi(pub Shared);

/// Signs a license for the tenant's current tier, stores it, and records `LicenseIssued`.
pub async fn issue(core: &Core, call: &Call, tenant_id: &str) -> Result<pb::License, Status> {
    let (tenant, _) = core.load_existing(tenant_id).await?;
    let tier = tenant.tier.ok_or(Error::Domain(TenantError::NotFound))?;
    let claims = LicenseClaims::new(tenant_id, tier, core.license_keys.now());
    let key = core.license_keys.active().await?;
    let jwt = claims.sign(&key).map_err(Error::from)?;
    sqlx::query("INSERT INTO licenses (license_id, tenant_id, tier, jwt, issued_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(&claims.lid)
        .bind(tenant_id)
        .bind(tier.as_str())
        .bind(&jwt)
        .bind(claims.issued_at())
        .bind(claims.expires_at())
        .execute(core.store.pool())
        .await
        .map_err(Error::from)?;
    let command = TenantCommand::RecordLicense {
        license_id: claims.lid.clone(),
        expires_at: claims.expires_at().to_rfc3339(),
    };
    core.execute(call, tenant_id, "license-issue", command).await?;
    Ok(license_pb(&claims.lid, tenant_id, tier, &claims, jwt))
}

fn license_pb(id: &str, tenant_id: &str, tier: Tier, claims: &LicenseClaims, jwt: String) -> pb::License {
    pb::License {
        license_id: id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        tier: tier_to_pb(tier) as i32,
        issued_at: Some(timestamp(claims.issued_at())),
        expires_at: Some(timestamp(claims.expires_at())),
        jwt,
    }
}

#[tonic::async_trait]
impl LicenseService for LicenseApi {
    async fn issue_license(
        &self,
        req: Request<pb::IssueLicenseRequest>,
    ) -> Result<Response<pb::License>, Status> {
        let call = Call::of(&req);
        let tenant_id = self
            .0
            .resolve(&call, req.get_ref().tenant.as_ref(), scopes::OPERATOR)
            .await?;
        self.0
            .authorize_platform(&call, scopes::LICENSE_ISSUE, &tenant_id, "license-issue")
            .await?;
        Ok(Response::new(issue(&self.0, &call, &tenant_id).await?))
    }

    async fn get_license(
        &self,
        req: Request<pb::GetLicenseRequest>,
    ) -> Result<Response<pb::License>, Status> {
        let call = Call::of(&req);
        let tenant_id = self
            .0
            .resolve(&call, req.get_ref().tenant.as_ref(), scopes::LICENSE_READ)
            .await?;
        self.0
            .authorize(&call, scopes::LICENSE_READ, &tenant_id, "license-get")
            .await?;
        let mut read = TenantRead::begin(self.0.store.pool(), &tenant_id).await?;
        let row = read.license().await?;
        read.finish().await?;
        let (id, jwt) = row.ok_or(Error::NotFound("license"))?;
        let jwks = self.0.license_keys.jwks().await?;
        // Our own licenses verify until their grace period ends: their key stays published so long.
        let (claims, _) = keel_tenancy::license::verify(&jwt, &jwks, self.0.license_keys.now())
            .map_err(|_| Error::NotFound("current license"))?;
        Ok(Response::new(license_pb(
            &id,
            &tenant_id,
            claims.tier,
            &claims,
            jwt,
        )))
    }

    async fn rotate_license_key(
        &self,
        req: Request<pb::RotateLicenseKeyRequest>,
    ) -> Result<Response<pb::RotateSigningKeyResponse>, Status> {
        let call = Call::of(&req);
        self.0
            .authorize_operator(&call, "*", "license-key-rotate")
            .await?;
        let kid = self.0.license_keys.rotate().await?;
        let published = self.0.license_keys.jwks().await?.keys;
        self.0
            .audit(
                &call,
                "*",
                "license-key-rotate",
                format!("license-key/{kid}"),
                keel_bus::audit::AuditResult::Success,
                None,
            )
            .await;
        Ok(Response::new(pb::RotateSigningKeyResponse {
            kid,
            published_kids: published.into_iter().map(|k| k.kid).collect(),
        }))
    }
}
