//! `ANY /v1/functions/{name}/invoke[/{*path}]`: a test invocation through the [`crate::Invoker`],
//! or with `?async=true` an asynchronous one (stored, answered `202`: [`crate::invocations`]).

use axum::extract::{Request, State};
use axum::response::Response;
use http::header;
use http::uri::PathAndQuery;
use kappa_core::FunctionId;
use kappa_types::{DEFAULT_NAMESPACE, Kind, validate};

use crate::error::ApiError;
use crate::extract::path_name;
use crate::state::ApiState;

/// Marks a response that must reach the client as it is (a function's own 404 stays the
/// function's, not an API error body).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Passthrough;

/// Splits `/v1/functions/<name>/invoke<rest>` (still percent-encoded) into the name segment
/// and the function's path (`/` when there is no rest).
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/functions/")?;
    let (name, rest) = rest.split_once('/')?;
    let rest = rest.strip_prefix("invoke")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some((name, if rest.is_empty() { "/" } else { rest }))
}

/// The query without the API's own `namespace` and `async` parameters, other pairs kept byte
/// for byte.
fn function_query(query: Option<&str>) -> String {
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or("");
            key != "namespace" && key != "async"
        })
        .collect::<Vec<_>>()
        .join("&")
}

pub(crate) async fn invoke(
    State(state): State<ApiState>,
    mut request: Request,
) -> Result<Response, ApiError> {
    let uri = request.uri().clone();
    let Some((raw_name, function_path)) = split_path(uri.path()) else {
        return Err(ApiError::NotFound(format!("no route for {}", uri.path())));
    };
    // Names are DNS-1123 labels (a version `hello@3`, also written `hello%403`), so a valid
    // one needs no further percent-decoding.
    let raw_name = raw_name.replace("%40", "@");
    let version = raw_name.contains('@');
    if version {
        kappa_types::validate_function_ref("name", &raw_name)?;
    } else {
        path_name(&raw_name)?;
    }
    let name = kappa_types::function_ref_target(&raw_name);
    // Only `namespace` is the API's; every other parameter is the function's.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or(""))
        .map_err(|e| ApiError::malformed(format!("malformed query string: {e}")))?;
    let mut namespaces = pairs
        .iter()
        .filter(|(k, _)| k == "namespace")
        .map(|(_, v)| v);
    let namespace = match (namespaces.next(), namespaces.next()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "namespace",
                "query parameter \"namespace\" is repeated",
            ));
        }
        (Some(ns), None) => {
            validate::dns1123_label("namespace", ns)?;
            ns.clone()
        }
        (None, _) => DEFAULT_NAMESPACE.to_string(),
    };
    let asynchronous = match pairs
        .iter()
        .filter(|(k, _)| k == "async")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()[..]
    {
        [] | ["false"] | ["0"] => false,
        ["true"] | ["1"] | [""] => true,
        [other] => {
            return Err(ApiError::invalid(
                "async",
                format!("query parameter \"async\" is {other:?}: expected true or false"),
            ));
        }
        _ => {
            return Err(ApiError::invalid(
                "async",
                "query parameter \"async\" is repeated",
            ));
        }
    };
    let invoker = state.invoker.clone();
    if invoker.is_none() && !asynchronous {
        return Err(ApiError::Unavailable(
            "test invocation is not available: this API server has no invoker (router) configured"
                .into(),
        ));
    }
    let kind = if version {
        Kind::FunctionVersion
    } else {
        Kind::Function
    };
    if state.store.get(kind, &namespace, &name).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "{kind} {namespace}/{raw_name} not found"
        )));
    }
    let query = function_query(uri.query());
    let target = if query.is_empty() {
        function_path.to_string()
    } else {
        format!("{function_path}?{query}")
    };
    let path_and_query: PathAndQuery = target
        .parse()
        .map_err(|e| ApiError::malformed(format!("invalid function path {target:?}: {e}")))?;
    *request.uri_mut() = http::Uri::from(path_and_query);
    // The API's token is for the API, never for the function.
    request.headers_mut().remove(header::AUTHORIZATION);
    if asynchronous {
        return crate::invocations::accept(&state, &namespace, &name, request).await;
    }
    let Some(invoker) = invoker else {
        return Err(ApiError::Unavailable("no invoker".into()));
    };
    let function = FunctionId::new(namespace, name);
    tracing::debug!(function = %function, path = %target, "test invocation");
    let mut response = invoker.invoke(function, request).await;
    response.extensions_mut().insert(Passthrough);
    Ok(response)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn paths_split() {
        assert_eq!(
            split_path("/v1/functions/hello/invoke"),
            Some(("hello", "/"))
        );
        assert_eq!(
            split_path("/v1/functions/hello/invoke/"),
            Some(("hello", "/"))
        );
        assert_eq!(
            split_path("/v1/functions/hello/invoke/a/b%20c"),
            Some(("hello", "/a/b%20c"))
        );
        assert_eq!(split_path("/v1/functions/hello/invoker"), None);
    }

    #[test]
    fn namespace_is_removed_from_the_query() {
        assert_eq!(function_query(Some("namespace=x&a=1&b=%20")), "a=1&b=%20");
        assert_eq!(function_query(Some("namespace=x")), "");
        assert_eq!(function_query(Some("async=true&a=1")), "a=1");
        assert_eq!(function_query(None), "");
    }
}
