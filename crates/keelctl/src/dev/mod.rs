//! `keelctl dev up`: a small supervisor that starts every built service binary as its own
//! process on its own ports, prefixes their logs, waits until each is ready, and on Ctrl-C
//! (or SIGTERM) stops them all gracefully.

mod platform_key;
mod supervisor;

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum DevCommand {
    /// Start every service of the workspace and wait for Ctrl-C.
    Up {
        /// Directory holding the built binaries (`target/debug`).
        #[arg(long, default_value = "target/debug")]
        bin_dir: PathBuf,
        /// Only these services (default: all that are built).
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
        /// Seconds to wait for each service's /readyz.
        #[arg(long, default_value_t = 60)]
        ready_timeout: u64,
    },
}

/// One service of the mesh: name, binary, HTTP port of its /readyz (DESIGN.md §4).
pub struct ServiceSpec {
    pub name: &'static str,
    pub binary: &'static str,
    pub grpc_port: u16,
    pub http_port: u16,
}

/// Where `keelctl dev up` keeps the local CA and service certificates.
pub const TLS_DIR: &str = ".keel/tls";

pub const SERVICES: &[ServiceSpec] = &[
    ServiceSpec {
        name: "tenant",
        binary: "keel-tenant",
        grpc_port: 50051,
        http_port: 8081,
    },
    ServiceSpec {
        name: "provisioning",
        binary: "keel-provisioning",
        grpc_port: 50052,
        http_port: 8082,
    },
    ServiceSpec {
        name: "billing",
        binary: "keel-billing",
        grpc_port: 50053,
        http_port: 8083,
    },
    ServiceSpec {
        name: "timeline",
        binary: "keel-timeline",
        grpc_port: 50054,
        http_port: 8084,
    },
    ServiceSpec {
        name: "evidence",
        binary: "keel-evidence",
        grpc_port: 50055,
        http_port: 8085,
    },
    ServiceSpec {
        name: "scheduler",
        binary: "keel-scheduler",
        grpc_port: 50056,
        http_port: 8086,
    },
    ServiceSpec {
        name: "evaluator",
        binary: "keel-evaluator",
        grpc_port: 50057,
        http_port: 8087,
    },
];

pub async fn run(command: DevCommand) -> anyhow::Result<()> {
    match command {
        DevCommand::Up {
            bin_dir,
            only,
            ready_timeout,
        } => supervisor::up(&bin_dir, &only, std::time::Duration::from_secs(ready_timeout)).await,
    }
}
