//! The instance backend: how runtime instances are created, specialized and deleted.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::addr::InstanceAddr;
use crate::id::FunctionId;

/// Resource limits for one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

/// What to start: a generic instance of an environment's runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    /// Unique instance id chosen by the pool manager.
    pub id: String,
    /// The environment (namespace, name) the instance belongs to.
    pub environment: FunctionId,
    /// The environment's generation, so instances of an old environment spec can be rolled.
    pub env_generation: i64,
    /// Runtime image, or locally a built-in runtime name such as `python`.
    pub image: String,
    /// Locally: an explicit command that starts a runtime server on `$PORT`.
    pub command: Option<String>,
    pub limits: Limits,
    /// Time an instance is given to stop before it is killed.
    pub grace: Duration,
    /// Requests the runtime should be ready to serve at once.
    pub concurrency: u32,
    /// Environment variables set at start.
    pub env: BTreeMap<String, String>,
    /// Labels recorded with the instance (for adoption after a restart).
    pub labels: BTreeMap<String, String>,
    /// Whether the instance may open connections to addresses outside the machine (the
    /// environment's `egress`); a backend that cannot provide it says so at start.
    pub egress: bool,
    /// Ports of the host's loopback the instance may reach at the same port of its own
    /// loopback (the environment's `hostPorts`). A backend that cannot provide them refuses
    /// the instance.
    pub host_ports: Vec<u16>,
    /// Whether the instance is forked from its environment's template process (the
    /// environment's `zygote`); `None` leaves it to the backend's own setting. Local backend.
    pub zygote: Option<bool>,
}

/// A running instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    /// Where its runtime server is reached.
    pub addr: InstanceAddr,
    pub labels: BTreeMap<String, String>,
}

/// Which kind of resource a [`ConfigVolume`] comes from; it decides where the files appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConfigKind {
    /// A Secret: files at `/secrets/<namespace>/<name>/<key>`, mode `0400`.
    Secret,
    /// A ConfigMap: files at `/configs/<namespace>/<name>/<key>`, mode `0440`.
    ConfigMap,
}

impl ConfigKind {
    /// The directory the volumes of this kind are placed under (`secrets` or `configs`), both
    /// in the instance's own directory and, sandboxed, at the root of the instance's view.
    pub fn dir_name(self) -> &'static str {
        match self {
            ConfigKind::Secret => "secrets",
            ConfigKind::ConfigMap => "configs",
        }
    }

    /// The mode of the files placed for this kind.
    pub fn file_mode(self) -> u32 {
        match self {
            ConfigKind::Secret => 0o400,
            ConfigKind::ConfigMap => 0o440,
        }
    }
}

impl fmt::Display for ConfigKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConfigKind::Secret => "secret",
            ConfigKind::ConfigMap => "configmap",
        })
    }
}

/// The decoded key/values of one Secret or ConfigMap a function references, placed as files
/// for the instance (one file per key).
///
/// Its `Debug` output shows keys and sizes only, never values, so a request logged with `?`
/// cannot leak a secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigVolume {
    pub kind: ConfigKind,
    pub namespace: String,
    pub name: String,
    /// Key (a file name, checked by the API) to value.
    pub entries: BTreeMap<String, Vec<u8>>,
}

impl fmt::Debug for ConfigVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: BTreeMap<&str, usize> = self
            .entries
            .iter()
            .map(|(k, v)| (k.as_str(), v.len()))
            .collect();
        f.debug_struct("ConfigVolume")
            .field("kind", &self.kind)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("entry_sizes", &sizes)
            .finish()
    }
}

/// Load a function's code into a generic instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecializeRequest {
    pub function: FunctionId,
    pub generation: i64,
    /// The deployment archive (zip or single file) in the platform's archive store.
    pub archive_sha256: String,
    /// For a single-file archive, the file name to place it under.
    pub filename: Option<String>,
    /// The entrypoint, interpreted by the runtime.
    pub entrypoint: String,
    /// Environment variables applied before the code is loaded.
    pub env: BTreeMap<String, String>,
    /// The Secrets and ConfigMaps the function references, placed as read-only files before
    /// the code is loaded (`/secrets/<namespace>/<name>/<key>`, `/configs/...`).
    pub files: Vec<ConfigVolume>,
    pub timeout: Duration,
    /// Whether the function may open connections to addresses outside the machine; `false`
    /// takes an instance's egress away before the code is loaded.
    pub egress: bool,
    /// The host ports the function may reach (its `hostPorts`, else its environment's); they
    /// replace the instance's before the code is loaded.
    pub host_ports: Vec<u16>,
}

/// Why an instance process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitReason {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it (its cgroup's memory limit was exceeded).
    pub oom_killed: bool,
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.signal, self.code) {
            (Some(sig), _) if self.oom_killed => {
                write!(f, "exited with signal {sig} (out of memory)")
            }
            (Some(sig), _) => write!(f, "exited with signal {sig}"),
            (None, Some(code)) if self.oom_killed => {
                write!(f, "exited with code {code} (out of memory)")
            }
            (None, Some(code)) => write!(f, "exited with code {code}"),
            (None, None) => f.write_str("exited"),
        }
    }
}

/// Something that happened to an instance outside the pool manager's control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceEvent {
    /// The instance's process ended.
    Exited { id: String, reason: ExitReason },
}

/// Why a backend operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The instance could not be started or never became healthy.
    #[error("instance failed to start: {0}")]
    Start(String),
    /// The runtime refused or failed the specialization.
    #[error("{message}")]
    Specialize {
        status: Option<u16>,
        message: String,
        detail: Option<String>,
    },
    /// The code could not be placed (archive missing, corrupt or unsafe).
    #[error("code could not be placed: {0}")]
    Code(String),
    #[error("instance {0} not found")]
    NotFound(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("backend io: {0}")]
    Io(String),
}

/// Creates, specializes and deletes runtime instances: local processes or Kubernetes pods.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs (`local`, `kubernetes`).
    fn name(&self) -> &'static str;

    /// How instances are isolated, as users should read it in an Environment's
    /// `status.isolation` (for example "unsandboxed"); `None` when there is nothing to say.
    fn isolation(&self) -> Option<String> {
        None
    }

    /// Starts a generic instance and returns once its runtime answers `/healthz`.
    async fn create(&self, spec: InstanceSpec) -> Result<Instance, BackendError>;

    /// Places the code and calls the runtime's `POST /v2/specialize`.
    async fn specialize(
        &self,
        instance: &Instance,
        request: &SpecializeRequest,
    ) -> Result<(), BackendError>;

    /// Prepares a generic instance for a quick specialization while it waits in a warm pool:
    /// the local backend opens its connections to the runtime (for `/v2/specialize` and for
    /// the first request, see [`Backend::take_connection`]) here, off the request path. Best
    /// effort: a failure only means the later calls connect as usual. Default: nothing.
    async fn prepare(&self, _instance: &Instance) {}

    /// After a successful [`Backend::specialize`]: a connection to the instance opened in
    /// advance by [`Backend::prepare`], for the router's first request (handed over through
    /// [`crate::Endpoint::offer_connection`]). Default: none.
    fn take_connection(&self, _id: &str) -> Option<std::net::TcpStream> {
        None
    }

    /// Stops an instance: terminate, wait up to `grace`, then kill; frees its resources.
    async fn delete(&self, id: &str, grace: Duration) -> Result<(), BackendError>;

    /// Instances this backend knows of (including ones found after a restart).
    async fn list(&self) -> Result<Vec<Instance>, BackendError>;

    /// Exit events of instances.
    fn subscribe(&self) -> broadcast::Receiver<InstanceEvent>;

    /// Deletes every instance and releases backend resources (called on platform shutdown).
    async fn shutdown(&self, grace: Duration);

    /// The environment `env` was deleted: releases what the backend keeps per environment
    /// (the local backend's template process). Its instances are deleted separately.
    async fn environment_removed(&self, env: &FunctionId) {
        let _ = env;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_volumes_never_debug_print_values() {
        let volume = ConfigVolume {
            kind: ConfigKind::Secret,
            namespace: "default".into(),
            name: "db".into(),
            entries: BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]),
        };
        let text = format!("{volume:?}");
        assert!(text.contains("password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(ConfigKind::Secret.dir_name(), "secrets");
        assert_eq!(ConfigKind::ConfigMap.dir_name(), "configs");
    }

    #[test]
    fn exit_reasons_read_well() {
        let oom = ExitReason {
            code: None,
            signal: Some(9),
            oom_killed: true,
        };
        assert_eq!(oom.to_string(), "exited with signal 9 (out of memory)");
        let code = ExitReason {
            code: Some(3),
            signal: None,
            oom_killed: false,
        };
        assert_eq!(code.to_string(), "exited with code 3");
    }
}
