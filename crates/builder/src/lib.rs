//! Kappa's package builder: turns source packages into deployment archives.
//!
//! [`Builder`] watches the store for Packages with a `source` archive and
//! `status.buildstatus: pending`, and builds each one (one build per package at a time, a bounded
//! number at once): status `running`, the source extracted safely by the archive store and copied
//! into `src/` of a fresh writable build root, the build command run by a [`BuildRunner`]
//! (locally [`kappa_local::BuildSandbox`]: the same built-in sandbox and cgroup limits as
//! instances, with the network, killed at the build timeout) with Fission's layout (`$SRC_PKG`
//! the source directory and working directory, `$DEPLOY_PKG` the root's `deploy`, absent until
//! the build creates it), what the build left at `$DEPLOY_PKG` (else, for builds that install
//! in place, `$SRC_PKG`) zipped into the content-addressed archive store, and the package
//! written back with `spec.deployment` and status `succeeded` and the build log, or status
//! `failed` and the log.
//!
//! The build command is the package's `spec.buildcmd`, else the environment's
//! `spec.builder.command`, else the runtime's default ([`command::default_command`]): Python
//! installs `requirements.txt` with pip into the package, Node.js runs `npm install` when
//! `package.json` exists; with no command there is nothing to build and the source is the
//! deployment. Builds are de-duplicated: the same source, command and environment reuse the
//! earlier deployment archive ([`index::BuildIndex`]). A package a crashed platform left
//! `running` goes back to `pending` when the builder starts.
//!
//! Where archives are and where commands run are interfaces: [`BuildArchives`] is the archive
//! store itself next to the API server, or [`ApiArchives`] (through the API, with a local
//! download cache) in a cluster; [`BuildRunner`] is the sandbox locally, or builder pods in a
//! cluster (`kappa_kube::builds`), which store their result themselves through the API with
//! the [`steps`] a builder pod runs around the command.
//!
//! It deliberately does not serve HTTP, validate specs (the API server does), run instances or
//! decide when functions use the result (the pool manager waits for builds itself).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod archives;
mod builder;
pub mod command;
mod error;
pub mod index;
pub mod steps;
mod workdir;

pub use archives::{ApiArchives, ArchiveAccessError, BuildArchives};
pub use builder::{
    BuildJob, BuildRun, BuildRunner, Builder, BuilderConfig, DEFAULT_MAX_LOG_BYTES,
    DEFAULT_PARALLELISM, RunResult,
};
pub use command::{BUILD_MANIFESTS, manifest_in_dir, manifest_in_zip};
pub use error::BuildError;
pub use kappa_local::{BuildOutcome, BuildOutput, BuildSpec, RuntimeRegistry};
pub use steps::StoredResult;
