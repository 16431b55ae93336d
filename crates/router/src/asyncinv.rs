//! Asynchronous invocation on the public listener: a routed request with
//! `X-Kappa-Invocation-Type: async` is stored as an Invocation (`kappa_types::Invocation`,
//! its name the invocation id) and answered `202` with the id once the store has it; the
//! asynchronous worker (`kappa_triggers::AsyncWorker`) runs it later through the router.
//!
//! The request is stored as the function would have received it (the path and the headers
//! after routing), with its body up to `kappa_types::ASYNC_BODY_LIMIT` (413 past it). The
//! write happens before the answer, so a `202` means the invocation survives a crash.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, LOCATION};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use kappa_store::Precondition;
use kappa_types::{ASYNC_BODY_LIMIT, INVOCATION_TYPE_HEADER, Invocation, InvocationSpec};

use crate::Inner;
use crate::body::ResponseBody;
use crate::error::Failure;
use crate::proxy::INVOCATION_ID;
use crate::table::FunctionEntry;

/// Whether the client asked for an asynchronous invocation.
pub(crate) fn requested(headers: &HeaderMap) -> bool {
    headers
        .get(INVOCATION_TYPE_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("async"))
}

fn too_large() -> Failure {
    Failure::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("an asynchronous invocation's body may be at most {ASYNC_BODY_LIMIT} bytes"),
    )
    .close()
}

/// Stores the request as an invocation and answers `202` with its id.
pub(crate) async fn accept<B>(
    inner: &Inner,
    entry: &FunctionEntry,
    parts: Parts,
    body: B,
    invocation_id: &HeaderValue,
) -> Result<Response<ResponseBody>, Failure>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    if !entry.exists {
        return Err(Failure::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!("function {} not found", entry.id),
        ));
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > ASYNC_BODY_LIMIT) {
        return Err(too_large());
    }
    let limit = usize::try_from(ASYNC_BODY_LIMIT).unwrap_or(usize::MAX);
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(error) => {
            return Err(Failure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("reading the request body failed: {error}"),
            )
            .close());
        }
    };
    let id = invocation_id.to_str().unwrap_or_default().to_string();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != INVOCATION_ID && name.as_str() != INVOCATION_TYPE_HEADER)
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let spec = InvocationSpec::accept(
        &entry.id.name,
        parts.method.as_str(),
        path,
        headers,
        &bytes,
        "router",
    );
    let invocation = Invocation::accepted(&id, &entry.id.namespace, spec);
    // On the main runtime: the store's connections and tasks are not a router thread's.
    let store = Arc::clone(&inner.store);
    let object = invocation.to_json();
    let stored = inner
        .on_main(async move { store.put(object, Precondition::MustNotExist).await })
        .await;
    let stored = match stored {
        Ok(stored) => stored.map(|_| ()).map_err(|e| e.to_string()),
        Err(join) => Err(join.to_string()),
    };
    if let Err(error) = stored {
        return Err(Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("storing the asynchronous invocation failed: {error}"),
        )
        .retry_after());
    }
    entry.metrics.count_async_accepted(&inner.metrics);
    tracing::debug!(function = %entry.id, invocation_id = %id, "asynchronous invocation accepted");
    let body = serde_json::json!({
        "invocationId": id,
        "function": entry.id.name,
        "namespace": entry.id.namespace,
        "status": "pending",
    });
    let mut response = Response::new(ResponseBody::full(Bytes::from(format!("{body}\n"))));
    *response.status_mut() = StatusCode::ACCEPTED;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(INVOCATION_ID.clone(), invocation_id.clone());
    if let Ok(location) = HeaderValue::from_str(&format!(
        "/v1/invocations/{id}?namespace={}",
        entry.id.namespace
    )) {
        headers.insert(LOCATION, location);
    }
    Ok(response)
}
