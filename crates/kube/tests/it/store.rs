//! KubeStore: the request each store operation sends and how each answer maps to the store's
//! semantics (conflicts, retries, status subresource, Secrets, watch events, bookmarks, Gone,
//! objects being deleted, finalizers).

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kappa_kube::KubeStore;
use kappa_store::{EventType, Precondition, Store, StoreError};
use kappa_types::Kind;
use serde_json::{Value, json};

use super::mock::{FakeApi, Reply, status, watch_lines};

const FUNCTIONS: &str = "/apis/kappa.dev/v1/namespaces/default/functions";

fn function(rv: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1", "kind": "Function",
        "metadata": {"name": "hello", "namespace": "default", "resourceVersion": rv,
                     "uid": "u-1", "generation": 1, "managedFields": [{"manager": "kubectl"}]},
        "spec": spec,
    })
}

/// `function` carrying a deletionTimestamp (Kubernetes waits for its finalizers).
fn terminating(rv: &str, spec: Value) -> Value {
    let mut o = function(rv, spec);
    o["metadata"]["deletionTimestamp"] = json!("2030-01-01T00:00:00Z");
    o["metadata"]["finalizers"] = json!(["kappa.dev/instances"]);
    o
}

fn kappa_function(spec: Value) -> Value {
    json!({"apiVersion": "kappa.dev/v1", "kind": "Function",
           "metadata": {"name": "hello"}, "spec": spec})
}

#[tokio::test]
async fn get_maps_404_to_none_and_trims_metadata() {
    let (client, api) = FakeApi::start(|r| match r.path.as_str() {
        p if p == format!("{FUNCTIONS}/hello") => Reply::Json(200, function("42", json!({"x": 1}))),
        _ => status(404, "NotFound", "not found"),
    });
    let store = KubeStore::new(client);
    let got = store
        .get(Kind::Function, "default", "hello")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.resource_version, 42);
    assert_eq!(got.value["metadata"]["resourceVersion"], "42");
    assert!(got.value["metadata"].get("managedFields").is_none());
    assert_eq!(got.value["apiVersion"], "kappa.dev/v1");
    assert!(
        store
            .get(Kind::Function, "default", "nope")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(api.lines()[0], format!("GET {FUNCTIONS}/hello"));
}

#[tokio::test]
async fn create_posts_and_maps_409_to_already_exists() {
    let (client, api) =
        FakeApi::start(
            |r| match (r.method.as_str(), r.body["spec"]["taken"].as_bool()) {
                ("POST", Some(true)) => {
                    status(409, "AlreadyExists", "functions \"hello\" already exists")
                }
                ("POST", _) => {
                    let mut o = r.body.clone();
                    o["metadata"]["resourceVersion"] = json!("7");
                    Reply::Json(201, o)
                }
                ("PUT", _) => {
                    let mut o = r.body.clone();
                    o["metadata"]["resourceVersion"] = json!("8");
                    Reply::Json(200, o)
                }
                _ => status(405, "MethodNotAllowed", "unexpected"),
            },
        );
    let store = KubeStore::new(client);
    let mut value = kappa_function(json!({"a": 1}));
    value["status"] = json!({"lastError": "kept on create"});
    let created = store.put(value, Precondition::MustNotExist).await.unwrap();
    let requests = api.requests();
    assert_eq!(requests[0].line(), format!("POST {FUNCTIONS}"));
    assert!(
        requests[0].body.get("status").is_none(),
        "status is not sent on create"
    );
    assert!(
        requests[0].body["metadata"]
            .get("resourceVersion")
            .is_none()
    );
    assert_eq!(
        requests[0].body["metadata"]["finalizers"],
        json!([kappa_kube::FUNCTION_FINALIZER]),
        "a Function is created with its finalizer"
    );
    // The status given on create is written through the status subresource.
    assert_eq!(requests[1].line(), format!("PUT {FUNCTIONS}/hello/status"));
    assert_eq!(requests[1].body["status"]["lastError"], "kept on create");
    assert_eq!(created.resource_version, 8);

    let err = store
        .put(
            kappa_function(json!({"taken": true})),
            Precondition::MustNotExist,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::AlreadyExists {
                kind: Kind::Function,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn replace_with_a_stale_version_is_a_conflict_naming_both_versions() {
    let conflict = StoreError::Conflict {
        kind: Kind::Function,
        namespace: "default".into(),
        name: "hello".into(),
        expected: 5,
        actual: 9,
    };
    // Already stale when read: no PUT at all.
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "GET" => Reply::Json(200, function("9", json!({}))),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let store = KubeStore::new(client);
    let err = store
        .put(
            kappa_function(json!({"a": 2})),
            Precondition::ResourceVersion(5),
        )
        .await
        .unwrap_err();
    assert_eq!(err, conflict);
    assert_eq!(api.lines(), [format!("GET {FUNCTIONS}/hello")]);

    // Someone writes between our read and our PUT: the API server's 409.
    let gets = Arc::new(Mutex::new(0));
    let (client, api) = {
        let gets = Arc::clone(&gets);
        FakeApi::start(move |r| match r.method.as_str() {
            "PUT" => status(409, "Conflict", "the object has been modified"),
            "GET" => {
                let mut n = gets.lock().unwrap();
                *n += 1;
                Reply::Json(200, function(if *n == 1 { "5" } else { "9" }, json!({})))
            }
            _ => status(405, "MethodNotAllowed", "unexpected"),
        })
    };
    let store = KubeStore::new(client);
    let err = store
        .put(
            kappa_function(json!({"a": 2})),
            Precondition::ResourceVersion(5),
        )
        .await
        .unwrap_err();
    assert_eq!(err, conflict);
    let put = &api.requests()[1];
    assert_eq!(put.line(), format!("PUT {FUNCTIONS}/hello"));
    assert_eq!(put.body["metadata"]["resourceVersion"], "5");
}

#[tokio::test]
async fn replacements_keep_finalizers_and_owner_references() {
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "GET" => {
            let mut o = function("5", json!({"a": 1}));
            o["metadata"]["finalizers"] = json!(["kappa.dev/instances", "example.com/backup"]);
            o["metadata"]["ownerReferences"] = json!([{"apiVersion": "v1", "kind": "ConfigMap",
                "name": "owner", "uid": "u-9"}]);
            Reply::Json(200, o)
        }
        "PUT" => {
            let mut o = r.body.clone();
            o["metadata"]["resourceVersion"] = json!("6");
            Reply::Json(200, o)
        }
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let store = KubeStore::new(client);
    for precondition in [
        Precondition::ResourceVersion(5),
        Precondition::None,
        Precondition::MustExist,
    ] {
        store
            .put(kappa_function(json!({"a": 2})), precondition)
            .await
            .unwrap();
    }
    let puts: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 3);
    for put in puts {
        assert_eq!(put.path, format!("{FUNCTIONS}/hello"));
        assert_eq!(put.body["spec"]["a"], 2);
        assert_eq!(put.body["metadata"]["resourceVersion"], "5");
        assert_eq!(
            put.body["metadata"]["finalizers"],
            json!(["kappa.dev/instances", "example.com/backup"]),
            "a PUT without them would drop them"
        );
        assert_eq!(put.body["metadata"]["ownerReferences"][0]["uid"], "u-9");
    }
}

#[tokio::test]
async fn objects_being_deleted_are_gone_to_the_platform() {
    let (client, api) = FakeApi::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/apis/kappa.dev/v1/functions") => Reply::Json(
            200,
            json!({
            "apiVersion": "kappa.dev/v1", "kind": "FunctionList", "metadata": {"resourceVersion": "30"},
            "items": [
                {"apiVersion": "kappa.dev/v1", "kind": "Function", "metadata": {"name": "live", "namespace": "x", "resourceVersion": "3"}, "spec": {}},
                {"apiVersion": "kappa.dev/v1", "kind": "Function", "metadata": {"name": "going", "namespace": "x", "resourceVersion": "4",
                    "deletionTimestamp": "2030-01-01T00:00:00Z", "finalizers": ["kappa.dev/instances"]}, "spec": {}},
            ]}),
        ),
        ("GET", p) if p == format!("{FUNCTIONS}/hello") => {
            Reply::Json(200, terminating("8", json!({"a": 1})))
        }
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let store = KubeStore::new(client);
    assert!(
        store
            .get(Kind::Function, "default", "hello")
            .await
            .unwrap()
            .is_none()
    );
    let list = store.list(Kind::Function, None).await.unwrap();
    let names: Vec<&str> = list.items.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["live"]);

    let not_found = |e: &StoreError| {
        matches!(
            e,
            StoreError::NotFound {
                kind: Kind::Function,
                ..
            }
        )
    };
    for precondition in [Precondition::MustExist, Precondition::ResourceVersion(8)] {
        let err = store
            .put(kappa_function(json!({"a": 2})), precondition)
            .await
            .unwrap_err();
        assert!(not_found(&err), "{precondition:?}: {err}");
    }
    let err = store
        .put_status(
            Kind::Function,
            "default",
            "hello",
            json!({}),
            Precondition::None,
        )
        .await
        .unwrap_err();
    assert!(not_found(&err), "{err}");
    let err = store
        .delete(Kind::Function, "default", "hello", Precondition::None)
        .await
        .unwrap_err();
    assert!(not_found(&err), "{err}");
    // An unconditional write would be a create, and the name is still taken.
    let err = store
        .put(kappa_function(json!({"a": 2})), Precondition::None)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::Terminating {
            kind: Kind::Function,
            namespace: "default".into(),
            name: "hello".into()
        }
    );
    assert!(
        api.requests().iter().all(|r| r.method == "GET"),
        "nothing is written to an object being deleted: {:#?}",
        api.lines()
    );
}

#[tokio::test]
async fn creating_a_name_still_being_deleted_is_a_clear_conflict() {
    let (client, _api) = FakeApi::start(|r| match r.method.as_str() {
        "POST" => status(
            409,
            "AlreadyExists",
            "object is being deleted: functions.kappa.dev \"hello\" already exists",
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let store = KubeStore::new(client);
    let err = store
        .put(kappa_function(json!({"a": 1})), Precondition::MustNotExist)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Terminating { kind: Kind::Function, ref name, .. } if name == "hello"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("Function default/hello is still being deleted"),
        "{message}"
    );
}

#[tokio::test]
async fn unconditional_writes_retry_after_a_conflict() {
    let version = Arc::new(Mutex::new(5u64));
    let puts = Arc::new(Mutex::new(0));
    let (client, api) = {
        let version = Arc::clone(&version);
        let puts = Arc::clone(&puts);
        FakeApi::start(move |r| match r.method.as_str() {
            "GET" => Reply::Json(
                200,
                function(&version.lock().unwrap().to_string(), json!({})),
            ),
            "PUT" => {
                let mut n = puts.lock().unwrap();
                *n += 1;
                if *n == 1 {
                    // Someone else wrote in between.
                    *version.lock().unwrap() = 6;
                    return status(409, "Conflict", "the object has been modified");
                }
                let mut o = r.body.clone();
                o["metadata"]["resourceVersion"] = json!("7");
                Reply::Json(200, o)
            }
            _ => status(405, "MethodNotAllowed", "unexpected"),
        })
    };
    let store = KubeStore::new(client);
    let stored = store
        .put(kappa_function(json!({"a": 3})), Precondition::None)
        .await
        .unwrap();
    assert_eq!(stored.resource_version, 7);
    let puts: Vec<String> = api
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| {
            r.body["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        puts,
        ["5", "6"],
        "re-read, then replaced at the new version"
    );
}

#[tokio::test]
async fn put_status_uses_the_status_subresource_and_checks_the_version() {
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "GET" => Reply::Json(200, function("11", json!({"a": 1}))),
        "PUT" => {
            let mut o = r.body.clone();
            o["metadata"]["resourceVersion"] = json!("12");
            Reply::Json(200, o)
        }
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let store = KubeStore::new(client);
    let stored = store
        .put_status(
            Kind::Function,
            "default",
            "hello",
            json!({"lastError": "boom"}),
            Precondition::MustExist,
        )
        .await
        .unwrap();
    assert_eq!(stored.resource_version, 12);
    assert_eq!(stored.value["status"]["lastError"], "boom");
    let put = &api.requests()[1];
    assert_eq!(put.line(), format!("PUT {FUNCTIONS}/hello/status"));
    assert_eq!(put.body["metadata"]["resourceVersion"], "11");
    assert!(put.body["metadata"].get("managedFields").is_none());

    let err = store
        .put_status(
            Kind::Function,
            "default",
            "hello",
            json!({}),
            Precondition::ResourceVersion(3),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 3,
                actual: 11,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn delete_sends_preconditions_and_returns_the_last_state() {
    let (client, api) = FakeApi::start(|r| match r.method.as_str() {
        "GET" => Reply::Json(200, function("15", json!({"a": 1}))),
        "DELETE" if r.body["preconditions"]["resourceVersion"] == "14" => {
            status(409, "Conflict", "precondition failed")
        }
        "DELETE" => Reply::Json(
            200,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        ),
        _ => status(405, "MethodNotAllowed", "unexpected"),
    });
    let store = KubeStore::new(client);
    let last = store
        .delete(Kind::Function, "default", "hello", Precondition::None)
        .await
        .unwrap();
    assert_eq!(last.resource_version, 15);
    let delete = &api.requests()[1];
    assert_eq!(delete.line(), format!("DELETE {FUNCTIONS}/hello"));
    assert_eq!(delete.body["preconditions"]["uid"], "u-1");
    let err = store
        .delete(
            Kind::Function,
            "default",
            "hello",
            Precondition::ResourceVersion(14),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Conflict {
                expected: 14,
                actual: 15,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn list_sorts_and_secrets_are_native_labelled_objects() {
    let (client, api) = FakeApi::start(|r| match (r.method.as_str(), r.path.as_str()) {
        ("GET", "/apis/kappa.dev/v1/functions") => Reply::Json(
            200,
            json!({
            "apiVersion": "kappa.dev/v1", "kind": "FunctionList", "metadata": {"resourceVersion": "30"},
            "items": [
                {"apiVersion": "kappa.dev/v1", "kind": "Function", "metadata": {"name": "b", "namespace": "x", "resourceVersion": "3"}, "spec": {}},
                {"apiVersion": "kappa.dev/v1", "kind": "Function", "metadata": {"name": "a", "namespace": "x", "resourceVersion": "2"}, "spec": {}},
            ]}),
        ),
        ("POST", "/api/v1/namespaces/default/secrets") => {
            let mut o = r.body.clone();
            o["metadata"]["resourceVersion"] = json!("31");
            Reply::Json(201, o)
        }
        ("GET", "/api/v1/secrets") => Reply::Json(
            200,
            json!({
            "apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "32"}, "items": []}),
        ),
        _ => status(404, "NotFound", "not found"),
    });
    let store = KubeStore::new(client);
    let list = store.list(Kind::Function, None).await.unwrap();
    assert_eq!(list.resource_version, 30);
    let names: Vec<&str> = list.items.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["a", "b"]);

    let secret = json!({"apiVersion": "kappa.dev/v1", "kind": "Secret", "metadata": {"name": "db"},
                        "spec": {"data": {"password": "aHVudGVyMg=="}}});
    let stored = store.put(secret, Precondition::MustNotExist).await.unwrap();
    assert_eq!(stored.value["spec"]["data"]["password"], "aHVudGVyMg==");
    let post = &api.requests()[1];
    assert_eq!(post.body["apiVersion"], "v1");
    assert_eq!(post.body["data"]["password"], "aHVudGVyMg==");
    assert_eq!(
        post.body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "kappa"
    );
    store.list(Kind::Secret, None).await.unwrap();
    let list_secrets = &api.requests()[2];
    assert!(
        list_secrets
            .query
            .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dkappa"),
        "{}",
        list_secrets.query
    );
    let err = store
        .put_status(Kind::Secret, "default", "db", json!({}), Precondition::None)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
}

#[tokio::test]
async fn watch_reports_a_deletion_once_when_the_deletion_timestamp_appears() {
    let named = |name: &str, o: Value| {
        let mut o = o;
        o["metadata"]["name"] = json!(name);
        o
    };
    let (client, _api) = FakeApi::start(move |_| {
        watch_lines(&[
            json!({"type": "ADDED", "object": named("a", function("21", json!({})))}),
            // kubectl delete: the deletionTimestamp appears → reported as deleted, now.
            json!({"type": "MODIFIED", "object": named("a", terminating("22", json!({})))}),
            // Changes while its finalizers run, and the final removal: nothing more.
            json!({"type": "MODIFIED", "object": named("a", terminating("23", json!({"x": 1})))}),
            json!({"type": "DELETED", "object": named("a", terminating("24", json!({"x": 1})))}),
            // Removed without finalizers: reported when removed.
            json!({"type": "ADDED", "object": named("b", function("25", json!({})))}),
            json!({"type": "DELETED", "object": named("b", function("26", json!({})))}),
            // Marked before this watch started (the consumer saw it, or never knew it).
            json!({"type": "DELETED", "object": named("c", terminating("27", json!({})))}),
            json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}}),
        ])
    });
    let store = KubeStore::new(client);
    let mut stream = store.watch(&[Kind::Function], Some(20));
    let mut seen = Vec::new();
    while let Some(item) = stream.next().await {
        seen.push(item.map(|e| (e.event_type, e.object.name, e.object.resource_version)));
    }
    assert_eq!(
        seen,
        vec![
            Ok((EventType::Added, "a".to_string(), 21)),
            Ok((EventType::Deleted, "a".to_string(), 22)),
            Ok((EventType::Added, "b".to_string(), 25)),
            Ok((EventType::Deleted, "b".to_string(), 26)),
            // The version still advanced past the events not reported.
            Err(StoreError::Gone {
                requested: 27,
                oldest: 0
            }),
        ]
    );
}

#[tokio::test]
async fn watch_maps_events_follows_bookmarks_and_ends_with_gone() {
    let calls = Arc::new(Mutex::new(0));
    let (client, api) = {
        let calls = Arc::clone(&calls);
        FakeApi::start(move |r| {
            assert!(r.query.contains("watch=true"), "{}", r.query);
            let mut n = calls.lock().unwrap();
            *n += 1;
            match *n {
                // First watch: two events and a bookmark, then the server ends it.
                1 => watch_lines(&[
                    json!({"type": "ADDED", "object": function("21", json!({"a": 1}))}),
                    json!({"type": "MODIFIED", "object": function("22", json!({"a": 2}))}),
                    json!({"type": "BOOKMARK", "object": {"apiVersion": "kappa.dev/v1", "kind": "Function",
                        "metadata": {"resourceVersion": "25"}}}),
                ]),
                // Re-opened from the bookmark's version: a delete, then history is gone.
                _ => watch_lines(&[
                    json!({"type": "DELETED", "object": function("26", json!({"a": 2}))}),
                    json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                        "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}}),
                ]),
            }
        })
    };
    let store = KubeStore::new(client);
    let mut stream = store.watch(&[Kind::Function], Some(20));
    let mut seen = Vec::new();
    while let Some(item) = stream.next().await {
        seen.push(item.map(|e| (e.event_type, e.object.resource_version)));
    }
    assert_eq!(
        seen,
        vec![
            Ok((EventType::Added, 21)),
            Ok((EventType::Modified, 22)),
            Ok((EventType::Deleted, 26)),
            Err(StoreError::Gone {
                requested: 26,
                oldest: 0
            }),
        ]
    );
    let queries: Vec<String> = api.requests().iter().map(|r| r.query.clone()).collect();
    assert!(queries[0].contains("resourceVersion=20"), "{}", queries[0]);
    assert!(
        queries[1].contains("resourceVersion=25"),
        "re-opened from the bookmark: {}",
        queries[1]
    );
    assert!(
        queries[0].contains("allowWatchBookmarks=true"),
        "{}",
        queries[0]
    );
}
