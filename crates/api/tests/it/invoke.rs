//! Test invocations through a fake [`Invoker`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use kappa_api::Invoker;
use kappa_core::FunctionId;
use kappa_test_support::eventually_async;

use crate::support::*;

/// What the fake saw of one invocation.
#[derive(Debug, Clone)]
struct Seen {
    function: FunctionId,
    method: String,
    uri: String,
    authorization: bool,
    body: Vec<u8>,
}

#[derive(Default)]
struct FakeInvoker {
    seen: Mutex<Vec<Seen>>,
}

#[async_trait]
impl Invoker for FakeInvoker {
    async fn invoke(&self, function: FunctionId, request: Request<Body>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let body = body.collect().await.unwrap().to_bytes().to_vec();
        self.seen.lock().unwrap().push(Seen {
            function,
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            authorization: parts.headers.contains_key(header::AUTHORIZATION),
            body,
        });
        // A function's own error must come back as it is, not as an API error.
        Response::builder()
            .status(StatusCode::IM_A_TEAPOT)
            .header(header::CONTENT_TYPE, "text/plain")
            .header("x-kappa-invocation-id", "inv-1")
            .body(Body::from("short and stout"))
            .unwrap()
    }
}

#[tokio::test]
async fn invocations_reach_the_invoker_with_the_function_path() {
    let fake = Arc::new(FakeInvoker::default());
    let api = Api::with_token().map_state(|s| s.with_invoker(fake.clone()));
    api.seed().await;

    let request = Request::post("/v1/functions/hello/invoke/a/b%20c?x=1&namespace=default&y=%2F")
        .body(Body::from("ping"))
        .unwrap();
    let response = api.send(request).await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(response.headers()["x-kappa-invocation-id"], "inv-1");
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/plain");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "short and stout");

    let response = api
        .send(
            Request::get("/v1/functions/hello/invoke")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);

    let seen = fake.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].function, FunctionId::new("default", "hello"));
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].uri, "/a/b%20c?x=1&y=%2F");
    assert!(
        !seen[0].authorization,
        "the API token leaked to the function"
    );
    assert_eq!(seen[0].body, b"ping");
    assert_eq!(seen[1].uri, "/");
    assert_eq!(seen[1].method, "GET");
}

#[tokio::test]
async fn invocation_errors() {
    let fake = Arc::new(FakeInvoker::default());
    let api = Api::new().map_state(|s| s.with_invoker(fake.clone()));
    let (status, err) = api.get("/v1/functions/ghost/invoke").await;
    assert_error(status, &err, StatusCode::NOT_FOUND, "not_found", None);
    let (status, err) = api.get("/v1/functions/..%2Fx/invoke").await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("name"),
    );

    let without = Api::new();
    without.seed().await;
    let (status, err) = without.get("/v1/functions/hello/invoke").await;
    assert_error(
        status,
        &err,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        None,
    );
    assert!(fake.seen.lock().unwrap().is_empty());
}

/// Sets its flag when dropped.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Answers with a body that sends one chunk and then never ends.
struct EndlessInvoker {
    dropped: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl Invoker for EndlessInvoker {
    async fn invoke(&self, _function: FunctionId, _request: Request<Body>) -> Response<Body> {
        let guard = DropFlag(self.dropped.clone());
        let first = futures::stream::once(async {
            Ok::<_, std::convert::Infallible>(bytes::Bytes::from("tick\n"))
        });
        let rest = futures::stream::unfold(guard, |guard| async move {
            futures::future::pending::<()>().await;
            Some((Ok(bytes::Bytes::new()), guard))
        });
        Response::new(Body::from_stream(futures::StreamExt::chain(first, rest)))
    }
}

#[tokio::test]
async fn a_streamed_response_ends_when_the_client_goes_away() {
    let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let invoker = Arc::new(EndlessInvoker {
        dropped: dropped.clone(),
    });
    let api = Api::new().map_state(|s| s.with_invoker(invoker));
    api.seed().await;
    let server = api.serve().await;
    let mut response = reqwest::get(server.url("/v1/functions/hello/invoke"))
        .await
        .unwrap();
    assert_eq!(response.chunk().await.unwrap().unwrap(), "tick\n");
    assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
    drop(response);
    eventually_async(
        Duration::from_secs(10),
        "the server to drop the body",
        || {
            let dropped = dropped.clone();
            async move {
                dropped
                    .load(std::sync::atomic::Ordering::SeqCst)
                    .then_some(())
            }
        },
    )
    .await;
}
