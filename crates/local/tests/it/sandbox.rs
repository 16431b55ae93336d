//! What a sandboxed instance can and cannot see or change.

use std::time::Duration;

use kappa_core::{Backend, Limits};
use kappa_local::{CgroupMode, SandboxMode};
use kappa_test_support::servers::LineEcho;

use crate::support::{Harness, get, is_root, probe_fixtures};

#[tokio::test]
async fn sandboxed_function_cannot_write_its_code_or_see_the_host() {
    const TEST: &str = "sandboxed_function_cannot_write_its_code_or_see_the_host";
    assert!(
        is_root(),
        "{TEST}: the sandbox needs the platform to run as root"
    );
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::None).await;
    assert!(h.backend.sandboxed());
    let instance = h.create("probe", Limits::default()).await;
    h.specialize_dir(&instance, &probe_fixtures(), "probe.main")
        .await;
    let (status, body) = get(&instance.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200, "{body}");
    eprintln!("probe: {body}");
    let probe: serde_json::Value = serde_json::from_str(&body).expect("probe JSON");

    assert_eq!(probe["code_dir"], "/userfunc/deployarchive");
    let denied = |key: &str| {
        probe[key]
            .as_str()
            .is_some_and(|v| v.starts_with("denied: Permission denied"))
    };
    // The code cannot be changed, not even by its own function; `/userfunc` itself takes new
    // files (Fission's servers keep state there).
    assert!(denied("write_code_dir"), "{}", probe["write_code_dir"]);
    assert!(denied("append_own_code"), "{}", probe["append_own_code"]);
    assert_eq!(probe["write_userfunc"], "written");
    assert_eq!(probe["write_work"], "written");
    assert_eq!(probe["cwd"], "/work");
    // An unprivileged user of its own.
    let info = h.backend.info(&instance.id).expect("info");
    let (uid, gid) = info.user.expect("a sandboxed instance has a user");
    assert!(uid >= 1_000_000, "{uid}");
    assert_eq!(probe["uid"], uid);
    assert_eq!(probe["gid"], gid);
    // The host's /root is not there, and /work is the instance's own empty work directory.
    assert_eq!(probe["list_root"], "error: No such file or directory");
    assert_eq!(probe["list_work"], serde_json::json!(["scratch.txt"]));
    assert_eq!(probe["hostname"], "kappa");
    assert!(
        probe["pid"].as_u64().is_some_and(|p| p < 10),
        "own pid namespace: {}",
        probe["pid"]
    );
    assert_eq!(probe["env_instance"], instance.id.as_str());
    assert_eq!(probe["env_home"], "/tmp");

    // The host side: the code is unchanged.
    let original = std::fs::read_to_string(probe_fixtures().join("probe.py")).unwrap();
    let placed = std::fs::read_to_string(info.dir.join("userfunc/deployarchive/probe.py")).unwrap();
    assert_eq!(placed, original);
    assert!(!info.dir.join("userfunc/deployarchive/probe.txt").exists());
    assert!(info.dir.join("work/scratch.txt").exists());
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_sandbox_mode_fails_to_start_without_its_helper() {
    let dir = tempfile::tempdir().unwrap();
    let archives = std::sync::Arc::new(
        kappa_archive::ArchiveStore::open(dir.path().join("a"), 1 << 20).unwrap(),
    );
    let logs = std::sync::Arc::new(
        kappa_logs::LogStore::open(dir.path().join("l"), Default::default()).unwrap(),
    );
    let mut config = kappa_local::LocalConfig::new(
        dir.path().join("local"),
        kappa_local::RuntimeRegistry::new(crate::support::runtimes_dir()),
    );
    config.cgroups = CgroupMode::None;
    config.helper = Some(dir.path().join("no-such-helper"));
    // Never fails open: no sandbox, no backend.
    let err = kappa_local::LocalBackend::new(config, archives, logs)
        .await
        .expect_err("no helper, no backend");
    assert!(
        err.to_string().contains("cannot sandbox instances"),
        "{err}"
    );
}

#[tokio::test]
async fn unsandboxed_instances_run_in_their_work_directory() {
    let h = Harness::with(
        "unsandboxed_instances_run_in_their_work_directory",
        SandboxMode::None,
        CgroupMode::None,
    )
    .await;
    assert!(!h.backend.sandboxed());
    let instance = h.create("plain", Limits::default()).await;
    h.specialize_dir(&instance, &probe_fixtures(), "probe.main")
        .await;
    let (status, body) = get(&instance.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200, "{body}");
    let probe: serde_json::Value = serde_json::from_str(&body).expect("probe JSON");
    let info = h.backend.info(&instance.id).expect("info");
    // Host paths: the code where the backend placed it, the cwd its work directory.
    assert_eq!(
        probe["code_dir"].as_str().map(std::path::PathBuf::from),
        Some(info.dir.join("userfunc/deployarchive"))
    );
    assert_eq!(
        probe["cwd"].as_str().map(std::path::PathBuf::from),
        Some(info.dir.join("work"))
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

/// Egress comes from user-mode networking (`slirp4netns`, installed by the test script): a
/// sandbox gets a `tap0` with a default route; a function without egress loses it before its
/// code is loaded.
#[tokio::test]
async fn egress_comes_from_user_mode_networking_and_a_function_can_switch_it_off() {
    const TEST: &str = "egress_comes_from_user_mode_networking_and_a_function_can_switch_it_off";
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::None).await;
    assert!(
        h.backend.egress(),
        "{TEST}: slirp4netns must be on PATH (scripts/install-deps.sh installs it)"
    );
    let routes = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap();
    let default_route = |table: &str| {
        table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000"))
    };

    let with = h.create("egress", Limits::default()).await;
    let pid = h.backend.info(&with.id).expect("info").pid;
    // The monitor lives in the sandbox's network namespace: its routes are the sandbox's.
    assert!(default_route(&routes(pid)), "{}", routes(pid));
    assert!(routes(pid).contains("tap0"));

    let sha = h.put_dir(&probe_fixtures()).await;
    let mut request = crate::support::request(&sha, "probe.main", None);
    request.egress = false;
    h.backend
        .specialize(&with, &request)
        .await
        .expect("specialize");
    assert!(!default_route(&routes(pid)), "{}", routes(pid));
    let (status, _) = get(&with.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200);
    h.backend.shutdown(Duration::from_secs(1)).await;
}

/// Host ports (`hostPorts`): a named port of the host's loopback is reachable at the same
/// port of the instance's own loopback, another host port is not; a function specialized
/// without the port on an instance that had it loses it before its code is loaded; the
/// platform's own listeners are refused even when named.
#[tokio::test]
async fn named_host_ports_are_relayed_and_nothing_else() {
    const TEST: &str = "named_host_ports_are_relayed_and_nothing_else";
    assert!(is_root(), "{TEST}: the sandbox needs root");
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::None).await;
    let (allowed_server, other_server) = (LineEcho::start(), LineEcho::start());
    let (allowed, other) = (allowed_server.port, other_server.port);
    let sha = h.put_dir(&probe_fixtures()).await;
    let probe = |ports: Vec<u16>| {
        let mut request = crate::support::request(&sha, "hostports.main", None);
        request
            .env
            .insert("PROBE_PORTS".into(), format!("{allowed},{other}"));
        request.host_ports = ports;
        request
    };

    // The environment allows the port, and so does the function.
    let mut spec = crate::support::spec("hostports", Limits::default());
    spec.host_ports = vec![allowed];
    let with = h.backend.create(spec.clone()).await.expect("starts");
    h.backend
        .specialize(&with, &probe(vec![allowed]))
        .await
        .expect("specialize");
    let (status, body) = get(&with.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        seen[allowed.to_string()],
        format!("echo {allowed}"),
        "{body}"
    );
    assert_eq!(seen[other.to_string()], "refused", "{body}");

    // A pool instance of the same environment specialized for a function without it.
    spec.id = format!("hostports-{}", uuid::Uuid::new_v4().simple());
    let without = h.backend.create(spec.clone()).await.expect("starts");
    h.backend
        .specialize(&without, &probe(Vec::new()))
        .await
        .expect("specialize");
    let (status, body) = get(&without.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(seen[allowed.to_string()], "refused", "{body}");
    assert_eq!(seen[other.to_string()], "refused", "{body}");

    // The platform's own listener (this test process stands for the platform): refused at
    // create and at specialize, naming the field and the port.
    let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let own_port = own.local_addr().unwrap().port();
    spec.id = format!("hostports-{}", uuid::Uuid::new_v4().simple());
    spec.host_ports = vec![own_port];
    let err = h
        .backend
        .create(spec.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hostPorts") && err.contains(&format!("port {own_port}")),
        "{err}"
    );
    spec.host_ports = Vec::new();
    let plain = h.backend.create(spec).await.expect("starts");
    let err = h
        .backend
        .specialize(&plain, &probe(vec![own_port]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("hostPorts") && err.contains(&format!("port {own_port}")),
        "{err}"
    );
    h.backend.shutdown(Duration::from_secs(1)).await;
}

/// The platform runs a separate helper executable only when it was built from its own sandbox
/// code: this crate's `kappa-sandbox` identifies as such, another program does not.
#[test]
fn only_a_helper_of_the_same_sandbox_code_identifies() {
    assert!(kappa_sandbox::helper::identify(&crate::support::helper()));
    assert!(!kappa_sandbox::helper::identify(std::path::Path::new(
        "/bin/echo"
    )));
    assert!(!kappa_sandbox::helper::identify(std::path::Path::new(
        "/nonexistent/kappa-sandbox"
    )));
}
