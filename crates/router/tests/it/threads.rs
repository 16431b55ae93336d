//! Router threads (`RouterConfig::threads`): the public listener served by several
//! current-thread runtimes, each with its own `SO_REUSEPORT` listener, or on the caller's
//! runtime with `0`.

use std::time::Duration;

use http::StatusCode;
use kappa_router::RouterConfig;
use kappa_test_support::eventually_async;

use crate::support::*;

/// Many keep-alive connections through `threads` router threads: every request answered,
/// then a clean stop that closes every listener of the address.
async fn serve_many_connections(threads: usize) {
    let mut h = Harness::start_with(RouterConfig {
        threads,
        ..RouterConfig::default()
    })
    .await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/t".into()))
        .await;
    assert_eq!(h.get("/t").await.0, StatusCode::OK);
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(Client::connect(h.public).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..5 {
                    let (status, headers, body) = client.get("/t").await;
                    assert_eq!(status, StatusCode::OK, "{body:?}");
                    assert_invocation_id(&headers);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    // Another socket still cannot take the router's address.
    assert!(std::net::TcpListener::bind(h.public).is_err());
    let public = h.public;
    h.stop().await.unwrap();
    eventually_async(
        Duration::from_secs(15),
        "every listener to close",
        || async { tokio::net::TcpStream::connect(public).await.is_err() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_router_threads_share_the_public_address() {
    serve_many_connections(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_threads_serve_on_the_callers_runtime() {
    serve_many_connections(0).await;
}

/// Idle upstream connections of every router thread show in `/debug/endpoints` and are reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_threads_pool_their_upstream_connections() {
    let h = Harness::start_with(RouterConfig {
        threads: 2,
        ..RouterConfig::default()
    })
    .await;
    h.put_function("hello", 60).await;
    h.put_trigger("t", "hello", |s| s.relativeurl = Some("/t".into()))
        .await;
    let mut client = Client::connect(h.public).await;
    for _ in 0..3 {
        assert_eq!(client.get("/t").await.0, StatusCode::OK);
    }
    let idle = || async {
        let (status, _, body) = h.admin_get("/debug/endpoints", None).await;
        assert_eq!(status, StatusCode::OK, "{body:?}");
        let view: serde_json::Value = serde_json::from_slice(&body).unwrap();
        view["functions"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| f["endpoints"].as_array().unwrap().iter())
            .map(|e| e["idleConnections"].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    // One connection, reused by the three requests.
    eventually_async(
        Duration::from_secs(15),
        "one idle upstream connection",
        || async { idle().await == 1 },
    )
    .await;
    assert_eq!(client.get("/t").await.0, StatusCode::OK);
    eventually_async(
        Duration::from_secs(15),
        "still one idle upstream connection",
        || async { idle().await == 1 },
    )
    .await;
}
