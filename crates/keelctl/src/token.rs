//! `keelctl token …`: mint access tokens (operator) and create service accounts with API keys.

use clap::Subcommand;
use keel_proto::v1 as pb;
use serde::Serialize;

use crate::client::{Clients, ConnectionArgs, is_slug, tenant_ref};
use crate::output::{self, Format, key_values};

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Mint an access token for any tenant and scopes (operator). Prints the token.
    Issue {
        /// Tenant id or slug, or '*' for a platform operator token.
        #[arg(long)]
        tenant: String,
        /// Who the token is for (1-128 of [A-Za-z0-9_-]).
        #[arg(long)]
        subject: String,
        /// A scope to grant (repeat for more), e.g. tenant:read.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Lifetime in seconds (1-86400; server default 900).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=86_400))]
        ttl: Option<u32>,
    },
    /// Create a service account of a tenant and its first API key (shown only once).
    CreateAccount {
        tenant: String,
        /// 1-64 of [a-z0-9-].
        #[arg(long)]
        name: String,
        /// A scope to grant (repeat for more).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
}

#[derive(Serialize)]
struct AccessTokenView {
    token: String,
    expires_at: Option<String>,
    tenant_id: String,
    scopes: Vec<String>,
}

#[derive(Serialize)]
struct AccountView {
    account_id: String,
    key_id: String,
    api_key: String,
}

pub async fn run(cmd: TokenCommand, conn: &ConnectionArgs, format: Format) -> anyhow::Result<()> {
    let mut clients = Clients::connect(conn).await?;
    match cmd {
        TokenCommand::Issue {
            tenant,
            subject,
            scopes,
            ttl,
        } => {
            // IssueToken takes an id; a slug is resolved first.
            let tenant_id = if tenant != "*" && is_slug(&tenant) {
                clients
                    .tenants
                    .get_tenant(pb::GetTenantRequest {
                        tenant: Some(tenant_ref(&tenant)),
                    })
                    .await?
                    .into_inner()
                    .id
            } else {
                tenant
            };
            let t = clients
                .tokens
                .issue_token(pb::IssueTokenRequest {
                    tenant_id,
                    subject,
                    scopes,
                    ttl_seconds: ttl.unwrap_or(0),
                })
                .await?
                .into_inner();
            let view = AccessTokenView {
                expires_at: output::timestamp(t.expires_at.as_ref()),
                token: t.token,
                tenant_id: t.tenant_id,
                scopes: t.scopes,
            };
            match format {
                Format::Json => output::print_json(&view),
                Format::Table => output::emit(&format!("{}\n", view.token)),
            }
        }
        TokenCommand::CreateAccount { tenant, name, scopes } => {
            let created = clients
                .tokens
                .create_service_account(pb::CreateServiceAccountRequest {
                    tenant: Some(tenant_ref(&tenant)),
                    name,
                    scopes,
                })
                .await?
                .into_inner();
            let view = AccountView {
                account_id: created.account_id,
                key_id: created.key_id,
                api_key: created.api_key,
            };
            match format {
                Format::Json => output::print_json(&view),
                Format::Table => {
                    output::emit(&key_values(&[
                        ("account", view.account_id),
                        ("key id", view.key_id),
                        ("api key", view.api_key),
                    ]))?;
                    eprintln!("The API key is shown only now: store it safely.");
                    Ok(())
                }
            }
        }
    }
}
