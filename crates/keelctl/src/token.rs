//! `keelctl token …`: mint access tokens (operator), create service accounts and operator keys
//! with their API keys, list and revoke API keys.

use clap::Subcommand;
use keel_proto::v1 as pb;
use serde::Serialize;

use keel_proto::v1::token_service_client::TokenServiceClient;

use crate::client::{Authed, Clients, ConnectionArgs, is_slug, tenant_ref};
use crate::output::{self, Format, Table, key_values, or_dash};

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
    /// Create a platform key (operator; shown only once): with `--scope operator` an operator
    /// key (once one exists the bootstrap key can be revoked: `keelctl token revoke bootstrap`,
    /// or KEEL_TENANT_BOOTSTRAP=off); without, a platform service account holding only the
    /// given scopes on every tenant, e.g. provisioning's: --scope tenant:read --scope
    /// tenant:lifecycle --scope license:read --scope license:issue.
    CreateOperatorKey {
        /// 1-64 of [a-z0-9-]; the account is sa_op-<name> (operator) or sa_pf-<name>.
        #[arg(long)]
        name: String,
        /// A scope to grant (repeat for more); you must hold each one.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List API keys, never their secrets: an operator sees all (or --tenant's), a tenant token
    /// its own tenant's.
    List {
        /// Tenant id or slug.
        #[arg(long)]
        tenant: Option<String>,
        /// 1-500 (server default 50).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=500))]
        page_size: Option<u32>,
        /// Continue from a previous page.
        #[arg(long, conflicts_with = "all")]
        page_token: Option<String>,
        /// Follow page tokens until every key is listed.
        #[arg(long)]
        all: bool,
    },
    /// Revoke an API key at once (idempotent). Access tokens it was already exchanged for expire
    /// within 15 minutes. The last active operator key cannot be revoked.
    Revoke {
        /// Key id (`key_…`, or `bootstrap`).
        #[arg(value_name = "KEY_ID")]
        key_id: String,
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

#[derive(Serialize)]
struct KeyView {
    key_id: String,
    account_id: String,
    tenant_id: String,
    scopes: Vec<String>,
    created_at: Option<String>,
    /// Absent while the key is active.
    revoked_at: Option<String>,
}

impl From<pb::ApiKey> for KeyView {
    fn from(k: pb::ApiKey) -> Self {
        Self {
            created_at: output::timestamp(k.created_at.as_ref()),
            revoked_at: output::timestamp(k.revoked_at.as_ref()),
            key_id: k.key_id,
            account_id: k.account_id,
            tenant_id: k.tenant_id,
            scopes: k.scopes,
        }
    }
}

#[derive(Serialize)]
struct KeyList {
    keys: Vec<KeyView>,
    #[serde(skip_serializing_if = "String::is_empty")]
    next_page_token: String,
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
            print_created(created, format)
        }
        TokenCommand::CreateOperatorKey { name, scopes } => {
            let created = clients
                .tokens
                .create_operator_key(pb::CreateOperatorKeyRequest { name, scopes })
                .await?
                .into_inner();
            print_created(created, format)
        }
        TokenCommand::List {
            tenant,
            page_size,
            page_token,
            all,
        } => {
            list(
                &mut clients.tokens,
                tenant,
                page_size.unwrap_or(0),
                page_token,
                all,
                format,
            )
            .await
        }
        TokenCommand::Revoke { key_id } => {
            let key = clients
                .tokens
                .revoke_api_key(pb::RevokeApiKeyRequest { key_id })
                .await?
                .into_inner();
            let view = KeyView::from(key);
            match format {
                Format::Json => output::print_json(&view),
                Format::Table => output::emit(&key_values(&[
                    ("key id", view.key_id),
                    ("account", view.account_id),
                    ("tenant", view.tenant_id),
                    ("scopes", view.scopes.join(", ")),
                    ("created", or_dash(view.created_at.as_deref())),
                    ("revoked", or_dash(view.revoked_at.as_deref())),
                ])),
            }
        }
    }
}

async fn list(
    api: &mut TokenServiceClient<Authed>,
    tenant: Option<String>,
    page_size: u32,
    page_token: Option<String>,
    all: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut keys = Vec::new();
    let mut token = page_token.unwrap_or_default();
    loop {
        let resp = api
            .list_api_keys(pb::ListApiKeysRequest {
                tenant: tenant.as_deref().map(tenant_ref),
                page: Some(pb::PageRequest {
                    page_size,
                    page_token: token.clone(),
                }),
            })
            .await?
            .into_inner();
        keys.extend(resp.keys.into_iter().map(KeyView::from));
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
    let list = KeyList {
        keys,
        next_page_token: token,
    };
    if format == Format::Json {
        return output::print_json(&list);
    }
    let mut table = Table::new(&["key id", "account", "tenant", "scopes", "created", "revoked"]);
    for k in list.keys {
        table.row(vec![
            k.key_id,
            k.account_id,
            k.tenant_id,
            k.scopes.join(","),
            or_dash(k.created_at.as_deref()),
            or_dash(k.revoked_at.as_deref()),
        ]);
    }
    output::emit(&table.render())?;
    if !list.next_page_token.is_empty() {
        eprintln!("more keys: --page-token {} (or --all)", list.next_page_token);
    }
    Ok(())
}

fn print_created(created: pb::ServiceAccountCreated, format: Format) -> anyhow::Result<()> {
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
