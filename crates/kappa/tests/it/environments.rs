//! `kappa env`: create, get, list, update, delete; output formats; field errors.

use crate::support::{Platform, without_age};

#[test]
fn env_create_get_list_update_delete() {
    let p = Platform::start();
    let run = p.ok(&[
        "env",
        "create",
        "--name",
        "python",
        "--image",
        "python",
        "--poolsize",
        "2",
        "--mincpu",
        "100",
        "--maxmemory",
        "256",
    ]);
    assert_eq!(run.stdout, "environment 'python' created\n");
    p.ok(&[
        "environment",
        "create",
        "--name",
        "node",
        "--command",
        "node server.js",
        "--builder",
        "npm",
        "--buildcmd",
        "npm ci",
    ]);

    // `get` prints YAML by default, JSON with -o json; both as the API stores them.
    let yaml = p.ok(&["env", "get", "python"]).stdout;
    assert!(yaml.contains("kind: Environment\n"), "{yaml}");
    assert!(yaml.contains("poolsize: 2\n"), "{yaml}");
    let env = p.json(&["env", "get", "--name", "python"]);
    assert_eq!(env["spec"]["runtime"]["image"], "python");
    assert_eq!(env["spec"]["resources"]["requests"]["cpu"], "100m");
    assert_eq!(env["spec"]["resources"]["limits"]["memory"], "256Mi");

    let table = p.ok(&["env", "list"]).stdout;
    assert_eq!(
        without_age(&table),
        "NAME    IMAGE           BUILDER  POOLSIZE  MINCPU  MAXCPU  MINMEMORY  MAXMEMORY\n\
         node    node server.js  npm      3         -       -       -          -\n\
         python  python          -        2         100m    -       -          256Mi\n"
    );
    let one = p.ok(&["env", "get", "python", "-o", "table"]).stdout;
    assert_eq!(one.lines().count(), 2, "{one}");

    // Update changes only the flags given.
    let run = p.ok(&[
        "env",
        "update",
        "--name",
        "python",
        "--poolsize",
        "5",
        "--graceperiod",
        "10",
    ]);
    assert_eq!(run.stdout, "environment 'python' updated\n");
    let env = p.json(&["env", "get", "python"]);
    assert_eq!(env["spec"]["poolsize"], 5);
    assert_eq!(env["spec"]["terminationGracePeriod"], 10);
    assert_eq!(env["spec"]["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(env["spec"]["runtime"]["image"], "python");

    let run = p.ok(&["env", "delete", "python"]);
    assert_eq!(run.stdout, "environment 'python' deleted\n");
    let run = p.kappa(&["env", "get", "python"]);
    run.code(1);
    assert!(
        run.stderr
            .starts_with("error: getting environment 'python': "),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
}

#[test]
fn list_formats_are_the_items() {
    let p = Platform::start();
    p.ok(&["env", "create", "--name", "a", "--image", "python"]);
    p.ok(&["env", "create", "--name", "b", "--image", "nodejs"]);
    let items = p.json(&["env", "list"]);
    let names: Vec<&str> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    let yaml = p.ok(&["env", "list", "-o", "yaml"]).stdout;
    let parsed: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    assert_eq!(parsed, items);
    // -o json on create prints the stored resource instead of the line.
    let created = p.json(&["env", "create", "--name", "c", "--image", "binary"]);
    assert_eq!(created["metadata"]["name"], "c");
    assert!(created["metadata"]["resourceVersion"].is_string());
}

#[test]
fn validation_errors_name_the_field_and_write_nothing() {
    let p = Platform::start();
    let run = p.kappa(&[
        "env",
        "create",
        "--name",
        "python",
        "--image",
        "python",
        "--poolsize",
        "1000",
    ]);
    run.code(1);
    assert_eq!(
        run.stderr,
        "error: creating environment 'python': 1000 is out of range: expected 0 to 100\n  field: spec.poolsize\n"
    );
    assert_eq!(run.stdout, "");

    let run = p.kappa(&["env", "create", "--name", "Python", "--image", "python"]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: metadata.name\n"),
        "{}",
        run.stderr
    );

    let run = p.kappa(&["env", "create", "--name", "python"]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: spec.runtime.image\n"),
        "{}",
        run.stderr
    );

    assert_eq!(p.json(&["env", "list"]), serde_json::json!([]));
}

#[test]
fn delete_in_use_needs_force() {
    let p = Platform::start();
    p.python_env();
    let code = p.file("hello.py", "def main():\n    return 'hi'\n");
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
    let run = p.kappa(&["env", "delete", "python"]);
    run.code(1);
    assert!(
        run.stderr
            .starts_with("error: deleting environment 'python': "),
        "{}",
        run.stderr
    );
    p.ok(&["env", "get", "python"]);
    p.ok(&["env", "delete", "python", "--force"]);
    p.kappa(&["env", "get", "python"]).code(1);
}

#[test]
fn usage_errors_exit_2() {
    let p = Platform::start();
    p.kappa(&["env", "create"]).code(2);
    p.kappa(&["env", "create", "--name", "x", "--poolsize", "many"])
        .code(2);
    p.kappa(&["env", "get"]).code(2);
    p.kappa(&["env", "list", "-o", "xml"]).code(2);
    let run = p.kappa(&["env", "list", "-n", "Not_A_Namespace"]);
    run.code(2);
    assert!(run.stderr.contains("--namespace"), "{}", run.stderr);
}

#[test]
fn namespaces_are_separate() {
    let p = Platform::start();
    p.ok(&[
        "env", "create", "--name", "python", "--image", "python", "-n", "dev",
    ]);
    assert_eq!(p.json(&["env", "list"]), serde_json::json!([]));
    let items = p.json(&["env", "list", "--namespace", "dev"]);
    assert_eq!(items[0]["metadata"]["namespace"], "dev");
}

#[test]
fn pool_policy_flags_set_and_clear_an_adaptive_pool() {
    let p = Platform::start();
    p.ok(&[
        "env",
        "create",
        "--name",
        "python",
        "--image",
        "python",
        "--pool-policy",
        "adaptive",
        "--pool-max",
        "8",
    ]);
    let env = p.json(&["env", "get", "python"]);
    assert_eq!(
        env["spec"]["poolPolicy"],
        serde_json::json!({"mode": "adaptive", "max": 8})
    );
    assert_eq!(env["spec"]["poolsize"], 3, "the starting size, as before");
    let table = p.ok(&["env", "list"]).stdout;
    assert!(table.contains(" auto 0-8 "), "{table}");

    // Bounds are checked; a refused update changes nothing.
    let run = p.kappa(&["env", "update", "--name", "python", "--pool-min", "9"]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: spec.poolPolicy.min\n"),
        "{}",
        run.stderr
    );
    assert_eq!(
        p.json(&["env", "get", "python"])["spec"]["poolPolicy"]["min"],
        serde_json::Value::Null
    );

    // Back to a fixed pool: the policy goes, poolsize pins the pool again.
    p.ok(&[
        "env",
        "update",
        "--name",
        "python",
        "--pool-policy",
        "fixed",
    ]);
    let env = p.json(&["env", "get", "python"]);
    assert!(env["spec"].get("poolPolicy").is_none(), "{env}");

    // Bounds on a fixed pool would be ignored: refused.
    let run = p.kappa(&[
        "env",
        "create",
        "--name",
        "node",
        "--image",
        "nodejs",
        "--pool-min",
        "1",
    ]);
    run.code(1);
    assert!(
        run.stderr.ends_with("  field: spec.poolPolicy.min\n"),
        "{}",
        run.stderr
    );
}
