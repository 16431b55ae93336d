//! `newdeploy` functions run through a [`Deployments`] seam (on Kubernetes, a Deployment per
//! function) when one is configured.
//!
//! The pool manager stays the scaling authority: it keeps a desired replica count per function
//! (at least `minScale`, at most `maxScale`), raises it on a miss that the ready and starting
//! instances cannot absorb, and lowers it by one instance idle for `idletimeout`, naming that
//! instance so it is the one removed. The instances specialize themselves on start; the ready
//! ones the seam reports become endpoints. Every apply and scale call is made by the reconcile
//! loop, one at a time per function, so the calls never race each other.
//!
//! Invariants:
//! - Only instances of the revision last applied are in the index; a new revision drains the
//!   old ones at once (no request reaches old code or old configuration), as for instances.
//! - An instance is named as a scale-down victim only once drained (no request in flight).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kappa_core::{
    BackendError, DeploymentEvent, DeploymentSpec, Deployments, Endpoint, FunctionId, Provision,
    ProvisionError, ReadyInstance, SpecializeRequest,
};
use kappa_types::{ExecutorType, Function};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{PoolManager, config_versions, generation_of};
use crate::cache::Snapshot;

/// What a deployment was last built from; a change means a new revision to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DesiredKey {
    generation: i64,
    env_generation: i64,
    configs: Vec<Option<u64>>,
}

/// The pool manager's view of one function's deployment.
#[derive(Default)]
pub(super) struct Deployed {
    /// What the last successful apply was built from (`None`: not applied by this pool
    /// manager yet, e.g. adopted after a restart).
    applied: Option<DesiredKey>,
    /// The revision the deployment runs (last applied, or found at adoption).
    revision: Option<String>,
    /// Replicas wanted.
    desired: u32,
    /// Replicas the deployment is set to.
    set: u32,
    /// Drained instances to remove first at the next scale-down.
    victims: Vec<String>,
    /// An apply or scale call is running.
    busy: bool,
    /// When to retry a failed apply.
    retry_at: Option<Instant>,
    /// Misses waiting for an instance to become ready.
    waiting: u32,
    /// Ready instances of `revision`, in the index.
    endpoints: HashMap<String, Arc<Endpoint>>,
    /// Ready instances of another revision: an old one rolling out, or the next one whose
    /// apply has not returned yet.
    others: HashMap<String, ReadyInstance>,
}

/// The revision label of a deployment built from `key` with the archive `sha256`: 16 hex
/// digits, safe as a Kubernetes label value.
fn revision_of(fid: &FunctionId, key: &DesiredKey, sha256: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(
        format!(
            "{fid}\n{}\n{}\n{:?}\n{sha256}",
            key.generation, key.env_generation, key.configs
        )
        .as_bytes(),
    );
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Counts a waiting miss for as long as it waits.
struct Waiting<'a> {
    manager: &'a PoolManager,
    fid: &'a FunctionId,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(d) = self.manager.state().deployed.get_mut(self.fid) {
            d.waiting = d.waiting.saturating_sub(1);
        }
    }
}

impl PoolManager {
    /// Runs `newdeploy` functions through `deployments` from now on. Call before
    /// [`PoolManager::run`]; a second call is ignored.
    pub fn set_deployments(&self, deployments: Arc<dyn Deployments>) {
        if self.inner.deployments.set(deployments).is_err() {
            tracing::warn!("the pool manager already has a deployments backend; ignored");
        }
    }

    fn deployments(&self) -> Option<Arc<dyn Deployments>> {
        self.inner.deployments.get().cloned()
    }

    /// Whether `function` runs as a deployment rather than as instances.
    pub(super) fn uses_deployments(&self, function: &Function) -> bool {
        function.spec.executor_type == ExecutorType::Newdeploy
            && self.inner.deployments.get().is_some()
    }

    /// Starts following the deployments' instance events, then takes over the deployments and
    /// ready instances that exist (a restarted pool manager keeps them).
    pub(super) async fn start_deployments(&self, shutdown: &CancellationToken) {
        let Some(deployments) = self.deployments() else {
            return;
        };
        let events = deployments.subscribe();
        {
            let this = self.clone();
            let token = shutdown.child_token();
            tokio::spawn(async move { this.follow_deployments(events, token).await });
        }
        match deployments.list().await {
            Ok(list) => {
                let mut st = self.state();
                for status in list {
                    let d = st.deployed.entry(status.function).or_default();
                    d.revision = Some(status.revision);
                    d.set = status.replicas;
                    d.desired = status.replicas;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not list the deployments to adopt"),
        }
        self.resync_deployments(&deployments).await;
    }

    async fn follow_deployments(
        &self,
        mut events: broadcast::Receiver<DeploymentEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(event) => self.on_deployment_event(event).await,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "missed deployment events; listing ready instances"
                    );
                    if let Some(deployments) = self.deployments() {
                        self.resync_deployments(&deployments).await;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Makes the indexed instances those the deployments report ready.
    async fn resync_deployments(&self, deployments: &Arc<dyn Deployments>) {
        let ready = match deployments.ready().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the deployments' ready instances");
                return;
            }
        };
        let live: std::collections::HashSet<(FunctionId, String)> = ready
            .iter()
            .map(|r| (r.function.clone(), r.instance.id.clone()))
            .collect();
        let gone: Vec<(FunctionId, String)> = {
            let st = self.state();
            st.deployed
                .iter()
                .flat_map(|(fid, d)| {
                    d.endpoints
                        .keys()
                        .chain(d.others.keys())
                        .map(move |id| (fid.clone(), id.clone()))
                })
                .filter(|key| !live.contains(key))
                .collect()
        };
        for (function, id) in gone {
            self.on_deployment_event(DeploymentEvent::Gone { function, id })
                .await;
        }
        for r in ready {
            self.on_deployment_event(DeploymentEvent::Ready(r)).await;
        }
    }

    async fn on_deployment_event(&self, event: DeploymentEvent) {
        match event {
            DeploymentEvent::Ready(ready) => {
                let Some(function) = self.inner.cache.function(&ready.function) else {
                    return;
                };
                let fid = ready.function.clone();
                let id = ready.instance.id.clone();
                let endpoint = {
                    let mut st = self.state();
                    let d = st.deployed.entry(fid.clone()).or_default();
                    if d.revision.as_deref() != Some(ready.revision.as_str()) {
                        d.others.insert(id, ready);
                        return;
                    }
                    if d.endpoints.contains_key(&id) || d.victims.contains(&id) {
                        return;
                    }
                    let endpoint = Arc::new(Endpoint::new(
                        id.clone(),
                        ready.instance.addr,
                        ready.generation,
                        function.spec.requests_per_pod,
                    ));
                    d.endpoints.insert(id.clone(), Arc::clone(&endpoint));
                    if let Some(fs) = st.functions.get_mut(&fid)
                        && fs
                            .failure
                            .as_ref()
                            .is_some_and(|f| f.generation == ready.generation)
                    {
                        fs.failure = None;
                    }
                    endpoint
                };
                self.inner.index.insert(&fid, endpoint);
                tracing::info!(function = %fid, instance = %id, "deployment instance ready");
                self.inner.deployment_changed.notify_waiters();
                if function.status.last_error.is_some() {
                    self.record_error(&fid, None).await;
                }
            }
            DeploymentEvent::Gone { function, id } => {
                let removed = {
                    let mut st = self.state();
                    st.deployed.get_mut(&function).is_some_and(|d| {
                        d.others.remove(&id);
                        d.endpoints.remove(&id).is_some()
                    })
                };
                if removed {
                    self.inner.index.remove(&function, &id);
                    tracing::info!(function = %function, instance = %id, "deployment instance no longer ready");
                }
            }
            DeploymentEvent::Failed {
                function,
                revision,
                message,
                detail,
            } => {
                let Some(f) = self.inner.cache.function(&function) else {
                    return;
                };
                let generation = generation_of(&f.metadata);
                let error = ProvisionError::Specialize { message, detail };
                {
                    let mut st = self.state();
                    let Some(d) = st
                        .deployed
                        .get_mut(&function)
                        .filter(|d| d.revision.as_deref() == Some(revision.as_str()))
                    else {
                        return;
                    };
                    // Like a failed specialization, the failed instance is not kept: scale back
                    // to what is ready (at least minScale); the next miss after the back-off
                    // tries again.
                    d.desired = (d.endpoints.len() as u32).max(f.spec.min_scale);
                    st.functions
                        .entry(function.clone())
                        .or_default()
                        .fail(generation, error.clone());
                }
                tracing::warn!(function = %function, error = %error, "a deployment instance failed to load the code");
                self.inner.deployment_changed.notify_waiters();
                self.record_error(&function, Some(error.to_string())).await;
            }
        }
    }

    /// The reconcile loop's part for deployments: delete those of functions that are gone,
    /// apply new revisions, keep `minScale`, scale idle instances away.
    pub(super) fn reconcile_deployments(&self, snapshot: &Snapshot) {
        let Some(deployments) = self.deployments() else {
            return;
        };
        let now = Instant::now();
        let mut applies: Vec<(FunctionId, Arc<Function>, DesiredKey, u32)> = Vec::new();
        let mut scales: Vec<(FunctionId, u32, Vec<String>)> = Vec::new();
        let mut deletes: Vec<FunctionId> = Vec::new();
        let mut unindex: Vec<(FunctionId, String)> = Vec::new();
        {
            let mut guard = self.state();
            let st = &mut *guard;
            let gone: Vec<FunctionId> = st
                .deployed
                .keys()
                .filter(|fid| {
                    !snapshot
                        .functions
                        .get(*fid)
                        .is_some_and(|f| f.spec.executor_type == ExecutorType::Newdeploy)
                })
                .cloned()
                .collect();
            for fid in gone {
                if let Some(d) = st.deployed.remove(&fid) {
                    for (id, endpoint) in d.endpoints {
                        endpoint.mark_draining();
                        unindex.push((fid.clone(), id));
                    }
                    deletes.push(fid);
                }
            }
            for (fid, f) in &snapshot.functions {
                if f.spec.executor_type != ExecutorType::Newdeploy {
                    continue;
                }
                let env_id =
                    FunctionId::new(&f.spec.environment.namespace, &f.spec.environment.name);
                let Some(env) = snapshot.environments.get(&env_id) else {
                    continue; // a miss reports the missing environment
                };
                let key = DesiredKey {
                    generation: generation_of(&f.metadata),
                    env_generation: generation_of(&env.metadata),
                    configs: config_versions(snapshot, f),
                };
                let d = st.deployed.entry(fid.clone()).or_default();
                let min = f.spec.min_scale;
                let max = f.spec.max_scale.max(min).max(1);
                d.desired = d.desired.clamp(min, max);
                // Scale down by the longest-idle instance beyond minScale.
                let idle = Duration::from_secs(f.spec.idletimeout);
                let drained = d.desired.saturating_sub(d.endpoints.len() as u32);
                if d.desired > min && d.waiting == 0 && drained == 0 {
                    let victim = d
                        .endpoints
                        .iter()
                        .filter(|(_, e)| e.in_flight() == 0 && e.idle_for() >= idle)
                        .max_by_key(|(_, e)| e.idle_for())
                        .map(|(id, _)| id.clone());
                    if let Some(id) = victim
                        && let Some(endpoint) = d.endpoints.get(&id)
                    {
                        endpoint.mark_draining();
                        if endpoint.in_flight() == 0 {
                            d.endpoints.remove(&id);
                            d.victims.push(id.clone());
                            d.desired -= 1;
                            tracing::info!(function = %fid, instance = %id, idle_s = idle.as_secs(), "scaling an idle instance away");
                            unindex.push((fid.clone(), id));
                        }
                    }
                }
                if d.busy || d.retry_at.is_some_and(|t| t > now) {
                    continue;
                }
                if d.applied.as_ref() != Some(&key) {
                    if d.applied.is_some() {
                        // A new revision: old code takes no new request, and instances of the
                        // old revision reported ready meanwhile stay out of the index.
                        for (id, endpoint) in d.endpoints.drain() {
                            endpoint.mark_draining();
                            unindex.push((fid.clone(), id));
                        }
                        d.revision = None;
                    }
                    d.busy = true;
                    d.victims.clear();
                    applies.push((fid.clone(), Arc::clone(f), key, d.desired));
                } else if d.desired != d.set {
                    d.busy = true;
                    scales.push((fid.clone(), d.desired, std::mem::take(&mut d.victims)));
                }
            }
        }
        for (fid, id) in unindex {
            self.inner.index.remove(&fid, &id);
        }
        for fid in deletes {
            let deployments = Arc::clone(&deployments);
            tokio::spawn(async move {
                match deployments.delete(&fid).await {
                    Ok(()) => tracing::info!(function = %fid, "deleted the deployment"),
                    Err(e) => {
                        tracing::warn!(function = %fid, error = %e, "deleting the deployment failed")
                    }
                }
            });
        }
        for (fid, function, key, replicas) in applies {
            let this = self.clone();
            tokio::spawn(async move { this.apply_deployment(fid, function, key, replicas).await });
        }
        for (fid, replicas, victims) in scales {
            let this = self.clone();
            let deployments = Arc::clone(&deployments);
            tokio::spawn(async move {
                let result = deployments.scale(&fid, replicas, &victims).await;
                {
                    let mut st = this.state();
                    if let Some(d) = st.deployed.get_mut(&fid) {
                        d.busy = false;
                        match &result {
                            Ok(()) => d.set = replicas,
                            // Deleted behind the pool manager's back: apply it again.
                            Err(BackendError::NotFound(_)) => d.applied = None,
                            Err(_) => {
                                d.victims.extend(victims);
                                d.retry_at = Some(Instant::now() + Duration::from_secs(1));
                            }
                        }
                    }
                }
                match result {
                    Ok(()) => tracing::info!(function = %fid, replicas, "scaled the deployment"),
                    Err(e) => {
                        tracing::warn!(function = %fid, replicas, error = %e, "scaling the deployment failed")
                    }
                }
                this.inner.cache.changed.notify_waiters();
            });
        }
    }

    /// Builds the deployment of `function` from the store and applies it.
    async fn build_and_apply(
        &self,
        fid: &FunctionId,
        function: &Function,
        key: &DesiredKey,
        replicas: u32,
    ) -> Result<String, ProvisionError> {
        let deployments = self
            .deployments()
            .ok_or_else(|| ProvisionError::Unavailable("no deployments backend".into()))?;
        let (env_id, env) = self.load_environment(function).await?;
        let (sha, filename) = self.resolve_archive(function).await?;
        let (files, _) = self.load_config(function).await?;
        let resources = function.spec.resources.or(&env.spec.resources);
        let instance = self.instance_spec(&env_id, &env, &resources);
        let revision = revision_of(fid, key, &sha);
        let timeout = Duration::from_secs(function.spec.specialization_timeout);
        let spec = DeploymentSpec {
            function: fid.clone(),
            generation: key.generation,
            revision: revision.clone(),
            instance,
            specialize: SpecializeRequest {
                function: fid.clone(),
                generation: key.generation,
                archive_sha256: sha,
                filename,
                entrypoint: function.spec.package.function_name.clone(),
                env: function.spec.env.clone(),
                files,
                timeout,
                egress: super::egress_of(function, &env),
                host_ports: function.spec.effective_host_ports(&env.spec).to_vec(),
            },
            replicas,
            grace: Duration::from_secs(function.spec.function_timeout)
                + self.inner.config.drain_slack,
        };
        deployments
            .apply(&spec)
            .await
            .map_err(|e| ProvisionError::Start(format!("applying the deployment: {e}")))?;
        Ok(revision)
    }

    async fn apply_deployment(
        &self,
        fid: FunctionId,
        function: Arc<Function>,
        key: DesiredKey,
        replicas: u32,
    ) {
        let result = self.build_and_apply(&fid, &function, &key, replicas).await;
        let mut to_index: Vec<Arc<Endpoint>> = Vec::new();
        let mut to_unindex: Vec<String> = Vec::new();
        {
            let mut guard = self.state();
            let st = &mut *guard;
            let Some(d) = st.deployed.get_mut(&fid) else {
                return;
            };
            d.busy = false;
            match &result {
                Ok(revision) => {
                    d.applied = Some(key.clone());
                    d.set = replicas;
                    d.retry_at = None;
                    if d.revision.as_deref() != Some(revision.as_str()) {
                        for (id, endpoint) in d.endpoints.drain() {
                            endpoint.mark_draining();
                            to_unindex.push(id);
                        }
                        d.revision = Some(revision.clone());
                        let current: Vec<ReadyInstance> = d
                            .others
                            .values()
                            .filter(|r| r.revision == *revision)
                            .cloned()
                            .collect();
                        for ready in current {
                            d.others.remove(&ready.instance.id);
                            let endpoint = Arc::new(Endpoint::new(
                                ready.instance.id.clone(),
                                ready.instance.addr,
                                ready.generation,
                                function.spec.requests_per_pod,
                            ));
                            d.endpoints
                                .insert(ready.instance.id.clone(), Arc::clone(&endpoint));
                            to_index.push(endpoint);
                        }
                    }
                }
                Err(error) => {
                    let backoff = st
                        .functions
                        .entry(fid.clone())
                        .or_default()
                        .fail(key.generation, error.clone());
                    if let Some(d) = st.deployed.get_mut(&fid) {
                        d.retry_at = Some(Instant::now() + backoff);
                    }
                }
            }
        }
        for id in to_unindex {
            self.inner.index.remove(&fid, &id);
        }
        for endpoint in to_index {
            self.inner.index.insert(&fid, endpoint);
        }
        match result {
            Ok(revision) => {
                tracing::info!(function = %fid, revision, replicas, "applied the deployment")
            }
            Err(e) => {
                tracing::warn!(function = %fid, error = %e, "applying the deployment failed");
                self.record_error(&fid, Some(e.to_string())).await;
            }
        }
        self.inner.deployment_changed.notify_waiters();
        self.inner.cache.changed.notify_waiters();
    }

    /// A miss of a function run as a deployment: raise its replica count unless the instances
    /// starting already cover this request, then wait for an instance of `generation`.
    pub(super) async fn provision_deployed(
        &self,
        fid: &FunctionId,
        function: &Function,
        generation: i64,
    ) -> Result<Provision, ProvisionError> {
        let rpp = function.spec.requests_per_pod.max(1);
        let max = function.spec.max_scale.max(function.spec.min_scale).max(1);
        let ready_of = |d: &Deployed| {
            d.endpoints
                .values()
                .filter(|e| e.generation == generation && !e.is_draining())
                .count() as u32
        };
        let before = {
            let mut st = self.state();
            let d = st.deployed.entry(fid.clone()).or_default();
            let ready = ready_of(d);
            if d.endpoints.values().any(|e| {
                e.generation == generation && !e.is_draining() && e.in_flight() < e.capacity
            }) {
                // The caller's admission raced with a request finishing: retry it.
                return Ok(Provision::Added);
            }
            let pending = d.desired.saturating_sub(ready).saturating_mul(rpp);
            if d.waiting >= pending {
                if d.desired >= max {
                    if ready > 0 {
                        return Ok(Provision::AtCapacity);
                    }
                } else {
                    d.desired += 1;
                    tracing::info!(function = %fid, replicas = d.desired, "scaling the deployment up for a miss");
                }
            }
            d.waiting += 1;
            ready
        };
        let _waiting = Waiting { manager: self, fid };
        self.inner.cache.changed.notify_waiters();
        let timeout = Duration::from_secs(function.spec.specialization_timeout);
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let changed = self.inner.deployment_changed.notified();
                if let Some(error) = self.recent_failure(fid, generation) {
                    return Err(error);
                }
                let ready = self.state().deployed.get(fid).map_or(0, ready_of);
                if ready > before {
                    return Ok(Provision::Added);
                }
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        })
        .await;
        waited.unwrap_or(Err(ProvisionError::Timeout(timeout)))
    }

    /// The deployments part of [`PoolManager::snapshot`].
    pub(super) fn deployments_snapshot(&self) -> serde_json::Value {
        let st = self.state();
        let map: serde_json::Map<String, serde_json::Value> = st
            .deployed
            .iter()
            .map(|(fid, d)| {
                let instances: Vec<serde_json::Value> = d
                    .endpoints
                    .values()
                    .map(|e| {
                        serde_json::json!({
                            "id": e.instance_id,
                            "addr": e.addr.to_string(),
                            "generation": e.generation,
                            "inFlight": e.in_flight(),
                            "served": e.served(),
                        })
                    })
                    .collect();
                (
                    fid.to_string(),
                    serde_json::json!({
                        "revision": d.revision,
                        "replicas": d.set,
                        "desired": d.desired,
                        "instances": instances,
                    }),
                )
            })
            .collect();
        serde_json::Value::Object(map)
    }
}
