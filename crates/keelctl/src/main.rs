//! `keelctl`: the operator's CLI for Keel. Tenants, members, tokens, licenses (verified offline),
//! audit tails, tenants' timelines and traces, and usage metering against a running mesh;
//! `keelctl dev up` runs the whole mesh locally.
//!
//! Errors print `error: <gRPC code>: <message>` on stderr and exit 1; usage errors exit 2 (clap's
//! own, and [`UsageError`] for what only a command can check, before any call).

mod audit;
mod billing;
mod client;
mod dev;
mod license;
mod member;
mod nats;
mod obs;
mod output;
mod tenant;
mod timeline;
mod tls;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keelctl", version, about = "Operate a Keel mesh")]
struct Cli {
    #[command(flatten)]
    conn: client::ConnectionArgs,
    #[command(flatten)]
    bus: audit::BusArgs,
    /// How to print results.
    #[arg(long, global = true, value_enum, default_value_t = output::Format::Table)]
    output: output::Format,
    /// Print the trace id every call of this command ran under (on stderr), to follow it with
    /// `keelctl obs trace` or in the trace backend.
    #[arg(long, global = true)]
    trace: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Local development helpers.
    Dev {
        #[command(subcommand)]
        command: dev::DevCommand,
    },
    /// Tenants and their lifecycle.
    Tenant {
        #[command(subcommand)]
        command: tenant::TenantCommand,
    },
    /// A tenant's members and roles.
    Member {
        #[command(subcommand)]
        command: member::MemberCommand,
    },
    /// Access tokens and service accounts.
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Licenses: show, and verify offline.
    License {
        #[command(subcommand)]
        command: license::LicenseCommand,
    },
    /// Keel's NATS trust chain: keys, server config, credentials.
    Nats {
        #[command(subcommand)]
        command: nats::NatsCommand,
    },
    /// The local CA and service certificates (TLS everywhere).
    Tls {
        #[command(subcommand)]
        command: tls::TlsCommand,
    },
    /// Audit records on NATS.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// A tenant's timeline: query it (`keelctl timeline "kind:tenant.*" --tenant acme --last 1h`),
    /// tail it, show one event, rebuild the projection.
    Timeline(timeline::TimelineArgs),
    /// Usage metering: record usage, read a tenant's usage and estimated cost, meters, and the
    /// monthly reconciliation of usage records with the billing queue.
    Billing {
        #[command(subcommand)]
        command: billing::BillingCommand,
    },
    /// Observability: what one trace did across the mesh.
    Obs {
        #[command(subcommand)]
        command: obs::ObsCommand,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.trace {
        eprintln!("trace: {}", client::trace_id());
    }
    let (conn, format) = (&cli.conn, cli.output);
    let result = match cli.command {
        Command::Dev { command } => dev::run(command).await.map(|()| ExitCode::SUCCESS),
        Command::Tenant { command } => tenant::run(command, conn, format)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Member { command } => member::run(command, conn, format)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Token { command } => token::run(command, conn, format)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::License { command } => license::run(command, conn, format).await,
        Command::Nats { command } => nats::run(command).map(|()| ExitCode::SUCCESS),
        Command::Tls { command } => tls::run(command).map(|()| ExitCode::SUCCESS),
        Command::Audit { command } => audit::run(command, conn, &cli.bus, format)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Timeline(args) => timeline::run(args, conn, format)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Billing { command } => billing::run(command, conn, format)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Obs { command } => obs::run(command, conn, format).await.map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|e| {
        if let Some(usage) = e.downcast_ref::<UsageError>() {
            eprintln!("error: {usage}");
            return ExitCode::from(2);
        }
        report(&e);
        ExitCode::FAILURE
    })
}

/// Input a command refused before any call (an empty period, a bad events file): exit 2, like
/// clap's own usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn report(e: &anyhow::Error) {
    match e.downcast_ref::<tonic::Status>() {
        Some(s) if s.message().is_empty() => eprintln!("error: {}", client::code_name(s.code())),
        Some(s) => eprintln!("error: {}: {}", client::code_name(s.code()), s.message()),
        None => {
            // Each cause once: lower layers often repeat their source in their own message.
            let mut msg = e.to_string();
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
            }
            eprintln!("error: {msg}");
        }
    }
}
