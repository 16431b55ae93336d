//! Secrets and config maps placed for an instance: readable by it, read-only, and invisible to
//! any other instance.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kappa_core::{Backend, ConfigKind, ConfigVolume, FunctionId, Limits};
use kappa_local::{CgroupMode, SandboxMode};

use crate::support::{Harness, get, is_root, request};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config")
}

fn volumes() -> Vec<ConfigVolume> {
    vec![
        ConfigVolume {
            kind: ConfigKind::Secret,
            namespace: "default".into(),
            name: "db".into(),
            entries: BTreeMap::from([("password".to_owned(), b"hunter2".to_vec())]),
        },
        ConfigVolume {
            kind: ConfigKind::ConfigMap,
            namespace: "default".into(),
            name: "app".into(),
            entries: BTreeMap::from([("mode".to_owned(), b"fast".to_vec())]),
        },
    ]
}

/// Specializes a new instance with the probe and `files`; returns the probe's report.
async fn probe(h: &Harness, function: &str, files: Vec<ConfigVolume>) -> serde_json::Value {
    let instance = h.create(function, Limits::default()).await;
    let sha = h.put_dir(&fixtures()).await;
    let mut req = request(&sha, "config_probe.main", None);
    req.function = FunctionId::new("default", function);
    req.files = files;
    h.backend
        .specialize(&instance, &req)
        .await
        .expect("specialize");
    let (status, body) = get(&instance.addr, "/").await.expect("probe answers");
    assert_eq!(status, 200, "{body}");
    eprintln!("{function}: {body}");
    let mut report: serde_json::Value = serde_json::from_str(&body).expect("probe JSON");
    report["instance_dir"] = h
        .backend
        .info(&instance.id)
        .expect("info")
        .dir
        .display()
        .to_string()
        .into();
    report
}

#[tokio::test]
async fn sandboxed_secrets_are_read_only_and_private_to_the_instance() {
    const TEST: &str = "sandboxed_secrets_are_read_only_and_private_to_the_instance";
    assert!(
        is_root(),
        "{TEST}: the sandbox needs the platform to run as root"
    );
    let h = Harness::with(TEST, SandboxMode::Namespaces, CgroupMode::None).await;
    assert!(h.backend.sandboxed());
    let owner = probe(&h, "owner", volumes()).await;
    assert_eq!(owner["secrets_dir"], "/secrets");
    assert_eq!(owner["configs_dir"], "/configs");
    assert_eq!(owner["password"], "hunter2");
    assert_eq!(owner["mode"], "fast");
    assert_eq!(owner["secrets"], serde_json::json!(["default/db/password"]));
    let read_only = |key: &str| {
        owner[key]
            .as_str()
            .is_some_and(|v| v.starts_with("denied: Read-only file system"))
    };
    assert!(read_only("write_secret"), "{}", owner["write_secret"]);
    assert!(read_only("add_secret"), "{}", owner["add_secret"]);
    assert!(read_only("write_config"), "{}", owner["write_config"]);

    // On the host: the files carry their modes, and the value is unchanged.
    let dir = PathBuf::from(owner["instance_dir"].as_str().unwrap());
    let secret = dir.join("secrets/default/db/password");
    assert_eq!(std::fs::read(&secret).unwrap(), b"hunter2");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&secret), 0o400);
    assert_eq!(mode(&dir.join("configs/default/app/mode")), 0o440);

    // Another function's instance sees none of it.
    let other = probe(&h, "other", Vec::new()).await;
    assert_eq!(other["secrets"], serde_json::json!([]));
    assert_eq!(other["configs"], serde_json::json!([]));
    assert_eq!(other["password"], "error: No such file or directory");
    h.backend.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn without_a_sandbox_the_runtime_is_told_where_its_secrets_are() {
    const TEST: &str = "without_a_sandbox_the_runtime_is_told_where_its_secrets_are";
    let h = Harness::with(TEST, SandboxMode::None, CgroupMode::None).await;
    let owner = probe(&h, "owner", volumes()).await;
    let dir = PathBuf::from(owner["instance_dir"].as_str().unwrap());
    assert_eq!(
        owner["secrets_dir"],
        dir.join("secrets").display().to_string()
    );
    assert_eq!(
        owner["configs_dir"],
        dir.join("configs").display().to_string()
    );
    assert_eq!(owner["password"], "hunter2");
    assert_eq!(owner["mode"], "fast");
    if !is_root() {
        // Root ignores file modes; anyone else is refused by the 0400 mode.
        assert!(
            owner["write_secret"]
                .as_str()
                .is_some_and(|v| v.starts_with("denied")),
            "{}",
            owner["write_secret"]
        );
    }
    // Another instance's own directory holds nothing of it.
    let other = probe(&h, "other", Vec::new()).await;
    assert_eq!(other["secrets"], serde_json::json!([]));
    assert_ne!(other["secrets_dir"], owner["secrets_dir"]);
    h.backend.shutdown(Duration::from_secs(1)).await;
}
