//! Errors: [`RouterError`] for the serving loop, and [`Failure`], an answer the router gives
//! instead of the function's (always a JSON [`ErrorBody`] with the invocation id).

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};
use kappa_core::ProvisionError;
use kappa_types::ErrorBody;

use crate::body::ResponseBody;
use crate::proxy::INVOCATION_ID;

/// Why [`crate::Router::serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The admin listener stopped with an IO error.
    #[error("admin listener failed: {0}")]
    Admin(#[source] std::io::Error),
    /// The background route-table watcher panicked.
    #[error("route table watcher crashed: {0}")]
    Watcher(String),
    /// Setting up the public listener's sockets or a router thread's runtime failed.
    #[error("public listener: {0}")]
    Listener(#[source] std::io::Error),
}

/// An answer the router writes itself.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Set `Retry-After` (429, 503).
    pub retry_after: bool,
    /// `Allow` for 405.
    pub allow: Option<HeaderValue>,
    /// Close the client connection after answering (the request body was not read).
    pub close: bool,
}

impl Failure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: false,
            allow: None,
            close: false,
        }
    }

    pub fn retry_after(mut self) -> Self {
        self.retry_after = true;
        self
    }

    pub fn close(mut self) -> Self {
        self.close = true;
        self
    }

    /// The answer for a provisioner error about `function`.
    pub fn from_provision(function: &kappa_core::FunctionId, error: ProvisionError) -> Self {
        match error {
            ProvisionError::FunctionNotFound(id) => Self::new(
                StatusCode::NOT_FOUND,
                "function_not_found",
                format!("function {id} not found"),
            ),
            e @ (ProvisionError::EnvironmentNotFound(_) | ProvisionError::Package { .. }) => {
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "function_misconfigured",
                    format!("function {function}: {e}"),
                )
            }
            ProvisionError::Specialize { message, detail } => {
                let mut text = format!("function {function}: specialization failed: {message}");
                if let Some(detail) = detail.filter(|d| !d.trim().is_empty()) {
                    text.push('\n');
                    text.push_str(&detail);
                }
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "specialize_failed", text)
            }
            e @ ProvisionError::Start(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "instance_start_failed",
                format!("function {function}: {e}"),
            )
            .retry_after(),
            e @ ProvisionError::Timeout(_) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                "specialize_timeout",
                format!("function {function}: {e}"),
            ),
            e @ ProvisionError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("function {function}: {e}"),
            )
            .retry_after(),
        }
    }

    /// The response: the JSON body in one buffer, with the invocation id as body field and header.
    pub fn into_response(
        self,
        invocation_id: &HeaderValue,
        retry_after: &HeaderValue,
    ) -> Response<ResponseBody> {
        let id = invocation_id.to_str().unwrap_or_default();
        let body = Bytes::from(
            ErrorBody::new(self.code, self.message)
                .with_invocation_id(id)
                .to_bytes(),
        );
        let len = body.len();
        let mut response = Response::new(ResponseBody::full(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        headers.insert(INVOCATION_ID.clone(), invocation_id.clone());
        if self.retry_after {
            headers.insert(RETRY_AFTER, retry_after.clone());
        }
        if let Some(allow) = self.allow {
            headers.insert(ALLOW, allow);
        }
        if self.close {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
