use std::collections::HashMap;
use std::time::Duration;

use keel_proto::v1 as pb;
use keel_store::testing::eventually;

use crate::harness::{World, slug};

#[tokio::test]
async fn secrets_and_email_addresses_never_reach_the_log_output() {
    // Debug level: the service logs request headers and the create request itself.
    let w = World::start_with(HashMap::from([("KEEL_LOG".to_owned(), "debug".to_owned())])).await;
    let email = "very.private.person@secret-domain.example";
    w.tenants(&w.operator)
        .create_tenant(pb::CreateTenantRequest {
            name: "Private".into(),
            slug: slug(),
            tier: pb::Tier::Mid as i32,
            owner_email: email.into(),
            request_id: "logs-test-1".into(),
        })
        .await
        .unwrap();
    let logs = eventually("request logged", Duration::from_secs(10), || async {
        let l = w.proc().logs();
        (l.contains("create tenant") && l.contains("request handled")).then_some(l)
    })
    .await;
    assert!(logs.contains("[email]"), "the e-mail was logged, redacted");
    for secret in [
        email,
        "secret-domain.example",
        w.operator.as_str(),
        w.bootstrap.as_str(),
    ] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
    // The operator token's signature part alone must not appear either.
    let sig = w.operator.rsplit('.').next().unwrap();
    assert!(!logs.contains(sig));
    w.cleanup().await;
}
