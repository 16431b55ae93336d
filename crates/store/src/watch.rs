//! The watch stream both stores share.
//!
//! Every write appends its event to a log kept by the store (in the same transaction as the
//! write) and, once committed, publishes it on a `tokio::sync::broadcast` channel, in version
//! order (stores publish while holding their write lock). A watcher subscribes to the channel
//! *before* it reads the log, so an event is always in the log it reads, in the channel, or both;
//! it remembers the last version it has seen and skips anything at or below it. Hence no gap and
//! no duplicate.
//!
//! Replay reads the log in pages of [`PAGE`] events (memory stays bounded). When a live watcher
//! falls behind (`Lagged`), or sees a version jump, it goes back to the log from its last seen
//! version; only if the log no longer covers that version does it yield
//! [`StoreError::Gone`]. The channel never blocks writers: a slow or dropped watcher costs them
//! nothing. The stream ends when the store (every handle to it) is dropped, because the channel
//! closes and the stream holds only a weak reference to the store's log.

use std::collections::VecDeque;

use futures::future::BoxFuture;
use kappa_types::Kind;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::{StoreError, WatchEvent, WatchStream};

/// How many logged events a watcher reads at a time while it catches up.
pub(crate) const PAGE: usize = 512;

/// A page of the event log.
#[derive(Debug, Default)]
pub(crate) struct LogPage {
    /// Up to the requested number of events, in version order.
    pub(crate) events: Vec<WatchEvent>,
    /// The oldest version the log still holds, `None` when it is empty.
    pub(crate) oldest: Option<u64>,
}

/// Read access to a store's event log, held by watchers.
pub(crate) trait EventLog: Send + Sync + 'static {
    /// Up to `limit` logged events with a version greater than `after`, in order; `Ok(None)` when
    /// the store has been dropped (the watch then ends).
    fn read_after(
        &self,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'static, Result<Option<LogPage>, StoreError>>;
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// Replay logged events after this version, then go live.
    After(u64),
    /// Live only: skip everything up to this version (the store's version when watch was called).
    Live(u64),
}

/// Builds the watch stream. `rx` must have been subscribed before the store's version for
/// [`Start::Live`] was read and before the log is read (which happens on first poll).
pub(crate) fn stream(
    log: Box<dyn EventLog>,
    rx: broadcast::Receiver<WatchEvent>,
    kinds: &[Kind],
    start: Start,
) -> WatchStream {
    let (last, catching_up) = match start {
        Start::After(version) => (version, true),
        Start::Live(version) => (version, false),
    };
    let watcher = Watcher {
        log,
        rx,
        kinds: kinds.to_vec(),
        last,
        catching_up,
        buffer: VecDeque::new(),
        done: false,
    };
    Box::pin(futures::stream::unfold(watcher, |mut watcher| async move {
        let item = watcher.next().await?;
        Some((item, watcher))
    }))
}

struct Watcher {
    log: Box<dyn EventLog>,
    rx: broadcast::Receiver<WatchEvent>,
    /// Kinds to yield; all when empty.
    kinds: Vec<Kind>,
    /// The highest version seen so far, yielded or filtered out.
    last: u64,
    /// Reading the log rather than the channel.
    catching_up: bool,
    /// Events read from the log, not yet yielded (at most one page).
    buffer: VecDeque<WatchEvent>,
    /// The stream has ended (store dropped, history gone or backend error).
    done: bool,
}

impl Watcher {
    async fn next(&mut self) -> Option<Result<WatchEvent, StoreError>> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            if self.catching_up {
                let page = match self.log.read_after(self.last, PAGE).await {
                    Ok(Some(page)) => page,
                    Ok(None) => {
                        self.done = true;
                        return None;
                    }
                    Err(error) => {
                        self.done = true;
                        return Some(Err(error));
                    }
                };
                if let Some(oldest) = page.oldest
                    && self.last.saturating_add(1) < oldest
                {
                    self.done = true;
                    return Some(Err(StoreError::Gone {
                        requested: self.last,
                        oldest,
                    }));
                }
                if page.events.len() < PAGE {
                    self.catching_up = false;
                }
                for event in page.events {
                    self.accept(event);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(event) => {
                    let version = event.object.resource_version;
                    if version <= self.last {
                        continue;
                    }
                    if version > self.last.saturating_add(1) {
                        // Not expected (events are published in order), but if one was missed the
                        // log has it: read from there rather than leave a gap.
                        tracing::debug!(
                            last = self.last,
                            version,
                            "watch saw a version jump, reading the log"
                        );
                        self.catching_up = true;
                        continue;
                    }
                    self.accept(event);
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::debug!(last = self.last, missed, "watch lagged, reading the log");
                    self.catching_up = true;
                }
                Err(RecvError::Closed) => {
                    self.done = true;
                }
            }
        }
    }

    fn accept(&mut self, event: WatchEvent) {
        let version = event.object.resource_version;
        if version <= self.last {
            return;
        }
        self.last = version;
        if self.kinds.is_empty() || self.kinds.contains(&event.object.kind) {
            self.buffer.push_back(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use futures::StreamExt;
    use serde_json::json;

    use super::*;
    use crate::{EventType, StoredObject};

    fn event(version: u64) -> WatchEvent {
        WatchEvent {
            event_type: EventType::Added,
            object: StoredObject {
                kind: Kind::Function,
                namespace: "default".to_string(),
                name: format!("f{version}"),
                resource_version: version,
                value: json!({}),
            },
        }
    }

    /// A log held in a vector; `None` once "dropped".
    struct FakeLog(Arc<Mutex<Option<Vec<WatchEvent>>>>);

    impl EventLog for FakeLog {
        fn read_after(
            &self,
            after: u64,
            limit: usize,
        ) -> BoxFuture<'static, Result<Option<LogPage>, StoreError>> {
            let log = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let page = log.as_ref().map(|events| LogPage {
                events: events
                    .iter()
                    .filter(|e| e.object.resource_version > after)
                    .take(limit)
                    .cloned()
                    .collect(),
                oldest: events.first().map(|e| e.object.resource_version),
            });
            Box::pin(futures::future::ready(Ok(page)))
        }
    }

    async fn versions(stream: &mut WatchStream, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        for _ in 0..n {
            let item = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
                .await
                .expect("in time")
                .expect("open")
                .expect("event");
            out.push(item.object.resource_version);
        }
        out
    }

    #[tokio::test]
    async fn a_version_jump_is_filled_from_the_log() {
        let log = Arc::new(Mutex::new(Some((1..=3).map(event).collect::<Vec<_>>())));
        let (tx, rx) = broadcast::channel(16);
        let mut stream = stream(Box::new(FakeLog(Arc::clone(&log))), rx, &[], Start::Live(0));
        // Version 2 never reaches the channel.
        tx.send(event(1)).expect("send");
        tx.send(event(3)).expect("send");
        assert_eq!(versions(&mut stream, 3).await, vec![1, 2, 3]);
        tx.send(event(4)).expect("send");
        assert_eq!(versions(&mut stream, 1).await, vec![4]);
        drop(tx);
        assert!(
            stream.next().await.is_none(),
            "a closed channel ends the stream"
        );
    }

    #[tokio::test]
    async fn replay_pages_through_a_long_log_without_duplicates() {
        let total = u64::try_from(PAGE).expect("small") * 2 + 7;
        let log = Arc::new(Mutex::new(Some((1..=total).map(event).collect::<Vec<_>>())));
        let (tx, rx) = broadcast::channel(16);
        // Already published live events overlap the replay: they must be skipped.
        tx.send(event(total - 1)).expect("send");
        tx.send(event(total)).expect("send");
        let mut stream = stream(Box::new(FakeLog(log)), rx, &[], Start::After(5));
        let expected: Vec<u64> = (6..=total).collect();
        assert_eq!(versions(&mut stream, expected.len()).await, expected);
        tx.send(event(total + 1)).expect("send");
        assert_eq!(versions(&mut stream, 1).await, vec![total + 1]);
    }

    #[tokio::test]
    async fn a_dropped_store_ends_the_replay() {
        let log = Arc::new(Mutex::new(None));
        let (_tx, rx) = broadcast::channel(16);
        let mut stream = stream(Box::new(FakeLog(log)), rx, &[], Start::After(0));
        assert!(stream.next().await.is_none());
    }
}
