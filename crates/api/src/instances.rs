//! `GET /v1/functions/{name}/instances` and `GET /v1/environments/{name}/instances`: the pool
//! manager's instances of one function or environment (`kappa fn pods`, `kappa env pods`).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use http::Uri;
use kappa_core::{FunctionId, InstanceInfo};
use kappa_types::Kind;

use crate::error::ApiError;
use crate::extract::Params;
use crate::resources::name_param;
use crate::state::ApiState;

pub(crate) async fn of_function(
    state: State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    list(state, Kind::Function, name, uri).await
}

pub(crate) async fn of_environment(
    state: State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    list(state, Kind::Environment, name, uri).await
}

async fn list(
    State(state): State<ApiState>,
    kind: Kind,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<serde_json::Value>, ApiError> {
    let name = name_param(name)?;
    let params = Params::parse(&uri, &["namespace"])?;
    let namespace = params.namespace()?;
    if state.store.get(kind, &namespace, &name).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "{} {namespace}/{name} not found",
            kind.as_str()
        )));
    }
    let Some(lister) = &state.instances else {
        return Err(ApiError::Unavailable(
            "this API server cannot reach the pool manager to list instances".into(),
        ));
    };
    let id = FunctionId::new(&namespace, &name);
    let all = lister
        .instances()
        .await
        .map_err(|e| ApiError::Unavailable(format!("listing the pool manager's instances: {e}")))?;
    let items: Vec<InstanceInfo> = all
        .into_iter()
        .filter(|i| match kind {
            Kind::Function => i.function.as_ref() == Some(&id),
            _ => i.environment.as_ref() == Some(&id),
        })
        .collect();
    Ok(Json(serde_json::json!({ "items": items })))
}
