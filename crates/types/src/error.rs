//! The JSON error body every Kappa HTTP endpoint (API and router) returns.

use serde::{Deserialize, Serialize};

/// `{"error": {"code", "message", "field"?, "invocationId"?}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The detail of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// A stable, machine-readable code such as `invalid`, `not_found`, `timeout`.
    pub code: String,
    /// What happened, for a person.
    pub message: String,
    /// The request field at fault, as a dotted path, when one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The invocation this error belongs to (router errors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocation_id: Option<String>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: None,
                invocation_id: None,
            },
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.error.field = Some(field.into());
        self
    }

    pub fn with_invocation_id(mut self, id: impl Into<String>) -> Self {
        self.error.invocation_id = Some(id.into());
        self
    }

    /// The body serialised as JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
