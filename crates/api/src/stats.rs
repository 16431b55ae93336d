//! `GET /v1/stats` and `GET /v1/functions/{name}/stats`: how functions were called over the
//! last hour (request rate, error rate, p50/p99 latency, cold starts, recent invocations),
//! from the routers' in-memory history ([`kappa_core::StatsSource`]).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use http::Uri;
use kappa_core::stats::{FunctionSnapshot, MINUTES};
use kappa_core::{FunctionId, StatsSnapshot};
use kappa_types::Kind;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::Params;
use crate::resources::name_param;
use crate::state::ApiState;

async fn snapshot(state: &ApiState) -> Result<StatsSnapshot, ApiError> {
    let Some(source) = &state.stats else {
        return Err(ApiError::Unavailable(
            "this API server cannot reach the routers' request history".into(),
        ));
    };
    source
        .stats()
        .await
        .map_err(|e| ApiError::Unavailable(format!("reading the request history: {e}")))
}

/// The `window` parameter: minutes, 1 to 60 (default 60).
fn window(params: &Params) -> Result<u64, ApiError> {
    let max = MINUTES as u64;
    match params.number("window")? {
        None => Ok(max),
        Some(w) if (1..=max).contains(&w) => Ok(w),
        Some(w) => Err(ApiError::invalid(
            "window",
            format!("{w} is out of range: expected minutes from 1 to {max}"),
        )),
    }
}

fn summary_json(f: &FunctionSnapshot, minute: u64, window: u64) -> Value {
    let summary = f.summary(minute, window);
    json!({
        "namespace": f.function.namespace,
        "name": f.function.name,
        "requests": summary.requests,
        "errors": summary.errors,
        "errorRate": summary.error_rate,
        "requestRate": summary.request_rate,
        "p50Ms": summary.p50_ms,
        "p99Ms": summary.p99_ms,
        "coldStarts": summary.cold_starts,
        "lastInvocation": f.recent.first(),
    })
}

pub(crate) async fn all(State(state): State<ApiState>, uri: Uri) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(&uri, &["namespace", "allNamespaces", "window"])?;
    let all = params.flag("allNamespaces")?;
    let namespace = params.namespace()?;
    let window = window(&params)?;
    let snap = snapshot(&state).await?;
    let items: Vec<Value> = snap
        .functions
        .iter()
        .filter(|f| all || f.function.namespace == namespace)
        .map(|f| summary_json(f, snap.minute, window))
        .collect();
    Ok(Json(json!({
        "minute": snap.minute,
        "windowMinutes": window,
        "items": items,
    })))
}

pub(crate) async fn of_function(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let name = name_param(name)?;
    let params = Params::parse(&uri, &["namespace", "window"])?;
    let namespace = params.namespace()?;
    let window = window(&params)?;
    let id = FunctionId::new(&namespace, &name);
    let snap = snapshot(&state).await?;
    let function = match snap.function(&id) {
        Some(f) => f.clone(),
        None => {
            if state
                .store
                .get(Kind::Function, &namespace, &name)
                .await?
                .is_none()
            {
                return Err(ApiError::NotFound(format!(
                    "function {namespace}/{name} not found and not called in the last hour"
                )));
            }
            FunctionSnapshot {
                function: id,
                minutes: Vec::new(),
                recent: Vec::new(),
            }
        }
    };
    Ok(Json(json!({
        "minute": snap.minute,
        "windowMinutes": window,
        "summary": summary_json(&function, snap.minute, window),
        "series": function.series(snap.minute, window),
        "recent": function.recent,
    })))
}
