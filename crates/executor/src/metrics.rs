//! The pool manager's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// Specializations by outcome (`ok`, `failed`, `timeout`).
    pub(crate) specializations: Family<ResultLabels, Counter>,
    /// Seconds from taking an instance to its endpoint being in the index.
    pub(crate) specialize_seconds: Histogram,
    /// Warm generic instances ready in all pools.
    pub(crate) warm_instances: Gauge,
    /// Specialized instances.
    pub(crate) specialized_instances: Gauge,
    /// Instances that ended without being asked to.
    pub(crate) unexpected_exits: Counter,
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            specializations: Family::default(),
            specialize_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            warm_instances: Gauge::default(),
            specialized_instances: Gauge::default(),
            unexpected_exits: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("kappa_executor");
        r.register(
            "specializations",
            "Specializations by outcome",
            m.specializations.clone(),
        );
        r.register(
            "specialize_seconds",
            "Time to specialize an instance",
            m.specialize_seconds.clone(),
        );
        r.register(
            "warm_instances",
            "Warm generic instances ready",
            m.warm_instances.clone(),
        );
        r.register(
            "specialized_instances",
            "Specialized instances",
            m.specialized_instances.clone(),
        );
        r.register(
            "unexpected_exits",
            "Instances that ended without being deleted",
            m.unexpected_exits.clone(),
        );
        m
    }
}
