//! `/v1/archives`: upload, download, limits, digests.

use axum::body::Body;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::json;

use crate::support::*;

fn upload(bytes: Vec<u8>) -> Request<Body> {
    Request::post("/v1/archives")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(bytes))
        .unwrap()
}

/// Files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn upload_download_and_delete() {
    let api = Api::new();
    // Larger than axum's default 2 MB body limit, which must not apply here.
    let bytes: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let sha = kappa_archive::sha256_hex(&bytes);
    let (status, created) = json_of(api.send(upload(bytes.clone())).await).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["sha256"], sha);
    assert_eq!(created["size"], bytes.len() as u64);
    assert_eq!(created["url"], format!("archive://sha256/{sha}"));

    let response = api
        .send(
            Request::get(format!("/v1/archives/{sha}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        bytes.len().to_string()
    );
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/octet-stream"
    );
    let got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(kappa_archive::sha256_hex(&got), sha);

    let response = api
        .send(
            Request::head(format!("/v1/archives/{sha}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        bytes.len().to_string()
    );

    let (status, list) = api.get("/v1/archives").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"][0]["sha256"], sha);

    // A package may reference it once uploaded.
    api.create("environments", env("python")).await;
    let mut pkg = package("big", "python", b"");
    pkg["spec"]["deployment"] = json!({"type": "url", "url": format!("archive://sha256/{sha}")});
    api.create("packages", pkg).await;
    let (status, err) = api.delete(&format!("/v1/archives/{sha}")).await;
    assert_error(status, &err, StatusCode::CONFLICT, "conflict", None);
    api.delete("/v1/packages/big").await;
    let (status, deleted) = api.delete(&format!("/v1/archives/{sha}")).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    let (status, err) = api.get(&format!("/v1/archives/{sha}")).await;
    assert_error(status, &err, StatusCode::NOT_FOUND, "not_found", None);
    let (status, err) = api.delete(&format!("/v1/archives/{sha}")).await;
    assert_error(status, &err, StatusCode::NOT_FOUND, "not_found", None);
}

#[tokio::test]
async fn over_the_limit_is_413_and_leaves_nothing() {
    let api = Api::with(Options {
        max_archive_bytes: 1024,
        ..Options::default()
    });
    // Streamed without a Content-Length: the store cuts it.
    let (status, err) = json_of(api.send(upload(vec![7u8; 4096])).await).await;
    assert_error(
        status,
        &err,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        None,
    );
    // With a Content-Length: refused before reading.
    let request = Request::post("/v1/archives")
        .header(header::CONTENT_LENGTH, "4096")
        .body(Body::from(vec![7u8; 4096]))
        .unwrap();
    let (status, err) = json_of(api.send(request).await).await;
    assert_error(
        status,
        &err,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        None,
    );
    assert!(api.archives.list().await.unwrap().is_empty());
    let left = files_under(&api.dir.path().join("archives"));
    assert!(left.is_empty(), "files left behind: {left:?}");
    // At the limit it fits.
    let (status, _) = json_of(api.send(upload(vec![7u8; 1024])).await).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn malformed_digests_are_invalid() {
    let api = Api::new();
    for bad in [
        "abc",
        "..%2F..%2Fetc%2Fpasswd",
        &"A".repeat(64),
        &"g".repeat(64),
        &"a".repeat(65),
    ] {
        let (status, err) = api.get(&format!("/v1/archives/{bad}")).await;
        assert_error(
            status,
            &err,
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("sha256"),
        );
        let (status, err) = api.delete(&format!("/v1/archives/{bad}")).await;
        assert_error(
            status,
            &err,
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("sha256"),
        );
    }
}

/// Makes the stored archive look last uploaded `ago` in the past.
fn age(api: &Api, sha: &str, ago: std::time::Duration) {
    let blob = files_under(&api.dir.path().join("archives"))
        .into_iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(sha))
        .expect("the archive's blob");
    std::fs::File::open(&blob)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - ago)
        .unwrap();
}

#[tokio::test]
async fn unused_archives_are_collected_after_the_grace_period() {
    use std::time::Duration;
    let api = Api::new();
    let used = b"used by a package".to_vec();
    let unused = b"uploaded, never used".to_vec();
    let young = b"uploaded a moment ago".to_vec();
    let (used_sha, unused_sha, young_sha) = (
        kappa_archive::sha256_hex(&used),
        kappa_archive::sha256_hex(&unused),
        kappa_archive::sha256_hex(&young),
    );
    for bytes in [&used, &unused, &young] {
        assert_eq!(
            api.send(upload(bytes.clone())).await.status(),
            StatusCode::CREATED
        );
    }
    api.create("environments", env("python")).await;
    let mut pkg = package("p", "python", b"");
    pkg["spec"]["deployment"] =
        json!({"type": "url", "url": format!("archive://sha256/{used_sha}")});
    api.create("packages", pkg).await;
    let hour = Duration::from_secs(3600);
    age(&api, &used_sha, 2 * hour);
    age(&api, &unused_sha, 2 * hour);

    let deleted = kappa_api::collect_unused_archives(&api.state, hour)
        .await
        .unwrap();
    assert_eq!(
        deleted,
        vec![unused_sha.clone()],
        "only the old, unused archive goes"
    );
    let (status, _) = api.get(&format!("/v1/archives/{unused_sha}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for sha in [&used_sha, &young_sha] {
        let (status, _) = api.get(&format!("/v1/archives/{sha}")).await;
        assert_eq!(status, StatusCode::OK, "{sha} is kept");
    }

    // Uploading the same content again makes it new: a package about to name it keeps it.
    age(&api, &young_sha, 2 * hour);
    assert_eq!(
        api.send(upload(young.clone())).await.status(),
        StatusCode::CREATED
    );
    let deleted = kappa_api::collect_unused_archives(&api.state, hour)
        .await
        .unwrap();
    assert!(deleted.is_empty(), "{deleted:?}");

    // Once its package is gone, the used one goes too.
    api.delete("/v1/packages/p").await;
    let deleted = kappa_api::collect_unused_archives(&api.state, hour)
        .await
        .unwrap();
    assert_eq!(deleted, vec![used_sha]);
}

/// A zip of `entries` (name, contents), in this order.
fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    use std::io::Write as _;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, contents) in entries {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(contents).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

#[tokio::test]
async fn unsafe_archives_are_refused_when_uploaded_or_named() {
    let api = Api::new();
    api.create("environments", env("python")).await;
    let evil = zip_of(&[("main.py", b"x"), ("../../escape.py", b"x")]);
    let many: Vec<String> = (0..20_002).map(|i| format!("f{i:05}")).collect();
    let many = zip_of(
        &many
            .iter()
            .map(|n| (n.as_str(), &b""[..]))
            .collect::<Vec<_>>(),
    );
    let absolute = zip_of(&[("/etc/passwd", b"x")]);
    for (bytes, entry, rule) in [
        (&evil, "../../escape.py", "'..' component"),
        (&absolute, "/etc/passwd", "absolute"),
        (
            &many,
            "f20000",
            "the archive has 20002 entries, more than the limit of 20000; this is entry 20001 in archive order",
        ),
    ] {
        // Uploaded: 400 naming the entry and the rule, nothing stored.
        let (status, body) = json_of(api.send(upload(bytes.clone())).await).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("body"),
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("unsafe archive entry {entry:?}")),
            "{message}"
        );
        assert!(message.contains(rule), "{message}");
        let (_, list) = api.get("/v1/archives").await;
        assert_eq!(list["items"], json!([]), "nothing stored");

        // As a package's literal (when small enough to be one): the same, on the field.
        if bytes.len() > kappa_types::LITERAL_SIZE_LIMIT {
            continue;
        }
        let mut pkg = package("evil", "python", bytes);
        pkg["spec"]["deployment"]["filename"] = json!(null);
        let (status, body) = api.post("/v1/packages", pkg).await;
        assert_error(
            status,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid",
            Some("spec.deployment.literal"),
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains(rule),
            "{body}"
        );
    }
    let (status, _) = api.get("/v1/packages/evil").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = api.get("/v1/archives").await;
    assert_eq!(list["items"], json!([]), "nothing stored");

    // An archive stored before uploads were checked (put straight into the blob directory) is
    // refused when a package names it.
    let sha = kappa_archive::sha256_hex(&evil);
    std::fs::write(api.dir.path().join("archives/blobs").join(&sha), &evil).unwrap();
    let mut pkg = package("evil", "python", b"");
    pkg["spec"]["deployment"] = json!({"type": "url", "url": format!("archive://sha256/{sha}")});
    let (status, body) = api.post("/v1/packages", pkg).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid",
        Some("spec.deployment.url"),
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("../../escape.py"),
        "{body}"
    );
    let (status, _) = api.get("/v1/packages/evil").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_build_token_reads_its_source_and_uploads_nothing_more() {
    let api = Api::with_token();
    let source = b"source archive".to_vec();
    let other = b"another archive".to_vec();
    let source_sha = kappa_archive::sha256_hex(&source);
    let other_sha = kappa_archive::sha256_hex(&other);
    for bytes in [source.clone(), other.clone()] {
        let (status, body) = json_of(api.send(upload(bytes)).await).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let bearer = format!(
        "Bearer {}",
        kappa_core::build_token(TOKEN, "build-1", &source_sha)
    );
    let with_build_token = |method: &str, uri: String, body: Vec<u8>| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, bearer.clone())
            .body(Body::from(body))
            .unwrap()
    };

    // Its source archive: readable.
    let response = api
        .send(with_build_token(
            "GET",
            format!("/v1/archives/{source_sha}"),
            vec![],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), source.as_slice());
    let response = api
        .send(with_build_token(
            "HEAD",
            format!("/v1/archives/{source_sha}"),
            vec![],
        ))
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    // An upload (the deployment archive): accepted.
    let built = b"deployment archive".to_vec();
    let (status, created) = json_of(
        api.send(with_build_token(
            "POST",
            "/v1/archives".into(),
            built.clone(),
        ))
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["sha256"], kappa_archive::sha256_hex(&built));

    // Anything else: refused, and nothing changes.
    for (method, uri) in [
        ("GET", format!("/v1/archives/{other_sha}")),
        ("DELETE", format!("/v1/archives/{source_sha}")),
        ("GET", "/v1/archives".to_owned()),
        ("GET", "/v1/packages".to_owned()),
        ("GET", "/v1/environments".to_owned()),
    ] {
        let (status, body) = json_of(
            api.send(with_build_token(method, uri.clone(), vec![]))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
        assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            None,
        );
    }
    assert!(api.archives.info(&source_sha).await.unwrap().is_some());

    // A build token of another platform token opens nothing.
    let forged = format!(
        "Bearer {}",
        kappa_core::build_token("not-the-token", "build-1", &source_sha)
    );
    let response = api
        .send(
            Request::get(format!("/v1/archives/{source_sha}"))
                .header(header::AUTHORIZATION, forged)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
