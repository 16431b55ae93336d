//! Isolation, tried as a hostile function author would: a probe function attempts every escape
//! it knows (host files, the token and store, other functions' code and secrets, its own code,
//! the platform's listeners, other instances, its cgroup, privileges, a fork bomb, a daemon that
//! outlives the platform) and every attempt must fail while the neighbouring functions keep
//! answering. Run in the default sandbox mode with user-mode networking, and again with no
//! optional program on `PATH` (as on a fresh machine).

use std::time::Duration;

use kappa_test_support::eventually_blocking;
use serde_json::Value;

use crate::harness::{Platform, tail};

#[test]
fn a_hostile_function_escapes_nowhere() {
    hostile_function_escapes_nowhere(&[]);
}

/// A fresh machine: nothing optional installed. Only `/nonexistent` on `PATH`, so neither
/// slirp4netns nor anything else is found; the sandbox is built in and must not need them.
#[test]
fn a_hostile_function_escapes_nowhere_with_nothing_on_path() {
    hostile_function_escapes_nowhere(&[("PATH", "/nonexistent")]);
}

fn hostile_function_escapes_nowhere(env: &[(&str, &str)]) {
    let mut p = Platform::start_with_env(&["--no-example"], env);
    let log = p.log();
    assert!(log.contains("isolation sandboxed"), "{}", tail(&log, 30));
    p.python_env(&[]);
    isolation_status(&p, "sandboxed: own namespaces and user per instance");
    // Neighbours: a plain function, and one with a secret.
    p.deploy("hello", "examples/hello/hello.py", "/hello", &[]);
    p.ok(&[
        "secret",
        "create",
        "--name",
        "neighbour-db",
        "--from-literal",
        "password=hunter2",
    ]);
    p.deploy(
        "neighbour",
        "examples/hello/hello.py",
        "/neighbour",
        &["--secret", "neighbour-db"],
    );
    assert_eq!(p.get("/hello").status, 200);
    assert_eq!(p.get("/neighbour").status, 200);

    // Everything on the host the probe could want: every file of the platform's data
    // directory (token, client config, store, archives, instances' code and secrets).
    let mut paths = vec![
        p.data_dir.path().join("client.json").display().to_string(),
        p.data_dir.path().join("token").display().to_string(),
    ];
    for entry in walk(p.data_dir.path()) {
        if paths.len() >= 60 {
            break;
        }
        paths.push(entry);
    }
    assert!(
        paths.iter().any(|p| p.contains("/secrets/")),
        "the neighbour's secret file is among the targets: {paths:?}"
    );
    let ports = [p.router.port(), p.api.port(), p.admin.port()]
        .map(|port| port.to_string())
        .join(",");
    let marker = format!("{}", 100_000_000 + std::process::id() % 100_000_000);
    let query = format!(
        "/escape?ports={ports}&paths={}&daemon={marker}",
        paths.join(",")
    );

    p.deploy("escape", "testdata/probe/escape.py", "/escape", &[]);
    let response = p.get(&query);
    assert_eq!(response.status, 200, "{}", response.text());
    let report: Value = response.json();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());

    let denied = |v: &Value| v.as_str().is_some_and(|s| s.starts_with("denied"));
    for (path, outcome) in report["host_files"].as_object().unwrap() {
        assert!(denied(outcome), "read {path}: {outcome}");
    }
    for (target, outcome) in report["platform_ports"].as_object().unwrap() {
        assert!(denied(outcome), "connect {target}: {outcome}");
    }
    // Its own PID namespace, its own network namespace: only its own runtime listens.
    let pids = report["visible_processes"].as_array().unwrap();
    assert!(
        pids.iter().all(|pid| pid.as_u64().unwrap() < 1000),
        "host processes visible: {pids:?}"
    );
    assert_eq!(report["listening_ports"], serde_json::json!([8888]));
    for (port, outcome) in report["specialize_visible"].as_object().unwrap() {
        let outcome = outcome.as_str().unwrap_or_default();
        assert!(
            !outcome.contains(" 200 ") && !outcome.contains(" 201 "),
            "specialized the runtime on {port}: {outcome}"
        );
    }
    // Its code, including its own, cannot be changed.
    for (attempt, outcome) in report["own_code"].as_object().unwrap() {
        if attempt != "code_dir" {
            assert!(denied(outcome), "{attempt}: {outcome}");
        }
    }
    for (path, outcome) in report["cgroup"].as_object().unwrap() {
        if path != "own" {
            assert!(denied(outcome), "join {path}: {outcome}");
        }
    }
    let privileges = &report["privileges"];
    assert!(
        privileges["uid"].as_u64().unwrap() >= 1_000_000,
        "{privileges}"
    );
    for attempt in ["setuid0", "kill_init", "chmod_userfunc", "mount"] {
        assert!(denied(&privileges[attempt]), "{attempt}: {privileges}");
    }
    if !log.contains("cgroups=\"none\"") {
        let bomb = &report["fork_bomb"];
        assert!(
            bomb["started"].as_u64().unwrap() < 1100 && denied(&bomb["stopped_by"]),
            "the pids limit stops a fork bomb: {bomb}"
        );
    }
    assert_eq!(report["daemon"], "started");

    // The neighbours kept answering, and a new function still gets a working instance (the
    // pools were not spoiled).
    assert_eq!(p.get("/hello").status, 200);
    assert_eq!(p.get("/neighbour").status, 200);
    p.deploy("late", "examples/hello/hello.py", "/late", &[]);
    assert_eq!(p.get("/late").status, 200);

    // The daemon lives only as long as its instance: kill -9 the platform, and it is gone.
    assert!(
        !daemons(&marker).is_empty(),
        "the probe's daemon runs while its instance does"
    );
    p.kill9();
    eventually_blocking(
        Duration::from_secs(10),
        "the probe's daemon to die with the platform",
        || daemons(&marker).is_empty().then_some(()),
    );
    p.restart();
    assert_eq!(p.get("/hello").status, 200);
    assert!(daemons(&marker).is_empty());
}

/// Without the sandbox, which only an explicit `--sandbox none` gives, every start line and the
/// environment's status say so.
#[test]
fn unsandboxed_mode_says_so_everywhere() {
    let p = Platform::start_with(&["--no-example", "--sandbox", "none"]);
    let log = p.log();
    assert!(log.contains("isolation UNSANDBOXED"), "{}", tail(&log, 30));
    p.python_env(&[]);
    isolation_status(&p, "unsandboxed: functions run as the platform's user");
    p.deploy("hello", "examples/hello/hello.py", "/hello", &[]);
    assert_eq!(p.get("/hello").status, 200);
    let instance_log = p.ok(&["fn", "logs", "hello"]);
    assert!(instance_log.contains("UNSANDBOXED"), "{instance_log}");
}

/// Waits until `kappa env get python` reports an isolation starting with `expected`.
fn isolation_status(p: &Platform, expected: &str) {
    eventually_blocking(
        Duration::from_secs(10),
        "the environment's isolation status",
        || {
            let out = p.ok(&["env", "get", "python", "-o", "json"]);
            let env: Value = serde_json::from_str(&out).ok()?;
            env["status"]["isolation"]
                .as_str()
                .is_some_and(|s| s.starts_with(expected))
                .then_some(())
        },
    );
}

/// Processes whose command line carries `marker` (the probe's daemon: `sleep <marker>`).
fn daemons(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == marker.as_bytes()))
        })
        .collect()
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => out.push(path.display().to_string()),
                _ => {}
            }
        }
    }
    // Secrets and code first: the most valuable targets.
    out.sort_by_key(|p| !(p.contains("/secrets/") || p.contains("/userfunc/")));
    out
}
