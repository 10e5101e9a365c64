//! Bad input: usage errors exit 2 before any network call, service refusals exit 1 with the
//! gRPC code, and nothing panics.

use crate::harness::{World, bare_keelctl, output};

async fn bare(args: &[&str]) -> crate::harness::Run {
    let dir = tempfile::tempdir().unwrap();
    output(bare_keelctl(args, dir.path())).await
}

#[tokio::test]
async fn usage_errors_exit_2_with_a_clear_message() {
    let run = bare(&[
        "tenant",
        "create",
        "--name",
        "A",
        "--slug",
        "acme",
        "--tier",
        "gold",
        "--owner-email",
        "a@b.example",
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(
        run.stderr.contains("'gold'") && run.stderr.contains("low, mid, high, business"),
        "{run:?}"
    );

    for tenant in ["*", ">", "acme.>", "a b"] {
        let run = bare(&["audit", "tail", "--tenant", tenant]).await;
        assert_eq!(run.code, Some(2), "{tenant}: {run:?}");
        assert!(run.stderr.contains("must be a tenant id"), "{run:?}");
    }
    let run = bare(&[
        "token",
        "issue",
        "--tenant",
        "*",
        "--subject",
        "x",
        "--scope",
        "operator",
        "--ttl",
        "0",
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    let run = bare(&[
        "member",
        "invite",
        "acme",
        "--email",
        "a@b.example",
        "--role",
        "king",
    ])
    .await;
    assert_eq!(run.code, Some(2), "{run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}

#[tokio::test]
async fn missing_credentials_and_unreachable_service_exit_1() {
    let run = bare(&["tenant", "list"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: no credentials"), "{run:?}");

    // No CA to check the services against (no .keel/tls in the directory): said, not guessed.
    let run = bare(&["tenant", "list", "--api-key", "k"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("--ca"), "{run:?}");

    let run = bare(&[
        "tenant",
        "list",
        "--addr",
        "http://127.0.0.1:1",
        "--api-key",
        "k",
        "--insecure",
    ])
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: UNAVAILABLE: "), "{run:?}");

    // A plaintext address without --insecure is refused before anything is sent.
    let ca = keel_store::testing::tls_dir().join(keel_runtime::tls::local::CA_CERT);
    let ca = ca.to_str().unwrap();
    let run = bare(&[
        "tenant",
        "list",
        "--addr",
        "http://127.0.0.1:1",
        "--api-key",
        "k",
        "--ca",
        ca,
    ])
    .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("https://"), "{run:?}");
}

#[tokio::test]
async fn service_refusals_print_the_grpc_code() {
    let w = World::start().await;
    let run = w.run(&["tenant", "show", "no-such-tenant"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stderr.trim(), "error: NOT_FOUND: tenant not found");

    let run = w
        .run(&[
            "tenant",
            "create",
            "--name",
            "A",
            "--slug",
            "acme-x",
            "--tier",
            "low",
            "--owner-email",
            "nope",
        ])
        .await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr.starts_with("error: INVALID_ARGUMENT: owner_email"),
        "{run:?}"
    );

    let mut wrong_key = w.keelctl(&["tenant", "list"]);
    wrong_key.env("KEEL_API_KEY", "not-a-key");
    let run = output(wrong_key).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: UNAUTHENTICATED: "), "{run:?}");

    // Suspending a PENDING tenant is refused with the current state.
    let id = w.create(&crate::harness::slug()).await;
    let run = w.run(&["tenant", "suspend", &id, "--reason", "x"]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.starts_with("error: FAILED_PRECONDITION: "), "{run:?}");
    w.cleanup().await;
}
