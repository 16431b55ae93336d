//! Reaping: function instances rolled (old function or environment generation, outdated
//! secrets and config maps), drained, reaped when idle beyond `minScale`, deleted once drained;
//! `minScale` kept ready. One half of the reconcile pass (`reconcile.rs`).

use std::sync::Arc;
use std::time::Duration;

use kappa_core::FunctionId;
use tokio::time::Instant;

use super::reconcile::Actions;
use super::{FnInstance, PoolManager, State, config_versions, generation_of};
use crate::cache::Snapshot;

impl PoolManager {
    /// Functions: roll, reap, drain, keep minScale.
    pub(super) fn reap_functions(
        &self,
        st: &mut State,
        snapshot: &Snapshot,
        now: Instant,
        since_start: Duration,
        actions: &mut Actions,
    ) {
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
                let seen = config_versions(snapshot, f);
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
                actions.to_unindex.push((fid.clone(), iid.clone()));
                actions.to_delete.push((iid, grace));
            }
            // Keep minScale ready (a deployment keeps its own).
            if let (Some(f), Some(generation)) = (function, current_gen)
                && !self.uses_deployments(f)
            {
                let ready = fs
                    .instances
                    .values()
                    .filter(|i| i.drain_deadline.is_none() && i.endpoint.generation == generation)
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
                        actions.to_specialize.push((fid.clone(), Arc::clone(f)));
                    }
                }
            }
            if function.is_none() && fs.instances.is_empty() && fs.inflight.is_empty() {
                st.functions.remove(&fid);
            }
        }
        for (_, iid) in &actions.to_unindex {
            if st.owners.remove(iid).is_some() {
                st.total = st.total.saturating_sub(1);
            }
        }
    }
}
