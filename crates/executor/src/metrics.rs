//! The pool manager's Prometheus metrics.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

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
pub(crate) struct PoolEnvLabels {
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

/// An environment's series (its pool of warm instances).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EnvLabels {
    pub(crate) namespace: String,
    pub(crate) environment: String,
}

/// A function's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FunctionLabels {
    pub(crate) namespace: String,
    pub(crate) function: String,
}

/// A cold start's phase: `take` (a warm instance from the pool), `start` (a new instance, when
/// the pool had none or the function needs its own) or `specialize` (code placed and loaded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PhaseLabels {
    pub(crate) namespace: String,
    pub(crate) function: String,
    pub(crate) phase: &'static str,
}

fn phase_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The instance gauges' current label sets, so series of removed functions and environments go.
#[derive(Debug, Default)]
struct Seen {
    envs: HashSet<EnvLabels>,
    functions: HashSet<FunctionLabels>,
}

#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// Specializations by outcome (`ok`, `failed`, `timeout`).
    pub(crate) specializations: Family<ResultLabels, Counter>,
    /// Seconds from taking an instance to its endpoint being in the index.
    pub(crate) specialize_seconds: Histogram,
    /// Warm generic instances ready, per environment.
    pub(crate) warm_instances: Family<EnvLabels, Gauge>,
    /// Specialized instances, per function.
    pub(crate) specialized_instances: Family<FunctionLabels, Gauge>,
    /// Specializations under way, per function.
    pub(crate) starting_instances: Family<FunctionLabels, Gauge>,
    /// Cold-start phases, per function.
    pub(crate) cold_start_phase_seconds: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    /// Instances that ended without being asked to.
    pub(crate) unexpected_exits: Counter,
    /// The pool size chosen per environment.
    pub(crate) pool_size: Family<PoolEnvLabels, Gauge>,
    /// 1 for the reason of each environment's pool size, 0 for the others.
    pub(crate) pool_reason: Family<EnvReasonLabels, Gauge>,
    /// Specializations that took from an environment's pool: `hit` or `miss` (a cold start).
    pub(crate) pool_takes: Family<TakeLabels, Counter>,
    /// The measured time to start a warm instance, per environment.
    pub(crate) pool_refill_seconds: Family<PoolEnvLabels, Gauge<f64, AtomicU64>>,
    /// The keep-alive chosen per function of an adaptive environment.
    pub(crate) keepalive_seconds: Family<FnLabels, Gauge>,
    /// 1 for the reason of each function's keep-alive, 0 for the others.
    pub(crate) keepalive_reason: Family<FnReasonLabels, Gauge>,
    seen: Arc<Mutex<Seen>>,
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            specializations: Family::default(),
            specialize_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            warm_instances: Family::default(),
            specialized_instances: Family::default(),
            starting_instances: Family::default(),
            cold_start_phase_seconds: Family::new_with_constructor(phase_histogram),
            unexpected_exits: Counter::default(),
            pool_size: Family::default(),
            pool_reason: Family::default(),
            pool_takes: Family::default(),
            pool_refill_seconds: Family::default(),
            keepalive_seconds: Family::default(),
            keepalive_reason: Family::default(),
            seen: Arc::default(),
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
            "Warm generic instances ready, by environment",
            m.warm_instances.clone(),
        );
        r.register(
            "specialized_instances",
            "Specialized instances, by function",
            m.specialized_instances.clone(),
        );
        r.register(
            "starting_instances",
            "Specializations under way, by function",
            m.starting_instances.clone(),
        );
        r.register(
            "cold_start_phase_seconds",
            "Time of each phase of a cold start (take, start, specialize), by function",
            m.cold_start_phase_seconds.clone(),
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

    /// Sets the instance gauges to these counts and removes the series of environments and
    /// functions no longer listed.
    pub(crate) fn set_instances(
        &self,
        warm: Vec<(EnvLabels, i64)>,
        functions: Vec<(FunctionLabels, i64, i64)>,
    ) {
        let mut seen = match self.seen.lock() {
            Ok(seen) => seen,
            Err(poisoned) => poisoned.into_inner(),
        };
        let envs: HashSet<EnvLabels> = warm.iter().map(|(l, _)| l.clone()).collect();
        for gone in seen.envs.difference(&envs) {
            self.warm_instances.remove(gone);
        }
        for (labels, n) in warm {
            self.warm_instances.get_or_create(&labels).set(n);
        }
        let fns: HashSet<FunctionLabels> = functions.iter().map(|(l, _, _)| l.clone()).collect();
        for gone in seen.functions.difference(&fns) {
            self.specialized_instances.remove(gone);
            self.starting_instances.remove(gone);
        }
        for (labels, specialized, starting) in functions {
            self.specialized_instances
                .get_or_create(&labels)
                .set(specialized);
            self.starting_instances.get_or_create(&labels).set(starting);
        }
        seen.envs = envs;
        seen.functions = fns;
    }

    /// Records one cold-start phase of `function`.
    pub(crate) fn phase(&self, function: &kappa_core::FunctionId, phase: &'static str, secs: f64) {
        self.cold_start_phase_seconds
            .get_or_create(&PhaseLabels {
                namespace: function.namespace.to_string(),
                function: function.name.to_string(),
                phase,
            })
            .observe(secs);
    }
}
