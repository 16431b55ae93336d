//! [`RedbStore`]: the embedded store, one redb file (conventionally `<data-dir>/kappa.redb`).
//!
//! Layout (all in one file, changed only in write transactions):
//! - table `objects`: `(kind, namespace, name)` → the [`StoredObject`] as JSON; the tuple key
//!   orders a kind's objects by namespace then name, which is the order `list` returns.
//! - table `events`: resource version → the [`WatchEvent`] as JSON, the last
//!   [`StoreOptions::event_history`] of them.
//! - table `meta`: `version` → the current resource version, `schema` → the layout version.
//!
//! Every write is one redb transaction that reads the stored object, applies
//! [`crate::object::apply`], writes the object, appends the event, prunes old events and bumps
//! the version, then commits with redb's default (immediate, fsync'd) durability before the
//! caller sees success; a failed write aborts the transaction and leaves the file unchanged.
//! redb is synchronous, so every operation runs on `tokio::task::spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use futures::future::BoxFuture;
use kappa_types::Kind;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use crate::object::{self, Change, ObjectKey};
use crate::watch::{self, EventLog, LogPage, Start};
use crate::{
    EventType, List, Precondition, Store, StoreError, StoreOptions, StoredObject, WatchEvent,
    WatchStream,
};

const OBJECTS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `meta` key of the current resource version.
const VERSION: &str = "version";
/// `meta` key of the layout version, so a future layout change is detected rather than misread.
const SCHEMA: &str = "schema";
/// The layout this code reads and writes.
const SCHEMA_VERSION: u64 = 1;
/// The most memory redb's page cache may hold (its default is 1 GiB). Every page a commit
/// writes goes into that cache, so with the default the whole file ends up resident: about
/// 4 KiB of the process's memory per stored object at 10,000 routes. Reads that miss go to the
/// file, whose pages the kernel caches outside the process; a few MiB keep the tables' upper
/// levels and the recent writes in memory.
pub const CACHE_BYTES: usize = 8 << 20;

/// The embedded store: one redb file. Cheap to clone (clones share the open database); the file
/// is closed when the last clone and every in-flight operation are gone, and watch streams end
/// then.
#[derive(Clone)]
pub struct RedbStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// Serialises writes from commit to publication, so events reach the broadcast channel in
    /// version order. A std mutex: it is only taken inside `spawn_blocking`, never across
    /// `.await`. (redb serialises write transactions too, but not what happens after commit.)
    write_lock: Mutex<()>,
    /// The last committed version, readable without a transaction so that `watch(.., None)`
    /// can take its starting point synchronously; updated after commit, before publication.
    committed: AtomicU64,
    /// Committed events for live watchers; broadcast because it never blocks the writer and lets
    /// each watcher detect when it fell behind.
    events: broadcast::Sender<WatchEvent>,
    options: StoreOptions,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (creating it and its parent directories when missing) the database file at `path`
    /// with the default options. Resource versions continue from the last committed write; a file
    /// left by a crash is recovered by redb. Blocks while it opens (a recovery reads the whole
    /// file): call it at start-up or from `spawn_blocking`. Fails with `Backend` when another
    /// process (or another `RedbStore` in this one) has the file open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_options(path, StoreOptions::default())
    }

    /// [`RedbStore::open`] with options.
    pub fn open_with_options(
        path: impl AsRef<Path>,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let options = options.normalised();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|e| {
                StoreError::Backend(format!("creating directory {}: {e}", parent.display()))
            })?;
        }
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let version = prepare(&db).map_err(|e| match e {
            StoreError::Backend(message) => {
                StoreError::Backend(format!("opening {}: {message}", path.display()))
            }
            other => other,
        })?;
        tracing::debug!(path = %path.display(), version, "opened store");
        let (events, _) = broadcast::channel(options.watch_buffer);
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                path,
                write_lock: Mutex::new(()),
                committed: AtomicU64::new(version),
                events,
                options,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }

    async fn write(
        &self,
        key: ObjectKey,
        change: Change,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.blocking(move |inner| inner.write(&key, change, precondition))
            .await
    }
}

/// Creates the tables when missing, checks the layout version and returns the current version.
fn prepare(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_write().map_err(backend("starting a write"))?;
    let version = (|| {
        txn.open_table(OBJECTS)
            .map_err(backend("opening table objects"))?;
        txn.open_table(EVENTS)
            .map_err(backend("opening table events"))?;
        let mut meta = txn
            .open_table(META)
            .map_err(backend("opening table meta"))?;
        let schema = meta
            .get(SCHEMA)
            .map_err(backend("reading meta"))?
            .map(|g| g.value());
        match schema {
            None => {
                meta.insert(SCHEMA, SCHEMA_VERSION)
                    .map_err(backend("writing meta"))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(other) => {
                return Err(StoreError::Backend(format!(
                    "file has layout version {other}, this build reads {SCHEMA_VERSION}"
                )));
            }
        }
        let version = meta
            .get(VERSION)
            .map_err(backend("reading meta"))?
            .map_or(0, |g| g.value());
        Ok(version)
    })();
    match version {
        Ok(version) => {
            txn.commit().map_err(backend("committing"))?;
            Ok(version)
        }
        Err(error) => {
            abort(txn);
            Err(error)
        }
    }
}

impl Inner {
    fn write(
        &self,
        key: &ObjectKey,
        change: Change,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        // Poisoning carries no meaning here: the mutex guards no data.
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let txn = self.db.begin_write().map_err(backend("starting a write"))?;
        let event = match self.write_in(&txn, key, change, precondition) {
            Ok(event) => event,
            Err(error) => {
                abort(txn);
                return Err(error);
            }
        };
        txn.commit().map_err(backend("committing a write"))?;
        let version = event.object.resource_version;
        self.committed.store(version, Ordering::SeqCst);
        tracing::trace!(kind = %key.kind, namespace = %key.namespace, name = %key.name, version, event = ?event.event_type, "store write");
        // An error only means nobody is watching.
        let _ = self.events.send(event.clone());
        Ok(event.object)
    }

    fn write_in(
        &self,
        txn: &WriteTransaction,
        key: &ObjectKey,
        change: Change,
        precondition: Precondition,
    ) -> Result<WatchEvent, StoreError> {
        let mut objects = txn
            .open_table(OBJECTS)
            .map_err(backend("opening table objects"))?;
        let mut events = txn
            .open_table(EVENTS)
            .map_err(backend("opening table events"))?;
        let mut meta = txn
            .open_table(META)
            .map_err(backend("opening table meta"))?;
        let current = meta
            .get(VERSION)
            .map_err(backend("reading meta"))?
            .map_or(0, |g| g.value());
        let version = current
            .checked_add(1)
            .ok_or_else(|| StoreError::Backend("resource version overflow".to_string()))?;
        let db_key = (key.kind.as_str(), key.namespace.as_str(), key.name.as_str());
        let existing: Option<StoredObject> =
            match objects.get(db_key).map_err(backend("reading objects"))? {
                Some(guard) => Some(decode(guard.value(), "objects")?),
                None => None,
            };
        let event = object::apply(key, existing.as_ref(), change, precondition, version)?;
        match event.event_type {
            EventType::Deleted => {
                objects
                    .remove(db_key)
                    .map_err(backend("removing from objects"))?;
            }
            EventType::Added | EventType::Modified => {
                objects
                    .insert(db_key, encode(&event.object)?.as_slice())
                    .map_err(backend("writing objects"))?;
            }
        }
        events
            .insert(version, encode(&event)?.as_slice())
            .map_err(backend("writing events"))?;
        if let Some(cutoff) = version.checked_sub(self.options.event_history)
            && cutoff > 0
        {
            events
                .retain_in(..=cutoff, |_, _| false)
                .map_err(backend("pruning events"))?;
        }
        meta.insert(VERSION, version)
            .map_err(backend("writing meta"))?;
        Ok(event)
    }

    fn get(&self, key: &ObjectKey) -> Result<Option<StoredObject>, StoreError> {
        let txn = self.db.begin_read().map_err(backend("starting a read"))?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(backend("opening table objects"))?;
        let db_key = (key.kind.as_str(), key.namespace.as_str(), key.name.as_str());
        match objects.get(db_key).map_err(backend("reading objects"))? {
            Some(guard) => Ok(Some(decode(guard.value(), "objects")?)),
            None => Ok(None),
        }
    }

    /// `kind`'s objects in `namespace` (all namespaces when `None`) whose name starts with
    /// `prefix`: one range of the ordered keys.
    fn list(&self, kind: Kind, namespace: Option<&str>, prefix: &str) -> Result<List, StoreError> {
        let txn = self.db.begin_read().map_err(backend("starting a read"))?;
        let objects = txn
            .open_table(OBJECTS)
            .map_err(backend("opening table objects"))?;
        let meta = txn
            .open_table(META)
            .map_err(backend("opening table meta"))?;
        let resource_version = meta
            .get(VERSION)
            .map_err(backend("reading meta"))?
            .map_or(0, |g| g.value());
        let start = (kind.as_str(), namespace.unwrap_or(""), prefix);
        let mut items = Vec::new();
        for entry in objects.range(start..).map_err(backend("reading objects"))? {
            let (entry_key, value) = entry.map_err(backend("reading objects"))?;
            let (entry_kind, entry_namespace, entry_name) = entry_key.value();
            if entry_kind != kind.as_str()
                || namespace
                    .is_some_and(|ns| ns != entry_namespace || !entry_name.starts_with(prefix))
            {
                break;
            }
            items.push(decode(value.value(), "objects")?);
        }
        Ok(List {
            items,
            resource_version,
        })
    }

    fn read_events_after(&self, after: u64, limit: usize) -> Result<LogPage, StoreError> {
        let txn = self.db.begin_read().map_err(backend("starting a read"))?;
        let events = txn
            .open_table(EVENTS)
            .map_err(backend("opening table events"))?;
        let oldest = events
            .first()
            .map_err(backend("reading events"))?
            .map(|(k, _)| k.value());
        let mut page = LogPage {
            events: Vec::new(),
            oldest,
        };
        let Some(from) = after.checked_add(1) else {
            return Ok(page);
        };
        for entry in events
            .range(from..)
            .map_err(backend("reading events"))?
            .take(limit)
        {
            let (_, value) = entry.map_err(backend("reading events"))?;
            page.events.push(decode(value.value(), "events")?);
        }
        Ok(page)
    }
}

impl EventLog for Weak<Inner> {
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Option<LogPage>, StoreError>> {
        let weak = Weak::clone(self);
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // Upgraded on the blocking thread and dropped there, so a store dropped meanwhile
                // closes its file off the async runtime.
                weak.upgrade()
                    .map(|inner| inner.read_events_after(after, limit))
                    .transpose()
            })
            .await
            .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
        })
    }
}

#[async_trait]
impl Store for RedbStore {
    async fn get(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredObject>, StoreError> {
        let key = ObjectKey::new(kind, namespace, name);
        self.blocking(move |inner| inner.get(&key)).await
    }

    async fn list(&self, kind: Kind, namespace: Option<&str>) -> Result<List, StoreError> {
        let namespace = namespace.map(str::to_string);
        self.blocking(move |inner| inner.list(kind, namespace.as_deref(), ""))
            .await
    }

    async fn list_prefix(
        &self,
        kind: Kind,
        namespace: &str,
        prefix: &str,
    ) -> Result<List, StoreError> {
        let namespace = namespace.to_string();
        let prefix = prefix.to_string();
        self.blocking(move |inner| inner.list(kind, Some(&namespace), &prefix))
            .await
    }

    async fn put(
        &self,
        value: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        let (key, value) = object::normalise(value)?;
        self.write(key, Change::Put { value }, precondition).await
    }

    async fn put_status(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        status: serde_json::Value,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.write(
            ObjectKey::new(kind, namespace, name),
            Change::Status { status },
            precondition,
        )
        .await
    }

    async fn delete(
        &self,
        kind: Kind,
        namespace: &str,
        name: &str,
        precondition: Precondition,
    ) -> Result<StoredObject, StoreError> {
        self.write(
            ObjectKey::new(kind, namespace, name),
            Change::Delete,
            precondition,
        )
        .await
    }

    fn watch(&self, kinds: &[Kind], since: Option<u64>) -> WatchStream {
        // Subscribe first, then read the starting point: see `crate::watch`.
        let rx = self.inner.events.subscribe();
        let start = match since {
            Some(since) => Start::After(since),
            None => Start::Live(self.inner.committed.load(Ordering::SeqCst)),
        };
        watch::stream(Box::new(Arc::downgrade(&self.inner)), rx, kinds, start)
    }

    async fn current_version(&self) -> Result<u64, StoreError> {
        Ok(self.inner.committed.load(Ordering::SeqCst))
    }
}

fn backend<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Backend(format!("{what}: {error}"))
}

fn abort(txn: WriteTransaction) {
    if let Err(error) = txn.abort() {
        tracing::warn!(%error, "aborting a store transaction failed");
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend(format!("encoding: {e}")))
}

fn decode<T: DeserializeOwned>(bytes: &[u8], table: &str) -> Result<T, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Backend(format!("decoding an entry of table {table}: {e}")))
}
