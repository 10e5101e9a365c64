//! `license show` over gRPC, then `license verify` with nothing but two files.

use crate::harness::{World, output, slug};

#[tokio::test]
async fn license_saved_to_a_file_verifies_offline_and_a_changed_byte_does_not() {
    let w = World::start().await;
    let s = slug();
    let id = w.create(&s).await;
    // A tier change (re-)issues the license.
    w.ok(&["tenant", "change-tier", &s, "--tier", "high"]).await;

    let shown = w.ok(&["license", "show", &s]).await;
    assert!(
        shown.contains("tier:") && shown.contains("high") && shown.contains(&id),
        "{shown}"
    );
    let json = w.json(&["license", "show", &id]).await;
    assert_eq!(json["tier"], "high");
    assert!(json["license_id"].as_str().unwrap().starts_with("lic-"), "{json}");
    let jwt = w.ok(&["license", "show", &s, "--jwt-only"]).await;
    assert_eq!(jwt.trim(), json["jwt"].as_str().unwrap());
    let license = w.path("license.jwt");
    std::fs::write(&license, &jwt).unwrap();
    let jwks = w.path("jwks.json");
    std::fs::write(&jwks, w.license_jwks().await).unwrap();

    // Offline: the service and NATS addresses point nowhere.
    let verify = |file: &std::path::Path, json: bool| {
        let mut args = vec![
            "license".to_owned(),
            "verify".to_owned(),
            file.display().to_string(),
            "--jwks".to_owned(),
            jwks.display().to_string(),
        ];
        if json {
            args.extend(["--output".to_owned(), "json".to_owned()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = crate::harness::bare_keelctl(&args, w.dir.path());
        cmd.env("KEEL_TENANT_ADDR", "http://127.0.0.1:1")
            .env("KEEL_NATS_URL", "nats://127.0.0.1:1");
        output(cmd)
    };
    let ok = verify(&license, false).await;
    assert!(ok.success(), "{ok:?}");
    assert!(ok.stdout.starts_with("VALID"), "{ok:?}");
    assert!(ok.stdout.contains(&id) && ok.stdout.contains("high"), "{ok:?}");
    let ok = verify(&license, true).await;
    assert!(ok.success(), "{ok:?}");
    let verdict: serde_json::Value = serde_json::from_str(&ok.stdout).unwrap();
    assert_eq!(verdict["status"], "valid");
    assert_eq!(verdict["claims"]["tenant"].as_str(), Some(id.as_str()));

    // One byte changed in the middle of the token.
    let mut bytes = jwt.trim().as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    let tampered = w.path("tampered.jwt");
    std::fs::write(&tampered, &bytes).unwrap();
    let bad = verify(&tampered, false).await;
    assert_eq!(bad.code, Some(1), "{bad:?}");
    assert!(bad.stdout.starts_with("INVALID"), "{bad:?}");

    let missing = verify(&w.path("nope.jwt"), false).await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(
        missing.stderr.starts_with("error: reading license file"),
        "{missing:?}"
    );
    w.cleanup().await;
}
