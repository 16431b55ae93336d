//! The admin listener, direct invocation and shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kappa_core::FunctionId;
use kappa_router::RouterConfig;
use kappa_store::Store;
use kappa_test_support::eventually_async;
use serde_json::Value;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_debug_views() {
    let mut h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/t".into()))
        .await;
    assert_eq!(h.get("/t").await.0, StatusCode::OK);

    let (status, _, body) = h.admin_get("/healthz", None).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    let (status, _, _) = h.admin_get("/readyz", None).await;
    assert_eq!(status, StatusCode::OK);

    let (status, headers, body) = h.admin_get("/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    for metric in [
        "kappa_router_requests_total",
        "kappa_router_request_duration_seconds_bucket",
        "kappa_router_cold_starts_total",
        "kappa_router_queue_rejections_total",
        "kappa_router_inflight",
    ] {
        assert!(text.contains(metric), "{metric} missing from:\n{text}");
    }

    let (_, _, body) = h.admin_get("/debug/routes", None).await;
    let routes: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(routes["routes"][0]["trigger"], "default/t");
    assert_eq!(routes["routes"][0]["relativeurl"], "/t");
    let (_, _, body) = h.admin_get("/debug/endpoints", None).await;
    let endpoints: Value = serde_json::from_slice(&body).unwrap();
    let hello = endpoints["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["function"] == "default/hello")
        .unwrap();
    assert_eq!(hello["endpoints"][0]["instance"], "hello-g1-1");

    // The public listener serves triggers only.
    let (status, _, _) = h.get("/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, headers, body) = h.get("/internal/v1/functions/default/hello/invoke").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&headers, &body).0, "route_not_found");

    h.stop().await.expect("serve ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_invoke_needs_the_token() {
    let h = Harness::start_with(RouterConfig {
        internal_token: Some("s3cret".into()),
        ..RouterConfig::default()
    })
    .await;
    h.put_function("hello", 60).await;
    let path = "/internal/v1/functions/default/hello/invoke/sub/path?x=1";

    let (status, headers, body) = h.admin_get(path, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "unauthorized");
    let (status, _, _) = h.admin_get(path, Some("wrong")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, headers, body) = h.admin_get(path, Some("s3cret")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_invocation_id(&headers);
    let e = echo(&body);
    assert_eq!(e["path"], "/sub/path?x=1");
    assert_eq!(e["headers"]["x-kappa-function-name"], "hello");

    let (status, _, body) = h
        .admin_get(
            "/internal/v1/functions/default/hello/invoke",
            Some("s3cret"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo(&body)["path"], "/");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_views_need_the_token_and_metrics_can() {
    for metrics_need_token in [false, true] {
        let h = Harness::start_with(RouterConfig {
            internal_token: Some("s3cret".into()),
            metrics_need_token,
            ..RouterConfig::default()
        })
        .await;
        h.put_function("hello", 60).await;
        for path in [
            "/debug/endpoints",
            "/debug/routes",
            "/debug/nothing",
            "/debug",
        ] {
            for token in [None, Some("wrong"), Some("s3cre"), Some("s3crett")] {
                let (status, headers, body) = h.admin_get(path, token).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {token:?}");
                assert_eq!(headers["www-authenticate"], "Bearer");
                assert_eq!(admin_error(&headers, &body), "unauthorized");
            }
        }
        let (status, _, body) = h.admin_get("/debug/endpoints", Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK);
        let endpoints: Value = serde_json::from_slice(&body).unwrap();
        assert!(endpoints["functions"].is_array(), "{endpoints}");
        let (status, headers, body) = h.admin_get("/debug/nothing", Some("s3cret")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(admin_error(&headers, &body), "not_found");

        // Probes never need it; /metrics only when asked to.
        for path in ["/healthz", "/readyz"] {
            assert_eq!(h.admin_get(path, None).await.0, StatusCode::OK, "{path}");
        }
        let (status, headers, body) = h.admin_get("/metrics", None).await;
        if metrics_need_token {
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            assert_eq!(admin_error(&headers, &body), "unauthorized");
            assert_eq!(
                h.admin_get("/metrics", Some("wrong")).await.0,
                StatusCode::UNAUTHORIZED
            );
            assert_eq!(
                h.admin_get("/metrics", Some("s3cret")).await.0,
                StatusCode::OK
            );
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_calls_a_function_without_a_trigger() {
    let h = Harness::start().await;
    h.put_function("hello", 60).await;
    let request = Request::post("/sub/path?x=1")
        .header("x-kappa-topic", "orders")
        .body(axum::body::Body::from("hi"))
        .unwrap();
    let response = h
        .router
        .invoke(FunctionId::new("default", "hello"), request)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_invocation_id(response.headers());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let e = echo(&body);
    assert_eq!(e["path"], "/sub/path?x=1");
    assert_eq!(e["method"], "POST");
    assert_eq!(e["bodyLen"], 2);
    assert_eq!(
        e["headers"]["x-kappa-topic"], "orders",
        "callers' own X-Kappa headers pass"
    );
    assert_eq!(e["headers"]["x-kappa-full-url"], "/sub/path?x=1");

    let response = h
        .router
        .invoke(
            FunctionId::new("default", "nope"),
            Request::get("/").body(axum::body::Body::empty()).unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(error_of(&headers, &body).0, "function_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoke_finds_a_function_created_a_moment_ago() {
    let h = Harness::start().await;
    // Written to the store without waiting for the route table.
    let f = kappa_types::Function::new(
        "fresh",
        kappa_types::FunctionSpec::new("python", "pkg", "main.main"),
    );
    h.store
        .put(f.to_json(), kappa_store::Precondition::None)
        .await
        .unwrap();
    let response = h
        .router
        .invoke(
            FunctionId::new("default", "fresh"),
            Request::get("/").body(axum::body::Body::empty()).unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut h = Harness::start().await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/t".into()))
        .await;
    assert_eq!(h.get("/t").await.0, StatusCode::OK);
    let public = h.public;
    let in_flight = tokio::spawn(async move {
        send(
            public,
            Request::get("/t")
                .header("host", "t")
                .header("x-test-gate", "1")
                .body(empty())
                .unwrap(),
        )
        .await
    });
    let up = h.provisioner.upstream("hello-g1-1");
    eventually_async(
        Duration::from_secs(15),
        "the request to reach the function",
        || async { up.gated.load(Ordering::SeqCst) == 1 },
    )
    .await;

    h.shutdown.cancel();
    let serving = h.serving.take().unwrap();
    eventually_async(Duration::from_secs(15), "the listener to close", || async {
        tokio::net::TcpStream::connect(public).await.is_err()
    })
    .await;
    assert!(
        !serving.is_finished(),
        "serve waits for the in-flight request"
    );
    up.gate.add_permits(1);
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    serving.await.unwrap().unwrap();
}

/// Starts a gated request to `/t` and waits until it is at the function.
async fn gated_request(h: &Harness) -> (tokio::task::JoinHandle<()>, Arc<Upstream>) {
    h.put_function("hello", 3600).await;
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/t".into()))
        .await;
    assert_eq!(h.get("/t").await.0, StatusCode::OK);
    let public = h.public;
    let in_flight = tokio::spawn(async move {
        let (status, _, _) = send(
            public,
            Request::get("/t")
                .header("host", "t")
                .header("x-test-gate", "1")
                .body(empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    });
    let up = h.provisioner.upstream("hello-g1-1");
    eventually_async(
        Duration::from_secs(15),
        "the request to reach the function",
        || async { up.gated.load(Ordering::SeqCst) == 1 },
    )
    .await;
    (in_flight, up)
}

/// `RouterConfig::shutdown_grace` (`kappa server --shutdown-grace`) bounds the drain: longer
/// than the default, an in-flight request still finishes after the default has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_the_configured_grace() {
    let mut h = Harness::start_with(RouterConfig {
        shutdown_grace: Duration::from_secs(3600),
        ..RouterConfig::default()
    })
    .await;
    let (in_flight, up) = gated_request(&h).await;
    h.shutdown.cancel();
    let serving = h.serving.take().unwrap();
    // Not a timing assertion: only that serve is still draining once the old fixed grace
    // (and some) has passed; it cannot have finished while the request is held.
    tokio::time::sleep(kappa_router::SHUTDOWN_GRACE + Duration::from_secs(2)).await;
    assert!(
        !serving.is_finished(),
        "serve drains for the configured grace"
    );
    up.gate.add_permits(1);
    in_flight.await.unwrap();
    serving.await.unwrap().unwrap();
}

/// A short grace closes the connections of requests still in flight when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_grace_closes_what_is_still_in_flight() {
    let mut h = Harness::start_with(RouterConfig {
        shutdown_grace: Duration::from_millis(100),
        ..RouterConfig::default()
    })
    .await;
    let (in_flight, up) = gated_request(&h).await;
    h.shutdown.cancel();
    let serving = h.serving.take().unwrap();
    // The request stays held at the function: serve ends anyway, and its client sees the
    // connection closed rather than an answer.
    serving.await.unwrap().unwrap();
    assert_eq!(up.gated.load(Ordering::SeqCst), 1);
    assert!(in_flight.await.is_err(), "the held request got no answer");
}
