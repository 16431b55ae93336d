//! The web dashboard (`/ui`) in headless Chromium: `tests/ui/dashboard.test.mjs`, driven by
//! `playwright-core`, against the real `kappa up` with a deployed function, a JetStream
//! trigger and a time trigger. A missing Chromium fails it (`scripts/install-deps.sh` installs
//! it). `KAPPA_UI_SCREENSHOTS=<dir>` also saves the main pages at laptop and phone
//! widths (how `docs/images/dashboard-*.png` are made: `scripts/ui-screenshots.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kappa_test_support::eventually_blocking;
use kappa_test_support::servers::NatsServer;

use crate::harness::{Platform, function_path, repo_root};

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    path.exists().then_some(path)
}

#[test]
fn dashboard_in_headless_chromium() {
    // A missing browser fails the test (never a silent pass): install-deps.sh installs it.
    let chromium = chromium().expect("chromium is not installed (run scripts/install-deps.sh)");
    let tests = repo_root().join("tests/ui");
    assert!(
        tests.join("node_modules/playwright-core").is_dir(),
        "tests/ui/node_modules is missing: run scripts/install-deps.sh (npm ci in tests/ui)"
    );

    let nats = NatsServer::start().expect("nats-server (run scripts/install-deps.sh)");
    let p = Platform::start_with(&["--no-example", "--nats-url", &nats.url()]);
    p.python_env(&["--poolsize", "2"]);
    let code = function_path("testdata/python/dashboard.py");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "checkout",
        "--env",
        "python",
        "--code",
        &code,
        "--entrypoint",
        "dashboard.main",
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "checkout",
        "--url",
        "/checkout",
        "--function",
        "checkout",
    ]);
    p.ok(&[
        "mqtrigger",
        "create",
        "--name",
        "orders",
        "--function",
        "checkout",
        "--mqtype",
        "nats-jetstream",
        "--topic",
        "orders",
    ]);
    p.ok(&[
        "timetrigger",
        "create",
        "--name",
        "nightly",
        "--function",
        "checkout",
        "--cron",
        "0 3 * * *",
    ]);
    eventually_blocking(Duration::from_secs(60), "the trigger to be ready", || {
        let out = p.cli(&["mqtrigger", "get", "orders", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["status"]["state"] == "ready").then_some(())
    });

    let mut node = Command::new("node");
    node.arg(tests.join("dashboard.test.mjs"))
        .current_dir(&tests)
        .env("KAPPA_API_URL", format!("http://{}", p.api))
        .env("KAPPA_ROUTER_URL", format!("http://{}", p.router))
        .env("KAPPA_TOKEN", p.token())
        .env("KAPPA_FUNCTION", "checkout")
        .env("KAPPA_ROUTE", "/checkout")
        .env("KAPPA_EXPECT_MQ", "orders")
        .env("KAPPA_EXPECT_TIMER", "nightly")
        .env("CHROMIUM", &chromium);
    if let Some(dir) = std::env::var_os("KAPPA_UI_SCREENSHOTS") {
        node.env("KAPPA_SCREENSHOTS", absolute(Path::new(&dir)));
    }
    let out = node
        .output()
        .expect("run node (scripts/install-deps.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the dashboard test failed ({}):\n{stdout}\n{stderr}\nplatform log:\n{}",
        out.status,
        crate::harness::tail(&p.log(), 60)
    );
    assert!(stdout.contains("dashboard test passed"), "{stdout}");
}

fn absolute(dir: &Path) -> PathBuf {
    if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(dir))
            .unwrap_or_else(|_| dir.to_path_buf())
    }
}
