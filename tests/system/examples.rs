//! The example functions and the README quick start, deployed and invoked as a user would.

use std::time::Duration;

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, function_path};

#[test]
fn readme_quick_start() {
    let p = Platform::start();
    p.ok(&["env", "create", "--name", "python", "--image", "python"]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "hello",
        "--env",
        "python",
        "--code",
        &function_path("examples/hello/hello.py"),
    ]);
    p.ok(&["route", "create", "--url", "/hello", "--function", "hello"]);
    let r = p.get("/hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello, world!\n");
    assert!(
        r.header("x-kappa-invocation-id")
            .is_some_and(|v| !v.is_empty())
    );
    // Warm path answers the same.
    assert_eq!(p.get("/hello").text(), "Hello, world!\n");
    let list = p.ok(&["fn", "list"]);
    assert!(list.contains("hello"), "{list}");
    let tested = p.ok(&["fn", "test", "--name", "hello"]);
    assert_eq!(tested, "Hello, world!\n");
    let logs = p.ok(&["fn", "logs", "hello"]);
    assert!(
        logs.contains("specialized"),
        "platform lines in the function's log: {logs}"
    );
}

#[test]
fn up_deploys_the_bundled_example_and_prints_the_curl() {
    let p = Platform::start_with(&[]);
    let r = p.get("/hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello, world!\n");
    let log = p.log();
    assert!(
        log.contains(&format!("curl http://{}/hello", p.router)),
        "{log}"
    );
}

#[test]
fn echo_gets_params_headers_query_and_body() {
    let p = Platform::start();
    p.python_env(&[]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "echo",
        "--env",
        "python",
        "--code",
        &function_path("examples/echo/echo.py"),
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "echo",
        "--url",
        "/echo/{id}",
        "--function",
        "echo",
        "--method",
        "POST",
    ]);
    let r = p.request(
        "POST",
        "/echo/42?x=1",
        &[("X-Custom", "yes"), ("Content-Type", "text/plain")],
        b"payload",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let text = v.to_string();
    assert_eq!(v["method"], "POST", "{text}");
    assert!(
        text.contains("42"),
        "path param reaches the function: {text}"
    );
    assert!(
        text.contains("payload"),
        "body reaches the function: {text}"
    );
    assert!(text.contains("yes"), "headers reach the function: {text}");
    assert!(
        text.to_ascii_lowercase().contains("x-kappa-function-name"),
        "{text}"
    );
    // Wrong method on a matched path.
    let r = p.request("DELETE", "/echo/42", &[], b"");
    assert_eq!(r.status, 405, "{}", r.text());
    // Unknown path: JSON error with an invocation id.
    let r = p.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "route_not_found");
}

#[test]
fn json_api_example() {
    let p = Platform::start();
    p.python_env(&[]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "items",
        "--env",
        "python",
        "--code",
        &function_path("examples/jsonapi/jsonapi.py"),
    ]);
    p.ok(&[
        "route",
        "create",
        "--name",
        "items",
        "--prefix",
        "/items",
        "--function",
        "items",
        "--method",
        "GET",
        "--method",
        "POST",
    ]);
    let r = p.request(
        "POST",
        "/items",
        &[("Content-Type", "application/json")],
        br#"{"name": "apple"}"#,
    );
    assert!(
        r.status == 200 || r.status == 201,
        "{} {}",
        r.status,
        r.text()
    );
    let r = p.get("/items");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("apple"), "{}", r.text());
    let r = p.request(
        "POST",
        "/items",
        &[("Content-Type", "application/json")],
        b"[1,2]",
    );
    assert_eq!(
        r.status,
        400,
        "invalid item is the function's 400: {}",
        r.text()
    );
}

#[test]
fn update_sends_new_requests_to_new_code() {
    let p = Platform::start();
    p.python_env(&[]);
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("greet.py");
    std::fs::write(&v1, "def main():\n    return 'v1'\n").unwrap();
    p.ok(&[
        "fn",
        "create",
        "--name",
        "greet",
        "--env",
        "python",
        "--code",
        v1.to_str().unwrap(),
    ]);
    p.ok(&["route", "create", "--url", "/greet", "--function", "greet"]);
    assert_eq!(p.get("/greet").text(), "v1");
    std::fs::write(&v1, "def main():\n    return 'v2'\n").unwrap();
    p.ok(&[
        "fn",
        "update",
        "--name",
        "greet",
        "--code",
        v1.to_str().unwrap(),
    ]);
    eventually_blocking(Duration::from_secs(30), "the new code to answer", || {
        (p.get("/greet").text() == "v2").then_some(())
    });
    // Every later request goes to the new code.
    for _ in 0..5 {
        assert_eq!(p.get("/greet").text(), "v2");
    }
}

/// `kappa fn pods` / `kappa env pods` (Fission's verbs) list the pool manager's instances: the
/// function's specialized one with its requests, the environment's warm pool beside it.
#[test]
fn fn_pods_and_env_pods_list_the_instances() {
    let p = Platform::start();
    p.python_env(&["--poolsize", "2"]);
    p.deploy("hello", "examples/hello/hello.py", "/hello", &[]);
    assert_eq!(p.get("/hello").status, 200);
    assert_eq!(p.get("/hello").status, 200);

    let pods = p.ok(&["fn", "pods", "hello"]);
    let lines: Vec<&str> = pods.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{pods}");
    assert_eq!(lines.len(), 2, "one specialized instance:\n{pods}");
    assert!(lines[1].contains("ready"), "{pods}");
    assert!(lines[1].contains("hello"), "{pods}");

    let json: serde_json::Value =
        serde_json::from_str(&p.ok(&["fn", "pods", "hello", "-o", "json"])).unwrap();
    let items = json.as_array().unwrap();
    assert_eq!(items.len(), 1, "{json}");
    assert_eq!(items[0]["function"]["name"], "hello");
    assert_eq!(items[0]["environment"]["name"], "python");
    assert_eq!(items[0]["state"], "ready");
    assert_eq!(items[0]["served"], 2);
    let specialized = items[0]["id"].as_str().unwrap().to_string();

    // The environment's list has the specialized instance and the refilled warm pool.
    let env = eventually_blocking(Duration::from_secs(30), "the pool refilled", || {
        let json: serde_json::Value =
            serde_json::from_str(&p.ok(&["env", "pods", "--name", "python", "-o", "json"])).ok()?;
        let items = json.as_array()?.clone();
        (items.iter().filter(|i| i["state"] == "warm").count() == 2).then_some(items)
    });
    assert!(
        env.iter().any(|i| i["id"] == specialized.as_str()),
        "{env:?}"
    );
    assert!(
        env.iter()
            .filter(|i| i["state"] == "warm")
            .all(|i| i.get("function").is_none()),
        "{env:?}"
    );

    // Unknown names are errors naming the object.
    let err = p.fails(&["fn", "pods", "nope"]);
    assert!(err.contains("nope") && err.contains("not found"), "{err}");
}
