//! The manifests step: Kubernetes resources for Flux, checked against the real Kubernetes
//! schemas with `kubernetes-validate` (the Flux and kustomize types structurally).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use keel_provisioning::steps::kubernetes::FILES;
use keel_provisioning::steps::{self, StepContext};
use serde_json::{Value, json};
use tokio::process::Command;
use tokio::sync::OnceCell;

use crate::world::World;

/// Files of the core API, which the Kubernetes schemas cover.
const CORE: [&str; 5] = [
    "namespace.yaml",
    "resourcequota.yaml",
    "limitrange.yaml",
    "networkpolicy-default-deny.yaml",
    "networkpolicy-allow.yaml",
];

static VALIDATOR: OnceCell<()> = OnceCell::const_new();

/// Installs `kubernetes-validate` from PyPI when this machine does not have it yet.
async fn ensure_validator() {
    VALIDATOR
        .get_or_init(|| async {
            let probe = Command::new("python3")
                .args(["-c", "import kubernetes_validate"])
                .output()
                .await;
            if probe.is_ok_and(|o| o.status.success()) {
                return;
            }
            let install = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "kubernetes-validate"])
                .output()
                .await
                .expect("run pip");
            assert!(
                install.status.success(),
                "pip install kubernetes-validate failed: {}",
                String::from_utf8_lossy(&install.stderr)
            );
        })
        .await;
}

async fn kubernetes_validate(files: &[PathBuf]) {
    ensure_validator().await;
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(files)
        .output()
        .await
        .expect("run kubernetes-validate");
    assert!(
        out.status.success(),
        "kubernetes-validate failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn core_files(ctx: &StepContext) -> Vec<PathBuf> {
    CORE.iter().map(|f| ctx.names.manifest_dir.join(f)).collect()
}

fn doc(ctx: &StepContext, file: &str) -> Value {
    let text = std::fs::read_to_string(ctx.names.manifest_dir.join(file)).expect("read manifest");
    serde_norway::from_str(&text).expect("parse manifest")
}

/// Name → (inode, content): a rewrite (rename) changes the inode even when content is equal.
fn snapshot(dir: &Path) -> BTreeMap<String, (u64, String)> {
    std::fs::read_dir(dir)
        .expect("list dir")
        .map(|e| {
            let path = e.expect("entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let ino = std::fs::metadata(&path).expect("metadata").ino();
            (name, (ino, std::fs::read_to_string(&path).expect("read")))
        })
        .collect()
}

/// The Flux and kustomize types, which `kubernetes-validate` has no schemas for.
fn check_release_and_kustomization(ctx: &StepContext, replicas: u64) {
    let release = doc(ctx, "helmrelease.yaml");
    assert_eq!(release["apiVersion"], "helm.toolkit.fluxcd.io/v2");
    assert_eq!(release["kind"], "HelmRelease");
    assert_eq!(release["metadata"]["name"], "keel-tenant-server");
    assert_eq!(release["metadata"]["namespace"], ctx.names.namespace.as_str());
    assert_eq!(
        release["metadata"]["annotations"]["keel.dev/suspended"],
        ctx.suspended.to_string()
    );
    let chart = &release["spec"]["chart"]["spec"];
    assert_eq!(chart["chart"], "keel-tenant-server");
    assert_eq!(
        chart["sourceRef"],
        json!({ "kind": "HelmRepository", "name": "keel", "namespace": "flux-system" })
    );
    assert!(release["spec"]["interval"].is_string());
    let values = &release["spec"]["values"];
    assert_eq!(values["tenantId"], ctx.tenant_id.as_str());
    assert_eq!(values["tier"], ctx.tier.as_str());
    assert_eq!(values["replicaCount"], replicas);

    let kustomization = doc(ctx, "kustomization.yaml");
    assert_eq!(kustomization["apiVersion"], "kustomize.config.k8s.io/v1beta1");
    assert_eq!(kustomization["kind"], "Kustomization");
    let resources: Vec<&str> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(resources, FILES[..6].to_vec());
    assert!(resources.iter().all(|r| ctx.names.manifest_dir.join(r).is_file()));
}

#[tokio::test]
async fn manifests_are_valid_and_rewritten_only_when_they_change() {
    let w = World::new().await;
    let step = steps::manifests();
    let ctx = w.ctx("acme", "high", false);
    let dir = ctx.names.manifest_dir.clone();
    assert!(dir.starts_with(&w.sys.gitops_dir));

    let report = step.apply(&w.sys, &ctx).await.expect("apply");
    assert_eq!(report["written"], json!(FILES), "{report}");
    assert!(step.check(&w.sys, &ctx).await.expect("check"));
    let first = snapshot(&dir);
    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        {
            let mut files: Vec<String> = FILES.iter().map(|f| (*f).to_owned()).collect();
            files.sort();
            files
        },
        "exactly the manifests, no temporary files"
    );

    let again = step.apply(&w.sys, &ctx).await.expect("apply again");
    assert_eq!(again["written"], json!([]), "{again}");
    assert_eq!(snapshot(&dir), first, "files untouched");

    kubernetes_validate(&core_files(&ctx)).await;
    check_release_and_kustomization(&ctx, 2);
    let ns = doc(&ctx, "namespace.yaml");
    assert_eq!(ns["metadata"]["name"], ctx.names.namespace.as_str());
    assert_eq!(
        ns["metadata"]["labels"]["keel.dev/tenant"],
        ctx.tenant_id.as_str()
    );
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // High tier: unlimited agents, so no pod quota.
    assert!(
        doc(&ctx, "resourcequota.yaml")["spec"]["hard"]
            .get("pods")
            .is_none()
    );
    let deny = doc(&ctx, "networkpolicy-default-deny.yaml");
    assert_eq!(
        deny["spec"],
        json!({ "podSelector": {}, "policyTypes": ["Ingress", "Egress"] })
    );
    let allow = doc(&ctx, "networkpolicy-allow.yaml");
    let ingress = &allow["spec"]["ingress"][0];
    assert_eq!(
        ingress["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    assert_eq!(ingress["ports"], json!([{ "port": 8080, "protocol": "TCP" }]));
    let egress = allow["spec"]["egress"].as_array().expect("egress");
    assert_eq!(
        egress[0]["ports"],
        json!([{ "port": 53, "protocol": "UDP" }, { "port": 53, "protocol": "TCP" }])
    );
    assert_eq!(
        egress[1]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "keel-system"
    );
    assert_eq!(
        egress[1]["ports"],
        json!([{ "port": 50051, "endPort": 50057, "protocol": "TCP" }, { "port": 4222, "protocol": "TCP" }])
    );

    // Suspension: no pods, no replicas; only the two affected files are rewritten.
    let suspended = StepContext {
        suspended: true,
        ..ctx.clone()
    };
    assert!(!step.check(&w.sys, &suspended).await.expect("check before"));
    let report = step.apply(&w.sys, &suspended).await.expect("suspend");
    assert_eq!(
        report["written"],
        json!(["resourcequota.yaml", "helmrelease.yaml"]),
        "{report}"
    );
    assert!(step.check(&w.sys, &suspended).await.expect("check"));
    assert!(!step.check(&w.sys, &ctx).await.expect("old state"));
    assert_eq!(doc(&ctx, "resourcequota.yaml")["spec"]["hard"]["pods"], "0");
    check_release_and_kustomization(&suspended, 0);
    kubernetes_validate(&core_files(&ctx)).await;

    // A hand edit is noticed and undone.
    std::fs::write(dir.join("limitrange.yaml"), "kind: [unclosed").expect("edit");
    assert!(
        !step
            .check(&w.sys, &suspended)
            .await
            .expect("check after the edit")
    );
    let report = step.apply(&w.sys, &suspended).await.expect("repair");
    assert_eq!(report["written"], json!(["limitrange.yaml"]), "{report}");

    let removed = step.compensate(&w.sys, &ctx).await.expect("compensate");
    let mut expected: Vec<String> = FILES
        .iter()
        .map(|f| format!("file {}", dir.join(f).display()))
        .collect();
    expected.sort();
    expected.push(format!("dir {}", dir.display()));
    assert_eq!(removed, expected);
    assert!(!dir.exists(), "dir left");
    assert!(!step.check(&w.sys, &ctx).await.expect("check"));
    assert!(
        step.compensate(&w.sys, &ctx)
            .await
            .expect("compensate again")
            .is_empty()
    );
    w.cleanup().await;
}

#[tokio::test]
async fn every_tier_renders_valid_manifests_with_its_replicas() {
    let w = World::new().await;
    let step = steps::manifests();
    let mut core = Vec::new();
    let mut tenants = Vec::new();
    for (tier, replicas, pods) in [
        ("low", 1, Some("10")),
        ("mid", 1, Some("50")),
        ("high", 2, None),
        ("business", 3, None),
    ] {
        let ctx = w.ctx(tier, tier, false);
        step.apply(&w.sys, &ctx).await.expect("apply");
        check_release_and_kustomization(&ctx, replicas);
        // Unlimited agents (high, business): no pod quota.
        assert_eq!(
            doc(&ctx, "resourcequota.yaml")["spec"]["hard"]
                .get("pods")
                .and_then(|p| p.as_str()),
            pods,
            "{tier}"
        );
        core.extend(core_files(&ctx));
        tenants.push(ctx);
    }
    kubernetes_validate(&core).await;
    for ctx in &tenants {
        assert_eq!(
            step.compensate(&w.sys, ctx).await.expect("compensate").len(),
            FILES.len() + 1
        );
    }
    w.cleanup().await;
}
