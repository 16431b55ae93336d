//! The pool manager's hooks into the adaptive pool policy (`adaptive.rs`): what it records
//! (takes, warm starts, misses, what each pass sees of a function's instances) and what it
//! publishes (pool sizes and keep-alives in metrics and in `status.pool` of environments).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kappa_core::FunctionId;
use kappa_types::{Environment, Function};

use super::adaptive::{Demand, KeepAliveReason, PoolDecision, PoolReason};
use super::{FnInstance, PoolManager, State};
use crate::cache::Snapshot;
use crate::metrics::{EnvReasonLabels, FnLabels, FnReasonLabels, PoolEnvLabels, TakeLabels};

impl PoolManager {
    /// The policy's clock: time since this pool manager was made.
    pub(super) fn since_start(&self) -> Duration {
        self.inner.origin.elapsed()
    }

    /// A specialization took (`hit`) or found no (miss) warm instance of `env_id`.
    pub(super) fn note_take(&self, env_id: &FunctionId, env: &Environment, hit: bool) {
        let now = self.since_start();
        self.inner
            .metrics
            .pool_takes
            .get_or_create(&TakeLabels {
                environment: env_id.to_string(),
                result: if hit { "hit" } else { "miss" },
            })
            .inc();
        self.state().demand.take(
            env_id,
            env.spec.poolsize,
            now,
            hit,
            &self.inner.config.adaptive,
        );
    }

    /// A warm instance of `env_id` took `took` to start.
    pub(super) fn note_started(&self, env_id: &FunctionId, took: Duration) {
        let mut st = self.state();
        st.demand.started(env_id, took);
        if let Some(d) = st.demand.envs.get(env_id) {
            self.inner
                .metrics
                .pool_refill_seconds
                .get_or_create(&PoolEnvLabels {
                    environment: env_id.to_string(),
                })
                .set(d.refill(&self.inner.config.adaptive).as_secs_f64());
        }
    }

    /// A request of `function` found no instance (an arrival the idle gaps see exactly).
    pub(super) fn note_arrival(&self, function: &FunctionId) {
        let now = self.since_start();
        self.state().demand.arrival(function, now);
    }

    /// Sizes every pool for this pass and publishes the sizes.
    pub(super) fn plan_pools(
        &self,
        st: &mut State,
        snapshot: &Snapshot,
        now: Duration,
    ) -> HashMap<FunctionId, PoolDecision> {
        let config = &self.inner.config;
        let plan = st.demand.plan(
            now,
            &snapshot.environments,
            &snapshot.functions,
            config.pool_memory_budget,
            &config.adaptive,
        );
        let metrics = &self.inner.metrics;
        for (env_id, decision) in &plan {
            let environment = env_id.to_string();
            metrics
                .pool_size
                .get_or_create(&PoolEnvLabels {
                    environment: environment.clone(),
                })
                .set(i64::from(decision.size));
            for reason in PoolReason::ALL {
                metrics
                    .pool_reason
                    .get_or_create(&EnvReasonLabels {
                        environment: environment.clone(),
                        reason: reason.as_str(),
                    })
                    .set(i64::from(reason == decision.reason));
            }
        }
        for env_id in std::mem::take(&mut st.demand.gone_envs) {
            let environment = env_id.to_string();
            metrics.pool_size.remove(&PoolEnvLabels {
                environment: environment.clone(),
            });
            metrics.pool_refill_seconds.remove(&PoolEnvLabels {
                environment: environment.clone(),
            });
            for reason in PoolReason::ALL {
                metrics.pool_reason.remove(&EnvReasonLabels {
                    environment: environment.clone(),
                    reason: reason.as_str(),
                });
            }
        }
        for fid in std::mem::take(&mut st.demand.gone_functions) {
            metrics.keepalive_seconds.remove(&FnLabels {
                function: fid.to_string(),
            });
            for reason in KeepAliveReason::ALL {
                metrics.keepalive_reason.remove(&FnReasonLabels {
                    function: fid.to_string(),
                    reason: reason.as_str(),
                });
            }
        }
        plan
    }

    /// How long `fid`'s idle instances are kept: its `idletimeout`, or, in an adaptive
    /// environment, the keep-alive its idle gaps call for (published in metrics).
    pub(super) fn keep_alive_of(
        &self,
        demand: &mut Demand,
        fid: &FunctionId,
        function: Option<&Arc<Function>>,
        instances: &HashMap<String, FnInstance>,
        now: Duration,
    ) -> Duration {
        let configured =
            function.map_or(Duration::ZERO, |f| Duration::from_secs(f.spec.idletimeout));
        if !demand.functions.contains_key(fid) {
            return configured;
        }
        let env_id = function
            .map(|f| FunctionId::new(&f.spec.environment.namespace, &f.spec.environment.name));
        let active = instances.values().filter(|i| i.drain_deadline.is_none());
        let seen = active.fold(None, |seen: Option<(bool, Duration)>, i| {
            let busy = i.endpoint.in_flight() > 0;
            let idle = i.endpoint.idle_for();
            Some(match seen {
                None => (busy, idle),
                Some((b, d)) => (b || busy, d.min(idle)),
            })
        });
        let (keep, reason) = demand.keep_alive(
            fid,
            env_id.as_ref(),
            now,
            seen,
            configured,
            &self.inner.config.adaptive,
        );
        let metrics = &self.inner.metrics;
        let function = fid.to_string();
        metrics
            .keepalive_seconds
            .get_or_create(&FnLabels {
                function: function.clone(),
            })
            .set(keep.as_secs() as i64);
        for r in KeepAliveReason::ALL {
            metrics
                .keepalive_reason
                .get_or_create(&FnReasonLabels {
                    function: function.clone(),
                    reason: r.as_str(),
                })
                .set(i64::from(r == reason));
        }
        keep
    }

    /// Adds to `to_mark` (environments whose status is written this pass) those whose
    /// `status.pool` changed, and sets `pool` on every one written.
    pub(super) fn pool_statuses(
        &self,
        st: &mut State,
        snapshot: &Snapshot,
        plan: &HashMap<FunctionId, PoolDecision>,
        now: Duration,
        to_mark: &mut Vec<(FunctionId, serde_json::Value)>,
    ) {
        let config = &self.inner.config;
        for (env_id, decision) in plan {
            let Some(env) = snapshot.environments.get(env_id) else {
                continue;
            };
            let status = st.demand.status(
                env_id,
                env,
                decision,
                now,
                config.pool_memory_budget,
                &config.adaptive,
            );
            if st.demand.changed_status(env_id, status).is_some()
                && !to_mark.iter().any(|(id, _)| id == env_id)
            {
                to_mark.push((env_id.clone(), env.status.clone()));
            }
        }
        for (env_id, status) in to_mark.iter_mut() {
            if !status.is_object() {
                *status = serde_json::json!({});
            }
            if let Some(object) = status.as_object_mut() {
                match st.demand.written.get(env_id) {
                    Some(pool) if !pool.is_null() => {
                        object.insert("pool".into(), pool.clone());
                    }
                    _ => {
                        object.remove("pool");
                    }
                }
            }
        }
    }
}
