//! [`ApiError`]: every way a request can fail, with its HTTP status and the JSON body
//! `{"error": {"code", "message", "field"?}}` ([`kappa_types::ErrorBody`]).

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use kappa_archive::ArchiveError;
use kappa_logs::LogError;
use kappa_store::StoreError;
use kappa_types::{ErrorBody, ValidationError};

/// Why the API refused or failed a request. Each variant is one error `code` of the API
/// contract (see `docs/api.md`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid`: malformed JSON/YAML, an unknown field, a bad value or a reference to
    /// something that does not exist. `field` is the dotted path at fault when there is one.
    #[error("{message}")]
    Invalid {
        /// Dotted path of the offending field (`spec.poolsize`) or query parameter.
        field: Option<String>,
        /// What was wrong and what was expected.
        message: String,
    },
    /// 401 `unauthorized`: no bearer token, or the wrong one.
    #[error("{0}")]
    Unauthorized(String),
    /// 404 `not_found`: the resource, archive or route does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 405 `method_not_allowed`: the route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409 `already_exists`: a create found the resource present.
    #[error("{0}")]
    AlreadyExists(String),
    /// 409 `conflict`: a resource version mismatch, a duplicate route, or something still
    /// in use.
    #[error("{message}")]
    Conflict {
        /// The field at fault, when there is one (`spec.relativeurl`).
        field: Option<String>,
        /// What conflicts with what.
        message: String,
    },
    /// 410 `gone`: a watch asked for history the store no longer keeps.
    #[error("{0}")]
    Gone(String),
    /// 413 `too_large`: the body is over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// 415 `unsupported_media_type`: a body in a format this route does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 503 `unavailable`: a dependency (the store, the invoker) cannot serve the request now.
    #[error("{0}")]
    Unavailable(String),
    /// 500 `internal`: a failure of the server or its storage.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A 400 `invalid` naming `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    /// A 400 `invalid` with no particular field.
    pub fn malformed(message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: None,
            message: message.into(),
        }
    }

    /// A 409 `conflict`, optionally naming a field.
    pub fn conflict(field: Option<&str>, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            field: field.map(str::to_string),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::AlreadyExists(_) | ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code of the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid { .. } => "invalid",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::AlreadyExists(_) => "already_exists",
            ApiError::Conflict { .. } => "conflict",
            ApiError::Gone(_) => "gone",
            ApiError::TooLarge(_) => "too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The field at fault, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Invalid { field, .. } | ApiError::Conflict { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        let body = ErrorBody::new(self.code(), self.to_string());
        match self.field() {
            Some(field) => body.with_field(field),
            None => body,
        }
    }

    /// The error a response with this status and no JSON body of its own stands for (used to
    /// put axum's plain-text rejections and empty 404/405 answers into the JSON shape).
    pub fn from_status(status: StatusCode, message: String) -> Self {
        match status {
            StatusCode::UNAUTHORIZED => ApiError::Unauthorized(message),
            StatusCode::NOT_FOUND => ApiError::NotFound(message),
            StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed(message),
            StatusCode::CONFLICT => ApiError::conflict(None, message),
            StatusCode::GONE => ApiError::Gone(message),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(message),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(message),
            StatusCode::SERVICE_UNAVAILABLE => ApiError::Unavailable(message),
            s if s.is_client_error() => ApiError::malformed(message),
            _ => ApiError::Internal(message),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self, "request failed");
        }
        let mut response = (status, self.body().to_bytes()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid {
            field: (!e.field.is_empty()).then_some(e.field),
            message: e.message,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists(e.to_string()),
            StoreError::Conflict { .. } => {
                ApiError::conflict(Some("metadata.resourceVersion"), e.to_string())
            }
            StoreError::Terminating { .. } => ApiError::conflict(None, e.to_string()),
            StoreError::Gone { .. } => ApiError::Gone(e.to_string()),
            StoreError::Invalid(_) => ApiError::malformed(e.to_string()),
            StoreError::Backend(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::TooLarge { .. } => ApiError::TooLarge(e.to_string()),
            ArchiveError::InvalidDigest(_) => ApiError::invalid("sha256", e.to_string()),
            ArchiveError::NotFound(_) => ApiError::NotFound(e.to_string()),
            ArchiveError::Body(_) => ApiError::malformed(e.to_string()),
            // An archive extraction would refuse: the request body is the archive.
            ArchiveError::Unsafe { .. } | ArchiveError::Corrupt(_) => {
                ApiError::invalid("body", e.to_string())
            }
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        match &e {
            LogError::InvalidName { field, .. } => ApiError::invalid(*field, e.to_string()),
            LogError::InvalidSince { .. } => ApiError::invalid("since", e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let e = ApiError::invalid("spec.poolsize", "out of range");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let body = e.body();
        assert_eq!(body.error.code, "invalid");
        assert_eq!(body.error.field.as_deref(), Some("spec.poolsize"));
        let e = ApiError::from(StoreError::Gone {
            requested: 1,
            oldest: 5,
        });
        assert_eq!((e.status(), e.code()), (StatusCode::GONE, "gone"));
        let e = ApiError::from_status(StatusCode::METHOD_NOT_ALLOWED, "no".into());
        assert_eq!(e.code(), "method_not_allowed");
        let e = ApiError::from_status(StatusCode::UNPROCESSABLE_ENTITY, "no".into());
        assert_eq!(e.code(), "invalid");
    }

    #[test]
    fn validation_errors_keep_their_field() {
        let e = ApiError::from(ValidationError::new("metadata.name", "bad"));
        assert_eq!(e.field(), Some("metadata.name"));
        let e = ApiError::from(ValidationError::new("", "bad"));
        assert_eq!(e.field(), None);
    }
}
