//! A tenant service and a timeline indexer on one bus namespace (the shared test mesh), and
//! what the timeline's tests do with them.

use std::collections::HashMap;

use keel_bus::{Bus, StreamKind};
use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh as E2e, Part};
use keel_events::{Envelope, subjects};
use keel_proto::v1 as pb;
use keel_proto::v1::timeline_service_client::TimelineServiceClient;
use sqlx::PgPool;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

pub type Timeline = TimelineServiceClient<InterceptedService<Channel, Bearer>>;

pub struct Mesh {
    pub e2e: E2e,
    pub bus: Bus,
    /// A pool on the timeline's schema.
    pub pool: PgPool,
    pub operator: String,
}

impl Mesh {
    pub async fn start() -> Mesh {
        Self::start_with(&[]).await
    }

    /// [`Mesh::start`] with extra environment for the timeline.
    pub async fn start_with(env: &[(&str, &str)]) -> Mesh {
        let e2e = E2e::builder().timeline(env).start().await;
        Mesh {
            bus: e2e.bus.clone(),
            pool: e2e.pool_of(Part::Timeline).await,
            operator: e2e.operator.clone(),
            e2e,
        }
    }

    pub async fn restart_timeline(&mut self) {
        self.e2e.restart(Part::Timeline, None).await;
    }

    pub async fn restart_timeline_with(&mut self, env: HashMap<String, String>) {
        self.e2e.restart(Part::Timeline, Some(env)).await;
    }

    pub async fn timeline(&self, token: &str) -> Timeline {
        TimelineServiceClient::with_interceptor(
            self.e2e.proc(Part::Timeline).channel().await.unwrap(),
            Bearer(Some(token.to_owned())),
        )
    }

    pub async fn create_tenant(&self, slug: &str) -> pb::Tenant {
        self.e2e.create_tenant(slug, pb::Tier::Mid).await
    }

    /// A token for `tenant` with `timeline:read` (and tenant:read), minted by the operator.
    pub async fn reader(&self, tenant: &str) -> String {
        self.e2e
            .tokens()
            .issue_token(pb::IssueTokenRequest {
                tenant_id: tenant.into(),
                subject: "reader".into(),
                scopes: vec!["timeline:read".into(), "tenant:read".into()],
                ttl_seconds: 3600,
            })
            .await
            .unwrap()
            .into_inner()
            .token
    }

    /// Publishes a domain event as a producer service would (through JetStream, deduplicated).
    pub async fn publish(&self, e: &Envelope) {
        let subject = subjects::event(
            &self.bus.subject_prefix(),
            &e.tenantid,
            e.service(),
            e.event_name(),
        );
        self.bus
            .publish_envelope(subject, e)
            .await
            .unwrap()
            .await
            .unwrap();
    }

    pub async fn stream_len(&self, kind: StreamKind) -> u64 {
        self.e2e.stream_len(kind).await
    }

    pub async fn cleanup(self) {
        self.e2e.cleanup().await;
    }
}

pub fn envelope(
    tenant: &str,
    service: &str,
    event: &str,
    seq: u64,
    data: serde_json::Value,
    trace: Option<&str>,
) -> Envelope {
    Envelope::builder(service, event, 1)
        .tenant(tenant)
        .actor("service:test")
        .traceparent(trace.map(|t| format!("00-{t}-00f067aa0ba902b7-01")))
        .aggregate("run", format!("run-{tenant}"), seq)
        .data(data)
        .build()
        .unwrap()
}

pub fn slug() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

/// Starts a rebuild (or joins the running one) and waits until it ended.
pub async fn rebuild(tl: &Timeline) -> pb::RebuildJob {
    let job = tl
        .clone()
        .rebuild_projection(pb::RebuildProjectionRequest {})
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    finished(tl, &job.job_id).await
}

/// Waits until the rebuild job `id` ended.
pub async fn finished(tl: &Timeline, id: &str) -> pb::RebuildJob {
    keel_store::testing::eventually("the rebuild ended", std::time::Duration::from_secs(120), || {
        let mut tl = tl.clone();
        let id = id.to_owned();
        async move {
            let job = tl
                .get_rebuild(pb::GetRebuildRequest { job_id: id })
                .await
                .ok()?
                .into_inner();
            (job.state() != pb::RebuildState::Running).then_some(job)
        }
    })
    .await
}
