//! The reconcile pass: warm pools at their environment's generation and size, function instances
//! rolled, drained and reaped (idle beyond `minScale`), `minScale` kept ready.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use kappa_core::FunctionId;
use kappa_store::Precondition;
use kappa_types::{Environment, Function, Kind};
use tokio::time::Instant;

use super::{FnInstance, Pool, PoolManager, config_versions, generation_of};

impl PoolManager {
    pub(super) async fn reconcile(&self) {
        let snapshot = self.inner.cache.snapshot();
        if !snapshot.loaded || self.inner.shutdown.is_cancelled() {
            return;
        }
        let mut to_delete: Vec<(String, Duration)> = Vec::new();
        let mut to_start: Vec<(FunctionId, Arc<Environment>)> = Vec::new();
        let mut to_specialize: Vec<(FunctionId, Arc<Function>)> = Vec::new();
        let mut to_unindex: Vec<(FunctionId, String)> = Vec::new();
        // Environments whose `status.isolation` does not say what the backend gives.
        let mut to_mark: Vec<(FunctionId, serde_json::Value)> = Vec::new();
        let isolation = self.inner.backend.isolation();
        let now = Instant::now();
        let since_start = self.since_start();
        {
            let mut guard = self.state();
            let st = &mut *guard;
            let plan = self.plan_pools(st, &snapshot, since_start);
            // Pools: one per environment, at its generation and size.
            st.pools.retain(|id, pool| {
                if snapshot.environments.contains_key(id) {
                    return true;
                }
                for i in pool.warm.drain(..) {
                    to_delete.push((i.id, Duration::ZERO));
                }
                false
            });
            for (id, env) in &snapshot.environments {
                if let Some(isolation) = &isolation
                    && env.status.get("isolation").and_then(|v| v.as_str()) != Some(isolation)
                {
                    to_mark.push((id.clone(), env.status.clone()));
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
                        to_delete.push((i.id, Duration::ZERO));
                    }
                    pool.generation = generation;
                    pool.failures = 0;
                    pool.retry_at = None;
                }
                let size = plan.get(id).map_or(env.spec.poolsize, |d| d.size) as usize;
                while pool.warm.len() > size {
                    if let Some(i) = pool.warm.pop_back() {
                        to_delete.push((i.id, Duration::ZERO));
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
                    to_start.push((id.clone(), Arc::clone(env)));
                }
            }
            for (id, _) in &to_delete {
                if st.owners.remove(id).is_some() {
                    st.total = st.total.saturating_sub(1);
                }
            }

            // Functions: roll, reap, drain, keep minScale.
            let function_ids: Vec<FunctionId> = st
                .functions
                .keys()
                .cloned()
                .chain(snapshot.functions.keys().cloned())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            for fid in function_ids {
                let function = snapshot.functions.get(&fid);
                let fs = st.functions.entry(fid.clone()).or_default();
                if let Some(f) = function {
                    let seen = config_versions(&snapshot, f);
                    if fs
                        .config_seen
                        .as_ref()
                        .is_some_and(|before| *before != seen)
                    {
                        fs.failure = None;
                    }
                    fs.config_seen = Some(seen);
                }
                let current_gen = function.map(|f| generation_of(&f.metadata));
                let env_gen = function.and_then(|f| {
                    let env_id =
                        FunctionId::new(&f.spec.environment.namespace, &f.spec.environment.name);
                    snapshot
                        .environments
                        .get(&env_id)
                        .map(|e| generation_of(&e.metadata))
                });
                let min_scale = function.map_or(0, |f| f.spec.min_scale as usize);
                let idle =
                    self.keep_alive_of(&mut st.demand, &fid, function, &fs.instances, since_start);
                let drain_for = function.map_or(Duration::from_secs(60), |f| {
                    Duration::from_secs(f.spec.function_timeout)
                }) + self.inner.config.drain_slack;
                let grace = Duration::from_secs(5);

                // Mark stale instances draining: old function or environment generation, or
                // outdated secrets and config maps. Draining at once (before a replacement is
                // ready) means no new request reaches old code or old values; the next request
                // specializes a replacement.
                let mut active: Vec<(&String, &mut FnInstance)> = Vec::new();
                for (iid, inst) in fs.instances.iter_mut() {
                    let old_generation = current_gen != Some(inst.endpoint.generation)
                        || env_gen.is_some_and(|g| g != inst.env_generation);
                    let outdated = inst
                        .config
                        .iter()
                        .find(|(config, read)| snapshot.config_outdated(config, *read));
                    if (old_generation || outdated.is_some()) && inst.drain_deadline.is_none() {
                        inst.endpoint.mark_draining();
                        inst.drain_deadline = Some(now + drain_for);
                        match outdated {
                            Some(((kind, config), _)) if !old_generation => {
                                tracing::info!(function = %fid, instance = %iid, %kind, config = %config, "draining instance specialized with an outdated secret or config map");
                            }
                            _ => {
                                tracing::info!(function = %fid, instance = %iid, "draining instance of an old generation");
                            }
                        }
                    }
                    if inst.drain_deadline.is_none() {
                        active.push((iid, inst));
                    }
                }
                // Reap idle instances beyond minScale, the longest idle first.
                active.sort_by_key(|(_, i)| std::cmp::Reverse(i.endpoint.idle_for()));
                let mut keep = active.len();
                for (iid, inst) in active {
                    if keep <= min_scale {
                        break;
                    }
                    if inst.endpoint.in_flight() == 0 && inst.endpoint.idle_for() >= idle {
                        inst.endpoint.mark_draining();
                        inst.drain_deadline = Some(now + drain_for);
                        keep -= 1;
                        tracing::info!(function = %fid, instance = %iid, idle_s = idle.as_secs(), "reaping idle instance");
                    }
                }
                // Delete drained instances.
                let done: Vec<String> = fs
                    .instances
                    .iter()
                    .filter(|(_, i)| {
                        i.drain_deadline
                            .is_some_and(|deadline| i.endpoint.in_flight() == 0 || deadline <= now)
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                for iid in done {
                    fs.instances.remove(&iid);
                    to_unindex.push((fid.clone(), iid.clone()));
                    to_delete.push((iid, grace));
                }
                // Keep minScale ready (a deployment keeps its own).
                if let (Some(f), Some(generation)) = (function, current_gen)
                    && !self.uses_deployments(f)
                {
                    let ready = fs
                        .instances
                        .values()
                        .filter(|i| {
                            i.drain_deadline.is_none() && i.endpoint.generation == generation
                        })
                        .count();
                    let starting = fs
                        .inflight
                        .iter()
                        .filter(|i| i.generation == generation)
                        .count();
                    let backing_off = fs
                        .failure
                        .as_ref()
                        .is_some_and(|f| f.generation == generation && f.until > now);
                    if !backing_off {
                        for _ in (ready + starting)..min_scale {
                            to_specialize.push((fid.clone(), Arc::clone(f)));
                        }
                    }
                }
                if function.is_none() && fs.instances.is_empty() && fs.inflight.is_empty() {
                    st.functions.remove(&fid);
                }
            }
            for (_, iid) in &to_unindex {
                if st.owners.remove(iid).is_some() {
                    st.total = st.total.saturating_sub(1);
                }
            }
            self.pool_statuses(st, &snapshot, &plan, since_start, &mut to_mark);
        }
        for (fid, iid) in to_unindex {
            self.inner.index.remove(&fid, &iid);
        }
        for (id, grace) in to_delete {
            let backend = Arc::clone(&self.inner.backend);
            tokio::spawn(async move {
                if let Err(e) = backend.delete(&id, grace).await {
                    tracing::debug!(instance = %id, error = %e, "delete failed");
                }
            });
        }
        for (env_id, env) in to_start {
            let this = self.clone();
            tokio::spawn(async move { this.start_warm(env_id, env).await });
        }
        {
            for (env_id, mut status) in to_mark {
                if !status.is_object() {
                    status = serde_json::json!({});
                }
                if let Some(isolation) = &isolation {
                    status["isolation"] = serde_json::Value::String(isolation.clone());
                }
                let store = Arc::clone(&self.inner.store);
                tokio::spawn(async move {
                    let written = store
                        .put_status(
                            Kind::Environment,
                            &env_id.namespace,
                            &env_id.name,
                            status,
                            Precondition::MustExist,
                        )
                        .await;
                    if let Err(e) = written {
                        tracing::debug!(environment = %env_id, error = %e, "could not record the environment's status");
                    }
                });
            }
        }
        self.reconcile_deployments(&snapshot);
        for (fid, function) in to_specialize {
            let generation = generation_of(&function.metadata);
            if let Some(done) = self.begin_specialization(&fid, function, generation, false) {
                drop(done);
            }
        }
        self.update_gauges();
    }
}
