//! Isolation, tried as a hostile function author would: a probe function attempts every escape
//! it knows (host files, the token and store, other functions' code and secrets, its own code,
//! the platform's listeners, other instances, its cgroup, privileges, a fork bomb, a daemon that
//! outlives the platform) and every attempt must fail while the neighbouring functions keep
//! answering. Run in the default sandbox mode with user-mode networking, and again with no
//! optional program on `PATH` (as on a fresh machine).

use std::time::Duration;

use kappa_test_support::eventually_blocking;
use kappa_test_support::servers::LineEcho;
use serde_json::Value;

use crate::harness::{Platform, tail};

/// The default: Python instances are forked from their environment's template (a zygote,
/// docs/design/009-zygote.md), and every escape must fail exactly as for an exec'd runtime.
#[test]
fn a_hostile_function_escapes_nowhere() {
    hostile_function_escapes_nowhere(&[], &[]);
}

/// The same probe against runtimes started by exec (`--zygote off`).
#[test]
fn a_hostile_function_escapes_nowhere_without_a_template() {
    hostile_function_escapes_nowhere(&["--zygote", "off"], &[]);
}

/// A fresh machine: nothing optional installed. Only `/nonexistent` on `PATH`, so neither
/// slirp4netns nor anything else is found; the sandbox is built in and must not need them.
#[test]
fn a_hostile_function_escapes_nowhere_with_nothing_on_path() {
    hostile_function_escapes_nowhere(&[], &[("PATH", "/nonexistent")]);
}

fn hostile_function_escapes_nowhere(flags: &[&str], env: &[(&str, &str)]) {
    let mut args = vec!["--no-example"];
    args.extend_from_slice(flags);
    let forked = !flags.contains(&"off");
    let mut p = Platform::start_with_env(&args, env);
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
    // The probe ran in the kind of instance this run is about.
    assert_eq!(
        !templates(p.pid()).is_empty(),
        forked,
        "a template runs exactly when instances are forked"
    );
    let probe_log = p.ok(&["fn", "logs", "escape"]);
    assert!(!probe_log.contains("by exec"), "{probe_log}");

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

/// A forked instance is in its own sandbox like a spawned one: its runtime process runs as the
/// instance's user with no capabilities and `no_new_privs`, in the instance's cgroups and in
/// namespaces of its own (not the template's, not another instance's); the template's end
/// (`kill -9`) leaves running instances answering, the next start gets a new template, and an
/// environment update replaces it.
#[test]
fn forked_instances_are_sandboxed_and_templates_are_replaced() {
    let p = Platform::start_with(&["--no-example"]);
    p.python_env(&["--poolsize", "0"]);
    p.deploy("one", "examples/hello/hello.py", "/one", &[]);
    p.deploy("two", "examples/hello/hello.py", "/two", &[]);
    assert_eq!(p.get("/one").status, 200);
    assert_eq!(p.get("/two").status, 200);
    let first = templates(p.pid());
    assert_eq!(
        first.len(),
        1,
        "one template for the environment: {first:?}"
    );
    let template = first[0];
    // Every payload forked from the template is isolated, a waiting spare's included.
    let payloads = instances_of(template);
    assert_eq!(payloads.len(), 2, "two forked runtimes: {payloads:?}");
    for &pid in &payloads_of(template) {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        let uid: u64 = field("Uid:")[0].parse().unwrap();
        assert!(uid >= 1_000_000, "{status}");
        assert!(
            field("Uid:")
                .iter()
                .all(|u| u.parse::<u64>().unwrap() == uid)
        );
        assert!(
            field("Gid:")
                .iter()
                .all(|g| g.parse::<u64>().unwrap() == uid)
        );
        assert!(field("Groups:").is_empty(), "{status}");
        assert_eq!(field("CapEff:"), ["0000000000000000"], "{status}");
        assert_eq!(field("CapPrm:"), ["0000000000000000"], "{status}");
        assert_eq!(field("NoNewPrivs:"), ["1"], "{status}");
        // Its own PID namespace: a low pid inside.
        let inner: u64 = field("NSpid:").last().unwrap().parse().unwrap();
        assert!(inner < 10, "{status}");
        // Its waiter (root, outside the sandbox) became the small helper's `wait` stage when
        // the platform runs that helper (no copy of the template's memory stays with the
        // instance); with the platform as its own helper it stays a fork of the template.
        let waiter = field("PPid:")[0];
        let comm = std::fs::read_to_string(format!("/proc/{waiter}/comm")).unwrap();
        let expected = if small_helper(p.pid()) {
            "kappa-waiter"
        } else {
            "python3"
        };
        assert_eq!(comm.trim(), expected, "the waiter of {pid}");
        // Every namespace differs from the template's (host namespaces).
        for ns in ["net", "uts", "ipc", "cgroup", "pid", "mnt"] {
            let own = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            let host = std::fs::read_link(format!("/proc/{template}/ns/{ns}")).unwrap();
            assert_ne!(own, host, "{ns} namespace of {pid}");
        }
        // Its root is the sandbox's: the host's data directory is not there.
        let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
        assert_eq!(root, std::path::Path::new("/"));
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}/root{}", p.data_dir.path().display()))
                .exists()
        );
        // In the instance's cgroup (one of the platform's), not the template's.
        let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let host = std::fs::read_to_string(format!("/proc/{template}/cgroup")).unwrap();
        assert_ne!(own, host, "cgroups of {pid}");
        assert!(
            own.contains(&format!("kappa-{}", p.pid())) || own.contains("/kappa"),
            "{own}"
        );
    }
    // Two instances never share a namespace.
    for ns in ["net", "pid", "mnt", "ipc", "uts"] {
        let a = std::fs::read_link(format!("/proc/{}/ns/{ns}", payloads[0])).unwrap();
        let b = std::fs::read_link(format!("/proc/{}/ns/{ns}", payloads[1])).unwrap();
        assert_ne!(a, b, "{ns} namespace shared");
    }

    // The template dies: running instances keep answering, the next start gets a new one.
    let killed = std::process::Command::new("kill")
        .args(["-9", &template.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    eventually_blocking(Duration::from_secs(10), "the template to be gone", || {
        (!templates(p.pid()).contains(&template)).then_some(())
    });
    assert_eq!(p.get("/one").status, 200);
    assert_eq!(p.get("/two").status, 200);
    p.deploy("three", "examples/hello/hello.py", "/three", &[]);
    assert_eq!(p.get("/three").status, 200);
    let second = templates(p.pid());
    assert_eq!(second.len(), 1, "{second:?}");
    assert_ne!(second[0], template);
    assert_eq!(instances_of(second[0]).len(), 1, "the new start was forked");
    let log = p.ok(&["fn", "logs", "three"]);
    assert!(!log.contains("by exec"), "{log}");

    // An environment update replaces the template; instances of the new spec fork from it.
    p.ok(&["env", "update", "--name", "python", "--maxpids", "200"]);
    eventually_blocking(
        Duration::from_secs(30),
        "the updated environment's function to answer from a new template",
        || {
            let now = templates(p.pid());
            (p.get("/one").status == 200
                && now.len() == 1
                && now[0] != second[0]
                && !payloads_of(now[0]).is_empty())
            .then_some(())
        },
    );
    assert_eq!(p.get("/two").status, 200);
}

/// Spare sandboxes (design note 011): after a template start, the next no-pool start of the
/// environment takes a sandbox assembled ahead of time (said in the function's log), a new
/// spare replaces it, and deleting the environment drops its spare and its directory.
#[test]
fn a_no_pool_start_takes_a_spare_sandbox_and_a_deleted_environment_drops_it() {
    let p = Platform::start_with(&["--no-example"]);
    p.python_env(&["--poolsize", "0"]);
    p.deploy("one", "examples/hello/hello.py", "/one", &[]);
    assert_eq!(p.get("/one").status, 200);
    let spares = || p.log().matches("spare sandbox ready").count();
    eventually_blocking(Duration::from_secs(30), "a spare sandbox", || {
        (spares() >= 1).then_some(())
    });
    p.deploy("two", "examples/hello/hello.py", "/two", &[]);
    assert_eq!(p.get("/two").status, 200);
    let log = p.ok(&["fn", "logs", "two"]);
    assert!(log.contains("from a spare sandbox"), "{log}");
    assert!(!log.contains("by exec"), "{log}");
    eventually_blocking(Duration::from_secs(30), "a new spare sandbox", || {
        (spares() >= 2).then_some(())
    });
    let instances = p.data_dir.path().join("local/instances");
    let spare_dirs = || {
        std::fs::read_dir(&instances)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".spare-"))
                    .count()
            })
            .unwrap_or_default()
    };
    assert_eq!(spare_dirs(), 1, "{}", instances.display());

    p.ok(&["env", "delete", "--name", "python", "--force"]);
    eventually_blocking(
        Duration::from_secs(30),
        "the deleted environment's spare to go",
        || (spare_dirs() == 0 && p.log().contains("spare sandbox dropped")).then_some(()),
    );
}

/// The per-environment switch and the template's lifetime: an environment with `zygote: false`
/// starts its instances by exec (no template), one switched to `true` forks them from its
/// template, and deleting the environment stops that template while the platform runs on.
#[test]
fn an_environment_chooses_its_template_and_a_deleted_ones_template_stops() {
    let p = Platform::start_with(&["--no-example"]);
    p.python_env(&["--poolsize", "0", "--zygote", "false"]);
    p.deploy("one", "examples/hello/hello.py", "/one", &[]);
    assert_eq!(p.get("/one").status, 200);
    assert!(templates(p.pid()).is_empty(), "{:?}", templates(p.pid()));
    let log = p.log();
    assert!(
        log.contains("the environment sets zygote: false"),
        "{}",
        tail(&log, 30)
    );

    p.ok(&["env", "update", "--name", "python", "--zygote", "true"]);
    let template = eventually_blocking(
        Duration::from_secs(30),
        "the updated environment's function to answer from a template",
        || {
            let now = templates(p.pid());
            (p.get("/one").status == 200 && now.len() == 1 && !payloads_of(now[0]).is_empty())
                .then(|| now[0])
        },
    );

    p.ok(&["env", "delete", "--name", "python", "--force"]);
    eventually_blocking(
        Duration::from_secs(30),
        "the deleted environment's template to stop",
        || (!templates(p.pid()).contains(&template)).then_some(()),
    );
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

/// Host ports (`hostPorts`): a function allowed a port of the host's loopback reaches a service
/// there at the same port of its own loopback; another host port stays unreachable, a function
/// without the field cannot reach the allowed one, and the platform's own API port cannot be
/// named (the function's log and the invocation's error say why).
#[test]
fn a_named_host_port_is_reachable_and_nothing_else() {
    let allowed = LineEcho::start();
    let other = LineEcho::start();
    let p = Platform::start_with(&["--no-example"]);
    p.python_env(&[]);
    let probe = "testdata/probe/hostports.py";
    let allowed_port = allowed.port.to_string();
    p.deploy("dev", probe, "/dev", &["--host-port", &allowed_port]);
    p.deploy("plain", probe, "/plain", &[]);
    let shown = p.ok(&["fn", "get", "dev", "-o", "json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["spec"]["hostPorts"],
        serde_json::json!([allowed.port])
    );

    let query = format!("?ports={},{}", allowed.port, other.port);
    let reach = |url: &str| {
        let response = p.get(&format!("{url}{query}"));
        assert_eq!(response.status, 200, "{}", response.text());
        let report: Value = response.json();
        (
            report[allowed.port.to_string()].clone(),
            report[other.port.to_string()].clone(),
        )
    };
    let (a, o) = reach("/dev");
    assert_eq!(a, format!("echo {}", allowed.port));
    assert_eq!(o, "refused");
    // The default forks Python instances from a template: the relay reaches forked ones too.
    let log = p.ok(&["fn", "logs", "dev"]);
    assert!(!log.contains("by exec"), "{log}");
    assert!(log.contains("host ports relayed"), "{log}");
    let (a, o) = reach("/plain");
    assert_eq!(a, "refused");
    assert_eq!(o, "refused");

    // Invalid values are refused naming the field; nothing changes.
    let err = p.fails(&[
        "fn",
        "update",
        "--name",
        "dev",
        "--host-port",
        &allowed_port,
        "--host-port",
        &allowed_port,
    ]);
    assert!(err.contains("spec.hostPorts[1]"), "{err}");
    let shown = p.ok(&["fn", "get", "dev", "-o", "json"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["spec"]["hostPorts"],
        serde_json::json!([allowed.port])
    );

    // The platform's own API port: the invocation fails and the log says why.
    let api_port = p.api.port().to_string();
    p.deploy("sneaky", probe, "/sneaky", &["--host-port", &api_port]);
    let response = p.get(&format!("/sneaky?ports={api_port}"));
    assert_ne!(response.status, 200, "{}", response.text());
    let why = format!("port {api_port} is one of the platform's own listeners");
    eventually_blocking(
        Duration::from_secs(10),
        "the refusal in the function's log",
        || p.ok(&["fn", "logs", "sneaky"]).contains(&why).then_some(()),
    );
    assert!(response.text().contains("hostPorts"), "{}", response.text());

    // The environment's list applies to functions without their own.
    p.ok(&[
        "env",
        "update",
        "--name",
        "python",
        "--host-port",
        &allowed_port,
    ]);
    let shown: Value =
        serde_json::from_str(&p.ok(&["env", "get", "python", "-o", "json"])).unwrap();
    assert_eq!(
        shown["spec"]["hostPorts"],
        serde_json::json!([allowed.port])
    );
    eventually_blocking(
        Duration::from_secs(60),
        "a function without hostPorts to reach its environment's",
        || {
            let response = p.get(&format!("/plain{query}"));
            let report: Value = serde_json::from_slice(&response.body).ok()?;
            (report[allowed.port.to_string()] == format!("echo {}", allowed.port)
                && report[other.port.to_string()] == "refused")
                .then_some(())
        },
    );
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

/// The template processes (`server.py --zygote`) the platform `platform` started.
fn templates(platform: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|&(pid, ppid)| ppid == platform && is_template_image(pid))
        .map(|(pid, _)| pid)
        .collect()
}

/// The runtimes forked from `template` (children of its waiters).
/// The payloads forked from `template` that are instances: a waiting spare sandbox's payload
/// is forked ahead too (design note 012), isolated the same way; its `/userfunc` is still bound
/// from the spare's directory (`instances/.spare-...`), which a claim renames.
fn instances_of(template: u32) -> Vec<u32> {
    payloads_of(template)
        .into_iter()
        .filter(|pid| {
            let info =
                std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
            !info.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.len() > 4 && fields[4] == "/userfunc" && fields[3].contains("/.spare-")
            })
        })
        .collect()
}

fn payloads_of(template: u32) -> Vec<u32> {
    let all = processes();
    let waiters: Vec<u32> = all
        .iter()
        .filter(|&&(_, ppid)| ppid == template)
        .map(|&(pid, _)| pid)
        .collect();
    all.iter()
        .filter(|&&(_, ppid)| waiters.contains(&ppid))
        .map(|&(pid, _)| pid)
        .collect()
}

/// Whether the platform `platform` runs its sandboxes with the small `kappa-sandbox` helper (its
/// monitors, children of the platform, run that executable).
fn small_helper(platform: u32) -> bool {
    processes().into_iter().any(|(pid, ppid)| {
        ppid == platform
            && std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.file_name().is_some_and(|n| n == "kappa-sandbox"))
    })
}

fn is_template_image(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| cmd.split(|b| *b == 0).any(|arg| arg == b"--zygote"))
}

/// `(pid, parent pid)` of every process.
fn processes() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let after = &stat[stat.rfind(')')? + 1..];
            let ppid = after.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
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
