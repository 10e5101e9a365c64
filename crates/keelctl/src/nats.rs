//! `keelctl nats`: Keel's NATS trust chain (see `keel_bus::authority`). `init` makes the keys
//! and the server configuration (idempotent: existing keys are kept); `creds` issues user
//! credentials for a service, a tenant's audit readers or an admin; `signer` writes the file
//! provisioning issues tenant credentials with.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use keel_bus::acl::{self, Role};
use keel_runtime::nats::authority::{Authority, write_private};

#[derive(Subcommand)]
pub enum NatsCommand {
    /// Create (or keep) the operator, accounts and signing key, and write server.conf.
    Init {
        /// Address the server listens on.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port (Keel's own NATS; never the standard 4222).
        #[arg(long, default_value_t = 4333)]
        port: u16,
    },
    /// Issue a credentials file.
    Creds {
        /// `service:<name>`, `tenant-audit:<tenant id>:<durable consumer>` or `admin`.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Bus namespace (`KEEL_BUS_PREFIX`; "" in production).
        #[arg(long, env = "KEEL_BUS_PREFIX", default_value = "")]
        namespace: String,
        /// Validity in seconds (default: no expiry).
        #[arg(long)]
        ttl_secs: Option<u64>,
        /// Where to write the file (0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the directory holding the trust chain (`KEEL_NATS_HOME`).
    Home,
    /// Write the user-signing key file (for provisioning's `KEEL_PROVISIONING_NATS_SIGNER_FILE`).
    Signer {
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn home() -> PathBuf {
    keel_runtime::nats::authority::default_home()
}

fn parse_role(s: &str) -> Result<Role, String> {
    let valid = |v: &str| {
        keel_events::subjects::is_valid_token(v)
            .then(|| v.to_owned())
            .ok_or_else(|| format!("{v:?} is not a token of [A-Za-z0-9_-]"))
    };
    match s.split_once(':') {
        None if s == "admin" => Ok(Role::Admin),
        Some(("service", name)) => valid(name).map(Role::Service),
        Some(("tenant-audit", rest)) => {
            let (tenant, consumer) = rest
                .split_once(':')
                .ok_or("tenant-audit:<tenant id>:<consumer>")?;
            Ok(Role::TenantAudit {
                tenant: valid(tenant)?,
                consumer: valid(consumer)?,
            })
        }
        _ => Err("use service:<name>, tenant-audit:<tenant id>:<consumer> or admin".into()),
    }
}

pub fn authority(dir: &Path) -> anyhow::Result<Authority> {
    Authority::load(dir).with_context(|| {
        format!(
            "no NATS trust chain in {} (run `keelctl nats init` or `just services`)",
            dir.display()
        )
    })
}

pub fn run(command: NatsCommand) -> anyhow::Result<()> {
    let dir = home();
    match command {
        NatsCommand::Init { host, port } => {
            let authority = Authority::load_or_create(&dir)?;
            let conf = authority.write_server_files(&dir, &host, port)?;
            println!("{}", conf.display());
        }
        NatsCommand::Creds {
            role,
            namespace,
            ttl_secs,
            out,
        } => {
            let creds = acl::issue(
                &authority(&dir)?,
                &role,
                &namespace,
                ttl_secs.map(Duration::from_secs),
            );
            write_private(&out, &creds.to_file())?;
            eprintln!("wrote {} credentials to {}", acl::user_name(&role), out.display());
        }
        NatsCommand::Home => println!("{}", dir.display()),
        NatsCommand::Signer { out } => {
            write_private(&out, &authority(&dir)?.signer()?.to_file())?;
            eprintln!("wrote the user-signing key to {}", out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_refuse_wildcards() {
        assert_eq!(parse_role("admin"), Ok(Role::Admin));
        assert_eq!(parse_role("service:tenant"), Ok(Role::Service("tenant".into())));
        assert_eq!(
            parse_role("tenant-audit:acme:audit-acme"),
            Ok(Role::TenantAudit {
                tenant: "acme".into(),
                consumer: "audit-acme".into()
            })
        );
        assert!(parse_role("tenant-audit:acme").is_err());
        assert!(parse_role("tenant-audit:*:c").is_err());
        assert!(parse_role("tenant-audit:a.b:c").is_err());
        assert!(parse_role("root").is_err());
    }
}
