//! Request outcomes per function: what the router answered for each function (and each kept
//! version, `hello.v3`), counted since the router started. The canary controller reads the
//! differences between two readings (`OutcomeSource`); routers in other processes send theirs
//! with their usage reports and the executor sums them.
//!
//! Invariant: counting is two relaxed atomic increments on a handle the route table caches, so
//! the warm path takes no lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::FunctionId;

/// One function's counters.
#[derive(Debug, Default)]
pub struct Outcome {
    requests: AtomicU64,
    failures: AtomicU64,
}

impl Outcome {
    /// Counts one answered request: a failure when its status is 5xx (the router's own 502,
    /// 503 and 504 included).
    pub fn record(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (requests, failures) so far.
    pub fn read(&self) -> (u64, u64) {
        (
            self.requests.load(Ordering::Relaxed),
            self.failures.load(Ordering::Relaxed),
        )
    }
}

/// One function's counters on the wire (usage reports) and in readings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionOutcome {
    pub namespace: String,
    pub function: String,
    pub requests: u64,
    pub failures: u64,
}

/// The counters of every function one router has answered for.
#[derive(Debug, Default)]
pub struct Outcomes {
    by_function: Mutex<HashMap<FunctionId, Arc<Outcome>>>,
}

impl Outcomes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The counters of `id` (created on first use; never dropped, so a cached handle stays
    /// the live one).
    pub fn entry(&self, id: &FunctionId) -> Arc<Outcome> {
        let mut map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(id.clone()).or_default())
    }

    /// Every function's counters so far.
    pub fn snapshot(&self) -> Vec<FunctionOutcome> {
        let map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|(id, o)| {
                let (requests, failures) = o.read();
                FunctionOutcome {
                    namespace: id.namespace.clone(),
                    function: id.name.clone(),
                    requests,
                    failures,
                }
            })
            .collect()
    }
}

/// Where the canary controller reads request outcomes: the router in this process, or the
/// executor's sum of every router replica's reports.
pub trait OutcomeSource: Send + Sync + 'static {
    /// (requests, failures) of `id` counted so far. Only differences between two readings
    /// mean anything; a reading may go down when a router replica restarts.
    fn outcome(&self, id: &FunctionId) -> (u64, u64);
}

impl OutcomeSource for Outcomes {
    fn outcome(&self, id: &FunctionId) -> (u64, u64) {
        let map = self
            .by_function
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(id).map_or((0, 0), |o| o.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_as_5xx() {
        let outcomes = Outcomes::new();
        let id = FunctionId::new("default", "hello.v2");
        let handle = outcomes.entry(&id);
        for status in [200, 404, 500, 502, 201] {
            handle.record(status);
        }
        assert_eq!(outcomes.outcome(&id), (5, 2));
        assert_eq!(outcomes.entry(&id).read(), (5, 2), "one live entry per id");
        assert_eq!(
            outcomes.outcome(&FunctionId::new("default", "other")),
            (0, 0)
        );
        assert_eq!(outcomes.snapshot().len(), 1);
    }
}
