//! Service configuration: built-in defaults, then `KEEL_*` environment, then command-line flags.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use clap::{CommandFactory, FromArgMatches, Parser};
use serde::Serialize;

use crate::error::{Error, Result};

const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/keel";
/// Keel's own NATS (`infra/local/nats.sh`), never the machine's open one on 4222.
const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4333";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;
const DEFAULT_JWKS_TTL_SECS: u64 = 300;
/// The local tenant service's gRPC address, without its scheme (`https://` with TLS).
const DEFAULT_TENANT_HOST: &str = "127.0.0.1:50051";
/// The local tenant service's JWKS endpoint, without its scheme; used when `KEEL_JWKS_URL` is
/// not set.
pub const DEFAULT_JWKS_HOST_PATH: &str = "127.0.0.1:8081/.well-known/jwks.json";

/// How log lines are rendered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Multi-line human-readable output (local development).
    Pretty,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "pretty" | "text" => Ok(LogFormat::Pretty),
            _ => Err("expected `json` or `pretty`".to_owned()),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Pretty => "pretty",
        })
    }
}

/// The resolved configuration of one service.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Short service name, e.g. `tenant`.
    pub service: String,
    /// `KEEL_DATABASE_URL` / `--database-url`.
    pub database_url: String,
    /// `KEEL_NATS_URL` / `--nats-url`.
    pub nats_url: String,
    /// `KEEL_NATS_CREDS`: the service's NATS credentials file (user JWT + nkey seed), issued by
    /// `keelctl nats creds`. Keel's NATS refuses connections without one.
    pub nats_creds: Option<std::path::PathBuf>,
    /// `KEEL_REDIS_URL` / `--redis-url`.
    pub redis_url: String,
    /// `KEEL_<SERVICE>_GRPC_ADDR` / `--grpc-addr`; port 0 binds an ephemeral port.
    pub grpc_addr: SocketAddr,
    /// `KEEL_<SERVICE>_HTTP_ADDR` / `--http-addr`; port 0 binds an ephemeral port.
    pub http_addr: SocketAddr,
    /// `KEEL_LOG` / `--log`, in `EnvFilter` syntax.
    pub log_level: String,
    /// `KEEL_LOG_FORMAT` / `--log-format`.
    pub log_format: LogFormat,
    /// `KEEL_BUS_PREFIX`: prefix of NATS streams and subjects, so tests can share a server.
    pub bus_prefix: String,
    /// `KEEL_RESOURCE_PREFIX`: prefix of the names of tenants' resources shared by the services
    /// (the Redis quota hash `keel:<prefix>quota:<tenant>` provisioning writes and every auth
    /// layer reads), so installations and tests can share servers.
    pub resource_prefix: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; traces are exported only when set.
    pub otlp_endpoint: Option<String>,
    /// `KEEL_TRACE_SAMPLE_RATIO` (default 1.0), `KEEL_TRACE_SLOW_MS` (500),
    /// `KEEL_TRACE_TENANT_RATIOS` (`tenant=ratio,…`): which spans are exported.
    pub sampling: crate::telemetry::sampling::Sampling,
    /// `KEEL_SHUTDOWN_TIMEOUT` (seconds): how long draining may take before the process gives up.
    pub shutdown_timeout_secs: u64,
    /// `KEEL_MASTER_KEY`, or the contents of the file `KEEL_MASTER_KEY_FILE`: base64 of 32
    /// bytes sealing secrets at rest (see `keel_auth::seal`). Required by every service.
    pub master_key: Option<String>,
    /// `KEEL_BOOTSTRAP_TOKEN`: the operator API key the tenant service installs at start, and
    /// the key other services fall back to for calling it.
    pub bootstrap_token: Option<String>,
    /// `KEEL_TENANT_ADDR`: the tenant service's gRPC URL, for services that call it
    /// (default `https://127.0.0.1:50051`, `http://` in plaintext mode).
    pub tenant_addr: String,
    /// `KEEL_JWKS_URL`: where token-verifying keys are fetched; `None` means the local tenant
    /// service's (`https://127.0.0.1:8081/.well-known/jwks.json`, or the tenant service's own).
    pub jwks_url: Option<String>,
    /// `KEEL_TLS_DIR` / `KEEL_TLS_CA` / `KEEL_TLS_CERT` / `KEEL_TLS_KEY`, or
    /// `KEEL_TLS_INSECURE=true`: TLS of every listener and client (see [`crate::tls`]).
    pub tls: crate::tls::TlsSetting,
    /// `KEEL_JWKS_TTL_SECS`: how long fetched keys verify tokens while the endpoint is down.
    pub jwks_ttl_secs: u64,
    /// `KEEL_READY_STALL_SECS` (default 60): a relay or consumer with work waiting and no
    /// progress for this long makes the service unready.
    pub ready_stall_secs: u64,
    /// `KEEL_PROJECTION_GAP_SECS` (default 120): how long an ordered projection keeps an event
    /// that arrived ahead of a gap in its aggregate before it declares the gap lost.
    pub projection_gap_secs: u64,
    /// Every other `KEEL_<SERVICE>_*` variable, keyed by the lower-cased rest of its name; a
    /// service reads them through its typed settings ([`crate::settings`]).
    pub extra: BTreeMap<String, String>,
}

/// What the command line asked for.
#[derive(Clone, Debug)]
pub enum ConfigOrPrint {
    /// Run the service with this configuration.
    Run(Config),
    /// `--print-config`: print this configuration (see [`Config::to_redacted_json`]) and exit 0.
    Print(Config),
}

#[derive(Parser, Debug)]
#[command(version, about = "A Keel service")]
struct Flags {
    /// gRPC listen address (IP:PORT, port 0 for an ephemeral port).
    #[arg(long, value_name = "IP:PORT")]
    grpc_addr: Option<String>,
    /// HTTP listen address for /livez, /readyz and /metrics.
    #[arg(long, value_name = "IP:PORT")]
    http_addr: Option<String>,
    /// PostgreSQL URL.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// NATS URL.
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    /// Redis URL.
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Log filter in EnvFilter syntax, e.g. `info,keel_store=debug`.
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
    /// Log format: json or pretty.
    #[arg(long, value_name = "FORMAT")]
    log_format: Option<String>,
    /// Print the resolved configuration as JSON (secrets redacted) and exit.
    #[arg(long)]
    print_config: bool,
}

/// Default (gRPC, HTTP) ports of a known service; `None` for anything else.
pub fn default_ports(service: &str) -> Option<(u16, u16)> {
    Some(match service {
        "tenant" => (50051, 8081),
        "provisioning" => (50052, 8082),
        "billing" | "billing-meter" => (50053, 8083),
        "timeline" | "timeline-indexer" => (50054, 8084),
        "evidence" | "evidence-locker" => (50055, 8085),
        "scheduler" => (50056, 8086),
        "evaluator" => (50057, 8087),
        _ => return None,
    })
}

/// `KEEL_<SERVICE>_`, the prefix of a service's own variables.
pub fn env_prefix(service: &str) -> String {
    format!("KEEL_{}_", service.to_ascii_uppercase().replace('-', "_"))
}

impl Config {
    /// Resolves the configuration from `std::env::args()` and the process environment.
    ///
    /// `--help` and `--version` print and exit 0; `--print-config` prints the redacted JSON and
    /// exits 0. Other problems are returned.
    pub fn load(service: &str) -> Result<Config> {
        Ok(Config::load_with::<crate::settings::NoSettings>(service)?.0)
    }

    /// As [`Config::load`] for a service with typed settings `S`, which it returns too:
    /// `--print-config` shows them (under `settings`), and bad settings are an error here,
    /// before anything starts.
    pub fn load_with<S: crate::settings::Settings>(service: &str) -> Result<(Config, S)> {
        match Config::from_vars(service, std::env::args(), std::env::vars()) {
            Ok(ConfigOrPrint::Run(config)) => {
                let settings = config.settings::<S>()?;
                Ok((config, settings))
            }
            Ok(ConfigOrPrint::Print(config)) => {
                let settings = config.settings::<S>()?;
                let mut shown = serde_json::to_value(config.redacted()).unwrap_or_default();
                if let Some(map) = shown.as_object_mut() {
                    map.remove("extra");
                    map.insert("settings".into(), crate::settings::redacted_json(&settings));
                }
                println!(
                    "{}",
                    serde_json::to_string_pretty(&shown).unwrap_or_else(|_| config.to_redacted_json())
                );
                std::process::exit(0)
            }
            Err(Error::Cli(e))
                if matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
                ) =>
            {
                e.exit()
            }
            Err(e) => Err(e),
        }
    }

    /// Pure resolution from `args` (first item is the program name) and an environment lookup.
    ///
    /// A lookup cannot be enumerated, so `extra` stays empty; [`Config::from_vars`] fills it.
    pub fn from_sources(
        service: &str,
        args: impl IntoIterator<Item = String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConfigOrPrint> {
        let env = |name: &str| env(name).filter(|v| !v.is_empty());
        let command = Flags::command().name(format!("keel-{service}"));
        let flags = Flags::from_arg_matches(&command.try_get_matches_from(args)?)?;
        let prefix = env_prefix(service);
        let (grpc_port, http_port) = default_ports(service).unwrap_or((0, 0));
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);

        let string = |flag: Option<String>, var: &str, default: &str| {
            flag.or_else(|| env(var)).unwrap_or_else(|| default.to_owned())
        };
        let addr = |flag: Option<String>, flag_name: &str, var: String, port: u16| {
            let (name, value) = match (flag, env(&var)) {
                (Some(v), _) => (flag_name.to_owned(), v),
                (None, Some(v)) => (var, v),
                (None, None) => return Ok(SocketAddr::new(localhost, port)),
            };
            value.trim().parse::<SocketAddr>().map_err(|_| Error::Config {
                name,
                value,
                reason: "expected IP:PORT, e.g. 127.0.0.1:50051 (port 0 for any free port)".into(),
            })
        };

        let log_format = match (flags.log_format, env("KEEL_LOG_FORMAT")) {
            (Some(v), _) => parse_named("--log-format", v)?,
            (None, Some(v)) => parse_named("KEEL_LOG_FORMAT", v)?,
            (None, None) => LogFormat::default(),
        };
        let log_level = match (flags.log, env("KEEL_LOG")) {
            (Some(v), _) => validate_filter("--log", v)?,
            (None, Some(v)) => validate_filter("KEEL_LOG", v)?,
            (None, None) => "info".to_owned(),
        };
        let shutdown_timeout_secs = match env("KEEL_SHUTDOWN_TIMEOUT") {
            Some(v) => parse_named("KEEL_SHUTDOWN_TIMEOUT", v)?,
            None => DEFAULT_SHUTDOWN_TIMEOUT_SECS,
        };
        let jwks_ttl_secs = match env("KEEL_JWKS_TTL_SECS") {
            Some(v) => parse_named("KEEL_JWKS_TTL_SECS", v)?,
            None => DEFAULT_JWKS_TTL_SECS,
        };
        let ready_stall_secs = match env("KEEL_READY_STALL_SECS") {
            Some(v) => parse_named::<u64>("KEEL_READY_STALL_SECS", v)?.max(1),
            None => 60,
        };
        let projection_gap_secs = match env("KEEL_PROJECTION_GAP_SECS") {
            Some(v) => parse_named::<u64>("KEEL_PROJECTION_GAP_SECS", v)?.max(1),
            None => 120,
        };
        let trimmed = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let tls = crate::tls::TlsSetting::resolve(service, env)?;

        let config = Config {
            service: service.to_owned(),
            database_url: string(flags.database_url, "KEEL_DATABASE_URL", DEFAULT_DATABASE_URL),
            nats_url: string(flags.nats_url, "KEEL_NATS_URL", DEFAULT_NATS_URL),
            nats_creds: trimmed("KEEL_NATS_CREDS").map(std::path::PathBuf::from),
            redis_url: string(flags.redis_url, "KEEL_REDIS_URL", DEFAULT_REDIS_URL),
            grpc_addr: addr(
                flags.grpc_addr,
                "--grpc-addr",
                format!("{prefix}GRPC_ADDR"),
                grpc_port,
            )?,
            http_addr: addr(
                flags.http_addr,
                "--http-addr",
                format!("{prefix}HTTP_ADDR"),
                http_port,
            )?,
            log_level,
            log_format,
            bus_prefix: env("KEEL_BUS_PREFIX").unwrap_or_default(),
            resource_prefix: trimmed("KEEL_RESOURCE_PREFIX").unwrap_or_default(),
            otlp_endpoint: env("OTEL_EXPORTER_OTLP_ENDPOINT"),
            sampling: crate::telemetry::sampling::Sampling::parse(
                env("KEEL_TRACE_SAMPLE_RATIO").as_deref(),
                env("KEEL_TRACE_SLOW_MS").as_deref(),
                env("KEEL_TRACE_TENANT_RATIOS").as_deref(),
            )?,
            shutdown_timeout_secs,
            master_key: match (trimmed("KEEL_MASTER_KEY"), trimmed("KEEL_MASTER_KEY_FILE")) {
                (Some(key), _) => Some(key),
                (None, Some(path)) => Some(
                    std::fs::read_to_string(&path)
                        .map_err(|e| Error::Config {
                            name: "KEEL_MASTER_KEY_FILE".into(),
                            value: path.clone(),
                            reason: format!("cannot read the master key file: {e}"),
                        })?
                        .trim()
                        .to_owned(),
                ),
                (None, None) => None,
            },
            bootstrap_token: trimmed("KEEL_BOOTSTRAP_TOKEN"),
            tenant_addr: trimmed("KEEL_TENANT_ADDR")
                .unwrap_or_else(|| format!("{}://{DEFAULT_TENANT_HOST}", tls.scheme())),
            jwks_url: trimmed("KEEL_JWKS_URL"),
            jwks_ttl_secs,
            ready_stall_secs,
            projection_gap_secs,
            tls,
            extra: BTreeMap::new(),
        };
        Ok(if flags.print_config {
            ConfigOrPrint::Print(config)
        } else {
            ConfigOrPrint::Run(config)
        })
    }

    /// Pure resolution from `args` and an enumerable environment; also fills `extra`.
    pub fn from_vars(
        service: &str,
        args: impl IntoIterator<Item = String>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<ConfigOrPrint> {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        let extra = extra_settings(service, &vars);
        let mut resolved = Config::from_sources(service, args, |k| vars.get(k).cloned())?;
        match &mut resolved {
            ConfigOrPrint::Run(c) | ConfigOrPrint::Print(c) => c.extra = extra,
        }
        Ok(resolved)
    }

    /// Where this service fetches token-verifying keys: `KEEL_JWKS_URL`, else `own` (the tenant
    /// service passes its own endpoint), else the local tenant service's.
    pub fn jwks_url_or(&self, own: Option<&str>) -> String {
        self.jwks_url.clone().unwrap_or_else(|| match own {
            Some(url) => url.to_owned(),
            None => format!("{}://{DEFAULT_JWKS_HOST_PATH}", self.tls.scheme()),
        })
    }

    /// A service's own setting from `extra`, e.g. `setting("jwks_ttl")` for
    /// `KEEL_TENANT_JWKS_TTL`.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.extra.get(key).map(String::as_str)
    }

    /// A service's own setting parsed; a bad value is an error naming the variable.
    pub fn setting_parsed<T>(&self, key: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: fmt::Display,
    {
        self.setting(key)
            .map(|value| {
                let name = format!("{}{}", env_prefix(&self.service), key.to_ascii_uppercase());
                parse_named(&name, value.to_owned())
            })
            .transpose()
    }

    /// A copy with passwords in URLs and values of secret-looking settings replaced.
    pub fn redacted(&self) -> Config {
        let url = |u: &str| crate::telemetry::scrub(u).into_owned();
        let mut c = self.clone();
        c.database_url = url(&c.database_url);
        c.nats_url = url(&c.nats_url);
        c.redis_url = url(&c.redis_url);
        c.otlp_endpoint = c.otlp_endpoint.as_deref().map(url);
        c.jwks_url = c.jwks_url.as_deref().map(url);
        let hide = |v: &mut Option<String>| {
            if v.is_some() {
                *v = Some("[redacted]".to_owned());
            }
        };
        hide(&mut c.master_key);
        hide(&mut c.bootstrap_token);
        for (key, value) in c.extra.iter_mut() {
            *value = if crate::telemetry::is_secret_key(key) {
                "[redacted]".to_owned()
            } else {
                url(value)
            };
        }
        c
    }

    /// The redacted configuration as pretty JSON, as printed by `--print-config`.
    pub fn to_redacted_json(&self) -> String {
        serde_json::to_string_pretty(&self.redacted())
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialize config: {e}\"}}"))
    }
}

fn extra_settings(service: &str, vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let prefix = env_prefix(service);
    vars.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?, v)))
        .filter(|(rest, _)| !rest.is_empty() && !matches!(*rest, "GRPC_ADDR" | "HTTP_ADDR"))
        .map(|(rest, v)| (rest.to_ascii_lowercase(), v.clone()))
        .collect()
}

fn parse_named<T>(name: &str, value: String) -> Result<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    value.trim().parse::<T>().map_err(|e| Error::Config {
        name: name.to_owned(),
        reason: e.to_string(),
        value,
    })
}

fn validate_filter(name: &str, value: String) -> Result<String> {
    match tracing_subscriber::EnvFilter::try_new(&value) {
        Ok(_) => Ok(value),
        Err(e) => Err(Error::Config {
            name: name.to_owned(),
            reason: format!("not a log filter: {e}"),
            value,
        }),
    }
}

#[cfg(test)]
mod tests;
