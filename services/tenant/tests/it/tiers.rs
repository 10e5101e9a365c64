//! The product's tier matrix as a user sees it through `GetTenant`.

use keel_proto::v1 as pb;

use crate::harness::{World, by_id, slug};

#[tokio::test]
async fn new_tenants_show_their_tiers_entitlements() {
    let w = World::start().await;
    let mut api = w.tenants(&w.operator);
    // tier, retention days, environments (None: unlimited), default environments
    let cases = [
        (pb::Tier::Low, 7, Some(1), vec!["prod"]),
        (pb::Tier::Mid, 30, Some(2), vec!["dev", "prod"]),
        (pb::Tier::High, 90, None, vec!["dev", "staging", "prod"]),
    ];
    for (tier, days, environments, defaults) in cases {
        let s = slug();
        let created = api
            .create_tenant(pb::CreateTenantRequest {
                name: format!("Tenant {s}"),
                slug: s.clone(),
                tier: tier as i32,
                owner_email: format!("owner@{s}.example"),
                request_id: format!("req-{s}"),
            })
            .await
            .unwrap()
            .into_inner();
        let got = api
            .get_tenant(pb::GetTenantRequest {
                tenant: Some(by_id(&created.id)),
            })
            .await
            .unwrap()
            .into_inner();
        let e = got.entitlements.expect("entitlements");
        assert_eq!(e.retention_days, days, "{tier:?}");
        assert_eq!(e.environments, environments, "{tier:?}");
        assert_eq!(e.default_environments, defaults, "{tier:?}");
        let has = |f: &str| e.features.iter().any(|x| x == f);
        let high = tier == pb::Tier::High;
        assert_eq!(has("sso"), high, "{tier:?}");
        assert_eq!(has("custom_roles"), high, "{tier:?}");
        assert_eq!(has("correlation"), tier != pb::Tier::Low, "{tier:?}");
        assert_eq!(
            e.agent_limit.is_none(),
            high,
            "{tier:?}: unlimited agents are absent"
        );
        assert_eq!(e.infrastructure, if high { "dedicated" } else { "shared" });
        assert_eq!(e.pricing, if high { "committed" } else { "usage" });
        if tier == pb::Tier::Low {
            assert_eq!(
                (e.lineage.as_str(), e.lineage_captures_per_minute),
                ("limited", Some(10))
            );
        } else {
            assert_eq!(e.lineage, "full");
        }
    }
    w.cleanup().await;
}
