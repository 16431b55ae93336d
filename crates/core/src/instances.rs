//! What the pool manager reports about the instances it holds (`kappa fn pods`, `kappa env
//! pods`): one [`InstanceInfo`] per instance, warm or specialized. The executor serves the list
//! as JSON (`GET /v1/instances`), and the API server answers the CLI from it, so this is the
//! one definition of that wire format.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::FunctionId;

/// Where an instance is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Generic, in its environment's warm pool.
    Warm,
    /// Being specialized for a function.
    Specializing,
    /// Specialized and taking requests.
    Ready,
    /// Specialized for an older generation (or configuration): finishes what it has, takes
    /// nothing new, then ends.
    Draining,
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InstanceState::Warm => "warm",
            InstanceState::Specializing => "specializing",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
        })
    }
}

/// One instance as the pool manager sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    /// The instance's id (its pod's name on Kubernetes).
    pub id: String,
    /// The environment it runs (`None` only when its function was deleted meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<FunctionId>,
    /// The function it is (being) specialized for; `None` while warm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionId>,
    pub state: InstanceState,
    /// The function generation its code is (`None` while warm or specializing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Requests it is serving now.
    pub in_flight: u32,
    /// Requests it may serve at once.
    pub capacity: u32,
    /// Requests it has served.
    pub served: u64,
    /// Where the platform reaches it (a pod's IP and port, or `sandbox:<port>:<socket>`).
    pub address: String,
}

/// Lists the instances a pool manager holds (in process, or over the executor's API).
#[async_trait]
pub trait InstanceLister: Send + Sync + 'static {
    /// Every instance, warm and specialized; the error says why the list is unavailable.
    async fn instances(&self) -> Result<Vec<InstanceInfo>, String>;
}
