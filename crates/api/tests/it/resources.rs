//! CRUD, validation and referential checks of `/v1/{plural}`.

use axum::body::Body;
use http::{Request, StatusCode, header};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn crud_round_trip_for_every_kind() {
    let api = Api::new();
    let cases = [
        ("environments", env("python"), "python"),
        ("packages", package("hello", "python", b"print(1)"), "hello"),
        ("functions", function("hello", "python", "hello"), "hello"),
        ("httptriggers", trigger("hello", "/hello", "hello"), "hello"),
    ];
    for (plural, body, name) in &cases {
        let created = api.create(plural, body.clone()).await;
        assert_eq!(created["metadata"]["name"], *name);
        assert_eq!(created["metadata"]["namespace"], "default");
        assert!(created["metadata"]["uid"].is_string(), "{created}");
        assert!(
            created["metadata"]["resourceVersion"].is_string(),
            "{created}"
        );

        let (status, got) = api.get(&format!("/v1/{plural}/{name}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got, created);

        let (status, list) = api.get(&format!("/v1/{plural}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["apiVersion"], "kappa.dev/v1");
        assert!(list["kind"].as_str().unwrap().ends_with("List"), "{list}");
        assert_eq!(
            list["metadata"]["resourceVersion"],
            api.version().await.to_string()
        );
        assert_eq!(list["items"].as_array().unwrap().len(), 1);
        assert_eq!(list["items"][0]["metadata"]["name"], *name);

        let mut updated = got.clone();
        updated["metadata"]["labels"] = json!({"team": "a"});
        let (status, replaced) = api.put(&format!("/v1/{plural}/{name}"), updated).await;
        assert_eq!(status, StatusCode::OK, "{replaced}");
        assert_eq!(replaced["metadata"]["labels"]["team"], "a");
        assert_ne!(
            replaced["metadata"]["resourceVersion"],
            created["metadata"]["resourceVersion"]
        );
    }
    // Delete in reverse order: nothing is in use any more.
    for (plural, _, name) in cases.iter().rev() {
        let (status, deleted) = api.delete(&format!("/v1/{plural}/{name}")).await;
        assert_eq!(status, StatusCode::OK, "{deleted}");
        assert_eq!(deleted["metadata"]["name"], *name);
        let (status, body) = api.get(&format!("/v1/{plural}/{name}")).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
        let (status, body) = api.delete(&format!("/v1/{plural}/{name}")).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", None);
    }
}

#[tokio::test]
async fn create_twice_is_already_exists() {
    let api = Api::new();
    api.create("environments", env("python")).await;
    let before = api.version().await;
    let (status, body) = api.post("/v1/environments", env("python")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "already_exists", None);
    assert_eq!(api.version().await, before);
}

#[tokio::test]
async fn yaml_bodies_are_accepted() {
    let api = Api::new();
    let yaml = "apiVersion: kappa.dev/v1\nkind: Environment\nmetadata:\n  name: node\nspec:\n  runtime:\n    image: nodejs\n  poolsize: 2\n";
    let request = Request::post("/v1/environments")
        .header(header::CONTENT_TYPE, "application/yaml")
        .body(Body::from(yaml))
        .unwrap();
    let (status, body) = json_of(api.send(request).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["spec"]["poolsize"], 2);
    assert_eq!(body["spec"]["runtime"]["image"], "nodejs");
}

#[tokio::test]
async fn namespaces_come_from_the_query_or_the_body() {
    let api = Api::new();
    let created = api
        .post("/v1/environments?namespace=prod", env("python"))
        .await
        .1;
    assert_eq!(created["metadata"]["namespace"], "prod");
    let (status, _) = api.get("/v1/environments/python").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.get("/v1/environments/python?namespace=prod").await;
    assert_eq!(status, StatusCode::OK);

    let mut body = env("python");
    body["metadata"]["namespace"] = json!("dev");
    let (status, created) = api.post("/v1/environments", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(created["metadata"]["namespace"], "dev");
    let (status, err) = api.post("/v1/environments?namespace=prod", body).await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("metadata.namespace"),
    );

    let (status, list) = api.get("/v1/environments?allNamespaces=true").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 2);
    let (status, err) = api.get("/v1/environments?namespace=Not_Valid").await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("namespace"),
    );
    let (status, err) = api.get("/v1/environments?namespce=prod").await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("namespce"),
    );

    // A reference with no namespace means the referrer's.
    api.post(
        "/v1/packages?namespace=prod",
        package("hello", "python", b"x"),
    )
    .await;
    let (status, f) = api
        .post(
            "/v1/functions?namespace=prod",
            function("hello", "python", "hello"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{f}");
    assert_eq!(f["spec"]["environment"]["namespace"], "prod");
    assert_eq!(f["spec"]["package"]["packageref"]["namespace"], "prod");
}

#[tokio::test]
async fn every_validation_error_names_its_field() {
    let api = Api::new();
    api.seed().await;
    let before = api.version().await;

    let mut bad_name = env("Bad_Name");
    bad_name["metadata"]["name"] = json!("Bad_Name");
    let mut unknown = env("x");
    unknown["spec"]["poolsiz"] = json!(3);
    let mut pool = env("x");
    pool["spec"]["poolsize"] = json!(-1);
    let mut pool_range = env("x");
    pool_range["spec"]["poolsize"] = json!(1000);
    let mut pool_type = env("x");
    pool_type["spec"]["poolsize"] = json!("many");
    let mut entry = function("f", "python", "hello");
    entry["spec"]["package"]["functionName"] = json!("../x");
    let mut timeout = function("f", "python", "hello");
    timeout["spec"]["functionTimeout"] = json!(0);
    let mut wrong_kind = env("x");
    wrong_kind["kind"] = json!("Function");
    let mut no_spec = env("x");
    no_spec.as_object_mut().unwrap().remove("spec");
    let mut bad_literal = package("p", "python", b"x");
    bad_literal["spec"]["deployment"]["literal"] = json!("not base64!!");
    let mut bad_method = trigger("t", "/x", "hello");
    bad_method["spec"]["methods"] = json!(["FETCH"]);

    let cases = [
        ("environments", bad_name, "metadata.name"),
        ("environments", unknown, "spec.poolsiz"),
        ("environments", pool, "spec.poolsize"),
        ("environments", pool_range, "spec.poolsize"),
        ("environments", pool_type, "spec.poolsize"),
        ("environments", wrong_kind, "kind"),
        ("environments", no_spec, "spec"),
        ("functions", entry, "spec.package.functionName"),
        ("functions", timeout, "spec.functionTimeout"),
        ("packages", bad_literal, "spec.deployment.literal"),
        (
            "httptriggers",
            trigger("t", "/users/{id", "hello"),
            "spec.relativeurl",
        ),
        (
            "httptriggers",
            trigger("t", "users", "hello"),
            "spec.relativeurl",
        ),
        ("httptriggers", bad_method, "spec.methods[0]"),
    ];
    for (plural, body, field) in cases {
        let (status, err) = api.post(&format!("/v1/{plural}"), body).await;
        assert_error(
            status,
            &err,
            StatusCode::BAD_REQUEST,
            "invalid",
            Some(field),
        );
    }
    assert_eq!(
        api.version().await,
        before,
        "a rejected request wrote something"
    );
}

#[tokio::test]
async fn put_checks_the_name_and_the_resource_version() {
    let api = Api::new();
    let created = api.create("environments", env("python")).await;

    let mut other = created.clone();
    other["metadata"]["name"] = json!("other");
    let (status, err) = api.put("/v1/environments/python", other).await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("metadata.name"),
    );

    let mut first = created.clone();
    first["spec"]["poolsize"] = json!(5);
    let (status, updated) = api.put("/v1/environments/python", first).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["spec"]["poolsize"], 5);
    assert_eq!(updated["metadata"]["generation"], 2);

    // `created` carries the old resourceVersion: a lost update is refused.
    let before = api.version().await;
    let mut stale = created.clone();
    stale["spec"]["poolsize"] = json!(7);
    let (status, err) = api.put("/v1/environments/python", stale).await;
    assert_error(
        status,
        &err,
        StatusCode::CONFLICT,
        "conflict",
        Some("metadata.resourceVersion"),
    );
    assert_eq!(api.version().await, before);

    // Without a resourceVersion the replace is unconditional, but the object must exist.
    let mut blind = env("python");
    blind["spec"]["poolsize"] = json!(1);
    let (status, updated) = api.put("/v1/environments/python", blind).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let (status, err) = api.put("/v1/environments/ghost", env("ghost")).await;
    assert_error(status, &err, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test]
async fn status_is_written_apart_from_spec() {
    let api = Api::new();
    api.seed().await;
    let (status, f) = api
        .put(
            "/v1/functions/hello/status",
            json!({"status": {"lastError": "import error: no module named x"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{f}");
    assert_eq!(f["status"]["lastError"], "import error: no module named x");
    assert_eq!(f["metadata"]["generation"], 1);
    let (status, err) = api
        .put(
            "/v1/functions/hello/status",
            json!({"status": {}, "extra": 1}),
        )
        .await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("extra"),
    );
    let (status, err) = api
        .put(
            "/v1/packages/hello/status",
            json!({"status": {"buildstatus": "exploded"}}),
        )
        .await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("status.buildstatus"),
    );
    let (status, err) = api
        .put("/v1/functions/ghost/status", json!({"status": {}}))
        .await;
    assert_error(status, &err, StatusCode::NOT_FOUND, "not_found", None);
    // A client cannot set status through a create or a replace.
    let mut with_status = f.clone();
    with_status["status"] = json!({"lastError": "forged"});
    let (_, replaced) = api.put("/v1/functions/hello", with_status).await;
    assert_eq!(
        replaced["status"]["lastError"],
        "import error: no module named x"
    );
}

#[tokio::test]
async fn references_must_exist() {
    let api = Api::new();
    let (status, err) = api
        .post("/v1/packages", package("hello", "python", b"x"))
        .await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.environment.name"),
    );
    api.create("environments", env("python")).await;
    let (status, err) = api
        .post("/v1/functions", function("hello", "python", "hello"))
        .await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.package.packageref.name"),
    );
    let (status, err) = api
        .post("/v1/functions", function("hello", "ruby", "hello"))
        .await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.environment.name"),
    );
    let (status, err) = api
        .post("/v1/httptriggers", trigger("t", "/x", "hello"))
        .await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.functionref.name"),
    );
    let weighted = json!({
        "metadata": {"name": "canary"},
        "spec": {"relativeurl": "/c", "functionref": {"type": "function-weights", "functionweights": {"a": 90, "b": 10}}}
    });
    let (status, err) = api.post("/v1/httptriggers", weighted).await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.functionref.functionweights"),
    );
    let mut missing_archive = package("p", "python", b"x");
    missing_archive["spec"]["deployment"] =
        json!({"type": "url", "url": format!("archive://sha256/{}", "a".repeat(64))});
    let (status, err) = api.post("/v1/packages", missing_archive).await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.deployment.url"),
    );
    // Only the environment was ever written.
    assert_eq!(api.version().await, 1);
    assert!(api.archives.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn two_triggers_cannot_claim_one_route() {
    let api = Api::new();
    api.seed().await;
    api.create("httptriggers", trigger("a", "/users/{id}", "hello"))
        .await;
    let before = api.version().await;
    let (status, err) = api
        .post("/v1/httptriggers", trigger("b", "/users/{uid}", "hello"))
        .await;
    assert_error(
        status,
        &err,
        StatusCode::CONFLICT,
        "conflict",
        Some("spec.relativeurl"),
    );
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("default/a"),
        "{err}"
    );
    assert_eq!(api.version().await, before);
    // Another method, or another host, is another route.
    let mut post = trigger("b", "/users/{id}", "hello");
    post["spec"]["methods"] = json!(["POST"]);
    api.create("httptriggers", post).await;
    let mut hosted = trigger("c", "/users/{id}", "hello");
    hosted["spec"]["host"] = json!("api.example.com");
    api.create("httptriggers", hosted).await;
    // A trigger does not conflict with itself on replace.
    let (_, a) = api.get("/v1/httptriggers/a").await;
    let (status, body) = api.put("/v1/httptriggers/a", a).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn things_in_use_are_not_deleted_without_force() {
    let api = Api::new();
    api.seed().await;
    let before = api.version().await;
    let (status, err) = api.delete("/v1/environments/python").await;
    assert_error(status, &err, StatusCode::CONFLICT, "conflict", None);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("function default/hello"),
        "{err}"
    );
    let (status, err) = api.delete("/v1/packages/hello").await;
    assert_error(status, &err, StatusCode::CONFLICT, "conflict", None);
    assert_eq!(api.version().await, before);
    let (status, _) = api.delete("/v1/environments/python?force=true").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn literal_packages_move_to_the_archive_store() {
    let api = Api::new();
    api.create("environments", env("python")).await;
    let code = b"def main():\n    return 'hello'\n";
    let created = api
        .create("packages", package("hello", "python", code))
        .await;
    let sha = kappa_archive::sha256_hex(code);
    let deployment = &created["spec"]["deployment"];
    assert_eq!(deployment["type"], "url", "{created}");
    assert_eq!(deployment["url"], format!("archive://sha256/{sha}"));
    assert_eq!(deployment["checksum"]["sum"], sha);
    assert_eq!(deployment["filename"], "hello.py");
    assert!(deployment.get("literal").is_none(), "{created}");
    assert_eq!(created["status"]["buildstatus"], "none");
    let info = api.archives.info(&sha).await.unwrap().unwrap();
    assert_eq!(info.size, code.len() as u64);

    // The stored archive is now referenced: it cannot be deleted.
    let (status, err) = api.delete(&format!("/v1/archives/{sha}")).await;
    assert_error(status, &err, StatusCode::CONFLICT, "conflict", None);

    // A package with a source waits for its build.
    let mut source = package("src", "python", b"x");
    let literal = source["spec"]["deployment"].clone();
    source["spec"].as_object_mut().unwrap().remove("deployment");
    source["spec"]["source"] = literal;
    let created = api.create("packages", source).await;
    assert_eq!(created["status"]["buildstatus"], "pending");
    assert_eq!(created["spec"]["source"]["type"], "url");

    // A checksum that does not match the literal is refused.
    let mut wrong = package("wrong", "python", b"abc");
    wrong["spec"]["deployment"]["checksum"] = json!({"type": "sha256", "sum": "b".repeat(64)});
    let (status, err) = api.post("/v1/packages", wrong).await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.deployment.checksum.sum"),
    );
    assert!(
        api.archives
            .info(&kappa_archive::sha256_hex(b"abc"))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn names_in_paths_cannot_traverse() {
    let api = Api::new();
    for uri in [
        "/v1/functions/..%2Fx",
        "/v1/functions/..%2F..%2Fetc%2Fpasswd",
        "/v1/functions/a%2Fb",
        "/v1/functions/UPPER",
        "/v1/functions/..",
    ] {
        let (status, err) = api.get(uri).await;
        assert_error(
            status,
            &err,
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("name"),
        );
        let (status, err) = api.delete(uri).await;
        assert_error(
            status,
            &err,
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("name"),
        );
    }
    // A name with a real '/' is not a resource path at all.
    let (status, err) = api.get("/v1/functions/a/b").await;
    assert_error(status, &err, StatusCode::NOT_FOUND, "not_found", None);
    // And a body cannot smuggle one in.
    let mut body = env("x");
    body["metadata"]["name"] = json!("../x");
    let (status, err) = api.post("/v1/environments", body).await;
    assert_error(
        status,
        &err,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("metadata.name"),
    );
}

#[tokio::test]
async fn package_replace_moves_new_code_and_tracks_the_build() {
    let api = Api::new();
    api.create("environments", env("python")).await;
    let created = api
        .create("packages", package("hello", "python", b"v1"))
        .await;
    let mut next = package("hello", "python", b"v2");
    next["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
    let (status, replaced) = api.put("/v1/packages/hello", next).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    let sha = kappa_archive::sha256_hex(b"v2");
    assert_eq!(
        replaced["spec"]["deployment"]["url"],
        format!("archive://sha256/{sha}")
    );
    assert_eq!(replaced["metadata"]["generation"], 2);
    assert_eq!(replaced["status"]["buildstatus"], "none");
    assert!(api.archives.info(&sha).await.unwrap().is_some());

    // Adding a source means a build is due.
    let mut with_source = replaced.clone();
    with_source["spec"]["source"] =
        json!({"type": "url", "url": format!("archive://sha256/{sha}")});
    let (status, replaced) = api.put("/v1/packages/hello", with_source).await;
    assert_eq!(status, StatusCode::OK, "{replaced}");
    assert_eq!(replaced["status"]["buildstatus"], "pending");
}
