//! Event triggers: MessageQueueTrigger (a topic of a message broker) and TimeTrigger (a cron
//! schedule). Both invoke their function through the router.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::Spec;
use crate::trigger::{FunctionReference, FunctionReferenceType};
use crate::validate::{self, ValidationError};

/// Brokers Kappa can consume from.
pub const MESSAGE_QUEUE_TYPES: [&str; 2] = ["nats-jetstream", "redis"];

/// Desired state of a MessageQueueTrigger (field names follow Fission's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MessageQueueTriggerSpec {
    /// The function each message is POSTed to (by name).
    pub functionref: FunctionReference,
    /// `nats-jetstream` or `redis` (Redis Streams).
    pub message_queue_type: String,
    /// The subject (NATS) or stream key (Redis) to consume.
    pub topic: String,
    /// Where a successful response body is published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp_topic: Option<String>,
    /// Where a message goes after its last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_topic: Option<String>,
    /// Retries after the first failed attempt.
    #[serde(default)]
    pub max_retries: u32,
    /// `Content-Type` of the request to the function.
    #[serde(default = "default_content_type")]
    pub content_type: String,
    /// Messages of this trigger in flight at once; 1 keeps the order per subject.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Connection settings, e.g. `url` (`nats://127.0.0.1:4222`, `redis://127.0.0.1:6379`),
    /// `stream`, `consumer`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// A Secret with the broker's credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn default_content_type() -> String {
    "application/json".to_string()
}
fn default_max_concurrency() -> u32 {
    1
}

/// Observed state of an event trigger, written by the trigger workers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// `pending`, `ready` or `error`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Why it is in that state (e.g. the broker connection error).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// TimeTrigger: the scheduled time (RFC 3339, UTC) of the last firing, recorded before the
    /// function is invoked so that a restart never fires the same time twice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fired_time: Option<String>,
}

pub(crate) fn topic_name(field: &str, value: &str) -> Result<(), ValidationError> {
    validate::non_empty(field, value)?;
    let ok = value.len() <= 255
        && value.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/' | '*' | '>')
        });
    if !ok {
        return Err(ValidationError::new(
            field,
            format!(
                "{value:?} is not a topic name: expected letters, digits and . - _ : / (at most 255)"
            ),
        ));
    }
    Ok(())
}

fn name_ref(path: &str, functionref: &FunctionReference) -> Result<(), ValidationError> {
    if functionref.kind != FunctionReferenceType::Name {
        return Err(ValidationError::new(
            format!("{path}.type"),
            "only \"name\" is supported for event triggers",
        ));
    }
    functionref.validate(path)
}

/// Message-queue types Fission knows (its KEDA connectors and legacy consumers) that Kappa has
/// no broker for.
const FISSION_ONLY_MESSAGE_QUEUE_TYPES: [&str; 8] = [
    "kafka",
    "aws-sqs-queue",
    "aws-kinesis-stream",
    "gcp-pubsub",
    "stan",
    "nats-streaming",
    "rabbitmq",
    "azure-storage-queue",
];

/// Why `mqtype` is refused, naming the types Kappa supports: one message for the API, the CLI
/// and specs.
pub fn unsupported_message_queue_type(mqtype: &str) -> String {
    let supported = "nats-jetstream (NATS JetStream) or redis (Redis Streams)";
    if FISSION_ONLY_MESSAGE_QUEUE_TYPES.contains(&mqtype) {
        format!(
            "{mqtype:?} is a Fission message-queue type that Kappa does not support: expected {supported}"
        )
    } else {
        format!("{mqtype:?} is not a supported message-queue type: expected {supported}")
    }
}

impl Spec for MessageQueueTriggerSpec {
    const KIND: Kind = Kind::MessageQueueTrigger;
    type Status = TriggerStatus;

    fn validate(&self) -> Result<(), ValidationError> {
        name_ref("spec.functionref", &self.functionref)?;
        if !MESSAGE_QUEUE_TYPES.contains(&self.message_queue_type.as_str()) {
            return Err(ValidationError::new(
                "spec.messageQueueType",
                unsupported_message_queue_type(&self.message_queue_type),
            ));
        }
        topic_name("spec.topic", &self.topic)?;
        if let Some(t) = &self.resp_topic {
            topic_name("spec.respTopic", t)?;
        }
        if let Some(t) = &self.error_topic {
            topic_name("spec.errorTopic", t)?;
        }
        validate::in_range("spec.maxRetries", self.max_retries, 0, 100)?;
        validate::non_empty("spec.contentType", &self.content_type)?;
        validate::in_range("spec.maxConcurrency", self.max_concurrency, 1, 1024)?;
        if let Some(secret) = &self.secret {
            validate::dns1123_label("spec.secret", secret)?;
        }
        Ok(())
    }
}

/// Desired state of a TimeTrigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeTriggerSpec {
    /// 5 fields (minute hour day-of-month month day-of-week), 6 with leading seconds, or a
    /// descriptor: `@every 30s`, `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    pub functionref: FunctionReference,
    /// HTTP method of the invocation.
    #[serde(default = "default_method")]
    pub method: String,
    /// Path the function receives.
    #[serde(default = "default_subpath")]
    pub subpath: String,
}

fn default_method() -> String {
    "POST".to_string()
}
fn default_subpath() -> String {
    "/".to_string()
}

/// Checks the shape of a cron expression (field count and characters, descriptors); the
/// scheduler parses it fully.
pub fn validate_cron_shape(field: &str, cron: &str) -> Result<(), ValidationError> {
    let cron = cron.trim();
    if let Some(rest) = cron.strip_prefix("@every") {
        let d = rest.trim();
        let ok = !d.is_empty()
            && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '.')
            && d.chars().next().is_some_and(|c| c.is_ascii_digit());
        if !ok {
            return Err(ValidationError::new(
                field,
                "expected \"@every <duration>\", e.g. \"@every 30s\" or \"@every 1h30m\"",
            ));
        }
        return Ok(());
    }
    if cron.starts_with('@') {
        const DESCRIPTORS: [&str; 7] = [
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        ];
        if !DESCRIPTORS.contains(&cron) {
            return Err(ValidationError::new(
                field,
                format!(
                    "{cron:?} is not a descriptor: expected one of {} or @every <duration>",
                    DESCRIPTORS.join(", ")
                ),
            ));
        }
        return Ok(());
    }
    let fields: Vec<&str> = cron.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(ValidationError::new(
            field,
            format!(
                "{cron:?} has {} fields: expected 5 (minute hour day month weekday) or 6 (with leading seconds)",
                fields.len()
            ),
        ));
    }
    for f in fields {
        if !f
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?'))
        {
            return Err(ValidationError::new(
                field,
                format!("field {f:?} has characters a cron field cannot have"),
            ));
        }
    }
    Ok(())
}

impl Spec for TimeTriggerSpec {
    const KIND: Kind = Kind::TimeTrigger;
    type Status = TriggerStatus;

    fn validate(&self) -> Result<(), ValidationError> {
        validate_cron_shape("spec.cron", &self.cron)?;
        name_ref("spec.functionref", &self.functionref)?;
        validate::http_method("spec.method", &self.method)?;
        if !self.subpath.starts_with('/')
            || self
                .subpath
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValidationError::new(
                "spec.subpath",
                format!("{:?} must be a path starting with '/'", self.subpath),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mqt() -> MessageQueueTriggerSpec {
        MessageQueueTriggerSpec {
            functionref: FunctionReference::name("hello"),
            message_queue_type: "nats-jetstream".into(),
            topic: "orders".into(),
            content_type: default_content_type(),
            max_concurrency: 1,
            ..MessageQueueTriggerSpec::default()
        }
    }

    #[test]
    fn message_queue_triggers() {
        mqt().validate().unwrap();
        let mut t = mqt();
        t.message_queue_type = "kafka".into();
        let e = t.validate().unwrap_err();
        assert_eq!(e.field, "spec.messageQueueType");
        assert!(
            e.message
                .contains("\"kafka\" is a Fission message-queue type that Kappa does not support"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("nats-jetstream") && e.message.contains("redis"),
            "{}",
            e.message
        );
        let mut t = mqt();
        t.topic = String::new();
        assert_eq!(t.validate().unwrap_err().field, "spec.topic");
        let mut t = mqt();
        t.max_concurrency = 0;
        assert_eq!(t.validate().unwrap_err().field, "spec.maxConcurrency");
    }

    #[test]
    fn cron_shapes() {
        for ok in [
            "*/5 * * * *",
            "*/2 * * * * *",
            "@every 30s",
            "@hourly",
            "0 0 1 JAN MON",
        ] {
            validate_cron_shape("spec.cron", ok).unwrap();
        }
        for bad in [
            "",
            "* * *",
            "@every",
            "@sometimes",
            "* * * * * * *",
            "* * * * ;",
        ] {
            assert_eq!(
                validate_cron_shape("spec.cron", bad).unwrap_err().field,
                "spec.cron",
                "{bad}"
            );
        }
    }
}
