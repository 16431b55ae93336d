//! What a sandbox contains: its mounts, user, command and environment.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One sandbox, as the platform asks the helper for it. Passed to the helper as JSON in an
/// environment variable the payload never sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// The host name inside.
    pub hostname: String,
    /// An empty host directory the sandbox's root file system is assembled on (a tmpfs mounted
    /// on it in the sandbox's own mount namespace; the host never sees it filled).
    pub root: PathBuf,
    /// Bind mounts, in order. Targets are absolute paths inside the sandbox.
    pub mounts: Vec<Mount>,
    /// Symbolic links inside: `(target, link)`.
    pub symlinks: Vec<(PathBuf, PathBuf)>,
    /// `cgroup.procs` files the monitor writes itself into before anything else, so every
    /// process of the sandbox is limited from its first instruction.
    pub cgroup_procs: Vec<PathBuf>,
    /// Where the monitor listens for connector requests; `None` for a sandbox nobody connects
    /// to (a build).
    pub connector: Option<PathBuf>,
    /// The user and group the payload runs as (the platform runs as root).
    pub user: Option<(u32, u32)>,
    /// The payload's command line (`argv[0]` is an absolute path inside the sandbox).
    pub argv: Vec<String>,
    /// The payload's whole environment.
    pub env: Vec<(String, String)>,
    /// The payload's working directory inside.
    pub cwd: PathBuf,
    /// Wait up to this many milliseconds for a default route (egress being set up from outside)
    /// before starting the payload.
    pub wait_for_route_ms: Option<u64>,
    /// The control socket of a template process (a zygote) the payload is forked from instead
    /// of being started by exec (see `docs/design/009-zygote.md`). The init asks the template
    /// after it assembled the sandbox; when the template cannot be reached or fails, the init
    /// says so on stderr and starts the payload by exec, in the same sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zygote: Option<PathBuf>,
    /// A spare sandbox (`docs/design/011-spare-sandboxes.md`): the init assembles everything,
    /// then waits on its stdin (a socket) for a claim carrying the payload's environment and
    /// the template connection before it starts anything (see [`crate::claim`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub claim: bool,
    /// Variables the template's waiter carries besides its stage (the platform's mark, so that
    /// the waiter of a sandbox is found after a crash like the sandbox's other processes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiter_env: Vec<(String, String)>,
}

/// A host path bound into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// The host path (a directory or a file).
    pub source: PathBuf,
    /// Where it appears inside.
    pub target: PathBuf,
    /// Read-write; otherwise read-only (and always `nosuid`, `nodev`).
    pub writable: bool,
}

impl Mount {
    /// A read-only bind of `source` at `target`.
    pub fn read_only(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            writable: false,
        }
    }

    /// A writable bind of `source` at `target`.
    pub fn writable(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self {
            source: source.into(),
            target: target.into(),
            writable: true,
        }
    }
}
