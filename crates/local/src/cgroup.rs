//! Memory, CPU and pids limits through cgroups v2 or v1.
//!
//! Instance groups always live beneath the platform's own cgroup, at
//! `<own cgroup>/kappa-<platform pid>/<instance id>` in each hierarchy: the platform never
//! creates groups elsewhere in a hierarchy it was merely placed in.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use kappa_core::{BackendError, Limits};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::CgroupMode;

/// The CFS period written with every CPU quota, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts, in microseconds.
const MIN_CPU_QUOTA_US: u64 = 1_000;
/// How often and how long removal retries `rmdir` while the group's last tasks exit.
const RMDIR_ATTEMPTS: u32 = 200;
const RMDIR_PAUSE: Duration = Duration::from_millis(10);

/// The cgroup hierarchy in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Per-controller hierarchies (`/sys/fs/cgroup/memory`, ...).
    V1,
    /// The unified hierarchy.
    V2,
}

impl fmt::Display for CgroupVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

/// One hierarchy's `kappa-<pid>` group beneath the platform's own cgroup.
#[derive(Debug, Clone)]
struct Base {
    /// `memory`, `cpu`, `pids` for v1; `unified` for v2.
    controller: &'static str,
    /// The platform's own cgroup directory in this hierarchy.
    own: PathBuf,
    /// `own/kappa-<pid>`.
    dir: PathBuf,
}

/// The cgroup setup chosen at backend start.
#[derive(Debug)]
pub(crate) struct Cgroups {
    version: Option<CgroupVersion>,
    bases: Vec<Base>,
    /// v2: the controllers enabled for instance groups.
    v2_controllers: Vec<&'static str>,
    /// Controllers whose failure was already reported: each is reported once, then skipped
    /// quietly. A plain mutex: it is held for one set operation, never across an await.
    warned: Mutex<HashSet<&'static str>>,
}

/// The groups of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct InstanceCgroup {
    /// One directory per v1 controller, or the one v2 directory.
    pub dirs: Vec<PathBuf>,
    /// The directory holding the memory controller's files, to read the OOM kill count.
    pub memory: Option<PathBuf>,
    /// Whether `memory` is a v2 group (`memory.events`) or v1 (`memory.oom_control`).
    pub memory_v2: bool,
}

impl Cgroups {
    /// A setup enforcing nothing.
    pub(crate) fn disabled() -> Self {
        Self {
            version: None,
            bases: Vec::new(),
            v2_controllers: Vec::new(),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// Chooses the hierarchy for `mode`, creating this run's `kappa-<pid>` groups. Explicit
    /// modes fail when unusable; `Auto` falls back to v1 and then to no limits with one warning.
    pub(crate) fn detect(mode: CgroupMode) -> Result<Self, BackendError> {
        if mode == CgroupMode::None {
            return Ok(Self::disabled());
        }
        let host = match Host::read() {
            Ok(host) => host,
            Err(e) => {
                let why = format!("cannot read /proc/self/cgroup or /proc/self/mountinfo: {e}");
                return match mode {
                    CgroupMode::Auto => {
                        tracing::warn!(reason = %why, "instance resource limits are not enforced");
                        Ok(Self::disabled())
                    }
                    _ => Err(BackendError::Start(format!("cgroups {mode}: {why}"))),
                };
            }
        };
        let pid = std::process::id();
        match mode {
            CgroupMode::V2 => host
                .v2(pid)
                .map_err(|why| BackendError::Start(format!("cgroups v2 is unusable: {why}"))),
            CgroupMode::V1 => host
                .v1(pid)
                .map_err(|why| BackendError::Start(format!("cgroups v1 is unusable: {why}"))),
            _ => match host.v2(pid) {
                Ok(cgroups) => Ok(cgroups),
                Err(why_v2) => match host.v1(pid) {
                    Ok(cgroups) => {
                        tracing::debug!(reason = %why_v2, "cgroups v2 unusable, using v1");
                        Ok(cgroups)
                    }
                    Err(why_v1) => {
                        tracing::warn!(
                            v2 = %why_v2,
                            v1 = %why_v1,
                            "instance resource limits (memory, cpu, pids) are not enforced: no usable cgroup hierarchy"
                        );
                        Ok(Self::disabled())
                    }
                },
            },
        }
    }

    /// The hierarchy in use, if any.
    pub(crate) fn version(&self) -> Option<CgroupVersion> {
        self.version
    }

    /// Creates the groups of instance `id` with `limits`. A controller that fails is reported
    /// once and skipped: the instance still runs.
    pub(crate) fn create(&self, id: &str, limits: &Limits) -> InstanceCgroup {
        match self.version {
            None => InstanceCgroup::default(),
            Some(CgroupVersion::V2) => self.create_v2(id, limits),
            Some(CgroupVersion::V1) => self.create_v1(id, limits),
        }
    }

    fn create_v2(&self, id: &str, limits: &Limits) -> InstanceCgroup {
        let Some(base) = self.bases.first() else {
            return InstanceCgroup::default();
        };
        // Another backend of this process may have removed the shared base on its shutdown.
        if !base.dir.is_dir() {
            if let Err(e) = std::fs::create_dir_all(&base.dir) {
                self.warn_once("unified", &base.dir, &e.to_string());
                return InstanceCgroup::default();
            }
            for controller in &self.v2_controllers {
                let _ = write(
                    &base.dir.join("cgroup.subtree_control"),
                    &format!("+{controller}"),
                );
            }
        }
        let dir = base.dir.join(id);
        if let Err(e) = make_fresh_dir(&dir) {
            self.warn_once("unified", &dir, &e.to_string());
            return InstanceCgroup::default();
        }
        let has = |c: &str| self.v2_controllers.contains(&c);
        let mut memory = None;
        if has("memory") {
            memory = Some(dir.clone());
            if let Some(bytes) = limits.memory_bytes {
                match write(&dir.join("memory.max"), &bytes.to_string()) {
                    Ok(()) => {
                        // No swap: the limit is the limit. Absent without swap accounting.
                        let _ = write(&dir.join("memory.swap.max"), "0");
                        // An OOM kill ends the whole instance, not one of its processes.
                        let _ = write(&dir.join("memory.oom.group"), "1");
                    }
                    Err(e) => self.warn_once("memory", &dir, &e.to_string()),
                }
            }
        }
        if has("cpu")
            && let Some(millis) = limits.cpu_millis
            && let Err(e) = write(
                &dir.join("cpu.max"),
                &format!("{} {CPU_PERIOD_US}", cpu_quota_us(millis)),
            )
        {
            self.warn_once("cpu", &dir, &e.to_string());
        }
        if has("pids")
            && let Some(pids) = limits.pids
            && let Err(e) = write(&dir.join("pids.max"), &pids.to_string())
        {
            self.warn_once("pids", &dir, &e.to_string());
        }
        InstanceCgroup {
            dirs: vec![dir],
            memory,
            memory_v2: true,
        }
    }

    fn create_v1(&self, id: &str, limits: &Limits) -> InstanceCgroup {
        let mut out = InstanceCgroup::default();
        for base in &self.bases {
            let dir = base.dir.join(id);
            let result =
                make_fresh_dir(&dir).and_then(|()| apply_v1(base.controller, &dir, limits));
            match result {
                Ok(()) => {
                    if base.controller == "memory" {
                        out.memory = Some(dir.clone());
                    }
                    out.dirs.push(dir);
                }
                Err(e) => {
                    self.warn_once(base.controller, &dir, &e.to_string());
                    let _ = std::fs::remove_dir(&dir);
                }
            }
        }
        out
    }

    fn warn_once(&self, controller: &'static str, dir: &Path, error: &str) {
        let first = self
            .warned
            .lock()
            .map(|mut w| w.insert(controller))
            .unwrap_or(false);
        if first {
            tracing::warn!(
                controller,
                dir = %dir.display(),
                error,
                "cgroup controller unusable for instances; its limits are not enforced"
            );
        }
    }

    /// Removes `kappa-<pid>` groups left by earlier platform runs whose process is gone,
    /// killing their tasks first.
    pub(crate) async fn clean_stale(&self) {
        let me = std::process::id();
        for base in &self.bases {
            let Ok(entries) = std::fs::read_dir(&base.own) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("kappa-"))
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if pid == me || Path::new("/proc").join(pid.to_string()).exists() {
                    continue;
                }
                let dir = entry.path();
                tracing::info!(dir = %dir.display(), "removing cgroup of an earlier platform run");
                if let Err(e) = remove_tree(&dir).await {
                    tracing::warn!(dir = %dir.display(), error = %e, "could not remove stale cgroup");
                }
            }
        }
    }

    /// Removes this run's `kappa-<pid>` groups (they stay while another backend of this process
    /// still has instances in them).
    pub(crate) fn remove_bases(&self) {
        for base in &self.bases {
            match std::fs::remove_dir(&base.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::debug!(dir = %base.dir.display(), error = %e, "cgroup base kept")
                }
            }
        }
    }
}

impl InstanceCgroup {
    /// The `cgroup.procs` files the instance's first process writes itself into.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// How many times the kernel's OOM killer struck in the instance's memory group.
    pub(crate) fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory else {
            return 0;
        };
        let file = if self.memory_v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let Ok(text) = std::fs::read_to_string(dir.join(file)) else {
            return 0;
        };
        text.lines()
            .filter_map(|line| line.split_once(' '))
            .filter(|(key, _)| *key == "oom_kill" || *key == "oom_group_kill")
            .filter_map(|(_, n)| n.trim().parse::<u64>().ok())
            .max()
            .unwrap_or(0)
    }

    /// Kills any process left in the groups and removes them.
    pub(crate) async fn remove(&self) {
        for dir in &self.dirs {
            if let Err(e) = remove_tree(dir).await {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove instance cgroup");
            }
        }
    }
}

/// Kills every task in `dir` and its sub-groups and removes them, deepest first, retrying
/// `rmdir` briefly while the killed tasks exit.
pub(crate) async fn remove_tree(dir: &Path) -> io::Result<()> {
    let mut dirs = Vec::new();
    collect_dirs(dir, &mut dirs);
    // Children were pushed after their parent: remove in reverse.
    for dir in dirs.iter().rev() {
        let mut attempt = 0;
        loop {
            kill_tasks(dir);
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if attempt + 1 >= RMDIR_ATTEMPTS => return Err(e),
                Err(_) => {
                    attempt += 1;
                    tokio::time::sleep(RMDIR_PAUSE).await;
                }
            }
        }
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !dir.is_dir() {
        return;
    }
    out.push(dir.to_path_buf());
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&entry.path(), out);
            }
        }
    }
}

/// Sends SIGKILL to every task of one group (`cgroup.kill` on v2 kernels that have it).
fn kill_tasks(dir: &Path) {
    let _ = write(&dir.join("cgroup.kill"), "1");
    for pid in tasks(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// The processes in one group.
pub(crate) fn tasks(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn apply_v1(controller: &str, dir: &Path, limits: &Limits) -> io::Result<()> {
    match controller {
        "memory" => {
            if let Some(bytes) = limits.memory_bytes {
                write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // memory+swap must be at least the memory limit: written second.
                let memsw = dir.join("memory.memsw.limit_in_bytes");
                if memsw.exists() {
                    write(&memsw, &bytes.to_string())?;
                }
                let _ = write(&dir.join("memory.swappiness"), "0");
            }
        }
        "cpu" => {
            if let Some(millis) = limits.cpu_millis {
                write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(
                    &dir.join("cpu.cfs_quota_us"),
                    &cpu_quota_us(millis).to_string(),
                )?;
            }
        }
        "pids" => {
            if let Some(pids) = limits.pids {
                write(&dir.join("pids.max"), &pids.to_string())?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// The CFS quota for `millis` thousandths of a CPU per 100 ms period.
fn cpu_quota_us(millis: u64) -> u64 {
    millis
        .saturating_mul(CPU_PERIOD_US / 1000)
        .max(MIN_CPU_QUOTA_US)
}

/// Creates `dir`, first removing a leftover group of the same name.
fn make_fresh_dir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            kill_tasks(dir);
            std::fs::remove_dir(dir)?;
            std::fs::create_dir(dir)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(dir),
        other => other,
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

/// One cgroup mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mount {
    /// The cgroup path shown at the mount's root.
    root: String,
    point: PathBuf,
    v2: bool,
    /// v1: the controllers of the hierarchy (from the super options).
    controllers: Vec<String>,
}

/// What the host's `/proc/self/{cgroup,mountinfo}` say.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    mounts: Vec<Mount>,
    /// v1: (controllers, own path); v2: (empty, own path).
    own: Vec<(Vec<String>, String)>,
}

impl Host {
    fn read() -> io::Result<Self> {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup")?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        Ok(Self::parse(&cgroup, &mountinfo))
    }

    fn parse(cgroup: &str, mountinfo: &str) -> Self {
        let own = cgroup
            .lines()
            .filter_map(|line| {
                let mut parts = line.splitn(3, ':');
                let _id = parts.next()?;
                let controllers = parts.next()?;
                let path = parts.next()?;
                let controllers = controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_owned)
                    .collect();
                Some((controllers, path.to_owned()))
            })
            .collect();
        let mounts = mountinfo.lines().filter_map(parse_mount).collect();
        Self { mounts, own }
    }

    /// The platform's own directory in a hierarchy whose own-path entry matches `pick`.
    fn own_dir(&self, mount: &Mount, own_path: &str) -> Option<PathBuf> {
        let rel = if mount.root == "/" {
            own_path
        } else {
            let rest = own_path.strip_prefix(mount.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest
        };
        let dir = mount.point.join(rel.trim_start_matches('/'));
        dir.is_dir().then_some(dir)
    }

    fn v2(&self, pid: u32) -> Result<Cgroups, String> {
        let own_path = self
            .own
            .iter()
            .find(|(controllers, _)| controllers.is_empty())
            .map(|(_, path)| path.as_str())
            .ok_or("the process is in no unified (v2) cgroup")?;
        let mut mounts: Vec<&Mount> = self.mounts.iter().filter(|m| m.v2).collect();
        mounts.sort_by_key(|m| match m.point.to_str() {
            Some("/sys/fs/cgroup") => 0,
            Some("/sys/fs/cgroup/unified") => 1,
            _ => 2,
        });
        let mount = mounts.first().ok_or("no cgroup2 file system is mounted")?;
        let own = self.own_dir(mount, own_path).ok_or_else(|| {
            format!(
                "own cgroup {own_path} is not visible under {}",
                mount.point.display()
            )
        })?;
        let available = std::fs::read_to_string(own.join("cgroup.controllers"))
            .map_err(|e| format!("cannot read {}/cgroup.controllers: {e}", own.display()))?;
        let available: Vec<&str> = available.split_whitespace().collect();
        if !available.contains(&"memory") {
            return Err(format!(
                "the memory controller is not available in {} (available: {})",
                own.display(),
                if available.is_empty() {
                    "none".to_owned()
                } else {
                    available.join(" ")
                }
            ));
        }
        let wanted: Vec<&'static str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| available.contains(c))
            .collect();
        let subtree = own.join("cgroup.subtree_control");
        let enabled = std::fs::read_to_string(&subtree).unwrap_or_default();
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        let mut controllers = Vec::new();
        for controller in wanted {
            if enabled.contains(&controller) || write(&subtree, &format!("+{controller}")).is_ok() {
                controllers.push(controller);
            } else if controller == "memory" {
                return Err(format!(
                    "cannot enable the memory controller in {} (a non-root cgroup that holds \
                     processes cannot delegate controllers; run the platform in a delegated cgroup)",
                    subtree.display()
                ));
            }
        }
        let base = own.join(format!("kappa-{pid}"));
        std::fs::create_dir_all(&base)
            .map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        let base_subtree = base.join("cgroup.subtree_control");
        let mut usable = Vec::new();
        for controller in controllers {
            if write(&base_subtree, &format!("+{controller}")).is_ok() {
                usable.push(controller);
            } else if controller == "memory" {
                let _ = std::fs::remove_dir(&base);
                return Err(format!(
                    "cannot enable the memory controller in {}",
                    base_subtree.display()
                ));
            }
        }
        Ok(Cgroups {
            version: Some(CgroupVersion::V2),
            bases: vec![Base {
                controller: "unified",
                own,
                dir: base,
            }],
            v2_controllers: usable,
            warned: Mutex::new(HashSet::new()),
        })
    }

    fn v1(&self, pid: u32) -> Result<Cgroups, String> {
        let mut bases = Vec::new();
        let mut missing = Vec::new();
        for controller in ["memory", "cpu", "pids"] {
            let found = self
                .own
                .iter()
                .find(|(cs, _)| cs.iter().any(|c| c == controller))
                .and_then(|(_, path)| {
                    self.mounts
                        .iter()
                        .filter(|m| !m.v2 && m.controllers.iter().any(|c| c == controller))
                        .find_map(|m| self.own_dir(m, path))
                });
            let Some(own) = found else {
                missing.push(format!("{controller}: not mounted"));
                continue;
            };
            let dir = own.join(format!("kappa-{pid}"));
            match std::fs::create_dir_all(&dir) {
                Ok(()) => bases.push(Base {
                    controller,
                    own,
                    dir,
                }),
                Err(e) => missing.push(format!(
                    "{controller}: cannot create {}: {e}",
                    dir.display()
                )),
            }
        }
        if !bases.iter().any(|b| b.controller == "memory") {
            for base in &bases {
                let _ = std::fs::remove_dir(&base.dir);
            }
            return Err(format!(
                "no usable v1 memory controller ({})",
                missing.join("; ")
            ));
        }
        for why in &missing {
            tracing::warn!(reason = %why, "cgroups v1 controller unusable; its limits are not enforced");
        }
        Ok(Cgroups {
            version: Some(CgroupVersion::V1),
            bases,
            v2_controllers: Vec::new(),
            warned: Mutex::new(HashSet::new()),
        })
    }
}

/// Parses one `/proc/self/mountinfo` line into a cgroup mount.
fn parse_mount(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let left: Vec<&str> = left.split(' ').collect();
    let right: Vec<&str> = right.split(' ').collect();
    let fstype = *right.first()?;
    let v2 = match fstype {
        "cgroup2" => true,
        "cgroup" => false,
        _ => return None,
    };
    let root = unescape(left.get(3)?);
    let point = PathBuf::from(unescape(left.get(4)?));
    let controllers = if v2 {
        Vec::new()
    } else {
        right.get(2)?.split(',').map(str::to_owned).collect()
    };
    Some(Mount {
        root,
        point,
        v2,
        controllers,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal {
            Some(d) => {
                let code = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                out.push(u8::try_from(code).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CGROUP: &str =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n2:cpuacct:/\n1:cpu:/\n0::/\n";
    const MOUNTINFO: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n\
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
50 31 0:40 /x /mnt/my\\040dir rw - cgroup cgroup rw,cpu,cpuacct\n";

    #[test]
    fn parses_cgroup_and_mountinfo() {
        let host = Host::parse(CGROUP, MOUNTINFO);
        assert_eq!(host.mounts.len(), 5);
        assert!(host.mounts[3].v2);
        assert_eq!(host.mounts[4].point, PathBuf::from("/mnt/my dir"));
        assert_eq!(host.mounts[4].root, "/x");
        assert_eq!(host.mounts[4].controllers, vec!["rw", "cpu", "cpuacct"]);
        assert!(
            host.own
                .contains(&(vec!["memory".to_owned()], "/process_api/abc".to_owned()))
        );
        assert!(host.own.contains(&(vec![], "/".to_owned())));
    }

    #[test]
    fn own_dir_strips_the_mount_root() {
        let host = Host::parse(CGROUP, MOUNTINFO);
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        let mount = Mount {
            root: "/x".into(),
            point: tmp.path().to_path_buf(),
            v2: false,
            controllers: vec![],
        };
        assert_eq!(host.own_dir(&mount, "/x/a/b"), Some(tmp.path().join("a/b")));
        assert_eq!(host.own_dir(&mount, "/x"), Some(tmp.path().to_path_buf()));
        assert_eq!(host.own_dir(&mount, "/xy/a"), None);
        assert_eq!(host.own_dir(&mount, "/other"), None);
    }

    #[test]
    fn cpu_quota_is_millis_per_period() {
        assert_eq!(cpu_quota_us(500), 50_000);
        assert_eq!(cpu_quota_us(2000), 200_000);
        assert_eq!(cpu_quota_us(1), MIN_CPU_QUOTA_US);
    }

    #[test]
    fn oom_kill_counts_are_read_from_v1_and_v2_files() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("memory.events"),
            "low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\n",
        )
        .unwrap();
        let v1 = InstanceCgroup {
            dirs: vec![],
            memory: Some(tmp.path().to_path_buf()),
            memory_v2: false,
        };
        assert_eq!(v1.oom_kills(), 2);
        let v2 = InstanceCgroup {
            memory_v2: true,
            ..v1
        };
        assert_eq!(v2.oom_kills(), 0);
        assert_eq!(InstanceCgroup::default().oom_kills(), 0);
    }
}
