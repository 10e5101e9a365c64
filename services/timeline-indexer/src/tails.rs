//! Open tails: at most N per tenant, and woken when their tenant's rows are committed.
//!
//! The projection sends `pg_notify('keel_tail_<schema>', <tenant>)` in the transaction that
//! inserts a tenant's rows, so the notification is delivered when — and only if — they commit,
//! to every timeline process of the installation. One listener per process ([`listen`]) wakes
//! the tails of that tenant. An idle tail therefore runs no query: it waits for a wake-up, its
//! token's expiry, or a slow fallback (a lost notification, another tenant's long transaction
//! holding rows back).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The notification channel of the timeline in `schema`.
pub fn channel(schema: &str) -> String {
    format!("keel_tail_{schema}")
}

/// Each tenant's open tails: (slot id, wake-up).
type Open = HashMap<String, Vec<(u64, Arc<Notify>)>>;

/// Open tails per tenant, each with its wake-up.
#[derive(Debug)]
pub struct TailSlots {
    pub max: usize,
    next: AtomicU64,
    open: std::sync::Mutex<Open>,
}

/// One open tail; its slot is given back when it is dropped.
pub struct TailSlot {
    slots: Arc<TailSlots>,
    tenant: String,
    id: u64,
    /// Notified when the tenant's rows (or its policies) changed.
    pub wake: Arc<Notify>,
}

impl TailSlots {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            next: AtomicU64::new(0),
            open: std::sync::Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more tail of `tenant`, or `None` when it has `max` open.
    pub fn take(self: &Arc<Self>, tenant: &str) -> Option<TailSlot> {
        let mut open = self.lock();
        let tails = open.entry(tenant.to_owned()).or_default();
        if tails.len() >= self.max {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let wake = Arc::new(Notify::new());
        tails.push((id, wake.clone()));
        Some(TailSlot {
            slots: self.clone(),
            tenant: tenant.to_owned(),
            id,
            wake,
        })
    }

    /// Wakes every open tail of `tenant` (a tail busy reading keeps the wake-up for later).
    pub fn wake(&self, tenant: &str) {
        if let Some(tails) = self.lock().get(tenant) {
            for (_, n) in tails {
                n.notify_one();
            }
        }
    }

    /// Wakes every open tail (after notifications may have been lost).
    pub fn wake_all(&self) {
        for tails in self.lock().values() {
            for (_, n) in tails {
                n.notify_one();
            }
        }
    }

    pub fn open_for(&self, tenant: &str) -> usize {
        self.lock().get(tenant).map_or(0, Vec::len)
    }
}

impl Drop for TailSlot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(tails) = open.get_mut(&self.tenant) {
            tails.retain(|(id, _)| *id != self.id);
            if tails.is_empty() {
                open.remove(&self.tenant);
            }
        }
    }
}

/// Listens on the timeline's channel until `stop`, waking tails by tenant. A lost connection
/// is re-established by sqlx; what was sent meanwhile may be lost, so every tail is woken.
pub async fn listen(
    pool: sqlx::PgPool,
    schema: String,
    slots: Arc<TailSlots>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.listen(&channel(&schema)).await?;
    loop {
        let next = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = listener.try_recv() => next,
        };
        match next {
            Ok(Some(n)) => slots.wake(n.payload()),
            Ok(None) => slots.wake_all(),
            Err(e) => {
                tracing::warn!(error = %e, "tail notifications interrupted; waking every tail");
                slots.wake_all();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_cap_per_tenant_and_come_back_when_dropped() {
        let slots = Arc::new(TailSlots::new(2));
        let a1 = slots.take("a").expect("first");
        let _a2 = slots.take("a").expect("second");
        assert!(slots.take("a").is_none(), "a third tail of a is refused");
        let _b = slots.take("b").expect("b is unaffected");
        drop(a1);
        assert_eq!(slots.open_for("a"), 1);
        assert!(slots.take("a").is_some());
    }

    #[tokio::test]
    async fn a_wake_reaches_only_the_tenants_tails_and_is_kept_until_awaited() {
        let slots = Arc::new(TailSlots::new(4));
        let a = slots.take("a").expect("a");
        let b = slots.take("b").expect("b");
        // Woken while busy (not waiting): the permit is kept.
        slots.wake("a");
        tokio::time::timeout(Duration::from_secs(1), a.wake.notified())
            .await
            .expect("a was woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b.wake.notified())
                .await
                .is_err(),
            "b was not"
        );
        slots.wake_all();
        tokio::time::timeout(Duration::from_secs(1), b.wake.notified())
            .await
            .expect("wake_all reaches b");
    }

    #[test]
    fn the_channel_is_per_schema() {
        assert_eq!(channel("timeline"), "keel_tail_timeline");
    }
}
