//! Where `kappa server`'s API role reads the routers' request history (`/v1/stats`, the
//! dashboard): the executor's sum of every router replica's reports, over HTTP or in process,
//! plus a router in the same process that reports to nobody.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use kappa_core::{StatsSnapshot, StatsSource};

/// `GET <executor>/v1/stats`.
pub(crate) struct HttpStats {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl HttpStats {
    pub(crate) fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let parsed =
            reqwest::Url::parse(base).with_context(|| format!("{base:?} is not a valid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("{base:?} must be an http:// or https:// URL");
        }
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .build()
                .context("creating the HTTP client")?,
            url: format!("{}/v1/stats", base.trim_end_matches('/')),
            token: token.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl StatsSource for HttpStats {
    async fn stats(&self) -> Result<StatsSnapshot, String> {
        let response = self
            .client
            .get(&self.url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("the executor at {} did not answer: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(format!(
                "the executor at {} answered {status}: {body}",
                self.url
            ));
        }
        response
            .json::<StatsSnapshot>()
            .await
            .map_err(|e| format!("the executor at {} sent unreadable stats: {e}", self.url))
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
