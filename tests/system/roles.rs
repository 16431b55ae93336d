//! `kappa server --role ...`: the component roles of cluster mode, run as a real process on
//! loopback ports and driven through the CLI (`KAPPA_API_URL` + `KAPPA_TOKEN`, as against a
//! cluster install) and HTTP. With `--executor-url` the router reaches the executor over its
//! HTTP API (provision, endpoint feed, usage) even though both run in this one process, which
//! is the only way to share the embedded store between them.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use kappa_test_support::eventually_blocking;

use crate::harness::{function_path, http, kappa_bin, repo_root};

const TOKEN: &str = "roles-system-test-token-0123456789";

/// A free port picked before the start, for the two listeners whose URL the other roles are
/// given on the command line (`--executor-url`, `--router-url`). The others bind port 0 and are
/// read back from the server's `listening <name> <addr>` lines.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The address `kappa server` reports for listener `name` (`listening <name> <addr>`).
fn listening(log: &str, name: &str) -> Option<SocketAddr> {
    log.lines().find_map(|line| {
        let rest = line.strip_prefix("listening ")?;
        let (what, addr) = rest.split_once(' ')?;
        (what == name).then(|| addr.trim().parse().ok())?
    })
}

struct Server {
    dir: tempfile::TempDir,
    child: Child,
    api: SocketAddr,
    router: SocketAddr,
    internal: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra environment variables (the `KAPPA_...` fallbacks of the flags).
    fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kappa-roles-")
            .tempdir()
            .unwrap();
        let (router, executor) = (free_port(), free_port());
        let any = "127.0.0.1:0";
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let child = Command::new(kappa_bin())
            .args(["server", "--role", "api,router,executor"])
            .arg("--store")
            .arg(format!(
                "embedded:{}",
                dir.path().join("kappa.redb").display()
            ))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--runtimes-dir")
            .arg(repo_root().join("functions/runtimes"))
            .args(["--sandbox", "none", "--cgroups", "none"])
            .args(["--api-addr", any])
            .args(["--router-addr", &router.to_string()])
            .args(["--router-admin-addr", any])
            .args(["--executor-addr", &executor.to_string()])
            .args(["--admin-addr", any])
            .args(["--executor-url", &format!("http://{executor}")])
            .args(["--router-url", &format!("http://{router}")])
            .args(["--shutdown-grace", "3"])
            .env("KAPPA_TOKEN", TOKEN)
            .env_remove("KAPPA_ROLE")
            .env_remove("KAPPA_STORE")
            .env_remove("KAPPA_METRICS_NEED_TOKEN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let log_path = dir.path().join("server.log");
        let (api, internal, admin) =
            eventually_blocking(Duration::from_secs(30), "kappa server ready", || {
                // Printed once every listener is bound.
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let admin = listening(&log, "admin")?;
                let addresses = (
                    listening(&log, "api")?,
                    listening(&log, "router-internal")?,
                    admin,
                );
                match http(admin, "GET", "/readyz", &[], b"") {
                    Ok(r) if r.status == 200 => Some(addresses),
                    _ => None,
                }
            });
        Server {
            dir,
            child,
            api,
            router,
            internal,
            admin,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(kappa_bin())
            .args(args)
            .env("KAPPA_API_URL", format!("http://{}", self.api))
            .env("KAPPA_TOKEN", TOKEN)
            .env("KAPPA_DATA_DIR", self.dir.path().join("no-client-config"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "kappa {args:?} failed:\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn roles_serve_a_function_with_the_router_using_the_executor_over_http() {
    let mut s = Server::start();
    let log = s.log();
    for listener in ["api", "router", "router-internal", "executor", "admin"] {
        assert!(
            log.contains(&format!("listening {listener} ")),
            "the {listener} address is logged:\n{log}"
        );
    }
    s.ok(&["env", "create", "--name", "python", "--image", "python"]);
    s.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        &function_path("examples/hello/hello.py"),
    ]);
    s.ok(&["route", "create", "--url", "/hello", "--function", "hello"]);
    let r = eventually_blocking(Duration::from_secs(30), "GET /hello", || {
        let r = http(s.router, "GET", "/hello", &[], b"").ok()?;
        (r.status != 404).then_some(r)
    });
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(r.text(), "Hello, world!\n");
    // `kappa fn test` goes API -> router in this process.
    let out = s.ok(&["fn", "test", "--name", "hello"]);
    assert!(out.contains("Hello, world!"), "{out}");
    // `kappa fn pods` goes API -> pool manager.
    let pods = s.ok(&["fn", "pods", "hello", "-o", "json"]);
    let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
    assert_eq!(pods[0]["state"], "ready", "{pods}");

    // The request history reaches the API through the executor: the router replica reports
    // it there over HTTP, as it would from another pod.
    let auth = format!("Bearer {TOKEN}");
    let stats = eventually_blocking(
        Duration::from_secs(30),
        "the router's history at the API",
        || {
            let r = http(s.api, "GET", "/v1/stats", &[("Authorization", &auth)], b"").ok()?;
            let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
            let item = v["items"]
                .as_array()?
                .iter()
                .find(|i| i["name"] == "hello")?
                .clone();
            (item["requests"].as_u64()? >= 2).then_some(item)
        },
    );
    assert_eq!(stats["errors"], 0, "{stats}");
    assert_eq!(
        stats["lastInvocation"]["invocationId"]
            .as_str()
            .map(str::len),
        Some(32),
        "{stats}"
    );

    // One admin listener reports every role's metrics.
    let metrics = http(s.admin, "GET", "/metrics", &[], b"").unwrap().text();
    assert!(
        metrics.contains("kappa_router"),
        "router metrics:\n{metrics}"
    );
    assert!(
        metrics.contains("kappa_executor"),
        "executor metrics:\n{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"));
    assert_eq!(metrics.matches("# EOF").count(), 1);

    // SIGTERM drains and exits cleanly.
    let pid = s.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = eventually_blocking(Duration::from_secs(20), "kappa server exits", || {
        s.child.try_wait().unwrap()
    });
    assert!(status.success(), "exit status {status}\n{}", s.log());
}

/// The status of `GET path` on `addr`, without and with the token.
fn statuses(addr: SocketAddr, path: &str) -> (u16, u16) {
    let auth = format!("Bearer {TOKEN}");
    let without = http(addr, "GET", path, &[], b"").unwrap();
    if without.status == 401 {
        assert_eq!(without.json()["error"]["code"], "unauthorized", "{path}");
    }
    let with = http(addr, "GET", path, &[("authorization", &auth)], b"").unwrap();
    (without.status, with.status)
}

#[test]
fn debug_views_need_the_token_and_metrics_can() {
    let s = Server::start();
    assert_eq!(statuses(s.internal, "/debug/endpoints"), (401, 200));
    assert_eq!(statuses(s.internal, "/debug/routes"), (401, 200));
    assert_eq!(statuses(s.internal, "/metrics"), (200, 200));
    assert_eq!(statuses(s.admin, "/metrics"), (200, 200));
    assert_eq!(statuses(s.api, "/metrics"), (200, 200));
    drop(s);

    let s = Server::start_with(&[("KAPPA_METRICS_NEED_TOKEN", "true")]);
    for addr in [s.internal, s.admin, s.api] {
        assert_eq!(statuses(addr, "/metrics"), (401, 200), "{addr}");
        assert_eq!(statuses(addr, "/healthz"), (200, 200), "{addr}");
    }
    assert_eq!(statuses(s.internal, "/debug/endpoints"), (401, 200));
    let metrics = http(
        s.admin,
        "GET",
        "/metrics",
        &[("authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .unwrap()
    .text();
    assert!(metrics.contains("kappa_router"), "{metrics}");
}

#[test]
fn misconfigured_roles_fail_fast_with_the_reason() {
    let run = |args: &[&str]| {
        let out = Command::new(kappa_bin())
            .arg("server")
            .args(args)
            .env_remove("KAPPA_TOKEN")
            .env_remove("KAPPA_ROLE")
            .env_remove("KAPPA_STORE")
            .env_remove("KAPPA_EXECUTOR_URL")
            // No cluster: the Kubernetes client must not find a configuration.
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "kappa server {args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let err = run(&["--role", "router", "--data-dir", data]);
    assert!(err.contains("--token"), "{err}");
    let err = run(&["--role", "router", "--data-dir", data, "--token", TOKEN]);
    assert!(err.contains("--executor-url"), "{err}");
    let err = run(&[
        "--role",
        "api",
        "--data-dir",
        data,
        "--token",
        TOKEN,
        "--store",
        "kubernetes",
    ]);
    assert!(err.contains("Kubernetes API"), "{err}");
    let err = run(&["--role", "ingress", "--token", TOKEN]);
    assert!(err.contains("ingress"), "{err}");
}

/// In cluster mode the canary controller (executor role) measures what the router replica
/// reports with its usage reports: a canary to a version that fails half its requests rolls
/// back by itself.
#[test]
fn roles_canary_rolls_back_on_usage_reports() {
    let s = Server::start();
    s.ok(&["env", "create", "--name", "python", "--image", "python"]);
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("shop.py");
    std::fs::write(&code, "def main():\n    return 'v1'\n").unwrap();
    let code = code.to_str().unwrap().to_string();
    s.ok(&[
        "fn", "create", "--name", "shop", "--env", "python", "--code", &code,
    ]);
    s.ok(&[
        "route",
        "create",
        "--name",
        "shop",
        "--url",
        "/shop",
        "--function",
        "shop@1",
    ]);
    std::fs::write(
        &code,
        "import itertools\n_n = itertools.count()\n\ndef main():\n    if next(_n) % 2:\n        return 'v2 failed', 500\n    return 'v2'\n",
    )
    .unwrap();
    s.ok(&["fn", "update", "--name", "shop", "--code", &code]);
    eventually_blocking(Duration::from_secs(30), "GET /shop", || {
        let r = http(s.router, "GET", "/shop", &[], b"").ok()?;
        (r.text() == "v1").then_some(())
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let router = s.router;
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let _ = http(router, "GET", "/shop", &[], b"");
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        })
        .collect();
    s.ok(&[
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
        "25",
        "--increment-interval",
        "2s",
    ]);
    let status = eventually_blocking(Duration::from_secs(60), "the canary to end", || {
        let c: serde_json::Value =
            serde_json::from_str(&s.ok(&["canary", "get", "shop-v2", "-o", "json"])).ok()?;
        let st = c["status"].clone();
        (st["status"] == "failed" || st["status"] == "succeeded").then_some(st)
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(status["status"], "failed", "{status}\n{}", s.log());
    let last = status["intervals"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    let (requests, failures) = (
        last["requests"].as_u64().unwrap(),
        last["failures"].as_u64().unwrap(),
    );
    assert!(requests > 0 && failures * 100 > requests * 10, "{status}");
    let r = http(s.router, "GET", "/shop", &[], b"").unwrap();
    assert_eq!(r.text(), "v1");
}

/// `kappa server --role <roles>` on port-0 loopback addresses; the listeners it reports on
/// stdout (`listening <what> <addr>`) read back once the admin listener (bound last) is.
struct RoleSet {
    dir: tempfile::TempDir,
    child: Child,
    listeners: std::collections::BTreeMap<String, SocketAddr>,
}

impl RoleSet {
    fn start(roles: &str, extra: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kappa-roleset-")
            .tempdir()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
        let any = "127.0.0.1:0";
        let child = Command::new(kappa_bin())
            .args(["server", "--role", roles])
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--runtimes-dir")
            .arg(repo_root().join("functions/runtimes"))
            .args(["--sandbox", "none", "--cgroups", "none"])
            .args(["--api-addr", any, "--router-addr", any])
            .args(["--router-admin-addr", any, "--executor-addr", any])
            .args(["--admin-addr", any, "--shutdown-grace", "3"])
            .args(extra)
            .env("KAPPA_TOKEN", TOKEN)
            .env_remove("KAPPA_ROLE")
            .env_remove("KAPPA_STORE")
            .env_remove("KAPPA_EXECUTOR_URL")
            .env_remove("KAPPA_ROUTER_ADMIN_URL")
            .env_remove("KAPPA_METRICS_NEED_TOKEN")
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut set = RoleSet {
            dir,
            child,
            listeners: Default::default(),
        };
        let log_path = set.dir.path().join("server.log");
        set.listeners = eventually_blocking(
            Duration::from_secs(60),
            &format!("kappa server --role {roles} to listen"),
            || {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                assert!(
                    set.child.try_wait().unwrap().is_none(),
                    "kappa server --role {roles} exited:\n{log}"
                );
                let listeners: std::collections::BTreeMap<String, SocketAddr> = log
                    .lines()
                    .filter_map(|l| l.strip_prefix("listening "))
                    .filter_map(|l| l.split_once(' '))
                    .map(|(what, addr)| (what.to_string(), addr.parse().unwrap()))
                    .collect();
                listeners.contains_key("admin").then_some(listeners)
            },
        );
        set
    }

    fn names(&self) -> Vec<&str> {
        self.listeners.keys().map(String::as_str).collect()
    }

    fn addr(&self, what: &str) -> SocketAddr {
        self.listeners[what]
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for RoleSet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every role alone: what it listens on (each listener answers) and what `/readyz` says.
#[test]
fn each_role_listens_on_its_own_listeners() {
    // Nothing answers here: the router and trigger roles start without their peer and say so
    // when used, not at start.
    let nobody = "http://127.0.0.1:1";
    let cases: [(&str, &[&str], &[&str], bool); 5] = [
        ("api", &[], &["admin", "api"], true),
        (
            "router",
            &["--executor-url", nobody],
            &["admin", "router", "router-internal"],
            // Not ready until the executor's endpoint list arrives.
            false,
        ),
        ("executor", &[], &["admin", "executor"], true),
        (
            "triggers",
            &["--router-admin-url", nobody],
            &["admin"],
            true,
        ),
        ("builder", &[], &["admin"], true),
    ];
    for (role, extra, expected, ready) in cases {
        let s = RoleSet::start(role, extra);
        assert_eq!(s.names(), expected, "role {role}:\n{}", s.log());
        for (what, addr) in &s.listeners {
            assert!(
                std::net::TcpStream::connect_timeout(addr, Duration::from_secs(5)).is_ok(),
                "role {role}: {what} on {addr} accepts"
            );
        }
        let admin = s.addr("admin");
        assert_eq!(
            http(admin, "GET", "/healthz", &[], b"").unwrap().status,
            200
        );
        if ready {
            eventually_blocking(Duration::from_secs(30), &format!("{role} ready"), || {
                (http(admin, "GET", "/readyz", &[], b"").ok()?.status == 200).then_some(())
            });
        } else {
            let r = http(admin, "GET", "/readyz", &[], b"").unwrap();
            assert_eq!(r.status, 503, "{}", r.text());
            assert!(r.text().contains(role), "{}", r.text());
        }
    }
}

/// Every role in one process (what `kappa up` assembles, here from `kappa server`'s flags):
/// all listeners, and the builder role builds a source package the API accepted.
#[test]
fn all_roles_in_one_process_build_and_serve() {
    let s = RoleSet::start("api,router,executor,triggers,builder", &[]);
    assert_eq!(
        s.names(),
        ["admin", "api", "executor", "router", "router-internal"],
        "{}",
        s.log()
    );
    let admin = s.addr("admin");
    eventually_blocking(Duration::from_secs(30), "every role ready", || {
        (http(admin, "GET", "/readyz", &[], b"").ok()?.status == 200).then_some(())
    });
    let cli = |args: &[&str]| {
        let out = Command::new(kappa_bin())
            .args(args)
            .env("KAPPA_API_URL", format!("http://{}", s.addr("api")))
            .env("KAPPA_TOKEN", TOKEN)
            .env("KAPPA_DATA_DIR", s.dir.path().join("no-client-config"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kappa {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            s.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["env", "create", "--name", "python", "--image", "python"]);
    // A source package whose build command writes the deployment: only the builder role
    // turns it into one.
    let src = tempfile::tempdir().unwrap();
    std::fs::write(
        src.path().join("hello.py"),
        std::fs::read(function_path("examples/hello/hello.py")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        src.path().join("build.sh"),
        "#!/bin/sh\nset -e\nmkdir -p \"$DEPLOY_PKG\"\ncp hello.py \"$DEPLOY_PKG/\"\necho built\n",
    )
    .unwrap();
    cli(&[
        "pkg",
        "create",
        "--name",
        "hello-src",
        "--env",
        "python",
        "--src",
        src.path().to_str().unwrap(),
        "--buildcmd",
        "sh ./build.sh",
    ]);
    let info = eventually_blocking(Duration::from_secs(120), "the package to build", || {
        let out = cli(&["pkg", "get", "hello-src", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        let status = v["status"]["buildstatus"].as_str()?.to_string();
        (status == "succeeded" || status == "failed").then_some(v)
    });
    assert_eq!(
        info["status"]["buildstatus"],
        "succeeded",
        "{info}\n{}",
        s.log()
    );
    cli(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--pkg",
        "hello-src",
        "--entrypoint",
        "hello.main",
    ]);
    cli(&["route", "create", "--url", "/hello", "--function", "hello"]);
    let router = s.addr("router");
    let r = eventually_blocking(Duration::from_secs(60), "GET /hello", || {
        let r = http(router, "GET", "/hello", &[], b"").ok()?;
        (r.status != 404).then_some(r)
    });
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.log());
    assert_eq!(r.text(), "Hello, world!\n");
}

/// `kappa up`, the preset of every role: the router, its internal listener and the API listen
/// (no executor API, no separate admin listener), and the API reports the router as bound.
#[test]
fn up_listens_for_every_role() {
    let p = crate::harness::Platform::start();
    for addr in [p.router, p.api, p.admin] {
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok(),
            "{addr} accepts\n{}",
            p.log()
        );
    }
    let r = http(p.admin, "GET", "/readyz", &[], b"").unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let info = p.api("GET", "/v1/info", b"").json();
    assert_eq!(info["routerUrl"], format!("http://{}", p.router), "{info}");
    let log = p.log();
    assert!(log.contains("Kappa is up."), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("listening ")),
        "up prints its own summary:\n{log}"
    );
}
