//! The routers' request history in cluster mode: every router replica sends its own
//! [`StatsSnapshot`] to `POST /v1/stats` (`{replica, snapshot}`), and `GET /v1/stats` answers
//! their sum, which the API server's `/v1/stats` and dashboard read. A replica that stops
//! reporting for [`STATS_TTL`] no longer counts (its history goes with it).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use kappa_core::{StatsSnapshot, StatsSource};
use tokio::time::Instant;

/// How long a replica's last snapshot counts without a new one.
pub const STATS_TTL: Duration = Duration::from_secs(60);
/// Largest `POST /v1/stats` body (a replica's hour of every function it served).
pub const MAX_STATS_BODY: usize = 32 * 1024 * 1024;

pub use kappa_core::executor_api::StatsReport;

/// The last snapshot of each router replica.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    /// A std mutex: replaced or merged synchronously, never held across an await.
    replicas: Mutex<HashMap<String, (Instant, StatsSnapshot)>>,
}

impl ReplicaStats {
    pub fn new() -> Self {
        Self::default()
    }

    fn replicas(&self) -> MutexGuard<'_, HashMap<String, (Instant, StatsSnapshot)>> {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `report` as its replica's current history.
    pub fn apply(&self, report: StatsReport) {
        self.replicas()
            .insert(report.replica, (Instant::now(), report.snapshot));
    }

    /// The sum of the replicas' histories that are recent enough.
    pub fn sum(&self) -> StatsSnapshot {
        let now = Instant::now();
        let mut replicas = self.replicas();
        replicas.retain(|_, (seen, _)| now.saturating_duration_since(*seen) < STATS_TTL);
        let mut total = StatsSnapshot {
            minute: kappa_core::stats::current_minute(),
            functions: Vec::new(),
        };
        for (_, snapshot) in replicas.values() {
            total.merge(snapshot.clone());
        }
        total
    }
}

#[async_trait]
impl StatsSource for ReplicaStats {
    async fn stats(&self) -> Result<StatsSnapshot, String> {
        Ok(self.sum())
    }
}
