//! `POST /v1/batch`: everything checked before anything is written, and a failure midway leaves
//! every object at its old version.

use http::StatusCode;
use serde_json::{Value, json};

use crate::support::*;

fn create(object: Value) -> Value {
    json!({"op": "create", "object": object})
}

fn replace(object: Value) -> Value {
    json!({"op": "replace", "object": object})
}

/// Every object of the store, as `(kind, name, resourceVersion, spec)`.
async fn snapshot(api: &Api) -> Vec<(String, String, String, Value)> {
    let mut out = Vec::new();
    for plural in ["environments", "packages", "functions", "httptriggers"] {
        let (_, list) = api.get(&format!("/v1/{plural}")).await;
        for item in list["items"].as_array().unwrap() {
            out.push((
                plural.to_string(),
                item["metadata"]["name"].as_str().unwrap().to_string(),
                item["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                item["spec"].clone(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn a_batch_is_written_in_dependency_order_and_pins_packages() {
    let api = Api::new();
    // Listed in the wrong order on purpose: the server orders by dependency.
    let (status, body) = api
        .post(
            "/v1/batch",
            json!({"operations": [
                create(trigger("hello", "/hello", "hello")),
                create(function("hello", "python", "hello")),
                create(package("hello", "python", b"def main():\n    return 'hi'\n")),
                create(env("python")),
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"].as_array().unwrap().len(), 4);
    let (_, f) = api.get("/v1/functions/hello").await;
    let (_, p) = api.get("/v1/packages/hello").await;
    assert_eq!(
        f["spec"]["package"]["packageref"]["resourceversion"],
        p["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn a_late_validation_error_or_stale_precondition_writes_nothing() {
    let api = Api::new();
    api.seed().await;
    let before = snapshot(&api).await;
    let version = api.version().await;
    let (_, mut env) = api.get("/v1/environments/python").await;
    env["spec"]["poolsize"] = json!(2);

    let mut bad = trigger("t", "/t", "hello");
    bad["spec"]["methods"] = json!(["FETCH"]);
    let (status, body) = api
        .post(
            "/v1/batch",
            json!({"operations": [replace(env.clone()), create(trigger("ok", "/ok", "hello")), create(bad)]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["error"]["field"],
        "operations[2].object.spec.methods[0]"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("operations[2] (create HttpTrigger)"),
        "{body}"
    );
    assert_eq!(api.version().await, version, "nothing was written");

    // A stale resource version on the last operation.
    let mut stale = function("hello", "python", "hello");
    stale["metadata"]["resourceVersion"] = json!("1");
    let (status, body) = api
        .post(
            "/v1/batch",
            json!({"operations": [replace(env), create(trigger("ok", "/ok", "hello")), replace(stale)]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(api.version().await, version, "nothing was written");
    assert_eq!(snapshot(&api).await, before);
}

#[tokio::test]
async fn a_failure_while_writing_undoes_the_earlier_writes() {
    let api = Api::new();
    api.seed().await;
    api.create("httptriggers", trigger("taken", "/taken", "hello"))
        .await;
    let before = snapshot(&api).await;
    let (_, mut env) = api.get("/v1/environments/python").await;
    env["spec"]["poolsize"] = json!(2);
    let (_, mut pkg) = api.get("/v1/packages/hello").await;
    pkg["spec"]["buildcmd"] = json!("true");

    // Every object is valid on its own; the new trigger's route collides with an existing
    // trigger's, which only the admission (after the environment, package and function were
    // written) finds.
    let (status, body) = api
        .post(
            "/v1/batch",
            json!({"operations": [
                replace(env),
                replace(pkg),
                create(function("second", "python", "hello")),
                create(trigger("dup", "/taken", "second")),
                {"op": "delete", "kind": "HttpTrigger", "name": "taken-not"},
            ]}),
        )
        .await;
    // The delete of a missing object is caught before writing.
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(snapshot(&api).await, before);

    let (_, mut env) = api.get("/v1/environments/python").await;
    env["spec"]["poolsize"] = json!(2);
    let (_, mut pkg) = api.get("/v1/packages/hello").await;
    pkg["spec"]["buildcmd"] = json!("true");
    let (status, body) = api
        .post(
            "/v1/batch",
            json!({"operations": [
                replace(env),
                replace(pkg),
                create(function("second", "python", "hello")),
                create(trigger("dup", "/taken", "second")),
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        body["error"]["field"],
        "operations[3].object.spec.relativeurl"
    );
    // Every object is at its old version: same specs, and nothing created.
    let after = snapshot(&api).await;
    let specs = |s: &[(String, String, String, Value)]| {
        s.iter()
            .map(|(k, n, _, spec)| (k.clone(), n.clone(), spec.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(specs(&after), specs(&before));
    let (status, _) = api.get("/v1/functions/second").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, p) = api.get("/v1/packages/hello").await;
    assert_eq!(
        p["status"]["buildstatus"], "none",
        "the old status is back too"
    );
}

#[tokio::test]
async fn deletes_in_a_batch_respect_users_and_dry_run_writes_nothing() {
    let api = Api::new();
    api.seed().await;
    let version = api.version().await;
    let (status, body) = api
        .post(
            "/v1/batch?dryRun=true",
            json!({"operations": [{"op": "delete", "kind": "Function", "name": "hello"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["dryRun"], true);
    assert_eq!(api.version().await, version);
    // The environment is used by the function, which stays: refused and undone.
    let (status, body) = api
        .post(
            "/v1/batch",
            json!({"operations": [
                {"op": "delete", "kind": "Package", "name": "hello"},
                {"op": "delete", "kind": "Environment", "name": "python"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = api.get("/v1/packages/hello").await;
    assert_eq!(status, StatusCode::OK, "the package delete was undone");
    // All of them at once works: functions go before packages and environments.
    let (status, body) = api
        .post(
            "/v1/batch",
            json!({"operations": [
                {"op": "delete", "kind": "Environment", "name": "python"},
                {"op": "delete", "kind": "Package", "name": "hello"},
                {"op": "delete", "kind": "Function", "name": "hello"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(snapshot(&api).await.is_empty());
}
