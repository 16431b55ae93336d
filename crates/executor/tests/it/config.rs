//! Secrets and config maps: read from the store into the specialization, and instances rolled
//! when they change (configuration fingerprint).

use std::time::Duration;

use kappa_core::{ConfigKind, Provision, ProvisionError, Provisioner};
use kappa_store::Precondition;
use kappa_test_support::{eventually, eventually_async};
use kappa_types::{Kind, NamedRef};

use crate::fake::Harness;

async fn reader(h: &Harness) -> kappa_core::FunctionId {
    h.function("reader", "python", |s| {
        s.secrets = vec![NamedRef::new("db")];
        s.configmaps = vec![NamedRef::new("app")];
        s.env.insert("GREETING".into(), "hi".into());
    })
    .await
}

#[tokio::test]
async fn specialization_carries_secret_and_config_values_and_env() {
    let h = Harness::start().await;
    h.env("python", 1).await;
    h.secret("db", &[("password", "hunter2")]).await;
    h.configmap("app", &[("mode", "fast")]).await;
    let f = reader(&h).await;
    let generation = h.generation(&f).await;
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    let calls = h.specialized();
    let request = &calls[0].1;
    assert_eq!(request.env.get("GREETING").map(String::as_str), Some("hi"));
    assert_eq!(request.files.len(), 2);
    let secret = &request.files[0];
    assert_eq!(
        (secret.kind, secret.namespace.as_str(), secret.name.as_str()),
        (ConfigKind::Secret, "default", "db")
    );
    assert_eq!(secret.entries["password"], b"hunter2");
    let config = &request.files[1];
    assert_eq!(config.kind, ConfigKind::ConfigMap);
    assert_eq!(config.entries["mode"], b"fast");
    // Debug output (what a log line would show) has no value.
    assert!(!format!("{request:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_changed_secret_rolls_the_instances_and_new_requests_get_the_new_value() {
    let h = Harness::start().await;
    h.env("python", 1).await;
    h.secret("db", &[("password", "old")]).await;
    h.configmap("app", &[("mode", "fast")]).await;
    let f = reader(&h).await;
    let generation = h.generation(&f).await;
    h.manager.provision(&f, generation).await.unwrap();
    let old = h.index.endpoints(&f)[0].clone();
    // A request in flight on the old instance keeps it until it ends.
    let permit = h.index.get(&f).unwrap().try_admit(generation).unwrap();
    // Not rolled by itself: its own configuration is current (a whole reconcile pass saw it).
    h.whole_pass().await;
    assert!(!old.is_draining());

    h.secret("db", &[("password", "new")]).await;
    eventually(Duration::from_secs(5), "old instance draining", || {
        old.is_draining()
    })
    .await;
    // The function's generation did not change, and no new request can reach the old one.
    assert_eq!(h.generation(&f).await, generation);
    assert!(h.index.get(&f).unwrap().try_admit(generation).is_none());
    assert!(
        h.backend
            .live
            .lock()
            .unwrap()
            .contains_key(&old.instance_id),
        "in-flight request keeps it alive"
    );
    assert_eq!(
        h.manager.provision(&f, generation).await.unwrap(),
        Provision::Added
    );
    let calls = h.specialized();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[1].1.files[0].entries["password"], b"new");
    let fresh = h.index.get(&f).unwrap().try_admit(generation).unwrap();
    assert_ne!(fresh.endpoint().instance_id, old.instance_id);
    drop(permit);
    eventually(Duration::from_secs(5), "drained instance deleted", || {
        !h.backend
            .live
            .lock()
            .unwrap()
            .contains_key(&old.instance_id)
    })
    .await;
    // The new instance stays: it has the current configuration.
    h.whole_pass().await;
    assert_eq!(h.index.endpoints(&f).len(), 1);
    assert!(!h.index.endpoints(&f)[0].is_draining());

    // A config map change rolls too.
    let current = h.index.endpoints(&f)[0].clone();
    h.configmap("app", &[("mode", "slow")]).await;
    eventually(
        Duration::from_secs(5),
        "rolled on a config map change",
        || current.is_draining(),
    )
    .await;
}

#[tokio::test]
async fn min_scale_instances_are_replaced_with_the_new_values() {
    let h = Harness::start().await;
    h.env("python", 0).await;
    h.secret("db", &[("password", "old")]).await;
    h.configmap("app", &[("mode", "fast")]).await;
    let f = h
        .function("reader", "python", |s| {
            s.secrets = vec![NamedRef::new("db")];
            s.min_scale = 1;
        })
        .await;
    eventually(Duration::from_secs(5), "minScale instance", || {
        h.index.endpoints(&f).len() == 1
    })
    .await;
    h.secret("db", &[("password", "new")]).await;
    eventually(
        Duration::from_secs(5),
        "replacement with the new value",
        || {
            let endpoints = h.index.endpoints(&f);
            endpoints.len() == 1 && !endpoints[0].is_draining() && {
                let calls = h.specialized();
                calls.last().is_some_and(|(id, r)| {
                    *id == endpoints[0].instance_id && r.files[0].entries["password"] == b"new"
                })
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_missing_secret_fails_fast_naming_it_without_taking_an_instance() {
    let h = Harness::start().await;
    h.env("python", 1).await;
    eventually(Duration::from_secs(5), "pool", || {
        h.backend.live_count() == 1
    })
    .await;
    h.secret("db", &[("password", "x")]).await;
    h.configmap("app", &[("mode", "fast")]).await;
    let f = reader(&h).await;
    // Deleted after the function was admitted (the API's `?force=true`).
    h.store
        .delete(Kind::Secret, "default", "db", Precondition::None)
        .await
        .unwrap();
    let generation = h.generation(&f).await;
    let started = tokio::time::Instant::now();
    match h.manager.provision(&f, generation).await {
        Err(ProvisionError::Specialize { message, .. }) => {
            assert!(message.contains("secret default/db"), "{message}");
            assert!(message.contains("spec.secrets[0]"), "{message}");
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    assert!(h.specialized().is_empty(), "no instance was specialized");
    assert_eq!(h.backend.live_count(), 1, "the warm instance was not used");
}

#[tokio::test(start_paused = true)]
async fn creating_the_missing_secret_ends_the_failure_back_off() {
    let h = Harness::start().await;
    h.env("python", 0).await;
    h.configmap("app", &[("mode", "fast")]).await;
    let f = reader(&h).await; // its secret `db` does not exist
    let generation = h.generation(&f).await;
    assert!(h.manager.provision(&f, generation).await.is_err());
    let failed_at = tokio::time::Instant::now();
    h.secret("db", &[("password", "x")]).await;
    // The failure's back-off (1 s of virtual time) ends with the configuration change: the
    // provision succeeds before the back-off would have ended by itself.
    eventually_async(
        Duration::from_millis(900).saturating_sub(failed_at.elapsed()),
        "a provision after the secret appeared, within the back-off",
        || async {
            matches!(
                h.manager.provision(&f, generation).await,
                Ok(Provision::Added)
            )
        },
    )
    .await;
    assert_eq!(h.index.endpoints(&f).len(), 1);
}
