//! Function versions and canary rollouts (docs/traffic.md), through the CLI and HTTP.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, http};

/// Steady load on `path` from `threads` clients until `stop`: every (status, body) seen, in
/// the order the answers came, readable while it runs ([`Load::count`]).
struct Load {
    seen: Arc<Mutex<Vec<(u16, String)>>>,
    handles: Vec<JoinHandle<()>>,
}

impl Load {
    /// How many answers so far had `body`.
    fn count(&self, body: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| b == body)
            .count()
    }

    /// Waits until the clients got `n` more answers with `body` (the load ran on it).
    fn wait_for(&self, n: usize, body: &str) {
        let start = self.count(body);
        eventually_blocking(
            Duration::from_secs(30),
            &format!("{n} more {body} answers under load"),
            || (self.count(body) >= start + n).then_some(()),
        );
    }
}

fn load(router: SocketAddr, path: &'static str, threads: usize, stop: &Arc<AtomicBool>) -> Load {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handles = (0..threads)
        .map(|_| {
            let stop = Arc::clone(stop);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let answer = match http(router, "GET", path, &[], b"") {
                        Ok(r) => (r.status, r.text()),
                        Err(e) => (0, e.to_string()),
                    };
                    seen.lock().unwrap().push(answer);
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    Load { seen, handles }
}

fn join(load: Load) -> Vec<(u16, String)> {
    for h in load.handles {
        h.join().unwrap();
    }
    std::mem::take(&mut *load.seen.lock().unwrap())
}

fn write_code(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("greet.py");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

fn history(p: &Platform, name: &str) -> serde_json::Value {
    serde_json::from_str(&p.ok(&["fn", "history", name, "-o", "json"])).unwrap()
}

/// Three updates make four versions; a rollback to version 2 under steady load fails no
/// request and ends with every request on version 2; a route pinned to a version keeps it
/// across later updates; a kept version answers at its own API path.
#[test]
fn versions_history_rollback_and_pinned_routes() {
    let p = Platform::start();
    p.python_env(&[]);
    let dir = tempfile::tempdir().unwrap();
    let code = |v: &str| write_code(dir.path(), &format!("def main():\n    return '{v}'\n"));
    p.ok(&[
        "fn",
        "create",
        "--name",
        "greet",
        "--env",
        "python",
        "--code",
        &code("v1"),
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "greet",
        "--url",
        "/greet",
        "--function",
        "greet",
    ]);
    assert_eq!(p.get("/greet").text(), "v1");
    for v in ["v2", "v3", "v4"] {
        p.ok(&["fn", "update", "--name", "greet", "--code", &code(v)]);
    }
    // A change of configuration alone is a version too; setting the same value again is not.
    let h = history(&p, "greet");
    let items = h["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{h}");
    assert_eq!(h["current"], 4, "{h}");
    let numbers: Vec<u64> = items
        .iter()
        .map(|v| v["spec"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3, 4]);
    assert_eq!(items[0]["spec"]["changes"], serde_json::json!(["created"]));
    assert_eq!(items[1]["spec"]["changes"], serde_json::json!(["code"]));
    let sums: std::collections::HashSet<&str> = items
        .iter()
        .map(|v| v["spec"]["deployment"]["checksum"]["sum"].as_str().unwrap())
        .collect();
    assert_eq!(sums.len(), 4, "every version has its own code: {h}");
    let table = p.ok(&["fn", "history", "greet"]);
    assert!(table.starts_with("VERSION"), "{table}");
    assert_eq!(table.lines().count(), 5, "{table}");
    eventually_blocking(Duration::from_secs(30), "v4 to answer", || {
        (p.get("/greet").text() == "v4").then_some(())
    });

    // A route pinned to version 2, and version 3 at its own path.
    p.ok(&[
        "route",
        "create",
        "--name",
        "pinned",
        "--url",
        "/pinned",
        "--function",
        "greet@2",
    ]);
    eventually_blocking(Duration::from_secs(30), "the pinned route", || {
        (p.get("/pinned").text() == "v2").then_some(())
    });
    let r = p.api("GET", "/v1/functions/greet@3/invoke", b"");
    assert_eq!((r.status, r.text().as_str()), (200, "v3"));
    let err = p.fails(&["route", "create", "--url", "/nope", "--function", "greet@9"]);
    assert!(err.contains("no version 9"), "{err}");

    // Roll back to 2 under load: no request fails, and the switch completes.
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(p.router, "/greet", 4, &stop);
    clients.wait_for(12, "v4");
    let out = p.ok(&["fn", "rollback", "greet", "--to", "2"]);
    assert!(out.contains("rolled back to version 2"), "{out}");
    eventually_blocking(Duration::from_secs(30), "v2 to answer", || {
        (p.get("/greet").text() == "v2").then_some(())
    });
    clients.wait_for(12, "v2");
    stop.store(true, Ordering::SeqCst);
    let seen = join(clients);
    let failed: Vec<_> = seen.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "failed during the rollback: {failed:?}");
    assert!(
        seen.iter().all(|(_, b)| b == "v4" || b == "v2"),
        "only v4 then v2"
    );
    let last_v4 = seen.iter().rposition(|(_, b)| b == "v4");
    assert!(seen.len() > 20, "steady load: {} requests", seen.len());
    assert!(last_v4.is_some(), "the load saw v4 before the switch");
    for _ in 0..5 {
        assert_eq!(p.get("/greet").text(), "v2");
    }
    let h = history(&p, "greet");
    assert_eq!(h["current"], 2, "{h}");
    assert_eq!(
        h["items"].as_array().unwrap().len(),
        4,
        "a rollback records no version"
    );

    // `--to` defaults to the version before the current one.
    p.ok(&["fn", "rollback", "greet"]);
    assert_eq!(history(&p, "greet")["current"], 1);

    // A new update is version 5; the pinned route still serves version 2.
    p.ok(&["fn", "update", "--name", "greet", "--code", &code("v5")]);
    assert_eq!(history(&p, "greet")["current"], 5);
    eventually_blocking(Duration::from_secs(30), "v5 to answer", || {
        (p.get("/greet").text() == "v5").then_some(())
    });
    for _ in 0..5 {
        assert_eq!(p.get("/pinned").text(), "v2");
    }

    // Versions are the platform's: not writable through the API.
    let r = p.api("DELETE", "/v1/functionversions/greet.v2", b"");
    assert_eq!(r.status, 405, "{}", r.text());
    // Rolling back to a version that is not kept names the kept ones.
    let err = p.fails(&["fn", "rollback", "greet", "--to", "42"]);
    assert!(err.contains("no version 42"), "{err}");
}

/// Retention: beyond `versionLimit` the oldest versions go, but not one a route pins.
#[test]
fn old_versions_are_collected_unless_pinned() {
    let p = Platform::start();
    p.python_env(&[]);
    let dir = tempfile::tempdir().unwrap();
    let code = |v: &str| write_code(dir.path(), &format!("def main():\n    return '{v}'\n"));
    p.ok(&[
        "fn",
        "create",
        "--name",
        "greet",
        "--env",
        "python",
        "--code",
        &code("v1"),
    ]);
    // versionLimit 2 (a spec field; `fn update` has no flag for it).
    let mut f: serde_json::Value =
        serde_json::from_str(&p.ok(&["fn", "get", "greet", "-o", "json"])).unwrap();
    f["spec"]["versionLimit"] = 2.into();
    let r = p.api("PUT", "/v1/functions/greet", f.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // That was version 2 (a configuration change); pin it.
    p.ok(&[
        "route",
        "create",
        "--name",
        "pinned",
        "--url",
        "/pinned",
        "--function",
        "greet@2",
    ]);
    for v in ["v3", "v4", "v5"] {
        p.ok(&["fn", "update", "--name", "greet", "--code", &code(v)]);
    }
    let h = history(&p, "greet");
    let numbers: Vec<u64> = h["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["spec"]["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 5], "pinned 2 and current 5 kept: {h}");
    assert_eq!(p.get("/pinned").text(), "v1");
}

fn canary_status(p: &Platform, name: &str) -> serde_json::Value {
    let c: serde_json::Value =
        serde_json::from_str(&p.ok(&["canary", "get", name, "-o", "json"])).unwrap();
    c["status"].clone()
}

/// A canary from version 1 to a version 2 that fails half its requests rolls back by itself
/// under load: the route serves only version 1 again, and the status says why.
#[test]
fn canary_to_a_failing_version_rolls_back() {
    let p = Platform::start();
    p.python_env(&[]);
    let dir = tempfile::tempdir().unwrap();
    p.ok(&[
        "fn",
        "create",
        "--name",
        "shop",
        "--env",
        "python",
        "--code",
        &write_code(dir.path(), "def main():\n    return 'v1'\n"),
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "shop",
        "--url",
        "/shop",
        "--function",
        "shop@1",
    ]);
    p.ok(&[
        "fn",
        "update",
        "--name",
        "shop",
        "--code",
        &write_code(
            dir.path(),
            "import itertools\n_n = itertools.count()\n\ndef main():\n    if next(_n) % 2:\n        return 'v2 failed', 500\n    return 'v2'\n",
        ),
    ]);
    assert_eq!(p.get("/shop").text(), "v1");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(p.router, "/shop", 4, &stop);
    p.ok(&[
        "canary",
        "create",
        "--name",
        "shop-v2",
        "--trigger",
        "shop",
        "--newfunction",
        "shop@2",
        "--oldfunction",
        "shop@1",
        "--increment-step",
        "20",
        "--increment-interval",
        "1s",
        "--failure-threshold",
        "10",
    ]);
    let mut weights = Vec::new();
    let status = eventually_blocking(Duration::from_secs(60), "the canary to end", || {
        let s = canary_status(&p, "shop-v2");
        if let Some(w) = s["weight"].as_u64()
            && weights.last() != Some(&w)
        {
            weights.push(w);
        }
        (s["status"] == "failed" || s["status"] == "succeeded").then_some(s)
    });
    assert_eq!(status["status"], "failed", "rolled back: {status}");
    assert_eq!(status["weight"], 0, "{status}");
    assert!(
        status["reason"].as_str().unwrap().contains("rolled back"),
        "{status}"
    );
    let last = status["intervals"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(last["failureRate"].as_f64().unwrap() > 10.0, "{status}");
    assert!(last["requests"].as_u64().unwrap() > 0, "{status}");
    // The route is back on version 1 alone.
    let route: serde_json::Value =
        serde_json::from_str(&p.ok(&["route", "get", "shop", "-o", "json"])).unwrap();
    assert_eq!(route["spec"]["functionref"]["name"], "shop@1", "{route}");
    clients.wait_for(4, "v1");
    stop.store(true, Ordering::SeqCst);
    let seen = join(clients);
    assert!(seen.iter().any(|(s, _)| *s == 500), "v2 was tried");
    for _ in 0..10 {
        assert_eq!(p.get("/shop").text(), "v1");
    }
    assert!(weights.contains(&20), "weights seen: {weights:?}");
    eprintln!("failing canary: weights seen {weights:?}, status {status}");
}

/// A canary from one function to a healthy other reaches 100 % in steps of the increment.
#[test]
fn canary_to_a_healthy_function_reaches_100() {
    let p = Platform::start();
    p.python_env(&[]);
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [("blue", "blue"), ("green", "green")] {
        let path = dir.path().join(format!("{name}.py"));
        std::fs::write(&path, format!("def main():\n    return '{body}'\n")).unwrap();
        p.ok(&[
            "fn",
            "create",
            "--name",
            name,
            "--env",
            "python",
            "--code",
            path.to_str().unwrap(),
        ]);
    }
    p.ok(&[
        "route",
        "create",
        "--name",
        "app",
        "--url",
        "/app",
        "--function",
        "blue",
    ]);
    assert_eq!(p.get("/app").text(), "blue");
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(p.router, "/app", 4, &stop);
    p.ok(&[
        "canary",
        "create",
        "--name",
        "green",
        "--trigger",
        "app",
        "--newfunction",
        "green",
        "--oldfunction",
        "blue",
        "--increment-step",
        "30",
        "--increment-interval",
        "1s",
    ]);
    let mut weights = Vec::new();
    let status = eventually_blocking(Duration::from_secs(60), "the canary to end", || {
        let s = canary_status(&p, "green");
        if let Some(w) = s["weight"].as_u64()
            && weights.last() != Some(&w)
        {
            weights.push(w);
        }
        (s["status"] == "failed" || s["status"] == "succeeded").then_some(s)
    });
    stop.store(true, Ordering::SeqCst);
    let seen = join(clients);
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["weight"], 100);
    let interval_weights: Vec<u64> = status["intervals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["weight"].as_u64().unwrap())
        .collect();
    assert_eq!(interval_weights, [30, 60, 90], "{status}");
    assert!(
        weights.iter().all(|w| [0, 30, 60, 90, 100].contains(w)),
        "{weights:?}"
    );
    assert_eq!(weights.last(), Some(&100));
    assert!(seen.iter().all(|(s, _)| *s == 200), "no failures");
    assert!(seen.iter().any(|(_, b)| b == "green"));
    let route: serde_json::Value =
        serde_json::from_str(&p.ok(&["route", "get", "app", "-o", "json"])).unwrap();
    assert_eq!(route["spec"]["functionref"]["name"], "green", "{route}");
    for _ in 0..5 {
        assert_eq!(p.get("/app").text(), "green");
    }
    let list = p.ok(&["canary", "list"]);
    assert!(
        list.contains("succeeded") && list.contains("100%"),
        "{list}"
    );
    eprintln!("healthy canary: weights seen {weights:?}, status {status}");
}
