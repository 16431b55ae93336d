//! The per-function endpoint index: specialized instances and their in-flight counters.
//!
//! Invariants:
//! - An endpoint's `in_flight` never exceeds its capacity (`requestsPerPod`): admission is a
//!   compare-and-swap loop, so no lock is taken on the request path.
//! - A draining endpoint admits nothing new; it is deleted only once `in_flight` reaches 0.
//! - Admission only picks endpoints of the function's current generation, so an updated
//!   function's new requests never reach old code.
//! - Each function's endpoint list is an immutable `Vec` swapped with `arc-swap`: readers never
//!   block writers, writers (the pool manager, rarely) copy the list.

use crate::addr::InstanceAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::id::FunctionId;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    Instant::now()
        .saturating_duration_since(epoch())
        .as_millis() as u64
}

/// One specialized instance as the router sees it.
#[derive(Debug)]
pub struct Endpoint {
    pub instance_id: String,
    pub addr: InstanceAddr,
    /// The function generation whose code this instance runs.
    pub generation: i64,
    /// Requests it may serve at once (`requestsPerPod`).
    pub capacity: u32,
    /// Admitted requests not yet finished. Atomic: incremented on the request path by CAS.
    in_flight: AtomicU32,
    /// Milliseconds since the index epoch when the last request finished (or it was created).
    last_used_ms: AtomicU64,
    served: AtomicU64,
    draining: AtomicBool,
    /// Why the instance ended, once the backend reported it; set at most once.
    exit: OnceLock<String>,
    /// Woken when `exit` is set, for requests that lost their connection and want the cause.
    exited: Notify,
    /// A connection to the instance its backend opened in advance (while it waited in a warm
    /// pool), for the router's first request; taken at most once.
    connection: Mutex<Option<std::net::TcpStream>>,
}

impl Endpoint {
    pub fn new(
        instance_id: impl Into<String>,
        addr: impl Into<InstanceAddr>,
        generation: i64,
        capacity: u32,
    ) -> Self {
        Self {
            instance_id: instance_id.into(),
            addr: addr.into(),
            generation,
            capacity: capacity.max(1),
            in_flight: AtomicU32::new(0),
            last_used_ms: AtomicU64::new(now_ms()),
            served: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            exit: OnceLock::new(),
            exited: Notify::new(),
            connection: Mutex::new(None),
        }
    }

    /// Hands over a connection to the instance opened in advance (see
    /// [`crate::Backend::take_connection`]), for [`Endpoint::take_connection`].
    pub fn offer_connection(&self, connection: std::net::TcpStream) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection);
    }

    /// The connection opened in advance, if one was offered and not yet taken. It may have
    /// been closed by the instance since: the caller treats it like a pooled idle connection.
    pub fn take_connection(&self) -> Option<std::net::TcpStream> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Takes one slot if the endpoint is not draining and below capacity.
    fn try_acquire(&self) -> bool {
        if self.draining.load(Ordering::Acquire) {
            return false;
        }
        let mut current = self.in_flight.load(Ordering::Relaxed);
        loop {
            if current >= self.capacity {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    fn release(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.last_used_ms.store(now_ms(), Ordering::Release);
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests this endpoint has finished.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// How long since the last request finished (zero while one is in flight).
    pub fn idle_for(&self) -> Duration {
        if self.in_flight() > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(now_ms().saturating_sub(self.last_used_ms.load(Ordering::Acquire)))
    }

    /// Stops admitting new requests; in-flight ones finish.
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records why the instance ended (first report wins) and wakes those waiting for it.
    pub fn set_exit(&self, reason: impl Into<String>) {
        self.mark_draining();
        let _ = self.exit.set(reason.into());
        self.exited.notify_waiters();
    }

    /// Why the instance ended, if known.
    pub fn exit_reason(&self) -> Option<&str> {
        self.exit.get().map(String::as_str)
    }

    /// Waits up to `timeout` for the instance's exit to be reported, returning the reason.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let notified = self.exited.notified();
        if let Some(reason) = self.exit_reason() {
            return Some(reason.to_string());
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        self.exit_reason().map(str::to_string)
    }
}

/// The endpoints of one function, plus its wait queue.
#[derive(Debug, Default)]
pub struct FunctionEndpoints {
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    /// Signalled when a slot frees or an endpoint is added: queued requests retry admission.
    changed: Notify,
    /// Requests waiting in this function's queue.
    waiting: AtomicUsize,
    /// Round-robin start position.
    cursor: AtomicUsize,
}

impl FunctionEndpoints {
    /// Admits one request on an endpoint of `generation` with a free slot.
    pub fn try_admit(self: &Arc<Self>, generation: i64) -> Option<Permit> {
        let list = self.endpoints.load();
        let n = list.len();
        if n == 0 {
            return None;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let endpoint = &list[(start + i) % n];
            if endpoint.generation == generation && endpoint.try_acquire() {
                return Some(Permit {
                    endpoint: Arc::clone(endpoint),
                    function: Arc::clone(self),
                });
            }
        }
        None
    }

    /// The current endpoints.
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Joins the wait queue if fewer than `limit` requests wait; the ticket leaves it on drop.
    pub fn enter_queue(self: &Arc<Self>, limit: usize) -> Option<QueueTicket> {
        let mut current = self.waiting.load(Ordering::Relaxed);
        loop {
            if current >= limit {
                return None;
            }
            match self.waiting.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(QueueTicket {
                        function: Arc::clone(self),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Requests waiting in the queue.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Completes when a slot frees or an endpoint is added. Create it *before* the admission
    /// attempt it follows, so a wake-up in between is not lost.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    fn wake_all(&self) {
        self.changed.notify_waiters();
    }

    /// Requests in flight over all endpoints.
    pub fn in_flight(&self) -> u32 {
        self.endpoints.load().iter().map(|e| e.in_flight()).sum()
    }
}

/// A place in a function's wait queue.
#[derive(Debug)]
pub struct QueueTicket {
    function: Arc<FunctionEndpoints>,
}

impl Drop for QueueTicket {
    fn drop(&mut self) {
        self.function.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted request on one endpoint; releases the slot when dropped.
#[derive(Debug)]
pub struct Permit {
    endpoint: Arc<Endpoint>,
    function: Arc<FunctionEndpoints>,
}

impl Permit {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.endpoint.release();
        if self.function.waiting() > 0 {
            self.function.wake_all();
        }
    }
}

/// Every function's endpoints. Shared by the router (admission) and the pool manager (writes).
#[derive(Debug, Default)]
pub struct EndpointIndex {
    functions: DashMap<FunctionId, Arc<FunctionEndpoints>>,
}

impl EndpointIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// The function's entry, if it has ever had one.
    pub fn get(&self, id: &FunctionId) -> Option<Arc<FunctionEndpoints>> {
        self.functions.get(id).map(|e| Arc::clone(e.value()))
    }

    /// The function's entry, created empty when missing.
    pub fn entry(&self, id: &FunctionId) -> Arc<FunctionEndpoints> {
        if let Some(existing) = self.get(id) {
            return existing;
        }
        Arc::clone(self.functions.entry(id.clone()).or_default().value())
    }

    /// Adds an endpoint and wakes the function's queued requests.
    pub fn insert(&self, id: &FunctionId, endpoint: Arc<Endpoint>) {
        let function = self.entry(id);
        function.endpoints.rcu(|list| {
            let mut next: Vec<Arc<Endpoint>> = list
                .iter()
                .filter(|e| e.instance_id != endpoint.instance_id)
                .cloned()
                .collect();
            next.push(Arc::clone(&endpoint));
            next
        });
        function.wake_all();
    }

    /// Removes an endpoint by instance id, returning it.
    pub fn remove(&self, id: &FunctionId, instance_id: &str) -> Option<Arc<Endpoint>> {
        let function = self.get(id)?;
        let mut removed = None;
        function.endpoints.rcu(|list| {
            removed = list.iter().find(|e| e.instance_id == instance_id).cloned();
            list.iter()
                .filter(|e| e.instance_id != instance_id)
                .cloned()
                .collect::<Vec<_>>()
        });
        function.wake_all();
        removed
    }

    /// The function's endpoints (empty when none).
    pub fn endpoints(&self, id: &FunctionId) -> Vec<Arc<Endpoint>> {
        self.get(id)
            .map(|f| f.endpoints().as_ref().clone())
            .unwrap_or_default()
    }

    /// Finds an endpoint by instance id across all functions.
    pub fn find_instance(&self, instance_id: &str) -> Option<(FunctionId, Arc<Endpoint>)> {
        self.functions.iter().find_map(|entry| {
            entry
                .value()
                .endpoints()
                .iter()
                .find(|e| e.instance_id == instance_id)
                .map(|e| (entry.key().clone(), Arc::clone(e)))
        })
    }

    /// Every function with its endpoints (for metrics and debugging).
    pub fn snapshot(&self) -> Vec<(FunctionId, Vec<Arc<Endpoint>>)> {
        self.functions
            .iter()
            .map(|e| (e.key().clone(), e.value().endpoints().as_ref().clone()))
            .collect()
    }

    /// Wakes every queued request of the function (e.g. when it was deleted or failed).
    pub fn wake(&self, id: &FunctionId) {
        if let Some(f) = self.get(id) {
            f.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> std::net::SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    #[test]
    fn admission_respects_capacity_and_generation() {
        let index = EndpointIndex::new();
        let id = FunctionId::new("default", "hello");
        index.insert(&id, Arc::new(Endpoint::new("a", addr(), 1, 2)));
        let f = index.get(&id).unwrap();
        let p1 = f.try_admit(1).unwrap();
        let p2 = f.try_admit(1).unwrap();
        assert!(f.try_admit(1).is_none(), "capacity 2 is full");
        assert!(f.try_admit(2).is_none(), "no endpoint of generation 2");
        drop(p1);
        assert!(f.try_admit(1).is_some());
        drop(p2);
        assert_eq!(f.in_flight(), 0);
    }

    #[test]
    fn draining_admits_nothing() {
        let index = EndpointIndex::new();
        let id = FunctionId::new("default", "hello");
        let e = Arc::new(Endpoint::new("a", addr(), 1, 1));
        index.insert(&id, Arc::clone(&e));
        e.mark_draining();
        assert!(index.get(&id).unwrap().try_admit(1).is_none());
        assert!(index.remove(&id, "a").is_some());
        assert!(index.endpoints(&id).is_empty());
    }

    #[test]
    fn queue_is_bounded() {
        let f = Arc::new(FunctionEndpoints::default());
        let t1 = f.enter_queue(2).unwrap();
        let _t2 = f.enter_queue(2).unwrap();
        assert!(f.enter_queue(2).is_none());
        drop(t1);
        assert!(f.enter_queue(2).is_some());
    }

    #[tokio::test]
    async fn release_wakes_a_queued_request() {
        let index = Arc::new(EndpointIndex::new());
        let id = FunctionId::new("default", "hello");
        index.insert(&id, Arc::new(Endpoint::new("a", addr(), 1, 1)));
        let f = index.get(&id).unwrap();
        let held = f.try_admit(1).unwrap();
        let f2 = Arc::clone(&f);
        let waiter = tokio::spawn(async move {
            let _ticket = f2.enter_queue(10).unwrap();
            loop {
                let changed = f2.changed();
                if let Some(p) = f2.try_admit(1) {
                    return p.endpoint().instance_id.clone();
                }
                changed.await;
            }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), "a");
    }

    #[tokio::test]
    async fn exit_reason_reaches_waiters() {
        let e = Arc::new(Endpoint::new("a", addr(), 1, 1));
        let e2 = Arc::clone(&e);
        let h = tokio::spawn(async move { e2.wait_exit(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        e.set_exit("exited with signal 9 (out of memory)");
        assert_eq!(
            h.await.unwrap().as_deref(),
            Some("exited with signal 9 (out of memory)")
        );
        assert!(e.is_draining());
    }
}
