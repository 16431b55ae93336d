//! Keeps the route table in step with the store: list and build the table, then watch from the
//! listed resource version; each burst of changes (debounced) is applied to a copy of the
//! current table, one entry per change (the table is persistent: the copy shares every
//! untouched part), and the copy is swapped in. `Gone`, a failed or ended watch all lead to a
//! fresh list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kappa_core::FunctionId;
use kappa_store::{EventType, StoreError, StoredObject, WatchEvent};
use kappa_types::{HttpTrigger, Kind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::table::{Change, FunctionRecord, RouteTable, TriggerRecord};

/// The most changes applied to one copy of the table (those already received when the first
/// arrives): a burst costs one swap, not one per change.
const MAX_BATCH: usize = 1024;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type Key = (String, String);

/// The resource versions of the store's triggers and functions the table holds (their
/// content lives in the table), so replayed events are recognised.
#[derive(Default)]
pub(crate) struct Cache {
    triggers: HashMap<Key, u64>,
    functions: HashMap<Key, u64>,
    /// The highest store version listed or received: the table built from this cache reflects
    /// every trigger and function write up to it.
    seen: u64,
}

fn parse_trigger(obj: StoredObject) -> Option<TriggerRecord> {
    let label = format!("{}/{}", obj.namespace, obj.name);
    match HttpTrigger::from_json(obj.value) {
        Ok(t) => Some(TriggerRecord {
            creation: t.metadata.creation_timestamp.clone().unwrap_or_default(),
            namespace: obj.namespace,
            name: obj.name,
            spec: t.spec,
        }),
        Err(error) => {
            tracing::warn!(trigger = %label, field = %error.field, message = %error.message, "http trigger in the store is not valid; not routed");
            None
        }
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

impl Cache {
    /// Lists the store afresh: fills the cache and returns the records to build the table
    /// from and the version to watch from.
    async fn relist(
        &mut self,
        store: &dyn kappa_store::Store,
    ) -> Result<(u64, Vec<TriggerRecord>, Vec<FunctionRecord>), StoreError> {
        let triggers = store.list(Kind::HttpTrigger, None).await?;
        let functions = store.list(Kind::Function, None).await?;
        let versions = store.list(Kind::FunctionVersion, None).await?;
        self.triggers.clear();
        self.functions.clear();
        let mut trigger_records = Vec::with_capacity(triggers.items.len());
        let mut function_records = Vec::with_capacity(functions.items.len());
        for obj in triggers.items {
            let key = (obj.namespace.clone(), obj.name.clone());
            self.triggers.insert(key, obj.resource_version);
            trigger_records.extend(parse_trigger(obj));
        }
        // Function names are DNS labels and version names have a dot: one map holds both.
        for obj in functions.items.into_iter().chain(versions.items) {
            let key = (obj.namespace.clone(), obj.name.clone());
            self.functions.insert(key, obj.resource_version);
            function_records.push(parse_function(&obj));
        }
        // Watching from the oldest of the listed versions replays a few changes already seen;
        // `apply` ignores anything not newer than what it holds.
        let since = triggers
            .resource_version
            .min(functions.resource_version)
            .min(versions.resource_version);
        self.seen = since;
        Ok((since, trigger_records, function_records))
    }

    /// Reads one change; `None` when it is a replay or of another kind.
    fn apply(&mut self, event: WatchEvent) -> Option<Change> {
        let obj = event.object;
        let rv = obj.resource_version;
        self.seen = self.seen.max(rv);
        let key = (obj.namespace.clone(), obj.name.clone());
        let held = match obj.kind {
            Kind::HttpTrigger => &mut self.triggers,
            Kind::Function | Kind::FunctionVersion => &mut self.functions,
            _ => return None,
        };
        if held.get(&key).is_some_and(|v| *v >= rv) {
            return None;
        }
        match event.event_type {
            EventType::Deleted => {
                held.remove(&key)?;
                Some(match obj.kind {
                    Kind::Function | Kind::FunctionVersion => {
                        Change::FunctionGone(FunctionId::new(key.0, key.1))
                    }
                    _ => Change::TriggerGone(key.0, key.1),
                })
            }
            EventType::Added | EventType::Modified => {
                held.insert(key.clone(), rv);
                Some(match obj.kind {
                    Kind::Function | Kind::FunctionVersion => {
                        Change::Function(parse_function(&obj))
                    }
                    // A trigger the router cannot read is not routed.
                    _ => match parse_trigger(obj) {
                        Some(t) => Change::Trigger(Box::new(t)),
                        None => Change::TriggerGone(key.0, key.1),
                    },
                })
            }
        }
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

enum Next {
    Changed(Option<Change>),
    Relist,
}

fn handle(cache: &mut Cache, item: Option<Result<WatchEvent, StoreError>>) -> Next {
    match item {
        Some(Ok(event)) => Next::Changed(cache.apply(event)),
        Some(Err(StoreError::Gone { requested, oldest })) => {
            tracing::info!(requested, oldest, "store history moved on; listing again");
            Next::Relist
        }
        Some(Err(error)) => {
            tracing::warn!(%error, "store watch failed; listing again");
            Next::Relist
        }
        None => {
            tracing::warn!("store watch ended; listing again");
            Next::Relist
        }
    }
}

/// Runs until `shutdown` is cancelled.
pub(crate) async fn run(inner: Arc<Inner>, shutdown: CancellationToken) {
    let mut cache = Cache::default();
    let mut backoff = BACKOFF_MIN;
    loop {
        let since = tokio::select! {
            _ = shutdown.cancelled() => return,
            listed = cache.relist(inner.store.as_ref()) => listed,
        };
        let since = match since {
            Ok(since) => since,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = backoff.as_millis() as u64, "listing triggers and functions failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let (since, triggers, functions) = since;
        if !rebuild(&inner, triggers, functions).await {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        }
        inner.applied.send_replace(cache.seen);
        inner.ready.send_replace(true);

        let mut stream = inner.store.watch(
            &[Kind::HttpTrigger, Kind::Function, Kind::FunctionVersion],
            Some(since),
        );
        let watch_started = Instant::now();
        'watch: loop {
            let item = tokio::select! {
                _ = shutdown.cancelled() => return,
                item = stream.next() => item,
            };
            let mut changes: Vec<Change> = match handle(&mut cache, item) {
                Next::Changed(change) => change.into_iter().collect(),
                Next::Relist => break 'watch,
            };
            // Whatever else has already arrived goes into the same copy of the table.
            let mut relist = false;
            for _ in 0..MAX_BATCH {
                let Some(item) = stream.next().now_or_never() else {
                    break;
                };
                match handle(&mut cache, item) {
                    Next::Changed(change) => changes.extend(change),
                    Next::Relist => {
                        relist = true;
                        break;
                    }
                }
            }
            if relist {
                break 'watch;
            }
            if !changes.is_empty() {
                apply(&inner, changes);
            }
            inner.applied.send_replace(cache.seen);
        }
        // A watch that failed soon after it started backs off before listing again.
        if watch_started.elapsed() < BACKOFF_MAX {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        } else {
            backoff = BACKOFF_MIN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn replayed_events_are_ignored() {
        let mut cache = Cache::default();
        let added = |o| WatchEvent {
            event_type: EventType::Added,
            object: o,
        };
        assert!(cache.apply(added(function("a", 5, 1))).is_some());
        assert!(
            cache.apply(added(function("a", 5, 1))).is_none(),
            "same version twice"
        );
        assert!(
            cache.apply(added(function("a", 4, 1))).is_none(),
            "older version"
        );
        let Some(Change::Function(record)) = cache.apply(WatchEvent {
            event_type: EventType::Modified,
            object: function("a", 6, 2),
        }) else {
            panic!("expected a function change");
        };
        assert_eq!((record.generation, record.timeout_s), (2, 2));
        assert!(matches!(
            cache.apply(WatchEvent {
                event_type: EventType::Deleted,
                object: function("a", 7, 2)
            }),
            Some(Change::FunctionGone(_))
        ));
        assert!(cache.functions.is_empty());
    }
}
