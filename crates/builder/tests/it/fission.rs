//! Fission's build layout: `$SRC_PKG` is the source (and the working directory), `$DEPLOY_PKG`
//! a distinct path that does not exist before the build and is what gets deployed.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use kappa_types::{Archive, BuildStatus};

use crate::support::Env;

/// Fission's Python environment's `build` script, verbatim (fission/environments, python).
const FISSION_PYTHON_BUILD_SH: &str = "#!/bin/sh\n\
pip3 install -r ${SRC_PKG}/requirements.txt -t ${SRC_PKG} && cp -r ${SRC_PKG} ${DEPLOY_PKG}\n";

/// A minimal pure-Python wheel, so pip installs a dependency without a network.
fn wheel() -> Vec<u8> {
    let files = [
        ("kappa_dep/__init__.py", "VALUE = 42\n"),
        (
            "kappa_dep-1.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: kappa-dep\nVersion: 1.0\n",
        ),
        (
            "kappa_dep-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: kappa-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
        (
            "kappa_dep-1.0.dist-info/RECORD",
            "kappa_dep/__init__.py,,\nkappa_dep-1.0.dist-info/METADATA,,\n\
             kappa_dep-1.0.dist-info/WHEEL,,\nkappa_dep-1.0.dist-info/RECORD,,\n",
        ),
    ];
    let mut bytes = Vec::new();
    {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(&mut bytes));
        let opts = zip::write::SimpleFileOptions::default();
        for (name, text) in files {
            zip.start_file(name, opts).unwrap();
            zip.write_all(text.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
    }
    bytes
}

/// Stores a source directory written by `write` as a zip.
async fn source_dir(env: &Env, write: impl FnOnce(&Path)) -> Archive {
    let src = tempfile::tempdir().unwrap();
    write(src.path());
    let zip = kappa_archive::pack_dir(src.path()).unwrap();
    let info = env.archives.put_bytes(&zip).await.unwrap();
    Archive::stored(&info.sha256, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fissions_python_build_sh_runs_unchanged() {
    let mut env = Env::new().await;
    env.start(env.config());
    let source = source_dir(&env, |dir| {
        std::fs::write(
            dir.join("main.py"),
            "import kappa_dep\n\ndef main():\n    return str(kappa_dep.VALUE)\n",
        )
        .unwrap();
        std::fs::create_dir(dir.join("wheels")).unwrap();
        std::fs::write(dir.join("wheels/kappa_dep-1.0-py3-none-any.whl"), wheel()).unwrap();
        std::fs::write(
            dir.join("requirements.txt"),
            "./wheels/kappa_dep-1.0-py3-none-any.whl\n",
        )
        .unwrap();
        let script = dir.join("build.sh");
        std::fs::write(&script, FISSION_PYTHON_BUILD_SH).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    })
    .await;
    // As a Fission user deploys it: `--buildcmd ./build.sh`.
    env.package("py", &source, Some("./build.sh"), "pending")
        .await;
    let p = env.wait_for("py", &["succeeded", "failed"]).await;
    assert_eq!(
        p.status.buildstatus,
        BuildStatus::Succeeded,
        "{}",
        p.status.buildlog
    );
    assert!(
        !p.status.buildlog.contains("$DEPLOY_PKG was not created"),
        "{}",
        p.status.buildlog
    );
    // `cp -r $SRC_PKG $DEPLOY_PKG` with DEPLOY_PKG absent made DEPLOY_PKG a copy of the
    // source with the installed dependency, at the archive's root.
    let dir = env.files(p.spec.deployment.as_ref().unwrap()).await;
    assert!(dir.join("main.py").is_file());
    assert!(dir.join("build.sh").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("kappa_dep/__init__.py")).unwrap(),
        "VALUE = 42\n"
    );
    assert!(
        !dir.join("src").exists() && !dir.join("deploy").exists(),
        "no nesting"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_pkg_is_distinct_absent_before_and_is_what_is_deployed() {
    let mut env = Env::new().await;
    env.start(env.config());
    let source = env.source(&[("main.py", "x")]).await;
    let cmd = "test \"$PWD\" = \"$SRC_PKG\" || { echo \"cwd $PWD is not SRC_PKG $SRC_PKG\"; exit 1; }\n\
               test \"$SRC_PKG\" != \"$DEPLOY_PKG\" || { echo same; exit 1; }\n\
               test -f \"$SRC_PKG/main.py\" || { echo no source; exit 1; }\n\
               test ! -e \"$DEPLOY_PKG\" || { echo DEPLOY_PKG exists; exit 1; }\n\
               echo \"src=$SRC_PKG deploy=$DEPLOY_PKG\"\n\
               mkdir \"$DEPLOY_PKG\" && echo only > \"$DEPLOY_PKG/only.txt\"";
    env.package("d", &source, Some(cmd), "pending").await;
    let p = env.wait_for("d", &["succeeded", "failed"]).await;
    assert_eq!(
        p.status.buildstatus,
        BuildStatus::Succeeded,
        "{}",
        p.status.buildlog
    );
    if env.sandbox.sandboxed() {
        assert!(
            p.status
                .buildlog
                .contains("src=/build/src deploy=/build/deploy"),
            "{}",
            p.status.buildlog
        );
    }
    let dir = env.files(p.spec.deployment.as_ref().unwrap()).await;
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["only.txt"], "only DEPLOY_PKG is deployed");

    // A file at DEPLOY_PKG (a compiled binary, say) is deployed as that one file.
    env.package("f", &source, Some("cp main.py \"$DEPLOY_PKG\""), "pending")
        .await;
    let p = env.wait_for("f", &["succeeded", "failed"]).await;
    assert_eq!(
        p.status.buildstatus,
        BuildStatus::Succeeded,
        "{}",
        p.status.buildlog
    );
    let dir = env.files(p.spec.deployment.as_ref().unwrap()).await;
    assert_eq!(std::fs::read_to_string(dir.join("deploy")).unwrap(), "x");

    // A build that leaves DEPLOY_PKG alone deploys the source as it left it, and says so.
    env.package("s", &source, Some("echo y > extra.txt"), "pending")
        .await;
    let p = env.wait_for("s", &["succeeded", "failed"]).await;
    assert_eq!(p.status.buildstatus, BuildStatus::Succeeded);
    assert!(
        p.status.buildlog.contains("$DEPLOY_PKG was not created"),
        "{}",
        p.status.buildlog
    );
    let dir = env.files(p.spec.deployment.as_ref().unwrap()).await;
    assert!(dir.join("main.py").is_file() && dir.join("extra.txt").is_file());
    env.stop().await;
}
