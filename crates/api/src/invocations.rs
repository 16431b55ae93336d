//! Asynchronous invocations on the API: `POST /v1/functions/{name}/invoke?async=true` stores
//! the request as an Invocation and answers `202` with its id (the write happens before the
//! answer); `GET /v1/functions/{name}/invocations` lists a function's invocations (newest
//! first, without their request bodies) and `GET /v1/invocations/{id}` shows one. The
//! asynchronous worker (`kappa_triggers::AsyncWorker`) runs them and records their outcome.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, Uri};
use http_body_util::{BodyExt as _, Limited};
use kappa_store::Precondition;
use kappa_types::{
    ASYNC_BODY_LIMIT, FUNCTION_LABEL, Invocation, InvocationSpec, Kind, is_invocation_id,
};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::Params;
use crate::resources::name_param;
use crate::state::ApiState;

/// The answer to a write of an Invocation through the resource routes (or a batch): they are
/// the platform's records, written only when an invocation is accepted or attempted.
pub(crate) fn not_a_resource() -> ApiError {
    ApiError::invalid(
        "kind",
        "Invocation objects are written by the platform (accepted asynchronous invocations), not through the resource API",
    )
}

/// A new invocation id: 128 random bits in lower-case hex (the router's format).
fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Stores `request` (already rewritten for the function: its path and query) as an
/// asynchronous invocation of `namespace/name` and answers `202`.
pub(crate) async fn accept(
    state: &ApiState,
    namespace: &str,
    name: &str,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let limit = usize::try_from(ASYNC_BODY_LIMIT).unwrap_or(usize::MAX);
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::TooLarge(format!(
                "an asynchronous invocation's body may be at most {ASYNC_BODY_LIMIT} bytes"
            )));
        }
        Err(error) => {
            return Err(ApiError::malformed(format!(
                "reading the request body failed: {error}"
            )));
        }
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name != "host" && name != "content-length" && !name.starts_with("x-kappa-")
        })
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    let id = new_id();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let spec = InvocationSpec::accept(name, parts.method.as_str(), path, headers, &bytes, "api");
    let invocation = Invocation::accepted(&id, namespace, spec);
    state
        .store
        .put(invocation.to_json(), Precondition::MustNotExist)
        .await?;
    state.metrics.async_accepted(namespace, name);
    tracing::debug!(function = %format!("{namespace}/{name}"), invocation_id = %id, "asynchronous invocation accepted");
    let body = json!({
        "invocationId": id,
        "function": name,
        "namespace": namespace,
        "status": "pending",
    });
    let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert("x-kappa-invocation-id", value);
    }
    if let Ok(location) =
        HeaderValue::from_str(&format!("/v1/invocations/{id}?namespace={namespace}"))
    {
        response
            .headers_mut()
            .insert(http::header::LOCATION, location);
    }
    Ok(response)
}

/// An invocation without its request body and headers (for listings).
fn summary(mut value: Value) -> Value {
    if let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("body");
        spec.remove("headers");
    }
    value
}

/// `GET /v1/functions/{name}/invocations[?namespace=&limit=]`: newest first.
pub(crate) async fn of_function(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let name = name_param(name)?;
    let params = Params::parse(&uri, &["namespace", "limit"])?;
    let namespace = params.namespace()?;
    let limit = params
        .number("limit")?
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let list = state.store.list(Kind::Invocation, Some(&namespace)).await?;
    let mut items: Vec<Value> = list
        .items
        .into_iter()
        .filter(|o| {
            o.value
                .pointer(&format!(
                    "/metadata/labels/{}",
                    FUNCTION_LABEL.replace('/', "~1")
                ))
                .and_then(Value::as_str)
                == Some(name.as_str())
        })
        .map(|o| o.value)
        .collect();
    let accepted = |v: &Value| {
        v.pointer("/spec/acceptedAt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    items.sort_by_key(|v| std::cmp::Reverse(accepted(v)));
    items.truncate(limit);
    let items: Vec<Value> = items.into_iter().map(summary).collect();
    Ok(axum::Json(json!({ "items": items })).into_response())
}

/// `GET /v1/invocations/{id}[?namespace=]`: one invocation with its outcome.
pub(crate) async fn get_one(
    State(state): State<ApiState>,
    id: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::invalid("id", e.body_text()))?;
    if !is_invocation_id(&id) {
        return Err(ApiError::invalid(
            "id",
            format!("{id:?} is not an invocation id: expected 32 lower-case hex digits"),
        ));
    }
    let params = Params::parse(&uri, &["namespace"])?;
    let namespace = params.namespace()?;
    match state.store.get(Kind::Invocation, &namespace, &id).await? {
        Some(object) => Ok(axum::Json(object.value).into_response()),
        None => Err(ApiError::NotFound(format!(
            "invocation {id} not found in namespace {namespace} (finished invocations are kept for the retention period)"
        ))),
    }
}
