//! The watcher: every few seconds, for each ACTIVE tenant, how long since its last usage event
//! (`keel_meter_last_event_age_seconds`, and `MeterStale` past the threshold, cleared by the
//! next event), and for committed tiers whether the month's usage passed a commitment
//! (`UsageOverCommitment`). The aggregates raise each once; the alerts projection tells NATS.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use keel_store::{Framework, Metadata, Store};
use prometheus::IntGaugeVec;
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::watch::{Commitment, Seen, Staleness, Usage};
use crate::prices::{BILLED, PriceTable, billed_unit};

/// An ACTIVE tenant: id, tier, when its row last changed, its last usage event.
type ActiveTenant = (String, String, DateTime<Utc>, Option<DateTime<Utc>>);

pub struct Watcher {
    pub pool: PgPool,
    pub staleness: Framework<Staleness>,
    pub commitments: Framework<Commitment>,
    pub prices: PriceTable,
    pub stale_after: chrono::Duration,
    pub every: Duration,
    pub age: IntGaugeVec,
    pub metrics: keel_runtime::Metrics,
}

impl Watcher {
    pub fn new(
        store: &Store,
        prices: PriceTable,
        stale_after: chrono::Duration,
        every: Duration,
        metrics: keel_runtime::Metrics,
    ) -> anyhow::Result<Self> {
        let age = IntGaugeVec::new(
            prometheus::Opts::new(
                "keel_meter_last_event_age_seconds",
                "Seconds since an ACTIVE tenant's last usage event (or its activation).",
            ),
            &["tenant"],
        )?;
        metrics.registry().register(Box::new(age.clone()))?;
        Ok(Self {
            pool: store.pool().clone(),
            staleness: store.framework(()),
            commitments: store.framework(()),
            prices,
            stale_after,
            every,
            age,
            metrics,
        })
    }

    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            if let Err(e) = self.pass().await {
                tracing::warn!(error = %e, "billing watch pass failed; retrying");
            }
        }
    }

    pub async fn pass(&self) -> anyhow::Result<()> {
        let now = Utc::now();
        let tenants: Vec<ActiveTenant> = sqlx::query_as(
            "SELECT t.tenant_id, t.tier, t.updated_at, \
                 (SELECT max(u.recorded_at) FROM usage_events u WHERE u.tenant_id = t.tenant_id) \
             FROM tenant_info t WHERE t.status = 'ACTIVE' ORDER BY t.tenant_id LIMIT 10000",
        )
        .fetch_all(&self.pool)
        .await?;
        let month_start = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .unwrap_or(now);
        let month = now.format("%Y-%m").to_string();
        for (tenant, tier, active_since, last) in tenants {
            let last = last.unwrap_or(active_since);
            self.age
                .with_label_values(&[&self.metrics.tenant_label(&tenant)])
                .set((now - last).num_seconds().max(0));
            let meta = || Metadata::new(&tenant, "service:billing").into_map();
            self.staleness
                .execute_with_metadata(
                    &tenant,
                    Seen {
                        tenant_id: tenant.clone(),
                        last_event_at: last,
                        threshold_secs: self.stale_after.num_seconds(),
                        now,
                    },
                    meta(),
                )
                .await
                .map_err(|e| anyhow::anyhow!("staleness of {tenant}: {e}"))?;
            let committed = keel_tenancy::Tier::parse(&tier)
                .is_some_and(|t| t.entitlements().pricing == keel_tenancy::tier::Pricing::Committed);
            let Some(prices) = self.prices.tiers.get(&tier).filter(|_| committed) else {
                continue;
            };
            let used: BTreeMap<String, Decimal> = sqlx::query_as::<_, (String, String)>(
                "SELECT meter, sum(value)::text FROM usage_events WHERE tenant_id = $1 AND meter = ANY($2) \
                 AND valid_at >= $3 GROUP BY meter",
            )
            .bind(&tenant)
            .bind(BILLED.map(str::to_owned).to_vec())
            .bind(month_start)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .filter_map(|(m, v)| Some((m, Decimal::from_str(&v).ok()?)))
            .collect();
            for (meter, raw) in used {
                let (Some((unit, per)), Some(limit)) = (billed_unit(&meter), prices.commitments.get(&meter))
                else {
                    continue;
                };
                let quantity = raw / per;
                if quantity <= *limit {
                    continue;
                }
                self.commitments
                    .execute_with_metadata(
                        &format!("{tenant}:{month}"),
                        Usage {
                            tenant_id: tenant.clone(),
                            month: month.clone(),
                            meter,
                            used: quantity.round_dp(6),
                            committed: *limit,
                            unit: unit.into(),
                            now,
                        },
                        meta(),
                    )
                    .await
                    .map_err(|e| anyhow::anyhow!("commitment of {tenant}: {e}"))?;
            }
        }
        Ok(())
    }
}
