//! Resolution order, defaults, errors and redaction of [`Config`].

use super::*;

fn resolve(service: &str, args: &[&str], env: &[(&str, &str)]) -> Result<ConfigOrPrint> {
    let args = std::iter::once("keel")
        .chain(args.iter().copied())
        .map(String::from);
    let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    Config::from_vars(service, args, vars)
}

fn run(service: &str, args: &[&str], env: &[(&str, &str)]) -> Config {
    match resolve(service, args, env) {
        Ok(ConfigOrPrint::Run(c)) => c,
        other => panic!("expected a config to run, got {other:?}"),
    }
}

#[test]
fn defaults_work_on_a_developer_machine() {
    let c = run("tenant", &[], &[]);
    assert_eq!(c.grpc_addr, "127.0.0.1:50051".parse().unwrap());
    assert_eq!(c.http_addr, "127.0.0.1:8081".parse().unwrap());
    assert_eq!(c.database_url, DEFAULT_DATABASE_URL);
    assert_eq!(c.nats_url, DEFAULT_NATS_URL);
    assert_eq!(c.redis_url, DEFAULT_REDIS_URL);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.bus_prefix, "");
    assert_eq!(c.resource_prefix, "");
    assert_eq!(c.otlp_endpoint, None);
    assert!(c.extra.is_empty());
}

#[test]
fn every_service_has_its_own_ports() {
    let services = [
        "tenant",
        "provisioning",
        "billing",
        "timeline",
        "evidence",
        "scheduler",
        "evaluator",
    ];
    for (i, s) in services.iter().enumerate() {
        let c = run(s, &[], &[]);
        assert_eq!(c.grpc_addr.port(), 50051 + i as u16, "{s}");
        assert_eq!(c.http_addr.port(), 8081 + i as u16, "{s}");
    }
    assert_eq!(run("something-else", &[], &[]).grpc_addr.port(), 0);
}

#[test]
fn flag_beats_env_beats_default() {
    let env = [
        ("KEEL_TENANT_GRPC_ADDR", "0.0.0.0:6000"),
        ("KEEL_NATS_URL", "nats://env:4222"),
        ("KEEL_REDIS_URL", "redis://env:6379"),
        ("KEEL_LOG", "debug"),
    ];
    let c = run(
        "tenant",
        &["--grpc-addr", "127.0.0.1:0", "--redis-url=redis://flag:1"],
        &env,
    );
    assert_eq!(c.grpc_addr, "127.0.0.1:0".parse().unwrap());
    assert_eq!(c.redis_url, "redis://flag:1");
    assert_eq!(c.nats_url, "nats://env:4222");
    assert_eq!(c.log_level, "debug");
    assert_eq!(c.http_addr.port(), 8081);
}

#[test]
fn other_services_variables_are_ignored() {
    let c = run("tenant", &[], &[("KEEL_BILLING_GRPC_ADDR", "127.0.0.1:1")]);
    assert_eq!(c.grpc_addr.port(), 50051);
}

#[test]
fn port_zero_is_accepted() {
    let c = run("billing", &["--http-addr", "127.0.0.1:0"], &[]);
    assert_eq!(c.http_addr.port(), 0);
}

#[test]
fn bad_address_names_the_variable() {
    let err = resolve("tenant", &[], &[("KEEL_TENANT_HTTP_ADDR", "localhost")]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("KEEL_TENANT_HTTP_ADDR"), "{msg}");
    assert!(msg.contains("localhost"), "{msg}");
    let err = resolve("tenant", &["--grpc-addr", "nope"], &[]).unwrap_err();
    assert!(err.to_string().contains("--grpc-addr"), "{err}");
}

#[test]
fn bad_log_settings_name_the_variable() {
    let err = resolve("tenant", &[], &[("KEEL_LOG_FORMAT", "xml")]).unwrap_err();
    assert!(err.to_string().contains("KEEL_LOG_FORMAT"), "{err}");
    let err = resolve("tenant", &["--log", "info,[bad"], &[]).unwrap_err();
    assert!(err.to_string().contains("--log"), "{err}");
    let c = run("tenant", &["--log-format", "pretty"], &[]);
    assert_eq!(c.log_format, LogFormat::Pretty);
}

#[test]
fn empty_variables_count_as_unset() {
    let c = run(
        "tenant",
        &[],
        &[("KEEL_NATS_URL", ""), ("OTEL_EXPORTER_OTLP_ENDPOINT", "")],
    );
    assert_eq!(c.nats_url, DEFAULT_NATS_URL);
    assert_eq!(c.otlp_endpoint, None);
}

#[test]
fn unknown_flags_are_rejected() {
    assert!(matches!(resolve("tenant", &["--nope"], &[]), Err(Error::Cli(_))));
}

#[test]
fn extra_holds_the_services_own_settings() {
    let env = [
        ("KEEL_TENANT_JWKS_TTL", "300"),
        ("KEEL_TENANT_SIGNING_KEY_PATH", "/k"),
        ("KEEL_TENANT_GRPC_ADDR", "127.0.0.1:0"),
        ("KEEL_BILLING_PLAN", "x"),
        ("KEEL_BUS_PREFIX", "t1_"),
        ("KEEL_RESOURCE_PREFIX", " r1_ "),
    ];
    let c = run("tenant", &[], &env);
    assert_eq!(c.extra.len(), 2, "{:?}", c.extra);
    assert_eq!(c.setting("jwks_ttl"), Some("300"));
    assert_eq!(c.setting("signing_key_path"), Some("/k"));
    assert_eq!(c.setting_parsed::<u64>("jwks_ttl").unwrap(), Some(300));
    assert_eq!(c.setting_parsed::<u64>("missing").unwrap(), None);
    let err = c.setting_parsed::<u64>("signing_key_path").unwrap_err();
    assert!(err.to_string().contains("KEEL_TENANT_SIGNING_KEY_PATH"), "{err}");
    assert_eq!(c.bus_prefix, "t1_");
    assert_eq!(
        c.resource_prefix, "r1_",
        "shared, not the service's own, and trimmed"
    );
}

#[test]
fn print_config_redacts_secrets() {
    let env = [
        ("KEEL_DATABASE_URL", "postgres://keel:hunter2@db:5432/keel"),
        ("KEEL_TENANT_API_TOKEN", "abc123"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
    ];
    let c = match resolve("tenant", &["--print-config"], &env).unwrap() {
        ConfigOrPrint::Print(c) => c,
        other => panic!("expected print, got {other:?}"),
    };
    let json = c.to_redacted_json();
    assert!(!json.contains("hunter2"), "{json}");
    assert!(!json.contains("abc123"), "{json}");
    assert!(json.contains("postgres://keel:[redacted]@db:5432/keel"), "{json}");
    assert!(json.contains("http://collector:4317"), "{json}");
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["log_format"], "json");
    assert_eq!(parsed["grpc_addr"], "127.0.0.1:50051");
}
