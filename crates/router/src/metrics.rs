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

/// Labels of the Fission-compatible series (Fission router's names and meanings): `path` is
/// the matched trigger's route (never the request path), `method` one of the standard methods
/// or `OTHER`, so the number of series stays bounded by the triggers.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FissionLabels {
    pub function_namespace: Arc<str>,
    pub function_name: Arc<str>,
    pub path: Arc<str>,
    pub method: &'static str,
    pub code: u16,
}

/// A request method as a bounded label value.
pub(crate) fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn seconds_buckets() -> impl Iterator<Item = f64> {
    // 50 µs .. ~105 s, doubling.
    exponential_buckets(0.00005, 2.0, 22)
}

fn new_seconds_histogram() -> Histogram {
    Histogram::new(seconds_buckets())
}

/// Every metric the router exports.
pub(crate) struct Metrics {
    /// Encoding takes `&Registry`; the registry is only written at construction.
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub cold_starts: Family<FunctionLabels, Counter>,
    pub duration: Histogram,
    /// Time to the response head per function (routed and invoked requests only).
    pub function_duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    /// Time a cold request spent being admitted (provisioning and queueing).
    pub cold_start_duration: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    /// Time a request waited in its function's queue for a free slot.
    pub queue_wait: Family<FunctionLabels, Histogram, fn() -> Histogram>,
    pub queue_rejections: Counter,
    pub inflight: Gauge,
    /// Asynchronous invocations stored (answered 202), by function.
    pub async_accepted: Family<FunctionLabels, Counter>,
    pub fission_calls: Family<FissionLabels, Counter>,
    pub fission_errors: Family<FissionLabels, Counter>,
    pub fission_duration: Family<FissionLabels, Histogram, fn() -> Histogram>,
    /// Requests and failures per function (and kept version), read by the canary controller.
    pub outcomes: Arc<kappa_core::Outcomes>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let cold_starts = Family::<FunctionLabels, Counter>::default();
        // 50 µs .. ~105 s, doubling.
        let duration = new_seconds_histogram();
        let function_duration: Family<FunctionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_seconds_histogram);
        let cold_start_duration: Family<FunctionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_seconds_histogram);
        let queue_wait: Family<FunctionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_seconds_histogram);
        let fission_calls = Family::<FissionLabels, Counter>::default();
        let fission_errors = Family::<FissionLabels, Counter>::default();
        let fission_duration: Family<FissionLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(new_seconds_histogram);
        let queue_rejections = Counter::default();
        let inflight = Gauge::default();
        let async_accepted = Family::<FunctionLabels, Counter>::default();
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
            "kappa_router_function_duration_seconds",
            "Time from receiving a request for a function to sending its response head, by function",
            function_duration.clone(),
        );
        registry.register(
            "kappa_router_cold_start_seconds",
            "Time requests that found no free instance spent being admitted (provisioning and queueing), by function",
            cold_start_duration.clone(),
        );
        registry.register(
            "kappa_router_queue_wait_seconds",
            "Time requests waited in their function's queue for a free slot, by function",
            queue_wait.clone(),
        );
        registry.register(
            "fission_function_calls",
            "Function calls (Fission-compatible: function_namespace, function_name, path, method, code)",
            fission_calls.clone(),
        );
        registry.register(
            "fission_function_errors",
            "Function calls answered with a status of 500 or more (Fission-compatible labels)",
            fission_errors.clone(),
        );
        registry.register(
            "fission_function_duration_seconds",
            "Time to a function call's response head (Fission-compatible labels)",
            fission_duration.clone(),
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
        registry.register(
            "kappa_router_async_accepted",
            "Asynchronous invocations accepted (stored and answered 202), by function",
            async_accepted.clone(),
        );
        Self {
            registry,
            requests,
            cold_starts,
            duration,
            function_duration,
            cold_start_duration,
            queue_wait,
            queue_rejections,
            inflight,
            async_accepted,
            fission_calls,
            fission_errors,
            fission_duration,
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
    duration: OnceLock<Histogram>,
    /// The Fission series of the first route, method and status 200 seen: the usual case.
    fission_ok: OnceLock<FissionHot>,
    /// This function's outcome counters (canaries), resolved on first use.
    outcome: OnceLock<Arc<kappa_core::Outcome>>,
}

struct FissionHot {
    path: Arc<str>,
    method: &'static str,
    calls: Counter,
    duration: Histogram,
}

impl FunctionMetrics {
    pub fn new(namespace: &str, function: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
            function: Arc::from(function),
            ok: OnceLock::new(),
            cold: OnceLock::new(),
            duration: OnceLock::new(),
            fission_ok: OnceLock::new(),
            outcome: OnceLock::new(),
        }
    }

    fn function_labels(&self) -> FunctionLabels {
        FunctionLabels {
            namespace: Arc::clone(&self.namespace),
            function: Arc::clone(&self.function),
        }
    }

    /// Records one answered request: status `code`, `seconds` to its response head, on
    /// `route` (`""` for direct invocations) with `method`.
    pub fn answered(
        &self,
        metrics: &Metrics,
        code: u16,
        seconds: f64,
        route: &Arc<str>,
        method: &'static str,
    ) {
        self.count(metrics, code);
        self.duration
            .get_or_init(|| {
                metrics
                    .function_duration
                    .get_or_create(&self.function_labels())
                    .clone()
            })
            .observe(seconds);
        let labels = || FissionLabels {
            function_namespace: Arc::clone(&self.namespace),
            function_name: Arc::clone(&self.function),
            path: Arc::clone(route),
            method,
            code,
        };
        if code == 200 {
            let hot = self.fission_ok.get_or_init(|| FissionHot {
                path: Arc::clone(route),
                method,
                calls: metrics.fission_calls.get_or_create(&labels()).clone(),
                duration: metrics.fission_duration.get_or_create(&labels()).clone(),
            });
            if Arc::ptr_eq(&hot.path, route) && hot.method == method {
                hot.calls.inc();
                hot.duration.observe(seconds);
                return;
            }
        }
        let labels = labels();
        metrics.fission_calls.get_or_create(&labels).inc();
        metrics
            .fission_duration
            .get_or_create(&labels)
            .observe(seconds);
        if code >= 500 {
            metrics.fission_errors.get_or_create(&labels).inc();
        }
    }

    /// Records the time a cold request took to be admitted.
    pub fn cold_start_seconds(&self, metrics: &Metrics, seconds: f64) {
        metrics
            .cold_start_duration
            .get_or_create(&self.function_labels())
            .observe(seconds);
    }

    /// Records the time a request waited in the function's queue.
    pub fn queue_wait_seconds(&self, metrics: &Metrics, seconds: f64) {
        metrics
            .queue_wait
            .get_or_create(&self.function_labels())
            .observe(seconds);
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

    /// Counts one accepted asynchronous invocation.
    pub fn count_async_accepted(&self, metrics: &Metrics) {
        metrics
            .async_accepted
            .get_or_create(&self.function_labels())
            .inc();
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
