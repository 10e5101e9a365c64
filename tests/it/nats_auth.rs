//! The bus trusts no one. Keel's NATS refuses a client without credentials; a service's
//! credentials publish only that service's subjects, so a forged deletion request sent with
//! another service's credentials never reaches the stream; a message a service may publish but
//! whose envelope disagrees with its subject is dead-lettered, not applied; and a tenant's
//! audit credentials read that tenant's records and are refused everyone else's.

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use futures::StreamExt;
use keel_bus::StreamKind;
use keel_bus::acl::Role;
use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh, Part};
use keel_events::{Envelope, subjects};
use keel_proto::v1 as pb;
use keel_proto::v1::provisioning_service_client::ProvisioningServiceClient;
use keel_runtime::nats::Credentials;
use keel_store::testing::{eventually, nats_url, unique_token};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(90);

/// A client with `creds`, and the server's error messages (permission violations) as they come.
async fn watched(creds: &Credentials) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .credentials(&creds.to_file())
        .expect("credentials")
        .custom_inbox_prefix(creds.inbox_prefix().expect("inbox"))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(nats_url())
        .await
        .expect("connect with credentials");
    (client, rx)
}

/// Waits for the server to report a permission violation naming `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) -> String {
    tokio::time::timeout(LIMIT, async {
        loop {
            let e = errors.recv().await.expect("error channel open");
            if e.to_lowercase().contains("permissions violation") && e.contains(subject) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no permission violation for {subject}"))
}

fn creds(role: Role, mesh: &Mesh) -> Credentials {
    keel_bus::acl::issue(
        keel_store::testing::nats_authority(),
        &role,
        &mesh.token,
        Some(Duration::from_secs(600)),
    )
}

async fn active_tenant(mesh: &Mesh) -> pb::Tenant {
    let slug = format!("n{}", &unique_token()[1..10]);
    let t = mesh.create_tenant(&slug, pb::Tier::Mid).await;
    let id = t.id.clone();
    eventually("the tenant is provisioned", LIMIT, || async {
        let got = mesh
            .tenants()
            .get_tenant(pb::GetTenantRequest {
                tenant: Some(pb::TenantRef {
                    r#ref: Some(pb::tenant_ref::Ref::Id(id.clone())),
                }),
            })
            .await
            .ok()?
            .into_inner();
        (got.status == pb::TenantStatus::Active as i32).then_some(got)
    })
    .await
}

async fn status_of(mesh: &Mesh, id: &str) -> i32 {
    mesh.tenants()
        .get_tenant(pb::GetTenantRequest {
            tenant: Some(pb::TenantRef {
                r#ref: Some(pb::tenant_ref::Ref::Id(id.to_owned())),
            }),
        })
        .await
        .expect("GetTenant")
        .into_inner()
        .status
}

#[tokio::test]
async fn a_client_without_credentials_is_refused() {
    let err = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(nats_url())
        .await
        .expect_err("Keel's NATS admits no anonymous client");
    assert!(
        err.to_string().to_lowercase().contains("authorization"),
        "refused for want of authorization: {err}"
    );
}

#[tokio::test]
async fn forged_messages_sent_with_another_services_credentials_change_nothing() {
    let mesh = Mesh::builder().provisioning(&[]).timeline(&[]).start().await;
    let victim = active_tenant(&mesh).await;
    let p = mesh.bus.subject_prefix();

    // 1. The timeline's credentials cannot publish on the tenant service's subjects.
    let (timeline, mut errors) = watched(&creds(Role::Service("timeline".into()), &mesh)).await;
    let forged = Envelope::builder("tenant", "TenantDeletionRequested", 1)
        .tenant(&victim.id)
        .actor("user:mallory")
        .aggregate("tenant", &victim.id, 99)
        .data(serde_json::json!({}))
        .build()
        .expect("envelope");
    let subject = subjects::event(&p, &victim.id, "tenant", "TenantDeletionRequested");
    timeline
        .publish(subject.clone(), serde_json::to_vec(&forged).expect("json").into())
        .await
        .expect("the client sends");
    timeline.flush().await.expect("flush");
    let refused = violation(&mut errors, &subject).await;
    assert!(refused.contains("Publish"), "{refused}");
    // …nor read what it does not consume with a core subscription.
    let tap = subjects::events_all(&p);
    let _sub = timeline.subscribe(tap.clone()).await.expect("subscribe is sent");
    timeline.flush().await.expect("flush");
    violation(&mut errors, &tap).await;

    // 2. A message the provisioning service may publish (its own subject) but whose envelope
    //    claims to be the tenant service's: dead-lettered by the timeline, applied nowhere.
    let (provisioning, _errors) = watched(&creds(Role::Service("provisioning".into()), &mesh)).await;
    let js = async_nats::jetstream::new(provisioning);
    let spoof = Envelope::builder("tenant", "TenantDeletionRequested", 1)
        .tenant(&victim.id)
        .actor("user:mallory")
        .aggregate("tenant", &victim.id, 100)
        .data(serde_json::json!({}))
        .build()
        .expect("envelope");
    let spoof_subject = subjects::event(&p, &victim.id, "provisioning", "TenantDeletionRequested");
    js.publish(
        spoof_subject.clone(),
        serde_json::to_vec(&spoof).expect("json").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("its own subject is accepted");
    let spoof_id = spoof.id.to_string();
    eventually("the spoof is dead-lettered", LIMIT, || async {
        mesh.stream(StreamKind::Dlq)
            .await
            .into_iter()
            .any(|(_, body)| body.to_string().contains(&spoof_id))
            .then_some(())
    })
    .await;

    // Nothing changed: the forged deletion never reached the stream, the tenant is ACTIVE, its
    // last run is still the provisioning one, and no timeline row holds either message.
    let events = mesh.stream(StreamKind::Events).await;
    assert!(
        events.iter().all(|(s, _)| s != &subject),
        "the refused message is not in the stream"
    );
    assert_eq!(
        status_of(&mesh, &victim.id).await,
        pb::TenantStatus::Active as i32
    );
    let mut prov = ProvisioningServiceClient::with_interceptor(
        mesh.proc(Part::Provisioning).channel().await.expect("channel"),
        Bearer(Some(mesh.operator.clone())),
    );
    let run = prov
        .get_status(pb::GetProvisioningStatusRequest {
            tenant_id: victim.id.clone(),
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(run.kind, "provision", "no delete run was started");
    let pool = mesh.pool_of(Part::Timeline).await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM timeline_events_g1 WHERE event_id::text = $1 OR event_id::text = $2",
    )
    .bind(forged.id.to_string())
    .bind(&spoof_id)
    .fetch_one(&pool)
    .await
    .expect("count");
    assert_eq!(rows, 0, "no timeline row for a forged message");
    mesh.cleanup().await;
}

#[tokio::test]
async fn tenant_audit_credentials_read_their_tenant_only() {
    let mesh = Mesh::builder().provisioning(&[]).timeline(&[]).start().await;
    let a = active_tenant(&mesh).await;
    let b = active_tenant(&mesh).await;
    let mut prov = ProvisioningServiceClient::with_interceptor(
        mesh.proc(Part::Provisioning).channel().await.expect("channel"),
        Bearer(Some(mesh.operator.clone())),
    );
    let issued = prov
        .issue_audit_credentials(pb::IssueAuditCredentialsRequest {
            tenant_id: a.id.clone(),
        })
        .await
        .expect("IssueAuditCredentials")
        .into_inner();
    let for_b = prov
        .issue_audit_credentials(pb::IssueAuditCredentialsRequest {
            tenant_id: b.id.clone(),
        })
        .await
        .expect("IssueAuditCredentials")
        .into_inner();
    let creds = Credentials::parse(&issued.creds).expect("a credentials file");
    let (client, mut errors) = watched(&creds).await;
    let js = async_nats::jetstream::new(client.clone());

    // Its own durable consumer yields A's records (provisioning's and the tenant service's).
    let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = js
        .get_consumer_from_stream(&issued.consumer, &issued.stream)
        .await
        .expect("its own consumer");
    let mut batch = consumer
        .fetch()
        .max_messages(10)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let first = tokio::time::timeout(LIMIT, batch.next())
        .await
        .expect("a record within the deadline")
        .expect("a record")
        .expect("a message");
    assert!(
        first
            .subject
            .as_str()
            .starts_with(subjects::audit_tenant(&mesh.bus.subject_prefix(), &a.id).trim_end_matches('>'))
    );
    let record: serde_json::Value = serde_json::from_slice(&first.payload).expect("json");
    assert_eq!(record["tenant"], a.id.as_str(), "{record}");
    first.ack().await.expect("ack");

    // Live records of A arrive; B's subject, B's consumer and any new consumer are refused.
    let mut live = client
        .subscribe(subjects::audit_tenant(&mesh.bus.subject_prefix(), &a.id))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");
    let other = subjects::audit_tenant(&mesh.bus.subject_prefix(), &b.id);
    let _tap = client.subscribe(other.clone()).await.expect("sent");
    client.flush().await.expect("flush");
    violation(&mut errors, &other).await;
    let b_next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", for_b.stream, for_b.consumer);
    let _ = client.publish(b_next.clone(), "1".into()).await;
    client.flush().await.expect("flush");
    violation(&mut errors, &b_next).await;
    let create = format!("$JS.API.CONSUMER.CREATE.{}", issued.stream);
    let _ = client.publish(create.clone(), "{}".into()).await;
    client.flush().await.expect("flush");
    violation(&mut errors, &create).await;

    // A fresh audit record of A (every tenant command is audited on its tenant) arrives live.
    mesh.tenants()
        .suspend_tenant(pb::SuspendTenantRequest {
            tenant: Some(pb::TenantRef {
                r#ref: Some(pb::tenant_ref::Ref::Id(a.id.clone())),
            }),
            reason: "audit drill".into(),
        })
        .await
        .expect("suspend");
    let m = tokio::time::timeout(LIMIT, live.next())
        .await
        .expect("a live record within the deadline")
        .expect("a message");
    let record: serde_json::Value = serde_json::from_slice(&m.payload).expect("json");
    assert_eq!(record["tenant"], a.id.as_str());

    // A suspended tenant gets no new credentials.
    eventually("suspension reaches provisioning", LIMIT, || {
        let mut prov = prov.clone();
        let id = a.id.clone();
        async move {
            let r = prov
                .issue_audit_credentials(pb::IssueAuditCredentialsRequest { tenant_id: id })
                .await;
            r.err()
                .filter(|s| s.code() == tonic::Code::PermissionDenied)
                .map(|_| ())
        }
    })
    .await;
    mesh.cleanup().await;
}
