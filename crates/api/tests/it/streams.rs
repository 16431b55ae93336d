//! The streaming endpoints over a real socket: watch and log follow.

use std::time::Duration;

use http::StatusCode;
use kappa_logs::LogStream;
use kappa_store::StoreOptions;

use crate::support::*;

#[tokio::test]
async fn watch_replays_from_a_version_then_streams_new_events() {
    let api = Api::new();
    api.create("environments", env("python")).await; // 1
    api.create("packages", package("hello", "python", b"x"))
        .await; // 2
    // 3 is the function's first version (a FunctionVersion), written just before it.
    api.create("functions", function("hello", "python", "hello"))
        .await; // 4
    api.create("environments", env("node")).await; // 5
    let server = api.serve().await;
    let client = reqwest::Client::new();

    let response = client
        .get(server.url("/v1/watch?kinds=functions,environments&resourceVersion=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut lines = Lines::new(response);
    // The package (2) and the version (3) are filtered out; the replay ends with a bookmark at the version the watch
    // started from.
    let e = lines.next().await;
    assert_eq!(
        (e["type"].as_str(), e["object"]["kind"].as_str()),
        (Some("Added"), Some("Function")),
        "{e}"
    );
    assert_eq!(e["object"]["metadata"]["resourceVersion"], "4");
    let e = lines.next().await;
    assert_eq!(e["object"]["metadata"]["name"], "node", "{e}");
    let b = lines.next().await;
    assert_eq!(
        b,
        serde_json::json!({"type": "Bookmark", "resourceVersion": "5"})
    );

    // Live events follow.
    let mut updated = function("hello", "python", "hello");
    updated["spec"]["concurrency"] = 3.into();
    let (status, _) = api.put("/v1/functions/hello", updated).await;
    assert_eq!(status, StatusCode::OK);
    let e = lines.next_event().await;
    assert_eq!(e["type"], "Modified", "{e}");
    assert_eq!(e["object"]["spec"]["concurrency"], 3);
    api.delete("/v1/functions/hello").await;
    let e = lines.next_event().await;
    assert_eq!(e["type"], "Deleted", "{e}");
    assert_eq!(e["object"]["metadata"]["name"], "hello");
}

#[tokio::test]
async fn watch_without_a_version_sees_only_new_events_and_bookmarks() {
    let api = Api::new().map_state(|s| s.with_bookmark_interval(Duration::from_millis(50)));
    api.create("environments", env("python")).await;
    let server = api.serve().await;
    let response = reqwest::Client::new()
        .get(server.url("/v1/watch?kinds=environments"))
        .send()
        .await
        .unwrap();
    let mut lines = Lines::new(response);
    let b = lines.next().await;
    assert_eq!(
        b,
        serde_json::json!({"type": "Bookmark", "resourceVersion": "1"})
    );
    // Periodic bookmarks while nothing happens.
    let b = lines.next().await;
    assert_eq!(b["type"], "Bookmark");
    api.create("environments", env("node")).await;
    let e = lines.next_event().await;
    assert_eq!(e["type"], "Added");
    assert_eq!(e["object"]["metadata"]["name"], "node");
}

#[tokio::test]
async fn watch_from_a_version_too_old_or_too_new_is_gone() {
    let api = Api::with(Options {
        store: StoreOptions {
            event_history: 2,
            ..StoreOptions::default()
        },
        ..Options::default()
    });
    for name in ["a", "b", "c", "d", "e"] {
        api.create("environments", env(name)).await;
    }
    let (status, err) = api.get("/v1/watch?resourceVersion=1").await;
    assert_error(status, &err, StatusCode::GONE, "gone", None);
    let (status, err) = api.get("/v1/watch?resourceVersion=99").await;
    assert_error(status, &err, StatusCode::GONE, "gone", None);
    let (status, err) = api.get("/v1/watch?kinds=pods").await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("kinds"),
    );
    let (status, err) = api.get("/v1/watch?resourceVersion=x").await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("resourceVersion"),
    );
}

#[tokio::test]
async fn logs_tail_and_follow() {
    let api = Api::new();
    api.seed().await;
    let instance = api.logs.instance("python", "inst-1");
    instance.write(LogStream::Platform, "started");
    instance.assign("default", "hello");
    instance.write(LogStream::Stdout, "first");
    instance.write(LogStream::Stderr, "second");

    let (status, body) = api.get("/v1/functions/hello/logs?tail=2").await;
    assert_eq!(status, StatusCode::OK);
    let text = body
        .as_str()
        .expect("ndjson is not one JSON document")
        .to_string();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["message"], "first");
    assert_eq!(lines[0]["stream"], "stdout");
    assert_eq!(lines[0]["instance"], "inst-1");
    assert!(lines[0]["timestamp"].is_string());
    assert_eq!(lines[1]["message"], "second");

    let (status, err) = api.get("/v1/functions/ghost/logs").await;
    assert_error(status, &err, StatusCode::NOT_FOUND, "not_found", None);

    let server = api.serve().await;
    let response = reqwest::Client::new()
        .get(server.url("/v1/functions/hello/logs?follow=true&tail=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut lines = Lines::new(response);
    assert_eq!(lines.next().await["message"], "second");
    instance.write(LogStream::Stdout, "third");
    assert_eq!(lines.next().await["message"], "third");
    // A new instance of the function appears later.
    let other = api.logs.instance("python", "inst-2");
    other.assign("default", "hello");
    other.write(LogStream::Stdout, "from two");
    let line = lines.next().await;
    assert_eq!(
        (line["instance"].as_str(), line["message"].as_str()),
        (Some("inst-2"), Some("from two"))
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams() {
    let api = Api::new();
    api.seed().await;
    let server = api.serve().await;
    let client = reqwest::Client::new();
    let watch = client.get(server.url("/v1/watch")).send().await.unwrap();
    let follow = client
        .get(server.url("/v1/functions/hello/logs?follow=true"))
        .send()
        .await
        .unwrap();
    let mut watch = Lines::new(watch);
    assert_eq!(watch.next().await["type"], "Bookmark");
    server.shutdown.cancel();
    let mut server = server;
    let result = tokio::time::timeout(Duration::from_secs(10), &mut server.task).await;
    assert!(result.is_ok(), "serve did not return after shutdown");
    let rest = tokio::time::timeout(Duration::from_secs(10), follow.bytes()).await;
    assert!(rest.is_ok(), "the follow stream did not end");
}
