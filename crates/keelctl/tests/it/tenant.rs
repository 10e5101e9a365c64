//! Tenants, members and tokens through the CLI.

use std::time::Duration;

use keel_store::testing::eventually;

use crate::harness::{World, slug};

#[tokio::test]
async fn tenant_lifecycle_members_and_tokens() {
    let w = World::start().await;
    let s = slug();
    let created = w
        .json(&[
            "tenant",
            "create",
            "--name",
            "Acme Corp",
            "--slug",
            &s,
            "--tier",
            "low",
            "--owner-email",
            "owner@acme.example",
            "--request-id",
            &format!("req-{s}"),
        ])
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["status"], "pending");
    assert_eq!(created["tier"], "low");
    assert_eq!(created["slug"].as_str(), Some(s.as_str()));
    assert!(
        created["created_at"].as_str().unwrap().ends_with('Z'),
        "{created}"
    );

    // The same request id again is the same tenant, not a second one.
    let again = w
        .json(&[
            "tenant",
            "create",
            "--name",
            "Acme Corp",
            "--slug",
            &s,
            "--tier",
            "low",
            "--owner-email",
            "owner@acme.example",
            "--request-id",
            &format!("req-{s}"),
        ])
        .await;
    assert_eq!(again["id"].as_str(), Some(id.as_str()));

    // Listing reads a projection: wait for it.
    let table = eventually("the tenant in the list", Duration::from_secs(20), || async {
        let out = w.ok(&["tenant", "list"]).await;
        out.contains(&s).then_some(out)
    })
    .await;
    let header = table.lines().next().unwrap();
    assert!(
        header.starts_with("ID") && header.contains("SLUG") && header.contains("STATUS"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains(&s) && l.contains("pending") && l.contains("low")),
        "{table}"
    );
    let other = slug();
    let other_id = w.create(&other).await;
    let all = eventually(
        "both tenants listed page by page",
        Duration::from_secs(20),
        || async {
            let list = w.json(&["tenant", "list", "--all", "--page-size", "1"]).await;
            let ids: Vec<String> = list["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned())
                .collect();
            (ids.contains(&id) && ids.contains(&other_id)).then_some(list)
        },
    )
    .await;
    assert!(all.get("next_page_token").is_none(), "{all}");
    let one_page = w.run(&["tenant", "list", "--page-size", "1"]).await;
    assert!(one_page.stderr.contains("--page-token"), "{one_page:?}");

    let shown = w.ok(&["tenant", "show", &s]).await;
    assert!(shown.contains(&id) && shown.contains("status:"), "{shown}");
    assert_eq!(
        w.json(&["tenant", "show", &id]).await["slug"].as_str(),
        Some(s.as_str())
    );

    let changed = w.json(&["tenant", "change-tier", &s, "--tier", "mid"]).await;
    assert_eq!(changed["tier"], "mid");
    assert_eq!(changed["entitlements"]["retention_days"], 30);
    assert_eq!(changed["entitlements"]["environments"], 2);

    w.activate(&id).await;
    let suspended = w
        .ok(&["tenant", "suspend", &s, "--reason", "unpaid invoice"])
        .await;
    assert!(
        suspended.contains("suspended") && suspended.contains("unpaid invoice"),
        "{suspended}"
    );
    let active = w.json(&["tenant", "reactivate", &id]).await;
    assert_eq!(active["status"], "active");
    assert!(active.get("status_reason").is_none(), "{active}");

    // Members.
    let invited = w
        .json(&[
            "member",
            "invite",
            &s,
            "--email",
            "dev@acme.example",
            "--role",
            "developer",
        ])
        .await;
    assert_eq!(invited["role"], "developer");
    let member = invited["id"].as_str().unwrap().to_owned();
    let members = w.ok(&["member", "list", &s]).await;
    assert!(
        members
            .lines()
            .any(|l| l.contains(&member) && l.contains("dev@acme.example") && l.contains("developer")),
        "{members}"
    );
    assert!(
        members
            .lines()
            .any(|l| l.contains("owner@acme.example") && l.contains("owner")),
        "{members}"
    );
    let role = w
        .json(&["member", "role", &s, "--member", &member, "--role", "viewer"])
        .await;
    assert_eq!(role["role"], "viewer");
    w.ok(&["member", "remove", &s, "--member", &member]).await;
    let members = w.json(&["member", "list", &id]).await;
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "{members}");

    // An operator-minted token for the tenant works, and sees only its tenant.
    let token = w
        .ok(&[
            "token",
            "issue",
            "--tenant",
            &s,
            "--subject",
            "ci",
            "--scope",
            "tenant:read",
            "--ttl",
            "120",
        ])
        .await;
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let full = w
        .json(&[
            "token",
            "issue",
            "--tenant",
            &id,
            "--subject",
            "ci",
            "--scope",
            "tenant:read",
        ])
        .await;
    assert_eq!(full["tenant_id"].as_str(), Some(id.as_str()));
    assert_eq!(full["scopes"][0], "tenant:read");
    let mut as_tenant = w.keelctl(&["tenant", "list", "--output", "json", "--token", token]);
    as_tenant.env_remove("KEEL_API_KEY");
    let run = crate::harness::output(as_tenant).await;
    assert!(run.success(), "{run:?}");
    let seen: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(seen["tenants"].as_array().unwrap().len(), 1, "{seen}");
    let denied =
        crate::harness::output(w.keelctl(&["tenant", "suspend", &id, "--reason", "x", "--token", token]))
            .await;
    assert_eq!(denied.code, Some(1));
    assert!(
        denied.stderr.starts_with("error: PERMISSION_DENIED: "),
        "{denied:?}"
    );

    // A service account's API key, exchanged by keelctl itself.
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
    let key = account["api_key"].as_str().unwrap();
    let mut with_key = w.keelctl(&["tenant", "show", &s]);
    with_key.env("KEEL_API_KEY", key);
    let run = crate::harness::output(with_key).await;
    assert!(run.success() && run.stdout.contains(&id), "{run:?}");

    // Deletion shreds the members' addresses.
    let deleted = w.json(&["tenant", "delete", &s, "--yes"]).await;
    assert_eq!(deleted["status"], "deleting");
    let members = w.json(&["member", "list", &id]).await;
    assert_eq!(members["members"][0]["email"], "", "{members}");
    w.cleanup().await;
}
