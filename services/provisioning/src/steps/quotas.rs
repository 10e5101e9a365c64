//! The tenant's quotas in Redis: one hash with the tier's rate limits and entitlements and the
//! suspended flag, which every service's auth layer reads (`keel_auth::quota`: a suspended
//! tenant is refused, the limits replace the token's tier's). The hash is replaced whole in one
//! MULTI/EXEC, so a reader never sees half of an old tier and half of a new one.

use std::collections::BTreeMap;

use async_trait::async_trait;
use keel_auth::quota::field;
use redis::AsyncCommands;
use serde_json::json;

use super::{Step, StepContext, StepError, Systems, failure};

pub struct Quotas;

/// The `quotas` step.
pub fn quotas() -> Box<dyn Step> {
    Box::new(Quotas)
}

/// The hash as `ctx` wants it.
fn desired(ctx: &StepContext) -> Result<BTreeMap<String, String>, StepError> {
    let entitlements = failure::tier(&ctx.tier)?.entitlements();
    let limits = entitlements.rate_limit;
    let fields = [
        (field::TIER, Some(ctx.tier.clone())),
        (field::RATE_PER_SECOND, Some(limits.per_second.to_string())),
        (field::BURST, Some(limits.burst.to_string())),
        // Unlimited is an absent field, never a large number.
        ("agent_limit", entitlements.agent_limit.map(|n| n.to_string())),
        ("environments", entitlements.environments.map(|n| n.to_string())),
        (
            "retention_days",
            Some(entitlements.retention_days(None).to_string()),
        ),
        (
            field::SUSPENDED,
            Some(if ctx.suspended { "1" } else { "0" }.to_owned()),
        ),
    ];
    Ok(fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v?)))
        .collect())
}

async fn current(sys: &Systems, key: &str) -> Result<BTreeMap<String, String>, StepError> {
    let mut conn = sys.redis.clone();
    // A key of another type (left by hand) reads as different and is replaced by apply.
    let kind: String = redis::cmd("TYPE")
        .arg(key)
        .query_async(&mut conn)
        .await
        .map_err(|e| failure::redis("reading the tenant quotas", e))?;
    if kind != "hash" {
        return Ok(BTreeMap::new());
    }
    conn.hgetall(key)
        .await
        .map_err(|e| failure::redis("reading the tenant quotas", e))
}

#[async_trait]
impl Step for Quotas {
    fn name(&self) -> &'static str {
        "quotas"
    }

    async fn apply(&self, sys: &Systems, ctx: &StepContext) -> Result<serde_json::Value, StepError> {
        let want = desired(ctx)?;
        let key = &ctx.names.redis_key;
        let changed = current(sys, key).await? != want;
        if changed {
            let fields: Vec<(&String, &String)> = want.iter().collect();
            let mut conn = sys.redis.clone();
            redis::pipe()
                .atomic()
                .del(key)
                .ignore()
                .hset_multiple(key, &fields)
                .ignore()
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| failure::redis("writing the tenant quotas", e))?;
        }
        Ok(json!({ "key": key, "changed": changed, "quotas": want }))
    }

    async fn compensate(&self, sys: &Systems, ctx: &StepContext) -> Result<Vec<String>, StepError> {
        let mut conn = sys.redis.clone();
        let deleted: u64 = conn
            .del(&ctx.names.redis_key)
            .await
            .map_err(|e| failure::redis("deleting the tenant quotas", e))?;
        Ok(if deleted > 0 {
            vec![format!("redis key {}", ctx.names.redis_key)]
        } else {
            Vec::new()
        })
    }

    async fn check(&self, sys: &Systems, ctx: &StepContext) -> Result<bool, StepError> {
        Ok(current(sys, &ctx.names.redis_key).await? == desired(ctx)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::steps::ResourceNames;

    fn ctx(tier: &str, suspended: bool) -> StepContext {
        StepContext {
            tenant_id: "tid".into(),
            slug: "acme".into(),
            tier: tier.into(),
            suspended,
            names: ResourceNames::new("", "tid", "acme", Path::new("/tmp")),
            traceparent: None,
        }
    }

    #[test]
    fn higher_tiers_get_more() {
        let (low, business) = (desired(&ctx("low", false)), desired(&ctx("business", true)));
        let (low, business) = (low.unwrap_or_default(), business.unwrap_or_default());
        assert_eq!(low["rate_per_second"], "20");
        assert_eq!(low["suspended"], "0");
        assert_eq!(business["burst"], "4000");
        assert_eq!(low["agent_limit"], "5");
        assert!(!business.contains_key("agent_limit"), "unlimited is absent");
        assert_eq!(business["suspended"], "1");
    }

    #[test]
    fn unknown_tiers_are_refused() {
        assert!(desired(&ctx("gold", false)).is_err_and(|e| e.is_permanent()));
    }
}
