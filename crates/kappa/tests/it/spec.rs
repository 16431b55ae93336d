//! `kappa spec`: apply, re-apply, edit, `--delete`, destroy and list against the real API, with
//! the example spec directories of `functions/examples/spec-*` (copied, since the tests edit
//! them); validation errors with file:line; `--spec` on create commands.

use std::path::{Path, PathBuf};

use kappa_test_support::eventually_blocking;
use serde_json::Value;

use crate::support::{Platform, run};

/// The example directory `functions/examples/<name>`, copied into the platform's scratch dir.
fn example(p: &Platform, name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../functions/examples")
        .join(name);
    let dst = p.dir.path().join("work").join(name);
    copy_dir(&src, &dst);
    dst
}

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

fn specdir(dir: &Path) -> String {
    dir.join("specs").display().to_string()
}

fn get(p: &Platform, kind: &str, name: &str) -> Value {
    p.json(&[kind, "get", name])
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The whole life of a spec directory: apply, re-apply (nothing), edit one file (only its
/// package and function change), remove a function and `--delete`, destroy.
fn lifecycle(example_name: &str, uid: &str, edit: &str, route: &str, bye_files: &[&str]) {
    let p = Platform::start();
    let dir = example(&p, example_name);
    let specs = specdir(&dir);

    let out = p.ok(&["spec", "validate", "--specdir", &specs]).stdout;
    assert!(out.contains("are valid"), "{out}");

    // A dry run changes nothing.
    let out = p
        .ok(&["spec", "apply", "--specdir", &specs, "--dry-run"])
        .stdout;
    assert!(out.contains("function 'hello' would be created"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert_eq!(p.json(&["fn", "list"]), Value::Array(vec![]));
    assert_eq!(p.archive_uploads(), 0);

    let out = p.ok(&["spec", "apply", "--specdir", &specs]).stdout;
    for line in [
        "environment 'python' created",
        "package 'hello-pkg' created",
        "function 'hello' created",
        "function 'bye' created",
        "route 'hello' created",
        "time trigger 'nightly' created",
        "message queue trigger 'orders' created",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
    assert_eq!(p.archive_uploads(), 2, "{out}");
    let hello = get(&p, "fn", "hello");
    assert_eq!(hello["metadata"]["labels"]["kappa.dev/deployment-uid"], uid);
    let hello_pkg = get(&p, "pkg", "hello-pkg");
    assert_eq!(hello_pkg["status"]["buildstatus"], "pending");
    assert_eq!(
        hello["spec"]["package"]["packageref"]["resourceversion"],
        hello_pkg["metadata"]["resourceVersion"],
        "the function is pinned to its package's version"
    );
    let route_obj = get(&p, "route", "hello");
    assert_eq!(route_obj["spec"]["relativeurl"], route);
    let mqt = get(&p, "mqt", "orders");
    assert_eq!(mqt["spec"]["messageQueueType"], "nats-jetstream");
    let bye = get(&p, "fn", "bye");

    // Again: nothing changes, and it says so.
    let out = p.ok(&["spec", "apply", "--specdir", &specs]).stdout;
    assert!(out.contains("nothing to apply"), "{out}");
    assert_eq!(p.archive_uploads(), 2, "no upload for unchanged archives");
    assert_eq!(rv(&get(&p, "fn", "hello")), rv(&hello));

    // Edit one source file: only hello's package and function change.
    let file = dir.join(edit);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n# edited\n")).unwrap();
    let out = p.ok(&["spec", "apply", "--specdir", &specs]).stdout;
    assert!(out.contains("package 'hello-pkg' updated"), "{out}");
    assert!(
        out.contains("function 'hello' updated (its package changed)"),
        "{out}"
    );
    assert!(out.contains("function 'bye' unchanged"), "{out}");
    assert!(
        out.contains("applied: 0 created, 2 updated, 0 deleted"),
        "{out}"
    );
    assert_eq!(p.archive_uploads(), 3);
    assert_eq!(rv(&get(&p, "fn", "bye")), rv(&bye));
    let hello2 = get(&p, "fn", "hello");
    assert_ne!(rv(&hello2), rv(&hello));
    assert_eq!(
        hello2["spec"]["package"]["packageref"]["resourceversion"],
        get(&p, "pkg", "hello-pkg")["metadata"]["resourceVersion"]
    );

    // Remove bye (package, function, route) from the specs; without --delete it stays.
    for file in bye_files {
        std::fs::remove_file(dir.join("specs").join(file)).unwrap();
    }
    let out = p.ok(&["spec", "apply", "--specdir", &specs]).stdout;
    assert!(out.contains("nothing to apply"), "{out}");
    get(&p, "fn", "bye");
    let out = p
        .ok(&["spec", "apply", "--specdir", &specs, "--delete"])
        .stdout;
    for line in [
        "function 'bye' deleted",
        "package 'bye-pkg' deleted",
        "route 'bye' deleted",
        "applied: 0 created, 0 updated, 3 deleted, 6 unchanged",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
    p.kappa(&["fn", "get", "bye"]).code(1);

    let list = p.ok(&["spec", "list"]).stdout;
    assert!(list.contains(uid), "{list}");
    assert!(list.contains(" 6 "), "6 objects left: {list}");

    let out = p.ok(&["spec", "destroy", "--specdir", &specs]).stdout;
    assert!(out.contains("destroyed: 6 objects"), "{out}");
    assert_eq!(p.json(&["tt", "list"]), Value::Array(vec![]));
    for kind in ["fn", "pkg", "env", "route"] {
        assert_eq!(p.json(&[kind, "list"]), Value::Array(vec![]), "{kind}");
    }
    let out = p.ok(&["spec", "destroy", "--specdir", &specs]).stdout;
    assert!(out.contains("nothing to destroy"), "{out}");
}

#[test]
fn spec_lifecycle_fission_format() {
    lifecycle(
        "spec-fission",
        "3f2c9a4e-7b1d-4c8e-9f00-5a6b7c8d9e01",
        "greet.py",
        "/hello/{name}",
        &["function-bye.yaml", "route-bye.yaml"],
    );
}

#[test]
fn spec_lifecycle_kappa_format() {
    lifecycle(
        "spec-kappa",
        "8d0e4b7a-2c51-4f3e-8a9b-1c2d3e4f5a6b",
        "src/greet.py",
        "/hi/{name}",
        &["bye.yaml"],
    );
}

#[test]
fn validate_reports_every_problem_with_file_and_line() {
    let p = Platform::start();
    let specs = p.dir.path().join("work/bad/specs");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::write(
        specs.join("deploy.yaml"),
        "apiVersion: fission.io/v1\nkind: DeploymentConfig\nname: bad\nuid: 3f2c9a4e-7b1d-4c8e-9f00-5a6b7c8d9e02\n",
    )
    .unwrap();
    let bad = "\
apiVersion: fission.io/v1
kind: Environment
metadata:
  name: python
spec:
  runtime:
    image: fission/python-env
  version: 3
  allowedFunctionsPerContainer: infinite
---
apiVersion: fission.io/v1
kind: CanaryConfig
metadata:
  name: canary
spec:
  trigger: hello
---
apiVersion: fission.io/v1
kind: MessageQueueTrigger
metadata:
  name: orders
spec:
  functionref:
    name: bye
    type: name
  messageQueueType: rabbitmq
  topic: orders
  mqtkind: keda
---
apiVersion: fission.io/v1
kind: Function
metadata:
  name: f
spec:
  environment:
    name: python
  package:
    functionName: f.main
    packageref:
      name: missing-pkg
---
apiVersion: fission.io/v1
kind: Function
metadata:
  name: g
spec:
  environment:
    name: python
  package:
    functionName: g.main
    packageref:
      name: missing-pkg
  InvokeStrategy:
    ExecutionStrategy:
      ExecutorType: container
  streaming:
    protocol: sse
---
apiVersion: kappa.dev/v1
kind: HttpTrigger
metadata:
  name: r
spec:
  relativeurl: no-slash
  functionref:
    name: f
";
    std::fs::write(specs.join("bad.yaml"), bad).unwrap();
    // The 1-based line of the `n`th line containing `needle`.
    let line = |needle: &str, n: usize| {
        bad.lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .nth(n)
            .map(|(i, _)| i + 1)
            .unwrap()
    };
    let specs = specs.display().to_string();
    let run = p.kappa(&["spec", "validate", "--specdir", &specs]);
    run.code(1);
    let err = &run.stderr;
    for expected in [
        format!(
            "bad.yaml:{} (document 1): error: spec.allowedFunctionsPerContainer: \"infinite\" is not supported",
            line("allowedFunctionsPerContainer", 0)
        ),
        format!(
            "bad.yaml:{} (document 2): error: spec.newfunction: missing",
            line("trigger: hello", 0) - 1
        ),
        format!(
            "bad.yaml:{} (document 3): error: spec.messageQueueType: \"rabbitmq\"",
            line("messageQueueType", 0)
        ),
        format!(
            "bad.yaml:{} (document 5): error: spec.InvokeStrategy.ExecutionStrategy.ExecutorType: \"container\" is not supported",
            line("ExecutorType", 0)
        ),
        format!(
            "bad.yaml:{} (document 5): error: spec.streaming: unknown or unsupported field",
            line("streaming:", 0)
        ),
        format!(
            "bad.yaml:{} (document 6): error: spec.relativeurl:",
            line("relativeurl", 0)
        ),
        format!(
            "bad.yaml:{} (document 4): error: Function f: package default/missing-pkg (spec.package.packageref) is not defined in the specs",
            line("name: f", 0)
        ),
        "has 8 errors".to_string(),
    ] {
        assert!(err.contains(&expected), "{expected:?} missing in:\n{err}");
    }
    // apply refuses the same way, before talking to the platform.
    p.kappa(&["spec", "apply", "--specdir", &specs]).code(1);
    assert_eq!(p.json(&["env", "list"]), Value::Array(vec![]));
}

#[test]
fn init_and_create_commands_with_spec_write_a_directory_that_applies() {
    let p = Platform::start();
    let work = p.dir.path().join("work/proj");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("hello.py"), "def main():\n    return 'hi'\n").unwrap();
    let in_work = |args: &[&str]| {
        let mut cmd = p.command(args);
        cmd.current_dir(&work);
        let r = run(cmd);
        r.code(0);
        r.stdout
    };
    let out = in_work(&["spec", "init", "--name", "proj"]);
    assert!(out.contains("spec directory specs created"), "{out}");
    assert!(work.join("specs/README").is_file());
    let again = {
        let mut cmd = p.command(&["spec", "init"]);
        cmd.current_dir(&work);
        run(cmd)
    };
    again.code(1);
    assert!(
        again.stderr.contains("already has a DeploymentConfig"),
        "{}",
        again.stderr
    );

    in_work(&[
        "env", "create", "--name", "python", "--image", "python", "--spec",
    ]);
    in_work(&[
        "fn", "create", "--name", "hello", "--env", "python", "--code", "hello.py", "--url",
        "/hello", "--spec",
    ]);
    in_work(&[
        "tt",
        "create",
        "--name",
        "tick",
        "--function",
        "hello",
        "--cron",
        "@every 1h",
        "--spec",
    ]);
    // Nothing was created on the platform.
    assert_eq!(p.json(&["fn", "list"]), Value::Array(vec![]));
    assert_eq!(p.json(&["env", "list"]), Value::Array(vec![]));

    let out = in_work(&["spec", "apply"]);
    assert!(out.contains("function 'hello' created"), "{out}");
    assert!(out.contains("time trigger 'tick' created"), "{out}");
    let f = p.json(&["fn", "get", "hello"]);
    assert_eq!(f["spec"]["package"]["functionName"], "");
    let out = in_work(&["spec", "apply"]);
    assert!(out.contains("nothing to apply"), "{out}");
}

#[test]
fn an_object_of_another_deployment_is_not_taken_over() {
    let p = Platform::start();
    p.python_env();
    let dir = example(&p, "spec-kappa");
    let run = p.kappa(&["spec", "apply", "--specdir", &specdir(&dir)]);
    run.code(1);
    assert!(
        run.stderr
            .contains("Environment default/python exists and is not part of this deployment"),
        "{}",
        run.stderr
    );
    assert_eq!(p.json(&["fn", "list"]), Value::Array(vec![]));
}

#[test]
fn watch_applies_again_after_a_file_changes() {
    use std::process::Stdio;
    use std::time::Duration;

    let p = Platform::start();
    let dir = example(&p, "spec-kappa");
    let mut child = p
        .command(&["spec", "apply", "--watch", "--specdir", &specdir(&dir)])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = eventually_blocking(Duration::from_secs(60), "the first apply", || {
        let r = p.kappa(&["pkg", "get", "hello-pkg", "-o", "json"]);
        (r.code == 0).then(|| rv(&r.json()))
    });
    let file = dir.join("src/greet.py");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}\n# edited\n")).unwrap();
    eventually_blocking(
        Duration::from_secs(60),
        "the package to be applied again",
        || {
            let now = rv(&get(&p, "pkg", "hello-pkg"));
            (now != first).then_some(())
        },
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
