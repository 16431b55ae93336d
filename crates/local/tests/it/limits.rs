//! Memory, CPU and pids limits through cgroups.

use std::time::Duration;

use kappa_core::{Backend, Limits};
use kappa_local::CgroupVersion;

use crate::support::{Harness, exit_of, get, is_root, probe_fixtures, python_testdata, skip};

/// A harness with usable cgroups, or `None` after saying why the test is skipped.
async fn harness(test: &str) -> Option<Harness> {
    if !is_root() {
        skip(test, "cgroups need root here (not running as root)");
        return None;
    }
    let h = Harness::new(test).await;
    if h.backend.cgroup_version().is_none() {
        skip(
            test,
            "no usable cgroup hierarchy on this host (see the warning above)",
        );
        return None;
    }
    Some(h)
}

#[tokio::test]
async fn memory_hog_is_oom_killed() {
    const TEST: &str = "memory_hog_is_oom_killed";
    let Some(h) = harness(TEST).await else { return };
    let mut events = h.backend.subscribe();
    let limits = Limits {
        memory_bytes: Some(64 << 20),
        ..Limits::default()
    };
    let instance = h.create("oom", limits).await;
    let info = h.backend.info(&instance.id).expect("info");
    if !info
        .cgroups
        .iter()
        .any(|d| d.join("memory.max").exists() || d.join("memory.limit_in_bytes").exists())
    {
        return skip(
            TEST,
            "the memory controller could not be used for the instance",
        );
    }
    h.specialize_dir(&instance, &python_testdata(), "memhog.main")
        .await;
    let result = get(&instance.addr, "/?mb=256").await;
    assert!(
        !matches!(&result, Ok((200, _))),
        "allocating 256 MiB under a 64 MiB limit succeeded: {result:?}"
    );
    let reason = exit_of(&mut events, &instance.id).await;
    eprintln!("memory hog: {reason}");
    assert_eq!(reason.signal, Some(9), "{reason:?}");
    assert!(reason.oom_killed, "{reason:?}");
    for dir in &info.cgroups {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn pids_limit_stops_a_process_storm() {
    const TEST: &str = "pids_limit_stops_a_process_storm";
    let Some(h) = harness(TEST).await else { return };
    let limits = Limits {
        pids: Some(24),
        ..Limits::default()
    };
    let instance = h.create("pids", limits).await;
    let info = h.backend.info(&instance.id).expect("info");
    if !info.cgroups.iter().any(|d| d.join("pids.max").exists()) {
        return skip(
            TEST,
            "the pids controller could not be used for the instance",
        );
    }
    h.specialize_dir(&instance, &probe_fixtures(), "forkbomb.main")
        .await;
    let (status, body) = get(&instance.addr, "/").await.expect("forkbomb answers");
    assert_eq!(status, 200, "{body}");
    eprintln!("forkbomb: {body}");
    let result: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let started = result["started"].as_u64().expect("started");
    assert!(
        started < 24,
        "started {started} processes under a limit of 24"
    );
    assert!(
        result["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{result}"
    );
    // The instance survives its own storm.
    assert_eq!(
        get(&instance.addr, "/healthz").await.expect("healthz").0,
        200
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn limits_are_written_and_groups_removed_after_delete() {
    const TEST: &str = "limits_are_written_and_groups_removed_after_delete";
    let Some(h) = harness(TEST).await else { return };
    let limits = Limits {
        memory_bytes: Some(128 << 20),
        cpu_millis: Some(500),
        pids: Some(50),
    };
    let instance = h.create("cg", limits).await;
    let info = h.backend.info(&instance.id).expect("info");
    assert!(!info.cgroups.is_empty());
    let own_pid = std::process::id();
    for dir in &info.cgroups {
        // Beneath this process's own group, in this run's kappa-<pid> group.
        assert!(
            dir.ends_with(format!("kappa-{own_pid}/{}", instance.id)),
            "{}",
            dir.display()
        );
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("cgroup.procs");
        assert!(
            procs.lines().any(|l| l.trim() == info.pid.to_string()),
            "pid {} not in {}: {procs}",
            info.pid,
            dir.display()
        );
    }
    let read = |file: &str| {
        info.cgroups
            .iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .map(|p| {
                std::fs::read_to_string(p)
                    .expect("read limit")
                    .trim()
                    .to_owned()
            })
    };
    match h.backend.cgroup_version() {
        Some(CgroupVersion::V1) => {
            assert_eq!(read("memory.limit_in_bytes").as_deref(), Some("134217728"));
            if let Some(quota) = read("cpu.cfs_quota_us") {
                assert_eq!(quota, "50000");
            }
        }
        Some(CgroupVersion::V2) => {
            assert_eq!(read("memory.max").as_deref(), Some("134217728"));
            if let Some(cpu) = read("cpu.max") {
                assert_eq!(cpu, "50000 100000");
            }
        }
        None => unreachable!("checked by harness"),
    }
    if let Some(pids) = read("pids.max") {
        assert_eq!(pids, "50");
    }
    h.backend
        .delete(&instance.id, Duration::from_secs(2))
        .await
        .expect("delete");
    for dir in &info.cgroups {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    h.backend.shutdown(Duration::from_secs(1)).await;
}
