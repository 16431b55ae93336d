//! Matching: templates, prefixes, hosts, methods, 404s, weights, and following the store.

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Request, StatusCode};
use kappa_test_support::eventually_async;
use kappa_types::{FunctionReference, FunctionReferenceType, Kind};
use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_params_and_invocation_headers_reach_the_function() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("orders", "hello", |s| {
        s.relativeurl = Some("/users/{id}/orders/{order}".into());
    })
    .await;
    let (status, headers, body) = h
        .request(
            Request::get("/users/42/orders/7?x=1")
                .header("host", "example.com:8888")
                .header("x-kappa-params-id", "spoofed")
                .header("x-fission-params-id", "spoofed")
                .header("x-fission-params-extra", "spoofed")
                .header("x-kappa-function-name", "spoofed")
                .header("x-forwarded-for", "10.0.0.1")
                .header("connection", "keep-alive")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_invocation_id(&headers);
    let e = echo(&body);
    assert_eq!(
        e["path"], "/?x=1",
        "a template route forwards / with the query"
    );
    let fh = &e["headers"];
    assert_eq!(fh["x-kappa-params-id"], "42");
    assert_eq!(fh["x-kappa-params-order"], "7");
    assert_eq!(fh["x-kappa-function-name"], "hello");
    assert_eq!(fh["x-kappa-function-namespace"], "default");
    assert_eq!(fh["x-kappa-full-url"], "/users/42/orders/7?x=1");
    // A function written for Fission reads Fission's names for the same facts.
    assert_eq!(fh["x-fission-params-id"], "42");
    assert_eq!(fh["x-fission-params-order"], "7");
    assert_eq!(fh["x-fission-function-name"], "hello");
    assert_eq!(fh["x-fission-function-namespace"], "default");
    assert_eq!(fh["x-fission-full-url"], "/users/42/orders/7?x=1");
    assert!(
        fh.get("x-fission-params-extra").is_none(),
        "a client cannot inject Fission headers on the public path"
    );
    assert_eq!(
        fh["x-kappa-invocation-id"],
        headers["x-kappa-invocation-id"].to_str().unwrap()
    );
    assert_eq!(fh["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(fh["x-forwarded-host"], "example.com:8888");
    assert_eq!(fh["x-forwarded-proto"], "http");
    assert_eq!(fh["host"], "example.com:8888");
    assert!(
        fh.get("connection").is_none(),
        "hop-by-hop headers are not forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_strip_or_keep() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("api", "hello", |s| s.prefix = Some("/api/".into()))
        .await;
    h.put_trigger("keep", "hello", |s| {
        s.prefix = Some("/keep".into());
        s.keep_prefix = true;
    })
    .await;
    h.put_trigger("exact", "hello", |s| s.prefix = Some("/files".into()))
        .await;
    for (path, forwarded) in [
        ("/api/v1/items?q=2", "/v1/items?q=2"),
        ("/api/", "/"),
        ("/keep", "/keep"),
        ("/keep/a/b", "/keep/a/b"),
        ("/files", "/"),
        ("/files/a", "/a"),
    ] {
        let (status, _, body) = h.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body:?}");
        let e = echo(&body);
        assert_eq!(e["path"], forwarded, "{path}");
        assert_eq!(e["headers"]["x-kappa-full-url"], path);
    }
    let (status, headers, body) = h.get("/filesystem").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&headers, &body).0, "route_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_specific_routes_win() {
    let h = Harness::start().await;
    h.put_function("anyhost", 60).await;
    h.put_function("special", 60).await;
    h.put_trigger("generic", "anyhost", |s| s.relativeurl = Some("/h".into()))
        .await;
    h.put_trigger("hosted", "special", |s| {
        s.relativeurl = Some("/h".into());
        s.host = Some("special.example.com".into());
    })
    .await;
    let h = &h;
    let name_for = |host: &'static str| async move {
        let (status, _, body) = h
            .request(
                Request::get("/h")
                    .header("host", host)
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        echo(&body)["headers"]["x-kappa-function-name"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(name_for("Special.Example.com:8888").await, "special");
    assert_eq!(name_for("other.example.com").await, "anyhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_are_matched_and_others_get_405() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("m", "hello", |s| {
        s.relativeurl = Some("/m".into());
        s.methods = vec!["GET".into(), "POST".into()];
    })
    .await;
    let (status, _, body) = h
        .request(
            Request::post("/m")
                .header("host", "t")
                .body(full("abc"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo(&body)["method"], "POST");
    assert_eq!(echo(&body)["bodyLen"], 3);

    let (status, headers, body) = h
        .request(
            Request::put("/m")
                .header("host", "t")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "GET, POST");
    assert_eq!(error_of(&headers, &body).0, "method_not_allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_missing_functions_are_404() {
    let h = Harness::start().await;
    let (status, headers, body) = h.get("/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "route_not_found");
    assert!(message.contains("/nope"), "{message}");

    h.put_trigger("ghostly", "ghost", |s| {
        s.relativeurl = Some("/ghost".into())
    })
    .await;
    let (status, headers, body) = h.get("/ghost").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "function_not_found");
    assert!(message.contains("default/ghost"), "{message}");
    assert_eq!(h.provisioner.calls(), 0);

    // The trigger becomes live once its function exists.
    h.put_function("ghost", 60).await;
    let (status, _, _) = h.get("/ghost").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_table_follows_the_store() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/t".into()))
        .await;
    let (status, _, body) = h.get("/t").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo(&body)["instance"], "hello-g1-1");

    // A new generation of the function is served by an instance of that generation.
    h.put_function("hello", 30).await;
    let (status, _, body) = h.get("/t").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo(&body)["instance"], "hello-g2-2");

    // Moving the trigger moves the route.
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/moved".into()))
        .await;
    assert_eq!(h.get("/t").await.0, StatusCode::NOT_FOUND);
    assert_eq!(h.get("/moved").await.0, StatusCode::OK);

    h.delete(Kind::HttpTrigger, "t").await;
    eventually_async(Duration::from_secs(15), "trigger deletion", || async {
        h.get("/moved").await.0 == StatusCode::NOT_FOUND
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_pick_every_function() {
    let h = Harness::start().await;
    h.put_function("blue", 60).await;
    h.put_function("green", 60).await;
    h.put_trigger("canary", "", |s| {
        s.relativeurl = Some("/canary".into());
        s.functionref = FunctionReference {
            kind: FunctionReferenceType::FunctionWeights,
            name: String::new(),
            functionweights: [("blue".to_string(), 50), ("green".to_string(), 50)].into(),
        };
    })
    .await;
    let mut client = Client::connect(h.public).await;
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let (status, _, body) = client.get("/canary").await;
        assert_eq!(status, StatusCode::OK);
        seen.insert(
            echo(&body)["headers"]["x-kappa-function-name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(
        seen,
        BTreeSet::from(["blue".to_string(), "green".to_string()])
    );
}

/// Sends `head` on a fresh raw TCP connection to `addr` and reads the answer until the router
/// closes the connection: (status, headers as lower-case text, body).
async fn raw_exchange(addr: std::net::SocketAddr, head: &[u8]) -> (u16, String, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the router answers and closes the connection")
    .unwrap();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let status = head[9..12].parse().unwrap();
    (status, head, answer[split + 4..].to_vec())
}

/// The JSON error code of a raw answer, checking the body is the platform's error shape.
fn raw_error_code(head: &str, body: &[u8]) -> String {
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-kappa-invocation-id: "), "{head}");
    let v: Value = serde_json::from_slice(body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_the_json_error_body() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.prefix = Some("/p".into()))
        .await;

    // A URI past the router's 8 KiB limit: 414 with the JSON body (not hyper's empty one).
    let long = format!("/p/{}", "a".repeat(9 * 1024));
    let (status, head, body) = raw_exchange(
        h.public,
        format!("GET {long} HTTP/1.1\r\nhost: t\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 414, "{head}");
    assert_eq!(raw_error_code(&head, &body), "uri_too_long");
    let message = serde_json::from_slice::<Value>(&body).unwrap()["error"]["message"].clone();
    assert!(message.as_str().unwrap().contains("8192"), "{message}");

    // Headers past 64 KiB in total: 431.
    let big = "b".repeat(8 * 1024);
    let mut request = String::from("GET /p/x HTTP/1.1\r\nhost: t\r\n");
    for i in 0..9 {
        request.push_str(&format!("x-big-{i}: {big}\r\n"));
    }
    request.push_str("\r\n");
    let (status, head, body) = raw_exchange(h.public, request.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert_eq!(raw_error_code(&head, &body), "headers_too_large");

    // More than 100 headers: 431 as well. That limit is the HTTP parser's own (hyper's
    // default, see `server.rs`), so the answer is its 431 with the JSON body (and, as for every
    // head the parser refuses, no invocation id: there was no request).
    let mut request = String::from("GET /p/x HTTP/1.1\r\nhost: t\r\n");
    for i in 0..101 {
        request.push_str(&format!("x-h-{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let (status, head, body) = raw_exchange(h.public, request.as_bytes()).await;
    assert_eq!(status, 431, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "headers_too_large", "{v}");

    // Within the limits the same route answers.
    let ok = format!("/p/{}", "a".repeat(7 * 1024));
    let (status, _, _) = h.get(&ok).await;
    assert_eq!(status, StatusCode::OK);
}
