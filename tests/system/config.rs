//! Function configuration (env, secrets, config maps) and the newdeploy executor, through the
//! real `kappa up`, CLI and HTTP.

use std::time::Duration;

use kappa_test_support::eventually_blocking;

use crate::harness::{Platform, function_path, http, tail};

/// The secret's values; unusual enough that any occurrence in the platform's output is a leak.
const FIRST: &str = "kappa-s3cr3t-first-7f3a9";
const SECOND: &str = "kappa-s3cr3t-second-2b8c4";

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Asserts no form of the secret values is in `text` (`what` says where it came from).
#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for value in [FIRST, SECOND] {
        assert!(!text.contains(value), "{what} leaks {value}:\n{text}");
        let encoded = b64(value);
        // Also without padding, as base64 may be cut anywhere.
        assert!(
            !text.contains(encoded.trim_end_matches('=')),
            "{what} leaks the base64 of {value}:\n{text}"
        );
    }
}

/// The endpoints the router holds for `function`: (instance id, draining).
fn endpoints(p: &Platform, function: &str) -> Vec<(String, bool)> {
    let auth = format!("Bearer {}", p.token());
    let r = http(
        p.admin,
        "GET",
        "/debug/endpoints",
        &[("authorization", &auth)],
        b"",
    )
    .expect("admin answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    body["functions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["function"] == format!("default/{function}"))
        .flat_map(|f| f["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["instance"].as_str().unwrap_or_default().to_string(),
                e["draining"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn serving(p: &Platform, function: &str) -> usize {
    endpoints(p, function).iter().filter(|(_, d)| !d).count()
}

#[test]
fn a_function_reads_its_secret_config_map_and_env_and_the_secret_never_leaks() {
    let p = Platform::start();
    p.python_env(&["--poolsize", "1"]);
    p.ok(&[
        "secret",
        "create",
        "--name",
        "db-creds",
        "--from-literal",
        &format!("password={FIRST}"),
    ]);
    p.ok(&[
        "configmap",
        "create",
        "--name",
        "app-config",
        "--from-literal",
        "mode=fast",
    ]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "config",
        "--env",
        "python",
        "--code",
        &function_path("examples/config/config.py"),
        "--secret",
        "db-creds",
        "--configmap",
        "app-config",
        "--envvar",
        "GREETING=hello",
        "--url",
        "/config",
    ]);
    let r = p.get("/config");
    assert_eq!(r.status, 200, "{}\n{}", r.text(), tail(&p.log(), 40));
    let v = r.json();
    assert_eq!(v["password"], FIRST, "{v}");
    assert_eq!(v["mode"], "fast", "{v}");
    assert_eq!(v["greeting"], "hello", "{v}");

    // The CLI shows keys and sizes, never values, in every format.
    let got = p.ok(&["secret", "get", "db-creds"]);
    assert!(got.contains("password"), "{got}");
    assert!(got.contains("<redacted>"), "{got}");
    assert_no_secret("kappa secret get", &got);
    let listed = p.ok(&["secret", "list"]);
    assert!(
        listed.contains(&format!("password ({} bytes)", FIRST.len())),
        "{listed}"
    );
    for args in [
        &["secret", "list"][..],
        &["secret", "list", "-o", "json"],
        &["secret", "get", "db-creds", "-o", "json"],
        &["secret", "get", "db-creds", "-o", "table"],
    ] {
        assert_no_secret(&format!("kappa {args:?}"), &p.ok(args));
    }
    // Config map values are shown.
    assert!(p.ok(&["configmap", "get", "app-config"]).contains("fast"));

    // Updating the secret rolls the function: the next answers carry the new value.
    p.ok(&[
        "secret",
        "update",
        "--name",
        "db-creds",
        "--from-literal",
        &format!("password={SECOND}"),
    ]);
    eventually_blocking(Duration::from_secs(30), "the new secret value", || {
        let r = p.get("/config");
        (r.status == 200 && r.json()["password"] == SECOND).then_some(())
    });
    for _ in 0..3 {
        let r = p.get("/config");
        assert_eq!(r.json()["password"], SECOND, "{}", r.text());
    }
    // A config map change rolls it too.
    p.ok(&[
        "configmap",
        "update",
        "--name",
        "app-config",
        "--from-literal",
        "mode=slow",
    ]);
    eventually_blocking(Duration::from_secs(30), "the new config map value", || {
        let r = p.get("/config");
        (r.status == 200 && r.json()["mode"] == "slow").then_some(())
    });
    // An env change is a new generation: the very next request sees it.
    p.ok(&[
        "fn",
        "update",
        "--name",
        "config",
        "--envvar",
        "GREETING=bonjour",
    ]);
    let v = p.get("/config").json();
    assert_eq!(v["greeting"], "bonjour", "{v}");
    assert_eq!(v["password"], SECOND, "{v}");

    // In use: deleting it is refused, naming the function.
    let refused = p.fails(&["secret", "delete", "db-creds"]);
    assert!(refused.contains("function default/config"), "{refused}");
    assert_no_secret("the refused delete", &refused);

    // Nothing the API answers, the function's logs, or the platform's log holds a value.
    for path in [
        "/v1/secrets",
        "/v1/secrets/db-creds",
        "/v1/secrets?allNamespaces=true",
        "/v1/functions/config/logs?tail=1000",
    ] {
        let r = p.api("GET", path, b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_no_secret(path, &r.text());
    }
    let logs = p.ok(&["fn", "logs", "config", "--tail", "1000"]);
    assert!(logs.contains("specialized"), "{logs}");
    assert_no_secret("kappa fn logs", &logs);

    // Deleted anyway (--force): the function's instances are rolled and the next request fails
    // at once with the reason, not after a timeout.
    let deleted = p.ok(&["secret", "delete", "db-creds", "--force"]);
    assert_no_secret("kappa secret delete", &deleted);
    let r = eventually_blocking(Duration::from_secs(30), "a clear error", || {
        let r = p.get("/config");
        (r.status != 200).then_some(r)
    });
    assert_eq!(r.status, 500, "{}", r.text());
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(message.contains("secret default/db-creds"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    assert_no_secret("the platform log", &p.log());
}

#[test]
fn functions_referencing_missing_configuration_are_refused() {
    let p = Platform::start();
    p.python_env(&["--poolsize", "0"]);
    let err = p.fails(&[
        "fn",
        "create",
        "--name",
        "config",
        "--env",
        "python",
        "--code",
        &function_path("examples/config/config.py"),
        "--secret",
        "nope",
    ]);
    assert!(err.contains("spec.secrets[0].name"), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    let err = p.fails(&[
        "fn",
        "create",
        "--name",
        "config",
        "--env",
        "python",
        "--code",
        &function_path("examples/config/config.py"),
        "--configmap",
        "nope",
    ]);
    assert!(err.contains("spec.configmaps[0].name"), "{err}");
    let err = p.fails(&[
        "fn",
        "create",
        "--name",
        "nd",
        "--env",
        "python",
        "--code",
        &function_path("examples/hello/hello.py"),
        "--executortype",
        "newdeploy",
        "--minscale",
        "3",
        "--maxscale",
        "2",
    ]);
    assert!(err.contains("spec.minScale"), "{err}");
}

#[test]
fn newdeploy_keeps_min_scale_scales_up_to_max_scale_and_back_down() {
    let p = Platform::start();
    p.python_env(&["--poolsize", "1"]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "nd",
        "--env",
        "python",
        "--code",
        &function_path("testdata/python/slow.py"),
        "--executortype",
        "newdeploy",
        "--minscale",
        "1",
        "--maxscale",
        "3",
        "--idletimeout",
        "2",
        "--url",
        "/nd",
    ]);
    // An instance is there before any request.
    eventually_blocking(Duration::from_secs(30), "the minScale instance", || {
        (serving(&p, "nd") == 1).then_some(())
    });

    // Five concurrent slow requests, one per instance (requestsPerPod 1): three instances at
    // most, the others wait for a free one.
    let router = p.router;
    let requests: Vec<_> = (0..5)
        .map(|_| {
            std::thread::spawn(move || {
                http(router, "GET", "/nd?s=2", &[], b"").map(|r| (r.status, r.text()))
            })
        })
        .collect();
    let mut most = 0;
    eventually_blocking(Duration::from_secs(30), "scaled up to maxScale", || {
        let n = endpoints(&p, "nd").len();
        most = most.max(n);
        (n == 3).then_some(())
    });
    for r in requests {
        let (status, body) = r.join().unwrap().expect("request answered");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, "done");
        most = most.max(endpoints(&p, "nd").len());
    }
    assert!(most <= 3, "never more than maxScale: saw {most}");
    // Back down to minScale once idle.
    eventually_blocking(Duration::from_secs(30), "scaled down to minScale", || {
        (endpoints(&p, "nd").len() == 1).then_some(())
    });
    let r = p.get("/nd?s=0");
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn newdeploy_with_min_scale_zero_starts_on_the_first_request() {
    let p = Platform::start();
    p.python_env(&["--poolsize", "0"]);
    p.ok(&[
        "fn",
        "create",
        "--name",
        "nd0",
        "--env",
        "python",
        "--code",
        &function_path("examples/hello/hello.py"),
        "--executortype",
        "newdeploy",
        "--minscale",
        "0",
        "--maxscale",
        "1",
        "--idletimeout",
        "1",
        "--url",
        "/nd0",
    ]);
    assert!(
        endpoints(&p, "nd0").is_empty(),
        "no instance before a request"
    );
    let r = p.get("/nd0");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello, world!\n");
    assert_eq!(endpoints(&p, "nd0").len(), 1);
    eventually_blocking(Duration::from_secs(30), "scaled to zero", || {
        endpoints(&p, "nd0").is_empty().then_some(())
    });
    let r = p.get("/nd0");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "Hello, world!\n");
}
