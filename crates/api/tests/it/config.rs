//! Secrets and config maps: values never in a response, base64 checks, references and
//! dependents.

use http::StatusCode;
use kappa_store::Store;
use kappa_types::Kind;
use serde_json::{Value, json};

use crate::support::*;

/// The plain value of the test secret; its base64 is [`SECRET_B64`].
const SECRET: &str = "hunter2-plain-value";
const SECRET_B64: &str = "aHVudGVyMi1wbGFpbi12YWx1ZQ==";
/// A value given as plain `stringData`.
const OTHER: &str = "another-secret-value";

fn secret(name: &str) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "spec": {"data": {"password": SECRET_B64}, "stringData": {"token": OTHER}}
    })
}

fn configmap(name: &str) -> Value {
    json!({
        "apiVersion": "kappa.dev/v1",
        "kind": "ConfigMap",
        "metadata": {"name": name},
        "spec": {"data": {"mode": "fast"}}
    })
}

/// Asserts no secret value (plain or base64) appears anywhere in `value`.
#[track_caller]
fn assert_masked(value: &Value) {
    let text = value.to_string();
    for leaked in [SECRET, SECRET_B64, OTHER, "YW5vdGhlci1zZWNyZXQtdmFsdWU"] {
        assert!(!text.contains(leaked), "{leaked} leaked in {text}");
    }
}

#[tokio::test]
async fn secret_values_never_appear_in_any_response() {
    let api = Api::new();
    let server = api.serve().await;
    let watch = reqwest::Client::new()
        .get(server.url("/v1/watch?kinds=secrets&resourceVersion=0"))
        .send()
        .await
        .unwrap();
    let mut events = Lines::new(watch);

    let created = api.create("secrets", secret("db")).await;
    assert_masked(&created);
    assert_eq!(created["spec"]["data"]["password"], "<redacted>");
    assert_eq!(created["spec"]["data"]["token"], "<redacted>");
    assert!(created["spec"].get("stringData").is_none(), "{created}");
    assert_eq!(created["status"]["dataBytes"]["password"], SECRET.len());
    assert_eq!(created["status"]["dataBytes"]["token"], OTHER.len());

    // The store holds the real values, stringData folded into base64 data.
    let stored = api
        .store
        .get(Kind::Secret, "default", "db")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value["spec"]["data"]["password"], SECRET_B64);
    assert_eq!(
        stored.value["spec"]["data"]["token"],
        "YW5vdGhlci1zZWNyZXQtdmFsdWU="
    );
    assert!(stored.value["spec"].get("stringData").is_none());

    let (status, got) = api.get("/v1/secrets/db").await;
    assert_eq!(status, StatusCode::OK);
    assert_masked(&got);
    assert_eq!(got["spec"]["data"]["password"], "<redacted>");
    let (_, list) = api.get("/v1/secrets").await;
    assert_masked(&list);
    assert_eq!(list["items"][0]["spec"]["data"]["token"], "<redacted>");
    let (_, all) = api.get("/v1/secrets?allNamespaces=true").await;
    assert_masked(&all);

    // Replace with what was read: redacted values keep the stored ones; a new key is added.
    let mut back = got.clone();
    back["spec"]["stringData"] = json!({"extra": "more"});
    let (status, replaced) = api.put("/v1/secrets/db", back).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_masked(&replaced);
    let stored = api
        .store
        .get(Kind::Secret, "default", "db")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.value["spec"]["data"]["password"], SECRET_B64);
    assert_eq!(stored.value["spec"]["data"]["extra"], "bW9yZQ==");

    let (status, with_status) = api
        .put("/v1/secrets/db/status", json!({"status": {"note": "x"}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{with_status}");
    assert_masked(&with_status);

    let (status, deleted) = api.delete("/v1/secrets/db").await;
    assert_eq!(status, StatusCode::OK);
    assert_masked(&deleted);

    // Every watch event (Added, Modified twice, Deleted) is masked too.
    for expected in ["Added", "Modified", "Modified", "Deleted"] {
        let event = events.next_event().await;
        assert_eq!(event["type"], expected, "{event}");
        assert_eq!(event["object"]["kind"], "Secret");
        assert_masked(&event);
    }
}

#[tokio::test]
async fn secret_values_are_checked_without_quoting_them() {
    let api = Api::new();
    let mut bad = secret("db");
    bad["spec"]["data"]["password"] = json!("not*base64*hunter2");
    let (status, body) = api.post("/v1/secrets", bad).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.data.password"),
    );
    assert!(!body.to_string().contains("hunter2"), "{body}");

    let mut not_string = secret("db");
    not_string["spec"]["stringData"]["token"] = json!(918273645);
    let (status, body) = api.post("/v1/secrets", not_string).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.stringData.token"),
    );
    assert!(!body.to_string().contains("918273645"), "{body}");

    let mut bad_key = secret("db");
    bad_key["spec"]["stringData"] = json!({"../escape": "x"});
    let (status, body) = api.post("/v1/secrets", bad_key).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid", None);
    assert!(
        body["error"]["field"]
            .as_str()
            .is_some_and(|f| f.starts_with("spec.stringData")),
        "{body}"
    );
    // A redacted placeholder on create has nothing to keep.
    let mut placeholder = secret("db");
    placeholder["spec"]["data"]["password"] = json!("<redacted>");
    let (status, body) = api.post("/v1/secrets", placeholder).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.data.password"),
    );
    assert_eq!(api.version().await, 0, "nothing was written");
}

#[tokio::test]
async fn config_maps_are_returned_as_written() {
    let api = Api::new();
    let created = api.create("configmaps", configmap("app")).await;
    assert_eq!(created["spec"]["data"]["mode"], "fast");
    let (_, got) = api.get("/v1/configmaps/app").await;
    assert_eq!(got["spec"]["data"]["mode"], "fast");
}

#[tokio::test]
async fn functions_must_reference_existing_secrets_and_config_maps() {
    let api = Api::new();
    api.seed().await;
    let mut f = function("reader", "python", "hello");
    f["spec"]["secrets"] = json!([{"name": "db"}]);
    f["spec"]["configmaps"] = json!([{"name": "app"}]);
    let (status, body) = api.post("/v1/functions", f.clone()).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.secrets[0].name"),
    );
    api.create("secrets", secret("db")).await;
    let (status, body) = api.post("/v1/functions", f.clone()).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.configmaps[0].name"),
    );
    api.create("configmaps", configmap("app")).await;
    let created = api.create("functions", f).await;
    assert_eq!(created["spec"]["secrets"][0]["namespace"], "default");

    // In use: deletion refused with the users named, unless forced.
    for (plural, name) in [("secrets", "db"), ("configmaps", "app")] {
        let (status, body) = api.delete(&format!("/v1/{plural}/{name}")).await;
        assert_error(status, &body, StatusCode::CONFLICT, "conflict", None);
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("function default/reader"), "{message}");
        assert_masked(&body);
    }
    let (status, deleted) = api.delete("/v1/secrets/db?force=true").await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_masked(&deleted);
    // Once the function is gone, the config map is free.
    api.delete("/v1/functions/reader").await;
    let (status, _) = api.delete("/v1/configmaps/app").await;
    assert_eq!(status, StatusCode::OK);
}
