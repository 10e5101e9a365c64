//! Usage from NATS: `keel.usage.<tenant>` on KEEL_USAGE, one CloudEvent per message, through
//! the projection runner (one transaction per batch, acked after commit). A message that fails
//! its checks is dead-lettered with the field and reason and stores nothing; one whose subject
//! names another tenant than the event is a forgery and is dead-lettered too.

use async_trait::async_trait;
use chrono::Utc;
use keel_store::projection::{ApplyError, Projection};
use sqlx::PgConnection;

use crate::domain::usage::{self, UsageInput};

pub struct UsageIngest {
    pub lateness: chrono::Duration,
}

#[async_trait]
impl Projection for UsageIngest {
    type Item = UsageInput;

    fn name(&self) -> &str {
        "billing-usage"
    }

    fn decode(&self, subject: &str, payload: &[u8]) -> Result<UsageInput, String> {
        let e =
            usage::from_cloudevent(payload).map_err(|i| format!("rejected: {}: {}", i.field, i.reason))?;
        let tenant = subject.rsplit('.').next().unwrap_or_default();
        if tenant != e.tenant_id {
            return Err(format!(
                "provenance: subject names tenant {tenant:?}, the event says {:?}",
                e.tenant_id
            ));
        }
        Ok(e)
    }

    async fn apply(&self, conn: &mut PgConnection, e: &UsageInput) -> Result<(), ApplyError> {
        self.apply_batch(conn, &[e]).await
    }

    async fn apply_batch(&self, conn: &mut PgConnection, items: &[&UsageInput]) -> Result<(), ApplyError> {
        let meters = crate::store::meters(&mut *conn).await?;
        let now = Utc::now();
        let mut checked = Vec::with_capacity(items.len());
        for e in items {
            checked.push(
                usage::check(e, &meters, now, self.lateness)
                    .map_err(|i| ApplyError::Permanent(format!("rejected: {}: {}", i.field, i.reason)))?,
            );
        }
        crate::store::insert(conn, &checked).await?;
        Ok(())
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), ApplyError> {
        // Raw usage is the record, not a read model: a reset replays into the same rows,
        // which the dedupe key keeps once each.
        Ok(())
    }
}
