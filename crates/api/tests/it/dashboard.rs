//! `/v1/stats`, `/v1/functions/{name}/stats` and the dashboard's files at `/ui`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use kappa_core::{FunctionId, StatsRegistry};

use crate::support::*;

fn recorded() -> Arc<StatsRegistry> {
    let stats = Arc::new(StatsRegistry::new());
    let hello = FunctionId::new("default", "hello");
    for _ in 0..3 {
        stats.record(
            &hello,
            200,
            Duration::from_millis(20),
            b"0123456789abcdef0123456789abcdef",
        );
    }
    stats.record(
        &hello,
        502,
        Duration::from_millis(2),
        b"ffffffffffffffffffffffffffffffff",
    );
    stats.cold_start(&hello);
    stats.record(
        &FunctionId::new("other", "elsewhere"),
        200,
        Duration::from_millis(1),
        b"",
    );
    stats
}

#[tokio::test]
async fn stats_summarise_the_last_hour() {
    let api = Api::with_token().map_state(|s| s.with_stats(recorded()));
    api.seed().await;

    let (status, all) = api.get("/v1/stats").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    assert_eq!(all["windowMinutes"], 60);
    let items = all["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the default namespace: {all}");
    let hello = &items[0];
    assert_eq!(hello["name"], "hello");
    assert_eq!(hello["requests"], 4);
    assert_eq!(hello["errors"], 1);
    assert_eq!(hello["errorRate"], 0.25);
    assert_eq!(hello["coldStarts"], 1);
    let p50 = hello["p50Ms"].as_f64().unwrap();
    assert!((p50 - 20.0).abs() < 20.0 * 0.13, "{p50}");
    assert_eq!(
        hello["lastInvocation"]["invocationId"],
        "ffffffffffffffffffffffffffffffff"
    );
    assert_eq!(hello["lastInvocation"]["status"], 502);

    let (_, every) = api.get("/v1/stats?allNamespaces=true").await;
    assert_eq!(every["items"].as_array().unwrap().len(), 2);

    let (status, one) = api.get("/v1/functions/hello/stats?window=5").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["series"].as_array().unwrap().len(), 5);
    assert_eq!(one["summary"]["requests"], 4);
    assert_eq!(one["recent"].as_array().unwrap().len(), 4);
    assert_eq!(one["recent"][0]["status"], 502);
}

#[tokio::test]
async fn stats_errors_name_the_cause() {
    let api = Api::with_token().map_state(|s| s.with_stats(recorded()));
    api.seed().await;
    let (status, body) = api.get("/v1/stats?window=0").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("window"),
    );
    let (status, body) = api.get("/v1/stats?window=61").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("window"),
    );
    let (status, body) = api.get("/v1/functions/nothere/stats").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    // A function that exists but was not called: zeros, not an error.
    let (status, body) = api
        .post("/v1/functions", function("quiet", "python", "hello"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api.get("/v1/functions/quiet/stats").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["summary"]["requests"], 0);
    assert!(body["summary"]["p50Ms"].is_null());

    let without = Api::with_token();
    let (status, body) = without.get("/v1/stats").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        None,
    );
}

#[tokio::test]
async fn the_dashboard_is_served_without_the_token_and_its_data_is_not() {
    let api = Api::with_token().map_state(|s| s.with_stats(recorded()));
    let bare = |uri: &str| {
        Request::get(uri)
            .header(header::AUTHORIZATION, "Bearer wrong")
            .body(Body::empty())
            .unwrap()
    };
    for (path, kind) in [
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let response = api.send(bare(path)).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
        assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
    for path in ["/", "/ui"] {
        let response = api.send(bare(path)).await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(response.headers()[header::LOCATION], "/ui/");
    }
    let (status, body) = json_of(api.send(bare("/ui/secret.txt")).await).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    // The data stays behind the token.
    for path in [
        "/v1/stats",
        "/v1/functions/hello/stats",
        "/uix",
        "/v1/functions",
    ] {
        let (status, body) = json_of(api.send(bare(path)).await).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
}
