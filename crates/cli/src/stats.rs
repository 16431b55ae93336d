//! Where `kappa server`'s API role reads the routers' request history (`/v1/stats`, the
//! dashboard): the executor's sum of every router replica's reports, over HTTP or in process,
//! plus a router in the same process that reports to nobody.

use std::sync::Arc;

use kappa_core::{StatsSnapshot, StatsSource};

use crate::server::ExecutorGet;

/// `GET <executor>/v1/stats`.
pub(crate) struct HttpStats(ExecutorGet);

impl HttpStats {
    pub(crate) fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        ExecutorGet::new(base, token, kappa_core::executor_api::STATS_PATH).map(Self)
    }
}

#[async_trait::async_trait]
impl StatsSource for HttpStats {
    async fn stats(&self) -> Result<StatsSnapshot, String> {
        self.0.get::<StatsSnapshot>("unreadable stats").await
    }
}

/// The sum of several sources (the executor's collected reports and a router of this process).
pub(crate) struct Combined(pub(crate) Vec<Arc<dyn StatsSource>>);

#[async_trait::async_trait]
impl StatsSource for Combined {
    async fn stats(&self) -> Result<StatsSnapshot, String> {
        let mut total = StatsSnapshot {
            minute: kappa_core::stats::current_minute(),
            functions: Vec::new(),
        };
        for source in &self.0 {
            total.merge(source.stats().await?);
        }
        Ok(total)
    }
}
