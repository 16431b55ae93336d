//! [`ReadinessGate`]: the router's endpoint index fed by two sources, the pool manager's
//! endpoint feed ([`crate::EndpointFeeder`]) and the readiness of the instances' pods (a pod
//! watcher in `kappa-kube`, through [`Readiness`]).
//!
//! The rule: an endpoint is in the index only while the feed lists it **and** its instance is
//! not known to be not ready.
//!
//! - The feed adds, drains and removes endpoints; the gate remembers every endpoint it lists,
//!   whether or not it is in the index.
//! - A pod that turns not ready (failing probe, terminated container, being deleted, deleted)
//!   takes its endpoint out of the index at once; requests already admitted finish, since they
//!   hold the endpoint itself. Ready again, the same endpoint (with its live in-flight count) is
//!   put back, if the feed still lists it and it is not draining.
//! - An instance whose pod the watcher has never reported is admitted on the feed alone (local
//!   mode, where nothing watches pods, or a pod not observed yet).
//! - Removal by the feed always wins: a ready pod never brings back an endpoint the feed
//!   dropped.
//!
//! So a dead pod leaves the index as soon as the Kubernetes API says so, without waiting for
//! the executor to notice, and even while the executor is unreachable.
//!
//! Warm requests never touch the gate: it only runs on feed and pod events and writes the
//! index, which admission reads lock-free as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kappa_core::{Endpoint, EndpointIndex, FunctionId, InstanceAddr, Readiness};

/// What the pod watcher last said about an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PodState {
    Ready,
    NotReady,
    /// The pod was deleted and forgotten while the feed still listed its endpoint: kept out
    /// until the feed removes it, then dropped.
    Gone,
}

/// An endpoint the feed lists.
#[derive(Debug)]
struct Listed {
    function: FunctionId,
    endpoint: Arc<Endpoint>,
    /// Whether `endpoint` is in the index now.
    admitted: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Every endpoint the feed lists, by instance id.
    listed: HashMap<String, Listed>,
    /// Instances the pod watcher reported, by instance id (the pod name). Bounded: the
    /// watcher forgets deleted pods, and `Gone` entries go with their endpoint.
    pods: HashMap<String, PodState>,
}

impl State {
    fn held_out(&self, instance_id: &str) -> bool {
        matches!(
            self.pods.get(instance_id),
            Some(PodState::NotReady | PodState::Gone)
        )
    }
}

/// What [`ReadinessGate::feed_added`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedAdded {
    /// A new endpoint, now in the index.
    Admitted,
    /// A new endpoint, kept out of the index because its pod is not ready.
    HeldOut,
    /// The same endpoint (address and generation) was already listed: kept as it was.
    Unchanged,
}

/// The endpoint index's writer in a router fed by a remote pool manager: the feed's endpoints,
/// minus those whose pods are not ready. Shared by the [`crate::EndpointFeeder`] and the pod
/// watcher.
#[derive(Debug)]
pub struct ReadinessGate {
    index: Arc<EndpointIndex>,
    /// The feed's endpoints and the pods' readiness. A plain mutex: taken only on feed and pod
    /// events and by the once-a-second usage report, never on a request and never across an
    /// `.await`; each event is a few map operations, so contention is negligible.
    state: Mutex<State>,
}

impl ReadinessGate {
    /// A gate writing `index` (this router's own).
    pub fn new(index: Arc<EndpointIndex>) -> Self {
        Self {
            index,
            state: Mutex::new(State::default()),
        }
    }

    /// The index this gate writes.
    pub fn index(&self) -> &Arc<EndpointIndex> {
        &self.index
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent entry by entry.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The feed lists an endpoint. An endpoint already listed under the same instance id with
    /// the same address and generation is kept (its in-flight count is live); a changed one
    /// replaces it. The new endpoint enters the index unless its pod is known not ready.
    pub fn feed_added(
        &self,
        function: &FunctionId,
        instance_id: &str,
        addr: InstanceAddr,
        generation: i64,
        capacity: u32,
    ) -> FeedAdded {
        let mut state = self.state();
        if let Some(old) = state.listed.get(instance_id)
            && old.endpoint.addr == addr
            && old.endpoint.generation == generation
            && &old.function == function
        {
            return FeedAdded::Unchanged;
        }
        let held_out = state.held_out(instance_id);
        if let Some(old) = state.listed.remove(instance_id)
            && old.admitted
            && (held_out || &old.function != function)
        {
            self.index.remove(&old.function, instance_id);
        }
        let endpoint = Arc::new(Endpoint::new(
            instance_id,
            addr.clone(),
            generation,
            capacity,
        ));
        if !held_out {
            // Replaces an endpoint of the same instance id in the function's list.
            self.index.insert(function, Arc::clone(&endpoint));
        }
        state.listed.insert(
            instance_id.to_string(),
            Listed {
                function: function.clone(),
                endpoint,
                admitted: !held_out,
            },
        );
        if held_out {
            tracing::info!(function = %function, instance = %instance_id, %addr, generation, "endpoint listed by the executor, held out: its pod is not ready");
            FeedAdded::HeldOut
        } else {
            tracing::debug!(function = %function, instance = %instance_id, %addr, generation, "endpoint added");
            FeedAdded::Admitted
        }
    }

    /// The feed marks an endpoint draining: it admits nothing new, and is not put back if its
    /// pod turns ready after being out. Returns whether the feed listed it.
    pub fn feed_draining(&self, instance_id: &str) -> bool {
        let state = self.state();
        match state.listed.get(instance_id) {
            Some(listed) => {
                listed.endpoint.mark_draining();
                true
            }
            None => false,
        }
    }

    /// The feed removed an endpoint: out of the index and forgotten. Returns it (in or out of
    /// the index) so the caller can record why its instance ended.
    pub fn feed_removed(&self, instance_id: &str) -> Option<Arc<Endpoint>> {
        let mut state = self.state();
        let listed = state.listed.remove(instance_id)?;
        if listed.admitted {
            self.index.remove(&listed.function, instance_id);
        }
        if state.pods.get(instance_id) == Some(&PodState::Gone) {
            state.pods.remove(instance_id);
        }
        Some(listed.endpoint)
    }

    /// Removes every listed endpoint for which `keep` is false (a resynchronised feed no longer
    /// has them), returning them.
    pub fn feed_retain(&self, keep: impl Fn(&str) -> bool) -> Vec<Arc<Endpoint>> {
        let stale: Vec<String> = self
            .state()
            .listed
            .keys()
            .filter(|id| !keep(id))
            .cloned()
            .collect();
        stale
            .iter()
            .filter_map(|id| self.feed_removed(id))
            .collect()
    }

    /// Every endpoint the feed lists, in the index or held out (for usage reports: requests
    /// admitted before an endpoint was held out are still in flight on it).
    pub fn endpoints(&self) -> Vec<Arc<Endpoint>> {
        self.state()
            .listed
            .values()
            .map(|l| Arc::clone(&l.endpoint))
            .collect()
    }

    /// Instance ids the feed lists whose endpoints are held out of the index.
    pub fn held_out(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .state()
            .listed
            .iter()
            .filter(|(_, l)| !l.admitted)
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Brings the index in line with the rule for one instance.
    fn reconcile(&self, state: &mut State, instance_id: &str) {
        let held_out = state.held_out(instance_id);
        let Some(listed) = state.listed.get_mut(instance_id) else {
            return;
        };
        if listed.admitted && held_out {
            self.index.remove(&listed.function, instance_id);
            listed.admitted = false;
            tracing::info!(function = %listed.function, instance = %instance_id, in_flight = listed.endpoint.in_flight(), "pod not ready: endpoint out of the index");
        } else if !listed.admitted && !held_out && !listed.endpoint.is_draining() {
            self.index
                .insert(&listed.function, Arc::clone(&listed.endpoint));
            listed.admitted = true;
            tracing::info!(function = %listed.function, instance = %instance_id, "pod ready again: endpoint back in the index");
        }
    }
}

impl Readiness for ReadinessGate {
    fn set_ready(&self, id: &str, ready: bool) {
        let mut state = self.state();
        let pod = if ready {
            PodState::Ready
        } else {
            PodState::NotReady
        };
        state.pods.insert(id.to_string(), pod);
        self.reconcile(&mut state, id);
    }

    fn forget(&self, id: &str) {
        let mut state = self.state();
        if state.listed.contains_key(id) {
            // The pod is gone but the executor has not said so yet: stay out until it does.
            state.pods.insert(id.to_string(), PodState::Gone);
        } else {
            state.pods.remove(id);
        }
        self.reconcile(&mut state, id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f() -> FunctionId {
        FunctionId::new("default", "hello")
    }

    fn addr(port: u16) -> InstanceAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port)).into()
    }

    fn gate() -> ReadinessGate {
        ReadinessGate::new(Arc::new(EndpointIndex::new()))
    }

    fn ids(gate: &ReadinessGate) -> Vec<String> {
        let mut ids: Vec<String> = gate
            .index()
            .endpoints(&f())
            .iter()
            .map(|e| e.instance_id.clone())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn the_feed_adds_and_a_never_seen_instance_is_admitted() {
        let gate = gate();
        assert_eq!(
            gate.feed_added(&f(), "a", addr(1), 1, 2),
            FeedAdded::Admitted
        );
        assert_eq!(
            ids(&gate),
            ["a"],
            "no pod report: admitted on the feed alone"
        );
        assert_eq!(
            gate.feed_added(&f(), "a", addr(1), 1, 2),
            FeedAdded::Unchanged
        );
        assert!(gate.index().get(&f()).unwrap().try_admit(1).is_some());
    }

    #[test]
    fn not_ready_removes_at_once_and_ready_puts_the_same_endpoint_back() {
        let gate = gate();
        gate.feed_added(&f(), "a", addr(1), 1, 2);
        gate.set_ready("a", true);
        let permit = gate.index().get(&f()).unwrap().try_admit(1).unwrap();
        assert_eq!(permit.endpoint().instance_id, "a");
        gate.feed_added(&f(), "b", addr(2), 1, 2);

        gate.set_ready("a", false);
        assert_eq!(ids(&gate), ["b"], "not ready: out of the index at once");
        assert_eq!(gate.held_out(), ["a"]);
        assert_eq!(
            permit.endpoint().in_flight(),
            1,
            "the admitted request is still in flight"
        );
        let usage: Vec<String> = gate
            .endpoints()
            .iter()
            .map(|e| e.instance_id.clone())
            .collect();
        assert!(usage.contains(&"a".to_string()), "still reported for usage");

        gate.set_ready("a", true);
        assert_eq!(ids(&gate), ["a", "b"]);
        let back = gate
            .index()
            .endpoints(&f())
            .into_iter()
            .find(|e| e.instance_id == "a")
            .unwrap();
        assert!(
            Arc::ptr_eq(&back, permit.endpoint()),
            "the same endpoint, with its live in-flight count"
        );
        drop(permit);
        assert_eq!(back.in_flight(), 0);
    }

    #[test]
    fn a_listed_endpoint_of_a_not_ready_pod_is_held_out() {
        let gate = gate();
        gate.set_ready("a", false);
        assert_eq!(
            gate.feed_added(&f(), "a", addr(1), 1, 2),
            FeedAdded::HeldOut
        );
        assert!(ids(&gate).is_empty());
        gate.set_ready("a", true);
        assert_eq!(ids(&gate), ["a"]);
    }

    #[test]
    fn feed_removal_wins_over_a_ready_pod() {
        let gate = gate();
        gate.feed_added(&f(), "a", addr(1), 1, 2);
        gate.set_ready("a", false);
        let e = gate.feed_removed("a").unwrap();
        assert_eq!(e.instance_id, "a");
        gate.set_ready("a", true);
        assert!(ids(&gate).is_empty(), "a ready pod does not bring it back");
        assert!(gate.endpoints().is_empty());

        gate.feed_added(&f(), "b", addr(2), 1, 2);
        gate.set_ready("b", true);
        gate.feed_removed("b").unwrap();
        assert!(ids(&gate).is_empty());
        assert!(gate.feed_removed("b").is_none());
    }

    #[test]
    fn draining_stays_out() {
        let gate = gate();
        gate.feed_added(&f(), "a", addr(1), 1, 2);
        assert!(gate.feed_draining("a"));
        assert_eq!(ids(&gate), ["a"], "a draining endpoint stays until removed");
        assert!(gate.index().get(&f()).unwrap().try_admit(1).is_none());
        gate.set_ready("a", false);
        gate.set_ready("a", true);
        assert!(ids(&gate).is_empty(), "draining: not put back");
        assert!(!gate.feed_draining("unknown"));
    }

    #[test]
    fn a_forgotten_pod_stays_out_until_the_feed_removes_it() {
        let gate = gate();
        gate.feed_added(&f(), "a", addr(1), 1, 2);
        gate.set_ready("a", false);
        gate.forget("a");
        assert!(ids(&gate).is_empty(), "deleted pod: still out");
        assert!(gate.state().pods.contains_key("a"));
        gate.feed_removed("a");
        assert!(
            gate.state().pods.is_empty(),
            "its record goes with the endpoint"
        );

        // Forgetting a pod the feed does not list drops its record at once.
        gate.set_ready("b", false);
        gate.forget("b");
        assert!(gate.state().pods.is_empty());
        gate.feed_added(&f(), "b", addr(2), 1, 2);
        assert_eq!(ids(&gate), ["b"], "never seen again: feed alone");
    }

    #[test]
    fn a_changed_endpoint_replaces_the_old_one_and_resync_drops_stale_ones() {
        let gate = gate();
        gate.feed_added(&f(), "a", addr(1), 1, 2);
        gate.feed_added(&f(), "b", addr(2), 1, 2);
        assert_eq!(
            gate.feed_added(&f(), "a", addr(3), 2, 2),
            FeedAdded::Admitted
        );
        let a = gate
            .index()
            .endpoints(&f())
            .into_iter()
            .find(|e| e.instance_id == "a")
            .unwrap();
        assert_eq!((a.addr.clone(), a.generation), (addr(3), 2));
        assert_eq!(ids(&gate), ["a", "b"]);

        // Changed while its pod is not ready: the old one leaves the index too.
        gate.set_ready("b", false);
        gate.set_ready("b", true);
        gate.set_ready("b", false);
        assert_eq!(
            gate.feed_added(&f(), "b", addr(4), 2, 2),
            FeedAdded::HeldOut
        );
        assert_eq!(ids(&gate), ["a"]);

        let gone = gate.feed_retain(|id| id == "a");
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].instance_id, "b");
        assert_eq!(ids(&gate), ["a"]);
        assert!(gate.held_out().is_empty());
    }
}
