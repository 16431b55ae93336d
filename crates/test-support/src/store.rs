//! The `Store` conformance suite: every check is a generic `async fn` taking a factory, and
//! [`store_conformance_tests!`](crate::store_conformance_tests) turns the whole list into
//! `#[tokio::test]`s for one implementation. `MemoryStore` and `RedbStore` run it from
//! `crates/store/tests`, `KubeStore` (over the fake API server) from `crates/kube/tests`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kappa_store::{
    EventType, Precondition, Store, StoreError, StoreOptions, StoredObject, WatchEvent, WatchStream,
};
use kappa_types::Kind;
use serde_json::{Value, json};
use tempfile::TempDir;

/// A store under test, with whatever must outlive it (its directory).
pub struct Subject {
    pub store: Arc<dyn Store>,
    _dir: Option<TempDir>,
}

impl Subject {
    pub fn new(store: Arc<dyn Store>, dir: Option<TempDir>) -> Self {
        Self { store, _dir: dir }
    }
}

/// Makes a fresh, empty store with these options.
pub type Make = fn(StoreOptions) -> Subject;

/// Generates one `#[tokio::test]` per conformance check for the factory `$make` (a
/// [`Make`](crate::store::Make)); `@checks $make; a, b, ...` generates only the listed ones.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:path) => {
        $crate::store_conformance_tests!(@checks $make;
            create_get_list_update_delete,
            create_stamps_metadata,
            generation_changes_only_with_spec,
            status_is_written_only_by_put_status,
            preconditions_on_put,
            preconditions_on_put_status_and_delete,
            failed_writes_change_nothing,
            invalid_objects_are_rejected,
            list_orders_by_namespace_then_name,
            versions_are_global_and_monotonic,
            watch_replays_then_goes_live,
            watch_none_sees_only_the_future,
            watch_filters_kinds,
            watch_reports_deletes,
            watch_from_list_version_misses_nothing,
            watch_too_old_is_gone,
            lagging_watcher_recovers_from_the_log,
            lagging_beyond_history_is_gone,
            concurrent_writers_produce_a_gapless_sequence,
            dropping_the_store_ends_watches,
        );
    };
    (@checks $make:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                $crate::store::$check($make).await;
            }
        )*
    };
}

/// How long a test waits for something that should happen promptly before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

fn default_store(make: Make) -> Subject {
    make(StoreOptions::default())
}

/// A Function object as a client would send it.
pub fn function(name: &str, namespace: Option<&str>, spec: Value) -> Value {
    let mut value = json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Function",
        "metadata": {"name": name},
        "spec": spec,
    });
    if let Some(namespace) = namespace {
        value["metadata"]["namespace"] = json!(namespace);
    }
    value
}

fn environment(name: &str) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Environment",
        "metadata": {"name": name},
        "spec": {"runtime": {"image": "python"}},
    })
}

async fn put(store: &dyn Store, value: Value) -> StoredObject {
    store.put(value, Precondition::None).await.expect("put")
}

async fn get(store: &dyn Store, kind: Kind, namespace: &str, name: &str) -> Option<StoredObject> {
    store.get(kind, namespace, name).await.expect("get")
}

/// The next event, failing the test if none comes within [`PATIENCE`] or it is an error.
async fn next_event(stream: &mut WatchStream) -> WatchEvent {
    match tokio::time::timeout(PATIENCE, stream.next()).await {
        Ok(Some(Ok(event))) => event,
        Ok(Some(Err(error))) => panic!("watch failed: {error}"),
        Ok(None) => panic!("watch ended"),
        Err(_) => panic!("no watch event within {PATIENCE:?}"),
    }
}

/// The next item, which must arrive within [`PATIENCE`] (`None` when the stream ended).
async fn next_item(stream: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    tokio::time::timeout(PATIENCE, stream.next())
        .await
        .unwrap_or_else(|_| panic!("no watch item within {PATIENCE:?}"))
}

fn summary(event: &WatchEvent) -> (EventType, Kind, String, u64) {
    (
        event.event_type,
        event.object.kind,
        event.object.name.clone(),
        event.object.resource_version,
    )
}

fn meta<'a>(object: &'a StoredObject, field: &str) -> &'a Value {
    &object.value["metadata"][field]
}

pub async fn create_get_list_update_delete(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    assert_eq!(store.current_version().await.expect("version"), 0);
    assert_eq!(get(store, Kind::Function, "default", "a").await, None);

    let created = put(store, function("a", None, json!({"x": 1}))).await;
    assert_eq!(
        (
            created.kind,
            created.namespace.as_str(),
            created.name.as_str(),
            created.resource_version
        ),
        (Kind::Function, "default", "a", 1)
    );
    assert_eq!(created.value["metadata"]["namespace"], "default");
    assert_eq!(created.value["spec"], json!({"x": 1}));
    assert_eq!(
        get(store, Kind::Function, "default", "a").await,
        Some(created.clone())
    );
    // Same name, other kind: another object.
    assert_eq!(get(store, Kind::Environment, "default", "a").await, None);

    let list = store.list(Kind::Function, None).await.expect("list");
    assert_eq!(list.items, vec![created.clone()]);
    assert_eq!(list.resource_version, 1);

    let updated = put(store, function("a", None, json!({"x": 2}))).await;
    assert_eq!(updated.resource_version, 2);
    assert_eq!(updated.value["spec"], json!({"x": 2}));
    assert_eq!(
        get(store, Kind::Function, "default", "a").await,
        Some(updated.clone())
    );

    let deleted = store
        .delete(Kind::Function, "default", "a", Precondition::None)
        .await
        .expect("delete");
    assert_eq!(deleted.resource_version, 3);
    assert_eq!(meta(&deleted, "resourceVersion"), "3");
    assert_eq!(deleted.value["spec"], json!({"x": 2}));
    assert_eq!(get(store, Kind::Function, "default", "a").await, None);
    let list = store.list(Kind::Function, None).await.expect("list");
    assert!(list.items.is_empty());
    assert_eq!(list.resource_version, 3);
    assert_eq!(store.current_version().await.expect("version"), 3);
}

pub async fn create_stamps_metadata(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let mut value = function("a", Some("team"), json!({}));
    value["metadata"]["uid"] = json!("from-the-client");
    value["metadata"]["generation"] = json!(42);
    value["metadata"]["resourceVersion"] = json!("99");
    value["metadata"]["creationTimestamp"] = json!("1970-01-01T00:00:00Z");
    value["metadata"]["labels"] = json!({"app": "x"});
    let created = put(store, value).await;
    let uid = meta(&created, "uid").as_str().expect("uid is a string");
    assert_eq!(
        uuid::Uuid::parse_str(uid)
            .expect("uid is a uuid")
            .get_version_num(),
        4
    );
    let created_at = meta(&created, "creationTimestamp")
        .as_str()
        .expect("timestamp is a string");
    let created_at = chrono::DateTime::parse_from_rfc3339(created_at).expect("RFC 3339 timestamp");
    assert_eq!(created_at.offset().local_minus_utc(), 0);
    assert!(created_at.timestamp() > 0);
    assert_eq!(meta(&created, "generation"), 1);
    assert_eq!(meta(&created, "resourceVersion"), "1");
    assert_eq!(meta(&created, "labels"), &json!({"app": "x"}));
    assert_eq!(created.namespace, "team");

    // Two objects get two uids.
    let other = put(store, function("b", Some("team"), json!({}))).await;
    assert_ne!(meta(&other, "uid"), meta(&created, "uid"));

    // An update keeps uid and creationTimestamp, whatever the client sends.
    let mut value = function("a", Some("team"), json!({}));
    value["metadata"]["uid"] = json!("changed");
    value["metadata"]["creationTimestamp"] = json!("2000-01-01T00:00:00Z");
    let updated = put(store, value).await;
    assert_eq!(meta(&updated, "uid"), meta(&created, "uid"));
    assert_eq!(
        meta(&updated, "creationTimestamp"),
        meta(&created, "creationTimestamp")
    );
    assert_eq!(meta(&updated, "resourceVersion"), "3");
    assert_eq!(updated.resource_version, 3);
}

pub async fn generation_changes_only_with_spec(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let generation = |o: &StoredObject| meta(o, "generation").as_i64().expect("generation");
    let created = put(store, function("a", None, json!({"x": 1}))).await;
    assert_eq!(generation(&created), 1);
    let mut relabelled = function("a", None, json!({"x": 1}));
    relabelled["metadata"]["labels"] = json!({"l": "v"});
    let same_spec = put(store, relabelled).await;
    assert_eq!(
        generation(&same_spec),
        1,
        "labels only: generation unchanged"
    );
    assert_eq!(same_spec.resource_version, 2, "but the version moves");
    let changed = put(store, function("a", None, json!({"x": 2}))).await;
    assert_eq!(generation(&changed), 2);
    let status = store
        .put_status(
            Kind::Function,
            "default",
            "a",
            json!({"ready": true}),
            Precondition::None,
        )
        .await
        .expect("put_status");
    assert_eq!(generation(&status), 2, "status never changes generation");
    let changed_again = put(store, function("a", None, json!({"x": 3}))).await;
    assert_eq!(generation(&changed_again), 3);
}

pub async fn status_is_written_only_by_put_status(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    // On create, the status given is kept.
    let mut value = function("a", None, json!({"x": 1}));
    value["status"] = json!({"phase": "initial"});
    let created = put(store, value).await;
    assert_eq!(created.value["status"], json!({"phase": "initial"}));

    let status = store
        .put_status(
            Kind::Function,
            "default",
            "a",
            json!({"phase": "ready"}),
            Precondition::None,
        )
        .await
        .expect("put_status");
    assert_eq!(status.resource_version, 2);
    assert_eq!(meta(&status, "resourceVersion"), "2");
    assert_eq!(status.value["status"], json!({"phase": "ready"}));
    assert_eq!(
        status.value["spec"],
        json!({"x": 1}),
        "put_status leaves spec alone"
    );
    assert_eq!(meta(&status, "uid"), meta(&created, "uid"));

    // On update, status in the value is ignored, with or without one.
    let mut value = function("a", None, json!({"x": 2}));
    value["status"] = json!({"phase": "forged"});
    let updated = put(store, value).await;
    assert_eq!(updated.value["status"], json!({"phase": "ready"}));
    let updated = put(store, function("a", None, json!({"x": 3}))).await;
    assert_eq!(updated.value["status"], json!({"phase": "ready"}));
    assert_eq!(
        get(store, Kind::Function, "default", "a")
            .await
            .expect("present")
            .value["status"],
        json!({"phase": "ready"})
    );

    // An object created without status gets none on update either.
    put(store, function("b", None, json!({}))).await;
    let mut value = function("b", None, json!({"y": 1}));
    value["status"] = json!({"phase": "forged"});
    let updated = put(store, value).await;
    assert_eq!(updated.value.get("status"), None);
}

fn conflict(name: &str, expected: u64, actual: u64) -> StoreError {
    StoreError::Conflict {
        kind: Kind::Function,
        namespace: "default".to_string(),
        name: name.to_string(),
        expected,
        actual,
    }
}

fn not_found(name: &str) -> StoreError {
    StoreError::NotFound {
        kind: Kind::Function,
        namespace: "default".to_string(),
        name: name.to_string(),
    }
}

fn already_exists(name: &str) -> StoreError {
    StoreError::AlreadyExists {
        kind: Kind::Function,
        namespace: "default".to_string(),
        name: name.to_string(),
    }
}

pub async fn preconditions_on_put(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let value = || function("a", None, json!({}));

    // Absent.
    assert_eq!(
        store.put(value(), Precondition::MustExist).await,
        Err(not_found("a"))
    );
    assert_eq!(
        store.put(value(), Precondition::ResourceVersion(1)).await,
        Err(not_found("a"))
    );
    let created = store
        .put(value(), Precondition::MustNotExist)
        .await
        .expect("create");
    assert_eq!(created.resource_version, 1);

    // Present.
    assert_eq!(
        store.put(value(), Precondition::MustNotExist).await,
        Err(already_exists("a"))
    );
    assert_eq!(
        store
            .put(value(), Precondition::MustExist)
            .await
            .expect("update")
            .resource_version,
        2
    );
    assert_eq!(
        store.put(value(), Precondition::ResourceVersion(1)).await,
        Err(conflict("a", 1, 2))
    );
    assert_eq!(
        store.put(value(), Precondition::ResourceVersion(3)).await,
        Err(conflict("a", 3, 2))
    );
    let updated = store
        .put(value(), Precondition::ResourceVersion(2))
        .await
        .expect("update at 2");
    assert_eq!(updated.resource_version, 3);
    assert_eq!(
        store
            .put(value(), Precondition::None)
            .await
            .expect("replace")
            .resource_version,
        4
    );
    // `None` also creates.
    assert_eq!(
        store
            .put(function("b", None, json!({})), Precondition::None)
            .await
            .expect("create")
            .resource_version,
        5
    );
}

pub async fn preconditions_on_put_status_and_delete(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let status = |p| store.put_status(Kind::Function, "default", "a", json!({"s": 1}), p);
    let delete = |p| store.delete(Kind::Function, "default", "a", p);

    for precondition in [
        Precondition::None,
        Precondition::MustExist,
        Precondition::ResourceVersion(1),
        Precondition::MustNotExist,
    ] {
        assert_eq!(
            status(precondition).await,
            Err(not_found("a")),
            "{precondition:?}"
        );
        assert_eq!(
            delete(precondition).await,
            Err(not_found("a")),
            "{precondition:?}"
        );
    }
    put(store, function("a", None, json!({}))).await;
    assert_eq!(
        status(Precondition::MustNotExist).await,
        Err(already_exists("a"))
    );
    assert_eq!(
        status(Precondition::ResourceVersion(7)).await,
        Err(conflict("a", 7, 1))
    );
    assert_eq!(
        status(Precondition::ResourceVersion(1))
            .await
            .expect("status")
            .resource_version,
        2
    );
    assert_eq!(
        status(Precondition::MustExist)
            .await
            .expect("status")
            .resource_version,
        3
    );
    assert_eq!(
        status(Precondition::None)
            .await
            .expect("status")
            .resource_version,
        4
    );

    assert_eq!(
        delete(Precondition::MustNotExist).await,
        Err(already_exists("a"))
    );
    assert_eq!(
        delete(Precondition::ResourceVersion(3)).await,
        Err(conflict("a", 3, 4))
    );
    let deleted = delete(Precondition::ResourceVersion(4))
        .await
        .expect("delete");
    assert_eq!(deleted.resource_version, 5);
    assert_eq!(deleted.value["status"], json!({"s": 1}));
    assert_eq!(delete(Precondition::None).await, Err(not_found("a")));

    put(store, function("a", None, json!({}))).await;
    assert_eq!(
        delete(Precondition::MustExist)
            .await
            .expect("delete")
            .resource_version,
        7
    );
}

pub async fn failed_writes_change_nothing(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let before = put(store, function("a", None, json!({"x": 1}))).await;
    let version = store.current_version().await.expect("version");
    let mut live = store.watch(&[], None);

    let failures = [
        store
            .put(
                function("a", None, json!({"x": 2})),
                Precondition::MustNotExist,
            )
            .await,
        store
            .put(
                function("a", None, json!({"x": 2})),
                Precondition::ResourceVersion(99),
            )
            .await,
        store
            .put(function("b", None, json!({})), Precondition::MustExist)
            .await,
        store
            .put(
                json!({"kind": "Function", "metadata": {}}),
                Precondition::None,
            )
            .await,
        store
            .put_status(
                Kind::Function,
                "default",
                "a",
                json!({"s": 1}),
                Precondition::ResourceVersion(99),
            )
            .await,
        store
            .put_status(
                Kind::Function,
                "default",
                "b",
                json!({"s": 1}),
                Precondition::None,
            )
            .await,
        store
            .delete(
                Kind::Function,
                "default",
                "a",
                Precondition::ResourceVersion(99),
            )
            .await,
        store
            .delete(Kind::Function, "default", "b", Precondition::None)
            .await,
    ];
    for failure in failures {
        assert!(failure.is_err(), "expected a failure, got {failure:?}");
    }
    assert_eq!(store.current_version().await.expect("version"), version);
    assert_eq!(
        get(store, Kind::Function, "default", "a").await,
        Some(before)
    );
    assert_eq!(get(store, Kind::Function, "default", "b").await, None);
    let list = store.list(Kind::Function, None).await.expect("list");
    assert_eq!((list.items.len(), list.resource_version), (1, version));

    // No event was emitted: the next one, live or replayed, is the next successful write.
    let next = put(store, function("c", None, json!({}))).await;
    assert_eq!(next.resource_version, version + 1);
    assert_eq!(
        summary(&next_event(&mut live).await),
        (EventType::Added, Kind::Function, "c".into(), version + 1)
    );
    let mut replay = store.watch(&[], Some(version));
    assert_eq!(
        summary(&next_event(&mut replay).await),
        (EventType::Added, Kind::Function, "c".into(), version + 1)
    );
}

pub async fn invalid_objects_are_rejected(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let cases = [
        (json!("a string"), "the object must be a JSON object"),
        (json!({"metadata": {"name": "a"}, "spec": {}}), "kind"),
        (json!({"kind": "Gadget", "metadata": {"name": "a"}}), "kind"),
        (json!({"kind": "Function", "spec": {}}), "metadata.name"),
        (
            json!({"kind": "Function", "metadata": {"namespace": "x"}}),
            "metadata.name",
        ),
        (
            json!({"kind": "Function", "metadata": {"name": ""}}),
            "metadata.name",
        ),
        (
            json!({"kind": "Function", "metadata": {"name": "a", "namespace": 5}}),
            "metadata.namespace",
        ),
    ];
    for (value, field) in cases {
        match store.put(value.clone(), Precondition::None).await {
            Err(StoreError::Invalid(message)) => {
                assert!(
                    message.contains(field),
                    "{value}: message {message:?} should name {field}"
                );
            }
            other => panic!("{value}: expected Invalid, got {other:?}"),
        }
    }
    assert_eq!(store.current_version().await.expect("version"), 0);
    // The plural spelling of a kind is accepted and stored canonically.
    let mut value = function("a", None, json!({}));
    value["kind"] = json!("functions");
    let stored = put(store, value).await;
    assert_eq!(
        (stored.kind, &stored.value["kind"]),
        (Kind::Function, &json!("Function"))
    );
}

pub async fn list_orders_by_namespace_then_name(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let objects = [
        ("zeta", Some("team")),
        ("b", None),
        ("a", Some("team-x")),
        ("m", Some("team")),
        ("a", None),
        ("c", Some("alpha")),
        ("a", Some("team")),
    ];
    for (name, namespace) in objects {
        put(store, function(name, namespace, json!({}))).await;
    }
    put(store, environment("a")).await;
    put(store, environment("zz")).await;
    let version = store.current_version().await.expect("version");

    let keys = |list: &kappa_store::List| -> Vec<(String, String)> {
        list.items
            .iter()
            .map(|o| (o.namespace.clone(), o.name.clone()))
            .collect()
    };
    let owned = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, m)| (n.to_string(), m.to_string()))
            .collect()
    };
    let all = store.list(Kind::Function, None).await.expect("list");
    assert_eq!(
        keys(&all),
        owned(&[
            ("alpha", "c"),
            ("default", "a"),
            ("default", "b"),
            ("team", "a"),
            ("team", "m"),
            ("team", "zeta"),
            ("team-x", "a"),
        ])
    );
    assert_eq!(all.resource_version, version);
    let team = store
        .list(Kind::Function, Some("team"))
        .await
        .expect("list");
    assert_eq!(
        keys(&team),
        owned(&[("team", "a"), ("team", "m"), ("team", "zeta")])
    );
    assert_eq!(team.resource_version, version);
    assert!(
        store
            .list(Kind::Function, Some("nobody"))
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert!(
        store
            .list(Kind::Package, None)
            .await
            .expect("list")
            .items
            .is_empty()
    );
    let environments = store.list(Kind::Environment, None).await.expect("list");
    assert_eq!(
        keys(&environments),
        owned(&[("default", "a"), ("default", "zz")])
    );
    assert!(
        environments
            .items
            .iter()
            .all(|o| o.kind == Kind::Environment)
    );
}

pub async fn versions_are_global_and_monotonic(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let mut versions = Vec::new();
    versions.push(
        put(store, function("a", None, json!({})))
            .await
            .resource_version,
    );
    versions.push(put(store, environment("e")).await.resource_version);
    versions.push(
        put(store, function("a", Some("other"), json!({})))
            .await
            .resource_version,
    );
    versions.push(
        store
            .put_status(
                Kind::Environment,
                "default",
                "e",
                json!({}),
                Precondition::None,
            )
            .await
            .expect("status")
            .resource_version,
    );
    versions.push(
        store
            .delete(Kind::Function, "default", "a", Precondition::None)
            .await
            .expect("delete")
            .resource_version,
    );
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    assert_eq!(store.current_version().await.expect("version"), 5);
    let env = get(store, Kind::Environment, "default", "e")
        .await
        .expect("present");
    assert_eq!(
        (env.resource_version, meta(&env, "resourceVersion")),
        (4, &json!("4"))
    );
}

pub async fn watch_replays_then_goes_live(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    for name in ["a", "b", "c", "d"] {
        put(store, function(name, None, json!({}))).await;
    }
    let mut stream = store.watch(&[], Some(2));
    // Written after the call but before the first poll: must come, once, after the replay.
    put(store, function("e", None, json!({}))).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(summary(&next_event(&mut stream).await));
    }
    assert_eq!(
        seen,
        vec![
            (EventType::Added, Kind::Function, "c".into(), 3),
            (EventType::Added, Kind::Function, "d".into(), 4),
            (EventType::Added, Kind::Function, "e".into(), 5),
        ]
    );
    put(store, function("a", None, json!({"x": 1}))).await;
    let live = next_event(&mut stream).await;
    assert_eq!(
        summary(&live),
        (EventType::Modified, Kind::Function, "a".into(), 6)
    );
    assert_eq!(
        live.object,
        get(store, Kind::Function, "default", "a")
            .await
            .expect("present")
    );

    // From 0: everything; from the current version: nothing until the next write.
    let mut from_zero = store.watch(&[], Some(0));
    for version in 1..=6 {
        assert_eq!(
            next_event(&mut from_zero).await.object.resource_version,
            version
        );
    }
    let mut from_now = store.watch(&[], Some(6));
    put(store, function("f", None, json!({}))).await;
    assert_eq!(
        summary(&next_event(&mut from_now).await),
        (EventType::Added, Kind::Function, "f".into(), 7)
    );
    assert_eq!(next_event(&mut from_zero).await.object.resource_version, 7);
}

pub async fn watch_none_sees_only_the_future(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    put(store, function("before", None, json!({}))).await;
    put(store, function("before", None, json!({"x": 1}))).await;
    let mut stream = store.watch(&[], None);
    put(store, function("after", None, json!({}))).await;
    assert_eq!(
        summary(&next_event(&mut stream).await),
        (EventType::Added, Kind::Function, "after".into(), 3)
    );
}

/// How a watch over several kinds orders its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindOrder {
    /// In global version order (one log, as `MemoryStore` and `RedbStore` keep).
    Global,
    /// In version order per kind, the kinds interleaved in any order, every version once (one
    /// watch per kind, as on Kubernetes).
    PerKind,
}

pub async fn watch_filters_kinds(make: Make) {
    watch_filters_kinds_ordered(make, KindOrder::Global).await;
}

/// [`watch_filters_kinds`] for a store whose multi-kind watch is ordered per kind only.
pub async fn watch_filters_kinds_per_kind(make: Make) {
    watch_filters_kinds_ordered(make, KindOrder::PerKind).await;
}

async fn watch_filters_kinds_ordered(make: Make, order: KindOrder) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    put(store, environment("e1")).await;
    put(store, function("f1", None, json!({}))).await;
    let mut functions = store.watch(&[Kind::Function], Some(0));
    let mut both = store.watch(&[Kind::Function, Kind::Environment], Some(0));
    let mut packages = store.watch(&[Kind::Package], Some(0));
    put(store, environment("e2")).await;
    put(store, function("f2", None, json!({}))).await;
    put(
        store,
        json!({"kind": "Package", "metadata": {"name": "p"}, "spec": {}}),
    )
    .await;

    assert_eq!(
        summary(&next_event(&mut functions).await),
        (EventType::Added, Kind::Function, "f1".into(), 2)
    );
    assert_eq!(
        summary(&next_event(&mut functions).await),
        (EventType::Added, Kind::Function, "f2".into(), 4)
    );
    let mut seen = Vec::new();
    for _ in 0..4 {
        let event = next_event(&mut both).await;
        seen.push((event.object.kind, event.object.resource_version));
    }
    match order {
        KindOrder::Global => {
            let versions: Vec<u64> = seen.iter().map(|(_, v)| *v).collect();
            assert_eq!(versions, vec![1, 2, 3, 4]);
        }
        KindOrder::PerKind => {
            let of = |kind: Kind| -> Vec<u64> {
                seen.iter()
                    .filter(|(k, _)| *k == kind)
                    .map(|(_, v)| *v)
                    .collect()
            };
            assert_eq!(of(Kind::Environment), vec![1, 3]);
            assert_eq!(of(Kind::Function), vec![2, 4]);
        }
    }
    assert_eq!(
        summary(&next_event(&mut packages).await),
        (EventType::Added, Kind::Package, "p".into(), 5)
    );
}

pub async fn watch_reports_deletes(make: Make) {
    let subject = default_store(make);
    let store = subject.store.as_ref();
    let mut stream = store.watch(&[], None);
    put(store, function("a", None, json!({"x": 1}))).await;
    store
        .put_status(
            Kind::Function,
            "default",
            "a",
            json!({"ok": true}),
            Precondition::None,
        )
        .await
        .expect("status");
    let deleted = store
        .delete(Kind::Function, "default", "a", Precondition::None)
        .await
        .expect("delete");
    assert_eq!(
        summary(&next_event(&mut stream).await),
        (EventType::Added, Kind::Function, "a".into(), 1)
    );
    let status = next_event(&mut stream).await;
    assert_eq!(
        summary(&status),
        (EventType::Modified, Kind::Function, "a".into(), 2)
    );
    assert_eq!(status.object.value["status"], json!({"ok": true}));
    let event = next_event(&mut stream).await;
    assert_eq!(
        summary(&event),
        (EventType::Deleted, Kind::Function, "a".into(), 3)
    );
    assert_eq!(event.object, deleted);
    assert_eq!(event.object.value["spec"], json!({"x": 1}));
    assert_eq!(meta(&event.object, "resourceVersion"), "3");
    // Replayed deletes look the same.
    let mut replay = store.watch(&[], Some(2));
    assert_eq!(next_event(&mut replay).await, event);
}

pub async fn watch_from_list_version_misses_nothing(make: Make) {
    let subject = default_store(make);
    let store = subject.store.clone();
    for i in 0..5 {
        put(store.as_ref(), function(&format!("f{i}"), None, json!({}))).await;
    }
    // A writer keeps going while we list and watch, as the router would see it.
    let writer = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 5..40 {
                put(store.as_ref(), function(&format!("f{i}"), None, json!({}))).await;
            }
        })
    };
    let list = store.list(Kind::Function, None).await.expect("list");
    let mut names: BTreeSet<String> = list.items.iter().map(|o| o.name.clone()).collect();
    let mut stream = store.watch(&[Kind::Function], Some(list.resource_version));
    let mut last = list.resource_version;
    while names.len() < 40 {
        let event = next_event(&mut stream).await;
        assert_eq!(
            event.object.resource_version,
            last + 1,
            "no gap, no duplicate"
        );
        last = event.object.resource_version;
        assert!(
            names.insert(event.object.name.clone()),
            "{} seen twice",
            event.object.name
        );
    }
    writer.await.expect("writer");
}

pub async fn watch_too_old_is_gone(make: Make) {
    let subject = make(StoreOptions {
        event_history: 5,
        ..StoreOptions::default()
    });
    let store = subject.store.as_ref();
    for i in 0..12 {
        put(store, function(&format!("f{i}"), None, json!({}))).await;
    }
    // Versions 8..=12 are kept: a watch from 7 is complete, from 6 it is not.
    let mut ok = store.watch(&[], Some(7));
    for version in 8..=12 {
        assert_eq!(next_event(&mut ok).await.object.resource_version, version);
    }
    for since in [0, 3, 6] {
        let mut gone = store.watch(&[], Some(since));
        match next_item(&mut gone).await {
            Some(Err(StoreError::Gone { requested, oldest })) => {
                assert_eq!((requested, oldest), (since, 8))
            }
            other => panic!("watch from {since}: expected Gone, got {other:?}"),
        }
        assert!(
            next_item(&mut gone).await.is_none(),
            "the stream ends after Gone"
        );
    }
    // A kind filter does not change what is gone.
    let mut gone = store.watch(&[Kind::Package], Some(1));
    assert!(matches!(
        next_item(&mut gone).await,
        Some(Err(StoreError::Gone { .. }))
    ));
}

pub async fn lagging_watcher_recovers_from_the_log(make: Make) {
    let subject = make(StoreOptions {
        event_history: 1000,
        watch_buffer: 2,
    });
    let store = subject.store.as_ref();
    let mut live = store.watch(&[], None);
    let mut replaying = store.watch(&[], Some(0));
    // Nobody polls while 30 events go by a channel that holds 2.
    for i in 0..30 {
        put(store, function(&format!("f{i}"), None, json!({}))).await;
    }
    for stream in [&mut live, &mut replaying] {
        for version in 1..=30 {
            assert_eq!(next_event(stream).await.object.resource_version, version);
        }
    }
    put(store, function("last", None, json!({}))).await;
    assert_eq!(next_event(&mut live).await.object.resource_version, 31);
    assert_eq!(next_event(&mut replaying).await.object.resource_version, 31);
}

pub async fn lagging_beyond_history_is_gone(make: Make) {
    let subject = make(StoreOptions {
        event_history: 5,
        watch_buffer: 2,
    });
    let store = subject.store.as_ref();
    let mut live = store.watch(&[], None);
    for i in 0..20 {
        put(store, function(&format!("f{i}"), None, json!({}))).await;
    }
    match next_item(&mut live).await {
        Some(Err(StoreError::Gone { requested, oldest })) => {
            assert_eq!((requested, oldest), (0, 16))
        }
        other => panic!("expected Gone, got {other:?}"),
    }
    assert!(next_item(&mut live).await.is_none());
}

/// [`lagging_beyond_history_is_gone`] for a store whose watch reads ahead of its consumer (a
/// Kubernetes watch stream), over one kind (on Kubernetes each kind is its own watch, whose
/// Gone the merged stream passes on): the lagging watcher first gets what was already read, in
/// order and without a gap, then Gone from the version it reached, naming a real gap; then the
/// stream ends. How much was read ahead (none at all included) is up to the scheduler; this
/// holds for every outcome.
pub async fn lagging_beyond_history_is_gone_after_read_ahead(make: Make) {
    let subject = make(StoreOptions {
        event_history: 5,
        watch_buffer: 2,
    });
    let store = subject.store.as_ref();
    let mut live = store.watch(&[Kind::Function], None);
    for i in 0..20 {
        put(store, function(&format!("f{i}"), None, json!({}))).await;
    }
    let mut delivered = 0;
    loop {
        match next_item(&mut live).await {
            Some(Ok(event)) => {
                delivered += 1;
                assert_eq!(event.object.resource_version, delivered, "in order, no gap");
            }
            Some(Err(StoreError::Gone { requested, oldest })) => {
                assert_eq!(requested, delivered, "Gone from the version reached");
                assert!(
                    oldest > delivered + 1 && oldest <= 16,
                    "Gone names a real gap: requested {requested}, oldest {oldest}"
                );
                break;
            }
            other => panic!("expected events then Gone, got {other:?}"),
        }
    }
    assert!(delivered < 16, "it missed something: {delivered} delivered");
    let after = next_item(&mut live).await;
    assert!(after.is_none(), "the stream ends after Gone: {after:?}");
}

pub async fn concurrent_writers_produce_a_gapless_sequence(make: Make) {
    const WRITERS: u64 = 4;
    const WRITES: u64 = 25;
    let subject = make(StoreOptions {
        watch_buffer: 8,
        ..StoreOptions::default()
    });
    let store = subject.store.clone();
    let mut live = store.watch(&[], None);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for i in 0..WRITES {
                    // Every writer updates a shared object too, so writes contend on one key.
                    let value = if i % 5 == 0 {
                        function("shared", None, json!({"writer": w, "i": i}))
                    } else {
                        function(&format!("w{w}-{i}"), None, json!({}))
                    };
                    let stored = store.put(value, Precondition::None).await.expect("put");
                    versions.push(stored.resource_version);
                }
                versions
            })
        })
        .collect();
    // Watch concurrently with the writers, slower than they write at times.
    let mut seen = Vec::new();
    while seen.len() < usize::try_from(WRITERS * WRITES).expect("small") {
        seen.push(next_event(&mut live).await.object.resource_version);
        if seen.len() % 10 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let total = WRITERS * WRITES;
    assert_eq!(
        seen,
        (1..=total).collect::<Vec<_>>(),
        "the watcher sees every version once, in order"
    );
    let mut acknowledged = BTreeSet::new();
    for writer in writers {
        let versions = writer.await.expect("writer");
        assert!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "each writer's versions increase"
        );
        acknowledged.extend(versions);
    }
    assert_eq!(acknowledged, (1..=total).collect::<BTreeSet<_>>());
    assert_eq!(store.current_version().await.expect("version"), total);
    let mut replay = store.watch(&[], Some(0));
    for version in 1..=total {
        assert_eq!(
            next_event(&mut replay).await.object.resource_version,
            version
        );
    }
}

pub async fn dropping_the_store_ends_watches(make: Make) {
    let subject = default_store(make);
    put(subject.store.as_ref(), function("a", None, json!({}))).await;
    let mut live = subject.store.watch(&[], None);
    let mut replay = subject.store.watch(&[], Some(0));
    assert_eq!(next_event(&mut replay).await.object.resource_version, 1);
    drop(subject);
    assert!(next_item(&mut live).await.is_none());
    assert!(next_item(&mut replay).await.is_none());
}
