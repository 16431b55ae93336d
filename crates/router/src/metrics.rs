//! The router's Prometheus metrics, in a registry the router owns.
//!
//! Per-function handles are cached in the route table's function entries ([`FunctionMetrics`])
//! so the request path increments an atomic instead of hashing a label set.

use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `kappa_router_requests_total`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub namespace: Arc<str>,
    pub function: Arc<str>,
    pub code: u16,
}

/// Labels of per-function series without a status code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FunctionLabels {
    pub namespace: Arc<str>,
    pub function: Arc<str>,
}

/// Every metric the router exports.
pub(crate) struct Metrics {
    /// Encoding takes `&Registry`; the registry is only written at construction.
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub cold_starts: Family<FunctionLabels, Counter>,
    pub duration: Histogram,
    pub queue_rejections: Counter,
    pub inflight: Gauge,
    /// Requests and failures per function (and kept version), read by the canary controller.
    pub outcomes: Arc<kappa_core::Outcomes>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let cold_starts = Family::<FunctionLabels, Counter>::default();
        // 50 µs .. ~105 s, doubling.
        let duration = Histogram::new(exponential_buckets(0.00005, 2.0, 22));
        let queue_rejections = Counter::default();
        let inflight = Gauge::default();
        registry.register(
            "kappa_router_requests",
            "Requests answered by the router, by function and status code",
            requests.clone(),
        );
        registry.register(
            "kappa_router_request_duration_seconds",
            "Time from receiving a request to sending its response head",
            duration.clone(),
        );
        registry.register(
            "kappa_router_cold_starts",
            "Requests that had to ask the pool manager for capacity",
            cold_starts.clone(),
        );
        registry.register(
            "kappa_router_queue_rejections",
            "Requests refused because their function's wait queue was full",
            queue_rejections.clone(),
        );
        registry.register(
            "kappa_router_inflight",
            "Requests being served",
            inflight.clone(),
        );
        Self {
            registry,
            requests,
            cold_starts,
            duration,
            queue_rejections,
            inflight,
            outcomes: Arc::new(kappa_core::Outcomes::new()),
        }
    }

    /// The registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a `String` cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a request that matched no function (404/405 before any function was chosen).
    pub fn count_unrouted(&self, code: u16) {
        static NONE: OnceLock<Arc<str>> = OnceLock::new();
        let none = NONE.get_or_init(|| Arc::from(""));
        self.requests
            .get_or_create(&RequestLabels {
                namespace: Arc::clone(none),
                function: Arc::clone(none),
                code,
            })
            .inc();
    }
}

/// Cached metric handles of one function.
pub(crate) struct FunctionMetrics {
    namespace: Arc<str>,
    function: Arc<str>,
    /// The `code="200"` series, by far the most frequent: created on first use.
    ok: OnceLock<Counter>,
    cold: OnceLock<Counter>,
    /// This function's outcome counters (canaries), resolved on first use.
    outcome: OnceLock<Arc<kappa_core::Outcome>>,
}

impl FunctionMetrics {
    pub fn new(namespace: &str, function: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
            function: Arc::from(function),
            ok: OnceLock::new(),
            cold: OnceLock::new(),
            outcome: OnceLock::new(),
        }
    }

    fn labels(&self, code: u16) -> RequestLabels {
        RequestLabels {
            namespace: Arc::clone(&self.namespace),
            function: Arc::clone(&self.function),
            code,
        }
    }

    /// Counts one answered request with status `code`.
    pub fn count(&self, metrics: &Metrics, code: u16) {
        self.outcome
            .get_or_init(|| {
                metrics.outcomes.entry(&kappa_core::FunctionId::new(
                    &*self.namespace,
                    &*self.function,
                ))
            })
            .record(code);
        if code == 200 {
            self.ok
                .get_or_init(|| metrics.requests.get_or_create(&self.labels(200)).clone())
                .inc();
        } else {
            metrics.requests.get_or_create(&self.labels(code)).inc();
        }
    }

    /// Counts one request that had to provision.
    pub fn count_cold_start(&self, metrics: &Metrics) {
        self.cold
            .get_or_init(|| {
                metrics
                    .cold_starts
                    .get_or_create(&FunctionLabels {
                        namespace: Arc::clone(&self.namespace),
                        function: Arc::clone(&self.function),
                    })
                    .clone()
            })
            .inc();
    }
}

/// Keeps `kappa_router_inflight` raised while alive.
pub(crate) struct InflightGuard(Gauge);

impl InflightGuard {
    pub fn new(metrics: &Metrics) -> Self {
        metrics.inflight.inc();
        Self(metrics.inflight.clone())
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
