//! Finding the platform: flags and environment, `client.json` in the data directory, and the
//! exit code 3 when nothing answers.

use crate::support::{Platform, TOKEN, bare_command, run};

#[test]
fn unreachable_api_exits_3_with_one_line() {
    let p = Platform::start();
    // A port that was free a moment ago: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = bare_command(p.home());
    cmd.env("KAPPA_API_URL", format!("http://127.0.0.1:{port}"))
        .args(["fn", "list"]);
    let r = run(cmd);
    r.code(3);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(&format!(
            "error: listing functions: cannot reach the Kappa API at http://127.0.0.1:{port}"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains("run `kappa up` or set KAPPA_API_URL"),
        "{}",
        r.stderr
    );
}

#[test]
fn nothing_configured_exits_3() {
    let p = Platform::start();
    let mut cmd = bare_command(p.home());
    cmd.args(["env", "list"]);
    let r = run(cmd);
    r.code(3);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("run `kappa up` or set KAPPA_API_URL"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains(".kappa/client.json"), "{}", r.stderr);
}

#[test]
fn client_json_in_the_data_dir_is_found() {
    let p = Platform::start();
    let data = p.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("client.json"),
        serde_json::json!({"apiUrl": p.url, "token": TOKEN, "routerUrl": "http://127.0.0.1:1"})
            .to_string(),
    )
    .unwrap();
    let data_arg = data.to_str().unwrap();

    let mut cmd = bare_command(p.home());
    cmd.args([
        "--data-dir",
        data_arg,
        "env",
        "create",
        "--name",
        "python",
        "--image",
        "python",
    ]);
    let r = run(cmd);
    r.code(0);
    assert_eq!(r.stdout, "environment 'python' created\n");

    // KAPPA_DATA_DIR works too, and so does $HOME/.kappa.
    let mut cmd = bare_command(p.home());
    cmd.env("KAPPA_DATA_DIR", &data)
        .args(["env", "get", "python", "-o", "json"]);
    run(cmd).code(0);
    let home = p.dir.path().join("home2");
    std::fs::create_dir_all(home.join(".kappa")).unwrap();
    std::fs::copy(data.join("client.json"), home.join(".kappa/client.json")).unwrap();
    let mut cmd = bare_command(&home);
    cmd.args(["env", "list"]);
    let r = run(cmd);
    r.code(0);
    assert!(r.stdout.contains("python"), "{}", r.stdout);

    // KAPPA_API_URL naming the file's server (give or take a slash) uses the file's token...
    let mut cmd = bare_command(p.home());
    cmd.env("KAPPA_API_URL", format!("{}/", p.url))
        .args(["--data-dir", data_arg, "env", "list"]);
    run(cmd).code(0);
    // ...but the token is never sent to a URL it was not issued for: refused (401), exit 1.
    let other = p.url.replace("127.0.0.1", "localhost");
    let mut cmd = bare_command(p.home());
    cmd.env("KAPPA_API_URL", other)
        .args(["--data-dir", data_arg, "env", "list"]);
    let r = run(cmd);
    r.code(1);
    assert!(
        r.stderr.contains("unauthorized") || r.stderr.contains("token"),
        "{}",
        r.stderr
    );
    let mut cmd = bare_command(p.home());
    cmd.env("KAPPA_TOKEN", "wrong")
        .args(["--data-dir", data_arg, "env", "list"]);
    let r = run(cmd);
    r.code(1);
    assert!(
        r.stderr.starts_with("error: listing environments: "),
        "{}",
        r.stderr
    );

    // A broken client.json is named.
    std::fs::write(data.join("client.json"), "{").unwrap();
    let mut cmd = bare_command(p.home());
    cmd.args(["--data-dir", data_arg, "env", "list"]);
    let r = run(cmd);
    r.code(3);
    assert!(r.stderr.contains("client.json"), "{}", r.stderr);
}

#[test]
fn version_prints_client_and_server() {
    let p = Platform::start();
    let r = p.ok(&["version"]);
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        r.stdout
            .starts_with(&format!("client: {version}\nserver: ")),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains(&p.url), "{}", r.stdout);
    let v = p.json(&["version"]);
    assert_eq!(v["client"]["version"], version);
    assert!(v["server"]["version"].is_string(), "{v}");

    // Without a platform, version still answers for the client.
    let mut cmd = bare_command(p.home());
    cmd.arg("version");
    let r = run(cmd);
    r.code(0);
    assert!(
        r.stdout
            .starts_with(&format!("client: {version}\nserver: unknown")),
        "{}",
        r.stdout
    );
}
