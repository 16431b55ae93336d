//! Bodies stream both ways and the body limit holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Request, StatusCode};
use http_body_util::BodyExt;
use kappa_core::{Endpoint, FunctionId};
use kappa_router::RouterConfig;

use crate::support::*;

const FIFTY_MB: usize = 50 * 1000 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways_without_buffering() {
    let h = Harness::start().await;
    h.put_function("big", 60).await;
    h.put_trigger("t", "big", |s| {
        s.relativeurl = Some("/big".into());
        s.methods = vec!["POST".into()];
    })
    .await;
    let probe = Arc::new(StreamProbe::default());
    let up = Upstream::start_with("big-stream", Arc::clone(&probe), FIFTY_MB).await;
    h.index.insert(
        &FunctionId::new("default", "big"),
        Arc::new(Endpoint::new("big-stream", up.addr, 1, 4)),
    );

    // The client sends its first chunk and the rest only once the upstream has seen that chunk;
    // the upstream sends its first chunk and the rest only once the client has seen it. Either
    // direction buffered by the router would deadlock (and time out) here.
    let exchange = async {
        let request = Request::post("/big")
            .header("host", "t")
            .header("x-test-stream", "1")
            .body(client_stream_body(FIFTY_MB, Arc::clone(&probe)))
            .unwrap();
        let response = send_head(h.public, request).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                if total == 0 && !data.is_empty() {
                    probe.client_got_first.notify_one();
                }
                total += data.len();
            }
        }
        total
    };
    let total = tokio::time::timeout(Duration::from_secs(120), exchange)
        .await
        .expect("bodies must stream, not be buffered");
    assert_eq!(total, FIFTY_MB);
    assert_eq!(probe.received.load(Ordering::SeqCst), FIFTY_MB);
    assert_eq!(h.provisioner.calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413() {
    let h = Harness::start_with(RouterConfig {
        max_body_bytes: 1024,
        ..RouterConfig::default()
    })
    .await;
    h.put_function("small", 60).await;
    h.put_trigger("t", "small", |s| {
        s.relativeurl = Some("/small".into());
        s.methods = vec!["POST".into()];
    })
    .await;

    // By Content-Length: refused before anything reaches the function (no cold start even).
    let (status, headers, body) = h
        .request(
            Request::post("/small")
                .header("host", "t")
                .header("content-length", "2048")
                .body(full(vec![b'x'; 2048]))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (code, message) = error_of(&headers, &body);
    assert_eq!(code, "body_too_large");
    assert!(message.contains("1024"), "{message}");
    assert_eq!(h.provisioner.calls(), 0);

    // Within the limit.
    let (status, _, body) = h
        .request(
            Request::post("/small")
                .header("host", "t")
                .body(full(vec![b'x'; 1000]))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(echo(&body)["bodyLen"], 1000);

    // Chunked, no length: cut off while streaming.
    let (status, headers, body) = h
        .request(
            Request::post("/small")
                .header("host", "t")
                .body(stream_body(4096, None))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(&headers, &body).0, "body_too_large");
}
