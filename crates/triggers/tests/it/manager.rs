//! The trigger manager against a store: status while a broker is unreachable, reconnection,
//! and time triggers (fire on schedule, once per scheduled time across restarts, no stacking).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_test_support::servers::{NatsServer, free_port};
use kappa_triggers::{Backoff, Broker, ManagerConfig, TriggerManager};
use kappa_types::{
    Function, FunctionReference, FunctionSpec, Kind, MessageQueueTrigger, MessageQueueTriggerSpec,
    TimeTrigger, TimeTriggerSpec,
};
use tokio_util::sync::CancellationToken;

use crate::support::{FakeFunction, fast_config};
use kappa_test_support::eventually_async;

fn config() -> ManagerConfig {
    ManagerConfig {
        dispatch: fast_config(),
        reconnect: Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(500),
        },
        ..ManagerConfig::default()
    }
}

async fn store_with_function() -> Arc<dyn Store> {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let f = Function::new("fn", FunctionSpec::new("python", "pkg", "x.main"));
    store.put(f.to_json(), Precondition::None).await.unwrap();
    store
}

fn start(
    store: &Arc<dyn Store>,
    f: &Arc<FakeFunction>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let manager = TriggerManager::new(config(), Arc::clone(store), f.clone());
    let stop = CancellationToken::new();
    let token = stop.clone();
    (stop, tokio::spawn(async move { manager.run(token).await }))
}

async fn status(store: &Arc<dyn Store>, kind: Kind, name: &str) -> serde_json::Value {
    store
        .get(kind, "default", name)
        .await
        .unwrap()
        .map(|o| o.value["status"].clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn unreachable_broker_is_reported_then_consumed_once_up() {
    let store = store_with_function().await;
    let port = free_port().unwrap();
    let url = format!("nats://127.0.0.1:{port}");
    let mut spec = MessageQueueTriggerSpec {
        functionref: FunctionReference::name("fn"),
        message_queue_type: "nats-jetstream".into(),
        topic: "orders".into(),
        resp_topic: Some("done".into()),
        content_type: "text/plain".into(),
        max_concurrency: 1,
        ..MessageQueueTriggerSpec::default()
    };
    spec.metadata.insert("url".into(), url.clone());
    let t = MessageQueueTrigger::new("orders", spec);
    store.put(t.to_json(), Precondition::None).await.unwrap();
    let f = FakeFunction::echo();
    let (stop, task) = start(&store, &f);

    let reason = eventually_async(Duration::from_secs(10), "state error", || async {
        let s = status(&store, Kind::MessageQueueTrigger, "orders").await;
        (s["state"] == "error").then(|| s["reason"].as_str().unwrap_or("").to_string())
    })
    .await;
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");

    let _server = NatsServer::start_on(port).unwrap();
    eventually_async(Duration::from_secs(10), "state ready", || async {
        (status(&store, Kind::MessageQueueTrigger, "orders").await["state"] == "ready")
            .then_some(())
    })
    .await;
    let client = kappa_triggers::nats::NatsBroker::connect(&url)
        .await
        .unwrap();
    client
        .publish("orders", &[], Bytes::from_static(b"hello"))
        .await
        .unwrap();
    eventually_async(Duration::from_secs(10), "the invocation", || async {
        (f.seen().len() == 1).then_some(())
    })
    .await;
    assert_eq!(f.seen()[0].header("x-kappa-trigger"), Some("orders"));
    assert_eq!(f.seen()[0].header("content-type"), Some("text/plain"));

    // Deleting the trigger removes its consumer from the server.
    store
        .delete(
            Kind::MessageQueueTrigger,
            "default",
            "orders",
            Precondition::None,
        )
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.client().clone());
    eventually_async(
        Duration::from_secs(10),
        "the consumer to be removed",
        || async {
            let stream = js.get_stream("KAPPA_ORDERS").await.unwrap();
            stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>(
                    "kappa-default-orders",
                )
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    stop.cancel();
    task.await.unwrap();
}

fn timer(cron: &str) -> TimeTrigger {
    TimeTrigger::new(
        "tick",
        TimeTriggerSpec {
            cron: cron.into(),
            functionref: FunctionReference::name("fn"),
            method: "GET".into(),
            subpath: "/tick".into(),
        },
    )
}

fn scheduled(f: &FakeFunction) -> Vec<String> {
    f.seen()
        .iter()
        .map(|s| s.header("x-kappa-scheduled-time").unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn time_triggers_fire_once_per_scheduled_time_across_restarts() {
    let store = store_with_function().await;
    store
        .put(timer("*/1 * * * * *").to_json(), Precondition::None)
        .await
        .unwrap();
    let f = FakeFunction::echo();
    let (stop, task) = start(&store, &f);
    eventually_async(Duration::from_secs(10), "3 runs", || async {
        (f.seen().len() >= 3).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    let first = f.seen().len();
    let s = &f.seen()[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.path, "/tick");
    assert_eq!(s.header("x-kappa-timer-name"), Some("tick"));
    assert_eq!(s.header("x-fission-timer-name"), Some("tick"));
    let st = status(&store, Kind::TimeTrigger, "tick").await;
    assert_eq!(st["state"], "ready");
    assert_eq!(
        st["lastFiredTime"].as_str(),
        scheduled(&f).last().map(String::as_str)
    );

    // A new manager on the same store (a restart) carries on without repeating a time.
    let (stop, task) = start(&store, &f);
    eventually_async(Duration::from_secs(10), "2 more runs", || async {
        (f.seen().len() >= first + 2).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    let times = scheduled(&f);
    let distinct: HashSet<&String> = times.iter().collect();
    assert_eq!(distinct.len(), times.len(), "a time fired twice: {times:?}");
}

#[tokio::test]
async fn a_run_still_in_flight_is_not_stacked() {
    let store = store_with_function().await;
    store
        .put(timer("@every 1s").to_json(), Precondition::None)
        .await
        .unwrap();
    let f = FakeFunction::new(Duration::from_millis(2500), |_| (200, "slow".into()));
    let (stop, task) = start(&store, &f);
    let reason = eventually_async(Duration::from_secs(10), "a skipped run", || async {
        let s = status(&store, Kind::TimeTrigger, "tick").await;
        let reason = s["reason"].as_str().unwrap_or("").to_string();
        reason.contains("skipped").then_some(reason)
    })
    .await;
    assert!(reason.contains("still in flight"), "{reason}");
    assert_eq!(f.max_in_flight.load(std::sync::atomic::Ordering::SeqCst), 1);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_bad_schedule_is_reported() {
    let store = store_with_function().await;
    store
        .put(timer("61 * * * *").to_json(), Precondition::None)
        .await
        .unwrap();
    let f = FakeFunction::echo();
    let (stop, task) = start(&store, &f);
    let s = eventually_async(Duration::from_secs(5), "state error", || async {
        let s = status(&store, Kind::TimeTrigger, "tick").await;
        (s["state"] == "error").then_some(s)
    })
    .await;
    assert!(
        s["reason"].as_str().unwrap().starts_with("spec.cron"),
        "{s}"
    );
    stop.cancel();
    task.await.unwrap();
}
