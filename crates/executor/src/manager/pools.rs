//! Warm pools: one per environment at its generation and planned size (the pool half of the
//! reconcile pass), starting a generic instance for an environment, and taking one on a miss.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use kappa_core::{FunctionId, Instance, InstanceSpec};
use kappa_types::{Environment, Resources};
use tokio::time::Instant;

use super::adaptive::PoolDecision;
use super::reconcile::Actions;
use super::{Owner, Pool, PoolManager, State, generation_of, limits_of, new_instance_id};
use crate::cache::Snapshot;

impl PoolManager {
    pub(super) fn instance_spec(
        &self,
        env_id: &FunctionId,
        env: &Environment,
        resources: &Resources,
    ) -> InstanceSpec {
        let mut labels = BTreeMap::new();
        labels.insert("environmentName".to_string(), env_id.name.clone());
        labels.insert("environmentNamespace".to_string(), env_id.namespace.clone());
        InstanceSpec {
            id: new_instance_id(env_id),
            environment: env_id.clone(),
            env_generation: generation_of(&env.metadata),
            image: env.spec.runtime.image.clone(),
            command: env.spec.runtime.command.clone(),
            limits: limits_of(resources, self.inner.config.default_pids_limit),
            grace: Duration::from_secs(env.spec.termination_grace_period),
            concurrency: self.inner.config.runtime_concurrency,
            env: BTreeMap::new(),
            labels,
            egress: env.spec.egress.unwrap_or(true),
            host_ports: env.spec.host_ports.clone(),
            zygote: env.spec.zygote,
        }
    }

    pub(super) async fn start_warm(&self, env_id: FunctionId, env: Arc<Environment>) {
        let spec = self.instance_spec(&env_id, &env, &env.spec.resources);
        let generation = spec.env_generation;
        let started = Instant::now();
        let result = self.inner.backend.create(spec).await;
        if let Ok(instance) = &result {
            self.note_started(&env_id, started.elapsed());
            // Off the request path: what its specialization and first request will need.
            self.inner.backend.prepare(instance).await;
        }
        let shutting_down = self.inner.shutdown.is_cancelled();
        let discard = {
            let mut guard = self.state();
            let State {
                pools,
                owners,
                total,
                ..
            } = &mut *guard;
            let pool = pools.get_mut(&env_id);
            match result {
                Ok(instance) => {
                    let id = instance.id.clone();
                    let keep =
                        !shutting_down && pool.as_ref().is_some_and(|p| p.generation == generation);
                    if let Some(pool) = pool {
                        pool.starting = pool.starting.saturating_sub(1);
                        pool.failures = 0;
                        pool.last_error = None;
                        if keep {
                            owners.insert(instance.id.clone(), Owner::Pool(env_id.clone()));
                            tracing::debug!(environment = %env_id, instance = %instance.id, "warm instance ready");
                            pool.warm.push_back(instance);
                        }
                    }
                    if keep {
                        None
                    } else {
                        *total = total.saturating_sub(1);
                        Some(id)
                    }
                }
                Err(e) => {
                    *total = total.saturating_sub(1);
                    if let Some(pool) = pool {
                        pool.starting = pool.starting.saturating_sub(1);
                        pool.failures += 1;
                        let backoff = self
                            .inner
                            .config
                            .start_backoff
                            .saturating_mul(1 << pool.failures.min(10))
                            .min(self.inner.config.max_start_backoff);
                        pool.retry_at = Some(Instant::now() + backoff);
                        pool.last_error = Some(e.to_string());
                        tracing::warn!(environment = %env_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "warm instance failed to start");
                    }
                    None
                }
            }
        };
        self.update_gauges();
        if let Some(id) = discard {
            let _ = self.inner.backend.delete(&id, Duration::ZERO).await;
        }
    }

    /// Takes a warm instance of the environment's pool if one is ready.
    pub(super) fn take_warm(
        &self,
        env_id: &FunctionId,
        env_generation: i64,
        fid: &FunctionId,
    ) -> Option<Instance> {
        let mut st = self.state();
        let pool = st.pools.get_mut(env_id)?;
        if pool.generation != env_generation {
            return None;
        }
        let instance = pool.warm.pop_front()?;
        st.owners
            .insert(instance.id.clone(), Owner::Specializing(fid.clone()));
        Some(instance)
    }

    /// Pools: one per environment, at its generation and the size the plan gives.
    pub(super) fn reconcile_pools(
        &self,
        st: &mut State,
        snapshot: &Snapshot,
        plan: &HashMap<FunctionId, PoolDecision>,
        isolation: &Option<String>,
        now: Instant,
        actions: &mut Actions,
    ) {
        // Pools: one per environment, at its generation and size.
        st.pools.retain(|id, pool| {
            if snapshot.environments.contains_key(id) {
                return true;
            }
            for i in pool.warm.drain(..) {
                actions.to_delete.push((i.id, Duration::ZERO));
            }
            actions.removed_envs.push(id.clone());
            false
        });
        for (id, env) in &snapshot.environments {
            if let Some(isolation) = &isolation
                && env.status.get("isolation").and_then(|v| v.as_str()) != Some(isolation)
            {
                actions.to_mark.push((id.clone(), env.status.clone()));
            }
            let generation = generation_of(&env.metadata);
            let pool = st.pools.entry(id.clone()).or_insert_with(|| Pool {
                generation,
                warm: VecDeque::new(),
                starting: 0,
                failures: 0,
                retry_at: None,
                last_error: None,
            });
            if pool.generation != generation {
                // Roll: warm instances of the old spec go; specialized ones drain below.
                for i in pool.warm.drain(..) {
                    actions.to_delete.push((i.id, Duration::ZERO));
                }
                pool.generation = generation;
                pool.failures = 0;
                pool.retry_at = None;
            }
            let size = plan.get(id).map_or(env.spec.poolsize, |d| d.size) as usize;
            while pool.warm.len() > size {
                if let Some(i) = pool.warm.pop_back() {
                    actions.to_delete.push((i.id, Duration::ZERO));
                }
            }
            if pool.retry_at.is_some_and(|t| t > now) {
                continue;
            }
            let have = pool.warm.len() + pool.starting;
            let want = size;
            for _ in have..want {
                if st.total >= self.inner.config.max_instances {
                    break;
                }
                pool.starting += 1;
                st.total += 1;
                actions.to_start.push((id.clone(), Arc::clone(env)));
            }
        }
        for (id, _) in &actions.to_delete {
            if st.owners.remove(id).is_some() {
                st.total = st.total.saturating_sub(1);
            }
        }
    }
}
