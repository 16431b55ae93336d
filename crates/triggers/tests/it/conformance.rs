//! One suite for every broker: the dispatcher's semantics end to end through the fake, NATS
//! JetStream and Redis Streams.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use kappa_test_support::servers::{NatsServer, RedisServer};
use kappa_triggers::{Broker, ConsumerSpec, Dispatcher, Header, Subscription};
use tokio_util::sync::CancellationToken;

use crate::support::{FakeBroker, FakeFunction, fast_config, header, target};
use kappa_test_support::eventually_async;

/// A message read back: its headers and body.
pub type Captured = (Vec<Header>, Bytes);

/// A broker under test plus a way to read what was published to the output topics.
#[async_trait]
pub trait Harness: Send + Sync {
    fn broker(&self) -> Arc<dyn Broker>;
    /// Starts capturing `topic` (before anything is published to it).
    async fn watch(&self, topic: &str);
    /// What was published to `topic`, in order.
    async fn captured(&self, topic: &str) -> Vec<(Vec<Header>, Bytes)>;
    /// Whether an unsettled message comes back after its consumer went away.
    fn redelivers(&self) -> bool {
        true
    }
}

pub struct Fake(pub FakeBroker);

#[async_trait]
impl Harness for Fake {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.0.clone())
    }
    async fn watch(&self, _topic: &str) {}
    async fn captured(&self, topic: &str) -> Vec<(Vec<Header>, Bytes)> {
        self.0.published_to(topic)
    }
    fn redelivers(&self) -> bool {
        false
    }
}

pub struct Nats {
    /// Runs as long as the harness.
    #[allow(dead_code)]
    pub server: NatsServer,
    pub broker: kappa_triggers::nats::NatsBroker,
    captured: Arc<Mutex<HashMap<String, Vec<Captured>>>>,
}

impl Nats {
    pub async fn start() -> Self {
        let server = NatsServer::start().expect("nats-server");
        let broker = kappa_triggers::nats::NatsBroker::connect(&server.url())
            .await
            .unwrap();
        Self {
            server,
            broker,
            captured: Arc::default(),
        }
    }
}

#[async_trait]
impl Harness for Nats {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.broker.clone())
    }
    async fn watch(&self, topic: &str) {
        let mut sub = self
            .broker
            .client()
            .subscribe(topic.to_string())
            .await
            .unwrap();
        self.broker.client().flush().await.unwrap();
        let captured = Arc::clone(&self.captured);
        let topic = topic.to_string();
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let headers = m
                    .headers
                    .map(|h| {
                        h.iter()
                            .flat_map(|(k, vs)| {
                                let k = k.to_string();
                                vs.iter().map(move |v| (k.clone(), v.as_str().to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                captured
                    .lock()
                    .unwrap()
                    .entry(topic.clone())
                    .or_default()
                    .push((headers, m.payload));
            }
        });
    }
    async fn captured(&self, topic: &str) -> Vec<(Vec<Header>, Bytes)> {
        self.captured
            .lock()
            .unwrap()
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }
}

pub struct Redis {
    /// Runs as long as the harness.
    #[allow(dead_code)]
    pub server: RedisServer,
    pub broker: kappa_triggers::redis::RedisBroker,
    pub conn: redis::aio::MultiplexedConnection,
}

impl Redis {
    pub async fn start() -> Self {
        let server = RedisServer::start().expect("redis-server");
        let broker = kappa_triggers::redis::RedisBroker::connect(&server.url())
            .await
            .unwrap();
        let conn = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Self {
            server,
            broker,
            conn,
        }
    }
}

#[async_trait]
impl Harness for Redis {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.broker.clone())
    }
    async fn watch(&self, _topic: &str) {}
    async fn captured(&self, topic: &str) -> Vec<(Vec<Header>, Bytes)> {
        let mut conn = self.conn.clone();
        let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(topic)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        reply
            .ids
            .into_iter()
            .map(|e| {
                let mut body = Bytes::new();
                let mut headers = Vec::new();
                for (k, v) in e.map {
                    let v: Vec<u8> = redis::from_redis_value(v).unwrap();
                    if k == "body" {
                        body = Bytes::from(v);
                    } else {
                        headers.push((k, String::from_utf8_lossy(&v).into_owned()));
                    }
                }
                (headers, body)
            })
            .collect()
    }
}

pub fn consumer(topic: &str, max_in_flight: u32, ack_wait: Duration) -> ConsumerSpec {
    ConsumerSpec {
        durable_name: "kappa-default-t".into(),
        topic: topic.into(),
        max_in_flight,
        ack_wait,
        metadata: Default::default(),
    }
}

/// A dispatcher of `target` running on its own task until the returned token is cancelled.
async fn start(
    h: &dyn Harness,
    function: Arc<FakeFunction>,
    t: kappa_triggers::Target,
    topic: &str,
    ack_wait: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let sub: Box<dyn Subscription> = h
        .broker()
        .subscribe(&consumer(topic, t.max_concurrency, ack_wait))
        .await
        .unwrap();
    let dispatcher = Dispatcher::new(t, function, h.broker(), fast_config());
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move {
        dispatcher.run(sub, stop).await.unwrap();
    });
    (token, handle)
}

async fn publish(h: &dyn Harness, topic: &str, body: &str, headers: &[(&str, &str)]) {
    let headers: Vec<Header> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.broker()
        .publish(topic, &headers, Bytes::from(body.to_string()))
        .await
        .unwrap();
}

fn bodies(items: &[(Vec<Header>, Bytes)]) -> Vec<String> {
    items
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect()
}

/// Replies reach the response topic with Kappa's headers; the function gets the message's.
pub async fn responses(h: &dyn Harness) {
    h.watch("done").await;
    let f = FakeFunction::echo();
    let (stop, task) = start(
        h,
        Arc::clone(&f),
        target(0, 4),
        "orders",
        Duration::from_secs(10),
    )
    .await;
    for i in 0..20 {
        publish(
            h,
            "orders",
            &format!("{{\"id\":{i}}}"),
            &[("X-Order", &i.to_string())],
        )
        .await;
    }
    let done = eventually_async(Duration::from_secs(20), "20 replies", || async {
        let got = h.captured("done").await;
        (got.len() >= 20).then_some(got)
    })
    .await;
    let mut ids = bodies(&done);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    let (headers, _) = &done[0];
    assert_eq!(header(headers, "X-Kappa-Trigger"), Some("t"));
    assert_eq!(header(headers, "X-Kappa-Topic"), Some("orders"));
    assert_eq!(header(headers, "Content-Type"), Some("text/plain"));
    let seen = f.seen();
    assert_eq!(seen.len(), 20);
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.header("x-kappa-topic"), Some("orders"));
        assert_eq!(s.header("x-kappa-trigger"), Some("t"));
        // Fission's trigger headers, for functions written for Fission.
        assert_eq!(s.header("x-fission-mqtrigger-topic"), Some("orders"));
        assert_eq!(s.header("x-fission-mqtrigger-resptopic"), Some("done"));
        assert_eq!(s.header("x-fission-mqtrigger-errortopic"), Some("failed"));
        assert_eq!(s.attempt(), 1);
        assert_eq!(s.header("content-type"), Some("application/json"));
        // The body's length, which lets the router write the request on its lean path.
        let length = s.body.len().to_string();
        assert_eq!(s.header("content-length"), Some(length.as_str()));
        assert!(s.header("x-order").is_some(), "{:?}", s.headers);
    }
    stop.cancel();
    task.await.unwrap();
}

/// A message that fails twice is delivered again with a higher attempt and then succeeds.
pub async fn retries(h: &dyn Harness) {
    h.watch("done").await;
    let f = FakeFunction::new(Duration::ZERO, |s| {
        if s.attempt() < 3 {
            (503, "not yet".into())
        } else {
            (200, format!("ok {}", String::from_utf8_lossy(&s.body)))
        }
    });
    let (stop, task) = start(
        h,
        Arc::clone(&f),
        target(5, 2),
        "orders",
        Duration::from_secs(10),
    )
    .await;
    publish(h, "orders", "a", &[]).await;
    publish(h, "orders", "b", &[]).await;
    let done = eventually_async(Duration::from_secs(20), "2 replies", || async {
        let got = h.captured("done").await;
        (got.len() >= 2).then_some(got)
    })
    .await;
    let mut got = bodies(&done);
    got.sort();
    assert_eq!(got, vec!["ok a", "ok b"]);
    let mut attempts: Vec<(String, u32)> = f
        .seen()
        .iter()
        .map(|s| (String::from_utf8_lossy(&s.body).into_owned(), s.attempt()))
        .collect();
    attempts.sort();
    assert_eq!(
        attempts,
        vec![
            ("a".into(), 1),
            ("a".into(), 2),
            ("a".into(), 3),
            ("b".into(), 1),
            ("b".into(), 2),
            ("b".into(), 3)
        ]
    );
    assert!(h.captured("failed").await.is_empty());
    stop.cancel();
    task.await.unwrap();
}

/// A message that always fails ends in the error topic after maxRetries, with the reason.
pub async fn error_topic(h: &dyn Harness) {
    h.watch("done").await;
    h.watch("failed").await;
    let f = FakeFunction::new(Duration::ZERO, |_| (500, "boom".into()));
    let (stop, task) = start(
        h,
        Arc::clone(&f),
        target(2, 1),
        "orders",
        Duration::from_secs(10),
    )
    .await;
    publish(h, "orders", "payload", &[("X-Order", "7")]).await;
    let failed = eventually_async(Duration::from_secs(20), "the error topic", || async {
        let got = h.captured("failed").await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(failed.len(), 1);
    let (headers, body) = &failed[0];
    assert_eq!(body.as_ref(), b"payload");
    assert_eq!(header(headers, "X-Kappa-Attempts"), Some("3"));
    assert_eq!(header(headers, "X-Kappa-Status"), Some("500"));
    assert_eq!(header(headers, "X-Order"), Some("7"));
    let reason = header(headers, "X-Kappa-Error").unwrap();
    assert!(
        reason.contains("500") && reason.contains("boom"),
        "{reason}"
    );
    assert_eq!(f.seen().len(), 3);
    assert!(h.captured("done").await.is_empty());
    stop.cancel();
    task.await.unwrap();
}

/// With maxConcurrency 1, messages are processed strictly in order, retries included.
pub async fn order(h: &dyn Harness) {
    h.watch("done").await;
    let f = FakeFunction::new(Duration::ZERO, |s| {
        if s.body.as_ref() == b"3" && s.attempt() < 3 {
            (500, "not yet".into())
        } else {
            (200, String::from_utf8_lossy(&s.body).into_owned())
        }
    });
    let (stop, task) = start(
        h,
        Arc::clone(&f),
        target(5, 1),
        "orders",
        Duration::from_secs(10),
    )
    .await;
    for i in 1..=10 {
        publish(h, "orders", &i.to_string(), &[]).await;
    }
    let done = eventually_async(Duration::from_secs(20), "10 replies", || async {
        let got = h.captured("done").await;
        (got.len() >= 10).then_some(got)
    })
    .await;
    let expected: Vec<String> = (1..=10).map(|i| i.to_string()).collect();
    assert_eq!(bodies(&done), expected);
    let seen: Vec<String> = f
        .seen()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect();
    assert_eq!(
        seen,
        ["1", "2", "3", "3", "3", "4", "5", "6", "7", "8", "9", "10"]
    );
    assert_eq!(f.max_in_flight.load(std::sync::atomic::Ordering::SeqCst), 1);
    stop.cancel();
    task.await.unwrap();
}

/// No more than maxConcurrency messages are processed at once.
pub async fn parallelism(h: &dyn Harness) {
    h.watch("done").await;
    let f = FakeFunction::new(Duration::from_millis(100), |_| (200, "ok".into()));
    let (stop, task) = start(
        h,
        Arc::clone(&f),
        target(0, 4),
        "orders",
        Duration::from_secs(10),
    )
    .await;
    for i in 0..24 {
        publish(h, "orders", &i.to_string(), &[]).await;
    }
    eventually_async(Duration::from_secs(20), "24 replies", || async {
        (h.captured("done").await.len() >= 24).then_some(())
    })
    .await;
    let max = f.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    assert!((2..=4).contains(&max), "max in flight {max}");
    stop.cancel();
    task.await.unwrap();
}

/// A message whose consumer went away before settling it is delivered again.
pub async fn redelivery(h: &dyn Harness) {
    if !h.redelivers() {
        return;
    }
    h.watch("done").await;
    // The first consumer never answers.
    let stuck = FakeFunction::new(Duration::from_secs(3600), |_| (200, "late".into()));
    let ack_wait = Duration::from_secs(2);
    let (stop, task) = start(h, Arc::clone(&stuck), target(3, 1), "orders", ack_wait).await;
    publish(h, "orders", "m", &[]).await;
    eventually_async(Duration::from_secs(10), "the first delivery", || async {
        (!stuck.seen().is_empty()).then_some(())
    })
    .await;
    // The platform dies: nothing is settled.
    task.abort();
    let _ = task.await;
    drop(stop);
    let f = FakeFunction::echo();
    let (stop, task) = start(h, Arc::clone(&f), target(3, 1), "orders", ack_wait).await;
    let done = eventually_async(Duration::from_secs(20), "the redelivery", || async {
        let got = h.captured("done").await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(bodies(&done), vec!["m"]);
    assert!(f.seen()[0].attempt() >= 2, "{:?}", f.seen()[0].headers);
    stop.cancel();
    task.await.unwrap();
}

/// With several messages in flight, none is settled before its answer: a platform killed
/// while they run gets every one of them again.
pub async fn redelivery_in_flight(h: &dyn Harness) {
    if !h.redelivers() {
        return;
    }
    h.watch("done").await;
    let stuck = FakeFunction::new(Duration::from_secs(3600), |_| (200, "late".into()));
    let ack_wait = Duration::from_secs(2);
    let (stop, task) = start(h, Arc::clone(&stuck), target(3, 4), "orders", ack_wait).await;
    for i in 0..4 {
        publish(h, "orders", &i.to_string(), &[]).await;
    }
    eventually_async(
        Duration::from_secs(10),
        "four deliveries in flight",
        || async { (stuck.seen().len() >= 4).then_some(()) },
    )
    .await;
    task.abort();
    let _ = task.await;
    drop(stop);
    let f = FakeFunction::echo();
    let (stop, task) = start(h, Arc::clone(&f), target(3, 4), "orders", ack_wait).await;
    let done = eventually_async(Duration::from_secs(20), "the four redeliveries", || async {
        let got = h.captured("done").await;
        (got.len() >= 4).then_some(got)
    })
    .await;
    let mut got = bodies(&done);
    got.sort();
    assert_eq!(got, vec!["0", "1", "2", "3"]);
    assert!(f.seen().iter().all(|r| r.attempt() >= 2));
    stop.cancel();
    task.await.unwrap();
}

/// Stopping lets the messages in flight finish: each answered one is replied to and settled
/// before `run` returns.
pub async fn stop_drains_in_flight(h: &dyn Harness) {
    h.watch("done").await;
    let f = FakeFunction::new(Duration::from_millis(300), |s| {
        (200, String::from_utf8_lossy(&s.body).into_owned())
    });
    let (stop, task) = start(
        h,
        Arc::clone(&f),
        target(0, 4),
        "orders",
        Duration::from_secs(10),
    )
    .await;
    for i in 0..4 {
        publish(h, "orders", &i.to_string(), &[]).await;
    }
    eventually_async(
        Duration::from_secs(10),
        "four deliveries in flight",
        || async { (f.seen().len() >= 4).then_some(()) },
    )
    .await;
    stop.cancel();
    task.await.unwrap();
    let done = eventually_async(Duration::from_secs(10), "four replies", || async {
        let got = h.captured("done").await;
        (got.len() >= 4).then_some(got)
    })
    .await;
    let mut got = bodies(&done);
    got.sort();
    assert_eq!(got, vec!["0", "1", "2", "3"]);
}

macro_rules! suite {
    ($module:ident, $make:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test]
            async fn responses() {
                let h = $make;
                super::responses(&h).await;
            }
            #[tokio::test]
            async fn retries() {
                let h = $make;
                super::retries(&h).await;
            }
            #[tokio::test]
            async fn error_topic() {
                let h = $make;
                super::error_topic(&h).await;
            }
            #[tokio::test]
            async fn order() {
                let h = $make;
                super::order(&h).await;
            }
            #[tokio::test]
            async fn parallelism() {
                let h = $make;
                super::parallelism(&h).await;
            }
            #[tokio::test]
            async fn redelivery() {
                let h = $make;
                super::redelivery(&h).await;
            }
            #[tokio::test]
            async fn redelivery_in_flight() {
                let h = $make;
                super::redelivery_in_flight(&h).await;
            }
            #[tokio::test]
            async fn stop_drains_in_flight() {
                let h = $make;
                super::stop_drains_in_flight(&h).await;
            }
        }
    };
}

suite!(fake, Fake(FakeBroker::default()));
suite!(nats, Nats::start().await);
suite!(redis_streams, Redis::start().await);
