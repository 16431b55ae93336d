//! Authentication, the JSON shape of every error (axum's own included), health, metrics, info.

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kappa_store::Store;
use kappa_types::Kind;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn a_token_is_required_and_refusals_change_nothing() {
    let api = Api::with_token();
    let before = api.version().await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic czNjcmV0LXRva2Vu"),
        Some("Bearer "),
    ] {
        let mut request =
            Request::post("/v1/environments").header(header::CONTENT_TYPE, "application/json");
        // `send` adds the right token only when none is present: mark "none" with an empty header.
        request = request.header(header::AUTHORIZATION, auth.unwrap_or(""));
        let request = request.body(Body::from(env("python").to_string())).unwrap();
        let response = api.send(request).await;
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let (status, body) = json_of(response).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        );
    }
    assert_eq!(api.version().await, before);
    assert!(
        api.store
            .list(Kind::Environment, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // Unknown paths are hidden too; probes are open.
    let (status, body) = json_of(api.send(unauthenticated("GET", "/v1/nothing")).await).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    );
    for open in ["/healthz", "/readyz", "/metrics"] {
        let response = api.send(unauthenticated("GET", open)).await;
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }

    // The right token works.
    api.create("environments", env("python")).await;
}

#[tokio::test]
async fn metrics_can_require_the_token() {
    let api = Api::with_token().map_state(|s| s.with_metrics_need_token(true));
    for auth in ["", "Bearer wrong", "Basic czNjcmV0LXRva2Vu"] {
        let request = Request::get("/metrics")
            .header(header::AUTHORIZATION, auth)
            .body(Body::empty())
            .unwrap();
        let (status, body) = json_of(api.send(request).await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        );
    }
    // Probes stay open; the token opens /metrics.
    for open in ["/healthz", "/readyz"] {
        let response = api.send(unauthenticated("GET", open)).await;
        assert_eq!(response.status(), StatusCode::OK, "{open}");
    }
    let response = api
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&text).contains("kappa_api_requests"),
        "{text:?}"
    );
}

fn unauthenticated(method: &str, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, "")
        .body(Body::empty())
        .unwrap()
}

#[tokio::test]
async fn axum_rejections_are_json() {
    let api = Api::new();
    // Malformed JSON.
    let request = Request::post("/v1/environments")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"metadata\": "))
        .unwrap();
    let (status, body) = json_of(api.send(request).await).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid", None);
    // Malformed YAML.
    let request = Request::post("/v1/environments")
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from("metadata: [unclosed"))
        .unwrap();
    let (status, body) = json_of(api.send(request).await).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid", None);
    // Missing body.
    let request = Request::post("/v1/environments")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .unwrap();
    let (status, body) = json_of(api.send(request).await).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid", None);
    // Not an object.
    let (status, body) = api
        .call("POST", "/v1/environments", Some(json!([1, 2])))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid", None);
    // Wrong or missing content type.
    for content_type in [Some("text/plain"), None] {
        let mut request = Request::post("/v1/environments");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = request.body(Body::from(env("python").to_string())).unwrap();
        let (status, body) = json_of(api.send(request).await).await;
        assert_error(
            status,
            &body,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            None,
        );
    }
    // Unknown route, wrong method.
    let (status, body) = api.get("/v1/pods").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    let response = api
        .send(Request::delete("/v1/info").body(Body::empty()).unwrap())
        .await;
    assert!(response.headers().contains_key(header::ALLOW));
    let (status, body) = json_of(response).await;
    assert_error(
        status,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        None,
    );
    // Too large.
    let huge = format!(
        "{{\"metadata\":{{\"name\":\"x\",\"annotations\":{{\"a\":\"{}\"}}}}}}",
        "x".repeat(kappa_api::RESOURCE_BODY_LIMIT + 1)
    );
    let request = Request::post("/v1/environments")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(huge))
        .unwrap();
    let (status, body) = json_of(api.send(request).await).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        None,
    );
    assert_eq!(api.version().await, 0);
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let api = Api::new();
    let response = api
        .send(Request::get("/v1/info").body(Body::empty()).unwrap())
        .await;
    assert!(response.headers().contains_key("x-request-id"));
    let response = api
        .send(
            Request::get("/v1/nothing")
                .header("x-request-id", "abc-123")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn health_info_and_metrics() {
    let api = Api::new().map_state(|s| s.with_router_url("http://127.0.0.1:8888"));
    let response = api
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    let (status, _) = api.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    let (status, info) = api.get("/v1/info").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["routerUrl"], "http://127.0.0.1:8888");

    api.get("/v1/functions").await;
    api.get("/v1/functions/ghost").await;
    let response = api
        .send(Request::get("/metrics").body(Body::empty()).unwrap())
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains(
            r#"kappa_api_requests_total{method="GET",route="/v1/functions",code="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"kappa_api_requests_total{method="GET",route="/v1/functions/{name}",code="404"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("kappa_api_request_duration_seconds_bucket"),
        "{text}"
    );
}
