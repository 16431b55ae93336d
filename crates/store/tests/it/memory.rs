//! `MemoryStore` through the conformance suite.

use std::sync::Arc;

use kappa_store::{MemoryStore, Store, StoreOptions};

use kappa_test_support::store::Subject;

fn make(options: StoreOptions) -> Subject {
    Subject::new(Arc::new(MemoryStore::with_options(options)), None)
}

kappa_test_support::store_conformance_tests!(make);

#[tokio::test]
async fn clones_share_data() {
    let store = MemoryStore::new();
    let clone = store.clone();
    let written = store
        .put(
            kappa_test_support::store::function("a", None, serde_json::json!({})),
            Default::default(),
        )
        .await
        .expect("put");
    let read = clone
        .get(kappa_types::Kind::Function, "default", "a")
        .await
        .expect("get");
    assert_eq!(read, Some(written));
}
