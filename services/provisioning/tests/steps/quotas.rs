//! The quotas step: one Redis hash per tenant with its tier's limits.

use std::collections::BTreeMap;

use keel_provisioning::steps::{self, StepContext};
use redis::AsyncCommands;

use crate::world::World;

async fn hash(w: &World, ctx: &StepContext) -> BTreeMap<String, String> {
    let mut conn = w.sys.redis.clone();
    conn.hgetall(&ctx.names.redis_key).await.expect("HGETALL")
}

fn expected(tier: &str, suspended: bool) -> BTreeMap<String, String> {
    // tier, rate/s, burst, agents, environments, retention days; unlimited is absent
    let (rate, burst, agents, envs, days) = match tier {
        "low" => (20, 40, Some(5), Some(1), 7),
        "mid" => (100, 200, Some(25), Some(2), 30),
        "high" => (500, 1000, None, None, 90),
        "business" => (2000, 4000, None, None, 365),
        other => panic!("no expectation for tier {other}"),
    };
    [
        ("tier", Some(tier.to_owned())),
        ("rate_per_second", Some(rate.to_string())),
        ("burst", Some(burst.to_string())),
        ("agent_limit", agents.map(|n: u32| n.to_string())),
        ("environments", envs.map(|n: u32| n.to_string())),
        ("retention_days", Some(days.to_string())),
        ("suspended", Some(if suspended { "1" } else { "0" }.to_owned())),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_owned(), v?)))
    .collect()
}

#[tokio::test]
async fn every_tier_gets_its_limits_and_changes_replace_the_hash() {
    let w = World::new().await;
    let step = steps::quotas();
    for (i, tier) in ["low", "mid", "high", "business"].into_iter().enumerate() {
        let ctx = w.ctx(&format!("tier{i}"), tier, false);
        step.apply(&w.sys, &ctx).await.expect("apply");
        assert_eq!(hash(&w, &ctx).await, expected(tier, false), "{tier}");
        assert!(step.check(&w.sys, &ctx).await.expect("check"));
        let again = step.apply(&w.sys, &ctx).await.expect("apply again");
        assert_eq!(again["changed"], false, "{again}");
        assert_eq!(hash(&w, &ctx).await, expected(tier, false));
        assert_eq!(
            step.compensate(&w.sys, &ctx).await.expect("compensate"),
            vec![format!("redis key {}", ctx.names.redis_key)]
        );
    }

    // Upgrade, then suspension: the old state no longer checks.
    let low = w.ctx("acme", "low", false);
    step.apply(&w.sys, &low).await.expect("apply");
    let business = StepContext {
        tier: "business".into(),
        ..low.clone()
    };
    assert!(!step.check(&w.sys, &business).await.expect("check before"));
    assert_eq!(
        step.apply(&w.sys, &business).await.expect("upgrade")["changed"],
        true
    );
    assert_eq!(hash(&w, &low).await, expected("business", false));
    assert!(!step.check(&w.sys, &low).await.expect("old tier"));
    let suspended = StepContext {
        suspended: true,
        ..business.clone()
    };
    step.apply(&w.sys, &suspended).await.expect("suspend");
    assert_eq!(hash(&w, &low).await, expected("business", true));
    assert!(step.check(&w.sys, &suspended).await.expect("check"));

    let removed = step.compensate(&w.sys, &low).await.expect("compensate");
    assert_eq!(removed, vec![format!("redis key {}", low.names.redis_key)]);
    assert!(!step.check(&w.sys, &low).await.expect("check"));
    let mut conn = w.sys.redis.clone();
    let exists: bool = conn.exists(&low.names.redis_key).await.expect("EXISTS");
    assert!(!exists, "key left");
    assert!(
        step.compensate(&w.sys, &low)
            .await
            .expect("compensate again")
            .is_empty()
    );
    w.cleanup().await;
}

#[tokio::test]
async fn a_stray_value_under_the_key_is_replaced_and_unknown_tiers_refused() {
    let w = World::new().await;
    let step = steps::quotas();
    let ctx = w.ctx("stray", "mid", false);
    let mut conn = w.sys.redis.clone();
    let () = conn.set(&ctx.names.redis_key, "not a hash").await.expect("SET");
    assert!(!step.check(&w.sys, &ctx).await.expect("check"));
    step.apply(&w.sys, &ctx).await.expect("apply");
    assert_eq!(hash(&w, &ctx).await, expected("mid", false));

    let gold = StepContext {
        tier: "gold".into(),
        ..ctx.clone()
    };
    let err = step.apply(&w.sys, &gold).await.expect_err("an unknown tier");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(hash(&w, &ctx).await, expected("mid", false), "left as it was");

    assert_eq!(step.compensate(&w.sys, &ctx).await.expect("compensate").len(), 1);
    w.cleanup().await;
}
