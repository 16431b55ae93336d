//! `kappa pkg` (alias `package`).

use crate::support::{Platform, without_age};

#[test]
fn pkg_create_get_info_list_update_delete() {
    let p = Platform::start();
    p.python_env();
    let code = p.file("hello.py", "def main():\n    return 'hi'\n");
    let run = p.ok(&[
        "pkg",
        "create",
        "--name",
        "hello-pkg",
        "--env",
        "python",
        "--code",
        code.to_str().unwrap(),
    ]);
    assert_eq!(run.stdout, "package 'hello-pkg' created\n");

    let pkg = p.json(&["package", "get", "hello-pkg"]);
    assert_eq!(pkg["spec"]["environment"]["name"], "python");
    assert_eq!(pkg["spec"]["deployment"]["filename"], "hello.py");
    assert_eq!(pkg["status"]["buildstatus"], "none");
    let sha = pkg["spec"]["deployment"]["checksum"]["sum"]
        .as_str()
        .unwrap();

    let info = p.ok(&["pkg", "info", "--name", "hello-pkg"]).stdout;
    let expected_deployment = format!("Deployment:  archive://sha256/{sha} (hello.py)\n");
    assert!(info.starts_with("Name:        hello-pkg\n"), "{info}");
    assert!(info.contains(&expected_deployment), "{info}");
    assert!(info.contains("Status:      none\n"), "{info}");
    assert!(info.contains("Build log:   -\n"), "{info}");

    assert_eq!(
        without_age(&p.ok(&["pkg", "list"]).stdout),
        "NAME       ENV     STATUS  FUNCTION\n\
         hello-pkg  python  none    -\n"
    );

    // A function can use it; then it cannot be deleted without --force.
    p.ok(&["fn", "create", "--name", "hello", "--pkg", "hello-pkg"]);
    p.kappa(&["pkg", "delete", "hello-pkg"]).code(1);

    let v2 = p.file("v2/hello.py", "def main():\n    return 'v2'\n");
    let run = p.ok(&[
        "pkg",
        "update",
        "--name",
        "hello-pkg",
        "--code",
        v2.to_str().unwrap(),
    ]);
    assert_eq!(run.stdout, "package 'hello-pkg' updated\n");
    let updated = p.json(&["pkg", "get", "hello-pkg"]);
    assert_ne!(
        updated["spec"]["deployment"]["checksum"]["sum"]
            .as_str()
            .unwrap(),
        sha
    );

    p.ok(&["fn", "delete", "hello"]);
    // The package was not made by `fn create`: deleting the function keeps it.
    p.ok(&["pkg", "get", "hello-pkg"]);
    assert_eq!(
        p.ok(&["pkg", "delete", "hello-pkg"]).stdout,
        "package 'hello-pkg' deleted\n"
    );
    assert_eq!(p.json(&["pkg", "list"]), serde_json::json!([]));
}

#[test]
fn generated_name_and_source_with_buildcmd() {
    let p = Platform::start();
    p.python_env();
    p.file("src/main.py", "def main():\n    return 'hi'\n");
    p.file("src/requirements.txt", "");
    let src = p.dir.path().join("work/src");
    let run = p.ok(&[
        "pkg",
        "create",
        "--env",
        "python",
        "--src",
        src.to_str().unwrap(),
        "--buildcmd",
        "./build.sh",
    ]);
    let name = run
        .stdout
        .strip_prefix("package '")
        .and_then(|s| s.strip_suffix("' created\n"))
        .unwrap()
        .to_string();
    assert!(name.starts_with("src-"), "{name}");
    let pkg = p.json(&["pkg", "get", &name]);
    assert!(pkg["spec"]["source"]["url"].is_string(), "{pkg}");
    assert_eq!(pkg["spec"]["buildcmd"], "./build.sh");
    assert_eq!(pkg["status"]["buildstatus"], "pending");
    let info = p.ok(&["pkg", "info", &name]).stdout;
    assert!(info.contains("Status:      pending\n"), "{info}");
}

#[test]
fn pkg_usage_errors() {
    let p = Platform::start();
    // Some code is required; --code and --deploy exclude each other.
    p.kappa(&["pkg", "create", "--env", "python"]).code(2);
    p.kappa(&[
        "pkg", "create", "--env", "python", "--code", "a", "--deploy", "b",
    ])
    .code(2);
    p.kappa(&["pkg", "info"]).code(2);
}
