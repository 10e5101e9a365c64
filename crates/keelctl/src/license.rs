//! `keelctl license …`: fetch a tenant's license, and verify a license file fully offline
//! against a JWKS file, the way a tenant's deployment does.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::Utc;
use clap::Subcommand;
use keel_auth::JwkSet;
use keel_proto::v1 as pb;
use keel_tenancy::license::{LicenseClaims, LicenseStatus};
use serde::Serialize;

use crate::client::{Clients, ConnectionArgs, tenant_ref};
use crate::output::{self, Format, key_values, or_dash, rfc3339};

/// Larger files are not licenses or key sets; refuse them before reading them whole.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Subcommand)]
pub enum LicenseCommand {
    /// Show a tenant's current license.
    Show {
        tenant: String,
        /// Print only the JWT (to save it to a file).
        #[arg(long)]
        jwt_only: bool,
    },
    /// Verify a license JWT file offline against a JWKS file. Exits 0 when valid or in grace.
    Verify {
        /// File holding the license JWT.
        file: PathBuf,
        /// File holding the license keys (GET /.well-known/license-jwks.json of the tenant service).
        #[arg(long)]
        jwks: PathBuf,
    },
}

#[derive(Serialize)]
struct LicenseView {
    license_id: String,
    tenant_id: String,
    tier: String,
    issued_at: Option<String>,
    expires_at: Option<String>,
    jwt: String,
}

#[derive(Serialize)]
struct Verdict {
    /// `valid`, `grace` or `invalid`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    read_only_until: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    claims: Option<LicenseClaims>,
}

pub async fn run(cmd: LicenseCommand, conn: &ConnectionArgs, format: Format) -> anyhow::Result<ExitCode> {
    match cmd {
        LicenseCommand::Show { tenant, jwt_only } => {
            show(conn, &tenant, jwt_only, format).await?;
            Ok(ExitCode::SUCCESS)
        }
        LicenseCommand::Verify { file, jwks } => verify(&file, &jwks, format),
    }
}

async fn show(conn: &ConnectionArgs, tenant: &str, jwt_only: bool, format: Format) -> anyhow::Result<()> {
    let l = Clients::connect(conn)
        .await?
        .licenses
        .get_license(pb::GetLicenseRequest {
            tenant: Some(tenant_ref(tenant)),
        })
        .await?
        .into_inner();
    if jwt_only {
        return output::emit(&format!("{}\n", l.jwt));
    }
    let view = LicenseView {
        tier: output::tier_name(l.tier),
        issued_at: output::timestamp(l.issued_at.as_ref()),
        expires_at: output::timestamp(l.expires_at.as_ref()),
        license_id: l.license_id,
        tenant_id: l.tenant_id,
        jwt: l.jwt,
    };
    match format {
        Format::Json => output::print_json(&view),
        Format::Table => output::emit(&key_values(&[
            ("license", view.license_id),
            ("tenant", view.tenant_id),
            ("tier", view.tier),
            ("issued", or_dash(view.issued_at.as_deref())),
            ("expires", or_dash(view.expires_at.as_deref())),
            ("jwt", view.jwt),
        ])),
    }
}

/// Offline: no network, only the two files and the clock.
fn verify(file: &Path, jwks: &Path, format: Format) -> anyhow::Result<ExitCode> {
    let jwt = read_small(file, "license")?;
    let jwks_text = read_small(jwks, "JWKS")?;
    let keys: JwkSet = serde_json::from_str(&jwks_text)
        .with_context(|| format!("{}: not a JWKS document", jwks.display()))?;
    let verdict = match keel_tenancy::license::verify(&jwt, &keys, Utc::now()) {
        Ok((claims, LicenseStatus::Valid)) => Verdict {
            status: "valid",
            read_only_until: None,
            error: None,
            claims: Some(claims),
        },
        Ok((claims, LicenseStatus::Grace { until })) => Verdict {
            status: "grace",
            read_only_until: Some(rfc3339(until)),
            error: None,
            claims: Some(claims),
        },
        // `verify` rejects a license past its grace period; kept for completeness.
        Ok((claims, LicenseStatus::Expired)) => Verdict {
            status: "invalid",
            read_only_until: None,
            error: Some("license expired".into()),
            claims: Some(claims),
        },
        Err(e) => Verdict {
            status: "invalid",
            read_only_until: None,
            error: Some(e.to_string()),
            claims: None,
        },
    };
    let ok = verdict.status != "invalid";
    match format {
        Format::Json => output::print_json(&verdict)?,
        Format::Table => output::emit(&verdict_text(&verdict))?,
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn verdict_text(v: &Verdict) -> String {
    match (&v.claims, &v.read_only_until) {
        (Some(c), None) if v.status == "valid" => format!("VALID\n{}", claims_table(c)),
        (Some(c), Some(until)) => format!("GRACE (read-only until {until})\n{}", claims_table(c)),
        _ => format!(
            "INVALID: {}\n",
            v.error.as_deref().unwrap_or("license did not verify")
        ),
    }
}

fn claims_table(c: &LicenseClaims) -> String {
    key_values(&[
        ("license", c.lid.clone()),
        ("tenant", c.tenant.clone()),
        ("tier", c.tier.as_str().to_owned()),
        ("issued", rfc3339(c.issued_at())),
        ("expires", rfc3339(c.expires_at())),
        ("features", c.features.join(", ")),
        ("environments", limit(c.limits.environments)),
        ("agent limit", limit(c.limits.agent_limit)),
        ("retention days", c.limits.retention_days.to_string()),
    ])
}

fn read_small(path: &Path, what: &str) -> anyhow::Result<String> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {what} file {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_FILE_BYTES,
        "{what} file {} is larger than {MAX_FILE_BYTES} bytes",
        path.display()
    );
    std::fs::read_to_string(path).with_context(|| format!("reading {what} file {}", path.display()))
}

/// A limit for people: the number, or `unlimited` when absent.
pub fn limit(value: Option<u32>) -> String {
    value.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}
