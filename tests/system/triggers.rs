//! Event triggers end to end: the real `kappa up` with a real `nats-server -js`, triggers made
//! with the CLI, messages published and read back over NATS.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kappa_test_support::eventually_blocking;
use kappa_test_support::servers::NatsServer;
use kappa_triggers::Broker;
use kappa_triggers::nats::NatsBroker;

use crate::harness::{Platform, function_path, http};

/// A message read back: its headers (lower-case names) and body.
pub(crate) type Received = (HashMap<String, String>, Bytes);

/// A NATS server and a client in the test, collecting what arrives on the watched subjects.
pub(crate) struct Nats {
    server: NatsServer,
    rt: tokio::runtime::Runtime,
    client: NatsBroker,
    got: Arc<Mutex<HashMap<String, Vec<Received>>>>,
}

impl Nats {
    pub(crate) fn start() -> Self {
        Self::with_server(NatsServer::start().expect("nats-server (run scripts/install-deps.sh)"))
    }

    fn with_server(server: NatsServer) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(NatsBroker::connect(&server.url())).unwrap();
        Self {
            server,
            rt,
            client,
            got: Arc::default(),
        }
    }

    pub(crate) fn url(&self) -> String {
        self.server.url()
    }

    /// Collects every message published to `subject` from now on.
    pub(crate) fn watch(&self, subject: &str) {
        let client = self.client.client().clone();
        let got = Arc::clone(&self.got);
        let subject = subject.to_string();
        let mut sub = self
            .rt
            .block_on(async {
                let sub = client.subscribe(subject.clone()).await;
                client.flush().await.map(|()| sub)
            })
            .unwrap()
            .unwrap();
        self.rt.spawn(async move {
            while let Some(m) = sub.next().await {
                let headers = m
                    .headers
                    .map(|h| {
                        h.iter()
                            .filter_map(|(k, v)| {
                                v.first()
                                    .map(|v| (k.to_string().to_ascii_lowercase(), v.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                got.lock()
                    .unwrap()
                    .entry(subject.clone())
                    .or_default()
                    .push((headers, m.payload));
            }
        });
    }

    pub(crate) fn got(&self, subject: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .get(subject)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) fn publish(&self, subject: &str, body: &str, headers: &[(&str, &str)]) {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.rt
            .block_on(
                self.client
                    .publish(subject, &headers, Bytes::from(body.to_string())),
            )
            .unwrap();
    }
}

/// Waits until the trigger reports `ready` (its consumer exists on the server).
pub(crate) fn wait_ready(p: &Platform, kind: &str, name: &str) {
    eventually_blocking(Duration::from_secs(30), "the trigger to be ready", || {
        let out = p.cli(&[kind, "get", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["state"] == "ready").then_some(())
    });
}

fn deploy_mq(p: &Platform, name: &str, entry: &str, extra: &[&str]) {
    let code = function_path("testdata/python/mq.py");
    let mut args = vec![
        "fn",
        "create",
        "--name",
        name,
        "--env",
        "python",
        "--code",
        &code,
        "--entrypoint",
        entry,
    ];
    args.extend_from_slice(extra);
    p.ok(&args);
}

/// The issue's walkthrough: the bundled hello function behind a JetStream topic.
#[test]
fn replies_reach_the_response_topic() {
    let nats = Nats::start();
    let p = Platform::start_with(&["--nats-url", &nats.url()]);
    nats.watch("done");
    p.ok(&[
        "mqtrigger",
        "create",
        "--name",
        "orders",
        "--function",
        "hello",
        "--mqtype",
        "nats-jetstream",
        "--topic",
        "orders",
        "--resptopic",
        "done",
    ]);
    wait_ready(&p, "mqtrigger", "orders");
    for i in 0..3 {
        nats.publish("orders", &format!("{{\"order\":{i}}}"), &[]);
    }
    let replies = eventually_blocking(Duration::from_secs(60), "3 replies on done", || {
        let got = nats.got("done");
        (got.len() >= 3).then_some(got)
    });
    for (headers, body) in &replies {
        assert_eq!(body.as_ref(), b"Hello, world!\n");
        assert_eq!(
            headers.get("x-kappa-trigger").map(String::as_str),
            Some("orders")
        );
    }
    let list = p.ok(&["mqt", "list"]);
    assert!(list.contains("orders") && list.contains("ready"), "{list}");
    // The API's /metrics (open, like the probes) counts the acknowledged messages.
    eventually_blocking(Duration::from_secs(10), "3 messages counted ok", || {
        let metrics = http(p.api, "GET", "/metrics", &[], b"").ok()?.text();
        metrics
            .contains(r#"kappa_triggers_messages_total{trigger="default/orders",result="ok"} 3"#)
            .then_some(())
    });
}

/// A function that fails twice then succeeds is retried with backoff; one that always fails
/// ends in the error topic after maxRetries.
#[test]
fn retries_and_the_error_topic() {
    let nats = Nats::start();
    let p = Platform::start_with(&["--no-example", "--nats-url", &nats.url()]);
    nats.watch("flaky-done");
    nats.watch("failing-done");
    nats.watch("failed");
    p.python_env(&[]);
    deploy_mq(&p, "flaky", "mq.flaky", &[]);
    deploy_mq(&p, "failing", "mq.fail", &[]);
    p.ok(&[
        "mqt",
        "create",
        "--name",
        "flaky",
        "--function",
        "flaky",
        "--topic",
        "flaky-in",
        "--resptopic",
        "flaky-done",
        "--maxretries",
        "4",
        "--maxconcurrency",
        "4",
    ]);
    p.ok(&[
        "mqt",
        "create",
        "--name",
        "failing",
        "--function",
        "failing",
        "--topic",
        "failing-in",
        "--resptopic",
        "failing-done",
        "--errortopic",
        "failed",
        "--maxretries",
        "2",
    ]);
    wait_ready(&p, "mqt", "flaky");
    wait_ready(&p, "mqt", "failing");
    for id in 0..3 {
        nats.publish("flaky-in", &format!("{{\"id\":{id},\"succeedAt\":3}}"), &[]);
    }
    nats.publish("failing-in", "doomed", &[("X-Order", "42")]);

    let done = eventually_blocking(Duration::from_secs(60), "3 flaky replies", || {
        let got = nats.got("flaky-done");
        (got.len() >= 3).then_some(got)
    });
    let mut ids = Vec::new();
    for (_, body) in &done {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["attempt"], 3, "{v}");
        ids.push(v["id"].as_i64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);

    let failed = eventually_blocking(Duration::from_secs(60), "the error topic", || {
        let got = nats.got("failed");
        (!got.is_empty()).then_some(got)
    });
    let (headers, body) = &failed[0];
    assert_eq!(body.as_ref(), b"doomed");
    assert_eq!(
        headers.get("x-kappa-attempts").map(String::as_str),
        Some("3")
    );
    assert_eq!(
        headers.get("x-kappa-status").map(String::as_str),
        Some("500")
    );
    assert_eq!(headers.get("x-order").map(String::as_str), Some("42"));
    assert!(
        headers["x-kappa-error"].contains("always failing"),
        "{headers:?}"
    );
    assert!(nats.got("failing-done").is_empty());
}

/// `kill -9` of the platform while 1,000 messages are in flight loses none of them.
#[test]
fn kill_9_mid_stream_loses_nothing() {
    const N: usize = 1000;
    let nats = Nats::start();
    let mut p = Platform::start_with(&["--no-example", "--nats-url", &nats.url()]);
    nats.watch("kill-done");
    p.python_env(&[]);
    // A short timeout keeps the broker's ack wait (timeout + 10 s) short, so what the killed
    // platform held comes back soon.
    deploy_mq(&p, "echo", "mq.echo", &["--fntimeout", "5"]);
    p.ok(&[
        "mqt",
        "create",
        "--name",
        "kill",
        "--function",
        "echo",
        "--topic",
        "kill-in",
        "--resptopic",
        "kill-done",
        "--maxconcurrency",
        "16",
    ]);
    wait_ready(&p, "mqt", "kill");
    for id in 0..N {
        nats.publish(
            "kill-in",
            &format!("{{\"id\":{id}}}"),
            &[("X-Sleep", "0.01")],
        );
    }
    let distinct = |nats: &Nats| -> HashSet<i64> {
        nats.got("kill-done")
            .iter()
            .filter_map(|(_, b)| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter_map(|v| v["id"].as_i64())
            .collect()
    };
    eventually_blocking(Duration::from_secs(60), "the first replies", || {
        (distinct(&nats).len() >= 50).then_some(())
    });
    p.kill9();
    let at_kill = distinct(&nats).len();
    p.restart();
    let all = eventually_blocking(
        Duration::from_secs(120),
        "every message once restarted",
        || {
            let ids = distinct(&nats);
            (ids.len() >= N).then_some(ids)
        },
    );
    assert_eq!(all.len(), N);
    assert!(all.iter().all(|id| (0..N as i64).contains(id)));
    eprintln!(
        "replies before the kill: {at_kill} distinct; total received: {} ({} redelivered duplicates)",
        nats.got("kill-done").len(),
        nats.got("kill-done").len() - N
    );
}

/// A seconds-level cron fires on schedule, once per scheduled time.
#[test]
fn time_triggers_fire_on_schedule() {
    let p = Platform::start();
    p.python_env(&[]);
    deploy_mq(&p, "tick", "mq.tick", &[]);
    p.ok(&[
        "tt",
        "create",
        "--name",
        "every-second",
        "--function",
        "tick",
        "--cron",
        "*/1 * * * * *",
        "--method",
        "GET",
        "--subpath",
        "/timer",
    ]);
    let ticks = |p: &Platform| -> Vec<String> {
        let out = p.cli(&["fn", "logs", "tick", "--tail", "1000"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("tick every-second"))
            .map(str::to_string)
            .collect()
    };
    let lines = eventually_blocking(Duration::from_secs(60), "3 ticks", || {
        let lines = ticks(&p);
        (lines.len() >= 3).then_some(lines)
    });
    // Each line names its scheduled time: none twice.
    let times: Vec<&str> = lines
        .iter()
        .filter_map(|l| {
            l.split_whitespace()
                .skip_while(|w| *w != "every-second")
                .nth(1)
        })
        .collect();
    let distinct: HashSet<&&str> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "{lines:?}");
    assert!(lines[0].contains("GET /timer"), "{lines:?}");
    let list = p.ok(&["tt", "list"]);
    assert!(
        list.contains("every-second") && list.contains("ready"),
        "{list}"
    );
    p.ok(&["tt", "delete", "every-second"]);
}

/// Bad trigger specs are refused with the field named, by the server as well as the CLI.
#[test]
fn bad_trigger_specs_are_refused() {
    let p = Platform::start();
    p.python_env(&[]);
    deploy_mq(&p, "tick", "mq.tick", &[]);
    let err = p.fails(&[
        "tt",
        "create",
        "--name",
        "bad",
        "--function",
        "tick",
        "--cron",
        "61 * * * *",
    ]);
    assert!(err.contains("spec.cron"), "{err}");
    let err = p.fails(&[
        "tt",
        "create",
        "--name",
        "bad",
        "--function",
        "tick",
        "--cron",
        "* * *",
    ]);
    assert!(
        err.contains("spec.cron") && err.contains("3 fields"),
        "{err}"
    );
    let err = p.fails(&[
        "tt",
        "create",
        "--name",
        "bad",
        "--function",
        "nope",
        "--cron",
        "@every 5s",
    ]);
    assert!(err.contains("spec.functionref.name"), "{err}");
    let err = p.fails(&[
        "mqt",
        "create",
        "--name",
        "bad",
        "--function",
        "nope",
        "--topic",
        "t",
    ]);
    assert!(err.contains("spec.functionref.name"), "{err}");
    let err = p.fails(&[
        "mqt",
        "create",
        "--name",
        "bad",
        "--function",
        "tick",
        "--topic",
        "",
    ]);
    assert!(err.contains("spec.topic"), "{err}");
    let err = p.fails(&[
        "mqt",
        "create",
        "--name",
        "bad",
        "--function",
        "tick",
        "--topic",
        "t",
        "--mqtype",
        "rabbitmq",
    ]);
    // The CLI refuses it before the API does, naming its flag and the supported types.
    assert!(
        err.contains("--mqtype")
            && err.contains("nats-jetstream")
            && err.contains("redis")
            && err.contains("kafka"),
        "{err}"
    );

    // The server's own refusals (not only the CLI's checks).
    for (body, field) in [
        (
            r#"{"metadata":{"name":"bad"},"spec":{"cron":"61 * * * *","functionref":{"type":"name","name":"tick"}}}"#,
            "spec.cron",
        ),
        (
            r#"{"metadata":{"name":"bad"},"spec":{"cron":"@every 5s","functionref":{"type":"name","name":"nope"}}}"#,
            "spec.functionref.name",
        ),
    ] {
        let r = p.api("POST", "/v1/timetriggers", body.as_bytes());
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{}", r.text());
    }
    for (body, field) in [
        (
            r#"{"metadata":{"name":"bad"},"spec":{"messageQueueType":"nats-jetstream","topic":"","functionref":{"type":"name","name":"tick"}}}"#,
            "spec.topic",
        ),
        (
            r#"{"metadata":{"name":"bad"},"spec":{"messageQueueType":"rabbitmq","topic":"t","functionref":{"type":"name","name":"tick"}}}"#,
            "spec.messageQueueType",
        ),
    ] {
        let r = p.api("POST", "/v1/messagequeuetriggers", body.as_bytes());
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"]["field"], field, "{}", r.text());
    }
}

/// A trigger on a broker that is down is accepted, reports why, and consumes once it is up.
#[test]
fn an_unreachable_broker_is_reported_then_retried() {
    let p = Platform::start();
    // The port is chosen once the platform holds its own, and named in the trigger's metadata.
    let port = kappa_test_support::servers::free_port().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    p.python_env(&[]);
    deploy_mq(&p, "echo", "mq.echo", &[]);
    p.ok(&[
        "mqt",
        "create",
        "--name",
        "later",
        "--function",
        "echo",
        "--topic",
        "later",
        "--resptopic",
        "later-done",
        "--metadata",
        &format!("url={url}"),
    ]);
    let reason = eventually_blocking(Duration::from_secs(30), "state error", || {
        let out = p.cli(&["mqt", "get", "later", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["state"] == "error").then(|| v["status"]["reason"].to_string())
    });
    assert!(reason.contains(&port.to_string()), "{reason}");
    let nats = Nats::with_server(NatsServer::start_on(port).unwrap());
    nats.watch("later-done");
    wait_ready(&p, "mqt", "later");
    nats.publish("later", "{}", &[]);
    eventually_blocking(Duration::from_secs(60), "the reply", || {
        (!nats.got("later-done").is_empty()).then_some(())
    });
}
