//! The newdeploy executor: dedicated instances (never from the pool), capped by maxScale,
//! minScale kept, idle ones reaped to minScale (zero included).

use std::time::Duration;

use kappa_core::{Provision, Provisioner};
use kappa_test_support::eventually;
use kappa_types::ExecutorType;

use crate::fake::Harness;

#[tokio::test]
async fn newdeploy_instances_are_dedicated_and_capped_by_max_scale() {
    let h = Harness::start().await;
    h.env("python", 2).await;
    eventually(Duration::from_secs(5), "pool of 2", || {
        h.backend.live_count() == 2
    })
    .await;
    let warm: Vec<String> = h.backend.live.lock().unwrap().keys().cloned().collect();
    let f = h
        .function("nd", "python", |s| {
            s.executor_type = ExecutorType::Newdeploy;
            s.max_scale = 2;
            s.concurrency = 10; // not the newdeploy cap
        })
        .await;
    let generation = h.generation(&f).await;
    for _ in 0..2 {
        assert_eq!(
            h.manager.provision(&f, generation).await.unwrap(),
            Provision::Added
        );
    }
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::AtCapacity,
        "maxScale caps newdeploy"
    );
    // Both specialized instances were created for the function, not taken from the pool.
    let specialized: Vec<String> = h.specialized().into_iter().map(|(id, _)| id).collect();
    assert_eq!(specialized.len(), 2);
    for id in &specialized {
        assert!(!warm.contains(id), "{id} came from the warm pool");
    }
    let live: Vec<String> = h.backend.live.lock().unwrap().keys().cloned().collect();
    for id in &warm {
        assert!(live.contains(id), "warm instance {id} is still in the pool");
    }
}

#[tokio::test(start_paused = true)]
async fn newdeploy_keeps_min_scale_and_reaps_down_to_it() {
    let h = Harness::start().await;
    h.env("python", 0).await;
    let f = h
        .function("nd", "python", |s| {
            s.executor_type = ExecutorType::Newdeploy;
            s.min_scale = 1;
            s.max_scale = 3;
            s.idletimeout = 5;
        })
        .await;
    eventually(Duration::from_secs(10), "minScale instance", || {
        h.index.endpoints(&f).len() == 1
    })
    .await;
    let generation = h.generation(&f).await;
    // Scale up: every slot taken, then a miss adds an instance, up to maxScale.
    let mut permits = Vec::new();
    for _ in 0..3 {
        loop {
            if let Some(p) = h.index.get(&f).unwrap().try_admit(generation) {
                permits.push(p);
                break;
            }
            assert_eq!(
                h.manager.provision(&f, generation).await.unwrap(),
                Provision::Added
            );
        }
    }
    assert_eq!(h.index.endpoints(&f).len(), 3);
    assert!(h.index.get(&f).unwrap().try_admit(generation).is_none());
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::AtCapacity
    );
    drop(permits);
    eventually(Duration::from_secs(60), "reaped down to minScale", || {
        h.index.endpoints(&f).len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.index.endpoints(&f).len(), 1, "minScale is never reaped");
}

#[tokio::test(start_paused = true)]
async fn newdeploy_with_min_scale_zero_scales_to_zero_and_back() {
    let h = Harness::start().await;
    h.env("python", 0).await;
    let f = h
        .function("nd", "python", |s| {
            s.executor_type = ExecutorType::Newdeploy;
            s.min_scale = 0;
            s.idletimeout = 5;
        })
        .await;
    // A whole reconcile pass saw the function.
    h.whole_pass().await;
    assert!(h.index.endpoints(&f).is_empty(), "nothing before a request");
    let generation = h.generation(&f).await;
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    assert_eq!(h.index.endpoints(&f).len(), 1);
    eventually(Duration::from_secs(60), "scaled to zero", || {
        h.index.endpoints(&f).is_empty() && h.backend.live_count() == 0
    })
    .await;
    // The next request starts one again.
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    assert_eq!(h.index.endpoints(&f).len(), 1);
}
