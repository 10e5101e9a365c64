//! `auth.degraded`: an audit record from every service that verifies tokens, each time its
//! verification falls back to cached keys (and `auth.recovered` when the JWKS answers again).

use std::sync::Arc;
use std::time::Duration;

use keel_auth::JwksCache;
use keel_bus::audit::{AuditRecord, AuditResult, PLATFORM_TENANT};
use keel_store::audit::AuditLog;
use tokio_util::sync::CancellationToken;

pub(crate) async fn report(
    jwks: Arc<JwksCache>,
    audit: AuditLog,
    service: String,
    shutdown: CancellationToken,
) {
    let mut was = false;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = jwks.is_degraded();
        if now == was {
            continue;
        }
        let (action, result) = if now {
            ("auth-degraded", AuditResult::Failed)
        } else {
            ("auth-recovered", AuditResult::Success)
        };
        let record = AuditRecord::new(
            format!("service:{service}"),
            PLATFORM_TENANT,
            &service,
            action,
            "jwks/signing-keys",
            result,
            "127.0.0.1",
        )
        .with_reason(now.then(|| "JWKS endpoint unreachable; verifying with cached keys".into()));
        if now {
            tracing::warn!("auth.degraded: JWKS unreachable, serving from cache");
        }
        // Until it is in the outbox, the change is reported again on the next tick.
        if audit.record(&record).await.is_ok() {
            was = now;
        }
    }
}
