//! `token list`, `token revoke` and `token create-operator-key`: keys shown without secrets, a
//! revoked key refused at once, the bootstrap key retired once an operator key exists.

use crate::harness::{World, output, slug};

#[tokio::test]
async fn keys_are_listed_without_secrets_revoked_and_the_bootstrap_key_retired() {
    let w = World::start().await;
    let s = slug();
    let id = w.create(&s).await;
    let account = w
        .json(&[
            "token",
            "create-account",
            &s,
            "--name",
            "ci-bot",
            "--scope",
            "tenant:read",
        ])
        .await;
    let (key_id, secret) = (
        account["key_id"].as_str().unwrap().to_owned(),
        account["api_key"].as_str().unwrap().to_owned(),
    );

    // A table for people, JSON for scripts; neither shows a secret.
    let table = w.ok(&["token", "list"]).await;
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("KEY ID") && header.contains("ACCOUNT") && header.contains("REVOKED"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&key_id) && l.contains(&id) && l.contains("tenant:read")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("bootstrap ")), "{table}");
    assert!(!table.contains(&secret) && !table.contains(&w.bootstrap));
    let listed = w.json(&["token", "list", "--tenant", &s]).await;
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1, "{listed}");
    assert_eq!(keys[0]["key_id"].as_str(), Some(key_id.as_str()));
    assert!(keys[0]["revoked_at"].is_null() && keys[0]["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(keys[0].get("api_key").is_none() && !listed.to_string().contains(&secret));

    // Pages: one key at a time with a hint, or --all.
    let first = w.run(&["token", "list", "--page-size", "1"]).await;
    assert!(first.success(), "{first:?}");
    assert!(first.stderr.contains("more keys: --page-token "), "{first:?}");
    let all = w.json(&["token", "list", "--all", "--page-size", "1"]).await;
    assert_eq!(all["keys"].as_array().unwrap().len(), 2, "{all}");
    assert!(all.get("next_page_token").is_none(), "{all}");

    // Revoked at once, idempotently.
    let revoked = w.json(&["token", "revoke", &key_id]).await;
    assert!(
        revoked["revoked_at"].as_str().unwrap().ends_with('Z'),
        "{revoked}"
    );
    let again = w.json(&["token", "revoke", &key_id]).await;
    assert_eq!(again["revoked_at"], revoked["revoked_at"]);
    let mut with_key = w.keelctl(&["tenant", "show", &s]);
    with_key.env("KEEL_API_KEY", &secret);
    let run = output(with_key).await;
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.starts_with("error: UNAUTHENTICATED"), "{run:?}");
    let unknown = w.run(&["token", "revoke", "key_nope"]).await;
    assert_eq!(unknown.code, Some(1));
    assert_eq!(unknown.stderr.trim(), "error: NOT_FOUND: API key not found");
    let bad = w.run(&["token", "revoke", "not a key"]).await;
    assert!(
        bad.stderr.starts_with("error: INVALID_ARGUMENT: key_id:"),
        "{bad:?}"
    );

    // The bootstrap key goes only once another operator key exists.
    let last = w.run(&["token", "revoke", "bootstrap"]).await;
    assert_eq!(last.code, Some(1));
    assert!(
        last.stderr.starts_with("error: FAILED_PRECONDITION: "),
        "{last:?}"
    );
    let ops = w
        .json(&[
            "token",
            "create-operator-key",
            "--name",
            "ops",
            "--scope",
            "operator",
            "--scope",
            "tenant:read",
        ])
        .await;
    assert_eq!(ops["account_id"], "sa_op-ops");
    let ops_key = ops["api_key"].as_str().unwrap().to_owned();
    w.ok(&["token", "revoke", "bootstrap"]).await;
    let refused = w.run(&["tenant", "list"]).await;
    assert!(
        refused.stderr.starts_with("error: UNAUTHENTICATED"),
        "{refused:?}"
    );
    let mut as_ops = w.keelctl(&["tenant", "show", &id]);
    as_ops.env("KEEL_API_KEY", &ops_key);
    let run = output(as_ops).await;
    assert!(run.success() && run.stdout.contains(&s), "{run:?}");
    w.cleanup().await;
}
