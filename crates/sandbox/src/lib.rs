//! Kappa's built-in sandbox for function instances and builds, and the connector that reaches a
//! runtime inside it.
//!
//! A sandbox is started by running the platform's own executable with a [`SandboxSpec`] (see
//! [`helper::command`]); the executable's `main` hands control to [`helper::run_if_requested`]
//! before anything else. Two small processes of ours then stand between the platform and the
//! payload (a runtime server or a build command):
//!
//! - the **monitor**, a child of the platform: joins the instance's cgroups, binds the
//!   connector's Unix socket (in a directory only the platform can open), enters new mount,
//!   network, IPC, UTS and cgroup namespaces and a new PID namespace for its children, brings
//!   the loopback interface up, serves the connector and exits with the payload's status. It
//!   dies with the platform (`PR_SET_PDEATHSIG`).
//! - the **init**, PID 1 of the new PID namespace: builds the root file system from read-only
//!   binds of the host's system directories and the instance's own directories, pivots into
//!   it, then runs the payload as an unprivileged user with `no_new_privs`, reaps orphans, and
//!   exits with the payload's status. When it exits, for whatever reason, the kernel kills every
//!   process left in the namespace: nothing a function starts outlives its instance.
//!
//! A payload forked from a template process instead (`zygote`, design note 009) has a third:
//! the template's **waiter**, which becomes this helper's `wait` stage once the payload exists
//! and only reports how it ended.
//!
//! [`connector`] is the one home of the protocol that reaches a sandboxed runtime: the platform
//! asks the monitor over the Unix socket, and the monitor answers with a TCP socket connected to
//! the runtime inside the namespace (`SCM_RIGHTS`), which the platform then uses like any
//! other, so the request path has no relay.
//!
//! This crate deliberately knows nothing of instances, pools, cgroup limits or egress: the
//! local backend (`kappa-local`) decides what a sandbox contains and owns its lifetime.

pub mod claim;
pub mod connector;
pub mod helper;
mod netlink;
mod spec;
mod zygote;

pub use helper::{STAGE_VAR, run_if_requested};
pub use spec::{Mount, SandboxSpec};
