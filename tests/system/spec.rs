//! `kappa spec` end to end: the example spec directories (Fission's format and Kappa's) applied
//! to the real `kappa up`, their functions invoked through the router, re-applied, edited,
//! pruned with `--delete` and destroyed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, repo_root};

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
}

/// A copy of `functions/examples/<name>` (the test edits it).
fn example(scratch: &Path, name: &str) -> PathBuf {
    let dst = scratch.join(name);
    copy_dir(&repo_root().join("functions/examples").join(name), &dst);
    dst
}

fn resource_version(p: &Platform, kind: &str, name: &str) -> String {
    let out = p.ok(&[kind, "get", name, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Apply, invoke, re-apply, edit one file, `--delete` a removed function, destroy.
fn lifecycle(name: &str, route: &str, greeting: &str, edit: &str, bye_files: &[&str], bye: &str) {
    let p = Platform::start();
    let scratch = tempfile::tempdir().unwrap();
    let dir = example(scratch.path(), name);
    let specs = dir.join("specs").display().to_string();

    let out = p.ok(&["spec", "apply", "--specdir", &specs, "--wait"]);
    assert!(out.contains("function 'hello' created"), "{out}");
    assert!(out.contains("package 'hello-pkg' is built"), "{out}");
    let r = p.get(&format!("{route}/world"));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("{greeting}, world!\n"));
    let r = p.get("/bye");
    assert_eq!((r.status, r.text()), (200, bye.to_string()));
    let bye_version = resource_version(&p, "fn", "bye");

    let out = p.ok(&["spec", "apply", "--specdir", &specs]);
    assert!(
        out.contains("nothing to apply: all 9 objects are up to date"),
        "{out}"
    );

    // Edit the helper module: hello rolls to the new code, bye is left alone.
    let file = dir.join(edit);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace(greeting, "Howdy")).unwrap();
    let out = p.ok(&["spec", "apply", "--specdir", &specs, "--wait"]);
    assert!(out.contains("package 'hello-pkg' updated"), "{out}");
    assert!(
        out.contains("function 'hello' updated (its package changed)"),
        "{out}"
    );
    assert!(out.contains("function 'bye' unchanged"), "{out}");
    eventually_blocking(Duration::from_secs(60), "the new code to answer", || {
        let r = p.get(&format!("{route}/kappa"));
        (r.status == 200 && r.text() == "Howdy, kappa!\n").then_some(())
    });
    assert_eq!(resource_version(&p, "fn", "bye"), bye_version);
    assert_eq!(p.get("/bye").text(), bye);

    for f in bye_files {
        std::fs::remove_file(dir.join("specs").join(f)).unwrap();
    }
    let out = p.ok(&["spec", "apply", "--specdir", &specs, "--delete"]);
    assert!(out.contains("function 'bye' deleted"), "{out}");
    assert!(out.contains("route 'bye' deleted"), "{out}");
    eventually_blocking(Duration::from_secs(30), "/bye to be gone", || {
        (p.get("/bye").status == 404).then_some(())
    });
    assert_eq!(p.get(&format!("{route}/again")).text(), "Howdy, again!\n");

    let out = p.ok(&["spec", "destroy", "--specdir", &specs]);
    assert!(out.contains("destroyed: 6 objects"), "{out}");
    eventually_blocking(Duration::from_secs(30), "the route to be gone", || {
        (p.get(&format!("{route}/x")).status == 404).then_some(())
    });
    assert!(p.ok(&["spec", "list"]).lines().count() <= 1);
}

#[test]
fn fission_format_spec_directory() {
    lifecycle(
        "spec-fission",
        "/hello",
        "Hello",
        "greet.py",
        &["function-bye.yaml", "route-bye.yaml"],
        "Goodbye!\n",
    );
}

#[test]
fn kappa_format_spec_directory() {
    lifecycle(
        "spec-kappa",
        "/hi",
        "Hi",
        "src/greet.py",
        &["bye.yaml"],
        "Bye!\n",
    );
}

/// An environment the local backend cannot run (Fission's Go image) is refused by the API when
/// the specs are applied (a dry run too), naming the field; nothing is created.
#[test]
fn a_runtime_kappa_up_cannot_run_is_refused() {
    let p = Platform::start();
    let scratch = tempfile::tempdir().unwrap();
    let specs = scratch.path().join("specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("fission-deployment-config.yaml"),
        "kind: DeploymentConfig\nname: hello-go\nuid: a8cdb63c-9be8-4a59-9427-89051afecd7b\n",
    )
    .unwrap();
    std::fs::write(
        specs.join("env.yaml"),
        "apiVersion: fission.io/v1\nkind: Environment\nmetadata:\n  name: go\n  namespace: default\nspec:\n  builder:\n    command: build\n    image: fission/go-builder-1.12:1.5.0\n  keeparchive: false\n  poolsize: 3\n  resources: {}\n  runtime:\n    image: fission/go-env-1.12:1.5.0\n  version: 3\n",
    )
    .unwrap();
    let specs = specs.display().to_string();
    p.ok(&["spec", "validate", "--specdir", &specs]);
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = vec!["spec", "apply", "--specdir", &specs];
        args.extend_from_slice(extra);
        let err = p.fails(&args);
        assert!(
            err.contains("operations[0] (create Environment): \"fission/go-env-1.12:1.5.0\" is not a runtime the local backend runs"),
            "{err}"
        );
        assert!(
            err.contains("field: operations[0].object.spec.runtime.image"),
            "{err}"
        );
    }
    assert_eq!(p.ok(&["env", "list", "-o", "json"]).trim(), "[]");
}
