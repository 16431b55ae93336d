//! Kafka, against a real Kafka-protocol broker (`tansu`, started per test on a free port): the
//! shared broker suite, plus what is Kafka's own (partitions, keys, the group's committed
//! offsets). A missing `tansu` fails them (`scripts/install-deps.sh` installs it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kappa_test_support::servers::KafkaServer;
use kappa_triggers::kafka::{GroupClient, KEY_HEADER, KafkaBroker, murmur2};
use kappa_triggers::{Broker, Dispatcher, Header};
use rskafka::client::partition::UnknownTopicHandling;
use rskafka::client::{Client, ClientBuilder};
use tokio_util::sync::CancellationToken;

use crate::conformance::{self, Harness, consumer};
use crate::support::{FakeFunction, fast_config, header, target};
use kappa_test_support::eventually_async;

pub struct Kafka {
    pub server: KafkaServer,
    pub broker: KafkaBroker,
    pub client: Client,
}

impl Kafka {
    /// A broker of its own (a missing `tansu` fails the test).
    pub async fn start() -> Self {
        let server = KafkaServer::start().expect("start tansu");
        let broker = KafkaBroker::connect(&server.url()).await.unwrap();
        let client = ClientBuilder::new(vec![format!("127.0.0.1:{}", server.0.port())])
            .build()
            .await
            .unwrap();
        Self {
            server,
            broker,
            client,
        }
    }

    /// Every record of `topic`, partition by partition, in offset order: (partition, key,
    /// headers, body).
    pub async fn records(&self, topic: &str) -> Vec<(i32, Option<String>, Vec<Header>, Bytes)> {
        let topics = self.client.list_topics().await.unwrap();
        let Some(t) = topics.into_iter().find(|t| t.name == topic) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for p in t.partitions {
            let client = self
                .client
                .partition_client(topic, p, UnknownTopicHandling::Error)
                .await
                .unwrap();
            let mut offset = 0;
            loop {
                let (records, high) = client
                    .fetch_records(offset, 1..(4 << 20), 10)
                    .await
                    .unwrap();
                let from = offset;
                for r in records.into_iter().filter(|r| r.offset >= from) {
                    offset = r.offset + 1;
                    let rec = r.record;
                    out.push((
                        p,
                        rec.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                        rec.headers
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                            .collect(),
                        Bytes::from(rec.value.unwrap_or_default()),
                    ));
                }
                if offset >= high {
                    break;
                }
            }
        }
        out
    }
}

#[async_trait]
impl Harness for Kafka {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.broker.clone())
    }
    async fn watch(&self, _topic: &str) {}
    async fn captured(&self, topic: &str) -> Vec<(Vec<Header>, Bytes)> {
        self.records(topic)
            .await
            .into_iter()
            .map(|(_, _, h, b)| (h, b))
            .collect()
    }
}

macro_rules! kafka_suite {
    ($($name:ident),*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let h = Kafka::start().await;
                conformance::$name(&h).await;
            }
        )*
    };
}

kafka_suite!(
    responses,
    retries,
    error_topic,
    order,
    parallelism,
    redelivery
);

/// Runs a dispatcher of `t` on `topic` until the token is cancelled.
async fn dispatch(
    h: &Kafka,
    function: Arc<FakeFunction>,
    t: kappa_triggers::Target,
    topic: &str,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let sub = h
        .broker()
        .subscribe(&consumer(topic, t.max_concurrency, Duration::from_secs(10)))
        .await
        .unwrap();
    let dispatcher = Dispatcher::new(t, function, h.broker(), fast_config());
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move { dispatcher.run(sub, stop).await.unwrap() });
    (token, handle)
}

async fn publish(h: &Kafka, topic: &str, body: &str, headers: &[(&str, &str)]) {
    let headers: Vec<Header> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h.broker
        .publish(topic, &headers, Bytes::from(body.to_string()))
        .await
        .unwrap();
}

/// A topic of 3 partitions, maxConcurrency 1: each partition's records are processed in offset
/// order (a retried one holds back the rest), keys pick partitions like Kafka's Java client,
/// and replies keep their source partition.
#[tokio::test]
async fn partitions_keep_their_order() {
    let h = Kafka::start().await;
    h.client
        .controller_client()
        .unwrap()
        .create_topic("orders", 3, 1, 5_000)
        .await
        .unwrap();
    h.client
        .controller_client()
        .unwrap()
        .create_topic("done", 3, 1, 5_000)
        .await
        .unwrap();
    let f = FakeFunction::new(Duration::ZERO, |s| {
        // The fourth record of each key fails once.
        if s.body.ends_with(b"-3") && s.attempt() < 2 {
            (500, "once".into())
        } else {
            (200, String::from_utf8_lossy(&s.body).into_owned())
        }
    });
    let keys = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"];
    for i in 0..8 {
        for key in keys {
            publish(&h, "orders", &format!("{key}-{i}"), &[(KEY_HEADER, key)]).await;
        }
    }
    let (stop, task) = dispatch(&h, Arc::clone(&f), target(3, 1), "orders").await;
    let done = eventually_async(Duration::from_secs(60), "48 replies", || async {
        let got = h.records("done").await;
        (got.len() >= 48).then_some(got)
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(f.max_in_flight.load(std::sync::atomic::Ordering::SeqCst), 1);

    let partition_of = |key: &str| ((murmur2(key.as_bytes()) & 0x7fff_ffff) % 3) as i32;
    let input = h.records("orders").await;
    for (p, key, _, _) in &input {
        assert_eq!(*p, partition_of(key.as_deref().unwrap()));
    }
    // What the function saw, per key, is each key's sequence in order (the retry included).
    let mut seen: HashMap<String, Vec<String>> = HashMap::new();
    for s in f.seen() {
        let body = String::from_utf8_lossy(&s.body).into_owned();
        let key = s.header("x-kafka-key").unwrap().to_string();
        assert!(body.starts_with(&key), "{body} has key {key}");
        let id = s.header("x-kappa-message-id").unwrap();
        assert_eq!(
            id.split_once(':').unwrap().0.parse::<i32>().unwrap(),
            partition_of(&key)
        );
        seen.entry(key).or_default().push(body);
    }
    for key in keys {
        let mut expected: Vec<String> = (0..8).map(|i| format!("{key}-{i}")).collect();
        expected.insert(4, format!("{key}-3"));
        assert_eq!(seen[key], expected, "{key}");
    }
    // Replies went to the partition their record came from, in order.
    let mut replies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, _, headers, body) in &done {
        let body = String::from_utf8_lossy(body).into_owned();
        let key = body.rsplit_once('-').unwrap().0.to_string();
        assert_eq!(*p, partition_of(&key), "{body}");
        assert!(header(headers, "X-Kappa-Message-Id").is_some());
        replies.entry(key).or_default().push(body);
    }
    for key in keys {
        let expected: Vec<String> = (0..8).map(|i| format!("{key}-{i}")).collect();
        assert_eq!(replies[key], expected, "{key}");
    }
}

/// Offsets are committed in the trigger's consumer group: a new consumer of the group goes on
/// after what was processed, and removing the trigger's consumer deletes the group. Keys and
/// headers reach the function and the error topic.
#[tokio::test]
async fn offsets_are_committed_in_the_group() {
    let h = Kafka::start().await;
    let f = FakeFunction::new(Duration::ZERO, |s| {
        if s.body.as_ref() == b"bad" {
            (500, "refused".into())
        } else {
            (200, "ok".into())
        }
    });
    for i in 0..5 {
        publish(&h, "in", &format!("m{i}"), &[("X-Order", &i.to_string())]).await;
    }
    publish(
        &h,
        "in",
        "bad",
        &[(KEY_HEADER, "k-bad"), ("X-Order", "bad")],
    )
    .await;
    let (stop, task) = dispatch(&h, Arc::clone(&f), target(0, 2), "in").await;
    eventually_async(Duration::from_secs(30), "the error topic", || async {
        (!h.records("failed").await.is_empty()).then_some(())
    })
    .await;
    eventually_async(Duration::from_secs(30), "5 replies", || async {
        (h.records("done").await.len() >= 5).then_some(())
    })
    .await;
    let group =
        |name: &str| GroupClient::new(vec![format!("127.0.0.1:{}", h.server.0.port())], name);
    eventually_async(Duration::from_secs(30), "offset 6 committed", || async {
        let c = group("kappa-default-t").fetch("in", &[0]).await.unwrap();
        c.get(&0).filter(|c| c.offset == 6).map(|_| ())
    })
    .await;
    // How far records were handed out, in the second group.
    let marks = group("kappa-default-t.delivered")
        .fetch("in", &[0])
        .await
        .unwrap();
    assert_eq!(marks.get(&0).map(|c| c.offset), Some(6));
    stop.cancel();
    task.await.unwrap();

    // The function saw the headers and the key; the error topic keeps both.
    let seen = f.seen();
    assert_eq!(seen.len(), 6);
    assert_eq!(
        seen.iter()
            .filter(|s| s.header("x-order").is_some())
            .count(),
        6
    );
    let bad = seen.iter().find(|s| s.body.as_ref() == b"bad").unwrap();
    assert_eq!(bad.header("x-kafka-key"), Some("k-bad"));
    let failed = h.records("failed").await;
    assert_eq!(failed.len(), 1);
    let (_, key, headers, body) = &failed[0];
    assert_eq!(key.as_deref(), Some("k-bad"));
    assert_eq!(body.as_ref(), b"bad");
    assert_eq!(header(headers, "X-Order"), Some("bad"));
    assert_eq!(header(headers, "X-Kappa-Attempts"), Some("1"));
    assert!(header(headers, KEY_HEADER).is_none());

    // A new consumer of the group only gets what came after.
    let g = FakeFunction::echo();
    publish(&h, "in", "later", &[]).await;
    let (stop, task) = dispatch(&h, Arc::clone(&g), target(0, 2), "in").await;
    eventually_async(Duration::from_secs(30), "the later reply", || async {
        (h.records("done").await.len() >= 6).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    let bodies: Vec<Bytes> = g.seen().into_iter().map(|s| s.body).collect();
    assert_eq!(bodies, vec![Bytes::from("later")]);
    assert_eq!(g.seen()[0].attempt(), 1);

    // Removing the trigger's consumer deletes the group's offsets.
    h.broker
        .remove(&consumer("in", 1, Duration::from_secs(1)))
        .await
        .unwrap();
    for name in ["kappa-default-t", "kappa-default-t.delivered"] {
        let c = group(name).fetch("in", &[0]).await.unwrap();
        assert!(c.is_empty(), "{name}: {c:?}");
    }
}

/// Replies published at once share produce requests: each publish returns once its batch was
/// acknowledged, and every record is in the topic exactly once.
#[tokio::test]
async fn concurrent_publishes_are_batched_and_each_acknowledged() {
    let h = Kafka::start().await;
    let publishes = (0..300).map(|i| {
        let broker = h.broker.clone();
        async move {
            broker
                .publish(
                    "burst",
                    &[("X-Kappa-Message-Id".to_string(), format!("0:{i}"))],
                    Bytes::from(format!("r{i}")),
                )
                .await
        }
    });
    for result in futures::future::join_all(publishes).await {
        result.unwrap();
    }
    let mut bodies: Vec<String> = h
        .records("burst")
        .await
        .into_iter()
        .map(|(_, _, _, b)| String::from_utf8_lossy(&b).into_owned())
        .collect();
    bodies.sort();
    let mut expected: Vec<String> = (0..300).map(|i| format!("r{i}")).collect();
    expected.sort();
    assert_eq!(bodies, expected);
}

/// A broker that goes away turns a publish into an error naming the topic, in bounded time,
/// instead of a wait for ever (the reply of a message whose function answered, say).
#[tokio::test]
async fn a_publish_to_a_broker_that_went_away_fails() {
    let mut h = Kafka::start().await;
    publish(&h, "replies", "first", &[]).await;
    h.server.0.kill();
    let outcome = tokio::time::timeout(
        Duration::from_secs(300),
        h.broker
            .publish("replies", &[], Bytes::from_static(b"second")),
    )
    .await
    .expect("the publish to a gone broker ended");
    let err = outcome
        .expect_err("a publish to a gone broker fails")
        .to_string();
    assert!(err.contains("replies"), "{err}");
}
