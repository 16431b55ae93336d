//! Kafka: the topic is a Kafka topic, each trigger a consumer group.
//!
//! Records are produced and fetched with `rskafka` (pure Rust, tokio, no C library to build);
//! it has no consumer groups, so Kappa keeps the group's offsets itself, in the cluster, through
//! the group coordinator ([`group`]: `OffsetFetch`/`OffsetCommit` as a standalone member).
//!
//! - The group is `metadata.consumerGroup`, else `kappa-<namespace>-<trigger>`. Kappa reads
//!   every partition of the topic (one process runs the triggers; there is no rebalancing
//!   between several consumers of a group).
//! - A partition starts at the group's committed offset; without one at the earliest offset
//!   (`metadata.offsetResetPolicy: latest` starts at the end instead), so records produced
//!   before the trigger was ready are processed too.
//! - Each partition is fetched in offset order and its records are handed out in that order;
//!   at most `max_in_flight` records of the trigger are out at once (a record waiting for its
//!   retry counts), so with `maxConcurrency` 1 a partition is processed strictly in order.
//! - The committed offset of a partition is its lowest unsettled offset (or the next one to
//!   fetch): a record is committed only once it and every record before it are settled. The
//!   commit runs every [`COMMIT_EVERY`] and when the subscription ends; a kill before it means
//!   redelivery (at least once).
//! - Kafka has no delivery count. How far records were handed out is committed, before they
//!   are, as the offsets of a second group, `<group>.delivered` (commit metadata would do, but
//!   not every Kafka-protocol broker keeps it); after a restart a record below that mark is
//!   delivered with attempt 2 (it may have been processed). The mark runs up to
//!   [`MARK_AHEAD`] records (or `maxConcurrency`, when larger) ahead, within the fetched
//!   batch, so it costs one commit per that many records rather than one per record.
//! - Replies and error-topic records ([`Broker::publish`]) go through one producer task per
//!   partition: what is published while its produce requests are out (at most
//!   [`PRODUCES_IN_FLIGHT`]) goes together in the next one, so concurrent replies share a
//!   request and its acknowledgement. Each publish still returns only once the broker
//!   acknowledged its batch.
//! - A nak keeps the record (and its in-flight slot) and hands it out again after the delay.
//! - A missing topic is created (1 partition); a missing response or error topic too.
//! - Headers: record headers are message headers; a record key is the header `X-Kafka-Key`.
//!   [`Broker::publish`] makes a header `X-Kafka-Key` the record key and picks the partition by
//!   the key (murmur2, like Kafka's Java client), else the source partition of
//!   `X-Kappa-Message-Id` (`<partition>:<offset>`, so replies keep a partition's order), else
//!   round robin.

mod group;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rskafka::BackoffConfig;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::{Record, RecordAndOffset};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::{CancellationToken, DropGuard};

pub use group::{Committed, GroupClient};

use crate::broker::{
    Broker, BrokerError, ConsumerSpec, Delivery, Header, Message, Settle, Subscription,
};

/// The header that carries a record's key.
pub const KEY_HEADER: &str = "X-Kafka-Key";
/// How often settled offsets are committed.
pub const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The most bytes one fetch asks for (a larger single record is still returned).
const FETCH_MAX_BYTES: i32 = 4 << 20;
/// How long a fetch waits on the broker for new records.
const FETCH_WAIT_MS: i32 = 500;
/// The suffix of the group that records how far records were handed out.
pub const DELIVERED_SUFFIX: &str = ".delivered";
/// Commit failures in a row before the subscription reports itself broken.
const MAX_COMMIT_FAILURES: u32 = 5;
/// How many records the delivered mark runs ahead of the record handed out (at least).
pub const MARK_AHEAD: i64 = 64;
/// The most records one produce request of the batching producer carries.
const PRODUCE_BATCH_RECORDS: usize = 500;
/// The most value bytes one produce request gathers (a larger single record goes alone).
const PRODUCE_BATCH_BYTES: usize = 512 << 10;
/// Produce requests of one partition out at once.
const PRODUCES_IN_FLIGHT: usize = 4;
/// How long a publish (topic lookup, partition client, produce) may wait for the broker
/// before it is an error. The client's own retries do not end while a broker stays away, so
/// without this a reply to a gone broker would wait for ever and hold its message.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// `metadata` keys a Kafka trigger understands.
pub const METADATA_KEYS: [&str; 6] = [
    "url",
    "bootstrapServers",
    "brokers",
    "consumerGroup",
    "topic",
    "offsetResetPolicy",
];
/// Keys of KEDA's Kafka scaler that tune how KEDA scales Fission's connector Deployment. Kappa
/// runs one consumer per trigger and never scales it by lag, so they have nothing to set; they
/// are accepted so that Fission triggers move over unchanged.
pub const KEDA_SCALING_KEYS: [&str; 7] = [
    "lagThreshold",
    "activationLagThreshold",
    "allowIdleConsumers",
    "scaleToZeroOnInvalidOffset",
    "excludePersistentLag",
    "limitToPartitionsWithLag",
    "partitionLimitation",
];

/// Where a Kafka cluster is: its bootstrap servers and SASL/PLAIN credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// `host:port` of each bootstrap server.
    pub servers: Vec<String>,
    /// User and password (SASL/PLAIN), from `kafka://user:password@host:port`.
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for KafkaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaUrl")
            .field("servers", &self.servers)
            .field("credentials", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl KafkaUrl {
    /// Parses `kafka://[user:password@]host:port[,host:port...]`, or Fission's and KEDA's
    /// `bootstrapServers` form `host:port[,host:port...]`. TLS is not supported.
    pub fn parse(url: &str) -> Result<Self, BrokerError> {
        let bad = |why: &str| {
            BrokerError::Config(format!(
                "Kafka URL {:?}: {why}: expected kafka://[user:password@]host:port[,host:port...] or host:port[,host:port...]",
                redact(url)
            ))
        };
        let url = url.trim();
        let rest = match url.split_once("://") {
            Some(("kafka" | "tcp" | "plaintext", rest)) => rest,
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "scheme {scheme:?} is not supported (TLS is not; use kafka://)"
                )));
            }
            None => url,
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, hosts) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((user.to_string(), password.to_string())), hosts)
            }
            None => (None, rest),
        };
        let mut servers = Vec::new();
        for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            let ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(bad(&format!("{host:?} is not host:port")));
            }
            servers.push(host.to_string());
        }
        if servers.is_empty() {
            return Err(bad("no bootstrap server"));
        }
        Ok(Self {
            servers,
            credentials,
        })
    }
}

fn redact(url: &str) -> String {
    match url.rfind('@') {
        Some(at) => match url.find("://") {
            Some(s) if s < at => format!("{}://***@{}", &url[..s], &url[at + 1..]),
            _ => format!("***@{}", &url[at + 1..]),
        },
        None => url.to_string(),
    }
}

/// Partition clients by (topic, partition).
type PartitionClients = HashMap<(String, i32), Arc<PartitionClient>>;

/// A record to produce and who waits for the broker's answer.
type ProduceRequest = (Record, oneshot::Sender<Result<(), String>>);

/// The batching producers by (topic, partition): each the sending side of its task's queue.
type Producers = HashMap<(String, i32), mpsc::UnboundedSender<ProduceRequest>>;

/// A connection to a Kafka cluster.
#[derive(Clone)]
pub struct KafkaBroker {
    client: Arc<Client>,
    url: KafkaUrl,
    shown: String,
    /// Partition clients by (topic, partition).
    partitions: Arc<Mutex<PartitionClients>>,
    /// The batching producer of each partition published to.
    producers: Arc<Mutex<Producers>>,
    /// Partition counts of topics published to.
    counts: Arc<Mutex<HashMap<String, i32>>>,
    round_robin: Arc<AtomicUsize>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl KafkaBroker {
    /// Connects to the cluster of `url` (see [`KafkaUrl::parse`]) and reads its metadata.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        let parsed = KafkaUrl::parse(url)?;
        let shown = redact(url);
        let mut builder = ClientBuilder::new(parsed.servers.clone())
            .client_id("kappa")
            .backoff_config(BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
                deadline: Some(Duration::from_secs(15)),
            });
        if let Some((user, password)) = &parsed.credentials {
            builder = builder.sasl_config(SaslConfig::Plain(Credentials::new(
                user.clone(),
                password.clone(),
            )));
        }
        let client = tokio::time::timeout(Duration::from_secs(20), builder.build())
            .await
            .map_err(|_| {
                BrokerError::Connect(format!("connecting to Kafka at {shown}: timed out"))
            })?
            .map_err(|e| BrokerError::Connect(format!("connecting to Kafka at {shown}: {e}")))?;
        let broker = Self {
            client: Arc::new(client),
            url: parsed,
            shown,
            partitions: Arc::default(),
            producers: Arc::default(),
            counts: Arc::default(),
            round_robin: Arc::default(),
        };
        broker
            .client
            .list_topics()
            .await
            .map_err(|e| broker.err(BrokerError::Connect, "reading the cluster metadata", &e))?;
        Ok(broker)
    }

    fn err(
        &self,
        kind: fn(String) -> BrokerError,
        what: &str,
        e: &dyn std::fmt::Display,
    ) -> BrokerError {
        kind(format!("{what} on Kafka at {}: {e}", self.shown))
    }

    /// The partitions of `topic`, creating it (with one partition) when it does not exist.
    pub async fn ensure_topic(&self, topic: &str) -> Result<Vec<i32>, BrokerError> {
        for _ in 0..20 {
            let topics = self
                .client
                .list_topics()
                .await
                .map_err(|e| self.err(BrokerError::Setup, "listing topics", &e))?;
            if let Some(t) = topics.into_iter().find(|t| t.name == topic)
                && !t.partitions.is_empty()
            {
                return Ok(t.partitions.into_iter().collect());
            }
            let controller = self
                .client
                .controller_client()
                .map_err(|e| self.err(BrokerError::Setup, "reaching the controller", &e))?;
            match controller.create_topic(topic, 1, 1, 5_000).await {
                Ok(()) => tracing::info!(topic, "created the Kafka topic"),
                Err(KafkaError::ServerError {
                    protocol_error: ProtocolError::TopicAlreadyExists,
                    ..
                }) => {}
                Err(e) => {
                    return Err(self.err(
                        BrokerError::Setup,
                        &format!("creating topic {topic:?}"),
                        &e,
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BrokerError::Setup(format!(
            "topic {topic:?} on Kafka at {} has no partitions after it was created",
            self.shown
        )))
    }

    async fn partition(&self, topic: &str, partition: i32) -> Result<Arc<PartitionClient>, String> {
        let key = (topic.to_string(), partition);
        if let Some(c) = self
            .partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(Arc::clone(c));
        }
        let client = self
            .client
            .partition_client(topic, partition, UnknownTopicHandling::Retry)
            .await
            .map_err(|e| e.to_string())?;
        let client = Arc::new(client);
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::clone(&client));
        Ok(client)
    }

    /// The batching producer of `partition` of `topic`, started on first use.
    async fn producer(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<mpsc::UnboundedSender<ProduceRequest>, String> {
        let key = (topic.to_string(), partition);
        if let Some(tx) = self
            .producers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .filter(|tx| !tx.is_closed())
        {
            return Ok(tx.clone());
        }
        let client = self.partition(topic, partition).await?;
        let mut producers = self
            .producers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = producers.get(&key).filter(|tx| !tx.is_closed()) {
            return Ok(tx.clone());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(produce_loop(client, rx));
        producers.insert(key, tx.clone());
        Ok(tx)
    }

    async fn partition_count(&self, topic: &str) -> Result<i32, BrokerError> {
        if let Some(n) = self
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(topic)
        {
            return Ok(*n);
        }
        let n = i32::try_from(self.ensure_topic(topic).await?.len()).unwrap_or(1);
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(topic.to_string(), n);
        Ok(n)
    }

    /// One publish, without [`PUBLISH_TIMEOUT`] (which [`Broker::publish`] puts around it).
    async fn publish_now(
        &self,
        topic: &str,
        headers: &[Header],
        body: Bytes,
    ) -> Result<(), BrokerError> {
        let count = self.partition_count(topic).await?;
        let key = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(KEY_HEADER))
            .map(|(_, v)| v.as_bytes().to_vec());
        let partition = pick_partition(key.as_deref(), headers, count, &self.round_robin);
        let record = Record {
            key,
            value: Some(body.to_vec()),
            headers: headers
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case(KEY_HEADER))
                .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
                .collect(),
            timestamp: chrono::Utc::now(),
        };
        let producer = self.producer(topic, partition).await.map_err(|e| {
            BrokerError::Publish(format!(
                "reaching partition {partition} of topic {topic:?} on Kafka at {}: {e}",
                self.shown
            ))
        })?;
        let (done, answer) = oneshot::channel();
        let failed = |e: &dyn std::fmt::Display| {
            self.err(
                BrokerError::Publish,
                &format!("producing to topic {topic:?} partition {partition}"),
                e,
            )
        };
        if producer.send((record, done)).is_err() {
            return Err(failed(&"the producer stopped"));
        }
        match answer.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(failed(&e)),
            Err(_) => Err(failed(&"the producer stopped")),
        }
    }

    /// The consumer group of `spec`.
    pub fn group_of(spec: &ConsumerSpec) -> String {
        spec.metadata
            .get("consumerGroup")
            .filter(|g| !g.trim().is_empty())
            .cloned()
            .unwrap_or_else(|| spec.durable_name.clone())
    }
}

/// Checks a Kafka trigger's `metadata`: known keys only, and values Kappa can use.
pub fn check_metadata(spec: &ConsumerSpec) -> Result<(), BrokerError> {
    for (key, value) in &spec.metadata {
        if KEDA_SCALING_KEYS.contains(&key.as_str()) {
            continue;
        }
        match key.as_str() {
            "topic" if value != &spec.topic => {
                return Err(BrokerError::Config(format!(
                    "metadata.topic {value:?} differs from spec.topic {:?}: give one topic",
                    spec.topic
                )));
            }
            "offsetResetPolicy" if !matches!(value.as_str(), "earliest" | "latest") => {
                return Err(BrokerError::Config(format!(
                    "metadata.offsetResetPolicy {value:?}: expected earliest or latest"
                )));
            }
            k if METADATA_KEYS.contains(&k) => {}
            other => {
                return Err(BrokerError::Config(format!(
                    "metadata.{other} is not a Kafka trigger setting: expected {} (or KEDA's scaling keys {})",
                    METADATA_KEYS.join(", "),
                    KEDA_SCALING_KEYS.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// Kafka's default partitioner hash (murmur2, as in the Java client).
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a published record goes to (see the module docs).
fn pick_partition(
    key: Option<&[u8]>,
    headers: &[Header],
    count: i32,
    round_robin: &AtomicUsize,
) -> i32 {
    let count = count.max(1);
    if let Some(key) = key {
        return i32::try_from((murmur2(key) & 0x7fff_ffff) % count.unsigned_abs()).unwrap_or(0);
    }
    let source = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("X-Kappa-Message-Id"))
        .and_then(|(_, v)| v.split_once(':'))
        .and_then(|(p, _)| p.parse::<i32>().ok())
        .filter(|p| *p >= 0);
    match source {
        Some(p) => p % count,
        None => {
            let n = round_robin.fetch_add(1, Ordering::Relaxed);
            i32::try_from(n % count.unsigned_abs() as usize).unwrap_or(0)
        }
    }
}

#[async_trait]
impl Broker for KafkaBroker {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BrokerError> {
        check_metadata(spec)?;
        let topic = spec.topic.clone();
        let partitions = self.ensure_topic(&topic).await?;
        let group_name = Self::group_of(spec);
        let mut group = GroupClient::new(self.url.servers.clone(), &group_name);
        let mut marks = GroupClient::new(
            self.url.servers.clone(),
            &format!("{group_name}{DELIVERED_SUFFIX}"),
        );
        let setup = |e: String| {
            BrokerError::Setup(format!("{e} (topic {topic:?}) on Kafka at {}", self.shown))
        };
        let committed = group.fetch(&topic, &partitions).await.map_err(setup)?;
        let marked = marks.fetch(&topic, &partitions).await.map_err(setup)?;
        let latest = spec.metadata.get("offsetResetPolicy").map(String::as_str) == Some("latest");
        let max_in_flight = spec.max_in_flight.max(1) as usize;
        let mut parts = BTreeMap::new();
        let mut clients = Vec::new();
        for p in &partitions {
            let client = self.partition(&topic, *p).await.map_err(|e| {
                BrokerError::Setup(format!(
                    "reaching partition {p} of topic {topic:?} on Kafka at {}: {e}",
                    self.shown
                ))
            })?;
            let (start, delivered) = match committed.get(p) {
                Some(c) => {
                    let delivered = marked.get(p).map_or(c.offset, |m| m.offset);
                    (c.offset, delivered.max(c.offset))
                }
                None => {
                    let at = if latest {
                        OffsetAt::Latest
                    } else {
                        OffsetAt::Earliest
                    };
                    let start = client.get_offset(at).await.map_err(|e| {
                        BrokerError::Setup(format!(
                            "reading the start of partition {p} of topic {topic:?} on Kafka at {}: {e}",
                            self.shown
                        ))
                    })?;
                    (start, start)
                }
            };
            tracing::info!(topic = %topic, group = %group_name, partition = p, offset = start, "consuming a partition");
            parts.insert(
                *p,
                PartState {
                    pending: BTreeSet::new(),
                    next: start,
                    delivered,
                    marked: delivered,
                    committed: committed.get(p).cloned(),
                },
            );
            clients.push((*p, client));
        }
        let (tx, rx) = mpsc::channel(max_in_flight);
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            topic,
            url: self.shown.clone(),
            parts: Mutex::new(parts),
            group: tokio::sync::Mutex::new(group),
            marks: tokio::sync::Mutex::new(marks),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            window: i64::try_from(max_in_flight).unwrap_or(1),
            tx,
            shutdown: shutdown.clone(),
        });
        for (p, client) in clients {
            tokio::spawn(fetch_loop(Arc::clone(&shared), p, client, latest));
        }
        tokio::spawn(commit_loop(Arc::clone(&shared)));
        Ok(Box::new(KafkaSubscription {
            rx,
            _stop: shutdown.drop_guard(),
        }))
    }

    async fn publish(
        &self,
        topic: &str,
        headers: &[Header],
        body: Bytes,
    ) -> Result<(), BrokerError> {
        tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_now(topic, headers, body))
            .await
            .unwrap_or_else(|_| {
                Err(self.err(
                    BrokerError::Publish,
                    &format!("publishing to topic {topic:?}"),
                    &format_args!("no answer within {} s", PUBLISH_TIMEOUT.as_secs()),
                ))
            })
    }

    async fn remove(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        let name = Self::group_of(spec);
        for group in [name.clone(), format!("{name}{DELIVERED_SUFFIX}")] {
            GroupClient::new(self.url.servers.clone(), &group)
                .delete()
                .await
                .map_err(|e| BrokerError::Setup(format!("{e} on Kafka at {}", self.shown)))?;
        }
        Ok(())
    }
}

/// What Kappa tracks of one partition.
#[derive(Debug)]
struct PartState {
    /// Offsets handed out and not settled.
    pending: BTreeSet<i64>,
    /// The next offset to fetch.
    next: i64,
    /// One past the highest offset handed out (or that may have been, before a restart).
    delivered: i64,
    /// What the delivered-marks group records as handed out: records below it count as
    /// redelivered after a restart.
    marked: i64,
    /// The last committed position.
    committed: Option<Committed>,
}

impl PartState {
    /// The position to commit: the lowest unsettled offset, else the next to fetch.
    fn position(&self) -> Committed {
        Committed {
            offset: self.pending.first().copied().unwrap_or(self.next),
            metadata: None,
        }
    }
}

struct Shared {
    topic: String,
    url: String,
    parts: Mutex<BTreeMap<i32, PartState>>,
    /// The group's coordinator connection (commits are serialised on it).
    group: tokio::sync::Mutex<GroupClient>,
    /// The delivered-marks group's.
    marks: tokio::sync::Mutex<GroupClient>,
    /// One permit per record handed out and not settled.
    slots: Arc<Semaphore>,
    /// How far ahead of a handed-out record a commit marks records as handed out.
    window: i64,
    tx: mpsc::Sender<Result<Delivery, BrokerError>>,
    shutdown: CancellationToken,
}

impl Shared {
    fn parts(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, PartState>> {
        self.parts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits every partition whose position changed since its last commit.
    async fn commit(&self) -> Result<(), String> {
        let mut group = self.group.lock().await;
        let due: BTreeMap<i32, Committed> = self
            .parts()
            .iter()
            .filter_map(|(p, s)| {
                let position = s.position();
                (s.committed.as_ref() != Some(&position)).then_some((*p, position))
            })
            .collect();
        if due.is_empty() {
            return Ok(());
        }
        group.commit(&self.topic, &due).await?;
        let mut parts = self.parts();
        for (p, c) in due {
            if let Some(s) = parts.get_mut(&p) {
                s.committed = Some(c);
            }
        }
        Ok(())
    }

    /// Before `offset` of `partition` is handed out: makes sure the delivered-marks group
    /// records it (and the next `window - 1`, at most up to `batch_end`) as handed out.
    async fn mark(&self, partition: i32, offset: i64, batch_end: i64) -> Result<(), String> {
        let mark = {
            let parts = self.parts();
            let Some(s) = parts.get(&partition) else {
                return Ok(());
            };
            if offset < s.marked {
                return Ok(());
            }
            (offset + self.window.max(MARK_AHEAD))
                .min(batch_end)
                .max(offset + 1)
        };
        let mut marks = self.marks.lock().await;
        let commit = BTreeMap::from([(
            partition,
            Committed {
                offset: mark,
                metadata: None,
            },
        )]);
        marks.commit(&self.topic, &commit).await?;
        if let Some(s) = self.parts().get_mut(&partition) {
            s.marked = s.marked.max(mark);
        }
        Ok(())
    }

    fn settle(&self, partition: i32, offset: i64) {
        if let Some(s) = self.parts().get_mut(&partition) {
            s.pending.remove(&offset);
        }
    }

    async fn deliver(
        self: &Arc<Self>,
        partition: i32,
        record: &RecordAndOffset,
        attempt: u32,
        permit: OwnedSemaphorePermit,
    ) -> bool {
        let message = to_message(&self.topic, partition, record, attempt);
        let settle = KafkaSettle {
            shared: Arc::clone(self),
            partition,
            record: record.clone(),
            attempt,
            permit: Some(permit),
        };
        self.tx
            .send(Ok(Delivery::new(message, Box::new(settle))))
            .await
            .is_ok()
    }
}

/// A record as a message: its value is the body, its headers the headers, its key the header
/// `X-Kafka-Key`; its id `<partition>:<offset>`.
fn to_message(topic: &str, partition: i32, record: &RecordAndOffset, attempt: u32) -> Message {
    let mut headers: Vec<Header> = Vec::with_capacity(record.record.headers.len() + 1);
    if let Some(key) = &record.record.key {
        headers.push((KEY_HEADER.into(), String::from_utf8_lossy(key).into_owned()));
    }
    headers.extend(
        record
            .record
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())),
    );
    Message {
        topic: topic.to_string(),
        id: format!("{partition}:{}", record.offset),
        headers,
        body: Bytes::from(record.record.value.clone().unwrap_or_default()),
        attempt,
    }
}

/// Fetches one partition in order and hands its records out, until the subscription ends.
async fn fetch_loop(
    shared: Arc<Shared>,
    partition: i32,
    client: Arc<PartitionClient>,
    latest: bool,
) {
    if let Err(e) = run_fetch(&shared, partition, &client, latest).await {
        let _ = shared.tx.send(Err(e)).await;
    }
}

async fn run_fetch(
    shared: &Arc<Shared>,
    partition: i32,
    client: &PartitionClient,
    latest: bool,
) -> Result<(), BrokerError> {
    let receive = |what: String, e: &dyn std::fmt::Display| {
        BrokerError::Receive(format!(
            "{what} (topic {:?}, partition {partition}) on Kafka at {}: {e}",
            shared.topic, shared.url
        ))
    };
    loop {
        let offset = match shared.parts().get(&partition) {
            Some(s) => s.next,
            None => return Ok(()),
        };
        let fetched = tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(()),
            r = client.fetch_records(offset, 1..FETCH_MAX_BYTES, FETCH_WAIT_MS) => r,
        };
        let records = match fetched {
            Ok((records, _high_watermark)) => records,
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                // The committed offset is gone (retention): start over where the policy says.
                let at = if latest {
                    OffsetAt::Latest
                } else {
                    OffsetAt::Earliest
                };
                let reset = client
                    .get_offset(at)
                    .await
                    .map_err(|e| receive("resetting an out-of-range offset".into(), &e))?;
                tracing::warn!(topic = %shared.topic, partition, from = offset, to = reset, "the committed offset is out of range; resetting");
                if let Some(s) = shared.parts().get_mut(&partition) {
                    s.next = reset;
                    s.delivered = s.delivered.max(reset);
                }
                continue;
            }
            Err(e) => return Err(receive(format!("fetching from offset {offset}"), &e)),
        };
        let mut records: Vec<RecordAndOffset> =
            records.into_iter().filter(|r| r.offset >= offset).collect();
        records.sort_by_key(|r| r.offset);
        let Some(batch_end) = records.last().map(|r| r.offset + 1) else {
            // Nothing new (the broker may answer before its wait is over).
            tokio::select! {
                () = shared.shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            continue;
        };
        for record in &records {
            let permit = tokio::select! {
                () = shared.shutdown.cancelled() => return Ok(()),
                p = Arc::clone(&shared.slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                },
            };
            let attempt = match shared.parts().get(&partition) {
                Some(s) if record.offset < s.delivered => 2,
                _ => 1,
            };
            shared
                .mark(partition, record.offset, batch_end)
                .await
                .map_err(|e| receive("recording the delivery".into(), &e))?;
            if let Some(s) = shared.parts().get_mut(&partition) {
                s.pending.insert(record.offset);
                s.next = record.offset + 1;
                s.delivered = s.delivered.max(record.offset + 1);
            }
            if !shared.deliver(partition, record, attempt, permit).await {
                return Ok(());
            }
        }
    }
}

/// Produces the records queued for one partition until every sender is gone: it takes what
/// is queued (up to [`PRODUCE_BATCH_RECORDS`] records or [`PRODUCE_BATCH_BYTES`]) into one
/// produce request, and tells each record's publisher the broker's answer for the batch.
/// At most [`PRODUCES_IN_FLIGHT`] requests are out at once (their order between them is not
/// kept, as for replies of messages processed in parallel; a trigger with `maxConcurrency` 1
/// publishes a reply only after the previous one was acknowledged). There is no linger: a
/// record goes at once when a request slot is free; records queued while every slot is taken
/// go together in the next one.
async fn produce_loop(
    client: Arc<PartitionClient>,
    mut rx: mpsc::UnboundedReceiver<ProduceRequest>,
) {
    let slots = Arc::new(Semaphore::new(PRODUCES_IN_FLIGHT));
    let mut carried: Option<ProduceRequest> = None;
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let first = match carried.take() {
            Some(request) => request,
            None => match rx.recv().await {
                Some(request) => request,
                None => return,
            },
        };
        let mut bytes = value_len(&first.0);
        let mut records = vec![first.0];
        let mut waiters = vec![first.1];
        while records.len() < PRODUCE_BATCH_RECORDS {
            let Ok(request) = rx.try_recv() else { break };
            let len = value_len(&request.0);
            if bytes + len > PRODUCE_BATCH_BYTES {
                carried = Some(request);
                break;
            }
            bytes += len;
            records.push(request.0);
            waiters.push(request.1);
        }
        let client = Arc::clone(&client);
        let produce = async move {
            // Bounded like a publish, so a broker that went away frees the slot and answers
            // every waiter instead of holding them.
            let result = match tokio::time::timeout(
                PUBLISH_TIMEOUT,
                client.produce(records, Compression::NoCompression),
            )
            .await
            {
                Ok(answer) => answer.map(|_| ()).map_err(|e| e.to_string()),
                Err(_) => Err(format!(
                    "no answer from the broker within {} s",
                    PUBLISH_TIMEOUT.as_secs()
                )),
            };
            for waiter in waiters {
                let _ = waiter.send(result.clone());
            }
            drop(slot);
        };
        tokio::spawn(produce);
    }
}

fn value_len(record: &Record) -> usize {
    record.value.as_ref().map_or(0, Vec::len)
        + record.key.as_ref().map_or(0, Vec::len)
        + record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// Commits settled offsets every [`COMMIT_EVERY`], and once more when the subscription ends.
async fn commit_loop(shared: Arc<Shared>) {
    let mut failures = 0u32;
    loop {
        let stopping = tokio::select! {
            () = shared.shutdown.cancelled() => true,
            () = tokio::time::sleep(COMMIT_EVERY) => false,
        };
        match shared.commit().await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(topic = %shared.topic, error = %e, failures, "committing offsets failed");
                if failures >= MAX_COMMIT_FAILURES && !stopping {
                    let _ = shared
                        .tx
                        .send(Err(BrokerError::Receive(format!(
                            "{e} (topic {:?}) on Kafka at {}",
                            shared.topic, shared.url
                        ))))
                        .await;
                    return;
                }
            }
        }
        if stopping {
            return;
        }
    }
}

struct KafkaSubscription {
    rx: mpsc::Receiver<Result<Delivery, BrokerError>>,
    /// Stops the fetchers and pending redeliveries (after a last commit) when dropped.
    _stop: DropGuard,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self.rx.recv().await {
            Some(item) => item,
            None => Err(BrokerError::Receive("the Kafka fetchers stopped".into())),
        }
    }
}

struct KafkaSettle {
    shared: Arc<Shared>,
    partition: i32,
    record: RecordAndOffset,
    attempt: u32,
    /// The record's in-flight slot: released when it is settled, kept while it waits for its
    /// redelivery.
    permit: Option<OwnedSemaphorePermit>,
}

#[async_trait]
impl Settle for KafkaSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.shared.settle(self.partition, self.record.offset);
        Ok(())
    }

    async fn nak(mut self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let permit = self.permit.take();
        let shared = Arc::clone(&self.shared);
        let (partition, record, attempt) = (
            self.partition,
            self.record.clone(),
            self.attempt.saturating_add(1),
        );
        tokio::spawn(async move {
            tokio::select! {
                () = shared.shutdown.cancelled() => {}
                () = tokio::time::sleep(delay) => {
                    if let Some(permit) = permit {
                        shared.deliver(partition, &record, attempt, permit).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn term(self: Box<Self>) -> Result<(), BrokerError> {
        self.shared.settle(self.partition, self.record.offset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = KafkaUrl::parse("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(u.servers, vec!["127.0.0.1:9092"]);
        let u = KafkaUrl::parse("a:1, b:2").unwrap();
        assert_eq!(u.servers, vec!["a:1", "b:2"]);
        let u = KafkaUrl::parse("kafka://u:p@a:1").unwrap();
        assert_eq!(u.credentials, Some(("u".into(), "p".into())));
        let e = KafkaUrl::parse("kafka+ssl://a:1").unwrap_err().to_string();
        assert!(e.contains("TLS"), "{e}");
        assert!(KafkaUrl::parse("kafka://a").is_err());
        assert!(KafkaUrl::parse("").is_err());
        assert!(
            !format!("{:?}", KafkaUrl::parse("kafka://u:secret@a:1").unwrap()).contains("secret")
        );
        assert_eq!(redact("kafka://u:p@a:1"), "kafka://***@a:1");
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values of org.apache.kafka.common.utils.Utils.murmur2 (as unsigned).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }

    #[test]
    fn partitions() {
        let rr = AtomicUsize::new(0);
        let id = |v: &str| vec![("X-Kappa-Message-Id".to_string(), v.to_string())];
        assert_eq!(pick_partition(None, &id("3:17"), 4, &rr), 3);
        assert_eq!(pick_partition(None, &id("5:17"), 4, &rr), 1);
        let key = pick_partition(Some(b"order-1"), &[], 8, &rr);
        assert_eq!(key, pick_partition(Some(b"order-1"), &id("0:1"), 8, &rr));
        let a = pick_partition(None, &[], 2, &rr);
        let b = pick_partition(None, &[], 2, &rr);
        assert_ne!(a, b);
    }

    #[test]
    fn metadata_keys() {
        let mut spec = ConsumerSpec {
            durable_name: "kappa-default-t".into(),
            topic: "orders".into(),
            max_in_flight: 1,
            ack_wait: Duration::from_secs(1),
            metadata: BTreeMap::new(),
        };
        for (k, v) in [
            ("bootstrapServers", "a:1"),
            ("consumerGroup", "g"),
            ("topic", "orders"),
            ("lagThreshold", "5"),
            ("offsetResetPolicy", "latest"),
        ] {
            spec.metadata.insert(k.into(), v.into());
        }
        check_metadata(&spec).unwrap();
        assert_eq!(KafkaBroker::group_of(&spec), "g");
        spec.metadata.insert("topic".into(), "other".into());
        assert!(
            check_metadata(&spec)
                .unwrap_err()
                .to_string()
                .contains("spec.topic")
        );
        spec.metadata.insert("topic".into(), "orders".into());
        spec.metadata.insert("sasl".into(), "plaintext".into());
        let e = check_metadata(&spec).unwrap_err().to_string();
        assert!(
            e.contains("metadata.sasl") && e.contains("bootstrapServers"),
            "{e}"
        );
    }
}
