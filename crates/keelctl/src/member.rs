//! `keelctl member …`: a tenant's members and their roles.

use clap::{Subcommand, ValueEnum};
use keel_proto::v1 as pb;
use serde::Serialize;

use crate::client::{Clients, ConnectionArgs, tenant_ref};
use crate::output::{self, Format, Table, key_values, or_dash};

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Invite a member to a tenant (id or slug).
    Invite {
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List a tenant's members, in id order.
    List {
        tenant: String,
        /// 1-500 (server default 50).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        page_size: Option<u32>,
        /// Continue from a previous page.
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Follow page tokens until every member is listed.
        #[arg(long)]
        all: bool,
    },
    /// Remove a member (the last owner cannot be removed).
    Remove {
        tenant: String,
        /// Member id (`mem_…`).
        #[arg(long)]
        member: String,
    },
    /// Change a member's role.
    Role {
        tenant: String,
        /// Member id (`mem_…`).
        #[arg(long)]
        member: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    Owner,
    Admin,
    Developer,
    Viewer,
}

impl From<RoleArg> for pb::Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Owner => pb::Role::Owner,
            RoleArg::Admin => pb::Role::Admin,
            RoleArg::Developer => pb::Role::Developer,
            RoleArg::Viewer => pb::Role::Viewer,
        }
    }
}

#[derive(Serialize)]
struct MemberView {
    id: String,
    tenant_id: String,
    /// Empty when unknown (not returned, or shredded with the tenant's data key).
    email: String,
    role: String,
}

impl From<pb::Member> for MemberView {
    fn from(m: pb::Member) -> Self {
        Self {
            role: output::role_name(m.role),
            id: m.id,
            tenant_id: m.tenant_id,
            email: m.email,
        }
    }
}

#[derive(Serialize)]
struct MemberList {
    members: Vec<MemberView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
}

#[derive(Serialize)]
struct Removed {
    removed: String,
    tenant: String,
}

pub async fn run(cmd: MemberCommand, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    let mut api = Clients::connect(conn).await?.tenants;
    let member = match cmd {
        MemberCommand::Invite { tenant, email, role } => {
            api.invite_member(pb::InviteMemberRequest {
                tenant: Some(tenant_ref(&tenant)),
                email,
                role: pb::Role::from(role) as i32,
            })
            .await?
        }
        MemberCommand::Role { tenant, member, role } => {
            api.change_member_role(pb::ChangeMemberRoleRequest {
                tenant: Some(tenant_ref(&tenant)),
                member_id: member,
                role: pb::Role::from(role) as i32,
            })
            .await?
        }
        MemberCommand::List {
            tenant,
            page_size,
            page_token,
            all,
        } => {
            let mut members = Vec::new();
            let mut token = page_token.unwrap_or_default();
            loop {
                let resp = api
                    .list_members(pb::ListMembersRequest {
                        tenant: Some(tenant_ref(&tenant)),
                        page: Some(pb::PageRequest {
                            page_size: page_size.unwrap_or(0),
                            page_token: token.clone(),
                        }),
                    })
                    .await?
                    .into_inner();
                members.extend(resp.members.into_iter().map(MemberView::from));
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
            let list = MemberList {
                members,
                next_page_token: token,
            };
            return print_list(list, format);
        }
        MemberCommand::Remove { tenant, member } => {
            api.remove_member(pb::RemoveMemberRequest {
                tenant: Some(tenant_ref(&tenant)),
                member_id: member.clone(),
            })
            .await?;
            let removed = Removed {
                removed: member,
                tenant,
            };
            return match format {
                Format::Json => output::print_json(&removed),
                Format::Table => output::emit(&format!(
                    "removed member {} from {}\n",
                    removed.removed, removed.tenant
                )),
            };
        }
    };
    let m = MemberView::from(member.into_inner());
    match format {
        Format::Json => output::print_json(&m),
        Format::Table => output::emit(&key_values(&[
            ("id", m.id),
            ("tenant", m.tenant_id),
            ("email", or_dash(Some(&m.email))),
            ("role", m.role),
        ])),
    }
}

fn print_list(list: MemberList, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return output::print_json(&list);
    }
    let mut table = Table::new(&["id", "email", "role"]);
    for m in list.members {
        table.row(vec![m.id, or_dash(Some(&m.email)), m.role]);
    }
    output::emit(&table.render())?;
    if !list.next_page_token.is_empty() {
        eprintln!("more members: --page-token {} (or --all)", list.next_page_token);
    }
    Ok(())
}
