//! The pool manager's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EnvLabels {
    /// `namespace/name`.
    pub(crate) environment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EnvReasonLabels {
    pub(crate) environment: String,
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TakeLabels {
    pub(crate) environment: String,
    /// `hit` (a warm instance was ready) or `miss` (one had to be started).
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FnLabels {
    /// `namespace/name`.
    pub(crate) function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FnReasonLabels {
    pub(crate) function: String,
    pub(crate) reason: &'static str,
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
    /// The pool size chosen per environment.
    pub(crate) pool_size: Family<EnvLabels, Gauge>,
    /// 1 for the reason of each environment's pool size, 0 for the others.
    pub(crate) pool_reason: Family<EnvReasonLabels, Gauge>,
    /// Specializations that took from an environment's pool: `hit` or `miss` (a cold start).
    pub(crate) pool_takes: Family<TakeLabels, Counter>,
    /// The measured time to start a warm instance, per environment.
    pub(crate) pool_refill_seconds: Family<EnvLabels, Gauge<f64, AtomicU64>>,
    /// The keep-alive chosen per function of an adaptive environment.
    pub(crate) keepalive_seconds: Family<FnLabels, Gauge>,
    /// 1 for the reason of each function's keep-alive, 0 for the others.
    pub(crate) keepalive_reason: Family<FnReasonLabels, Gauge>,
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            specializations: Family::default(),
            specialize_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            warm_instances: Gauge::default(),
            specialized_instances: Gauge::default(),
            unexpected_exits: Counter::default(),
            pool_size: Family::default(),
            pool_reason: Family::default(),
            pool_takes: Family::default(),
            pool_refill_seconds: Family::default(),
            keepalive_seconds: Family::default(),
            keepalive_reason: Family::default(),
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
        r.register(
            "pool_size",
            "Warm pool size chosen per environment",
            m.pool_size.clone(),
        );
        r.register(
            "pool_size_reason",
            "Why each environment's pool has its size (1: the current reason)",
            m.pool_reason.clone(),
        );
        r.register(
            "pool_takes",
            "Specializations that took from a pool, by result (miss: an instance had to start)",
            m.pool_takes.clone(),
        );
        r.register(
            "pool_refill_seconds",
            "Measured time to start a warm instance",
            m.pool_refill_seconds.clone(),
        );
        r.register(
            "keepalive_seconds",
            "Keep-alive of idle specialized instances per function of an adaptive environment",
            m.keepalive_seconds.clone(),
        );
        r.register(
            "keepalive_reason",
            "Why each function has its keep-alive (1: the current reason)",
            m.keepalive_reason.clone(),
        );
        m
    }
}
