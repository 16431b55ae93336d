//! Keeps the route table in step with the store: list, then watch from the listed resource
//! version; after a burst of changes (debounced) rebuild the whole table off the request path
//! and swap it in. `Gone`, a failed or ended watch all lead to a fresh list.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kappa_core::FunctionId;
use kappa_store::{EventType, StoreError, StoredObject, WatchEvent};
use kappa_types::{HttpTrigger, Kind};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Inner;
use crate::table::{FunctionRecord, RouteTable, TriggerRecord};

/// Changes arriving within this window after the first are applied in one rebuild.
const DEBOUNCE: Duration = Duration::from_millis(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

type Key = (String, String);

/// The watcher's copy of the store's triggers and functions, with their resource versions.
#[derive(Default)]
pub(crate) struct Cache {
    /// `None` marks a trigger that could not be parsed (kept for its resource version).
    triggers: HashMap<Key, (u64, Option<TriggerRecord>)>,
    functions: HashMap<Key, (u64, FunctionRecord)>,
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
    /// Replaces the cache with a fresh list; returns the version to watch from.
    async fn relist(&mut self, store: &dyn kappa_store::Store) -> Result<u64, StoreError> {
        let triggers = store.list(Kind::HttpTrigger, None).await?;
        let functions = store.list(Kind::Function, None).await?;
        let versions = store.list(Kind::FunctionVersion, None).await?;
        self.triggers.clear();
        self.functions.clear();
        for obj in triggers.items {
            let key = (obj.namespace.clone(), obj.name.clone());
            let rv = obj.resource_version;
            self.triggers.insert(key, (rv, parse_trigger(obj)));
        }
        // Function names are DNS labels and version names have a dot: one map holds both.
        for obj in functions.items.into_iter().chain(versions.items) {
            let key = (obj.namespace.clone(), obj.name.clone());
            self.functions
                .insert(key, (obj.resource_version, parse_function(&obj)));
        }
        // Watching from the oldest of the listed versions replays a few changes already seen;
        // `apply` ignores anything not newer than what it holds.
        let since = triggers
            .resource_version
            .min(functions.resource_version)
            .min(versions.resource_version);
        self.seen = since;
        Ok(since)
    }

    /// Applies one change; returns whether anything changed.
    fn apply(&mut self, event: WatchEvent) -> bool {
        let obj = event.object;
        let rv = obj.resource_version;
        self.seen = self.seen.max(rv);
        let key = (obj.namespace.clone(), obj.name.clone());
        match obj.kind {
            Kind::HttpTrigger => {
                if self.triggers.get(&key).is_some_and(|(held, _)| *held >= rv) {
                    return false;
                }
                match event.event_type {
                    EventType::Deleted => self.triggers.remove(&key).is_some(),
                    EventType::Added | EventType::Modified => {
                        self.triggers.insert(key, (rv, parse_trigger(obj)));
                        true
                    }
                }
            }
            Kind::Function | Kind::FunctionVersion => {
                if self
                    .functions
                    .get(&key)
                    .is_some_and(|(held, _)| *held >= rv)
                {
                    return false;
                }
                match event.event_type {
                    EventType::Deleted => self.functions.remove(&key).is_some(),
                    EventType::Added | EventType::Modified => {
                        let record = parse_function(&obj);
                        let changed = self
                            .functions
                            .get(&key)
                            .is_none_or(|(_, old)| *old != record);
                        self.functions.insert(key, (rv, record));
                        changed
                    }
                }
            }
            _ => false,
        }
    }
}

/// Rebuilds the table on the blocking pool (it is O(routes)) and swaps it in. `None` only if
/// the build panicked: the previous table stays and the caller lists again.
async fn rebuild(inner: &Arc<Inner>, cache: Cache) -> Option<Cache> {
    let previous = inner.table.load_full();
    let index = Arc::clone(&inner.index);
    let started = Instant::now();
    let built = tokio::task::spawn_blocking(move || {
        let table = RouteTable::build(
            cache.triggers.values().filter_map(|(_, t)| t.as_ref()),
            cache.functions.values().map(|(_, f)| f),
            &previous,
            &index,
        );
        (cache, table)
    })
    .await;
    match built {
        Ok((cache, table)) => {
            tracing::debug!(
                routes = table.routes().len(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "route table rebuilt"
            );
            inner.table.store(Arc::new(table));
            Some(cache)
        }
        Err(error) => {
            tracing::error!(%error, "route table rebuild failed; keeping the previous table");
            None
        }
    }
}

enum Next {
    Changed(bool),
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
        let Some(rebuilt) = rebuild(&inner, std::mem::take(&mut cache)).await else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            continue;
        };
        cache = rebuilt;
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
            let mut changed = match handle(&mut cache, item) {
                Next::Changed(changed) => changed,
                Next::Relist => break 'watch,
            };
            let deadline = Instant::now() + DEBOUNCE;
            let mut relist = false;
            loop {
                let item = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    item = stream.next() => item,
                };
                match handle(&mut cache, item) {
                    Next::Changed(c) => changed |= c,
                    Next::Relist => {
                        relist = true;
                        break;
                    }
                }
            }
            if relist {
                break 'watch;
            }
            if changed {
                match rebuild(&inner, std::mem::take(&mut cache)).await {
                    Some(rebuilt) => cache = rebuilt,
                    None => break 'watch,
                }
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
        assert!(cache.apply(added(function("a", 5, 1))));
        assert!(
            !cache.apply(added(function("a", 5, 1))),
            "same version twice"
        );
        assert!(!cache.apply(added(function("a", 4, 1))), "older version");
        assert!(cache.apply(WatchEvent {
            event_type: EventType::Modified,
            object: function("a", 6, 2)
        }));
        let (_, record) = &cache.functions[&("default".to_string(), "a".to_string())];
        assert_eq!((record.generation, record.timeout_s), (2, 2));
        assert!(cache.apply(WatchEvent {
            event_type: EventType::Deleted,
            object: function("a", 7, 2)
        }));
        assert!(cache.functions.is_empty());
    }
}
