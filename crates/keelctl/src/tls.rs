//! `keelctl tls init`: the local development CA and a certificate per service (what `just up`
//! uses; production brings its own through `KEEL_TLS_*`).

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum TlsCommand {
    /// Make the CA (once) and each service's certificate and key, keeping what exists.
    Init {
        /// Directory to write into (`ca.pem`, `<service>.pem`, `<service>-key.pem`).
        #[arg(long, default_value = crate::dev::TLS_DIR)]
        dir: PathBuf,
        /// Only these services (default: every service of the mesh).
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
    },
}

pub fn run(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Init { dir, services } => {
            let names: Vec<&str> = if services.is_empty() {
                keel_runtime::tls::local::SERVICES.to_vec()
            } else {
                services.iter().map(String::as_str).collect()
            };
            let made = keel_runtime::tls::local::ensure(&dir, &names)?;
            if made.ca {
                println!(
                    "made a CA in {}",
                    dir.join(keel_runtime::tls::local::CA_CERT).display()
                );
            }
            for name in &made.issued {
                println!(
                    "issued {}",
                    dir.join(keel_runtime::tls::local::cert_file(name)).display()
                );
            }
            if !made.ca && made.issued.is_empty() {
                println!("{} is complete", dir.display());
            }
            Ok(())
        }
    }
}
