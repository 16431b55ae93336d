//! JetStream with `maxConcurrency` 1: the consumer has one message delivered ahead
//! (`max_ack_pending` 2) that the subscription holds until the one before it is settled. These
//! check what that must not change: nothing is processed ahead of the message in flight, and a
//! kill with a message held loses nothing and keeps the order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use kappa_test_support::eventually_async;
use kappa_triggers::Dispatcher;
use tokio_util::sync::CancellationToken;

use crate::conformance::{Harness, Nats, consumer};
use crate::support::{FakeFunction, fast_config, target};

async fn dispatch(
    h: &Nats,
    function: Arc<FakeFunction>,
    ack_wait: Duration,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let t = target(3, 1);
    let sub = h
        .broker()
        .subscribe(&consumer("orders", t.max_concurrency, ack_wait))
        .await
        .unwrap();
    let dispatcher = Dispatcher::new(t, function, h.broker(), fast_config());
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move { dispatcher.run(sub, stop).await.unwrap() });
    (token, handle)
}

fn bodies(f: &FakeFunction) -> Vec<String> {
    f.seen()
        .iter()
        .map(|s| String::from_utf8_lossy(&s.body).into_owned())
        .collect()
}

#[tokio::test]
async fn a_message_held_ahead_survives_a_kill_in_order() {
    let h = Nats::start().await;
    h.watch("done").await;
    let ack_wait = Duration::from_secs(2);
    // The first platform's function never answers.
    let stuck = FakeFunction::new(Duration::from_secs(3600), |_| (200, "late".into()));
    let (stop, task) = dispatch(&h, Arc::clone(&stuck), ack_wait).await;
    for i in 1..=3 {
        h.broker()
            .publish("orders", &[], Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    // Message 1 is being processed and message 2 was delivered ahead (two unacknowledged on
    // the server), yet the function has only seen message 1.
    let js = jetstream::new(h.broker.client().clone());
    eventually_async(Duration::from_secs(20), "2 messages out", || async {
        let stream = js.get_stream("KAPPA_ORDERS").await.ok()?;
        let mut c = stream
            .get_consumer::<jetstream::consumer::pull::Config>("kappa-default-t")
            .await
            .ok()?;
        let info = c.info().await.ok()?;
        (info.num_ack_pending == 2 && !stuck.seen().is_empty()).then_some(())
    })
    .await;
    assert_eq!(bodies(&stuck), ["1"]);
    // The platform dies with message 1 in flight and message 2 held.
    task.abort();
    let _ = task.await;
    drop(stop);

    let f = FakeFunction::echo();
    let (stop, task) = dispatch(&h, Arc::clone(&f), ack_wait).await;
    let done = eventually_async(Duration::from_secs(30), "3 replies", || async {
        let got = h.captured("done").await;
        (got.len() >= 3).then_some(got)
    })
    .await;
    let replies: Vec<String> = done
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(replies, ["1", "2", "3"]);
    assert_eq!(bodies(&f), ["1", "2", "3"]);
    // Both were delivered before the kill, so the broker counts a second delivery of each
    // (message 2 never ran: "it may have run").
    let seen = f.seen();
    assert!(seen[0].attempt() >= 2, "{:?}", seen[0].headers);
    assert!(seen[1].attempt() >= 2, "{:?}", seen[1].headers);
    assert_eq!(seen[2].attempt(), 1);
    stop.cancel();
    task.await.unwrap();
}

/// A message held behind a retry whose delay outlasts the ack wait is given again by the
/// server while it waits; it is still processed once, after the retried one, with the attempt
/// of its first delivery.
#[tokio::test]
async fn a_held_message_redelivered_while_waiting_runs_once_after_the_retry() {
    let h = Nats::start().await;
    h.watch("done").await;
    let f = FakeFunction::new(Duration::ZERO, |s| {
        if s.body.as_ref() == b"1" && s.attempt() < 2 {
            (503, "not yet".into())
        } else {
            (200, String::from_utf8_lossy(&s.body).into_owned())
        }
    });
    let t = target(3, 1);
    let sub = h
        .broker()
        .subscribe(&consumer("orders", 1, Duration::from_secs(1)))
        .await
        .unwrap();
    // A retry delay of 2.5 s or more: longer than the 1 s ack wait.
    let mut config = fast_config();
    config.backoff = kappa_triggers::Backoff {
        initial: Duration::from_secs(5),
        max: Duration::from_secs(5),
    };
    let dispatcher = Dispatcher::new(t, Arc::clone(&f) as _, h.broker(), config);
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move { dispatcher.run(sub, token).await.unwrap() });
    for i in 1..=2 {
        h.broker()
            .publish("orders", &[], Bytes::from(i.to_string()))
            .await
            .unwrap();
    }
    let done = eventually_async(Duration::from_secs(30), "2 replies", || async {
        let got = h.captured("done").await;
        (got.len() >= 2).then_some(got)
    })
    .await;
    let replies: Vec<String> = done
        .iter()
        .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(replies, ["1", "2"]);
    assert_eq!(bodies(&f), ["1", "1", "2"]);
    assert_eq!(f.seen()[2].attempt(), 1);
    // Nothing more comes: message 2 was acknowledged once, under its newest delivery.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bodies(&f), ["1", "1", "2"]);
    stop.cancel();
    task.await.unwrap();
}
