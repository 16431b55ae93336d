//! What the API role reads from the executor when it runs in another process (instances,
//! request history), and what the canary controller measures.

use std::sync::Arc;
use std::time::Duration;

use kappa_core::{StatsSnapshot, StatsSource};
use kappa_executor::ExecutorApi;

use crate::error::{Ctx as _, PlatformError};
use crate::invoke::check_url;

/// An authenticated `GET` of one path of the executor's API: the one client of the executor
/// that the API role's instance lists and request history share.
pub(crate) struct ExecutorGet {
    client: reqwest::Client,
    url: String,
    token: String,
}

impl ExecutorGet {
    pub(crate) fn new(base: &str, token: &str, path: &str) -> Result<Self, PlatformError> {
        check_url(base)?;
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .build()
                .ctx("creating the HTTP client")?,
            url: format!("{}{path}", base.trim_end_matches('/')),
            token: token.to_string(),
        })
    }

    /// The answer's JSON body; `unreadable` names what a body that does not parse was.
    pub(crate) async fn get<T: serde::de::DeserializeOwned>(
        &self,
        unreadable: &str,
    ) -> Result<T, String> {
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
            .json::<T>()
            .await
            .map_err(|e| format!("the executor at {} sent {unreadable}: {e}", self.url))
    }
}

/// Lists the pool manager's instances through the executor's API (`GET /v1/instances`).
pub(crate) struct HttpInstances(ExecutorGet);

impl HttpInstances {
    pub(crate) fn new(base: &str, token: &str) -> Result<Self, PlatformError> {
        ExecutorGet::new(base, token, kappa_core::executor_api::INSTANCES_PATH).map(Self)
    }
}

#[async_trait::async_trait]
impl kappa_core::InstanceLister for HttpInstances {
    async fn instances(&self) -> Result<Vec<kappa_core::InstanceInfo>, String> {
        self.0
            .get::<kappa_core::executor_api::InstanceList>("an unreadable list")
            .await
            .map(|l| l.items)
    }
}

/// `GET <executor>/v1/stats`: the executor's sum of every router replica's reports.
pub(crate) struct HttpStats(ExecutorGet);

impl HttpStats {
    pub(crate) fn new(base: &str, token: &str) -> Result<Self, PlatformError> {
        ExecutorGet::new(base, token, kappa_core::executor_api::STATS_PATH).map(Self)
    }
}

#[async_trait::async_trait]
impl StatsSource for HttpStats {
    async fn stats(&self) -> Result<StatsSnapshot, String> {
        self.0.get::<StatsSnapshot>("unreadable stats").await
    }
}

/// The sum of several sources (the executor's collected reports and a router of this process
/// that reports to nobody).
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

/// What the canary controller measures in the executor role: the sum of the router replicas'
/// reports, plus the router in this process (set once it exists).
pub(crate) struct CanarySource {
    pub(crate) executor: ExecutorApi,
    pub(crate) local: Arc<std::sync::OnceLock<Arc<kappa_core::Outcomes>>>,
}

impl kappa_core::OutcomeSource for CanarySource {
    fn outcome(&self, function: &kappa_core::FunctionId) -> (u64, u64) {
        let (r, f) = self.executor.outcome(function);
        let (lr, lf) = self.local.get().map_or((0, 0), |o| {
            kappa_core::OutcomeSource::outcome(o.as_ref(), function)
        });
        (r + lr, f + lf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kappa_core::{EndpointIndex, FunctionId, Provisioner};

    /// The API role's lister of instances against a real executor API over HTTP.
    #[tokio::test]
    async fn instances_are_listed_over_the_executors_api() {
        struct Two;
        #[async_trait::async_trait]
        impl kappa_core::InstanceLister for Two {
            async fn instances(&self) -> Result<Vec<kappa_core::InstanceInfo>, String> {
                Ok(vec![kappa_core::InstanceInfo {
                    id: "python-1".into(),
                    environment: Some(FunctionId::new("default", "python")),
                    function: None,
                    state: kappa_core::InstanceState::Warm,
                    generation: None,
                    in_flight: 0,
                    capacity: 0,
                    served: 0,
                    address: "sandbox:8888:/x".into(),
                }])
            }
        }
        struct Never;
        #[async_trait::async_trait]
        impl Provisioner for Never {
            async fn provision(
                &self,
                _: &FunctionId,
                _: i64,
            ) -> Result<kappa_core::Provision, kappa_core::ProvisionError> {
                Ok(kappa_core::Provision::AtCapacity)
            }
        }
        let api = ExecutorApi::new(
            Arc::new(Never),
            Arc::new(EndpointIndex::new()),
            Some("secret".into()),
        )
        .with_instances(Arc::new(Two));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, api.app()).await });

        let lister = HttpInstances::new(&url, "secret").unwrap();
        let items = kappa_core::InstanceLister::instances(&lister)
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].id, "python-1");
        assert_eq!(items[0].state, kappa_core::InstanceState::Warm);

        let wrong = HttpInstances::new(&url, "not-the-token").unwrap();
        let err = kappa_core::InstanceLister::instances(&wrong)
            .await
            .unwrap_err();
        assert!(err.contains("401"), "{err}");
        assert!(HttpInstances::new("ftp://x", "t").is_err());
    }
}
