//! The local backend's configuration.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::runtime::RuntimeRegistry;

/// Default time an instance is given to answer `/healthz` after it was started.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Spare sandboxes kept per environment by default.
pub const DEFAULT_SPARES: usize = 1;

/// How the local backend configures itself.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Instances live under `data_dir/instances/<id>/`; the state file is `data_dir/instances.json`.
    pub data_dir: PathBuf,
    /// Maps an environment's image or command to a command line.
    pub runtimes: RuntimeRegistry,
    /// Whether instances and builds run in the built-in sandbox.
    pub sandbox: SandboxMode,
    /// The executable run as the sandbox helper: the platform's own (`kappa`), whose `main`
    /// calls `kappa_sandbox::run_if_requested` first. Required unless `sandbox` is `None`.
    pub helper: Option<PathBuf>,
    /// Whether sandboxes get egress.
    pub egress: EgressMode,
    /// Which cgroup hierarchy enforces the instances' limits.
    pub cgroups: CgroupMode,
    /// How long an instance may take to answer `/healthz` after it was started.
    pub start_timeout: Duration,
    /// Whether sandboxed instances are forked from a template process per environment.
    pub zygote: ZygoteMode,
    /// Spare sandboxes kept per environment whose instances are forked from its template,
    /// assembled ahead of time so that a start only claims one
    /// (`docs/design/011-spare-sandboxes.md`); 0 assembles every sandbox on its start.
    pub spares: usize,
}

impl LocalConfig {
    /// A configuration with automatic sandbox and cgroup detection and the default start timeout.
    pub fn new(data_dir: impl Into<PathBuf>, runtimes: RuntimeRegistry) -> Self {
        Self {
            data_dir: data_dir.into(),
            runtimes,
            sandbox: SandboxMode::Namespaces,
            helper: None,
            egress: EgressMode::Auto,
            cgroups: CgroupMode::Auto,
            start_timeout: DEFAULT_START_TIMEOUT,
            zygote: ZygoteMode::On,
            spares: DEFAULT_SPARES,
        }
    }
}

/// Whether instances and builds run in Kappa's built-in sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// The built-in sandbox (`kappa_sandbox`): own mount, network, pid, ipc, uts and cgroup
    /// namespaces and an unprivileged user per instance. Starting fails when it cannot be
    /// made: isolation never fails open.
    #[default]
    Namespaces,
    /// Plain child processes of the platform, as its own user, with nothing between functions
    /// and the host: every start line and `kappa env get` say "unsandboxed". Only ever chosen
    /// explicitly.
    None,
}

/// Whether sandboxed instances and builds can reach addresses outside the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EgressMode {
    /// Through user-mode networking (`slirp4netns`) when it is installed; without it, no egress,
    /// said once at start.
    #[default]
    Auto,
    /// Never: every sandbox has a loopback interface only.
    Off,
}

/// Which cgroup hierarchy enforces memory, CPU and pids limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CgroupMode {
    /// cgroups v2 if usable, else v1, else none (with one warning saying why).
    #[default]
    Auto,
    /// cgroups v2 is required.
    V2,
    /// cgroups v1 is required.
    V1,
    /// No limits are enforced.
    None,
}

/// Whether sandboxed instances are forked from a template process (a zygote) per environment
/// instead of starting their runtime by exec (`docs/design/009-zygote.md`). Either way every
/// instance gets the same sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ZygoteMode {
    /// A template per environment whose runtime has one (Python); instances of other
    /// environments start by exec, said once each.
    #[default]
    On,
    /// Every instance starts its runtime by exec.
    Off,
}

impl FromStr for ZygoteMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(ParseModeError {
                what: "zygote",
                value: s.to_owned(),
                expected: "on, off",
            }),
        }
    }
}

impl fmt::Display for ZygoteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

/// A mode name that is not one of the accepted values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} mode {value:?} (expected one of: {expected})")]
pub struct ParseModeError {
    what: &'static str,
    value: String,
    expected: &'static str,
}

impl FromStr for SandboxMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "namespaces" => Ok(Self::Namespaces),
            "none" => Ok(Self::None),
            _ => Err(ParseModeError {
                what: "sandbox",
                value: s.to_owned(),
                expected: "namespaces, none",
            }),
        }
    }
}

impl FromStr for EgressMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "off" | "none" => Ok(Self::Off),
            _ => Err(ParseModeError {
                what: "egress",
                value: s.to_owned(),
                expected: "auto, off",
            }),
        }
    }
}

impl fmt::Display for EgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Off => "off",
        })
    }
}

impl FromStr for CgroupMode {
    type Err = ParseModeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "v2" | "2" => Ok(Self::V2),
            "v1" | "1" => Ok(Self::V1),
            "none" | "off" => Ok(Self::None),
            _ => Err(ParseModeError {
                what: "cgroup",
                value: s.to_owned(),
                expected: "auto, v2, v1, none",
            }),
        }
    }
}

impl fmt::Display for SandboxMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Namespaces => "namespaces",
            Self::None => "none",
        })
    }
}

impl fmt::Display for CgroupMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::V2 => "v2",
            Self::V1 => "v1",
            Self::None => "none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for mode in [SandboxMode::Namespaces, SandboxMode::None] {
            assert_eq!(mode.to_string().parse::<SandboxMode>(), Ok(mode));
        }
        for mode in [
            CgroupMode::Auto,
            CgroupMode::V2,
            CgroupMode::V1,
            CgroupMode::None,
        ] {
            assert_eq!(mode.to_string().parse::<CgroupMode>(), Ok(mode));
        }
        for mode in [ZygoteMode::On, ZygoteMode::Off] {
            assert_eq!(mode.to_string().parse::<ZygoteMode>(), Ok(mode));
        }
        for mode in [EgressMode::Auto, EgressMode::Off] {
            assert_eq!(mode.to_string().parse::<EgressMode>(), Ok(mode));
        }
        // bubblewrap is gone: the sandbox is built in, and the old names say so by failing.
        let err = "bwrap".parse::<SandboxMode>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown sandbox mode \"bwrap\" (expected one of: namespaces, none)"
        );
    }
}
