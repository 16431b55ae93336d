//! `GET /v1/functions/{name}/logs`: a function's instance logs as NDJSON, optionally followed.

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use futures::StreamExt;
use http::Uri;
use kappa_logs::{LogLine, ReadOptions};
use kappa_types::Kind;

use crate::error::ApiError;
use crate::extract::Params;
use crate::resources::name_param;
use crate::state::ApiState;
use crate::watch::{line, ndjson_response};

fn log_line(l: &LogLine) -> bytes::Bytes {
    line(&serde_json::to_value(l).unwrap_or_default())
}

pub(crate) async fn logs(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let name = name_param(name)?;
    let params = Params::parse(&uri, &["namespace", "tail", "instance", "since", "follow"])?;
    let namespace = params.namespace()?;
    let follow = params.flag("follow")?;
    let tail = params
        .number("tail")?
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let opts = ReadOptions {
        tail,
        instance: params.get("instance").map(str::to_string),
        since: params.get("since").map(str::to_string),
    };
    let exists = state
        .store
        .get(Kind::Function, &namespace, &name)
        .await?
        .is_some();
    // Reading also checks the options (a bad `instance` or `since` is a 400 here, where a
    // follow stream could only log it).
    let lines = state.logs.read(&namespace, &name, &opts).await?;
    if !exists && lines.is_empty() {
        return Err(ApiError::NotFound(format!(
            "function {namespace}/{name} not found and has no logs"
        )));
    }
    if !follow {
        let mut body = Vec::new();
        for l in &lines {
            body.extend_from_slice(&log_line(l));
        }
        return Ok(ndjson_response(Body::from(body)));
    }
    drop(lines);
    let shutdown = state.shutdown.clone();
    let stream = state
        .logs
        .follow(&namespace, &name, opts)
        .map(|l| Ok::<_, std::convert::Infallible>(log_line(&l)))
        .take_until(shutdown.cancelled_owned());
    Ok(ndjson_response(Body::from_stream(stream)))
}
