//! `/v1/archives`: upload (streamed, size-limited), list, download and delete content-addressed
//! archives.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use kappa_archive::ArchiveInfo;
use kappa_types::{ARCHIVE_STORE_PREFIX, is_sha256_hex};
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use crate::admit::{archive_users, archives_in_use};
use crate::error::ApiError;
use crate::extract::Params;
use crate::state::ApiState;

fn describe(info: &ArchiveInfo) -> Value {
    json!({
        "sha256": info.sha256,
        "size": info.size,
        "url": format!("{ARCHIVE_STORE_PREFIX}{}", info.sha256),
    })
}

/// The `{sha256}` path parameter, checked to be 64 lower-case hex digits.
fn digest_param(sha256: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(sha256) = sha256.map_err(|e| ApiError::invalid("sha256", e.body_text()))?;
    if !is_sha256_hex(&sha256) {
        return Err(ApiError::invalid(
            "sha256",
            format!("{sha256:?} is not a sha256 digest: expected 64 lower-case hex digits"),
        ));
    }
    Ok(sha256)
}

/// `POST /v1/archives`: the raw body, streamed into the archive store.
pub(crate) async fn upload(
    State(state): State<ApiState>,
    request: Request,
) -> Result<Response, ApiError> {
    Params::parse(request.uri(), &[])?;
    let limit = state.archives.max_archive_bytes();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared
        && length > limit
    {
        return Err(ApiError::TooLarge(format!(
            "archive of {length} bytes exceeds the limit of {limit} bytes"
        )));
    }
    let info = state
        .archives
        .put_stream(request.into_body().into_data_stream())
        .await?;
    tracing::info!(sha256 = %info.sha256, size = info.size, "archive uploaded");
    let mut response = (StatusCode::CREATED, Json(describe(&info))).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/archives/{}", info.sha256)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /v1/archives`.
pub(crate) async fn list(State(state): State<ApiState>, uri: Uri) -> Result<Response, ApiError> {
    Params::parse(&uri, &[])?;
    let items: Vec<Value> = state.archives.list().await?.iter().map(describe).collect();
    Ok(Json(json!({ "items": items })).into_response())
}

fn blob_headers(headers: &mut HeaderMap, info: &ArchiveInfo) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", info.sha256)) {
        headers.insert(header::ETAG, etag);
    }
    // Content-addressed: the bytes behind a digest never change.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
}

async fn info_of(state: &ApiState, sha256: &str) -> Result<ArchiveInfo, ApiError> {
    state
        .archives
        .info(sha256)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("archive {sha256} not found")))
}

/// `GET /v1/archives/{sha256}`: the blob, streamed from disk.
pub(crate) async fn download(
    State(state): State<ApiState>,
    sha256: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let sha256 = digest_param(sha256)?;
    let info = info_of(&state, &sha256).await?;
    let file = state.archives.open_blob(&sha256).await?;
    let mut response = Response::new(Body::from_stream(ReaderStream::new(file)));
    blob_headers(response.headers_mut(), &info);
    Ok(response)
}

/// `HEAD /v1/archives/{sha256}`: the download's headers without the body.
pub(crate) async fn head(
    State(state): State<ApiState>,
    sha256: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let sha256 = digest_param(sha256)?;
    let info = info_of(&state, &sha256).await?;
    let mut response = Response::new(Body::empty());
    blob_headers(response.headers_mut(), &info);
    Ok(response)
}

/// `DELETE /v1/archives/{sha256}`: refused while a package references it.
pub(crate) async fn delete(
    State(state): State<ApiState>,
    sha256: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let sha256 = digest_param(sha256)?;
    let _write = state.write_lock.lock().await;
    let info = info_of(&state, &sha256).await?;
    let users = archive_users(&state, &sha256).await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(
            None,
            format!(
                "archive {sha256} is used by {}: delete them first",
                users.join(", ")
            ),
        ));
    }
    if !state.archives.delete(&sha256).await? {
        return Err(ApiError::NotFound(format!("archive {sha256} not found")));
    }
    tracing::info!(sha256 = %sha256, "archive deleted");
    Ok(Json(describe(&info)).into_response())
}

/// Deletes the archives that no Package references and that were last stored (uploaded, or
/// uploaded again) more than `grace` ago; returns their digests. The grace period covers the
/// time between an upload and the package that will name it (the CLI uploads first), and a
/// build between storing its output and writing it to its package. Runs under the API's write
/// lock, so no package write interleaves with the check.
pub async fn collect_unused_archives(
    state: &ApiState,
    grace: std::time::Duration,
) -> Result<Vec<String>, ApiError> {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(std::time::UNIX_EPOCH);
    let _write = state.write_lock.lock().await;
    let used = archives_in_use(state).await?;
    let mut deleted = Vec::new();
    for info in state.archives.list().await? {
        if used.contains(&info.sha256) {
            continue;
        }
        if state
            .archives
            .delete_if_stored_before(&info.sha256, cutoff)
            .await?
        {
            tracing::info!(sha256 = %info.sha256, size = info.size, "deleted an archive no package uses");
            deleted.push(info.sha256);
        }
    }
    Ok(deleted)
}

/// Runs [`collect_unused_archives`] every `interval` until `shutdown`.
pub(crate) async fn collect_unused_archives_every(
    state: ApiState,
    interval: std::time::Duration,
    grace: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(interval.max(std::time::Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: start one interval after start-up
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match collect_unused_archives(&state, grace).await {
            Ok(deleted) if !deleted.is_empty() => {
                tracing::info!(count = deleted.len(), "collected unused archives");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "collecting unused archives failed; retrying later")
            }
        }
    }
}
