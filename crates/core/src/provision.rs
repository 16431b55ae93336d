//! What the router asks the pool manager on a miss.

use std::time::Duration;

use async_trait::async_trait;

use crate::id::FunctionId;

/// The outcome of a successful [`Provisioner::provision`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provision {
    /// Capacity was added (or is being added) to the index: retry admission.
    Added,
    /// The function is at its instance cap: wait in its queue for a slot to free.
    AtCapacity,
}

/// Why capacity could not be provided. Every variant's message states the real cause, because
/// it reaches the caller's error body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    /// No such function (deleted, or never created).
    #[error("function {0} not found")]
    FunctionNotFound(FunctionId),
    /// The function's environment does not exist.
    #[error("environment {0} not found")]
    EnvironmentNotFound(String),
    /// The function's package does not exist or has no deployment archive.
    #[error("package {name} is not usable: {reason}")]
    Package { name: String, reason: String },
    /// The runtime refused the code (import error, missing entrypoint...).
    #[error("specialization failed: {message}")]
    Specialize {
        message: String,
        /// Longer detail, such as a traceback.
        detail: Option<String>,
    },
    /// A new instance could not be started.
    #[error("instance failed to start: {0}")]
    Start(String),
    /// Specialization did not finish in time.
    #[error("specialization timed out after {} s", .0.as_secs())]
    Timeout(Duration),
    /// The platform is shutting down or the backend is unavailable.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

/// Provides capacity for functions: the pool manager, in-process or over HTTP.
#[async_trait]
pub trait Provisioner: Send + Sync + 'static {
    /// Called when a request for `function` (at `generation`) found no free slot. Returns
    /// once new capacity is in the index, or at once with [`Provision::AtCapacity`] when the
    /// function may not grow; never blocks for longer than the function's specialization timeout.
    async fn provision(
        &self,
        function: &FunctionId,
        generation: i64,
    ) -> Result<Provision, ProvisionError>;
}
