//! The trigger manager: keeps one worker per MessageQueueTrigger and TimeTrigger in the store,
//! started, restarted and stopped as the triggers (and their functions' timeouts) change.
//!
//! It follows the store through the typed watch cache (`kappa_store::WatchCache`: list, watch,
//! list again when the watch falls behind), like the pool manager's cache and the router. A worker is restarted only when what it runs with changes (the spec, the
//! function timeout, the broker URL); status writes do not restart anything. Workers own their
//! trigger's status. A message-queue worker connects with backoff: an unreachable broker shows
//! as `state: error` with the reason, and never blocks the API, which accepted the trigger.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use kappa_core::FunctionId;
use kappa_store::{CacheEvent, Decode, Item, ObjectKey, Store, StoredObject, WatchCache};
use kappa_types::{
    Function, Kind, MessageQueueTrigger, MessageQueueTriggerSpec, Secret, TimeTrigger,
    TimeTriggerSpec, ValidationError,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Connector, ConsumerSpec, DefaultConnector};
use crate::dispatch::{Backoff, DispatchConfig, Dispatcher, Invoke, Target};
use crate::metrics::TriggerMetrics;
use crate::status::{self, StatusWriter};
use crate::timer::{self, TimerContext};

/// The platform defaults and tuning of the trigger workers.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// The NATS server of triggers without `metadata.url`.
    pub nats_url: String,
    /// The Redis server of triggers without `metadata.url`.
    pub redis_url: String,
    /// The Kafka cluster of triggers without `metadata.bootstrapServers` (or `brokers`, `url`).
    pub kafka_url: String,
    /// How messages are dispatched.
    pub dispatch: DispatchConfig,
    /// Delays between attempts to connect to a broker.
    pub reconnect: Backoff,
}

/// `nats://127.0.0.1:4222`.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";
/// `redis://127.0.0.1:6379`.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// `kafka://127.0.0.1:9092`.
pub const DEFAULT_KAFKA_URL: &str = "kafka://127.0.0.1:9092";

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_NATS_URL.into(),
            redis_url: DEFAULT_REDIS_URL.into(),
            kafka_url: DEFAULT_KAFKA_URL.into(),
            dispatch: DispatchConfig::default(),
            reconnect: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(30),
            },
        }
    }
}

/// The consumer name of a trigger: `kappa-<namespace>-<trigger>`.
pub fn durable_name(namespace: &str, trigger: &str) -> String {
    format!("kappa-{namespace}-{trigger}")
}

/// The function timeout used when the function is unknown.
const DEFAULT_FUNCTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Added to the function timeout for the broker's ack wait.
const ACK_WAIT_MARGIN: Duration = Duration::from_secs(10);

/// Runs the trigger workers.
pub struct TriggerManager {
    config: ManagerConfig,
    store: Arc<dyn Store>,
    invoker: Arc<dyn Invoke>,
    connector: Arc<dyn Connector>,
    metrics: TriggerMetrics,
}

/// Identifies a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    kind: Kind,
    namespace: String,
    name: String,
}

/// What a worker runs with; a change restarts it.
#[derive(Debug, Clone, PartialEq)]
enum Plan {
    Queue {
        spec: MessageQueueTriggerSpec,
        url: String,
        function_timeout: Duration,
    },
    Timer {
        spec: TimeTriggerSpec,
        function_timeout: Duration,
    },
}

struct Worker {
    plan: Plan,
    stop: CancellationToken,
    handle: JoinHandle<()>,
}

/// The triggers and functions as last seen in the store.
#[derive(Default)]
struct Seen {
    queues: BTreeMap<(String, String), MessageQueueTrigger>,
    timers: BTreeMap<(String, String), TimeTrigger>,
    timeouts: HashMap<FunctionId, Duration>,
    /// `url` of Secrets, by (namespace, name): broker URLs with credentials.
    secret_urls: HashMap<(String, String), String>,
}

impl TriggerManager {
    /// A manager with the real brokers.
    pub fn new(config: ManagerConfig, store: Arc<dyn Store>, invoker: Arc<dyn Invoke>) -> Self {
        Self {
            config,
            store,
            invoker,
            connector: Arc::new(DefaultConnector),
            metrics: TriggerMetrics::default(),
        }
    }

    /// Registers the workers' metrics (`kappa_triggers_*`) in `registry`. Without it they are
    /// recorded in no registry.
    pub fn with_metrics(self, registry: &mut prometheus_client::registry::Registry) -> Self {
        self.with_registered_metrics(TriggerMetrics::new(registry))
    }

    /// Records the workers' metrics in `metrics`, registered beforehand (for a caller whose
    /// registry is handed on before the manager is built).
    pub fn with_registered_metrics(mut self, metrics: TriggerMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Uses `connector` to reach brokers (tests pass a fake).
    pub fn with_connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = connector;
        self
    }

    /// Runs until `shutdown`, then stops every worker (waiting for them).
    pub async fn run(self, shutdown: CancellationToken) {
        let this = Arc::new(self);
        let mut workers: HashMap<Key, Worker> = HashMap::new();
        // `Seen` holds the objects: the watch cache keeps only their versions.
        let mut cache = WatchCache::<Watched>::new(Arc::clone(&this.store)).events_only();
        let mut seen = Seen::default();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                event = cache.next() => event,
            };
            match event {
                CacheEvent::Listed(items) => {
                    seen = Seen::default();
                    for item in items {
                        seen.insert(item);
                    }
                }
                CacheEvent::Applied(item) => seen.insert(item),
                CacheEvent::Removed(key) => seen.remove(key),
                CacheEvent::Replayed(_) => continue,
            }
            this.reconcile(&seen, &mut workers);
        }
        for worker in workers.values() {
            worker.stop.cancel();
        }
        for (_, worker) in workers {
            let _ = worker.handle.await;
        }
    }

    /// What the trigger's worker runs with.
    fn plans(&self, seen: &Seen) -> BTreeMap<Key, Plan> {
        let timeout_of = |ns: &str, function: &str| {
            seen.timeouts
                .get(&FunctionId::new(ns, function))
                .copied()
                .unwrap_or(DEFAULT_FUNCTION_TIMEOUT)
        };
        let mut plans = BTreeMap::new();
        for ((ns, name), t) in &seen.queues {
            let url = t
                .spec
                .secret
                .as_ref()
                .and_then(|s| seen.secret_urls.get(&(ns.clone(), s.clone())).cloned())
                .or_else(|| broker_url_of(&t.spec))
                .unwrap_or_else(|| match t.spec.message_queue_type.as_str() {
                    "redis" => self.config.redis_url.clone(),
                    "kafka" => self.config.kafka_url.clone(),
                    _ => self.config.nats_url.clone(),
                });
            plans.insert(
                Key {
                    kind: Kind::MessageQueueTrigger,
                    namespace: ns.clone(),
                    name: name.clone(),
                },
                Plan::Queue {
                    spec: t.spec.clone(),
                    url,
                    function_timeout: timeout_of(ns, &t.spec.functionref.name),
                },
            );
        }
        for ((ns, name), t) in &seen.timers {
            plans.insert(
                Key {
                    kind: Kind::TimeTrigger,
                    namespace: ns.clone(),
                    name: name.clone(),
                },
                Plan::Timer {
                    spec: t.spec.clone(),
                    function_timeout: timeout_of(ns, &t.spec.functionref.name),
                },
            );
        }
        plans
    }

    /// Starts, restarts and stops workers so that each trigger has one running its plan.
    fn reconcile(self: &Arc<Self>, seen: &Seen, workers: &mut HashMap<Key, Worker>) {
        let plans = self.plans(seen);
        let gone: Vec<Key> = workers
            .keys()
            .filter(|k| !plans.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(worker) = workers.remove(&key) {
                tracing::info!(kind = %key.kind, namespace = %key.namespace, trigger = %key.name, "trigger deleted; stopping its worker");
                worker.stop.cancel();
                self.forget_consumer(&key, &worker.plan, worker.handle);
            }
        }
        for (key, plan) in plans {
            if let Some(worker) = workers.get(&key) {
                if worker.plan == plan {
                    continue;
                }
                tracing::info!(kind = %key.kind, namespace = %key.namespace, trigger = %key.name, "trigger changed; restarting its worker");
            } else {
                tracing::info!(kind = %key.kind, namespace = %key.namespace, trigger = %key.name, "starting a trigger worker");
            }
            if let Some(old) = workers.remove(&key) {
                old.stop.cancel();
                // A consumer on another broker, URL or topic is left behind: remove it.
                if consumer_identity(&old.plan) != consumer_identity(&plan) {
                    self.forget_consumer(&key, &old.plan, old.handle);
                }
            }
            let stop = CancellationToken::new();
            let handle = match &plan {
                Plan::Queue {
                    url,
                    function_timeout,
                    ..
                } => {
                    let Some(trigger) = seen
                        .queues
                        .get(&(key.namespace.clone(), key.name.clone()))
                        .cloned()
                    else {
                        continue;
                    };
                    let this = Arc::clone(self);
                    let url = url.clone();
                    let timeout = *function_timeout;
                    let token = stop.clone();
                    tokio::spawn(async move { this.run_queue(trigger, url, timeout, token).await })
                }
                Plan::Timer {
                    function_timeout, ..
                } => {
                    let Some(trigger) = seen
                        .timers
                        .get(&(key.namespace.clone(), key.name.clone()))
                        .cloned()
                    else {
                        continue;
                    };
                    let ctx = Arc::new(TimerContext {
                        store: Arc::clone(&self.store),
                        invoker: Arc::clone(&self.invoker),
                        metrics: self.metrics.clone(),
                    });
                    tokio::spawn(timer::run(trigger, *function_timeout, ctx, stop.clone()))
                }
            };
            workers.insert(key, Worker { plan, stop, handle });
        }
    }

    /// Removes the durable consumer of a deleted (or moved) message-queue trigger, once its
    /// worker stopped. Best effort and bounded: a broker that is down keeps the consumer.
    fn forget_consumer(&self, key: &Key, plan: &Plan, handle: JoinHandle<()>) {
        let Plan::Queue { spec, url, .. } = plan else {
            return;
        };
        let connector = Arc::clone(&self.connector);
        let spec = spec.clone();
        let url = url.clone();
        let consumer = consumer_spec(&key.namespace, &key.name, &spec, Duration::ZERO);
        tokio::spawn(async move {
            let _ = handle.await;
            let removed = tokio::time::timeout(Duration::from_secs(10), async {
                let broker = connector.connect(&spec.message_queue_type, &url).await?;
                broker.remove(&consumer).await
            })
            .await;
            match removed {
                Ok(Ok(())) => {
                    tracing::info!(consumer = %consumer.durable_name, "removed the consumer of a deleted trigger")
                }
                Ok(Err(e)) => {
                    tracing::warn!(consumer = %consumer.durable_name, error = %e, "removing the consumer of a deleted trigger failed")
                }
                Err(_) => {
                    tracing::warn!(consumer = %consumer.durable_name, "removing the consumer of a deleted trigger timed out")
                }
            }
        });
    }

    /// The worker of one message-queue trigger: connect, subscribe, dispatch; again with
    /// backoff after any failure, until stopped.
    async fn run_queue(
        self: Arc<Self>,
        trigger: MessageQueueTrigger,
        url: String,
        function_timeout: Duration,
        stop: CancellationToken,
    ) {
        let ns = trigger.metadata.namespace.clone();
        let name = trigger.metadata.name.clone();
        let spec = &trigger.spec;
        let mut status = StatusWriter::new(
            Arc::clone(&self.store),
            Kind::MessageQueueTrigger,
            &ns,
            &name,
            trigger.status.clone(),
        );
        let consumer = consumer_spec(&ns, &name, spec, function_timeout);
        let target = Target::of(&trigger, function_timeout);
        let shown_url = redact(&url);
        let mut failures = 0u32;
        status
            .set(
                status::PENDING,
                format!("connecting to {} at {shown_url}", spec.message_queue_type),
            )
            .await;
        loop {
            let attempt = async {
                let broker: Arc<dyn Broker> = self
                    .connector
                    .connect(&spec.message_queue_type, &url)
                    .await?;
                let subscription = broker.subscribe(&consumer).await?;
                Ok::<_, crate::BrokerError>((broker, subscription))
            };
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                r = attempt => r,
            };
            let error = match connected {
                Ok((broker, subscription)) => {
                    failures = 0;
                    status
                        .set(
                            status::READY,
                            format!("consuming {:?} from {shown_url}", spec.topic),
                        )
                        .await;
                    tracing::info!(trigger = %name, namespace = %ns, topic = %spec.topic, url = %shown_url, "consuming");
                    let dispatcher = Dispatcher::new(
                        target.clone(),
                        Arc::clone(&self.invoker),
                        broker,
                        self.config.dispatch.clone(),
                    )
                    .with_metrics(self.metrics.clone());
                    let consuming = self.metrics.consuming();
                    let ended = dispatcher.run(subscription, stop.clone()).await;
                    drop(consuming);
                    match ended {
                        Ok(()) => return,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            failures = failures.saturating_add(1);
            let delay = self.config.reconnect.delay(failures);
            tracing::warn!(trigger = %name, namespace = %ns, error = %error, retry_in_s = delay.as_secs_f64(), "message queue trigger is not consuming");
            status
                .set(
                    status::ERROR,
                    format!(
                        "{error} (retrying every {} s at most)",
                        self.config.reconnect.max.as_secs()
                    ),
                )
                .await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// The broker URL a trigger's `metadata` names: `url`, or for Kafka Fission's and KEDA's
/// `bootstrapServers` (or `brokers`), `host:port[,host:port...]`.
fn broker_url_of(spec: &MessageQueueTriggerSpec) -> Option<String> {
    let keys: &[&str] = match spec.message_queue_type.as_str() {
        "kafka" => &["bootstrapServers", "brokers", "url"],
        _ => &["url"],
    };
    keys.iter()
        .find_map(|k| spec.metadata.get(*k))
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
}

/// What identifies a trigger's consumer on the broker.
fn consumer_identity(plan: &Plan) -> Option<(String, String, String, Option<String>)> {
    match plan {
        Plan::Queue { spec, url, .. } => Some((
            spec.message_queue_type.clone(),
            url.clone(),
            spec.topic.clone(),
            spec.metadata
                .get("stream")
                .or_else(|| spec.metadata.get("consumerGroup"))
                .cloned(),
        )),
        Plan::Timer { .. } => None,
    }
}

/// The consumer of trigger `namespace/name`.
pub fn consumer_spec(
    namespace: &str,
    name: &str,
    spec: &MessageQueueTriggerSpec,
    function_timeout: Duration,
) -> ConsumerSpec {
    ConsumerSpec {
        durable_name: durable_name(namespace, name),
        topic: spec.topic.clone(),
        max_in_flight: spec.max_concurrency.max(1),
        // The dispatcher gives up on an invocation after the timeout plus 5 s; the broker
        // waits a little longer before it hands the message to someone else.
        ack_wait: function_timeout + ACK_WAIT_MARGIN,
        metadata: spec.metadata.clone(),
    }
}

/// A URL without its password, for status and logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// What the trigger manager reads from the store.
#[derive(Debug, Clone)]
enum Watched {
    Queue(Box<MessageQueueTrigger>),
    Timer(Box<TimeTrigger>),
    /// A function's timeout.
    Function(Duration),
    /// A Secret's `url` (a broker URL with credentials), if it has one; nothing else of it is
    /// read.
    SecretUrl(Option<String>),
}

impl Decode for Watched {
    fn kinds() -> Vec<Kind> {
        vec![
            Kind::MessageQueueTrigger,
            Kind::TimeTrigger,
            Kind::Function,
            Kind::Secret,
        ]
    }

    fn decode(object: StoredObject) -> Result<Self, ValidationError> {
        Ok(match object.kind {
            Kind::MessageQueueTrigger => {
                Self::Queue(Box::new(MessageQueueTrigger::from_json(object.value)?))
            }
            Kind::TimeTrigger => Self::Timer(Box::new(TimeTrigger::from_json(object.value)?)),
            Kind::Secret => {
                let s = Secret::from_json(object.value)?;
                Self::SecretUrl(s.spec.string_data.get("url").cloned().or_else(|| {
                    s.spec.data.get("url").and_then(|b64| {
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                    })
                }))
            }
            _ => {
                let f = Function::from_json(object.value)?;
                Self::Function(Duration::from_secs(f.spec.function_timeout.max(1)))
            }
        })
    }
}

impl Seen {
    fn insert(&mut self, item: Item<Watched>) {
        let key = (item.key.namespace, item.key.name);
        match Arc::unwrap_or_clone(item.value) {
            Watched::Queue(t) => {
                self.queues.insert(key, *t);
            }
            Watched::Timer(t) => {
                self.timers.insert(key, *t);
            }
            Watched::Function(timeout) => {
                self.timeouts.insert(FunctionId::new(key.0, key.1), timeout);
            }
            Watched::SecretUrl(Some(url)) => {
                self.secret_urls.insert(key, url.trim().to_string());
            }
            Watched::SecretUrl(None) => {
                self.secret_urls.remove(&key);
            }
        }
    }

    /// A deleted object, or one that no longer parses (the watch cache logged it).
    fn remove(&mut self, key: ObjectKey) {
        let kind = key.kind;
        let key = (key.namespace, key.name);
        match kind {
            Kind::MessageQueueTrigger => {
                self.queues.remove(&key);
            }
            Kind::TimeTrigger => {
                self.timers.remove(&key);
            }
            Kind::Function => {
                self.timeouts.remove(&FunctionId::new(key.0, key.1));
            }
            _ => {
                self.secret_urls.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("nats://u:p@host:4222"), "nats://***@host:4222");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
