//! The reconcile pass: under the state lock it plans the pools (`demand.rs`), sizes and rolls
//! them (`pools.rs`, `reconcile_pools`) and rolls, drains and reaps function instances
//! (`reaping.rs`, `reap_functions`), collecting [`Actions`]; then it carries them out (deletes,
//! warm starts, environment statuses, deployments, `minScale` specializations).

use std::sync::Arc;
use std::time::Duration;

use kappa_core::FunctionId;
use kappa_store::Precondition;
use kappa_types::{Environment, Function, Kind};
use tokio::time::Instant;

use super::{PoolManager, generation_of};

/// What a reconcile pass decided while it held the state lock, carried out after it.
#[derive(Default)]
pub(super) struct Actions {
    /// Instances to delete, with their grace.
    pub(super) to_delete: Vec<(String, Duration)>,
    /// Warm instances to start.
    pub(super) to_start: Vec<(FunctionId, Arc<Environment>)>,
    /// Specializations to start (to keep `minScale`).
    pub(super) to_specialize: Vec<(FunctionId, Arc<Function>)>,
    /// Endpoints to take out of the index.
    pub(super) to_unindex: Vec<(FunctionId, String)>,
    /// Environments whose `status.isolation` does not say what the backend gives.
    pub(super) to_mark: Vec<(FunctionId, serde_json::Value)>,
    /// Environments that were deleted (the backend releases what it keeps for them).
    pub(super) removed_envs: Vec<FunctionId>,
}

impl PoolManager {
    pub(super) async fn reconcile(&self) {
        let snapshot = self.inner.cache.snapshot();
        if !snapshot.loaded || self.inner.shutdown.is_cancelled() {
            return;
        }
        let mut actions = Actions::default();
        let isolation = self.inner.backend.isolation();
        let now = Instant::now();
        let since_start = self.since_start();
        {
            let mut guard = self.state();
            let st = &mut *guard;
            let plan = self.plan_pools(st, &snapshot, since_start);
            self.reconcile_pools(st, &snapshot, &plan, &isolation, now, &mut actions);
            self.reap_functions(st, &snapshot, now, since_start, &mut actions);
            self.pool_statuses(st, &snapshot, &plan, since_start, &mut actions.to_mark);
        }
        let Actions {
            to_delete,
            to_start,
            to_specialize,
            to_unindex,
            to_mark,
            removed_envs,
        } = actions;
        for env_id in removed_envs {
            let backend = Arc::clone(&self.inner.backend);
            tokio::spawn(async move { backend.environment_removed(&env_id).await });
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
