//! Spare sandboxes (`docs/design/011-spare-sandboxes.md`): assembled ahead of time, claimed by
//! a matching start, isolated like any other, dropped with their environment and at shutdown.

use std::path::PathBuf;
use std::time::Duration;

use kappa_core::{Backend, FunctionId, Limits};
use kappa_local::{CgroupMode, LocalBackend, SandboxMode, SpareStats};
use tokio::time::Instant;

use crate::support::{Harness, alive, get, is_root, probe_fixtures, processes_of, spec};

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

/// The host cgroup directories of a process that are a spare's (`.../.spare-<run>-<n>`).
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

/// A line of `/proc/<pid>/status` (`Uid:`, `NoNewPrivs:`, ...), without its key.
fn status_line(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_owned()))
        .unwrap_or_default()
}

fn ns(pid: &str, kind: &str) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).expect("namespace link")
}

fn parent_of(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .unwrap_or_default()
}

/// The waiter and payload a spare's template forked ahead (design note 012): the waiter is
/// found by the spare's mark (`KAPPA_INSTANCE_ID=.spare-<run>-<n>`, what recovery after a crash
/// looks for), the payload is its only child.
fn preforked(name: &str) -> (i32, i32) {
    let waiter = processes_of(name)
        .into_iter()
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "kappa-waiter")
        })
        .unwrap_or_else(|| panic!("no pre-forked waiter marked {name}"));
    let payload = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| parent_of(*pid) == waiter && alive(*pid))
        .unwrap_or_else(|| panic!("the waiter {waiter} has no payload"));
    (waiter, payload)
}

/// Checks that the pre-forked payload `payload` and its waiter `waiter` are isolated as an
/// instance's are, before any claim: the payload in the spare's PID, network and mount
/// namespaces as an unprivileged user without groups and with `no_new_privs`, both in the
/// spare's cgroups, the waiter root outside the PID namespace.
fn assert_preforked_isolated(
    h: &Harness,
    monitor: u32,
    waiter: i32,
    payload: i32,
    cgroups: &[PathBuf],
) {
    let uids = status_line(payload, "Uid:");
    let ids: Vec<&str> = uids.split_whitespace().collect();
    assert_eq!(ids.len(), 4, "{uids}");
    assert!(ids.iter().all(|id| *id == ids[0] && *id != "0"), "{uids}");
    let gids = status_line(payload, "Gid:");
    assert!(gids.split_whitespace().all(|id| id != "0"), "{gids}");
    assert_eq!(status_line(payload, "Groups:"), "");
    assert_eq!(status_line(payload, "NoNewPrivs:"), "1");
    assert_eq!(status_line(payload, "CapEff:"), "0000000000000000");
    // Its PID namespace is the spare's (the monitor's children's), not the host's.
    let nspid = status_line(payload, "NSpid:");
    assert_eq!(nspid.split_whitespace().count(), 2, "{nspid}");
    let payload = payload.to_string();
    let monitor = monitor.to_string();
    assert_eq!(ns(&payload, "pid"), ns(&monitor, "pid_for_children"));
    assert_ne!(ns(&payload, "pid"), ns("self", "pid"));
    for kind in ["net", "uts", "ipc", "cgroup"] {
        assert_eq!(ns(&payload, kind), ns(&monitor, kind), "{kind}");
        assert_ne!(ns(&payload, kind), ns("self", kind), "{kind}");
    }
    assert_ne!(ns(&payload, "mnt"), ns("self", "mnt"));
    // The waiter: root, outside the PID namespace, in the spare's network namespace.
    assert_eq!(
        status_line(waiter, "Uid:").split_whitespace().next(),
        Some("0")
    );
    assert_eq!(ns(&waiter.to_string(), "pid"), ns("self", "pid"));
    assert_eq!(ns(&waiter.to_string(), "net"), ns(&monitor, "net"));
    if h.backend.cgroup_version().is_some() {
        let mut payload_cgroups = spare_cgroups(payload.parse().expect("a pid"));
        let mut waiter_cgroups = spare_cgroups(u32::try_from(waiter).expect("a pid"));
        let mut expected = cgroups.to_vec();
        payload_cgroups.sort();
        waiter_cgroups.sort();
        expected.sort();
        assert_eq!(
            payload_cgroups, expected,
            "the payload is in the spare's cgroups"
        );
        assert_eq!(
            waiter_cgroups, expected,
            "the waiter is in the spare's cgroups"
        );
    }
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
    // Its payload is forked ahead, isolated, before anything of a function exists.
    let names = spare_dirs(&h);
    assert_eq!(names.len(), 1, "{names:?}");
    let (waiter, payload) = preforked(&names[0]);
    assert_preforked_isolated(&h, spare_pids[0], waiter, payload, &cgroups_before);
    let inner_pid: u64 = status_line(payload, "NSpid:")
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("pid inside");

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
    // The instance runs in the payload forked ahead, under the same waiter.
    assert_eq!(probe["pid"], inner_pid);
    assert!(alive(payload) && alive(waiter));
    assert_eq!(parent_of(payload), waiter);
    assert_eq!(status_line(payload, "NoNewPrivs:"), "1");
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
    let (old_waiter, old_payload) = preforked(&spare_dirs(&h)[0]);

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
    while alive(i32::try_from(old).unwrap())
        || alive(old_waiter)
        || alive(old_payload)
        || old_cgroups.iter().any(|d| d.exists())
    {
        assert!(Instant::now() < deadline, "the old spare is gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Removed with its environment.
    let new_cgroups = spare_cgroups(new);
    let (new_waiter, new_payload) = preforked(&spare_dirs(&h)[0]);
    h.backend
        .environment_removed(&FunctionId::new("default", "python"))
        .await;
    wait_spares(&h.backend, "no spare", |s| s.ready == 0).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(i32::try_from(new).unwrap())
        || alive(new_waiter)
        || alive(new_payload)
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
    let (last_waiter, last_payload) = preforked(&spare_dirs(&h)[0]);
    h.backend.shutdown(Duration::from_secs(1)).await;
    assert!(!alive(i32::try_from(last).unwrap()));
    assert!(last_cgroups.iter().all(|d| !d.exists()), "{last_cgroups:?}");
    // SIGKILLed with the cgroups' tasks; their end is asynchronous.
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(last_waiter) || alive(last_payload) {
        let stat = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/stat"));
        assert!(
            Instant::now() < deadline,
            "the spare's waiter and payload end: {:?} {:?}",
            stat(last_waiter),
            stat(last_payload)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// A template that ends while a spare's payload forked from it waits takes the spare with it:
/// the next start does not claim it, starts from a new template, and the old spare's
/// processes and cgroups go.
#[tokio::test]
async fn a_spare_goes_with_the_template_its_payload_was_forked_from() {
    const TEST: &str = "a_spare_goes_with_the_template_its_payload_was_forked_from";
    assert!(is_root(), "{TEST}: the sandbox needs root");
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::Auto).await;
    h.create("first", Limits::default()).await;
    wait_spares(&h.backend, "a spare", |s| s.ready == 1).await;
    let monitor = h.backend.spare_pids()[0];
    let cgroups = spare_cgroups(monitor);
    let (waiter, payload) = preforked(&spare_dirs(&h)[0]);
    let template = parent_of(waiter);
    assert!(
        std::fs::read_to_string(format!("/proc/{template}/cmdline"))
            .is_ok_and(|c| c.contains("--zygote")),
        "the waiter is the template's child"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(template),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(template) {
        assert!(Instant::now() < deadline, "the template ends");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let second = h.create("second", Limits::default()).await;
    let info = h.backend.info(&second.id).unwrap();
    assert_ne!(info.pid, monitor, "the old template's spare is not claimed");
    let stats = h.backend.spare_stats();
    assert_eq!(stats.claimed, 0, "{stats:?}");
    assert!(stats.discarded >= 1, "{stats:?}");
    // Started from the new template, isolated as ever.
    h.specialize_dir(&second, &probe_fixtures(), "probe.main")
        .await;
    let (status, body) = get(&second.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200, "{body}");
    let probe: serde_json::Value = serde_json::from_str(&body).expect("probe JSON");
    assert_eq!(probe["uid"], info.user.expect("a user").0);
    assert_eq!(probe["env_instance"], second.id.as_str());
    let deadline = Instant::now() + Duration::from_secs(30);
    while alive(i32::try_from(monitor).unwrap())
        || alive(waiter)
        || alive(payload)
        || cgroups.iter().any(|d| d.exists())
    {
        assert!(Instant::now() < deadline, "the old spare is gone");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A replacement, forked from the new template.
    wait_spares(&h.backend, "a replacement", |s| s.ready == 1).await;
    let (new_waiter, _) = preforked(&spare_dirs(&h)[0]);
    assert_ne!(parent_of(new_waiter), template);
    h.backend.shutdown(Duration::from_secs(1)).await;
    assert!(spare_dirs(&h).is_empty(), "{:?}", spare_dirs(&h));
}

/// What recovery after a crash relies on: every process of a waiting spare, the waiter forked
/// ahead included, carries the spare's mark, and its directory is under `instances/`; a new
/// backend on the same data directory (the old one's processes still running, as after a
/// crash that did not take them) kills them all and removes the directory.
#[tokio::test]
async fn recovery_finds_and_ends_a_spare_and_its_pre_forked_waiter() {
    const TEST: &str = "recovery_finds_and_ends_a_spare_and_its_pre_forked_waiter";
    assert!(is_root(), "{TEST}: the sandbox needs root");
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::Auto).await;
    h.create("first", Limits::default()).await;
    wait_spares(&h.backend, "a spare", |s| s.ready == 1).await;
    let name = spare_dirs(&h)[0].clone();
    let monitor = i32::try_from(h.backend.spare_pids()[0]).unwrap();
    let (waiter, payload) = preforked(&name);
    let marked = processes_of(&name);
    assert!(
        marked.contains(&monitor) && marked.contains(&waiter),
        "{marked:?}"
    );

    let mut config = kappa_local::LocalConfig::new(
        h.data_dir(),
        kappa_local::RuntimeRegistry::new(crate::support::runtimes_dir()),
    );
    config.helper = Some(crate::support::helper());
    let again = LocalBackend::new(config, h.archives.clone(), h.logs.clone())
        .await
        .expect("a second backend starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(monitor) || alive(waiter) || alive(payload) {
        assert!(Instant::now() < deadline, "recovery ends the spare");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(processes_of(&name).is_empty());
    assert!(!h.data_dir().join("instances").join(&name).exists());
    again.shutdown(Duration::from_secs(1)).await;
    h.backend.shutdown(Duration::from_secs(1)).await;
}
