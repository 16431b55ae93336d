//! Invocation: one accepted asynchronous invocation of a function and its outcome.
//!
//! An Invocation is not desired state: the router or the API server writes it when it accepts
//! an asynchronous request (before answering `202`), and the asynchronous worker
//! (`kappa-triggers`) claims it, runs it and records the outcome in its status. Its name is the
//! invocation id (32 lower-case hex digits, so a DNS-1123 label).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::Spec;
use crate::validate::{self, ValidationError};

/// The header a routed request sets (to `async`) to be invoked asynchronously.
pub const INVOCATION_TYPE_HEADER: &str = "x-kappa-invocation-type";
/// The header carrying the asynchronous invocation's id on each attempt.
pub const ASYNC_ID_HEADER: &str = "x-kappa-async-invocation-id";
/// The largest request body an asynchronous invocation may carry (it is stored whole).
pub const ASYNC_BODY_LIMIT: u64 = 256 * 1024;
/// The label naming an invocation's function, so listings by function need no spec parsing.
pub const FUNCTION_LABEL: &str = "kappa.dev/function";

/// The request to replay, as accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvocationSpec {
    /// The function's name (in the invocation's namespace).
    pub function: String,
    /// The HTTP method.
    pub method: String,
    /// The path and query the function receives.
    pub path: String,
    /// Request headers, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<InvocationHeader>,
    /// The request body, base64 (standard alphabet, padded).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// When it was accepted (RFC 3339, UTC, milliseconds).
    pub accepted_at: String,
    /// What accepted it: `router` or `api`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

impl InvocationSpec {
    /// The record of a request to `function` accepted now for asynchronous invocation, by
    /// `source` (`router` or `api`): the one place that encodes a request into an invocation,
    /// so the router and the API server store the same thing. `headers` are stored in order,
    /// their values read as UTF-8 (lossily).
    pub fn accept<'h>(
        function: &str,
        method: &str,
        path: &str,
        headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
        body: &[u8],
        source: &str,
    ) -> Self {
        use base64::Engine as _;
        Self {
            function: function.to_string(),
            method: method.to_string(),
            path: path.to_string(),
            headers: headers
                .into_iter()
                .map(|(name, value)| InvocationHeader {
                    name: name.to_string(),
                    value: String::from_utf8_lossy(value).into_owned(),
                })
                .collect(),
            body: base64::engine::general_purpose::STANDARD.encode(body),
            accepted_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            source: source.to_string(),
        }
    }

    /// The request body, decoded.
    pub fn body_bytes(&self) -> Result<Vec<u8>, ValidationError> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .map_err(|e| ValidationError::new("spec.body", format!("not base64: {e}")))
    }
}

/// One request header of an invocation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct InvocationHeader {
    pub name: String,
    pub value: String,
}

/// Where an invocation is in its life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum InvocationPhase {
    /// Accepted, waiting for its (next) attempt.
    #[default]
    Pending,
    /// An attempt is in progress (claimed under a lease).
    Running,
    /// An attempt got a 2xx.
    Succeeded,
    /// Every attempt failed; it went to the dead-letter destination.
    Deadlettered,
}

impl InvocationPhase {
    /// Whether the invocation is finished (its outcome is final).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Deadlettered)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Deadlettered => "deadlettered",
        }
    }
}

/// A worker's claim on an invocation's current attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InvocationLease {
    /// The worker holding it.
    pub holder: String,
    /// When it expires (RFC 3339); after that, another worker may take the invocation over.
    pub expires_at: String,
}

/// One attempt and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct AttemptRecord {
    /// 1-based.
    pub attempt: u32,
    pub started_at: String,
    pub duration_ms: u64,
    /// The response status, when there was a response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The response of the last attempt (its body up to a size limit).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InvocationResponse {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The body: text as is when it is UTF-8, else base64 (see `bodyEncoding`).
    #[serde(default)]
    pub body: String,
    /// `utf8` or `base64`.
    #[serde(default)]
    pub body_encoding: String,
    /// Whether the body was cut at the size limit.
    #[serde(default)]
    pub truncated: bool,
}

/// Observed state of an invocation, written by the worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct InvocationStatus {
    #[serde(default)]
    pub phase: InvocationPhase,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts: u32,
    /// The most attempts it gets (the function's `retries` + 1, read at the first attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// When the next attempt may start (RFC 3339), while pending after a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<InvocationLease>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<AttemptRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<InvocationResponse>,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Where it was dead-lettered: `store`, or `<messageQueueType>:<topic>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    /// When the outcome became final (RFC 3339); retention counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl Spec for InvocationSpec {
    const KIND: Kind = Kind::Invocation;
    type Status = InvocationStatus;

    fn validate(&self) -> Result<(), ValidationError> {
        validate::dns1123_label("spec.function", &self.function)?;
        validate::non_empty("spec.method", &self.method)?;
        if !self.path.starts_with('/') {
            return Err(ValidationError::new(
                "spec.path",
                format!("{:?} must start with '/'", self.path),
            ));
        }
        Ok(())
    }
}

/// Where a function's asynchronous invocations go after their last failed attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeadLetter {
    /// `nats-jetstream`, `redis` or `kafka`.
    pub message_queue_type: String,
    /// The subject (NATS), stream key (Redis) or topic (Kafka) failed invocations are published to.
    pub topic: String,
    /// Connection settings: `url` (absent: the platform's default broker of that type).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl DeadLetter {
    pub fn validate(&self, path: &str) -> Result<(), ValidationError> {
        if !crate::MESSAGE_QUEUE_TYPES.contains(&self.message_queue_type.as_str()) {
            return Err(ValidationError::new(
                format!("{path}.messageQueueType"),
                crate::unsupported_message_queue_type(&self.message_queue_type),
            ));
        }
        crate::events::topic_name(&format!("{path}.topic"), &self.topic)
    }
}

impl crate::Invocation {
    /// A newly accepted invocation `id` of `spec.function` in `namespace`, status `pending`,
    /// labelled with its function.
    pub fn accepted(id: &str, namespace: &str, spec: InvocationSpec) -> Self {
        let mut invocation = Self::new(id, spec);
        invocation.metadata.namespace = namespace.to_string();
        invocation
            .metadata
            .labels
            .insert(FUNCTION_LABEL.to_string(), invocation.spec.function.clone());
        invocation
    }
}

/// Whether `id` has the shape of an invocation id (32 lower-case hex digits).
pub fn is_invocation_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex() {
        assert!(is_invocation_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_invocation_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_invocation_id("abc"));
    }

    #[test]
    fn dead_letters_name_their_field() {
        let d = DeadLetter {
            message_queue_type: "rabbitmq".into(),
            topic: "t".into(),
            metadata: BTreeMap::new(),
        };
        assert_eq!(
            d.validate("spec.deadLetter").unwrap_err().field,
            "spec.deadLetter.messageQueueType"
        );
    }
}
