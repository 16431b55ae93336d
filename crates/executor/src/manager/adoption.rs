//! Adoption at start: a previous pool manager's instances put back where they belong.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use kappa_core::{Endpoint, FunctionId};
use tokio_util::sync::CancellationToken;

use super::{FnInstance, Owner, Pool, PoolManager, generation_of};

impl PoolManager {
    /// At start, once the cache has loaded the store: puts the instances the backend still has
    /// (a previous pool manager's, found by their labels) back where they belong instead of
    /// killing them. Warm ones of an environment's current generation go back into its pool (up
    /// to `poolsize`); specialized ones go back into the endpoint index with the generation they
    /// were specialized with, and the reconcile loop then drains those of an old generation as
    /// usual. Instances of an unknown environment or function, or of an old environment
    /// generation while warm, are deleted. Instances without Kappa's role label are left alone.
    ///
    /// The Kubernetes pod backend labels its pods with these keys (`kappa_kube::pods`); the
    /// local backend lists nothing at start (it kills a previous run's orphans), so locally
    /// this adopts nothing.
    pub(super) async fn adopt_existing(&self, shutdown: &CancellationToken) {
        const ROLE: &str = "kappa.dev/role";
        const ENVIRONMENT: &str = "kappa.dev/environment";
        const ENVIRONMENT_NAMESPACE: &str = "kappa.dev/environment-namespace";
        const ENV_GENERATION: &str = "kappa.dev/env-generation";
        const FUNCTION: &str = "kappa.dev/function";
        const FUNCTION_NAMESPACE: &str = "kappa.dev/function-namespace";
        const GENERATION: &str = "kappa.dev/generation";

        while !self.inner.cache.snapshot().loaded {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.inner.cache.changed.notified() => {}
                () = tokio::time::sleep(self.inner.config.reconcile_interval) => {}
            }
        }
        let instances = match self.inner.backend.list().await {
            Ok(instances) => instances,
            Err(e) => {
                tracing::warn!(error = %e, "could not list instances to adopt");
                return;
            }
        };
        let snapshot = self.inner.cache.snapshot();
        let mut to_delete: Vec<String> = Vec::new();
        let mut to_index: Vec<(FunctionId, Arc<Endpoint>)> = Vec::new();
        let mut adopted = 0usize;
        {
            let mut guard = self.state();
            let st = &mut *guard;
            for instance in instances {
                if st.owners.contains_key(&instance.id) {
                    continue;
                }
                let label = |key: &str| instance.labels.get(key).cloned();
                let number = |key: &str| label(key).and_then(|v| v.parse::<i64>().ok());
                let id_of = |ns: &str, name: &str| match (label(ns), label(name)) {
                    (Some(ns), Some(name)) => Some(FunctionId::new(&ns, &name)),
                    _ => None,
                };
                match label(ROLE).as_deref() {
                    Some("pool") => {
                        let env = id_of(ENVIRONMENT_NAMESPACE, ENVIRONMENT).and_then(|id| {
                            snapshot.environments.get(&id).map(|e| (id, Arc::clone(e)))
                        });
                        let Some((env_id, env)) = env else {
                            to_delete.push(instance.id);
                            continue;
                        };
                        let generation = generation_of(&env.metadata);
                        let pool = st.pools.entry(env_id.clone()).or_insert_with(|| Pool {
                            generation,
                            warm: VecDeque::new(),
                            starting: 0,
                            failures: 0,
                            retry_at: None,
                            last_error: None,
                        });
                        if number(ENV_GENERATION) != Some(generation)
                            || pool.generation != generation
                            || pool.warm.len()
                                >= env
                                    .spec
                                    .adaptive_pool()
                                    .map_or(env.spec.poolsize, |(_, max)| max)
                                    as usize
                        {
                            to_delete.push(instance.id);
                            continue;
                        }
                        st.owners.insert(instance.id.clone(), Owner::Pool(env_id));
                        pool.warm.push_back(instance);
                        st.total += 1;
                        adopted += 1;
                    }
                    Some("specialized") => {
                        let function = id_of(FUNCTION_NAMESPACE, FUNCTION).and_then(|id| {
                            snapshot.functions.get(&id).map(|f| (id, Arc::clone(f)))
                        });
                        let (Some((fid, function)), Some(generation)) =
                            (function, number(GENERATION))
                        else {
                            to_delete.push(instance.id);
                            continue;
                        };
                        let endpoint = Arc::new(Endpoint::new(
                            instance.id.clone(),
                            instance.addr,
                            generation,
                            function.spec.requests_per_pod,
                        ));
                        st.functions
                            .entry(fid.clone())
                            .or_default()
                            .instances
                            .insert(
                                instance.id.clone(),
                                FnInstance {
                                    endpoint: Arc::clone(&endpoint),
                                    env_generation: number(ENV_GENERATION).unwrap_or(0),
                                    // Not recorded on the instance: an adopted instance is rolled
                                    // by generation changes only, not by Secret/ConfigMap edits.
                                    config: Vec::new(),
                                    drain_deadline: None,
                                },
                            );
                        st.owners
                            .insert(instance.id.clone(), Owner::Function(fid.clone()));
                        st.total += 1;
                        adopted += 1;
                        to_index.push((fid, endpoint));
                    }
                    _ => {}
                }
            }
        }
        for (fid, endpoint) in to_index {
            self.inner.index.insert(&fid, endpoint);
        }
        let deleted = to_delete.len();
        for id in to_delete {
            if let Err(e) = self.inner.backend.delete(&id, Duration::ZERO).await {
                tracing::debug!(instance = %id, error = %e, "deleting an unadoptable instance failed");
            }
        }
        if adopted + deleted > 0 {
            tracing::info!(
                adopted,
                deleted,
                "adopted the instances of a previous pool manager"
            );
        }
        self.update_gauges();
    }
}
