//! Graceful shutdown: one token every task of a service watches.

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Exit code of a process stopped by a second signal while draining (128 + SIGINT).
pub const FORCED_EXIT_CODE: i32 = 130;

/// A cloneable shutdown signal. Triggered by the first SIGTERM/SIGINT (see
/// [`Shutdown::install_signal_handlers`]) or by [`Shutdown::trigger`].
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal that has not fired yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The underlying token, for `select!`s and child tokens.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Begins shutdown; idempotent.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once shutdown has begun.
    pub async fn cancelled(&self) {
        self.token.cancelled().await
    }

    /// Like [`Shutdown::cancelled`] but owning, for APIs that want a `'static` future.
    pub fn cancelled_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Spawns a task on the current Tokio runtime: the first SIGTERM or SIGINT triggers
    /// shutdown, a second one exits the process at once with [`FORCED_EXIT_CODE`].
    ///
    /// Outside a runtime, or if the handlers cannot be registered, it logs an error and the
    /// process keeps the default signal behaviour.
    pub fn install_signal_handlers(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("signal handlers need a Tokio runtime; none installed");
            return;
        };
        // Registered before returning, so a signal sent right after this call is not lost.
        let mut signals = {
            let _context = runtime.enter();
            match Signals::new() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot install signal handlers");
                    return;
                }
            }
        };
        let shutdown = self.clone();
        runtime.spawn(async move {
            let first = signals.next().await;
            tracing::info!(signal = first, "shutdown requested, draining");
            shutdown.trigger();
            let second = signals.next().await;
            tracing::warn!(signal = second, "second signal, exiting immediately");
            std::process::exit(FORCED_EXIT_CODE);
        });
    }
}

#[cfg(unix)]
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn new() -> std::io::Result<Self> {
        Ok(Signals)
    }

    async fn next(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "ctrl-c",
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let waiter = tokio::spawn({
            let s = shutdown.clone();
            async move { s.cancelled().await }
        });
        let owned = shutdown.cancelled_owned();
        shutdown.clone().trigger();
        waiter.await.unwrap();
        owned.await;
        assert!(shutdown.is_triggered());
        assert!(shutdown.token().is_cancelled());
        shutdown.trigger();
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn sigterm_triggers_shutdown() {
        let shutdown = Shutdown::new();
        shutdown.install_signal_handlers();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(std::time::Duration::from_secs(10), shutdown.cancelled())
            .await
            .expect("SIGTERM triggers shutdown");
    }

    #[test]
    fn installing_without_a_runtime_does_not_panic() {
        Shutdown::new().install_signal_handlers();
    }
}
