//! Redis Streams: the topic is a stream key, each trigger a consumer group.
//!
//! - The group `kappa-<namespace>-<trigger>` is created with `MKSTREAM` from the stream's start
//!   (`0`), so entries added before the trigger was ready are processed too.
//! - The consumer name is `metadata.consumer` (default `kappa`). It is stable across restarts:
//!   a restarted platform first reads its own pending entries (what it had received and not
//!   acknowledged), then new ones with `XREADGROUP ... >`.
//! - An entry is `XACK`ed once settled (a terminated entry too: Redis has no dead state).
//! - A nak keeps the entry pending and, after the delay, claims it again (`XCLAIM`, which counts
//!   the delivery) and hands it out again. The entry keeps its in-flight slot while it waits, so
//!   with `maxConcurrency` 1 nothing overtakes it.
//! - Entries that stayed pending longer than the ack wait (their consumer died, or a claim was
//!   lost) are taken over with `XAUTOCLAIM`, checked every half ack wait (1 s to 30 s).
//! - An entry's field `body` is the message body and every other field a header; an entry
//!   without `body` is delivered as a JSON object of its fields. [`Broker::publish`] writes the
//!   same shape with `XADD`.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadReply,
};
use redis::{AsyncConnectionConfig, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::broker::{
    Broker, BrokerError, ConsumerSpec, Delivery, Header, Message, Settle, Subscription,
};

/// The stream entry field that holds the body.
pub const BODY_FIELD: &str = "body";
/// How long one `XREADGROUP` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// Most entries asked for in one read.
const MAX_BATCH: usize = 64;

/// A connection to a Redis server (5.0 or later; `XAUTOCLAIM` needs 6.2).
#[derive(Clone)]
pub struct RedisBroker {
    client: redis::Client,
    conn: MultiplexedConnection,
    url: String,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl RedisBroker {
    /// Connects to `url` (`redis://host:port[/db]`) and checks the server answers.
    pub async fn connect(url: &str) -> Result<Self, BrokerError> {
        let client = redis::Client::open(url)
            .map_err(|e| BrokerError::Config(format!("redis URL {url:?}: {e}")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(10)));
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| BrokerError::Connect(format!("connecting to Redis at {url}: {e}")))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| BrokerError::Connect(format!("connecting to Redis at {url}: {e}")))?;
        Ok(Self {
            client,
            conn,
            url: url.to_string(),
        })
    }

    fn err(&self, what: &str, e: &redis::RedisError) -> String {
        format!("{what} on Redis at {}: {e}", self.url)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn subscribe(&self, spec: &ConsumerSpec) -> Result<Box<dyn Subscription>, BrokerError> {
        let mut conn = self.conn.clone();
        let key = spec.topic.clone();
        let group = spec.durable_name.clone();
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg(&group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Ok(()) => tracing::info!(stream = %key, group = %group, "created the consumer group"),
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => {
                return Err(BrokerError::Setup(self.err(
                    &format!("creating consumer group {group} on stream {key:?}"),
                    &e,
                )));
            }
        }
        // Blocking reads get their own connection: on a shared one they would hold up the
        // acknowledgements queued behind them.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(BLOCK + Duration::from_secs(10)));
        let reader = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| BrokerError::Connect(self.err("connecting", &e)))?;
        let max_in_flight = spec.max_in_flight.max(1) as usize;
        let (tx, rx) = mpsc::channel(max_in_flight);
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            conn,
            key,
            group,
            consumer: spec
                .metadata
                .get("consumer")
                .cloned()
                .unwrap_or_else(|| "kappa".into()),
            url: self.url.clone(),
            held: Mutex::new(HashSet::new()),
            slots: Arc::new(Semaphore::new(max_in_flight)),
            tx,
            shutdown: shutdown.clone(),
            claim_after: spec.ack_wait,
        });
        tokio::spawn(read_loop(shared, reader));
        Ok(Box::new(RedisSubscription {
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
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("XADD");
        cmd.arg(topic).arg("*").arg(BODY_FIELD).arg(body.as_ref());
        for (name, value) in headers {
            if !name.eq_ignore_ascii_case(BODY_FIELD) {
                cmd.arg(name).arg(value);
            }
        }
        let _: String = cmd.query_async(&mut conn).await.map_err(|e| {
            BrokerError::Publish(self.err(&format!("adding an entry to stream {topic:?}"), &e))
        })?;
        Ok(())
    }

    async fn remove(&self, spec: &ConsumerSpec) -> Result<(), BrokerError> {
        let mut conn = self.conn.clone();
        let _: Value = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(&spec.topic)
            .arg(&spec.durable_name)
            .query_async(&mut conn)
            .await
            .map_err(|e| {
                BrokerError::Setup(self.err(
                    &format!("destroying consumer group {}", spec.durable_name),
                    &e,
                ))
            })?;
        Ok(())
    }
}

/// What the reader task, the subscription and the settle handles share.
struct Shared {
    /// Commands that do not block (ack, claim, pending).
    conn: MultiplexedConnection,
    key: String,
    group: String,
    consumer: String,
    url: String,
    /// Ids handed out and not settled yet, so a claim of one of them is not handed out twice.
    /// A std mutex: held for one set operation, never across an await.
    held: Mutex<HashSet<String>>,
    /// One permit per message handed out and not settled (waiting for a redelivery included):
    /// bounds what the consumer holds to the trigger's `maxConcurrency`.
    slots: Arc<Semaphore>,
    /// Deliveries for the subscription; bounded by `slots`, each item holds a permit.
    tx: mpsc::Sender<Result<Delivery, BrokerError>>,
    /// Cancelled when the subscription is dropped: stops the reader and pending redeliveries.
    shutdown: CancellationToken,
    /// Pending longer than this: taken over with XAUTOCLAIM.
    claim_after: Duration,
}

impl Shared {
    fn release(&self, id: &str) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// Marks `id` handed out; false when it already was.
    fn hold(&self, id: &str) -> bool {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_string())
    }

    fn err(&self, what: &str, e: &redis::RedisError) -> BrokerError {
        BrokerError::Receive(format!(
            "{what} (stream {:?}, group {}) on Redis at {}: {e}",
            self.key, self.group, self.url
        ))
    }

    /// How many times `id` was delivered, as Redis counts it.
    async fn times_delivered(&self, id: &str) -> Option<u32> {
        let mut conn = self.conn.clone();
        let reply: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.key)
            .arg(&self.group)
            .arg(id)
            .arg(id)
            .arg(1)
            .query_async(&mut conn)
            .await
            .ok()?;
        reply
            .ids
            .first()
            .map(|p| u32::try_from(p.times_delivered).unwrap_or(u32::MAX))
    }

    /// Hands `entry` out with `permit`. False when the subscription is gone.
    async fn deliver(
        self: &Arc<Self>,
        entry: StreamId,
        attempt: u32,
        permit: OwnedSemaphorePermit,
    ) -> bool {
        let id = entry.id.clone();
        let message = to_message(&self.key, entry, attempt);
        let settle = RedisSettle {
            shared: Arc::clone(self),
            id,
            attempt,
            permit: Some(permit),
        };
        self.tx
            .send(Ok(Delivery::new(message, Box::new(settle))))
            .await
            .is_ok()
    }
}

/// Takes at least one free slot (waiting for it) and up to `max` at once.
async fn take_slots(shared: &Shared, max: usize) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        () = shared.shutdown.cancelled() => return None,
        p = Arc::clone(&shared.slots).acquire_owned() => p.ok()?,
    };
    let mut permits = vec![first];
    while permits.len() < max {
        match Arc::clone(&shared.slots).try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
    Some(permits)
}

/// Reads the consumer's own pending entries, then new ones, and takes over stuck ones, until
/// the subscription is dropped. A failure is handed to the subscription, which reports it.
async fn read_loop(shared: Arc<Shared>, mut reader: MultiplexedConnection) {
    if let Err(e) = run_reader(&shared, &mut reader).await {
        let _ = shared.tx.send(Err(e)).await;
    }
}

async fn run_reader(
    shared: &Arc<Shared>,
    reader: &mut MultiplexedConnection,
) -> Result<(), BrokerError> {
    // 1. What this consumer received before (a previous run) and never acknowledged.
    let mut last = "0".to_string();
    loop {
        let Some(mut permits) = take_slots(shared, MAX_BATCH).await else {
            return Ok(());
        };
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&shared.group)
            .arg(&shared.consumer)
            .arg("COUNT")
            .arg(permits.len())
            .arg("STREAMS")
            .arg(&shared.key)
            .arg(&last)
            .query_async(reader)
            .await
            .map_err(|e| shared.err("reading the pending entries", &e))?;
        let entries = entries_of(reply);
        if entries.is_empty() {
            break;
        }
        for entry in entries {
            last = entry.id.clone();
            let Some(permit) = permits.pop() else { break };
            if !shared.hold(&entry.id) {
                continue;
            }
            let attempt = shared.times_delivered(&entry.id).await.unwrap_or(2);
            if !shared.deliver(entry, attempt, permit).await {
                return Ok(());
            }
        }
    }

    // 2. New entries, with a periodic takeover of stuck ones.
    let claim_every =
        (shared.claim_after / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut next_claim = tokio::time::Instant::now() + claim_every;
    loop {
        if tokio::time::Instant::now() >= next_claim {
            autoclaim(shared).await?;
            next_claim = tokio::time::Instant::now() + claim_every;
        }
        let Some(mut permits) = take_slots(shared, MAX_BATCH).await else {
            return Ok(());
        };
        // Not cancelled by shutdown: entries a read returns are already pending for this
        // consumer; the read ends within BLOCK anyway.
        let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&shared.group)
            .arg(&shared.consumer)
            .arg("COUNT")
            .arg(permits.len())
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&shared.key)
            .arg(">")
            .query_async(reader)
            .await
            .map_err(|e| shared.err("reading new entries", &e))?;
        for entry in entries_of(reply) {
            let Some(permit) = permits.pop() else { break };
            if !shared.hold(&entry.id) {
                continue;
            }
            if !shared.deliver(entry, 1, permit).await {
                return Ok(());
            }
        }
        if shared.shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

/// Takes over entries pending longer than the ack wait (one pass over the pending list).
async fn autoclaim(shared: &Arc<Shared>) -> Result<(), BrokerError> {
    let mut cursor = "0-0".to_string();
    let min_idle = shared.claim_after.as_millis() as u64;
    loop {
        let mut permits: Vec<OwnedSemaphorePermit> = Vec::new();
        while permits.len() < MAX_BATCH {
            match Arc::clone(&shared.slots).try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        if permits.is_empty() {
            return Ok(());
        }
        let mut conn = shared.conn.clone();
        let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&shared.key)
            .arg(&shared.group)
            .arg(&shared.consumer)
            .arg(min_idle)
            .arg(&cursor)
            .arg("COUNT")
            .arg(permits.len())
            .query_async(&mut conn)
            .await
            .map_err(|e| shared.err("taking over stuck entries (XAUTOCLAIM)", &e))?;
        for entry in reply.claimed {
            if !shared.hold(&entry.id) {
                // Already handed out by this consumer (waiting for a retry): leave it.
                continue;
            }
            let Some(permit) = permits.pop() else {
                shared.release(&entry.id);
                break;
            };
            let attempt = shared.times_delivered(&entry.id).await.unwrap_or(2);
            tracing::info!(stream = %shared.key, group = %shared.group, id = %entry.id, attempt, "took over a stuck entry");
            if !shared.deliver(entry, attempt, permit).await {
                return Ok(());
            }
        }
        if reply.next_stream_id == "0-0" || shared.shutdown.is_cancelled() {
            return Ok(());
        }
        cursor = reply.next_stream_id;
    }
}

fn entries_of(reply: Option<StreamReadReply>) -> Vec<StreamId> {
    reply
        .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
        .unwrap_or_default()
}

fn value_bytes(value: &Value) -> Vec<u8> {
    match value {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.clone().into_bytes(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Okay => b"OK".to_vec(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// An entry as a message: field `body` is the body, the others headers; without `body`, the
/// fields as a JSON object.
fn to_message(key: &str, entry: StreamId, attempt: u32) -> Message {
    let fields: BTreeMap<String, Vec<u8>> = entry
        .map
        .iter()
        .map(|(k, v)| (k.clone(), value_bytes(v)))
        .collect();
    let (body, headers) = match fields.get(BODY_FIELD) {
        Some(body) => (
            Bytes::from(body.clone()),
            fields
                .iter()
                .filter(|(k, _)| k.as_str() != BODY_FIELD)
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        ),
        None => {
            let object: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        serde_json::Value::String(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect();
            (
                Bytes::from(serde_json::Value::Object(object).to_string()),
                Vec::new(),
            )
        }
    };
    Message {
        topic: key.to_string(),
        id: entry.id,
        headers,
        body,
        attempt,
    }
}

struct RedisSubscription {
    rx: mpsc::Receiver<Result<Delivery, BrokerError>>,
    /// Stops the reader task and pending redeliveries when the subscription is dropped.
    _stop: DropGuard,
}

#[async_trait]
impl Subscription for RedisSubscription {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        match self.rx.recv().await {
            Some(item) => item,
            None => Err(BrokerError::Receive("the Redis reader stopped".into())),
        }
    }
}

struct RedisSettle {
    shared: Arc<Shared>,
    id: String,
    attempt: u32,
    /// The entry's in-flight slot: released when it is settled, kept while it waits for its
    /// redelivery.
    permit: Option<OwnedSemaphorePermit>,
}

impl RedisSettle {
    async fn xack(&self) -> Result<(), BrokerError> {
        let mut conn = self.shared.conn.clone();
        let result: Result<i64, _> = redis::cmd("XACK")
            .arg(&self.shared.key)
            .arg(&self.shared.group)
            .arg(&self.id)
            .query_async(&mut conn)
            .await;
        self.shared.release(&self.id);
        result.map(|_| ()).map_err(|e| {
            BrokerError::Settle(format!(
                "acknowledging entry {} of stream {:?} on Redis at {}: {e}",
                self.id, self.shared.key, self.shared.url
            ))
        })
    }
}

#[async_trait]
impl Settle for RedisSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.xack().await
    }

    async fn nak(mut self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let permit = self.permit.take();
        let shared = Arc::clone(&self.shared);
        let id = self.id.clone();
        let attempt = self.attempt.saturating_add(1);
        tokio::spawn(async move {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            let mut conn = shared.conn.clone();
            // Claiming it again counts the delivery and resets its idle time.
            let claimed: Result<StreamClaimReply, _> = redis::cmd("XCLAIM")
                .arg(&shared.key)
                .arg(&shared.group)
                .arg(&shared.consumer)
                .arg(0)
                .arg(&id)
                .query_async(&mut conn)
                .await;
            match claimed {
                Ok(reply) => match (reply.ids.into_iter().next(), permit) {
                    (Some(entry), Some(permit)) => {
                        shared.deliver(entry, attempt, permit).await;
                    }
                    _ => shared.release(&id),
                },
                Err(e) => {
                    // It stays pending: XAUTOCLAIM takes it over after the ack wait.
                    tracing::warn!(stream = %shared.key, id = %id, error = %e, "claiming an entry for its retry failed");
                    shared.release(&id);
                }
            }
        });
        Ok(())
    }

    async fn term(self: Box<Self>) -> Result<(), BrokerError> {
        self.xack().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn entries_become_messages() {
        let mut map = HashMap::new();
        map.insert("body".to_string(), Value::BulkString(b"hi".to_vec()));
        map.insert("X-Id".to_string(), Value::BulkString(b"7".to_vec()));
        let m = to_message(
            "orders",
            StreamId {
                id: "1-0".into(),
                map,
                ..StreamId::default()
            },
            1,
        );
        assert_eq!(m.body.as_ref(), b"hi");
        assert_eq!(m.headers, vec![("X-Id".to_string(), "7".to_string())]);
        let mut map = HashMap::new();
        map.insert("a".to_string(), Value::BulkString(b"1".to_vec()));
        let m = to_message(
            "orders",
            StreamId {
                id: "1-0".into(),
                map,
                ..StreamId::default()
            },
            3,
        );
        assert_eq!(m.body.as_ref(), br#"{"a":"1"}"#);
        assert_eq!(m.attempt, 3);
    }
}
