//! Keeps the route table in step with the store through a typed watch cache
//! (`kappa_store::WatchCache`, which lists, watches from the listed version and lists again on
//! `Gone` or a failed watch, with back-off): a list builds the table; each burst of changes
//! (those already arrived when the first one does) is applied to a copy of the current table,
//! one entry per change (the table is persistent: the copy shares every untouched part), and
//! the copy is swapped in.

use std::sync::Arc;

use kappa_core::FunctionId;
use kappa_store::{CacheEvent, Decode, StoredObject, WatchCache};
use kappa_types::{HttpTrigger, Kind, ValidationError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::table::{Change, FunctionRecord, RouteTable, TriggerRecord};

/// The most changes applied to one copy of the table (those already received when the first
/// arrives): a burst costs one swap, not one per change.
const MAX_BATCH: usize = 1024;

/// What the router reads from the store: HTTP triggers, and functions and kept versions (the
/// few fields it routes with).
#[derive(Debug, Clone)]
enum Routed {
    Trigger(TriggerRecord),
    Function(FunctionRecord),
}

impl Decode for Routed {
    fn kinds() -> Vec<Kind> {
        vec![Kind::HttpTrigger, Kind::Function, Kind::FunctionVersion]
    }

    /// A trigger that does not parse is not routed (the cache logs it and reports it removed);
    /// a function is read leniently and always routes.
    fn decode(obj: StoredObject) -> Result<Self, ValidationError> {
        if obj.kind != Kind::HttpTrigger {
            return Ok(Self::Function(parse_function(&obj)));
        }
        let t = HttpTrigger::from_json(obj.value)?;
        Ok(Self::Trigger(TriggerRecord::new(
            &obj.namespace,
            &obj.name,
            t.metadata.creation_timestamp.as_deref().unwrap_or_default(),
            t.spec,
        )))
    }
}

/// Reads only the fields the router needs, leniently (defaults as in `FunctionSpec`). A
/// FunctionVersion (`hello.v3`) is read as the function it snapshots, under its own name: the
/// id routes pinned to `hello@3` resolve to.
pub(crate) fn parse_function(obj: &StoredObject) -> FunctionRecord {
    let v = &obj.value;
    let spec = if obj.kind == Kind::FunctionVersion {
        "/spec/snapshot"
    } else {
        "/spec"
    };
    let num = |field: &str, default: u64| {
        v.pointer(&format!("{spec}{field}"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(default)
    };
    FunctionRecord {
        id: FunctionId::new(obj.namespace.clone(), obj.name.clone()),
        generation: v
            .pointer("/metadata/generation")
            .and_then(serde_json::Value::as_i64)
            .unwrap_or(0),
        timeout_s: num("/functionTimeout", 60),
        spec_timeout_s: num("/specializationTimeout", 120),
    }
}

/// The table change one watched change makes; `None` for a list or a replay.
fn change_of(event: CacheEvent<Routed>) -> Option<Change> {
    match event {
        CacheEvent::Applied(item) => Some(match Arc::unwrap_or_clone(item.value) {
            Routed::Trigger(t) => Change::Trigger(Box::new(t)),
            Routed::Function(f) => Change::Function(f),
        }),
        CacheEvent::Removed(key) => Some(match key.kind {
            Kind::HttpTrigger => Change::TriggerGone(key.namespace, key.name),
            _ => Change::FunctionGone(FunctionId::new(key.namespace, key.name)),
        }),
        CacheEvent::Listed(_) | CacheEvent::Replayed(_) => None,
    }
}

/// Builds the table from a fresh list (O(routes), on the blocking pool) and swaps it in.
/// `false` only if the build panicked: the previous table stays and the caller lists again.
async fn rebuild(
    inner: &Arc<Inner>,
    triggers: Vec<TriggerRecord>,
    functions: Vec<FunctionRecord>,
) -> bool {
    let inner = Arc::clone(inner);
    let built = tokio::task::spawn_blocking(move || {
        let previous = inner.table.load_full();
        let started = Instant::now();
        let table = RouteTable::build(&triggers, &functions, &previous, &inner.index);
        tracing::debug!(
            triggers = table.trigger_count(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "route table built"
        );
        inner.table.store(Arc::new(table));
    })
    .await;
    if let Err(error) = &built {
        tracing::error!(%error, "route table build failed; keeping the previous table");
    }
    built.is_ok()
}

/// Applies a burst of changes to a copy of the current table and swaps it in.
fn apply(inner: &Arc<Inner>, changes: Vec<Change>) {
    let started = Instant::now();
    let count = changes.len();
    let mut table = RouteTable::clone(&inner.table.load());
    for change in changes {
        table.apply(change, &inner.index);
    }
    inner.table.store(Arc::new(table));
    tracing::debug!(
        changes = count,
        elapsed_us = started.elapsed().as_micros() as u64,
        "route table updated"
    );
}

/// Runs until `shutdown` is cancelled.
pub(crate) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    // The table holds the records: the cache keeps only their versions.
    let mut cache = WatchCache::<Routed>::new(Arc::clone(&inner.store)).events_only();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = cache.next() => event,
        };
        if let CacheEvent::Listed(items) = event {
            let mut triggers = Vec::new();
            let mut functions = Vec::new();
            for item in items {
                match Arc::unwrap_or_clone(item.value) {
                    Routed::Trigger(t) => triggers.push(t),
                    Routed::Function(f) => functions.push(f),
                }
            }
            if !rebuild(&inner, triggers, functions).await {
                cache.relist();
                continue;
            }
            inner.applied.send_replace(cache.resource_version());
            inner.ready.send_replace(true);
            continue;
        }
        // Whatever else has already arrived goes into the same copy of the table.
        let mut changes: Vec<Change> = change_of(event).into_iter().collect();
        for _ in 0..MAX_BATCH {
            let Some(event) = cache.try_next() else {
                break;
            };
            changes.extend(change_of(event));
        }
        if !changes.is_empty() {
            apply(&inner, changes);
        }
        inner.applied.send_replace(cache.resource_version());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_store::{Item, ObjectKey};
    use serde_json::json;

    fn function(name: &str, rv: u64, generation: i64) -> StoredObject {
        StoredObject {
            kind: Kind::Function,
            namespace: "default".into(),
            name: name.into(),
            resource_version: rv,
            value: json!({"metadata": {"name": name, "generation": generation}, "spec": {"functionTimeout": 2}}),
        }
    }

    #[test]
    fn changes_become_one_table_change_each() {
        let object = function("a", 6, 2);
        let key = ObjectKey {
            kind: Kind::Function,
            namespace: "default".into(),
            name: "a".into(),
        };
        let value = Routed::decode(object).expect("a function always decodes");
        let Some(Change::Function(record)) = change_of(CacheEvent::Applied(Item {
            key: key.clone(),
            resource_version: 6,
            value: Arc::new(value),
        })) else {
            panic!("expected a function change");
        };
        assert_eq!((record.generation, record.timeout_s), (2, 2));
        assert!(matches!(
            change_of(CacheEvent::Removed(key)),
            Some(Change::FunctionGone(_))
        ));
        assert!(change_of(CacheEvent::Replayed(7)).is_none());
        let trigger = StoredObject {
            kind: Kind::HttpTrigger,
            namespace: "default".into(),
            name: "t".into(),
            resource_version: 8,
            value: json!({"spec": {"relativeurl": 5}}),
        };
        assert!(
            Routed::decode(trigger).is_err(),
            "an unreadable trigger is an error, reported by the cache and not routed"
        );
    }
}
