//! The Node.js and binary runtimes, Fission environment image names and explicit runtime
//! commands, deployed and invoked through the real `kappa up`, CLI and router.

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, function_path, repo_root};

fn route(p: &Platform, name: &str, url: &str) {
    p.ok(&[
        "route",
        "create",
        "--name",
        name,
        "--url",
        url,
        "--function",
        name,
        "--method",
        "GET",
        "--method",
        "POST",
    ]);
}

#[test]
fn nodejs_hello_package_errors_and_fission_image() {
    let p = Platform::start();
    p.ok(&["env", "create", "--name", "nodejs", "--image", "nodejs"]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello-node",
        "--env",
        "nodejs",
        "--code",
        &function_path("examples/nodejs/hello.js"),
    ]);
    route(&p, "hello-node", "/hello-node");
    let r = p.get("/hello-node");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello from Node.js!\n");
    // Warm.
    assert_eq!(p.get("/hello-node").text(), "Hello from Node.js!\n");

    // A directory package with package.json, a named export and relative requires.
    p.ok(&[
        "fn",
        "create",
        "--name",
        "echo-node",
        "--env",
        "nodejs",
        "--src",
        &function_path("examples/nodejs/echo"),
        "--entrypoint",
        "index.echo",
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "echo-node",
        "--url",
        "/echo-node/{id}",
        "--function",
        "echo-node",
        "--method",
        "POST",
    ]);
    let r = p.request(
        "POST",
        "/echo-node/42?x=1&x=2",
        &[("Content-Type", "application/json"), ("X-Custom", "yes")],
        br#"{"name":"kappa"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-echo"), Some("yes"));
    let v = r.json();
    assert_eq!(v["method"], "POST", "{v}");
    assert_eq!(v["params"]["id"], "42", "{v}");
    assert_eq!(v["query"]["x"], serde_json::json!(["1", "2"]), "{v}");
    assert_eq!(v["json"]["name"], "kappa", "{v}");
    assert_eq!(v["headers"]["x-custom"], "yes", "{v}");
    assert_eq!(v["function"], "echo-node", "{v}");

    // A syntax error fails the specialization with a 500 that names the file and line.
    p.ok(&[
        "fn",
        "create",
        "--name",
        "bad-node",
        "--env",
        "nodejs",
        "--code",
        &function_path("testdata/nodejs/syntax_error.js"),
    ]);
    route(&p, "bad-node", "/bad-node");
    let r = p.get("/bad-node");
    assert_eq!(r.status, 500, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["code"], "specialize_failed", "{body}");
    let text = body.to_string();
    assert!(text.contains("SyntaxError"), "{text}");
    assert!(text.contains("syntax_error.js:3"), "{text}");

    // An exception at invocation comes back with its stack.
    p.ok(&[
        "fn",
        "create",
        "--name",
        "throws-node",
        "--env",
        "nodejs",
        "--code",
        &function_path("testdata/nodejs/throws.js"),
    ]);
    route(&p, "throws-node", "/throws-node");
    let r = p.get("/throws-node");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("boom from node"), "{}", r.text());
    assert!(r.text().contains("throws.js:4"), "{}", r.text());

    // A Fission image name selects the built-in Node.js runtime.
    p.ok(&[
        "env",
        "create",
        "--name",
        "fission-node",
        "--image",
        "ghcr.io/fission/node-env",
    ]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello-fission-node",
        "--env",
        "fission-node",
        "--code",
        &function_path("examples/nodejs/hello.js"),
    ]);
    route(&p, "hello-fission-node", "/hello-fission-node");
    let r = p.get("/hello-fission-node");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello from Node.js!\n");
}

#[test]
fn binary_hello_failure_and_fission_image() {
    let p = Platform::start();
    p.ok(&[
        "env",
        "create",
        "--name",
        "binary",
        "--image",
        "fission/binary-env",
    ]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello-sh",
        "--env",
        "binary",
        "--code",
        &function_path("examples/binary/hello.sh"),
    ]);
    route(&p, "hello-sh", "/hello-sh");
    let r = p.request("POST", "/hello-sh?lang=sh", &[], b"stdin works");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-method"), Some("POST"));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let text = r.text();
    assert!(text.contains("You sent a POST request to /"), "{text}");
    assert!(text.contains("Query: lang=sh"), "{text}");
    assert!(text.contains("Body (11 bytes): stdin works"), "{text}");

    // A non-zero exit is a 500 whose body carries the exit code and the end of stderr.
    p.ok(&[
        "fn",
        "create",
        "--name",
        "fail-sh",
        "--env",
        "binary",
        "--code",
        &function_path("testdata/binary/fail.sh"),
    ]);
    route(&p, "fail-sh", "/fail-sh");
    let r = p.get("/fail-sh");
    assert_eq!(r.status, 500, "{}", r.text());
    let body = r.json();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("exited with code 3"), "{body}");
    assert!(message.contains("the widget is broken"), "{body}");
    assert!(!r.text().contains("partial output"), "{body}");
    let logs = p.ok(&["fn", "logs", "fail-sh"]);
    assert!(logs.contains("the widget is broken"), "{logs}");
}

#[test]
fn explicit_command_environment_runs_a_third_party_server() {
    let p = Platform::start();
    // Any server speaking the runtime protocol on $PORT: here the Python runtime, by path.
    let server = repo_root().join("functions/runtimes/python/server.py");
    let server = server.canonicalize().expect("the python runtime exists");
    let command = format!("exec python3 {}", server.display());
    p.ok(&["env", "create", "--name", "custom", "--command", &command]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello-custom",
        "--env",
        "custom",
        "--code",
        &function_path("examples/hello/hello.py"),
        "--entrypoint",
        "hello.main",
    ]);
    route(&p, "hello-custom", "/hello-custom");
    let r = p.get("/hello-custom");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.log());
    assert_eq!(r.text(), "Hello, world!\n");
    let env = p.ok(&["env", "get", "--name", "custom"]);
    assert!(env.contains(&command), "{env}");
}

/// What a Fission user brings, unchanged: `env create ... --version 2`, a source directory built
/// by Fission's own `build.sh` (`--buildcmd ./build.sh`), a Flask function using `current_app`,
/// `g`, `jsonify`, `make_response` and `abort`, and a route whose path parameter it reads from
/// `X-Fission-Params-<name>`.
#[test]
fn a_fission_python_function_runs_unchanged() {
    let p = Platform::start();
    p.ok(&[
        "env",
        "create",
        "--name",
        "py",
        "--image",
        "python",
        "--version",
        "2",
    ]);
    let env: serde_json::Value =
        serde_json::from_str(&p.ok(&["env", "get", "py", "-o", "json"])).unwrap();
    assert_eq!(env["spec"]["version"], 2, "{env}");
    let out = p.cli(&[
        "fn",
        "create",
        "--name",
        "fission-py",
        "--env",
        "py",
        "--src",
        &function_path("examples/fission-python"),
        "--buildcmd",
        "./build.sh",
        "--entrypoint",
        "main.main",
    ]);
    assert!(
        out.status.success(),
        "fn create failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        crate::harness::tail(&p.log(), 40)
    );
    p.ok(&[
        "route",
        "create",
        "--name",
        "fission-py",
        "--url",
        "/greet/{user}",
        "--function",
        "fission-py",
        "--method",
        "POST",
    ]);
    let r = p.request(
        "POST",
        "/greet/ann?lang=en",
        &[("Content-Type", "application/json")],
        br#"{"n": 1}"#,
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.log());
    let body = r.json();
    assert_eq!(body["user"], "ann", "{body}");
    assert_eq!(body["method"], "POST", "{body}");
    assert_eq!(body["args"]["lang"], "en", "{body}");
    assert_eq!(body["json"]["n"], 1, "{body}");
    assert_eq!(body["function"], "fission-py", "{body}");
    assert_eq!(r.header("X-Greeted"), Some("ann"));
    // current_app.logger reaches the function's logs.
    eventually_blocking(
        std::time::Duration::from_secs(30),
        "the function's log line",
        || {
            let logs = p.ok(&["fn", "logs", "fission-py"]);
            logs.contains("greeting ann").then_some(())
        },
    );
}

/// Copies the directory `from` into `to`, recursively.
fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Fission's Python and Node.js environment servers as `--command` environments, with their
/// files outside the instance, as `docs/fission.md` describes: stand-ins that listen on TCP 8888
/// only, have no `/healthz`, log to stdout, import from their own directory and from their
/// dependencies (a virtual environment named only by its interpreter inside a wrapper script,
/// `node_modules`), and write `state.json` into `/userfunc`. The sandbox binds what the
/// commands name (the wrapper's directory, what it execs, the venv) and nothing else.
#[test]
fn fission_environment_servers_run_as_command_environments() {
    use std::os::unix::fs::PermissionsExt as _;
    let p = Platform::start();
    let standin = repo_root().join("functions/testdata/fission-standin");
    let dir = tempfile::Builder::new()
        .prefix("kappa-fission-env-")
        .tempdir()
        .unwrap();
    let root = dir.path();
    copy_tree(&standin.join("python"), &root.join("fission-python"));
    copy_tree(&standin.join("nodejs"), &root.join("fission-nodejs"));
    // The server's dependency lives in a virtual environment, as `pip install` would put it.
    let venv = root.join("venv");
    let made = std::process::Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap();
    assert!(made.success(), "python3 -m venv (python3-venv) works");
    let site = std::fs::read_dir(venv.join("lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("site-packages");
    std::fs::write(site.join("standin_dep.py"), "NAME = 'dep-from-venv'\n").unwrap();
    let wrapper = root.join("bin/start-fission-python");
    std::fs::create_dir_all(wrapper.parent().unwrap()).unwrap();
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} {}\n",
            venv.join("bin/python").display(),
            root.join("fission-python/server.py").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Readable by the instances' users, as a runtime installed under /opt would be.
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();

    p.ok(&[
        "env",
        "create",
        "--name",
        "fission-py",
        "--command",
        &wrapper.display().to_string(),
        "--version",
        "2",
    ]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "standin-py",
        "--env",
        "fission-py",
        "--code",
        &function_path("testdata/fission-standin/userfunc/hello.py"),
        "--entrypoint",
        "hello.main",
    ]);
    route(&p, "standin-py", "/standin-py");
    let r = p.get("/standin-py");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.log());
    assert_eq!(
        r.text(),
        "hello from a Fission-style Python server (dep-from-venv)"
    );
    let logs = p.ok(&["fn", "logs", "standin-py"]);
    assert!(
        logs.contains("specialized hello.main"),
        "stdout is the log: {logs}"
    );

    let node_command = format!("node {}", root.join("fission-nodejs/server.js").display());
    p.ok(&[
        "env",
        "create",
        "--name",
        "fission-node",
        "--command",
        &node_command,
    ]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "standin-node",
        "--env",
        "fission-node",
        "--code",
        &function_path("testdata/fission-standin/userfunc/hello.js"),
    ]);
    route(&p, "standin-node", "/standin-node");
    let r = p.get("/standin-node");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), p.log());
    assert_eq!(
        r.text(),
        "hello from a Fission-style Node.js server (standin-dep)"
    );
}
