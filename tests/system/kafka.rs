//! Kafka triggers end to end: the real `kappa up --kafka-url` with a real Kafka-protocol
//! broker (`tansu`), a trigger made with the CLI as a Fission user would (`--mqtype kafka`,
//! `--metadata bootstrapServers=...`), and a `kill -9` of the platform mid-stream. A missing
//! `tansu` fails it (`scripts/install-deps.sh` installs it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use kappa_test_support::eventually_blocking;
use kappa_test_support::servers::KafkaServer;
use kappa_triggers::kafka::KafkaBroker;
use kappa_triggers::{Broker, ConsumerSpec};

use crate::harness::{Platform, function_path};

/// A message read back: its headers (lower-case names) and body.
type Received = (HashMap<String, String>, Bytes);

/// A broker and a client in the test, reading topics through consumer groups of its own.
struct Kafka {
    server: KafkaServer,
    rt: tokio::runtime::Runtime,
    client: KafkaBroker,
    got: Arc<Mutex<HashMap<String, Vec<Received>>>>,
}

impl Kafka {
    fn start() -> Self {
        let server = KafkaServer::start().expect("start tansu");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(KafkaBroker::connect(&server.url())).unwrap();
        Self {
            server,
            rt,
            client,
            got: Arc::default(),
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    /// Collects every record of `topic` (from its start) in the background.
    fn watch(&self, topic: &str) {
        let spec = ConsumerSpec {
            durable_name: format!("test-reader-{topic}"),
            topic: topic.to_string(),
            max_in_flight: 256,
            ack_wait: Duration::from_secs(30),
            metadata: Default::default(),
        };
        let mut sub = self.rt.block_on(self.client.subscribe(&spec)).unwrap();
        let got = Arc::clone(&self.got);
        let topic = topic.to_string();
        self.rt.spawn(async move {
            while let Ok(delivery) = sub.next().await {
                let (m, settle) = delivery.into_parts();
                got.lock().unwrap().entry(topic.clone()).or_default().push((
                    m.headers
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect(),
                    m.body,
                ));
                let _ = settle.ack().await;
            }
        });
    }

    fn got(&self, topic: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    fn publish(&self, topic: &str, body: &str, headers: &[(&str, &str)]) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.rt
            .block_on(
                self.client
                    .publish(topic, &headers, Bytes::from(body.to_string())),
            )
            .unwrap();
    }
}

fn wait_ready(p: &Platform, name: &str) {
    eventually_blocking(Duration::from_secs(60), "the trigger to be ready", || {
        let out = p.cli(&["mqt", "get", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["state"] == "ready").then_some(())
    });
}

/// Replies with the record's headers, and `kill -9` of the platform while 500 records are in
/// flight loses none of them: every id is processed at least once after the restart.
#[test]
fn kafka_trigger_survives_kill_9() {
    const N: usize = 500;
    let kafka = Kafka::start();
    // The platform default (`--kafka-url`) points nowhere: the trigger's own metadata
    // (`bootstrapServers`, Fission's key) names the broker.
    let mut p = Platform::start_with(&["--no-example", "--kafka-url", "kafka://127.0.0.1:1"]);
    p.python_env(&[]);
    let code = function_path("testdata/python/mq.py");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "echo",
        "--env",
        "python",
        "--code",
        &code,
        "--entrypoint",
        "mq.echo",
        "--fntimeout",
        "5",
    ]);
    let servers = kafka.url().trim_start_matches("kafka://").to_string();
    let metadata = format!("bootstrapServers={servers}");
    p.ok(&[
        "mqt",
        "create",
        "--name",
        "kill",
        "--function",
        "echo",
        "--mqtype",
        "kafka",
        "--topic",
        "kill-in",
        "--resptopic",
        "kill-done",
        "--maxconcurrency",
        "16",
        "--metadata",
        &metadata,
    ]);
    wait_ready(&p, "kill");
    let shown = p.ok(&["mqt", "get", "kill", "-o", "json"]);
    assert!(shown.contains("\"kafka\""), "{shown}");
    kafka.watch("kill-done");
    for id in 0..N {
        kafka.publish(
            "kill-in",
            &format!("{{\"id\":{id}}}"),
            &[("X-Sleep", "0.01"), ("X-Order", &id.to_string())],
        );
    }
    let distinct = |kafka: &Kafka| -> HashSet<i64> {
        kafka
            .got("kill-done")
            .iter()
            .filter_map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter_map(|v| v["id"].as_i64())
            .collect()
    };
    eventually_blocking(Duration::from_secs(120), "the first replies", || {
        (distinct(&kafka).len() >= 30).then_some(())
    });
    let first = kafka.got("kill-done")[0].0.clone();
    assert_eq!(
        first.get("x-kappa-topic").map(String::as_str),
        Some("kill-in")
    );
    assert_eq!(
        first.get("x-kappa-trigger").map(String::as_str),
        Some("kill")
    );
    assert!(first.contains_key("x-kappa-message-id"), "{first:?}");
    p.kill9();
    let at_kill = distinct(&kafka).len();
    assert!(at_kill < N, "all {N} were done before the kill");
    p.restart();
    let all = eventually_blocking(
        Duration::from_secs(240),
        "every record once restarted",
        || {
            let ids = distinct(&kafka);
            (ids.len() >= N).then_some(ids)
        },
    );
    assert_eq!(all.len(), N);
    assert!(all.iter().all(|id| (0..N as i64).contains(id)));
    eprintln!(
        "replies before the kill: {at_kill} distinct; total received: {} ({} redelivered duplicates)",
        kafka.got("kill-done").len(),
        kafka.got("kill-done").len() - N
    );
}
