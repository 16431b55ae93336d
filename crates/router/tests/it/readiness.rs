//! The router's index fed by two sources through a `ReadinessGate`: a fake executor's endpoint
//! feed (real HTTP, NDJSON, as `kappa-executor` serves it) and pod readiness reports (the calls
//! `kappa-kube`'s pod watcher makes), with real upstreams and requests through the public
//! listener.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use kappa_core::{EndpointIndex, Readiness as _};
use kappa_router::{EndpointFeeder, ReadinessGate, RemoteConfig, RemoteProvisioner};
use kappa_store::Store as _;
use kappa_test_support::eventually_async;
use kappa_types::Kind;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, Upstream, echo, empty, send};

/// The executor's HTTP API as far as a router uses it: the endpoint feed (one queued stream
/// per connection; none queued answers 503, as an unreachable executor), usage reports, and
/// provision calls (counted, answered "unavailable").
#[derive(Clone, Default)]
struct FakeExecutor {
    feeds: Arc<Mutex<VecDeque<mpsc::UnboundedReceiver<String>>>>,
    feed_calls: Arc<AtomicUsize>,
    provisions: Arc<AtomicUsize>,
}

impl FakeExecutor {
    async fn start(shutdown: CancellationToken) -> (Self, String) {
        let fake = Self::default();
        let app = axum::Router::new()
            .route("/v1/endpoints", get(feed))
            .route("/v1/usage", post(|| async { StatusCode::NO_CONTENT }))
            .route("/v1/provision", post(provision))
            .with_state(fake.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
                .unwrap();
        });
        (fake, url)
    }

    /// Queues the stream the next feed connection gets; events are sent on the returned end.
    fn next_feed(&self) -> mpsc::UnboundedSender<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.feeds.lock().unwrap().push_back(rx);
        tx
    }
}

async fn feed(State(fake): State<FakeExecutor>) -> Response {
    fake.feed_calls.fetch_add(1, Ordering::SeqCst);
    let Some(rx) = fake.feeds.lock().unwrap().pop_front() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "executor unreachable").into_response();
    };
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        Some((Ok::<_, Infallible>(Bytes::from(line + "\n")), rx))
    });
    Body::from_stream(lines).into_response()
}

async fn provision(State(fake): State<FakeExecutor>) -> Response {
    fake.provisions.fetch_add(1, Ordering::SeqCst);
    let body = json!({
        "error": {"code": "unavailable", "message": "no capacity in this test"},
        "provisionError": {"kind": "unavailable", "message": "no capacity in this test"},
    });
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}

fn added(id: &str, addr: SocketAddr, generation: i64) -> String {
    json!({"type": "added", "namespace": "default", "function": "hello", "instanceId": id,
        "address": addr.to_string(), "generation": generation, "capacity": 8})
    .to_string()
}

fn send_line(tx: &mpsc::UnboundedSender<String>, line: String) {
    tx.send(line).unwrap();
}

/// `n` requests to `/hello`; returns how many each instance served.
async fn spread(h: &Harness, n: usize) -> Vec<String> {
    let mut served = Vec::new();
    for _ in 0..n {
        let (status, _, body) = h.get("/hello").await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        served.push(echo(&body)["instance"].as_str().unwrap().to_string());
    }
    served
}

#[tokio::test]
async fn pod_readiness_takes_endpoints_out_and_back_without_the_executor() {
    let shutdown = CancellationToken::new();
    let (fake, url) = FakeExecutor::start(shutdown.clone()).await;
    let feed = fake.next_feed();

    let index = Arc::new(EndpointIndex::new());
    let gate = Arc::new(ReadinessGate::new(Arc::clone(&index)));
    let mut config = RemoteConfig::new(&url, "router-0");
    config.usage_interval = Duration::from_millis(100);
    let provisioner = RemoteProvisioner::new(config.clone(), Arc::clone(&index)).unwrap();
    let feeder = EndpointFeeder::with_gate(config, Arc::clone(&gate)).unwrap();
    {
        let feeder = feeder.clone();
        let token = shutdown.clone();
        tokio::spawn(async move { feeder.run(token).await });
    }
    let h = Harness::start_on(Arc::clone(&index), Arc::new(provisioner)).await;
    h.put_function("hello", 10).await;
    h.put_trigger("hello", "hello", |s| s.relativeurl = Some("/hello".into()))
        .await;
    let generation = h
        .store
        .get(Kind::Function, "default", "hello")
        .await
        .unwrap()
        .unwrap()
        .value["metadata"]["generation"]
        .as_i64()
        .unwrap();

    // Two instances from the feed; the pod watcher has seen "pod-a" ready and not yet "pod-b"
    // (admitted on the feed alone).
    let a = Upstream::start("pod-a").await;
    let b = Upstream::start("pod-b").await;
    gate.set_ready("pod-a", true);
    send_line(&feed, added("pod-a", a.addr, generation));
    send_line(&feed, added("pod-b", b.addr, generation));
    send_line(&feed, json!({"type": "synced"}).to_string());
    assert!(feeder.wait_synced(Duration::from_secs(10)).await);
    let served = spread(&h, 6).await;
    assert!(served.contains(&"pod-a".to_string()) && served.contains(&"pod-b".to_string()));

    // A request in flight on one of them when its pod turns not ready finishes; new ones go to
    // the other at once, warm (no provision call).
    let public = h.public;
    let held = tokio::spawn(async move {
        let req = http::Request::get("/hello")
            .header("host", "test")
            .header("x-test-gate", "1")
            .body(empty())
            .unwrap();
        send(public, req).await
    });
    eventually_async(
        Duration::from_secs(15),
        "the gated request to reach an instance",
        || async { a.gated.load(Ordering::SeqCst) + b.gated.load(Ordering::SeqCst) == 1 },
    )
    .await;
    let (victim, other) = if a.gated.load(Ordering::SeqCst) == 1 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    gate.set_ready(&victim.id, false);
    assert_eq!(gate.held_out(), std::slice::from_ref(&victim.id));
    let before = victim.requests.load(Ordering::SeqCst);
    assert!(spread(&h, 6).await.iter().all(|i| *i == other.id));
    assert_eq!(victim.requests.load(Ordering::SeqCst), before);
    victim.gate.add_permits(1);
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["instance"], victim.id.as_str());

    // Ready again: the same endpoint is back.
    gate.set_ready(&victim.id, true);
    let served = spread(&h, 6).await;
    assert!(served.contains(&victim.id), "{served:?}");

    // The executor becomes unreachable (the feed ends, reconnecting answers 503): the mirrored
    // endpoints stay, and pod readiness alone still takes a dead pod out and puts it back.
    drop(feed);
    eventually_async(
        Duration::from_secs(15),
        "the feeder to try reconnecting",
        || async { fake.feed_calls.load(Ordering::SeqCst) >= 2 },
    )
    .await;
    gate.set_ready(&victim.id, false);
    assert!(spread(&h, 6).await.iter().all(|i| *i == other.id));
    gate.set_ready(&victim.id, true);
    assert!(spread(&h, 6).await.contains(&victim.id));

    // The executor is back and removes the victim: a ready pod does not bring it back.
    let feed = fake.next_feed();
    send_line(&feed, added("pod-a", a.addr, generation));
    send_line(&feed, added("pod-b", b.addr, generation));
    send_line(&feed, json!({"type": "synced"}).to_string());
    send_line(
        &feed,
        json!({"type": "removed", "namespace": "default", "function": "hello",
            "instanceId": victim.id, "exit": "exited with code 137"})
        .to_string(),
    );
    eventually_async(
        Duration::from_secs(15),
        "the feed to remove the victim",
        || async { gate.endpoints().len() == 1 },
    )
    .await;
    gate.set_ready(&victim.id, true);
    assert!(spread(&h, 6).await.iter().all(|i| *i == other.id));
    assert_eq!(
        fake.provisions.load(Ordering::SeqCst),
        0,
        "every request was warm"
    );
    shutdown.cancel();
}
