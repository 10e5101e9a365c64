//! The tenant's Kubernetes resources for Flux, rendered as YAML: its namespace (PodSecurity
//! `restricted`), a ResourceQuota sized by tier, default container resources, default-deny
//! network policies with the few flows a tenant server needs, and the HelmRelease of the
//! tenant server. Rendering is pure and deterministic (keys sorted), so unchanged input gives
//! byte-identical files and the step can skip writing them.

use serde_json::{Value, json};

use super::{StepContext, StepError, failure};

/// The files of one tenant, in the order the Kustomization lists them (itself last).
pub const FILES: [&str; 7] = [
    "namespace.yaml",
    "resourcequota.yaml",
    "limitrange.yaml",
    "networkpolicy-default-deny.yaml",
    "networkpolicy-allow.yaml",
    "helmrelease.yaml",
    "kustomization.yaml",
];

/// Where Keel's own services run; tenant servers talk to their gRPC ports and NATS.
const KEEL_NAMESPACE: &str = "keel-system";
const INGRESS_NAMESPACE: &str = "ingress-nginx";
const CHART: &str = "keel-tenant-server";

/// A DNS label (RFC 1123): what a namespace name must be.
fn is_dns_label(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    s.len() <= 63
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A label value: up to 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn is_label_value(s: &str) -> bool {
    let edge = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    s.len() <= 63
        && edge(s.as_bytes().first())
        && edge(s.as_bytes().last())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn namespace_selector(name: &str) -> Value {
    json!({ "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": name } } })
}

/// The tenant's files as `(name, YAML)`, in [`FILES`] order.
pub fn render(ctx: &StepContext) -> Result<Vec<(&'static str, String)>, StepError> {
    let tier = failure::tier(&ctx.tier)?;
    let ns = ctx.names.namespace.as_str();
    if !is_dns_label(ns) {
        return Err(StepError::Permanent(format!(
            "namespace {ns:?} is not a DNS label"
        )));
    }
    if !is_label_value(&ctx.tenant_id) {
        return Err(StepError::Permanent(format!(
            "tenant id {:?} is not a Kubernetes label value",
            ctx.tenant_id
        )));
    }
    let entitlements = tier.entitlements();
    let size = entitlements.sizing;
    let labels = json!({
        "app.kubernetes.io/managed-by": "keel-provisioning",
        "keel.dev/tenant": ctx.tenant_id,
    });
    let meta = |name: &str| json!({ "name": name, "namespace": ns, "labels": labels });
    // Unlimited agents: no pod quota at all (absent, not a large number).
    let pods = if ctx.suspended {
        Some(0)
    } else {
        entitlements.pod_quota()
    };
    let replicas = if ctx.suspended { 0 } else { size.replicas };

    let namespace = json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns,
            "labels": {
                "app.kubernetes.io/managed-by": "keel-provisioning",
                "keel.dev/tenant": ctx.tenant_id,
                "keel.dev/tier": ctx.tier,
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    });
    let mut quota = json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": meta("tenant-quota"),
        "spec": { "hard": {
            "requests.cpu": size.requests_cpu,
            "requests.memory": size.requests_memory,
            "limits.cpu": size.limits_cpu,
            "limits.memory": size.limits_memory,
            "persistentvolumeclaims": size.volume_claims,
            "requests.storage": size.storage,
            "services.loadbalancers": "0",
            "services.nodeports": "0",
        } },
    });
    if let Some(pods) = pods {
        quota["spec"]["hard"]["pods"] = json!(pods.to_string());
    }
    // The quota counts requests and limits, so every container needs them: these are the defaults.
    let limits = json!({
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": meta("tenant-defaults"),
        "spec": { "limits": [{
            "type": "Container",
            "defaultRequest": { "cpu": "100m", "memory": "128Mi" },
            "default": { "cpu": "500m", "memory": "512Mi" },
        }] },
    });
    let deny = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("default-deny"),
        "spec": { "podSelector": {}, "policyTypes": ["Ingress", "Egress"] },
    });
    let mut dns_peer = namespace_selector("kube-system");
    dns_peer["podSelector"] = json!({ "matchLabels": { "k8s-app": "kube-dns" } });
    let allow = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta("allow-keel"),
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [namespace_selector(INGRESS_NAMESPACE)],
                "ports": [{ "protocol": "TCP", "port": 8080 }],
            }],
            "egress": [
                {
                    "to": [dns_peer],
                    "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
                },
                {
                    "to": [namespace_selector(KEEL_NAMESPACE)],
                    "ports": [
                        { "protocol": "TCP", "port": 50051, "endPort": 50057 },
                        { "protocol": "TCP", "port": 4222 },
                    ],
                },
            ],
        },
    });
    let mut release_meta = meta(CHART);
    release_meta["annotations"] = json!({ "keel.dev/suspended": ctx.suspended.to_string() });
    let release = json!({
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": release_meta,
        "spec": {
            "interval": "10m",
            "chart": { "spec": {
                "chart": CHART,
                "sourceRef": { "kind": "HelmRepository", "name": "keel", "namespace": "flux-system" },
            } },
            "install": { "remediation": { "retries": 3 } },
            "upgrade": { "remediation": { "retries": 3 } },
            "values": {
                "tenantId": ctx.tenant_id,
                "tier": ctx.tier,
                "replicaCount": replicas,
            },
        },
    });
    let kustomization = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": &FILES[..FILES.len() - 1],
    });

    let docs = [namespace, quota, limits, deny, allow, release, kustomization];
    FILES
        .into_iter()
        .zip(docs)
        .map(|(name, doc)| to_yaml(ctx, &doc).map(|yaml| (name, yaml)))
        .collect()
}

fn to_yaml(ctx: &StepContext, doc: &Value) -> Result<String, StepError> {
    let body = serde_norway::to_string(doc)
        .map_err(|e| StepError::Permanent(format!("rendering a manifest: {e}")))?;
    Ok(format!(
        "# Rendered by keel-provisioning for tenant {}; edits are overwritten.\n{body}",
        ctx.tenant_id
    ))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::steps::ResourceNames;

    fn ctx(tier: &str, suspended: bool) -> StepContext {
        StepContext {
            tenant_id: "tenant-1".into(),
            slug: "acme".into(),
            tier: tier.into(),
            suspended,
            names: ResourceNames::new("", "tenant-1", "acme", Path::new("/gitops")),
            traceparent: None,
        }
    }

    fn doc(ctx: &StepContext, file: &str) -> Value {
        let files = render(ctx).unwrap_or_default();
        let yaml = files.iter().find(|(n, _)| *n == file).map(|(_, y)| y.as_str());
        serde_norway::from_str(yaml.unwrap_or_default()).unwrap_or_default()
    }

    #[test]
    fn rendering_is_deterministic() {
        assert_eq!(render(&ctx("mid", false)), render(&ctx("mid", false)));
    }

    #[test]
    fn suspension_stops_pods_and_replicas() {
        let c = ctx("business", true);
        assert_eq!(doc(&c, "resourcequota.yaml")["spec"]["hard"]["pods"], "0");
        assert_eq!(doc(&c, "helmrelease.yaml")["spec"]["values"]["replicaCount"], 0);
        let c = ctx("business", false);
        assert!(
            doc(&c, "resourcequota.yaml")["spec"]["hard"]
                .get("pods")
                .is_none(),
            "unlimited agents: no pod quota"
        );
        assert_eq!(doc(&c, "helmrelease.yaml")["spec"]["values"]["replicaCount"], 3);
        let c = ctx("mid", false);
        assert_eq!(doc(&c, "resourcequota.yaml")["spec"]["hard"]["pods"], "50");
    }

    #[test]
    fn names_that_kubernetes_refuses_are_permanent_errors() {
        let mut c = ctx("low", false);
        c.names.namespace = "Tenant_Acme".into();
        assert!(render(&c).is_err_and(|e| e.is_permanent()));
        let mut c = ctx("low", false);
        c.tenant_id = "-bad".into();
        assert!(render(&c).is_err_and(|e| e.is_permanent()));
    }
}
