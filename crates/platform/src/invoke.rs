//! How the API and the trigger workers invoke functions: through the router in this process,
//! or through a router's internal listener over HTTP.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use kappa_api::Invoker;
use kappa_core::FunctionId;
use kappa_router::Router;

use crate::error::{Ctx as _, PlatformError};

/// Invokes through the router in this process (with its admission, queueing and scaling), and
/// lets the API's writes wait until that router serves them.
pub(crate) struct LocalInvoker(pub(crate) Router);

#[async_trait::async_trait]
impl Invoker for LocalInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        self.0.invoke(function, request).await
    }
}

#[async_trait::async_trait]
impl kappa_api::RouteSync for LocalInvoker {
    async fn wait_applied(&self, version: u64) {
        if !self.0.wait_applied(version, Duration::from_secs(2)).await {
            tracing::warn!(version, "the router took more than 2 s to apply a write");
        }
    }
}

/// Lets the trigger workers invoke through whatever invoker the API uses.
pub(crate) struct TriggerInvoker(pub(crate) Arc<dyn Invoker>);

#[async_trait::async_trait]
impl kappa_triggers::Invoke for TriggerInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        self.0.invoke(function, request).await
    }
}

/// Checks that `base` is an http(s) URL.
pub(crate) fn check_url(base: &str) -> Result<(), PlatformError> {
    let parsed = reqwest::Url::parse(base).with_ctx(|| format!("{base:?} is not a valid URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(PlatformError::config(format!(
            "{base:?} must be an http:// or https:// URL"
        )));
    }
    Ok(())
}

/// Invokes through a router's internal listener
/// (`/internal/v1/functions/<ns>/<name>/invoke/<path>`), streaming both bodies.
pub(crate) struct HttpInvoker {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl HttpInvoker {
    pub(crate) fn new(base: &str, token: &str) -> Result<Self, PlatformError> {
        check_url(base)?;
        Ok(Self {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .ctx("creating the HTTP client")?,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }
}

#[async_trait::async_trait]
impl Invoker for HttpInvoker {
    async fn invoke(
        &self,
        function: FunctionId,
        request: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let rest = if path == "/" { "" } else { path };
        let mut url = format!(
            "{}/internal/v1/functions/{}/{}/invoke{rest}",
            self.base, function.namespace, function.name
        );
        if let Some(q) = parts.uri.query() {
            url.push('?');
            url.push_str(q);
        }
        let mut headers = parts.headers.clone();
        headers.remove(header::HOST);
        headers.remove(header::AUTHORIZATION);
        let result = self
            .client
            .request(parts.method.clone(), &url)
            .headers(headers)
            .bearer_auth(&self.token)
            .body(reqwest::Body::wrap_stream(body.into_data_stream()))
            .send()
            .await;
        match result {
            Ok(response) => {
                let mut builder = http::Response::builder().status(response.status());
                if let Some(h) = builder.headers_mut() {
                    h.extend(
                        response
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
                builder
                    .body(axum::body::Body::from_stream(response.bytes_stream()))
                    .unwrap_or_else(|_| unavailable("the router's answer was not valid"))
            }
            Err(e) => unavailable(&format!("the router at {} did not answer: {e}", self.base)),
        }
    }
}

fn unavailable(message: &str) -> http::Response<axum::body::Body> {
    let body = kappa_types::ErrorBody::new("unavailable", message).to_bytes();
    let mut response = http::Response::new(axum::body::Body::from(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
