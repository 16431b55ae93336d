use std::sync::Arc;
use std::time::Duration;

use kappa_core::{ExitReason, Provision, ProvisionError, Provisioner};
use kappa_test_support::eventually;
use kappa_types::Kind;

use crate::fake::Harness;

#[tokio::test]
async fn pool_is_filled_and_refilled_after_a_specialization() {
    let h = Harness::start().await;
    h.env("python", 3).await;
    eventually(Duration::from_secs(5), "3 warm instances", || {
        h.backend.live_count() == 3
    })
    .await;
    let f = h.function("hello", "python", |_| {}).await;
    let generation = h.generation(&f).await;
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    let endpoints = h.index.endpoints(&f);
    assert_eq!(endpoints.len(), 1);
    // The specialized instance came from the pool (no extra create before it), and the pool refills.
    let calls = h.backend.calls.lock().unwrap().specialized.clone();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1.entrypoint, "hello.main");
    assert_eq!(calls[0].1.filename.as_deref(), Some("f.py"));
    eventually(Duration::from_secs(5), "pool refilled", || {
        h.backend.live_count() == 4
    })
    .await;
    // Admission works on the inserted endpoint.
    assert!(h.index.get(&f).unwrap().try_admit(generation).is_some());
}

#[tokio::test]
async fn pool_is_refilled_after_a_failed_specialization() {
    // The refill waits for the specialization that took the instance (so it does not compete
    // with it), and happens whether that specialization succeeds or fails.
    let h = Harness::start().await;
    h.env("python", 2).await;
    eventually(Duration::from_secs(5), "2 warm instances", || {
        h.backend.live_count() == 2
    })
    .await;
    h.backend
        .failing
        .lock()
        .unwrap()
        .insert("bad.main".into(), "SyntaxError".into());
    let f = h.function("bad", "python", |_| {}).await;
    let generation = h.generation(&f).await;
    assert!(h.manager.provision(&f, generation).await.is_err());
    let taken = h.backend.calls.lock().unwrap().specialized[0].0.clone();
    eventually(Duration::from_secs(5), "pool refilled to 2", || {
        let live = h.backend.live.lock().unwrap();
        live.len() == 2 && !live.contains_key(&taken)
    })
    .await;
    assert_eq!(h.backend.calls.lock().unwrap().created.len(), 3);
}

#[tokio::test]
async fn concurrent_misses_share_a_specialization_up_to_requests_per_pod() {
    let h = Harness::start().await;
    h.env("python", 2).await;
    let f = h
        .function("hello", "python", |s| s.requests_per_pod = 4)
        .await;
    let generation = h.generation(&f).await;
    *h.backend.delay.lock().unwrap() = Duration::from_millis(200);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let m = h.manager.clone();
        let f = f.clone();
        tasks.push(tokio::spawn(
            async move { m.provision(&f, generation).await },
        ));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Provision::Added);
    }
    assert_eq!(
        h.backend.calls.lock().unwrap().specialized.len(),
        1,
        "one instance serves 4 slots"
    );
}

#[tokio::test]
async fn concurrency_caps_instances_then_at_capacity() {
    let h = Harness::start().await;
    h.env("python", 1).await;
    let f = h.function("hello", "python", |s| s.concurrency = 2).await;
    let generation = h.generation(&f).await;
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::AtCapacity
    );
    assert_eq!(h.index.endpoints(&f).len(), 2);
}

#[tokio::test]
async fn specialize_failure_reaches_the_caller_and_the_function_status() {
    let h = Harness::start().await;
    h.env("python", 1).await;
    h.backend.failing.lock().unwrap().insert(
        "bad.main".into(),
        "ModuleNotFoundError: No module named 'nope'".into(),
    );
    let f = h.function("bad", "python", |_| {}).await;
    let generation = h.generation(&f).await;
    let err = h.manager.provision(&f, generation).await.unwrap_err();
    match err {
        ProvisionError::Specialize { message, detail } => {
            assert!(message.contains("ModuleNotFoundError"), "{message}");
            assert!(detail.is_some());
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(h.index.endpoints(&f).is_empty());
    let deleted = h.backend.calls.lock().unwrap().deleted.clone();
    assert_eq!(deleted.len(), 1, "the failed instance is deleted");
    let obj = h
        .store
        .get(Kind::Function, "default", "bad")
        .await
        .unwrap()
        .unwrap();
    assert!(
        obj.value["status"]["lastError"]
            .as_str()
            .unwrap_or_default()
            .contains("ModuleNotFoundError")
    );
}

#[tokio::test]
async fn unknown_function_and_environment_are_named() {
    let h = Harness::start().await;
    let missing = kappa_core::FunctionId::new("default", "ghost");
    assert!(matches!(
        h.manager.provision(&missing, 1).await,
        Err(ProvisionError::FunctionNotFound(_))
    ));
    let f = h.function("orphan", "noenv", |_| {}).await;
    let generation = h.generation(&f).await;
    match h.manager.provision(&f, generation).await {
        Err(ProvisionError::EnvironmentNotFound(name)) => assert!(name.contains("noenv")),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn idle_instances_are_reaped_down_to_min_scale() {
    let h = Harness::start().await;
    h.env("python", 0).await;
    let f = h
        .function("hello", "python", |s| {
            s.idletimeout = 30;
            s.concurrency = 3;
        })
        .await;
    let generation = h.generation(&f).await;
    for _ in 0..2 {
        assert_eq!(
            h.manager.provision(&f, generation).await.unwrap(),
            Provision::Added
        );
    }
    assert_eq!(h.index.endpoints(&f).len(), 2);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.index.endpoints(&f).len(), 2, "not idle long enough yet");
    eventually(Duration::from_secs(60), "idle instances reaped", || {
        h.index.endpoints(&f).is_empty()
    })
    .await;
    eventually(Duration::from_secs(5), "processes deleted", || {
        h.backend.live_count() == 0
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn min_scale_is_kept_ready_without_requests() {
    let h = Harness::start().await;
    h.env("python", 0).await;
    let f = h
        .function("warm", "python", |s| {
            s.min_scale = 2;
            s.idletimeout = 1;
        })
        .await;
    eventually(Duration::from_secs(10), "minScale instances", || {
        h.index.endpoints(&f).len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.index.endpoints(&f).len(),
        2,
        "minScale instances are never reaped"
    );
}

#[tokio::test]
async fn busy_instances_are_not_reaped_and_updates_drain_old_code() {
    let h = Harness::start().await;
    h.env("python", 1).await;
    let f = h.function("hello", "python", |_| {}).await;
    let generation = h.generation(&f).await;
    h.manager.provision(&f, generation).await.unwrap();
    let old = h.index.endpoints(&f)[0].clone();
    let permit = h.index.get(&f).unwrap().try_admit(generation).unwrap();
    // Update the function: new generation.
    let mut obj = h
        .store
        .get(Kind::Function, "default", "hello")
        .await
        .unwrap()
        .unwrap()
        .value;
    obj["spec"]["functionTimeout"] = serde_json::json!(30);
    h.store
        .put(obj, kappa_store::Precondition::None)
        .await
        .unwrap();
    let new_generation = h.generation(&f).await;
    assert!(new_generation > generation);
    eventually(Duration::from_secs(5), "old instance draining", || {
        old.is_draining()
    })
    .await;
    // A whole reconcile pass saw it draining with a request in flight.
    h.whole_pass().await;
    assert!(
        h.backend
            .live
            .lock()
            .unwrap()
            .contains_key(&old.instance_id),
        "in-flight request keeps it alive"
    );
    drop(permit);
    eventually(Duration::from_secs(5), "drained instance deleted", || {
        !h.backend
            .live
            .lock()
            .unwrap()
            .contains_key(&old.instance_id)
    })
    .await;
    h.manager.provision(&f, new_generation).await.unwrap();
    assert!(h.index.get(&f).unwrap().try_admit(new_generation).is_some());
}

#[tokio::test]
async fn an_instance_that_dies_leaves_the_index_with_its_reason() {
    let h = Harness::start().await;
    h.env("python", 1).await;
    let f = h.function("hello", "python", |_| {}).await;
    let generation = h.generation(&f).await;
    h.manager.provision(&f, generation).await.unwrap();
    let endpoint = Arc::clone(&h.index.endpoints(&f)[0]);
    h.backend.kill(
        &endpoint.instance_id,
        ExitReason {
            code: None,
            signal: Some(9),
            oom_killed: true,
        },
    );
    let reason = endpoint.wait_exit(Duration::from_secs(5)).await.unwrap();
    assert!(reason.contains("out of memory"), "{reason}");
    eventually(Duration::from_secs(5), "endpoint removed", || {
        h.index.endpoints(&f).is_empty()
    })
    .await;
}

#[tokio::test]
async fn shutdown_deletes_every_instance() {
    let mut h = Harness::start().await;
    h.env("python", 3).await;
    eventually(Duration::from_secs(5), "pool", || {
        h.backend.live_count() == 3
    })
    .await;
    h.shutdown.cancel();
    let task = std::mem::replace(&mut h.task, tokio::spawn(async {}));
    task.await.unwrap();
    assert_eq!(h.backend.live_count(), 0);
}
