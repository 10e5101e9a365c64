//! What can go wrong while setting a service up or serving it.

/// Errors of the runtime: configuration, telemetry, listeners and dependency connections.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a value that cannot be used; `name` is the flag or variable that carried it.
    #[error("invalid setting {name}={value:?}: {reason}")]
    Config {
        name: String,
        value: String,
        reason: String,
    },
    /// The command line could not be parsed (also carries `--help` / `--version` output).
    #[error(transparent)]
    Cli(#[from] clap::Error),
    /// The tracing subscriber or the OpenTelemetry pipeline could not be installed.
    #[error("telemetry: {0}")]
    Telemetry(String),
    /// A Prometheus metric could not be created or registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Binding a listener or another socket operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The encoded file descriptor set handed to reflection is invalid.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// TLS material could not be loaded or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A dependency (postgres, nats, redis) could not be reached.
    #[error("connect to {dependency}: {message}")]
    Connect {
        dependency: &'static str,
        message: String,
    },
}

impl Error {
    /// Whether trying the same thing again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Connect { .. } | Error::Transport(_)
        )
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with the runtime's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
