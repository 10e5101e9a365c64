//! `keelctl`: the operator's CLI for Keel. `keelctl dev up` runs the whole mesh locally.

mod dev;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "keelctl", version, about = "Operate a Keel mesh")]
struct Cli {
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Dev { command } => dev::run(command).await,
    }
}
