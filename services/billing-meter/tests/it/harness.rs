use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use keel_bus::Outgoing;
use keel_e2e::Bearer;
use keel_e2e::mesh::{Mesh as E2e, Part};
use keel_proto::v1 as pb;
use keel_proto::v1::meter_service_client::MeterServiceClient;
use tonic::codegen::InterceptedService;
use tonic::transport::Channel;

pub type Meters = MeterServiceClient<InterceptedService<Channel, Bearer>>;

pub struct World {
    pub e2e: E2e,
}

/// Settings that let a test see windows close at once.
pub const FAST: &[(&str, &str)] = &[
    ("KEEL_BILLING_WINDOW_GRACE_SECS", "0"),
    ("KEEL_BILLING_AGGREGATE_EVERY_MS", "100"),
];

impl World {
    pub async fn start(env: &[(&str, &str)]) -> World {
        World {
            e2e: E2e::builder().billing(env).start().await,
        }
    }

    /// With provisioning too, so tenants become ACTIVE.
    pub async fn start_provisioned(env: &[(&str, &str)]) -> World {
        World {
            e2e: E2e::builder().provisioning(&[]).billing(env).start().await,
        }
    }

    pub async fn meters_as(&self, token: &str) -> Meters {
        let channel = self
            .e2e
            .proc(Part::Billing)
            .channel()
            .await
            .expect("billing channel");
        MeterServiceClient::with_interceptor(channel, Bearer(Some(token.to_owned())))
    }

    pub async fn meters(&self) -> Meters {
        self.meters_as(&self.e2e.operator).await
    }

    /// A tenant (in the tenant service) and a token of its own with `scopes`.
    pub async fn tenant(&self, scopes: &[&str]) -> (pb::Tenant, String) {
        let slug = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let t = self.e2e.create_tenant(&slug, pb::Tier::Low).await;
        let created = self
            .e2e
            .tokens()
            .create_service_account(pb::CreateServiceAccountRequest {
                tenant: Some(pb::TenantRef {
                    r#ref: Some(pb::tenant_ref::Ref::Id(t.id.clone())),
                }),
                name: "meter".into(),
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            })
            .await
            .expect("service account")
            .into_inner();
        let token = self
            .e2e
            .tokens()
            .exchange_api_key(pb::ExchangeApiKeyRequest {
                api_key: created.api_key,
                scopes: vec![],
            })
            .await
            .expect("exchange")
            .into_inner()
            .token;
        (t, token)
    }

    /// Publishes `e` on `keel.usage.<tenant>` as a CloudEvent, with its own message id (so that
    /// JetStream's own dedupe does not hide a repeat from the service).
    pub async fn publish(&self, e: &pb::UsageEvent, msg_id: &str) {
        let time = e.time.as_ref().map(|t| {
            DateTime::from_timestamp(t.seconds, t.nanos as u32)
                .unwrap()
                .to_rfc3339()
        });
        let body = serde_json::json!({
            "specversion": "1.0", "id": e.id, "source": e.source, "type": "keel.usage.v1",
            "time": time, "tenantid": e.tenant_id,
            "data": {"meter": e.meter, "value": e.value, "properties": e.properties},
        });
        self.e2e
            .bus
            .publish_acked(Outgoing {
                subject: keel_events::subjects::usage(&self.e2e.bus.subject_prefix(), &e.tenant_id),
                payload: Bytes::from(body.to_string()),
                msg_id: msg_id.to_owned(),
                traceparent: None,
                headers: vec![],
            })
            .await
            .expect("publish usage");
    }

    /// `meter`'s usage by `tenant` in the hour window around `at`, as the operator.
    pub async fn usage(
        &self,
        tenant: &str,
        meter: &str,
        around: DateTime<Utc>,
        as_of: Option<DateTime<Utc>>,
    ) -> Vec<pb::UsageBucket> {
        self.meters()
            .await
            .get_usage(pb::GetUsageRequest {
                tenant_id: tenant.into(),
                meter: meter.into(),
                from: Some(ts(around - chrono::Duration::days(1))),
                to: Some(ts(around + chrono::Duration::days(1))),
                granularity: pb::Granularity::Hour as i32,
                as_recorded_at: as_of.map(ts),
            })
            .await
            .expect("GetUsage")
            .into_inner()
            .buckets
    }

    /// Billing's own stored events of `event_type` for `tenant`, as (aggregate id, payload).
    pub async fn records(&self, tenant: &str, event_type: &str) -> Vec<(String, serde_json::Value)> {
        sqlx::query_as(&format!(
            "SELECT aggregate_id, payload FROM {}.events WHERE tenant_id = $1 AND event_type = $2 ORDER BY global_position",
            self.e2e.schema(Part::Billing)
        ))
        .bind(tenant)
        .bind(event_type)
        .fetch_all(&self.e2e.pool)
        .await
        .unwrap()
    }

    pub async fn cleanup(self) {
        self.e2e.cleanup().await;
    }
}

pub fn ts(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

pub fn event(tenant: &str, id: &str, meter: &str, value: &str, at: DateTime<Utc>) -> pb::UsageEvent {
    pb::UsageEvent {
        id: id.into(),
        source: "test/collector".into(),
        r#type: String::new(),
        subject: String::new(),
        time: Some(ts(at)),
        tenant_id: tenant.into(),
        meter: meter.into(),
        value: value.into(),
        properties: Default::default(),
    }
}

pub const DEADLINE: Duration = Duration::from_secs(30);

/// The sum of the buckets' values and events.
pub fn total(buckets: &[pb::UsageBucket]) -> (String, u64) {
    use std::str::FromStr;
    let sum: rust_decimal::Decimal = buckets
        .iter()
        .map(|b| rust_decimal::Decimal::from_str(&b.value).unwrap())
        .sum();
    (
        sum.normalize().to_string(),
        buckets.iter().map(|b| b.events).sum(),
    )
}
