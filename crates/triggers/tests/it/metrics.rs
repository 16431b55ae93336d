//! The trigger workers' metrics, read back from the encoded registry: messages by result for a
//! message-queue trigger run by the manager (success, a retry then success, retries exhausted to
//! the error topic), a dropped message, consumers, and time-trigger fires.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use kappa_store::{MemoryStore, Precondition, Store};
use kappa_triggers::{
    Backoff, Broker, BrokerError, Connector, Dispatcher, ManagerConfig, TriggerManager,
    TriggerMetrics,
};
use kappa_types::{
    Function, FunctionReference, FunctionSpec, MessageQueueTrigger, MessageQueueTriggerSpec,
    TimeTrigger, TimeTriggerSpec,
};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::conformance::consumer;
use crate::support::{FakeBroker, FakeFunction, fast_config, target};
use kappa_test_support::eventually_async;

/// Hands out the same fake broker for any URL.
struct FakeConnector(FakeBroker);

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(&self, _mq_type: &str, _url: &str) -> Result<Arc<dyn Broker>, BrokerError> {
        Ok(Arc::new(self.0.clone()))
    }
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// The value of sample `series` (name and labels as encoded), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn messages(text: &str, trigger: &str, result: &str) -> f64 {
    sample(
        text,
        &format!("kappa_triggers_messages_total{{trigger=\"{trigger}\",result=\"{result}\"}}"),
    )
}

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

#[tokio::test]
async fn messages_are_counted_by_result() {
    let store = store_with_function().await;
    let spec = MessageQueueTriggerSpec {
        functionref: FunctionReference::name("fn"),
        message_queue_type: "nats-jetstream".into(),
        topic: "orders".into(),
        resp_topic: Some("done".into()),
        error_topic: Some("failed".into()),
        max_retries: 2,
        content_type: "text/plain".into(),
        max_concurrency: 1,
        ..MessageQueueTriggerSpec::default()
    };
    store
        .put(
            MessageQueueTrigger::new("orders", spec).to_json(),
            Precondition::None,
        )
        .await
        .unwrap();
    // "ok" succeeds, "flaky" fails its first attempt, "fail" always fails.
    let f = FakeFunction::new(Duration::ZERO, |s| match (&s.body[..], s.attempt()) {
        (b"fail", _) | (b"flaky", 1) => (500, "no".into()),
        _ => (200, "yes".into()),
    });
    let broker = FakeBroker::default();
    let mut registry = Registry::default();
    let manager = TriggerManager::new(config(), Arc::clone(&store), f.clone())
        .with_connector(Arc::new(FakeConnector(broker.clone())))
        .with_metrics(&mut registry);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { manager.run(token).await });

    eventually_async(Duration::from_secs(10), "a consumer", || async {
        (sample(&encode(&registry), "kappa_triggers_consumers") == 1.0).then_some(())
    })
    .await;
    for body in ["ok", "flaky", "fail"] {
        broker
            .publish("orders", &[], Bytes::from_static(body.as_bytes()))
            .await
            .unwrap();
    }
    let text = eventually_async(Duration::from_secs(10), "every message settled", || async {
        let text = encode(&registry);
        (messages(&text, "default/orders", "ok") == 2.0
            && messages(&text, "default/orders", "error_topic") == 1.0)
            .then_some(text)
    })
    .await;
    // One retry of "flaky", two of "fail" (maxRetries 2), then the error topic.
    assert_eq!(messages(&text, "default/orders", "retried"), 3.0, "{text}");
    assert_eq!(messages(&text, "default/orders", "dropped"), 0.0, "{text}");
    assert_eq!(sample(&text, "kappa_triggers_message_seconds_count"), 6.0);
    assert_eq!(broker.published_to("failed").len(), 1);
    assert!(text.contains("# HELP kappa_triggers_messages Messages of message-queue triggers"));

    stop.cancel();
    task.await.unwrap();
    assert_eq!(sample(&encode(&registry), "kappa_triggers_consumers"), 0.0);
}

#[tokio::test]
async fn a_message_without_an_error_topic_is_counted_as_dropped() {
    let mut registry = Registry::default();
    let metrics = TriggerMetrics::new(&mut registry);
    let broker = FakeBroker::default();
    let sub = broker
        .subscribe(&consumer("orders", 1, Duration::from_secs(10)))
        .await
        .unwrap();
    let mut t = target(0, 1);
    t.error_topic = None;
    let f = FakeFunction::new(Duration::ZERO, |_| (503, "down".into()));
    let dispatcher =
        Dispatcher::new(t, f, Arc::new(broker.clone()), fast_config()).with_metrics(metrics);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { dispatcher.run(sub, token).await });
    broker
        .publish("orders", &[], Bytes::from_static(b"x"))
        .await
        .unwrap();
    eventually_async(Duration::from_secs(10), "the dropped message", || async {
        (messages(&encode(&registry), "default/t", "dropped") == 1.0).then_some(())
    })
    .await;
    assert_eq!(broker.log().termed.len(), 1);
    assert_eq!(messages(&encode(&registry), "default/t", "ok"), 0.0);
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn time_trigger_fires_are_counted() {
    let store = store_with_function().await;
    let timer = TimeTrigger::new(
        "tick",
        TimeTriggerSpec {
            cron: "*/1 * * * * *".into(),
            functionref: FunctionReference::name("fn"),
            method: "GET".into(),
            subpath: "/tick".into(),
        },
    );
    store
        .put(timer.to_json(), Precondition::None)
        .await
        .unwrap();
    let f = FakeFunction::echo();
    let mut registry = Registry::default();
    let manager =
        TriggerManager::new(config(), Arc::clone(&store), f.clone()).with_metrics(&mut registry);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { manager.run(token).await });
    let fires = |text: &str, result: &str| {
        sample(
            text,
            &format!(
                "kappa_triggers_timer_fires_total{{trigger=\"default/tick\",result=\"{result}\"}}"
            ),
        )
    };
    eventually_async(Duration::from_secs(10), "2 counted fires", || async {
        (fires(&encode(&registry), "ok") >= 2.0).then_some(())
    })
    .await;
    stop.cancel();
    task.await.unwrap();
    let text = encode(&registry);
    // Every invocation that answered was counted (a run cut off by the stop may not be).
    let runs = f.seen().len() as f64;
    assert!(
        fires(&text, "ok") <= runs && fires(&text, "ok") >= runs - 1.0,
        "{text}"
    );
    assert_eq!(fires(&text, "failed"), 0.0, "{text}");
}
