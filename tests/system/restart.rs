//! Crash safety: `kill -9` of `kappa up` keeps every resource and leaves no orphan process.

use std::time::Duration;

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, function_path};

/// Every process below `pid` (children, grandchildren...).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents = std::collections::HashMap::<u32, Vec<u32>>::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u32>().ok())
        {
            parents.entry(ppid).or_default().push(child);
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        for c in parents.get(&p).cloned().unwrap_or_default() {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn kill_9_and_restart_keeps_resources_and_leaves_no_orphans() {
    let mut p = Platform::start();
    p.python_env(&[]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        &function_path("examples/hello/hello.py"),
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "hello",
        "--url",
        "/hello",
        "--function",
        "hello",
    ]);
    assert_eq!(p.get("/hello").status, 200);
    let before = p.ok(&["fn", "get", "hello", "-o", "json"]);

    let instances = descendants(p.pid());
    assert!(
        !instances.is_empty(),
        "warm and specialized instances are running"
    );
    p.kill9();
    eventually_blocking(
        Duration::from_secs(15),
        "every instance process to end with the platform",
        || {
            let left: Vec<u32> = instances
                .iter()
                .copied()
                .filter(|pid| alive(*pid))
                .collect();
            left.is_empty().then_some(())
        },
    );

    p.restart();
    let after = p.ok(&["fn", "get", "hello", "-o", "json"]);
    let uid =
        |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["metadata"]["uid"].clone();
    assert_eq!(uid(&before), uid(&after), "the same function survived");
    assert!(p.ok(&["env", "list"]).contains("python"));
    assert!(p.ok(&["route", "list"]).contains("/hello"));
    let r = p.get("/hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello, world!\n");
}

#[test]
fn sigterm_stops_cleanly_without_orphans() {
    let mut p = Platform::start();
    p.python_env(&[]);
    p.deploy("hello", "examples/hello/hello.py", "/hello", &[]);
    assert_eq!(p.get("/hello").status, 200);
    let instances = descendants(p.pid());
    assert!(!instances.is_empty());
    let status = p.stop();
    assert!(status.success(), "kappa up exits 0 on SIGTERM: {status}");
    let left: Vec<u32> = instances.into_iter().filter(|pid| alive(*pid)).collect();
    assert!(left.is_empty(), "instances left running: {left:?}");
}
