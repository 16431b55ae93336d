//! The pool manager proper: pools, specialization, reconcile loop.

mod adaptive;
mod demand;
mod deployed;

pub use adaptive::AdaptiveConfig;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use kappa_archive::ArchiveStore;
use kappa_core::{
    Backend, BackendError, ConfigKind, ConfigVolume, Deployments, Endpoint, EndpointIndex,
    ExitReason, FunctionId, Instance, InstanceEvent, InstanceInfo, InstanceLister, InstanceSpec,
    InstanceState, Limits, Provision, ProvisionError, Provisioner, SpecializeRequest,
};
use kappa_store::{Precondition, Store};
use kappa_types::{
    ArchiveType, BuildStatus, ConfigMap, Environment, ExecutorType, Function, Kind, NamedRef,
    Package, Resources, Secret,
};
use prometheus_client::registry::Registry;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::cache::{Cache, ConfigRef};
use crate::metrics::{Metrics, ResultLabels};

/// Tunables of the pool manager.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// How often the reconcile loop runs when nothing wakes it.
    pub reconcile_interval: Duration,
    /// Most instances (warm and specialized) at once, across all environments.
    pub max_instances: usize,
    /// Requests a runtime process is started ready to serve at once (its thread pool bound);
    /// admission per instance is `requestsPerPod`, enforced by the router.
    pub runtime_concurrency: u32,
    /// pids limit applied when neither the function nor the environment sets one.
    pub default_pids_limit: Option<u64>,
    /// First delay after a failed warm-instance start; doubles up to `max_start_backoff`.
    pub start_backoff: Duration,
    pub max_start_backoff: Duration,
    /// Extra time a draining instance gets beyond its function timeout before it is killed.
    pub drain_slack: Duration,
    /// Bytes the warm pools may hold in all (pool size x the environment's memory limit, or
    /// `adaptive.memory_estimate` without one): fixed pools count first, adaptive ones share
    /// the rest by demand. `None`: no bound but `max_instances`.
    pub pool_memory_budget: Option<u64>,
    /// The adaptive pool policy's tunables (design note 006).
    pub adaptive: AdaptiveConfig,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            reconcile_interval: Duration::from_secs(1),
            max_instances: 256,
            runtime_concurrency: 64,
            default_pids_limit: Some(1024),
            start_backoff: Duration::from_millis(500),
            max_start_backoff: Duration::from_secs(30),
            drain_slack: Duration::from_secs(5),
            pool_memory_budget: None,
            adaptive: AdaptiveConfig::default(),
        }
    }
}

/// The pool manager. Cheap to clone.
#[derive(Clone)]
pub struct PoolManager {
    inner: Arc<Inner>,
}

struct Inner {
    config: ExecutorConfig,
    store: Arc<dyn Store>,
    backend: Arc<dyn Backend>,
    index: Arc<EndpointIndex>,
    archives: Arc<ArchiveStore>,
    cache: Cache,
    /// All mutable bookkeeping. A std mutex: it is only held for short, synchronous sections,
    /// never across an `.await`.
    state: Mutex<State>,
    metrics: Metrics,
    shutdown: CancellationToken,
    /// Where `newdeploy` functions run when set (Kubernetes Deployments); else they get
    /// dedicated instances from `backend`.
    deployments: OnceLock<Arc<dyn Deployments>>,
    /// Woken when a deployment instance becomes ready or fails, for misses waiting on one.
    deployment_changed: tokio::sync::Notify,
    /// Reconcile passes completed (see [`PoolManager::reconcile_passes`]).
    passes: std::sync::atomic::AtomicU64,
    /// The adaptive policy's time origin.
    origin: Instant,
}

#[derive(Default)]
struct State {
    pools: HashMap<FunctionId, Pool>,
    functions: HashMap<FunctionId, FnState>,
    /// Functions run as deployments.
    deployed: HashMap<FunctionId, deployed::Deployed>,
    /// Who each live instance belongs to.
    owners: HashMap<String, Owner>,
    /// Exit reasons of instances that ended while being specialized.
    exits: HashMap<String, ExitReason>,
    /// Instances counted against `max_instances` (including ones starting).
    total: usize,
    next_inflight: u64,
    /// What the adaptive pool policy saw and decided.
    demand: adaptive::Demand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Pool(FunctionId),
    Specializing(FunctionId),
    Function(FunctionId),
}

struct Pool {
    generation: i64,
    warm: VecDeque<Instance>,
    starting: usize,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

#[derive(Default)]
struct FnState {
    instances: HashMap<String, FnInstance>,
    inflight: Vec<Inflight>,
    /// The last failed specialization, answered to further misses of the same generation until
    /// its back-off ends, so a broken function cannot make every request start a process.
    failure: Option<RecentFailure>,
    /// The versions of the function's secrets and config maps at the last reconcile (`None`
    /// for one that does not exist). A change ends a failure back-off: re-creating a missing
    /// secret must not leave the function failing until the back-off runs out.
    config_seen: Option<Vec<Option<u64>>>,
}

impl FnState {
    /// Records a failed specialization of `generation` (one more in the streak when the last
    /// failure was of the same generation); returns the back-off it starts.
    fn fail(&mut self, generation: i64, error: ProvisionError) -> Duration {
        let streak = self
            .failure
            .as_ref()
            .filter(|f| f.generation == generation)
            .map_or(1, |f| f.streak + 1);
        let backoff = failure_backoff(streak);
        self.failure = Some(RecentFailure {
            generation,
            error,
            streak,
            until: Instant::now() + backoff,
        });
        backoff
    }
}

struct RecentFailure {
    generation: i64,
    error: ProvisionError,
    /// Consecutive failures; the back-off doubles with each (1 s up to 30 s).
    streak: u32,
    until: Instant,
}

/// The back-off after `streak` consecutive failed specializations.
fn failure_backoff(streak: u32) -> Duration {
    Duration::from_secs(1u64 << streak.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

struct FnInstance {
    endpoint: Arc<Endpoint>,
    env_generation: i64,
    /// The configuration fingerprint it was specialized with: the resource version of each
    /// Secret and ConfigMap it was given, as read from the store. When the cache sees a newer
    /// version (or a deletion), the instance is drained like one of an old generation.
    config: Vec<(ConfigRef, u64)>,
    drain_deadline: Option<Instant>,
}

/// A specialization in progress, whose `requestsPerPod` slots waiting requests may claim.
struct Inflight {
    id: u64,
    generation: i64,
    unclaimed: u32,
    done: watch::Receiver<Option<Result<(), ProvisionError>>>,
}

fn generation_of(meta: &kappa_types::ObjectMeta) -> i64 {
    meta.generation.unwrap_or(1)
}

fn limits_of(resources: &Resources, default_pids: Option<u64>) -> Limits {
    Limits {
        memory_bytes: resources.memory_limit_bytes(),
        cpu_millis: resources.cpu_limit_millis(),
        pids: resources.limits.pids.or(default_pids),
    }
}

/// The cached versions of `function`'s secrets then config maps, in spec order.
fn config_versions(snapshot: &crate::cache::Snapshot, function: &Function) -> Vec<Option<u64>> {
    let spec = &function.spec;
    spec.secrets
        .iter()
        .map(|r| (ConfigKind::Secret, r))
        .chain(spec.configmaps.iter().map(|r| (ConfigKind::ConfigMap, r)))
        .map(|(kind, r)| {
            snapshot
                .configs
                .get(&(kind, FunctionId::new(&r.namespace, &r.name)))
                .copied()
        })
        .collect()
}

fn new_instance_id(env: &FunctionId) -> String {
    let mut short = uuid::Uuid::new_v4().simple().to_string();
    short.truncate(10);
    let mut prefix = env.name.clone();
    prefix.truncate(40);
    format!("{prefix}-{short}")
}

impl PoolManager {
    pub fn new(
        config: ExecutorConfig,
        store: Arc<dyn Store>,
        backend: Arc<dyn Backend>,
        index: Arc<EndpointIndex>,
        archives: Arc<ArchiveStore>,
        registry: &mut Registry,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                backend,
                index,
                archives,
                cache: Cache::default(),
                state: Mutex::new(State::default()),
                metrics: Metrics::new(registry),
                shutdown: CancellationToken::new(),
                deployments: OnceLock::new(),
                deployment_changed: tokio::sync::Notify::new(),
                passes: std::sync::atomic::AtomicU64::new(0),
                origin: Instant::now(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs the store watch, the backend event handler and the reconcile loop until `shutdown`,
    /// then deletes every instance within `grace`.
    pub async fn run(&self, shutdown: CancellationToken, grace: Duration) {
        let cache_task = {
            let this = self.clone();
            let token = shutdown.child_token();
            tokio::spawn(async move {
                this.inner
                    .cache
                    .run(Arc::clone(&this.inner.store), token)
                    .await
            })
        };
        let events_task = {
            let this = self.clone();
            let token = shutdown.child_token();
            let events = self.inner.backend.subscribe();
            tokio::spawn(async move { this.handle_events(events, token).await })
        };
        self.adopt_existing(&shutdown).await;
        self.start_deployments(&shutdown).await;
        loop {
            let changed = self.inner.cache.changed.notified();
            self.reconcile().await;
            self.inner
                .passes
                .fetch_add(1, std::sync::atomic::Ordering::Release);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = changed => {}
                () = tokio::time::sleep(self.inner.config.reconcile_interval) => {}
            }
        }
        self.inner.shutdown.cancel();
        cache_task.abort();
        events_task.abort();
        for (_, endpoints) in self.inner.index.snapshot() {
            for e in endpoints {
                e.mark_draining();
            }
        }
        self.inner.backend.shutdown(grace).await;
        let mut st = self.state();
        st.pools.clear();
        st.functions.clear();
        st.owners.clear();
        st.total = 0;
    }

    /// How many reconcile passes have completed. A pass that completes after this value was
    /// read began after it too only from the second one on: wait for `read + 2` to know that a
    /// whole pass saw what happened before the read (tests waiting for "nothing changed").
    pub fn reconcile_passes(&self) -> u64 {
        self.inner.passes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every instance this pool manager holds: warm ones per environment, those being
    /// specialized and the specialized ones per function (`kappa fn pods`, `kappa env pods`).
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let environment_of = |fid: &FunctionId| {
            self.inner
                .cache
                .function(fid)
                .map(|f| FunctionId::new(&f.spec.environment.namespace, &f.spec.environment.name))
        };
        let st = self.state();
        let mut list = Vec::with_capacity(st.total);
        for (env, pool) in &st.pools {
            for instance in &pool.warm {
                list.push(InstanceInfo {
                    id: instance.id.clone(),
                    environment: Some(env.clone()),
                    function: None,
                    state: InstanceState::Warm,
                    generation: None,
                    in_flight: 0,
                    capacity: 0,
                    served: 0,
                    address: instance.addr.to_string(),
                });
            }
        }
        for (id, owner) in &st.owners {
            if let Owner::Specializing(fid) = owner {
                list.push(InstanceInfo {
                    id: id.clone(),
                    environment: environment_of(fid),
                    function: Some(fid.clone()),
                    state: InstanceState::Specializing,
                    generation: None,
                    in_flight: 0,
                    capacity: 0,
                    served: 0,
                    address: String::new(),
                });
            }
        }
        for (fid, function) in &st.functions {
            let environment = environment_of(fid);
            for (id, instance) in &function.instances {
                let endpoint = &instance.endpoint;
                list.push(InstanceInfo {
                    id: id.clone(),
                    environment: environment.clone(),
                    function: Some(fid.clone()),
                    state: if endpoint.is_draining() {
                        InstanceState::Draining
                    } else {
                        InstanceState::Ready
                    },
                    generation: Some(endpoint.generation),
                    in_flight: endpoint.in_flight(),
                    capacity: endpoint.capacity,
                    served: endpoint.served(),
                    address: endpoint.addr.to_string(),
                });
            }
        }
        drop(st);
        list.sort_by(|a, b| {
            (&a.function, &a.environment, &a.id).cmp(&(&b.function, &b.environment, &b.id))
        });
        list
    }

    /// A JSON view of pools and instances, for debugging endpoints.
    pub fn snapshot(&self) -> serde_json::Value {
        let st = self.state();
        let pools: BTreeMap<String, serde_json::Value> = st
            .pools
            .iter()
            .map(|(id, p)| {
                (
                    id.to_string(),
                    serde_json::json!({
                        "generation": p.generation,
                        "warm": p.warm.iter().map(|i| i.id.clone()).collect::<Vec<_>>(),
                        "starting": p.starting,
                        "lastError": p.last_error,
                    }),
                )
            })
            .collect();
        let functions: BTreeMap<String, serde_json::Value> = st
            .functions
            .iter()
            .map(|(id, f)| {
                let instances: Vec<_> = f
                    .instances
                    .iter()
                    .map(|(iid, i)| {
                        serde_json::json!({
                            "id": iid,
                            "addr": i.endpoint.addr.to_string(),
                            "generation": i.endpoint.generation,
                            "inFlight": i.endpoint.in_flight(),
                            "draining": i.endpoint.is_draining(),
                            "served": i.endpoint.served(),
                        })
                    })
                    .collect();
                (
                    id.to_string(),
                    serde_json::json!({ "instances": instances, "specializing": f.inflight.len() }),
                )
            })
            .collect();
        let instances = st.total;
        drop(st);
        serde_json::json!({
            "pools": pools,
            "functions": functions,
            "deployments": self.deployments_snapshot(),
            "instances": instances,
        })
    }

    async fn handle_events(
        &self,
        mut events: broadcast::Receiver<InstanceEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => return,
                e = events.recv() => e,
            };
            match event {
                Ok(InstanceEvent::Exited { id, reason }) => self.on_exit(&id, reason),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "missed instance events; checking instances");
                    self.resync_with_backend().await;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// After missed events: forget instances the backend no longer has.
    async fn resync_with_backend(&self) {
        let Ok(live) = self.inner.backend.list().await else {
            return;
        };
        let live: std::collections::HashSet<String> = live.into_iter().map(|i| i.id).collect();
        let gone: Vec<String> = self
            .state()
            .owners
            .keys()
            .filter(|id| !live.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.on_exit(&id, ExitReason::default());
        }
    }

    fn on_exit(&self, id: &str, reason: ExitReason) {
        let mut st = self.state();
        let Some(owner) = st.owners.remove(id) else {
            return; // deleted by us, or never ours
        };
        self.inner.metrics.unexpected_exits.inc();
        match owner {
            Owner::Pool(env) => {
                if let Some(pool) = st.pools.get_mut(&env) {
                    pool.warm.retain(|i| i.id != id);
                }
                st.total = st.total.saturating_sub(1);
                tracing::warn!(environment = %env, instance = id, %reason, "warm instance ended");
            }
            Owner::Specializing(function) => {
                // The specialization task still owns the instance's accounting; it reports this.
                st.owners
                    .insert(id.to_string(), Owner::Specializing(function));
                st.exits.insert(id.to_string(), reason);
            }
            Owner::Function(function) => {
                if let Some(fs) = st.functions.get_mut(&function)
                    && let Some(instance) = fs.instances.remove(id)
                {
                    // Just the reason: whoever reports it names the instance and function.
                    instance.endpoint.set_exit(reason.to_string());
                }
                st.total = st.total.saturating_sub(1);
                drop(st);
                self.inner.index.remove(&function, id);
                tracing::warn!(function = %function, instance = id, %reason, "function instance ended");
            }
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        use crate::metrics::{EnvLabels, FunctionLabels};
        let (warm, functions) = {
            let st = self.state();
            let warm: Vec<(EnvLabels, i64)> = st
                .pools
                .iter()
                .map(|(env, pool)| {
                    (
                        EnvLabels {
                            namespace: env.namespace.to_string(),
                            environment: env.name.to_string(),
                        },
                        pool.warm.len() as i64,
                    )
                })
                .collect();
            let functions: Vec<(FunctionLabels, i64, i64)> = st
                .functions
                .iter()
                .filter(|(_, f)| !f.instances.is_empty() || !f.inflight.is_empty())
                .map(|(fid, f)| {
                    (
                        FunctionLabels {
                            namespace: fid.namespace.to_string(),
                            function: fid.name.to_string(),
                        },
                        f.instances.len() as i64,
                        f.inflight.len() as i64,
                    )
                })
                .collect();
            (warm, functions)
        };
        self.inner.metrics.set_instances(warm, functions);
    }

    // ---- adoption --------------------------------------------------------------------------

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
    async fn adopt_existing(&self, shutdown: &CancellationToken) {
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

    // ---- reconcile -------------------------------------------------------------------------

    async fn reconcile(&self) {
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

    fn instance_spec(
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
        }
    }

    async fn start_warm(&self, env_id: FunctionId, env: Arc<Environment>) {
        let spec = self.instance_spec(&env_id, &env, &env.spec.resources);
        let generation = spec.env_generation;
        let started = Instant::now();
        let result = self.inner.backend.create(spec).await;
        if result.is_ok() {
            self.note_started(&env_id, started.elapsed());
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

    // ---- provisioning ----------------------------------------------------------------------

    async fn load_function(&self, fid: &FunctionId) -> Result<Arc<Function>, ProvisionError> {
        if let Some(f) = self.inner.cache.function(fid) {
            return Ok(f);
        }
        // A kept version (`hello.v3`) just recorded and not yet seen by the watch.
        if kappa_types::parse_version_object_name(&fid.name).is_some() {
            let obj = self
                .inner
                .store
                .get(Kind::FunctionVersion, &fid.namespace, &fid.name)
                .await
                .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
                .ok_or_else(|| ProvisionError::FunctionNotFound(fid.clone()))?;
            return crate::cache::version_as_function(obj.value)
                .map(|(f, _)| Arc::new(f))
                .ok_or_else(|| {
                    ProvisionError::Unavailable(format!("function version {fid} is unreadable"))
                });
        }
        // Just created and not yet seen by the watch: read it.
        let obj = self
            .inner
            .store
            .get(Kind::Function, &fid.namespace, &fid.name)
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .ok_or_else(|| ProvisionError::FunctionNotFound(fid.clone()))?;
        Function::from_json(obj.value)
            .map(Arc::new)
            .map_err(|e| ProvisionError::Unavailable(format!("function {fid} is unreadable: {e}")))
    }

    async fn load_environment(
        &self,
        function: &Function,
    ) -> Result<(FunctionId, Arc<Environment>), ProvisionError> {
        let env_id = FunctionId::new(
            &function.spec.environment.namespace,
            &function.spec.environment.name,
        );
        if let Some(env) = self.inner.cache.environment(&env_id) {
            return Ok((env_id, env));
        }
        let obj = self
            .inner
            .store
            .get(Kind::Environment, &env_id.namespace, &env_id.name)
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .ok_or_else(|| ProvisionError::EnvironmentNotFound(env_id.to_string()))?;
        let env = Environment::from_json(obj.value).map_err(|e| {
            ProvisionError::Unavailable(format!("environment {env_id} is unreadable: {e}"))
        })?;
        Ok((env_id, Arc::new(env)))
    }

    /// For a kept version (`hello.v3`), the package as it was at that version. `None` for a
    /// function, and for a version recorded while its source package was still being built
    /// whose package still holds that source (the build's result is then the live package's).
    async fn version_package(
        &self,
        function: &Function,
    ) -> Result<Option<Package>, ProvisionError> {
        let name = &function.metadata.name;
        if kappa_types::parse_version_object_name(name).is_none() {
            return Ok(None);
        }
        let id = FunctionId::new(&function.metadata.namespace, name);
        let package = match self.inner.cache.version_package(&id) {
            Some(p) => (*p).clone(),
            None => {
                let obj = self
                    .inner
                    .store
                    .get(Kind::FunctionVersion, &id.namespace, &id.name)
                    .await
                    .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
                    .ok_or_else(|| ProvisionError::FunctionNotFound(id.clone()))?;
                crate::cache::version_as_function(obj.value)
                    .map(|(_, p)| p)
                    .ok_or_else(|| {
                        ProvisionError::Unavailable(format!("function version {id} is unreadable"))
                    })?
            }
        };
        if package.spec.deployment.is_some() {
            return Ok(Some(package));
        }
        let live = self
            .inner
            .store
            .get(
                Kind::Package,
                &package.metadata.namespace,
                &package.metadata.name,
            )
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .and_then(|o| Package::from_json(o.value).ok());
        match live {
            Some(live) if live.spec.source == package.spec.source => Ok(None),
            _ => Err(ProvisionError::Package {
                name: format!("{}/{}", package.metadata.namespace, package.metadata.name),
                reason: format!(
                    "version {name} was recorded while its source was being built, and the package has been changed since: its build result is not kept"
                ),
            }),
        }
    }

    /// The package's deployment archive in the archive store: (sha256, single-file name).
    async fn resolve_archive(
        &self,
        function: &Function,
    ) -> Result<(String, Option<String>), ProvisionError> {
        let pref = &function.spec.package.packageref;
        let package_error = |reason: String| ProvisionError::Package {
            name: format!("{}/{}", pref.namespace, pref.name),
            reason,
        };
        /// The last lines of a build log (at most 30 lines and 4 KiB), for an invocation's error.
        fn log_tail(log: &str) -> String {
            const MAX_LINES: usize = 30;
            const MAX_BYTES: usize = 4096;
            let lines: Vec<&str> = log.trim_end().lines().collect();
            let mut tail = lines[lines.len().saturating_sub(MAX_LINES)..].join("\n");
            if tail.len() > MAX_BYTES {
                let mut start = tail.len() - MAX_BYTES;
                while !tail.is_char_boundary(start) {
                    start += 1;
                }
                tail = tail[start..].to_owned();
            }
            tail
        }
        // A package whose build is pending or running and has no deployment yet is waited for.
        // The wait ends just before the function's specializationTimeout, the bound the caller
        // (`provision`, and the router above it with specializationTimeout + functionTimeout)
        // puts on the whole cold start: a build still running then is answered with this clear
        // "still being built" (503, retry) rather than a timeout; the build itself goes on.
        let wait = Duration::from_secs(function.spec.specialization_timeout)
            .saturating_sub(Duration::from_secs(1))
            .max(Duration::from_millis(500));
        let deadline = Instant::now() + wait;
        // A kept version runs the code it had then, whatever the package holds now.
        let version_package = self.version_package(function).await?;
        let package = if let Some(package) = version_package {
            package
        } else {
            loop {
                let obj = self
                    .inner
                    .store
                    .get(Kind::Package, &pref.namespace, &pref.name)
                    .await
                    .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
                    .ok_or_else(|| package_error("it does not exist".into()))?;
                let version = obj.resource_version;
                let package = Package::from_json(obj.value)
                    .map_err(|e| package_error(format!("unreadable: {e}")))?;
                let status = package.status.buildstatus;
                if status == BuildStatus::Failed {
                    return Err(package_error(format!(
                        "its build failed (`kappa pkg info {}` shows the whole log); the end of the build log:\n{}",
                        pref.name,
                        log_tail(&package.status.buildlog)
                    )));
                }
                let building = matches!(status, BuildStatus::Pending | BuildStatus::Running)
                    && package.spec.deployment.is_none();
                if !building {
                    break package;
                }
                // Wait for the package to change, then look again.
                let mut events = self.inner.store.watch(&[Kind::Package], Some(version));
                let changed = tokio::time::timeout_at(deadline, async {
                    while let Some(event) = futures::StreamExt::next(&mut events).await {
                        match event {
                            Ok(e)
                                if e.object.namespace == pref.namespace
                                    && e.object.name == pref.name =>
                            {
                                return true;
                            }
                            Ok(_) => {}
                            // History gone or the watch failed: read the package again.
                            Err(_) => return false,
                        }
                    }
                    false
                })
                .await;
                match changed {
                    Ok(true) => {}
                    // The watch ended without news: read again after a pause.
                    Ok(false) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(_) => {
                        let status = if status == BuildStatus::Running {
                            "running"
                        } else {
                            "pending"
                        };
                        return Err(ProvisionError::Unavailable(format!(
                            "package {}/{} is still being built (build status {status} after waiting {} s): retry when `kappa pkg info {}` shows succeeded",
                            pref.namespace,
                            pref.name,
                            wait.as_secs(),
                            pref.name
                        )));
                    }
                }
            }
        };
        let archive = package
            .spec
            .deployment
            .as_ref()
            .ok_or_else(|| package_error("it has no deployment archive".into()))?;
        let sha = match archive.kind {
            ArchiveType::Url => archive.stored_sha256().map(str::to_string).ok_or_else(|| {
                package_error("only archive://sha256/ URLs are fetched locally".into())
            })?,
            ArchiveType::Literal => {
                let literal = archive.literal.as_deref().unwrap_or_default();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(literal)
                    .map_err(|e| {
                        package_error(format!("its literal archive is not base64: {e}"))
                    })?;
                self.inner
                    .archives
                    .put_bytes(&bytes)
                    .await
                    .map_err(|e| package_error(format!("storing its literal archive failed: {e}")))?
                    .sha256
            }
        };
        if let Some(checksum) = &archive.checksum
            && checksum.sum != sha
        {
            return Err(package_error(format!(
                "checksum mismatch: archive is sha256 {sha}, spec says {}",
                checksum.sum
            )));
        }
        Ok((sha, archive.filename.clone()))
    }

    /// The Secrets and ConfigMaps `function` references, read from the store (the API never
    /// returns secret values; the executor is one of the two places they go: into the
    /// instance's files), with the configuration fingerprint they make. A missing or unreadable
    /// one is an error naming it and the field that references it; no error carries a value.
    async fn load_config(
        &self,
        function: &Function,
    ) -> Result<(Vec<ConfigVolume>, Vec<(ConfigRef, u64)>), ProvisionError> {
        let refs = function
            .spec
            .secrets
            .iter()
            .enumerate()
            .map(|(i, r)| (ConfigKind::Secret, format!("spec.secrets[{i}]"), r))
            .chain(
                function
                    .spec
                    .configmaps
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (ConfigKind::ConfigMap, format!("spec.configmaps[{i}]"), r)),
            );
        let mut volumes = Vec::new();
        let mut fingerprint = Vec::new();
        for (kind, field, reference) in refs {
            let (volume, version) = self.load_volume(kind, &field, reference).await?;
            fingerprint.push((
                (kind, FunctionId::new(&volume.namespace, &volume.name)),
                version,
            ));
            volumes.push(volume);
        }
        Ok((volumes, fingerprint))
    }

    async fn load_volume(
        &self,
        kind: ConfigKind,
        field: &str,
        reference: &NamedRef,
    ) -> Result<(ConfigVolume, u64), ProvisionError> {
        let store_kind = match kind {
            ConfigKind::Secret => Kind::Secret,
            ConfigKind::ConfigMap => Kind::ConfigMap,
        };
        let what = format!("{kind} {}/{}", reference.namespace, reference.name);
        let misconfigured = |reason: String| ProvisionError::Specialize {
            message: format!("{what} ({field}) {reason}"),
            detail: None,
        };
        let obj = self
            .inner
            .store
            .get(store_kind, &reference.namespace, &reference.name)
            .await
            .map_err(|e| ProvisionError::Unavailable(e.to_string()))?
            .ok_or_else(|| {
                misconfigured(format!(
                    "does not exist: create it, or remove it from the function (kappa {} create --name {})",
                    kind, reference.name
                ))
            })?;
        let entries = match kind {
            ConfigKind::Secret => {
                // The serde message could quote a value: say only that it is unreadable.
                let secret = Secret::from_json(obj.value)
                    .map_err(|_| misconfigured("is unreadable".into()))?;
                let mut entries = BTreeMap::new();
                for (key, value) in &secret.spec.data {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.trim())
                        .map_err(|_| {
                            misconfigured(format!(
                                "holds a value for key {key:?} that is not base64"
                            ))
                        })?;
                    entries.insert(key.clone(), bytes);
                }
                for (key, value) in secret.spec.string_data {
                    entries.insert(key, value.into_bytes());
                }
                entries
            }
            ConfigKind::ConfigMap => {
                let config = ConfigMap::from_json(obj.value)
                    .map_err(|e| misconfigured(format!("is unreadable: {e}")))?;
                config
                    .spec
                    .data
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes()))
                    .collect()
            }
        };
        Ok((
            ConfigVolume {
                kind,
                namespace: reference.namespace.clone(),
                name: reference.name.clone(),
                entries,
            },
            obj.resource_version,
        ))
    }

    /// Starts a specialization for `fid` unless one with free slots exists or the function is
    /// at its cap. Returns the receiver of its outcome, or `None` when at capacity.
    fn begin_specialization(
        &self,
        fid: &FunctionId,
        function: Arc<Function>,
        generation: i64,
        claim: bool,
    ) -> Option<watch::Receiver<Option<Result<(), ProvisionError>>>> {
        let rpp = function.spec.requests_per_pod.max(1);
        let cap = match function.spec.executor_type {
            ExecutorType::Poolmgr => function.spec.concurrency,
            ExecutorType::Newdeploy => function.spec.max_scale,
        } as usize;
        let mut st = self.state();
        let id = st.next_inflight;
        st.next_inflight += 1;
        let fs = st.functions.entry(fid.clone()).or_default();
        if claim
            && let Some(inflight) = fs
                .inflight
                .iter_mut()
                .find(|i| i.generation == generation && i.unclaimed > 0)
        {
            inflight.unclaimed -= 1;
            return Some(inflight.done.clone());
        }
        let ready = fs
            .instances
            .values()
            .filter(|i| i.drain_deadline.is_none() && i.endpoint.generation == generation)
            .count();
        let specializing = fs
            .inflight
            .iter()
            .filter(|i| i.generation == generation)
            .count();
        if ready + specializing >= cap {
            return None;
        }
        let (tx, rx) = watch::channel(None);
        fs.inflight.push(Inflight {
            id,
            generation,
            unclaimed: if claim { rpp - 1 } else { rpp },
            done: rx.clone(),
        });
        drop(st);
        self.update_gauges();
        let this = self.clone();
        let fid = fid.clone();
        // The spans of the specialization (take, start, specialize) join the trace of the
        // request that started it.
        let span = if kappa_telemetry::enabled() {
            kappa_telemetry::span!("specialization", kappa.function = %fid, kappa.generation = generation, kappa.instance.id = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        tokio::spawn(
            async move {
                let started = Instant::now();
                let result = this.specialize_new(&fid, &function, generation).await;
                let label = match &result {
                    Ok(()) => "ok",
                    Err(ProvisionError::Timeout(_)) => "timeout",
                    Err(_) => "failed",
                };
                this.inner
                    .metrics
                    .specializations
                    .get_or_create(&ResultLabels { result: label })
                    .inc();
                this.inner
                    .metrics
                    .specialize_seconds
                    .observe(started.elapsed().as_secs_f64());
                {
                    let mut st = this.state();
                    if let Some(fs) = st.functions.get_mut(&fid) {
                        fs.inflight.retain(|i| i.id != id);
                        match &result {
                            Ok(()) => fs.failure = None,
                            Err(error) => {
                                fs.fail(generation, error.clone());
                            }
                        }
                    }
                }
                if let Err(e) = &result {
                    tracing::warn!(function = %fid, error = %e, "specialization failed");
                    this.record_error(&fid, Some(e.to_string())).await;
                }
                let _ = tx.send(Some(result));
                this.update_gauges();
            }
            .instrument(span),
        );
        Some(rx)
    }

    /// The error of the function's last failed specialization while its back-off lasts.
    fn recent_failure(&self, fid: &FunctionId, generation: i64) -> Option<ProvisionError> {
        let st = self.state();
        let failure = st.functions.get(fid)?.failure.as_ref()?;
        (failure.generation == generation && failure.until > Instant::now())
            .then(|| failure.error.clone())
    }

    /// Takes a warm instance of the environment's pool if one is ready.
    fn take_warm(
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

    async fn specialize_new(
        &self,
        fid: &FunctionId,
        function: &Function,
        generation: i64,
    ) -> Result<(), ProvisionError> {
        let (env_id, env) = self.load_environment(function).await?;
        let (sha, filename) = self.resolve_archive(function).await?;
        // Before taking an instance: a missing secret fails fast, and costs no instance.
        let (files, config) = self.load_config(function).await?;
        let env_generation = generation_of(&env.metadata);
        let dedicated = function.spec.executor_type == ExecutorType::Newdeploy
            || !function.spec.resources.is_empty();
        let traced = kappa_telemetry::enabled();
        let taken = Instant::now();
        let warm = if dedicated {
            None
        } else {
            let warm = self.take_warm(&env_id, env_generation, fid);
            self.note_take(&env_id, &env, warm.is_some());
            warm
        };
        if let Some(instance) = &warm {
            self.inner
                .metrics
                .phase(fid, "take", taken.elapsed().as_secs_f64());
            if traced {
                let span = kappa_telemetry::span!(
                    "take from pool",
                    kappa.environment = %env_id,
                    kappa.instance.id = %instance.id,
                );
                drop(span);
            }
        }
        let instance = match warm {
            Some(instance) => {
                // Refill the pool in the background.
                self.inner.cache.changed.notify_waiters();
                instance
            }
            None => {
                {
                    let mut st = self.state();
                    if st.total >= self.inner.config.max_instances {
                        return Err(ProvisionError::Unavailable(format!(
                            "the platform's instance limit ({}) is reached",
                            self.inner.config.max_instances
                        )));
                    }
                    st.total += 1;
                }
                let resources = function.spec.resources.or(&env.spec.resources);
                let spec = self.instance_spec(&env_id, &env, &resources);
                let start_span = if traced {
                    kappa_telemetry::span!(
                        "start instance",
                        kappa.environment = %env_id,
                        kappa.instance.id = tracing::field::Empty,
                    )
                } else {
                    tracing::Span::none()
                };
                let starting = Instant::now();
                let created = self
                    .inner
                    .backend
                    .create(spec)
                    .instrument(start_span.clone())
                    .await;
                self.inner
                    .metrics
                    .phase(fid, "start", starting.elapsed().as_secs_f64());
                if let Ok(instance) = &created {
                    start_span.record("kappa.instance.id", instance.id.as_str());
                }
                drop(start_span);
                match created {
                    Ok(instance) => {
                        self.state()
                            .owners
                            .insert(instance.id.clone(), Owner::Specializing(fid.clone()));
                        instance
                    }
                    Err(e) => {
                        let mut st = self.state();
                        st.total = st.total.saturating_sub(1);
                        return Err(ProvisionError::Start(e.to_string()));
                    }
                }
            }
        };
        let timeout = Duration::from_secs(function.spec.specialization_timeout);
        let request = SpecializeRequest {
            function: fid.clone(),
            generation,
            archive_sha256: sha,
            filename,
            entrypoint: function.spec.package.function_name.clone(),
            env: function.spec.env.clone(),
            files,
            timeout,
            egress: egress_of(function, &env),
        };
        if traced {
            tracing::Span::current().record("kappa.instance.id", instance.id.as_str());
        }
        let specialize_span = if traced {
            kappa_telemetry::span!("specialize", kappa.instance.id = %instance.id, otel.status_code = tracing::field::Empty)
        } else {
            tracing::Span::none()
        };
        let specializing = Instant::now();
        let outcome = tokio::time::timeout(
            timeout,
            self.inner
                .backend
                .specialize(&instance, &request)
                .instrument(specialize_span.clone()),
        )
        .await;
        self.inner
            .metrics
            .phase(fid, "specialize", specializing.elapsed().as_secs_f64());
        if !matches!(outcome, Ok(Ok(()))) {
            specialize_span.record("otel.status_code", "ERROR");
        }
        drop(specialize_span);
        let error = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(BackendError::Timeout(format!(
                "no answer within {} s",
                timeout.as_secs()
            ))),
        };
        if let Some(error) = error {
            let exit = {
                let mut st = self.state();
                if st.owners.remove(&instance.id).is_some() {
                    st.total = st.total.saturating_sub(1);
                }
                st.exits.remove(&instance.id)
            };
            let _ = self
                .inner
                .backend
                .delete(&instance.id, Duration::ZERO)
                .await;
            return Err(match (error, exit) {
                (BackendError::Timeout(_), _) => ProvisionError::Timeout(timeout),
                (
                    BackendError::Specialize {
                        message, detail, ..
                    },
                    None,
                ) => ProvisionError::Specialize { message, detail },
                (other, Some(reason)) => ProvisionError::Specialize {
                    message: format!("instance {} {reason} during specialization", instance.id),
                    detail: Some(other.to_string()),
                },
                (other, None) => ProvisionError::Specialize {
                    message: other.to_string(),
                    detail: None,
                },
            });
        }
        let endpoint = Arc::new(Endpoint::new(
            instance.id.clone(),
            instance.addr,
            generation,
            function.spec.requests_per_pod,
        ));
        {
            let mut st = self.state();
            if st.owners.get(&instance.id) != Some(&Owner::Specializing(fid.clone())) {
                // It ended while we were specializing it.
                let reason = st.exits.remove(&instance.id).unwrap_or_default();
                if st.owners.remove(&instance.id).is_some() {
                    st.total = st.total.saturating_sub(1);
                }
                return Err(ProvisionError::Specialize {
                    message: format!(
                        "instance {} {reason} right after specialization",
                        instance.id
                    ),
                    detail: None,
                });
            }
            st.owners
                .insert(instance.id.clone(), Owner::Function(fid.clone()));
            st.functions
                .entry(fid.clone())
                .or_default()
                .instances
                .insert(
                    instance.id.clone(),
                    FnInstance {
                        endpoint: Arc::clone(&endpoint),
                        env_generation,
                        config,
                        drain_deadline: None,
                    },
                );
        }
        self.inner.index.insert(fid, endpoint);
        tracing::info!(function = %fid, instance = %instance.id, generation, "instance specialized");
        if function.status.last_error.is_some() {
            self.record_error(fid, None).await;
        }
        Ok(())
    }

    /// Writes (or clears) the function's `status.lastError` so `kappa fn get` shows it.
    async fn record_error(&self, fid: &FunctionId, error: Option<String>) {
        // A kept version is immutable: its errors reach the caller only.
        if kappa_types::parse_version_object_name(&fid.name).is_some() {
            return;
        }
        let status = serde_json::json!({ "lastError": error });
        if let Err(e) = self
            .inner
            .store
            .put_status(
                Kind::Function,
                &fid.namespace,
                &fid.name,
                status,
                Precondition::MustExist,
            )
            .await
        {
            tracing::debug!(function = %fid, error = %e, "could not record the function's status");
        }
    }
}

#[async_trait]
impl InstanceLister for PoolManager {
    async fn instances(&self) -> Result<Vec<InstanceInfo>, String> {
        Ok(PoolManager::instances(self))
    }
}

#[async_trait]
impl Provisioner for PoolManager {
    async fn provision(
        &self,
        function: &FunctionId,
        generation: i64,
    ) -> Result<Provision, ProvisionError> {
        if self.inner.shutdown.is_cancelled() {
            return Err(ProvisionError::Unavailable(
                "the platform is shutting down".into(),
            ));
        }
        let f = self.load_function(function).await?;
        let current = generation_of(&f.metadata);
        if current != generation {
            // The caller's route table is behind (or ahead of) the store by a moment: let it
            // catch up rather than specialize code it would not use.
            tokio::time::sleep(Duration::from_millis(10)).await;
            return Ok(Provision::Added);
        }
        if let Some(error) = self.recent_failure(function, generation) {
            return Err(error);
        }
        if self.uses_deployments(&f) {
            return self.provision_deployed(function, &f, generation).await;
        }
        self.note_arrival(function);
        let timeout = Duration::from_secs(f.spec.specialization_timeout);
        let Some(mut done) = self.begin_specialization(function, f, generation, true) else {
            return Ok(Provision::AtCapacity);
        };
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if let Some(result) = done.borrow_and_update().clone() {
                    return result;
                }
                if done.changed().await.is_err() {
                    return Err(ProvisionError::Unavailable(
                        "specialization was abandoned".into(),
                    ));
                }
            }
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(Provision::Added),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ProvisionError::Timeout(timeout)),
        }
    }
}

/// Whether a function may reach addresses outside the machine: its own `egress`, else its
/// environment's, else yes.
pub(crate) fn egress_of(function: &Function, env: &Environment) -> bool {
    function.spec.egress.or(env.spec.egress).unwrap_or(true)
}
