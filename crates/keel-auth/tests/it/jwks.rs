use std::time::Duration;

use keel_auth::{AuthError, Claims, JwksCache, SigningKey};

use crate::support::{JwksServer, claims, eventually, now, set_of};

#[tokio::test]
async fn outage_is_ridden_out_within_ttl_then_fails_then_recovers() {
    let key = SigningKey::generate();
    let server = JwksServer::start(set_of(&[&key])).await;
    // Refreshes every ttl/4 = 150 ms; cached keys stay usable for 600 ms.
    let cache = JwksCache::new(server.url.clone(), Duration::from_millis(600));
    let token = key.sign(&claims("t1", now() + 300)).unwrap();
    let verify = || cache.verify::<Claims>(&token, now(), 0);

    assert!(verify().await.is_ok());
    assert!(!cache.is_degraded());

    server.serve(None);
    eventually("degraded but still verifying", Duration::from_secs(3), || async {
        let ok = verify().await.is_ok();
        assert!(ok || !cache.is_degraded(), "failed while within the TTL");
        ok && cache.is_degraded()
    })
    .await;
    assert!(cache.degraded_counter().get() >= 1);

    eventually("unavailable after the TTL", Duration::from_secs(3), || async {
        verify().await == Err(AuthError::JwksUnavailable)
    })
    .await;
    assert!(cache.is_degraded());

    server.serve(Some(set_of(&[&key])));
    eventually("verifying again", Duration::from_secs(3), || async {
        verify().await.is_ok()
    })
    .await;
    assert!(!cache.is_degraded());
}

#[tokio::test]
async fn unknown_kid_refetches_once_and_picks_up_a_rotated_key() {
    let old = SigningKey::generate();
    let server = JwksServer::start(set_of(&[&old])).await;
    let cache = JwksCache::new(server.url.clone(), Duration::from_secs(600));
    let t_old = old.sign(&claims("t1", now() + 300)).unwrap();
    assert!(cache.verify::<Claims>(&t_old, now(), 0).await.is_ok());
    assert_eq!(server.hits(), 1);
    // Fresh cache and known kid: no fetch.
    assert!(cache.verify::<Claims>(&t_old, now(), 0).await.is_ok());
    assert_eq!(server.hits(), 1);

    let new = SigningKey::generate();
    server.serve(Some(set_of(&[&old, &new])));
    let t_new = new.sign(&claims("t1", now() + 300)).unwrap();
    let got: Claims = cache.verify(&t_new, now(), 0).await.unwrap();
    assert_eq!(got.tenant, "t1");
    assert_eq!(server.hits(), 2);

    // Another unknown kid right away is not allowed to hammer the endpoint.
    let stranger = SigningKey::from_seed("stranger", [5; 32]);
    let t_stranger = stranger.sign(&claims("t1", now() + 300)).unwrap();
    assert_eq!(
        cache.verify::<Claims>(&t_stranger, now(), 0).await,
        Err(AuthError::UnknownKey {
            kid: "stranger".into()
        })
    );
    assert_eq!(server.hits(), 2);
    assert!(!cache.is_degraded());
}
