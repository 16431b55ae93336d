//! Builds end to end: success, failure with its log, timeout, de-duplication, restart, nothing
//! to build, an unsafe source.

use std::io::Write as _;
use std::time::Duration;

use kappa_test_support::eventually;
use kappa_types::{Archive, BuildStatus};

use crate::support::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_command_produces_the_deployment_archive() {
    let mut env = Env::new().await;
    env.start(env.config());
    let source = env
        .source(&[("main.py", "def main():\n    return 'hi'\n")])
        .await;
    env.package(
        "p",
        &source,
        Some("echo building; echo \"$SRC_PKG\" > where.txt; mkdir -p lib && echo x > lib/dep.py"),
        "pending",
    )
    .await;
    let p = env.wait_for("p", &["succeeded", "failed"]).await;
    assert_eq!(
        p.status.buildstatus,
        BuildStatus::Succeeded,
        "{}",
        p.status.buildlog
    );
    assert!(
        p.status.buildlog.contains("building"),
        "{}",
        p.status.buildlog
    );
    assert!(p.status.last_update_timestamp.is_some());
    // The source and the command are kept; the deployment is the built tree.
    assert_eq!(p.spec.source.as_ref(), Some(&source));
    assert!(
        p.spec
            .buildcmd
            .as_deref()
            .unwrap()
            .starts_with("echo building")
    );
    let deployment = p.spec.deployment.clone().unwrap();
    assert_ne!(deployment, source);
    let dir = env.files(&deployment).await;
    assert!(dir.join("main.py").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("lib/dep.py")).unwrap(),
        "x\n"
    );
    let wher = std::fs::read_to_string(dir.join("where.txt")).unwrap();
    if env.sandbox.sandboxed() {
        assert_eq!(wher, "/build/src\n");
    } else {
        assert!(wher.ends_with("/src\n"), "{wher}");
    }
    // The build directory is gone.
    let work = env.dir.path().join("builds/work");
    eventually(
        Duration::from_secs(10),
        "the build directory to be removed",
        || std::fs::read_dir(&work).unwrap().next().is_none(),
    )
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_build_keeps_its_log_and_writes_no_deployment() {
    let mut env = Env::new().await;
    env.start(env.config());
    let source = env.source(&[("main.py", "")]).await;
    env.package(
        "bad",
        &source,
        Some("echo something broke >&2; exit 3"),
        "pending",
    )
    .await;
    let p = env.wait_for("bad", &["succeeded", "failed"]).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Failed);
    let log = &p.status.buildlog;
    assert!(log.contains("something broke"), "{log}");
    assert!(log.contains("exited with code 3"), "{log}");
    assert!(
        log.contains("$ echo something broke"),
        "the command is shown: {log}"
    );
    assert!(p.spec.deployment.is_none());
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_over_the_timeout_fails() {
    let mut env = Env::new().await;
    let mut config = env.config();
    config.timeout = Duration::from_secs(1);
    env.start(config);
    let source = env.source(&[("main.py", "")]).await;
    env.package("slow", &source, Some("echo waiting; sleep 60"), "pending")
        .await;
    let p = env.wait_for("slow", &["succeeded", "failed"]).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Failed);
    assert!(
        p.status.buildlog.contains("waiting"),
        "{}",
        p.status.buildlog
    );
    assert!(
        p.status
            .buildlog
            .contains("longer than the build timeout of 1 s"),
        "{}",
        p.status.buildlog
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_builds_reuse_the_archive() {
    let mut env = Env::new().await;
    env.start(env.config());
    let source = env.source(&[("main.py", "print(1)\n")]).await;
    let cmd = "date +%s%N > stamp.txt";
    env.package("first", &source, Some(cmd), "pending").await;
    let first = env.wait_for("first", &["succeeded", "failed"]).await;
    assert_eq!(first.status.buildstatus, BuildStatus::Succeeded);
    env.package("second", &source, Some(cmd), "pending").await;
    let second = env.wait_for("second", &["succeeded", "failed"]).await;
    assert_eq!(second.status.buildstatus, BuildStatus::Succeeded);
    assert_eq!(second.spec.deployment, first.spec.deployment);
    assert!(
        second
            .status
            .buildlog
            .contains("reused the deployment archive"),
        "{}",
        second.status.buildlog
    );
    // Another command is another build.
    env.package("third", &source, Some("date +%s%N > other.txt"), "pending")
        .await;
    let third = env.wait_for("third", &["succeeded", "failed"]).await;
    assert_ne!(third.spec.deployment, first.spec.deployment);
    assert!(!third.status.buildlog.contains("reused"));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_left_running_is_built_again_at_start() {
    let mut env = Env::new().await;
    let source = env.source(&[("main.py", "")]).await;
    env.package("crashed", &source, Some("touch done"), "running")
        .await;
    env.start(env.config());
    let p = env.wait_for("crashed", &["succeeded", "failed"]).await;
    assert_eq!(
        p.status.buildstatus,
        BuildStatus::Succeeded,
        "{}",
        p.status.buildlog
    );
    assert!(
        env.files(p.spec.deployment.as_ref().unwrap())
            .await
            .join("done")
            .is_file()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_command_or_manifest_the_source_is_deployed() {
    let mut env = Env::new().await;
    env.start(env.config());
    let source = env.source(&[("main.py", "")]).await;
    env.package("plain", &source, None, "pending").await;
    let p = env.wait_for("plain", &["succeeded", "failed"]).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Succeeded);
    assert_eq!(p.spec.deployment.as_ref(), Some(&source));
    assert!(
        p.status.buildlog.contains("nothing to build"),
        "{}",
        p.status.buildlog
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_source_archive_is_refused() {
    let mut env = Env::new().await;
    env.start(env.config());
    let mut bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file("main.py", opts).unwrap();
        zip.write_all(b"x").unwrap();
        zip.start_file("../../escape.py", opts).unwrap();
        zip.write_all(b"pwned").unwrap();
        zip.finish().unwrap();
    }
    // The store refuses such an upload; one stored before uploads were checked (written
    // straight into the blob directory here) still reaches the builder, which refuses it too.
    assert!(env.archives.put_bytes(&bytes).await.is_err());
    let sha = kappa_archive::sha256_hex(&bytes);
    std::fs::write(env.dir.path().join("archives/blobs").join(&sha), &bytes).unwrap();
    env.package(
        "evil",
        &Archive::stored(&sha, None),
        Some("true"),
        "pending",
    )
    .await;
    let p = env.wait_for("evil", &["succeeded", "failed"]).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Failed);
    assert!(
        p.status.buildlog.contains("refused"),
        "{}",
        p.status.buildlog
    );
    assert!(p.status.buildlog.contains(".."), "{}", p.status.buildlog);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_builds_afresh_with_one_build_slot() {
    use kappa_store::{Precondition, Store as _};
    let mut env = Env::new().await;
    let mut config = env.config();
    config.parallelism = 1;
    env.start(config);
    let source = env.source(&[("main.py", "")]).await;
    let cmd = "sleep 1; date +%s%N > stamp.txt";
    env.package("a", &source, Some(cmd), "pending").await;
    env.package("b", &source, Some("sleep 1"), "pending").await;
    let a = env.wait_for("a", &["succeeded", "failed"]).await;
    let b = env.wait_for("b", &["succeeded", "failed"]).await;
    assert_eq!(a.status.buildstatus, BuildStatus::Succeeded);
    assert_eq!(b.status.buildstatus, BuildStatus::Succeeded);

    // `pkg rebuild`: pending again with the deployment kept; a fresh build, not the index's.
    env.store
        .put_status(
            kappa_types::Kind::Package,
            "default",
            "a",
            serde_json::json!({"buildstatus": "pending"}),
            Precondition::MustExist,
        )
        .await
        .unwrap();
    let again = env.wait_for("a", &["succeeded", "failed"]).await;
    assert_eq!(again.status.buildstatus, BuildStatus::Succeeded);
    assert!(
        !again.status.buildlog.contains("reused"),
        "{}",
        again.status.buildlog
    );
    assert_ne!(again.spec.deployment, a.spec.deployment);
    env.stop().await;
}
