//! `keelctl tenant …`: create, list, show and drive a tenant's lifecycle.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use keel_proto::v1 as pb;
use serde::Serialize;

use keel_proto::v1::tenant_service_client::TenantServiceClient;

use crate::client::{Authed, Clients, ConnectionArgs, tenant_ref};
use crate::output::{self, Format, Table, key_values, or_dash};

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (operator). Idempotent on --request-id.
    Create {
        #[arg(long)]
        name: String,
        /// DNS label: 3-40 of [a-z0-9-], starting with a letter.
        #[arg(long)]
        slug: String,
        #[arg(long, value_enum)]
        tier: TierArg,
        #[arg(long)]
        owner_email: String,
        /// Idempotency key (default: a new UUID). Repeat it to retry safely.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// List tenants (an operator sees all, a tenant token its own).
    List {
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// 1-500 (server default 50).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        page_size: Option<u32>,
        /// Continue from a previous page.
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Follow page tokens until every tenant is listed.
        #[arg(long)]
        all: bool,
    },
    /// Show one tenant (id or slug).
    Show { tenant: String },
    /// Suspend an active tenant (operator).
    Suspend {
        tenant: String,
        #[arg(long)]
        reason: String,
    },
    /// Reactivate a suspended tenant (operator).
    Reactivate { tenant: String },
    /// Request deletion: destroys the tenant's data key at once (crypto-shredding).
    Delete {
        tenant: String,
        /// Do not ask for confirmation on a terminal.
        #[arg(long)]
        yes: bool,
    },
    /// Change the tier (operator); the license is re-issued.
    ChangeTier {
        tenant: String,
        #[arg(long, value_enum)]
        tier: TierArg,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum TierArg {
    Low,
    Mid,
    High,
    Business,
}

impl From<TierArg> for pb::Tier {
    fn from(t: TierArg) -> Self {
        match t {
            TierArg::Low => pb::Tier::Low,
            TierArg::Mid => pb::Tier::Mid,
            TierArg::High => pb::Tier::High,
            TierArg::Business => pb::Tier::Business,
        }
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StatusArg {
    Pending,
    Provisioning,
    Active,
    Suspended,
    Failed,
    Deleting,
    Deleted,
}

impl From<StatusArg> for pb::TenantStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Pending => pb::TenantStatus::Pending,
            StatusArg::Provisioning => pb::TenantStatus::Provisioning,
            StatusArg::Active => pb::TenantStatus::Active,
            StatusArg::Suspended => pb::TenantStatus::Suspended,
            StatusArg::Failed => pb::TenantStatus::Failed,
            StatusArg::Deleting => pb::TenantStatus::Deleting,
            StatusArg::Deleted => pb::TenantStatus::Deleted,
        }
    }
}

#[derive(Serialize)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub tier: String,
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status_reason: String,
    pub created_at: Option<String>,
    pub version: u64,
    pub entitlements: Option<EntitlementsView>,
}

#[derive(Serialize)]
pub struct EntitlementsView {
    /// Absent (`null` in JSON): unlimited.
    pub environments: Option<u32>,
    /// Absent (`null` in JSON): unlimited.
    pub agent_limit: Option<u32>,
    pub retention_days: u32,
    pub features: Vec<String>,
    pub infrastructure: String,
    pub sla: String,
    pub pricing: String,
}

impl From<pb::Tenant> for TenantView {
    fn from(t: pb::Tenant) -> Self {
        Self {
            tier: output::tier_name(t.tier),
            status: output::status_name(t.status),
            created_at: output::timestamp(t.created_at.as_ref()),
            entitlements: t.entitlements.map(|e| EntitlementsView {
                environments: e.environments,
                agent_limit: e.agent_limit,
                retention_days: e.retention_days,
                features: e.features,
                infrastructure: e.infrastructure,
                sla: e.sla,
                pricing: e.pricing,
            }),
            id: t.id,
            name: t.name,
            slug: t.slug,
            status_reason: t.status_reason,
            version: t.version,
        }
    }
}

#[derive(Serialize)]
struct TenantList {
    tenants: Vec<TenantView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

pub async fn run(cmd: TenantCommand, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    if let TenantCommand::Delete { tenant, yes: false } = &cmd
        && std::io::stdin().is_terminal()
        && !confirm_delete(tenant)?
    {
        bail!("not deleted");
    }
    let mut api = Clients::connect(conn).await?.tenants;
    let tenant = match cmd {
        TenantCommand::Create {
            name,
            slug,
            tier,
            owner_email,
            request_id,
        } => {
            let request_id = request_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            api.create_tenant(pb::CreateTenantRequest {
                name,
                slug,
                tier: pb::Tier::from(tier) as i32,
                owner_email,
                request_id,
            })
            .await?
        }
        TenantCommand::List {
            status,
            page_size,
            page_token,
            all,
        } => {
            let status = status.map(|s| pb::TenantStatus::from(s) as i32).unwrap_or(0);
            return list(&mut api, status, page_size.unwrap_or(0), page_token, all, format).await;
        }
        TenantCommand::Show { tenant } => {
            api.get_tenant(pb::GetTenantRequest {
                tenant: Some(tenant_ref(&tenant)),
            })
            .await?
        }
        TenantCommand::Suspend { tenant, reason } => {
            api.suspend_tenant(pb::SuspendTenantRequest {
                tenant: Some(tenant_ref(&tenant)),
                reason,
            })
            .await?
        }
        TenantCommand::Reactivate { tenant } => {
            api.reactivate_tenant(pb::ReactivateTenantRequest {
                tenant: Some(tenant_ref(&tenant)),
            })
            .await?
        }
        TenantCommand::Delete { tenant, .. } => {
            api.delete_tenant(pb::DeleteTenantRequest {
                tenant: Some(tenant_ref(&tenant)),
            })
            .await?
        }
        TenantCommand::ChangeTier { tenant, tier } => {
            api.change_tier(pb::ChangeTierRequest {
                tenant: Some(tenant_ref(&tenant)),
                tier: pb::Tier::from(tier) as i32,
            })
            .await?
        }
    };
    print_tenant(TenantView::from(tenant.into_inner()), format)
}

async fn list(
    api: &mut TenantServiceClient<Authed>,
    status: i32,
    page_size: u32,
    page_token: Option<String>,
    all: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut tenants = Vec::new();
    let mut token = page_token.unwrap_or_default();
    loop {
        let resp = api
            .list_tenants(pb::ListTenantsRequest {
                page: Some(pb::PageRequest {
                    page_size,
                    page_token: token.clone(),
                }),
                status,
            })
            .await?
            .into_inner();
        tenants.extend(resp.tenants.into_iter().map(TenantView::from));
        let next = resp.page.map(|p| p.next_page_token).unwrap_or_default();
        // A server handing back the same token would loop forever.
        anyhow::ensure!(
            next.is_empty() || next != token,
            "the service repeated a page token"
        );
        token = next;
        if !all || token.is_empty() {
            break;
        }
    }
    print_list(
        TenantList {
            tenants,
            next_page_token: token,
        },
        format,
    )
}

/// Asks to type the tenant reference again before an irreversible deletion.
fn confirm_delete(tenant: &str) -> anyhow::Result<bool> {
    eprint!(
        "Deleting {tenant} destroys its data key: its members' e-mail addresses become unreadable for good.\nType {tenant} to confirm: "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == tenant)
}

pub fn print_tenant(t: TenantView, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return output::print_json(&t);
    }
    let mut pairs = vec![
        ("id", t.id),
        ("name", t.name),
        ("slug", t.slug),
        ("tier", t.tier),
        ("status", t.status),
    ];
    if !t.status_reason.is_empty() {
        pairs.push(("reason", t.status_reason));
    }
    pairs.push(("created", or_dash(t.created_at.as_deref())));
    pairs.push(("version", t.version.to_string()));
    if let Some(e) = t.entitlements {
        pairs.push(("environments", crate::license::limit(e.environments)));
        pairs.push(("agent limit", crate::license::limit(e.agent_limit)));
        pairs.push(("retention days", e.retention_days.to_string()));
        pairs.push(("features", e.features.join(", ")));
    }
    output::emit(&key_values(&pairs))
}

fn print_list(list: TenantList, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return output::print_json(&list);
    }
    let mut table = Table::new(&["id", "slug", "name", "tier", "status", "created", "reason"]);
    for t in list.tenants {
        table.row(vec![
            t.id,
            t.slug,
            t.name,
            t.tier,
            t.status,
            or_dash(t.created_at.as_deref()),
            t.status_reason,
        ]);
    }
    output::emit(&table.render())?;
    if !list.next_page_token.is_empty() {
        eprintln!("more tenants: --page-token {} (or --all)", list.next_page_token);
    }
    Ok(())
}
