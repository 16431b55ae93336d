//! The executor API's wire format: every message the pool manager's HTTP API
//! (`kappa_executor::http`, the server) and its clients (`kappa_router::remote`, the API
//! server's readers in `kappa server`) exchange, declared once, so that a change to one side
//! that the other does not follow fails to compile instead of failing on the wire.
//!
//! - `POST` [`PROVISION_PATH`]: [`ProvisionRequest`] → [`ProvisionResponse`], or a
//!   [`ProvisionErrorBody`] carrying the [`ProvisionError`] variant as [`ProvisionErrorWire`].
//! - `GET` [`ENDPOINTS_PATH`]: [`EndpointList`]; with `?watch=true`, NDJSON lines of
//!   [`FeedEvent`].
//! - `POST` [`USAGE_PATH`]: [`UsageReport`].
//! - `POST` [`STATS_PATH`]: [`StatsReport`]; `GET` [`STATS_PATH`]: a [`StatsSnapshot`].
//! - `GET` [`INSTANCES_PATH`]: [`InstanceList`].
//!
//! It lives here, beside the [`Provisioner`](crate::Provisioner) seam it carries, so the router
//! does not depend on the pool manager's server code to speak to it.

use std::time::Duration;

use kappa_types::ErrorDetail;
use serde::{Deserialize, Serialize};

use crate::{
    Endpoint, FunctionId, FunctionOutcome, InstanceInfo, Provision, ProvisionError, StatsSnapshot,
};

/// Runs [`Provisioner::provision`](crate::Provisioner::provision).
pub const PROVISION_PATH: &str = "/v1/provision";
/// The endpoint list, and with `?watch=true` the endpoint feed.
pub const ENDPOINTS_PATH: &str = "/v1/endpoints";
/// A router replica's in-flight requests and outcomes.
pub const USAGE_PATH: &str = "/v1/usage";
/// A router replica's request history (`POST`), and their sum (`GET`).
pub const STATS_PATH: &str = "/v1/stats";
/// The pool manager's instances.
pub const INSTANCES_PATH: &str = "/v1/instances";

/// `POST /v1/provision` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionRequest {
    pub namespace: String,
    pub name: String,
    pub generation: i64,
}

/// `POST /v1/provision` success body: `result` is `added` or `at_capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisionResponse {
    pub result: String,
}

impl ProvisionResponse {
    const ADDED: &str = "added";
    const AT_CAPACITY: &str = "at_capacity";

    /// The answer that carries `provision`.
    pub fn new(provision: Provision) -> Self {
        Self {
            result: match provision {
                Provision::Added => Self::ADDED,
                Provision::AtCapacity => Self::AT_CAPACITY,
            }
            .into(),
        }
    }

    /// The [`Provision`] this answer carries; `None` for a result this side does not know.
    pub fn provision(&self) -> Option<Provision> {
        match self.result.as_str() {
            Self::ADDED => Some(Provision::Added),
            Self::AT_CAPACITY => Some(Provision::AtCapacity),
            _ => None,
        }
    }
}

/// A failed `POST /v1/provision`: the platform's error body plus the [`ProvisionError`]
/// variant, so the router reports the same cause it would in-process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionErrorBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provision_error: Option<ProvisionErrorWire>,
}

/// A [`ProvisionError`] on the wire (the `provisionError` member of an error body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum ProvisionErrorWire {
    FunctionNotFound {
        namespace: String,
        name: String,
    },
    EnvironmentNotFound {
        environment: String,
    },
    Package {
        name: String,
        reason: String,
    },
    Specialize {
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    Start {
        message: String,
    },
    Timeout {
        seconds: u64,
    },
    Unavailable {
        message: String,
    },
}

impl From<&ProvisionError> for ProvisionErrorWire {
    fn from(e: &ProvisionError) -> Self {
        match e.clone() {
            ProvisionError::FunctionNotFound(id) => Self::FunctionNotFound {
                namespace: id.namespace,
                name: id.name,
            },
            ProvisionError::EnvironmentNotFound(environment) => {
                Self::EnvironmentNotFound { environment }
            }
            ProvisionError::Package { name, reason } => Self::Package { name, reason },
            ProvisionError::Specialize { message, detail } => Self::Specialize { message, detail },
            ProvisionError::Start(message) => Self::Start { message },
            ProvisionError::Timeout(d) => Self::Timeout {
                seconds: d.as_secs(),
            },
            ProvisionError::Unavailable(message) => Self::Unavailable { message },
        }
    }
}

impl From<ProvisionErrorWire> for ProvisionError {
    fn from(w: ProvisionErrorWire) -> Self {
        match w {
            ProvisionErrorWire::FunctionNotFound { namespace, name } => {
                Self::FunctionNotFound(FunctionId::new(namespace, name))
            }
            ProvisionErrorWire::EnvironmentNotFound { environment } => {
                Self::EnvironmentNotFound(environment)
            }
            ProvisionErrorWire::Package { name, reason } => Self::Package { name, reason },
            ProvisionErrorWire::Specialize { message, detail } => {
                Self::Specialize { message, detail }
            }
            ProvisionErrorWire::Start { message } => Self::Start(message),
            ProvisionErrorWire::Timeout { seconds } => Self::Timeout(Duration::from_secs(seconds)),
            ProvisionErrorWire::Unavailable { message } => Self::Unavailable(message),
        }
    }
}

/// One event of the endpoint feed (one NDJSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum FeedEvent {
    /// A specialized instance is ready to serve `capacity` requests at once.
    Added {
        namespace: String,
        function: String,
        instance_id: String,
        address: String,
        generation: i64,
        capacity: u32,
    },
    /// The instance admits nothing new (its in-flight requests finish).
    Draining {
        namespace: String,
        function: String,
        instance_id: String,
    },
    /// The instance is gone; `exit` says why when it ended on its own.
    Removed {
        namespace: String,
        function: String,
        instance_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit: Option<String>,
    },
    /// Every current endpoint has been sent; what follows are changes.
    Synced,
    /// Nothing happened for a while; the stream is alive.
    Heartbeat,
}

impl FeedEvent {
    /// `e`, an endpoint of `function`, is ready.
    pub fn added(function: &FunctionId, e: &Endpoint) -> Self {
        Self::Added {
            namespace: function.namespace.clone(),
            function: function.name.clone(),
            instance_id: e.instance_id.clone(),
            address: e.addr.to_string(),
            generation: e.generation,
            capacity: e.capacity,
        }
    }

    /// `e`, an endpoint of `function`, drains.
    pub fn draining(function: &FunctionId, e: &Endpoint) -> Self {
        Self::Draining {
            namespace: function.namespace.clone(),
            function: function.name.clone(),
            instance_id: e.instance_id.clone(),
        }
    }

    /// `e`, an endpoint of `function`, is gone (with its exit reason when it has one).
    pub fn removed(function: &FunctionId, e: &Endpoint) -> Self {
        Self::Removed {
            namespace: function.namespace.clone(),
            function: function.name.clone(),
            instance_id: e.instance_id.clone(),
            exit: e.exit_reason().map(str::to_string),
        }
    }

    /// The event as one NDJSON line (with its `\n`).
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// `GET /v1/endpoints` (without `watch`): one `added` event per current endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointList {
    pub items: Vec<FeedEvent>,
}

/// `POST /v1/usage` body: one router replica's view of its in-flight requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    /// A stable name of the replica (its pod name).
    pub replica: String,
    pub instances: Vec<InstanceUsage>,
    /// The replica's request outcomes per function since it started (canaries sum them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub functions: Vec<FunctionOutcome>,
}

/// One instance in a [`UsageReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceUsage {
    pub instance_id: String,
    /// Requests the replica has in flight on it now.
    pub in_flight: u32,
    /// Requests the replica finished on it since its previous report.
    pub served: u64,
}

/// `POST /v1/stats` body: one router replica's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatsReport {
    /// A stable name of the replica (its pod name).
    pub replica: String,
    pub snapshot: StatsSnapshot,
}

/// `GET /v1/instances` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceList {
    pub items: Vec<InstanceInfo>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn every_error_variant_round_trips() {
        let errors = [
            ProvisionError::FunctionNotFound(FunctionId::new("a", "b")),
            ProvisionError::EnvironmentNotFound("a/py".into()),
            ProvisionError::Package {
                name: "a/p".into(),
                reason: "gone".into(),
            },
            ProvisionError::Specialize {
                message: "m".into(),
                detail: None,
            },
            ProvisionError::Start("s".into()),
            ProvisionError::Timeout(Duration::from_secs(7)),
            ProvisionError::Unavailable("u".into()),
        ];
        for e in errors {
            let json = serde_json::to_string(&ProvisionErrorWire::from(&e)).unwrap();
            let back: ProvisionErrorWire = serde_json::from_str(&json).unwrap();
            assert_eq!(ProvisionError::from(back), e, "{json}");
        }
    }

    #[test]
    fn provision_results_round_trip() {
        for p in [Provision::Added, Provision::AtCapacity] {
            let json = serde_json::to_string(&ProvisionResponse::new(p)).unwrap();
            let back: ProvisionResponse = serde_json::from_str(&json).unwrap();
            assert_eq!(back.provision(), Some(p), "{json}");
        }
        let unknown = ProvisionResponse {
            result: "maybe".into(),
        };
        assert_eq!(unknown.provision(), None);
    }
}
