//! No built-in secrets and no silent plaintext: a service without a master key, or without TLS
//! material (and no explicit `KEEL_TLS_INSECURE=true`), does not start, and says which setting
//! is missing.

use std::process::Stdio;
use std::time::Duration;

#[tokio::test]
async fn a_service_without_a_master_key_exits_non_zero_naming_the_setting() {
    for service in ["keel-tenant", "keel-provisioning", "keel-timeline"] {
        let binary = keel_e2e::binary(service).unwrap();
        for (var, value, expected) in [
            (None, None, "KEEL_MASTER_KEY"),
            (
                Some("KEEL_MASTER_KEY"),
                Some("bm90IDMyIGJ5dGVz"),
                "base64 of 32 bytes",
            ),
            (
                Some("KEEL_MASTER_KEY_FILE"),
                Some("/nonexistent/keel/master-key"),
                "KEEL_MASTER_KEY_FILE",
            ),
        ] {
            let mut cmd = tokio::process::Command::new(&binary);
            cmd.env_remove("KEEL_MASTER_KEY")
                .env_remove("KEEL_MASTER_KEY_FILE")
                .env("KEEL_TLS_DIR", keel_store::testing::tls_dir())
                .env("KEEL_BOOTSTRAP_TOKEN", "unused-bootstrap-key")
                .env("KEEL_DATABASE_URL", keel_store::testing::database_url())
                .env("KEEL_NATS_URL", keel_store::testing::nats_url())
                .env("KEEL_REDIS_URL", keel_store::testing::redis_url())
                .env("KEEL_LOG_FORMAT", "json")
                .env(format!("KEEL_{}_GRPC_ADDR", service_var(service)), "127.0.0.1:0")
                .env(format!("KEEL_{}_HTTP_ADDR", service_var(service)), "127.0.0.1:0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let (Some(var), Some(value)) = (var, value) {
                cmd.env(var, value);
            }
            let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
                .await
                .unwrap_or_else(|_| panic!("{service} kept running without a usable master key"))
                .unwrap();
            assert!(
                !out.status.success(),
                "{service} started without a usable master key"
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
    }
}

#[tokio::test]
async fn a_service_without_tls_material_exits_non_zero_naming_the_settings() {
    for service in ["keel-tenant", "keel-provisioning", "keel-timeline"] {
        let binary = keel_e2e::binary(service).unwrap();
        let missing = std::env::temp_dir().join("keel-e2e-no-tls-here");
        for (var, value, expected) in [
            (None, None, "KEEL_TLS_DIR"),
            (
                Some("KEEL_TLS_DIR"),
                Some(missing.display().to_string()),
                "keel-e2e-no-tls-here",
            ),
            (
                Some("KEEL_TLS_INSECURE"),
                Some("perhaps".to_owned()),
                "KEEL_TLS_INSECURE",
            ),
        ] {
            let mut cmd = tokio::process::Command::new(&binary);
            cmd.env_remove("KEEL_TLS_DIR")
                .env_remove("KEEL_TLS_CA")
                .env_remove("KEEL_TLS_CERT")
                .env_remove("KEEL_TLS_KEY")
                .env_remove("KEEL_TLS_INSECURE")
                .env("KEEL_MASTER_KEY", keel_e2e::TEST_MASTER_KEY)
                .env("KEEL_BOOTSTRAP_TOKEN", "unused-bootstrap-key")
                .env("KEEL_DATABASE_URL", keel_store::testing::database_url())
                .env("KEEL_NATS_URL", keel_store::testing::nats_url())
                .env("KEEL_LOG_FORMAT", "json")
                .env(format!("KEEL_{}_GRPC_ADDR", service_var(service)), "127.0.0.1:0")
                .env(format!("KEEL_{}_HTTP_ADDR", service_var(service)), "127.0.0.1:0")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            if let (Some(var), Some(value)) = (var, value) {
                cmd.env(var, value);
            }
            let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
                .await
                .unwrap_or_else(|_| panic!("{service} kept running without TLS material"))
                .unwrap();
            assert!(!out.status.success(), "{service} started without TLS material");
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
    }
}

fn service_var(binary: &str) -> &'static str {
    match binary {
        "keel-tenant" => "TENANT",
        "keel-provisioning" => "PROVISIONING",
        _ => "TIMELINE",
    }
}
