//! The API server's Prometheus metrics: requests by method, route and status code, and their
//! duration.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// Labels of `kappa_api_requests_total`. Every value comes from a bounded set (known methods,
/// route templates, status codes) so the number of series stays small.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    code: String,
}

/// Labels of `kappa_api_request_duration_seconds`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    method: String,
    route: String,
}

/// Labels of `kappa_api_async_accepted_total` (functions that exist: bounded).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FunctionLabels {
    namespace: String,
    function: String,
}

fn duration_histogram() -> Histogram {
    // 0.5 ms .. ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The API server's metrics and the registry that serves them on `/metrics`.
pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<DurationLabels, Histogram, fn() -> Histogram>,
    async_accepted: Family<FunctionLabels, Counter>,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

impl Default for ApiMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ApiMetrics {
    /// The API metrics in a registry of their own.
    pub fn new() -> Self {
        Self::with_registry(Registry::default())
    }

    /// The API metrics added to `registry`, which `/metrics` then serves whole (so a caller can
    /// register more metrics in it first).
    pub fn with_registry(mut registry: Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "kappa_api_requests",
            "HTTP requests answered by the API server",
            requests.clone(),
        );
        let duration = Family::<DurationLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "kappa_api_request_duration",
            "Time from a request's arrival to its response headers",
            Unit::Seconds,
            duration.clone(),
        );
        let async_accepted = Family::<FunctionLabels, Counter>::default();
        registry.register(
            "kappa_api_async_accepted",
            "Asynchronous invocations accepted through the API (stored and answered 202), by function",
            async_accepted.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            async_accepted,
        }
    }

    /// Records one answered request.
    pub fn observe(&self, method: &str, route: &str, code: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: route.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.duration
            .get_or_create(&DurationLabels {
                method: method.to_string(),
                route: route.to_string(),
            })
            .observe(seconds);
    }

    /// Counts one asynchronous invocation of `namespace/function` accepted through the API.
    pub fn async_accepted(&self, namespace: &str, function: &str) {
        self.async_accepted
            .get_or_create(&FunctionLabels {
                namespace: namespace.to_string(),
                function: function.to_string(),
            })
            .inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoding error would only cut the output.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests() {
        let m = ApiMetrics::new();
        m.observe("GET", "/v1/functions", 200, 0.001);
        m.observe("GET", "/v1/functions", 200, 0.002);
        let text = m.encode();
        assert!(
            text.contains(
                r#"kappa_api_requests_total{method="GET",route="/v1/functions",code="200"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains("kappa_api_request_duration_seconds_bucket"),
            "{text}"
        );
    }
}
