//! OpenTelemetry across the mesh: an OTLP collector of the test's own (a tonic server of the
//! collector's TraceService) receives, for one CreateTenant, the spans of tenant, provisioning
//! and timeline in one trace, every parent link resolving to a span it received.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use keel_e2e::mesh::Mesh;
use keel_e2e::otlp::{Collector, Received};
use keel_proto::v1 as pb;
use keel_store::testing::eventually;

const SERVER: i32 = 2; // SPAN_KIND_SERVER
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

#[tokio::test]
async fn one_create_tenant_is_one_trace_of_spans_from_tenant_provisioning_and_timeline() {
    let (endpoint, collector) = Collector::start().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        // Everything, so the test sees whole traces; the ratio itself is unit-tested.
        ("KEEL_TRACE_SAMPLE_RATIO", "1.0"),
    ];
    let mesh = Mesh::builder()
        .tenant(&otel)
        .provisioning(&otel)
        .timeline(&otel)
        .start()
        .await;
    let slug = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let tenant = mesh.create_tenant(&slug, pb::Tier::Mid).await;

    // The CreateTenant server span, then the whole chain it caused, as the services export it
    // (in batches, every few seconds).
    let create = eventually(
        "the CreateTenant server span",
        Duration::from_secs(30),
        || async {
            collector
                .spans()
                .into_iter()
                .find(|s| s.kind == SERVER && s.name == "keel.v1.TenantService/CreateTenant")
        },
    )
    .await;
    assert!(create.service.contains("tenant"), "{create:?}");
    assert_eq!(
        create.attributes.get("rpc.system").map(String::as_str),
        Some("grpc")
    );
    assert_eq!(
        create.attributes.get("rpc.method").map(String::as_str),
        Some("CreateTenant")
    );
    assert_eq!(
        create.attributes.get("keel.auth").map(String::as_str),
        Some("authenticated")
    );
    let trace = create.trace_id.clone();
    // Waited for by hand: on timeout the failure shows what did arrive.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let spans = loop {
        let of: Vec<Received> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .collect();
        let services: HashSet<&str> = of.iter().map(|s| s.service.as_str()).collect();
        let activated = of
            .iter()
            .any(|s| s.kind == SERVER && s.name == "keel.v1.TenantService/MarkProvisioned");
        let timeline = of
            .iter()
            .any(|s| s.service.contains("timeline") && s.kind == CONSUMER);
        let step = of.iter().any(|s| s.name.starts_with("provisioning step"));
        if services.len() >= 3 && activated && timeline && step {
            break of;
        }
        if std::time::Instant::now() > deadline {
            let all = collector.spans();
            let summary: Vec<String> = all
                .iter()
                .map(|s| {
                    format!(
                        "{} {} kind={} trace={}",
                        s.service,
                        s.name,
                        s.kind,
                        s.trace_id == trace
                    )
                })
                .collect();
            panic!("the create trace never got spans of all three services: {summary:#?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // Every parent is a span of the trace that reached the collector: one tree, no dangling
    // links. (CreateTenant's parent is the client's, which is not exported.)
    let ids: HashSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    for s in &spans {
        if s.span_id == create.span_id || s.parent.is_empty() {
            continue;
        }
        assert!(
            ids.contains(s.parent.as_slice()),
            "{} ({}) has a parent outside the trace: {spans:#?}",
            s.name,
            s.service
        );
    }
    // The hops are where they belong: the relay's publish under the call, provisioning's
    // consumer under a publish, a step under provisioning's trigger, the tenant's lifecycle
    // call under a step's client span.
    let by_id: HashMap<&[u8], &Received> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let parent_of = |s: &Received| by_id.get(s.parent.as_slice()).copied();
    let publish = spans
        .iter()
        .find(|s| s.kind == PRODUCER && parent_of(s).is_some_and(|p| p.span_id == create.span_id))
        .expect("the relay's publish of TenantCreated is a child of CreateTenant");
    assert_eq!(
        publish.attributes.get("messaging.system").map(String::as_str),
        Some("nats")
    );
    let consumed = spans
        .iter()
        .find(|s| s.kind == CONSUMER && s.service.contains("provisioning") && s.parent == publish.span_id)
        .expect("provisioning consumes TenantCreated under the publish");
    assert_eq!(
        consumed.attributes.get("tenant_id").map(String::as_str),
        Some(tenant.id.as_str())
    );
    let activate = spans
        .iter()
        .find(|s| s.kind == SERVER && s.name == "keel.v1.TenantService/MarkProvisioned")
        .unwrap();
    let client = parent_of(activate).expect("MarkProvisioned has its client span as parent");
    assert!(
        client.service.contains("provisioning") && client.kind == 3,
        "{client:?}"
    );
    let step = parent_of(client).expect("the client span has its step as parent");
    assert!(step.name.starts_with("provisioning step activate"), "{step:?}");
    assert_eq!(
        step.attributes.get("tenant_id").map(String::as_str),
        Some(tenant.id.as_str())
    );
    mesh.cleanup().await;
}
