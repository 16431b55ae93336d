//! Upstream failures: timeouts, crashes, closed connections, refused connections.

use std::sync::Arc;

use http::{Request, StatusCode};
use kappa_core::{Endpoint, FunctionId};
use tokio::net::TcpListener;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_function_gets_504_and_its_connection_is_not_reused() {
    let h = Harness::start().await;
    h.put_function("slow", 1).await;
    h.put_trigger("t", "slow", |s| s.relativeurl = Some("/slow".into()))
        .await;
    let (status, headers, body) = h
        .request(
            Request::get("/slow")
                .header("host", "t")
                .header("x-test-sleep-ms", "3000")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "timeout");
    assert_eq!(message, "function default/slow did not respond within 1 s");
    // The next request works (on a fresh upstream connection).
    let (status, _, _) = h.get("/slow").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_dies_mid_request_gives_502_with_its_exit_reason() {
    let h = Harness::start().await;
    h.put_function("hog", 60).await;
    h.put_trigger("t", "hog", |s| s.relativeurl = Some("/hog".into()))
        .await;
    assert_eq!(h.get("/hog").await.0, StatusCode::OK);
    let (status, headers, body) = h
        .request(
            Request::get("/hog")
                .header("host", "t")
                .header("x-test-crash", "1")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "instance_failed");
    assert_eq!(
        message,
        "instance hog-g1-1 of function default/hog exited with signal 9 (out of memory)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_without_an_exit_report_says_so() {
    let h = Harness::start().await;
    h.put_function("flaky", 60).await;
    h.put_trigger("t", "flaky", |s| s.relativeurl = Some("/flaky".into()))
        .await;
    let (status, headers, body) = h
        .request(
            Request::get("/flaky")
                .header("host", "t")
                .header("x-test-close", "1")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "instance_failed");
    assert_eq!(
        message,
        "connection to instance flaky-g1-1 closed before a response"
    );
    // The instance itself is still fine.
    assert_eq!(h.get("/flaky").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_on_another_instance() {
    let h = Harness::start().await;
    h.put_function("retry", 60).await;
    h.put_trigger("t", "retry", |s| s.relativeurl = Some("/retry".into()))
        .await;
    // An endpoint whose port nobody listens on.
    let dead_addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let id = FunctionId::new("default", "retry");
    let dead = Arc::new(Endpoint::new("dead", dead_addr, 1, 4));
    h.index.insert(&id, Arc::clone(&dead));

    let (status, headers, body) = h.get("/retry").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_invocation_id(&headers);
    assert_eq!(echo(&body)["instance"], "retry-g1-1");
    assert!(
        dead.is_draining(),
        "the unreachable instance admits no more requests"
    );
    assert_eq!(dead.in_flight(), 0, "its slot was released");
    assert_eq!(h.provisioner.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_instance_closed_are_not_used() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start().await;
    h.put_function("oneshot", 60).await;
    h.put_trigger("t", "oneshot", |s| s.relativeurl = Some("/oneshot".into()))
        .await;
    // An instance that answers one request per connection and then closes it silently
    // (no `Connection: close`), as a runtime with a short keep-alive timeout does.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = stream.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            });
        }
    });
    let id = FunctionId::new("default", "oneshot");
    let endpoint = Arc::new(Endpoint::new("raw", addr, 1, 4));
    h.index.insert(&id, Arc::clone(&endpoint));
    let mut client = Client::connect(h.public).await;
    for _ in 0..5 {
        let (status, _, body) = client.get("/oneshot").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"ok");
    }
    assert!(!endpoint.is_draining());
    assert_eq!(h.provisioner.calls(), 0);
    server.abort();
}
