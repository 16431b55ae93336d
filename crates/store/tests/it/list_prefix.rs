//! `Store::list_prefix` on both embedded stores: exactly the objects of one kind and
//! namespace whose name starts with the prefix, in name order, as a filtered `list` gives.

use std::sync::Arc;

use kappa_store::{MemoryStore, Precondition, RedbStore, Store};
use kappa_types::Kind;
use serde_json::json;

use kappa_test_support::store::function;

async fn check(store: Arc<dyn Store>) {
    for (name, namespace) in [
        ("hello", None),
        ("hello.v1", None),
        ("hello.v2", None),
        ("hello.v10", None),
        ("hello.v1x", None),
        ("hello2.v1", None),
        ("hello.v3", Some("other")),
        ("a", None),
        ("zz", None),
    ] {
        store
            .put(function(name, namespace, json!({})), Precondition::None)
            .await
            .expect("put");
    }
    for (namespace, prefix) in [
        ("default", "hello.v"),
        ("default", "hello"),
        ("default", ""),
        ("default", "zz"),
        ("default", "zzz"),
        ("other", "hello.v"),
        ("nowhere", "hello.v"),
    ] {
        let got = store
            .list_prefix(Kind::Function, namespace, prefix)
            .await
            .expect("list_prefix");
        let all = store
            .list(Kind::Function, Some(namespace))
            .await
            .expect("list");
        let want: Vec<&str> = all
            .items
            .iter()
            .filter(|o| o.name.starts_with(prefix))
            .map(|o| o.name.as_str())
            .collect();
        let names: Vec<&str> = got.items.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, want, "namespace {namespace}, prefix {prefix:?}");
        assert_eq!(got.resource_version, all.resource_version);
    }
    let versions = store
        .list_prefix(Kind::Function, "default", "hello.v")
        .await
        .expect("list_prefix");
    let names: Vec<&str> = versions.items.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["hello.v1", "hello.v10", "hello.v1x", "hello.v2"]);
    assert!(
        store
            .list_prefix(Kind::Environment, "default", "hello")
            .await
            .expect("list_prefix")
            .items
            .is_empty(),
        "another kind"
    );
}

#[tokio::test]
async fn memory_store_lists_a_name_prefix() {
    check(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn redb_store_lists_a_name_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = RedbStore::open(dir.path().join("kappa.redb")).expect("open");
    check(Arc::new(store)).await;
}
