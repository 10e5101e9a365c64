//! Waking a worker when PostgreSQL says there is work, instead of polling: a trigger sends
//! `NOTIFY <channel>` at commit, a [`Wakeup`] `LISTEN`s on its own connection, and a slow
//! fallback poll covers what notifications cannot (a lost connection, work made visible by
//! another transaction's end). The relay (channel [`outbox_channel`], trigger on `events`) and
//! provisioning's executor use it.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

/// PostgreSQL truncates channel names to 63 bytes; so do we, the same way the triggers do
/// (`left(…, 63)`).
const MAX_CHANNEL: usize = 63;

/// `<prefix><schema>`, cut to 63 bytes (schemas are ASCII).
pub fn channel(prefix: &str, schema: &str) -> String {
    let mut name = format!("{prefix}{schema}");
    name.truncate(MAX_CHANNEL);
    name
}

/// The channel the `events` trigger notifies when a transaction appends events.
pub fn outbox_channel(schema: &str) -> String {
    channel("keel_outbox_", schema)
}

/// What woke a [`Wakeup::wait`].
#[derive(Debug, PartialEq, Eq)]
pub enum Woken {
    /// A notification on the channel.
    Notified,
    /// The fallback interval passed (or the listener is reconnecting).
    Fallback,
}

/// A `LISTEN` on one channel with a fallback interval.
pub struct Wakeup {
    listener: Option<PgListener>,
    channel: String,
    pool: PgPool,
}

impl Wakeup {
    /// Listens on `channel` with a connection of `pool`. If listening fails now, [`Wakeup::wait`]
    /// falls back to its interval and tries again later: a worker never fails for want of it.
    pub async fn listen(pool: &PgPool, channel: String) -> Self {
        let mut wakeup = Wakeup {
            listener: None,
            channel,
            pool: pool.clone(),
        };
        wakeup.connect().await;
        wakeup
    }

    async fn connect(&mut self) {
        let listener = async {
            let mut l = PgListener::connect_with(&self.pool).await?;
            l.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(l)
        };
        match listener.await {
            Ok(l) => self.listener = Some(l),
            Err(e) => tracing::warn!(channel = %self.channel, error = %e, "cannot LISTEN; polling instead"),
        }
    }

    /// Waits for a notification or `fallback`, whichever comes first. Notifications that
    /// arrived while the caller was busy are consumed at once (so work is never missed between
    /// two waits); several are folded into one wake.
    pub async fn wait(&mut self, fallback: Duration) -> Woken {
        if self.listener.is_none() {
            tokio::time::sleep(fallback).await;
            self.connect().await;
            return Woken::Fallback;
        }
        let woken = match &mut self.listener {
            Some(listener) => tokio::select! {
                n = listener.try_recv() => match n {
                    Ok(Some(_)) => Woken::Notified,
                    // The connection was lost and is re-established by the next call: what was
                    // sent meanwhile may be lost, so the caller looks for work now.
                    Ok(None) => Woken::Fallback,
                    Err(e) => {
                        tracing::warn!(channel = %self.channel, error = %e, "LISTEN interrupted");
                        self.listener = None;
                        Woken::Fallback
                    }
                },
                () = tokio::time::sleep(fallback) => Woken::Fallback,
            },
            None => Woken::Fallback,
        };
        if woken == Woken::Notified {
            // Fold a burst into one wake: drain what is already buffered.
            if let Some(listener) = &mut self.listener {
                while listener.next_buffered().is_some() {}
            }
        }
        woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_are_cut_like_postgres_cuts_them() {
        assert_eq!(outbox_channel("tenant"), "keel_outbox_tenant");
        let long = "s".repeat(70);
        let c = outbox_channel(&long);
        assert_eq!(c.len(), 63);
        assert!(c.starts_with("keel_outbox_sss"));
    }
}
