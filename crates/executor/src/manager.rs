//! The pool manager proper: its state, its constructor and the run loop. The work is split
//! by responsibility, each module adding methods to [`PoolManager`]:
//!
//! - `reconcile`: the reconcile pass, which runs the pool and reaping halves then acts;
//! - `pools`: pool sizes and rolls, starting warm instances and taking one from a pool;
//! - `reaping`: function instances rolled, drained, reaped when idle, `minScale` kept;
//! - `demand` and `adaptive`: the adaptive pool policy (sizes and keep-alive from demand);
//! - `specialize`: a miss (`Provisioner::provision`) and specializing an instance for it;
//! - `archive`: resolving a function's deployment archive (and a kept version's package);
//! - `config`: reading the function, its environment, secrets, config maps and volumes;
//! - `adoption`: taking over a previous pool manager's instances at start;
//! - `exits`: instances that end on their own (backend events);
//! - `deployed`: functions run as deployments (`newdeploy`);
//! - `status`: instance lists, the debug snapshot and gauges.

mod adaptive;
mod adoption;
mod archive;
mod config;
mod demand;
mod deployed;
mod exits;
mod pools;
mod reaping;
mod reconcile;
mod specialize;
mod status;

pub use adaptive::AdaptiveConfig;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use kappa_archive::ArchiveStore;
use kappa_core::{
    Backend, ConfigKind, Deployments, Endpoint, EndpointIndex, ExitReason, FunctionId, Instance,
    Limits, ProvisionError,
};
use kappa_store::Store;
use kappa_types::{Environment, Function, Resources};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cache::{Cache, ConfigRef};
use crate::metrics::Metrics;

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
}

/// Whether a function may reach addresses outside the machine: its own `egress`, else its
/// environment's, else yes.
pub(crate) fn egress_of(function: &Function, env: &Environment) -> bool {
    function.spec.egress.or(env.spec.egress).unwrap_or(true)
}
