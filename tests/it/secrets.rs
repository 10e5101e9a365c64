//! No built-in secrets and no silent plaintext: a service without a master key, or without TLS
//! material (and no explicit `KEEL_TLS_INSECURE=true`), does not start, and says which setting
//! is missing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

const SERVICES: [&str; 3] = ["keel-tenant", "keel-provisioning", "keel-timeline"];

/// Starts `binary` on the test servers with `unset` removed from its environment and `set` on
/// top; asserts it exits non-zero without listening, having named `expected`.
async fn refused_start(binary: &Path, service: &str, unset: &[&str], set: &[(&str, String)], expected: &str) {
    let mut cmd = tokio::process::Command::new(binary);
    for var in unset {
        cmd.env_remove(var);
    }
    cmd.env("KEEL_BOOTSTRAP_TOKEN", "unused-bootstrap-key")
        .env("KEEL_DATABASE_URL", keel_store::testing::database_url())
        .env("KEEL_NATS_URL", keel_store::testing::nats_url())
        .env("KEEL_REDIS_URL", keel_store::testing::redis_url())
        .env("KEEL_LOG_FORMAT", "json")
        .env(format!("KEEL_{}_GRPC_ADDR", service_var(service)), "127.0.0.1:0")
        .env(format!("KEEL_{}_HTTP_ADDR", service_var(service)), "127.0.0.1:0")
        .envs(set.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{service} kept running; expected a refusal naming {expected}"))
        .unwrap();
    assert!(
        !out.status.success(),
        "{service} started; expected a refusal naming {expected}"
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(expected),
        "{service}: {expected:?} not named in: {said}"
    );
    assert!(
        !said.contains("\"event\":\"listening\""),
        "{service} listened: {said}"
    );
}

#[tokio::test]
async fn a_service_without_a_master_key_exits_non_zero_naming_the_setting() {
    let tls = (
        "KEEL_TLS_DIR",
        keel_store::testing::tls_dir().display().to_string(),
    );
    for service in SERVICES {
        let binary = keel_e2e::binary(service).unwrap();
        for (var, expected) in [
            (None, "KEEL_MASTER_KEY"),
            (
                Some(("KEEL_MASTER_KEY", "bm90IDMyIGJ5dGVz")),
                "base64 of 32 bytes",
            ),
            (
                Some(("KEEL_MASTER_KEY_FILE", "/nonexistent/keel/master-key")),
                "KEEL_MASTER_KEY_FILE",
            ),
        ] {
            let mut set = vec![tls.clone()];
            set.extend(var.map(|(k, v)| (k, v.to_owned())));
            refused_start(
                &binary,
                service,
                &["KEEL_MASTER_KEY", "KEEL_MASTER_KEY_FILE"],
                &set,
                expected,
            )
            .await;
        }
    }
}

#[tokio::test]
async fn a_service_without_tls_material_exits_non_zero_naming_the_settings() {
    let missing = std::env::temp_dir().join("keel-e2e-no-tls-here");
    let key = ("KEEL_MASTER_KEY", keel_e2e::TEST_MASTER_KEY.to_owned());
    let unset = [
        "KEEL_TLS_DIR",
        "KEEL_TLS_CA",
        "KEEL_TLS_CERT",
        "KEEL_TLS_KEY",
        "KEEL_TLS_INSECURE",
    ];
    for service in SERVICES {
        let binary = keel_e2e::binary(service).unwrap();
        for (var, expected) in [
            (None, "KEEL_TLS_DIR"),
            (
                Some(("KEEL_TLS_DIR", missing.display().to_string())),
                "keel-e2e-no-tls-here",
            ),
            (
                Some(("KEEL_TLS_INSECURE", "perhaps".to_owned())),
                "KEEL_TLS_INSECURE",
            ),
        ] {
            let mut set = vec![key.clone()];
            set.extend(var);
            refused_start(&binary, service, &unset, &set, expected).await;
        }
    }
}

fn service_var(binary: &str) -> &'static str {
    match binary {
        "keel-tenant" => "TENANT",
        "keel-provisioning" => "PROVISIONING",
        _ => "TIMELINE",
    }
}
