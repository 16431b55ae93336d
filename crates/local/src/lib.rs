//! Kappa's local instance backend: [`LocalBackend`] implements [`kappa_core::Backend`] with one
//! child process per runtime instance — an environment's runtime server in the built-in sandbox
//! (`kappa_sandbox`: its own mount, network, pid, ipc, uts and cgroup namespaces, an
//! unprivileged user of its own, a read-only system, the code at `/userfunc` unchangeable by
//! it, a writable `/work`, egress through user-mode networking when installed), reached only
//! through the sandbox's connector; with memory, CPU and pids limits through cgroups v2 or v1
//! when the host allows it, and output captured into the instance's log. Without the sandbox
//! (`--sandbox none`, explicit only) instances are plain processes on a free loopback port.
//!
//! It owns the instances' processes, directories (`data_dir/instances/<id>/`), cgroups and
//! state file (`data_dir/instances.json`), and guarantees that none of them outlive the
//! platform: instances die with it (even on `kill -9`), and a new backend on the same data
//! directory ends whatever a crashed run left behind.
//!
//! It deliberately knows nothing about pools, scaling, functions or routing (the executor
//! decides when instances are created, specialized and deleted), and it does not fetch or
//! extract archives (the archive store hands it extracted code).

mod backend;
mod build;
mod cgroup;
mod config;
mod hostports;
mod http;
mod procs;
mod runtime;
mod sandbox;
mod spare;
mod state;
mod zygote;

pub use backend::{InstanceInfo, LocalBackend};
pub use build::{
    BuildOutcome, BuildOutput, BuildSandbox, BuildSpec, DEFAULT_BUILD_LOG_BYTES,
    DEFAULT_BUILD_TIMEOUT, SANDBOX_BUILD_DIR,
};
pub use cgroup::CgroupVersion;
pub use config::{
    CgroupMode, DEFAULT_SPARES, DEFAULT_START_TIMEOUT, EgressMode, LocalConfig, ParseModeError,
    SandboxMode, ZygoteMode,
};
pub use runtime::{BuiltInRuntime, ResolvedRuntime, RuntimeRegistry};
pub use spare::SpareStats;
