//! Prometheus metrics shared by every service, with a cap on the tenant label.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder as _, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::error::Result;

/// How many distinct tenants get their own label value before the rest share [`OTHER_TENANT`].
pub const MAX_TENANT_LABELS: usize = 1000;
/// Label value standing for every tenant beyond the first [`MAX_TENANT_LABELS`].
pub const OTHER_TENANT: &str = "__other__";

const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The process' metrics registry with the metrics every service reports.
///
/// Cheap to clone; clones share the registry. Record tenant-labelled values through the helper
/// methods (or pass the tenant through [`Metrics::tenant_label`]) so the label stays bounded.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    tenants: Arc<Mutex<HashSet<String>>>,
    requests_total: IntCounterVec,
    request_duration_seconds: HistogramVec,
    rate_limit_hits_total: IntCounterVec,
    data_volume_bytes_total: IntCounterVec,
    queue_depth: IntGaugeVec,
    consumer_lag: IntGaugeVec,
    relay_lag_seconds: GaugeVec,
    dlq_messages_total: IntCounterVec,
    dependency_up: IntGaugeVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with the standard metrics registered.
    pub fn new() -> Result<Metrics> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let gauge = |name: &str, help: &str, label: &str| -> Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let requests_total = counter(
            "keel_requests_total",
            "Requests handled, by tenant, service, method and status code.",
            &["tenant", "service", "method", "code"],
        )?;
        let rate_limit_hits_total = counter(
            "keel_rate_limit_hits_total",
            "Requests refused by the per-tenant rate limit.",
            &["tenant"],
        )?;
        let data_volume_bytes_total = counter(
            "keel_data_volume_bytes_total",
            "Bytes of tenant data received (in) or sent (out).",
            &["tenant", "direction"],
        )?;
        let request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "keel_request_duration_seconds",
                "Request latency, by service and method.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["service", "method"],
        )?;
        registry.register(Box::new(request_duration_seconds.clone()))?;
        let queue_depth = gauge("keel_queue_depth", "Messages waiting in a queue.", "queue")?;
        let consumer_lag = gauge(
            "keel_consumer_lag",
            "Messages a consumer has yet to process.",
            "consumer",
        )?;
        let relay_lag_seconds = GaugeVec::new(
            Opts::new(
                "keel_relay_lag_seconds",
                "Age of the oldest committed row an outbox relay has not published yet (0: none waiting).",
            ),
            &["relay"],
        )?;
        registry.register(Box::new(relay_lag_seconds.clone()))?;
        let dlq_messages_total = counter(
            "keel_dlq_messages_total",
            "Messages a consumer or relay dead-lettered to KEEL_DLQ.",
            &["source"],
        )?;
        let dependency_up = gauge(
            "keel_dependency_up",
            "1 when the last readiness probe of a dependency succeeded, else 0.",
            "dependency",
        )?;
        Ok(Metrics {
            registry,
            tenants: Arc::default(),
            requests_total,
            request_duration_seconds,
            rate_limit_hits_total,
            data_volume_bytes_total,
            queue_depth,
            consumer_lag,
            relay_lag_seconds,
            dlq_messages_total,
            dependency_up,
        })
    }

    /// The registry, for metrics a service defines itself.
    pub fn registry(&self) -> &prometheus::Registry {
        &self.registry
    }

    /// `tenant` for the first [`MAX_TENANT_LABELS`] distinct tenants seen, then [`OTHER_TENANT`].
    pub fn tenant_label(&self, tenant: &str) -> String {
        let mut seen = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(tenant) {
            return tenant.to_owned();
        }
        if seen.len() < MAX_TENANT_LABELS {
            seen.insert(tenant.to_owned());
            return tenant.to_owned();
        }
        OTHER_TENANT.to_owned()
    }

    /// Counts one request and observes its latency.
    pub fn observe_request(&self, tenant: &str, service: &str, method: &str, code: &str, seconds: f64) {
        let tenant = self.tenant_label(tenant);
        self.requests_total
            .with_label_values(&[tenant.as_str(), service, method, code])
            .inc();
        self.request_duration_seconds
            .with_label_values(&[service, method])
            .observe(seconds);
    }

    /// Counts one request refused by the rate limit.
    pub fn rate_limit_hit(&self, tenant: &str) {
        let tenant = self.tenant_label(tenant);
        self.rate_limit_hits_total.with_label_values(&[tenant]).inc();
    }

    /// Adds `bytes` of tenant data moving in `direction` (`in` or `out`).
    pub fn data_volume(&self, tenant: &str, direction: &str, bytes: u64) {
        let tenant = self.tenant_label(tenant);
        self.data_volume_bytes_total
            .with_label_values(&[tenant.as_str(), direction])
            .inc_by(bytes);
    }

    /// `keel_requests_total{tenant,service,method,code}`; pass tenants through
    /// [`Metrics::tenant_label`].
    pub fn requests_total(&self) -> &IntCounterVec {
        &self.requests_total
    }
    /// `keel_request_duration_seconds{service,method}`.
    pub fn request_duration_seconds(&self) -> &HistogramVec {
        &self.request_duration_seconds
    }
    /// `keel_rate_limit_hits_total{tenant}`.
    pub fn rate_limit_hits_total(&self) -> &IntCounterVec {
        &self.rate_limit_hits_total
    }
    /// `keel_data_volume_bytes_total{tenant,direction}`.
    pub fn data_volume_bytes_total(&self) -> &IntCounterVec {
        &self.data_volume_bytes_total
    }
    /// `keel_queue_depth{queue}`.
    pub fn queue_depth(&self) -> &IntGaugeVec {
        &self.queue_depth
    }
    /// `keel_relay_lag_seconds{relay}`.
    pub fn relay_lag_seconds(&self) -> &GaugeVec {
        &self.relay_lag_seconds
    }

    /// `keel_dlq_messages_total{source}`.
    pub fn dlq_messages_total(&self) -> &IntCounterVec {
        &self.dlq_messages_total
    }

    /// `keel_consumer_lag{consumer}`.
    pub fn consumer_lag(&self) -> &IntGaugeVec {
        &self.consumer_lag
    }
    /// `keel_dependency_up{dependency}`.
    pub fn dependency_up(&self) -> &IntGaugeVec {
        &self.dependency_up
    }

    /// Every metric of the registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_label_is_capped() {
        let m = Metrics::new().unwrap();
        for i in 0..MAX_TENANT_LABELS {
            assert_eq!(m.tenant_label(&format!("t{i}")), format!("t{i}"));
        }
        assert_eq!(m.tenant_label("late"), OTHER_TENANT);
        assert_eq!(m.tenant_label("another"), OTHER_TENANT);
        // Tenants seen before the cap keep their label.
        assert_eq!(m.tenant_label("t0"), "t0");
        assert_eq!(m.tenant_label("t999"), "t999");
        // Clones share the set.
        assert_eq!(m.clone().tenant_label("later"), OTHER_TENANT);
    }

    #[test]
    fn renders_the_standard_metrics() {
        let m = Metrics::new().unwrap();
        m.observe_request("acme", "tenant", "CreateTenant", "OK", 0.012);
        m.rate_limit_hit("acme");
        m.data_volume("acme", "in", 512);
        m.queue_depth().with_label_values(&["relay"]).set(3);
        m.consumer_lag().with_label_values(&["timeline"]).set(7);
        m.dependency_up().with_label_values(&["redis"]).set(1);
        let text = m.render();
        for expected in [
            r#"keel_requests_total{code="OK",method="CreateTenant",service="tenant",tenant="acme"} 1"#,
            r#"keel_request_duration_seconds_count{method="CreateTenant",service="tenant"} 1"#,
            r#"keel_rate_limit_hits_total{tenant="acme"} 1"#,
            r#"keel_data_volume_bytes_total{direction="in",tenant="acme"} 512"#,
            r#"keel_queue_depth{queue="relay"} 3"#,
            r#"keel_consumer_lag{consumer="timeline"} 7"#,
            r#"keel_dependency_up{dependency="redis"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn services_register_their_own_metrics() {
        let m = Metrics::new().unwrap();
        let own = prometheus::IntCounter::new("keel_things_total", "Things.").unwrap();
        m.registry().register(Box::new(own.clone())).unwrap();
        own.inc();
        assert!(m.render().contains("keel_things_total 1"));
    }
}
