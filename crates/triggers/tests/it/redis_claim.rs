//! Redis: an entry stuck with a consumer that died is taken over (XAUTOCLAIM) after the ack
//! wait and processed.

use std::sync::Arc;
use std::time::Duration;

use kappa_triggers::{Broker, Dispatcher};
use tokio_util::sync::CancellationToken;

use crate::conformance::{Harness, Redis, consumer};
use crate::support::{FakeFunction, fast_config, target};
use kappa_test_support::eventually_async;

#[tokio::test]
async fn stuck_entries_are_taken_over() {
    let h = Redis::start().await;
    let mut conn = h.conn.clone();
    // A consumer "dead" of the trigger's group reads an entry and never acknowledges it.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("orders")
        .arg("kappa-default-t")
        .arg("0")
        .arg("MKSTREAM")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("orders")
        .arg("*")
        .arg("body")
        .arg("stuck")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("kappa-default-t")
        .arg("dead")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg("orders")
        .arg(">")
        .query_async(&mut conn)
        .await
        .unwrap();

    let f = FakeFunction::echo();
    let ack_wait = Duration::from_secs(1);
    let sub = h
        .broker
        .subscribe(&consumer("orders", 2, ack_wait))
        .await
        .unwrap();
    let dispatcher = Dispatcher::new(target(3, 2), f.clone(), h.broker(), fast_config());
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move { dispatcher.run(sub, stop).await.unwrap() })
    };
    let done = eventually_async(
        Duration::from_secs(15),
        "the stuck entry's reply",
        || async {
            let got = h.captured("done").await;
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    assert_eq!(done[0].1.as_ref(), b"stuck");
    // Claiming counted a second delivery.
    assert_eq!(f.seen()[0].attempt(), 2);
    // It is acknowledged: nothing pending in the group.
    let pending: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg("orders")
        .arg("kappa-default-t")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(pending.0, 0);
    stop.cancel();
    task.await.unwrap();
    drop(Arc::clone(&f));
}
