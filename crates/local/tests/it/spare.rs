//! Spare sandboxes (`docs/design/011-spare-sandboxes.md`): assembled ahead of time, claimed by
//! a matching start, isolated like any other, dropped with their environment and at shutdown.

use std::path::PathBuf;
use std::time::Duration;

use kappa_core::{Backend, FunctionId, Limits};
use kappa_local::{CgroupMode, LocalBackend, SandboxMode, SpareStats};
use tokio::time::Instant;

use crate::support::{Harness, alive, get, is_root, probe_fixtures, spec};

/// Waits (generously) until the backend's spares satisfy `done`.
async fn wait_spares(backend: &LocalBackend, what: &str, done: impl Fn(&SpareStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = backend.spare_stats();
        if done(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The host cgroup directories of a process that are a spare's (`.../.spare-<n>`).
fn spare_cgroups(pid: u32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            if !path.contains(".spare-") {
                return None;
            }
            let path = path.trim_start_matches('/');
            Some(if controllers.is_empty() {
                PathBuf::from("/sys/fs/cgroup").join(path)
            } else {
                let controller = controllers.split(',').next().unwrap_or(controllers);
                PathBuf::from("/sys/fs/cgroup").join(controller).join(path)
            })
        })
        .filter(|dir| dir.is_dir())
        .collect()
}

fn spare_dirs(h: &Harness) -> Vec<String> {
    std::fs::read_dir(h.data_dir().join("instances"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .filter(|n| n.starts_with(".spare-"))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_start_claims_a_spare_sandbox_which_isolates_like_any_other() {
    const TEST: &str = "a_start_claims_a_spare_sandbox_which_isolates_like_any_other";
    assert!(is_root(), "{TEST}: the sandbox needs root");
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::Auto).await;
    let limits = Limits {
        memory_bytes: Some(256 << 20),
        cpu_millis: None,
        pids: Some(256),
    };
    // The first start assembles its own sandbox; a spare is assembled after it.
    let first = h.create("first", limits).await;
    wait_spares(&h.backend, "a spare", |s| s.ready == 1).await;
    let spare_pids = h.backend.spare_pids();
    assert_eq!(spare_pids.len(), 1);
    let cgroups_before = spare_cgroups(spare_pids[0]);
    if h.backend.cgroup_version().is_some() {
        assert!(
            !cgroups_before.is_empty(),
            "the spare's monitor is in its cgroups"
        );
    }

    // The next start of the same environment takes it: its monitor existed before the start.
    let second = h.create("second", limits).await;
    let info = h.backend.info(&second.id).expect("info");
    assert_eq!(info.pid, spare_pids[0], "the start claimed the spare");
    assert_eq!(h.backend.spare_stats().claimed, 1);
    assert_eq!(info.dir, h.data_dir().join("instances").join(&second.id));
    let mut cgroups = info.cgroups.clone();
    cgroups.sort();
    let mut before = cgroups_before.clone();
    before.sort();
    assert_eq!(cgroups, before, "the spare's cgroups are the instance's");

    // Isolated like any other instance: its own user, PID namespace, root, variables.
    h.specialize_dir(&second, &probe_fixtures(), "probe.main")
        .await;
    let (status, body) = get(&second.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200, "{body}");
    let probe: serde_json::Value = serde_json::from_str(&body).expect("probe JSON");
    let (uid, gid) = info.user.expect("a user of its own");
    assert_eq!(probe["uid"], uid);
    assert_eq!(probe["gid"], gid);
    assert_ne!(h.backend.info(&first.id).unwrap().user, info.user);
    assert!(
        probe["pid"].as_u64().is_some_and(|p| p < 10),
        "{}",
        probe["pid"]
    );
    assert_eq!(probe["env_instance"], second.id.as_str());
    assert_eq!(probe["list_root"], "error: No such file or directory");
    assert_eq!(probe["cwd"], "/work");
    assert_eq!(probe["hostname"], "kappa");
    assert!(info.dir.join("work/scratch.txt").exists());
    // Every process of the instance is in its cgroups (the payload forked from the template
    // included).
    for dir in &info.cgroups {
        let tasks = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(tasks.lines().count() >= 3, "{}: {tasks}", dir.display());
    }

    // A new spare replaces the claimed one.
    wait_spares(&h.backend, "a new spare", |s| {
        s.ready == 1 && s.assembled == 2
    })
    .await;
    let next = h.backend.spare_pids()[0];
    h.backend.shutdown(Duration::from_secs(1)).await;
    assert!(spare_dirs(&h).is_empty(), "{:?}", spare_dirs(&h));
    assert!(!alive(i32::try_from(next).unwrap()));
}

#[tokio::test]
async fn spares_go_with_their_environment_and_at_shutdown() {
    const TEST: &str = "spares_go_with_their_environment_and_at_shutdown";
    assert!(is_root(), "{TEST}: the sandbox needs root");
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::Auto).await;
    let first = spec("first", Limits::default());
    h.backend.create(first.clone()).await.expect("starts");
    wait_spares(&h.backend, "a spare", |s| s.ready == 1).await;
    let old = h.backend.spare_pids()[0];
    let old_cgroups = spare_cgroups(old);

    // An updated environment (a new generation) does not take the old spare; it is replaced.
    let mut updated = spec("updated", Limits::default());
    updated.env_generation = 2;
    let instance = h.backend.create(updated.clone()).await.expect("starts");
    assert_ne!(h.backend.info(&instance.id).unwrap().pid, old);
    assert_eq!(h.backend.spare_stats().claimed, 0);
    wait_spares(&h.backend, "the old spare dropped, a new one", |s| {
        s.ready == 1 && s.discarded >= 1
    })
    .await;
    let new = h.backend.spare_pids()[0];
    assert_ne!(new, old);
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(i32::try_from(old).unwrap()) || old_cgroups.iter().any(|d| d.exists()) {
        assert!(Instant::now() < deadline, "the old spare is gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Removed with its environment.
    let new_cgroups = spare_cgroups(new);
    h.backend
        .environment_removed(&FunctionId::new("default", "python"))
        .await;
    wait_spares(&h.backend, "no spare", |s| s.ready == 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(i32::try_from(new).unwrap())
        || new_cgroups.iter().any(|d| d.exists())
        || !spare_dirs(&h).is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the removed environment's spare is gone"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // At shutdown: a spare assembled (or being assembled) leaves no cgroup or directory.
    let mut again = spec("again", Limits::default());
    again.env_generation = 2;
    h.backend.create(again).await.expect("starts");
    wait_spares(&h.backend, "a spare", |s| s.ready == 1).await;
    let last = h.backend.spare_pids()[0];
    let last_cgroups = spare_cgroups(last);
    h.backend.shutdown(Duration::from_secs(1)).await;
    assert!(!alive(i32::try_from(last).unwrap()));
    assert!(last_cgroups.iter().all(|d| !d.exists()), "{last_cgroups:?}");
    assert!(spare_dirs(&h).is_empty(), "{:?}", spare_dirs(&h));
    assert_eq!(h.backend.spare_stats().ready, 0);
}

/// Without cgroups too: a spare whose sandbox died is dropped and replaced, never handed out.
#[tokio::test]
async fn a_dead_spare_is_replaced_not_handed_out() {
    const TEST: &str = "a_dead_spare_is_replaced_not_handed_out";
    assert!(is_root(), "{TEST}: the sandbox needs root");
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::None).await;
    h.create("first", Limits::default()).await;
    wait_spares(&h.backend, "a spare", |s| s.ready == 1).await;
    let dead = h.backend.spare_pids()[0];
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(dead).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Give the kernel a moment to end the process (the backend checks when it takes one).
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{dead}/stat"))
        .is_ok_and(|s| !s.contains(") Z") && !s.contains(") X"))
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = h.create("second", Limits::default()).await;
    let info = h.backend.info(&second.id).unwrap();
    assert_ne!(info.pid, dead, "a dead spare is never handed out");
    let stats = h.backend.spare_stats();
    assert_eq!(stats.claimed, 0, "{stats:?}");
    assert!(stats.discarded >= 1, "{stats:?}");
    let (status, _) = get(&second.addr, "/healthz").await.expect("answers");
    assert_eq!(status, 200);
    wait_spares(&h.backend, "a replacement", |s| s.ready == 1).await;
    assert_ne!(h.backend.spare_pids()[0], dead);
    h.backend.shutdown(Duration::from_secs(1)).await;
}
