//! Source packages and builds through the real `kappa up`, CLI and router: a Python function
//! whose dependency the build installs from PyPI, a Node.js function whose dependency npm
//! installs, a failing build (its log in the CLI and `pkg info`, a clear error on invocation),
//! and a malicious source zip.

use std::io::Write as _;

use crate::harness::{Platform, function_path, repo_root, tail};

fn write(dir: &std::path::Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The package a function uses.
fn package_of(p: &Platform, function: &str) -> String {
    let f: serde_json::Value =
        serde_json::from_str(&p.ok(&["fn", "get", function, "-o", "json"])).unwrap();
    f["spec"]["package"]["packageref"]["name"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn python_dependency_is_installed_by_the_build() {
    let p = Platform::start();
    p.python_env(&[]);
    // One command: a source package (it has a requirements.txt), built, then a function and
    // its route; the CLI waits for the build.
    let out = p.cli(&[
        "fn",
        "create",
        "--name",
        "py-deps",
        "--env",
        "python",
        "--src",
        &function_path("examples/python-deps"),
        "--entrypoint",
        "app.main",
        "--url",
        "/py-deps",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "fn create failed:\n{stderr}\n{}",
        tail(&p.log(), 40)
    );
    assert!(stderr.contains("build succeeded"), "{stderr}");
    let r = p.get("/py-deps");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "six 1.17.0 says: hello from a built package\n");

    let pkg = package_of(&p, "py-deps");
    let info = p.ok(&["pkg", "info", &pkg]);
    assert!(info.contains("Status:      succeeded\n"), "{info}");
    assert!(info.contains("pip install -r requirements.txt"), "{info}");
    assert!(info.contains("Successfully installed six"), "{info}");
    let yaml = p.ok(&["pkg", "get", &pkg, "-o", "yaml"]);
    assert!(yaml.contains("buildstatus: succeeded"), "{yaml}");
    assert!(yaml.contains("buildlog:"), "{yaml}");
    assert!(yaml.contains("source:"), "{yaml}");
    assert!(yaml.contains("deployment:"), "{yaml}");

    // A rebuild builds again and the function keeps answering.
    let out = p.ok(&["pkg", "rebuild", &pkg]);
    assert!(out.contains("queued for a rebuild"), "{out}");
    let info = p.ok(&["pkg", "info", &pkg]);
    assert!(info.contains("Status:      succeeded\n"), "{info}");
    assert_eq!(p.get("/py-deps").status, 200);
}

#[test]
fn nodejs_dependency_is_installed_by_npm() {
    // A missing prerequisite fails the test: it must never pass without running.
    assert!(
        repo_root()
            .join("functions/runtimes/nodejs/server.js")
            .is_file(),
        "the Node.js runtime (functions/runtimes/nodejs/server.js) is missing"
    );
    assert!(
        which("node").is_some() && which("npm").is_some(),
        "node or npm is not installed (scripts/install-deps.sh installs them)"
    );
    let p = Platform::start();
    p.ok(&["env", "create", "--name", "nodejs", "--image", "nodejs"]);
    let src = p.data_dir.path().join("node-src");
    write(
        &src,
        "package.json",
        r#"{"name": "kappa-deps", "version": "1.0.0", "main": "index.js", "private": true,
            "dependencies": {"is-number": "7.0.0"}}"#,
    );
    write(
        &src,
        "index.js",
        "const isNumber = require('is-number');\n\
         module.exports = async (context) => ({ status: 200, body: `is-number(42): ${isNumber(42)}, is-number('x'): ${isNumber('x')}\\n` });\n",
    );
    p.ok(&[
        "fn",
        "create",
        "--name",
        "node-deps",
        "--env",
        "nodejs",
        "--src",
        src.to_str().unwrap(),
        "--entrypoint",
        "index",
        "--url",
        "/node-deps",
    ]);
    let r = p.get("/node-deps");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "is-number(42): true, is-number('x'): false\n");
    let info = p.ok(&["pkg", "info", &package_of(&p, "node-deps")]);
    assert!(info.contains("npm install --omit=dev"), "{info}");
}

#[test]
fn a_failed_build_shows_its_log_and_invocations_say_so() {
    let p = Platform::start();
    p.python_env(&[]);
    let src = p.data_dir.path().join("broken-src");
    write(&src, "main.py", "def main():\n    return 'never'\n");
    let out = p.cli(&[
        "fn",
        "create",
        "--name",
        "broken",
        "--env",
        "python",
        "--src",
        src.to_str().unwrap(),
        "--buildcmd",
        "echo compiling the thing; echo missing header >&2; exit 3",
        "--entrypoint",
        "main.main",
        "--url",
        "/broken",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("build failed"), "{stderr}");
    assert!(stderr.contains("compiling the thing"), "{stderr}");
    assert!(stderr.contains("missing header"), "{stderr}");
    assert!(stderr.contains("exited with code 3"), "{stderr}");

    let pkg = package_of(&p, "broken");
    let info = p.ok(&["pkg", "info", &pkg]);
    assert!(info.contains("Status:      failed\n"), "{info}");
    assert!(info.contains("missing header"), "{info}");

    // Invoking it is a clear error naming the build, not a timeout.
    let r = p.get("/broken");
    assert_eq!(r.status, 500, "{}", r.text());
    let body = r.json();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("build failed"), "{body}");
    assert!(message.contains("exited with code 3"), "{body}");
    assert!(message.contains("missing header"), "{body}");
    assert_ne!(body["error"]["code"], "specialize_timeout", "{body}");
}

#[test]
fn a_malicious_source_zip_is_refused() {
    let p = Platform::start();
    p.python_env(&[]);
    let zip_path = p.data_dir.path().join("evil.zip");
    let target = format!("kappa-build-escape-{}.txt", std::process::id());
    {
        let file = std::fs::File::create(&zip_path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file("requirements.txt", opts).unwrap();
        zip.write_all(b"").unwrap();
        zip.start_file("main.py", opts).unwrap();
        zip.write_all(b"def main():\n    return 'hi'\n").unwrap();
        zip.start_file(format!("../../../../../../../tmp/{target}"), opts)
            .unwrap();
        zip.write_all(b"pwned").unwrap();
        zip.finish().unwrap();
    }
    let stderr = p.fails(&[
        "pkg",
        "create",
        "--name",
        "evil",
        "--env",
        "python",
        "--src",
        zip_path.to_str().unwrap(),
    ]);
    // Refused at upload, before any package or build exists.
    assert!(stderr.contains("unsafe archive entry"), "{stderr}");
    assert!(stderr.contains("'..' component"), "{stderr}");
    let pkgs = p.api("GET", "/v1/packages", b"");
    assert_eq!(pkgs.json()["items"].as_array().map(Vec::len), Some(0));
    assert!(
        !std::path::Path::new("/tmp").join(&target).exists(),
        "nothing was written outside"
    );
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

#[test]
fn a_request_waits_for_a_build_in_progress() {
    use base64::Engine as _;
    let p = Platform::start();
    p.python_env(&[]);
    // A package and function written through the API (the CLI would wait for the build itself),
    // with a build that takes a moment.
    let src = p.data_dir.path().join("slow-src");
    write(
        &src,
        "main.py",
        "import os\n\ndef main():\n    with open(os.path.join(os.path.dirname(__file__), 'built.txt')) as f:\n        return f.read()\n",
    );
    let zip = kappa_archive::pack_dir(&src).unwrap();
    let package = serde_json::json!({
        "apiVersion": "kappa.dev/v1", "kind": "Package",
        "metadata": {"name": "slow-pkg"},
        "spec": {
            "environment": {"name": "python"},
            "source": {"type": "literal", "literal": base64::engine::general_purpose::STANDARD.encode(&zip)},
            "buildcmd": "sleep 2 && echo built at the build > built.txt",
        },
    });
    let r = p.api("POST", "/v1/packages", package.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let function = serde_json::json!({
        "apiVersion": "kappa.dev/v1", "kind": "Function",
        "metadata": {"name": "slow"},
        "spec": {
            "environment": {"name": "python"},
            "package": {"packageref": {"name": "slow-pkg"}, "functionName": "main.main"},
        },
    });
    let r = p.api("POST", "/v1/functions", function.to_string().as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    p.ok(&["route", "create", "--url", "/slow", "--function", "slow"]);
    // The first request waits for the build instead of failing.
    let r = p.get("/slow");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "built at the build\n");
}
