//! Object metadata and the generic resource envelope.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::validate::{self, ValidationError};

/// The `apiVersion` of every Kappa resource.
pub const API_VERSION: &str = "kappa.dev/v1";
/// The namespace a resource lands in when none is given.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Metadata common to all resources, a subset of Kubernetes' `ObjectMeta`.
///
/// `uid`, `resourceVersion`, `generation` and `creationTimestamp` are set by the store; values a
/// client sends for them are ignored on create and used as a precondition on update
/// (`resourceVersion` only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_string()
}

impl ObjectMeta {
    /// Metadata with a name in the default namespace.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: default_namespace(),
            ..Self::default()
        }
    }

    /// Checks the name and namespace are DNS-1123 labels.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::dns1123_label("metadata.name", &self.name)?;
        validate::dns1123_label("metadata.namespace", &self.namespace)?;
        Ok(())
    }
}

/// The spec of one kind of resource: its kind, status type, defaults and validation.
pub trait Spec:
    Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync + 'static
{
    /// The kind this spec belongs to.
    const KIND: Kind;
    /// The status type the platform writes for this kind.
    type Status: Serialize
        + DeserializeOwned
        + Clone
        + Default
        + std::fmt::Debug
        + PartialEq
        + Send
        + Sync;

    /// Checks every field, naming the first that is wrong (paths start at `spec.`).
    fn validate(&self) -> Result<(), ValidationError>;
}

/// The envelope every resource shares: `apiVersion`, `kind`, `metadata`, `spec`, `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[serde(bound(deserialize = "S: Spec"))]
pub struct Resource<S: Spec> {
    #[serde(default = "api_version")]
    pub api_version: String,
    #[serde(default = "kind_of::<S>")]
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default)]
    pub status: S::Status,
}

fn api_version() -> String {
    API_VERSION.to_string()
}

fn kind_of<S: Spec>() -> String {
    S::KIND.as_str().to_string()
}

impl<S: Spec> Resource<S> {
    /// A new resource in the default namespace with an empty status.
    pub fn new(name: impl Into<String>, spec: S) -> Self {
        Self {
            api_version: api_version(),
            kind: kind_of::<S>(),
            metadata: ObjectMeta::named(name),
            spec,
            status: S::Status::default(),
        }
    }

    /// Checks envelope, metadata and spec.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.api_version != API_VERSION {
            return Err(ValidationError::new(
                "apiVersion",
                format!("expected \"{API_VERSION}\", got \"{}\"", self.api_version),
            ));
        }
        if self.kind != S::KIND.as_str() {
            return Err(ValidationError::new(
                "kind",
                format!("expected \"{}\", got \"{}\"", S::KIND.as_str(), self.kind),
            ));
        }
        self.metadata.validate()?;
        self.spec.validate()
    }

    /// Parses a resource from JSON, turning serde's message into a field error.
    pub fn from_json(value: serde_json::Value) -> Result<Self, ValidationError> {
        serde_json::from_value(value).map_err(|e| ValidationError::from_serde(&e.to_string()))
    }

    /// Parses a resource from YAML (or JSON, which is YAML), naming the field on error.
    pub fn from_yaml(text: &str) -> Result<Self, ValidationError> {
        serde_norway::from_str(text).map_err(|e| ValidationError::from_serde(&e.to_string()))
    }

    /// The resource as a JSON value.
    pub fn to_json(&self) -> serde_json::Value {
        // Serialising plain data structs with string keys cannot fail.
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// The store's resource version as a number (0 when unset or not numeric).
    pub fn resource_version(&self) -> u64 {
        self.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Environment, EnvironmentSpec, Runtime};

    #[test]
    fn envelope_defaults_and_round_trip() {
        let env: Environment = Resource::from_yaml(
            "metadata:\n  name: python\nspec:\n  runtime:\n    image: python\n",
        )
        .unwrap();
        assert_eq!(env.api_version, API_VERSION);
        assert_eq!(env.kind, "Environment");
        assert_eq!(env.metadata.namespace, "default");
        assert_eq!(env.spec.poolsize, 3);
        env.validate().unwrap();
        let back = Environment::from_json(env.to_json()).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn wrong_kind_is_named() {
        let mut env = Environment::new(
            "python",
            EnvironmentSpec {
                runtime: Runtime {
                    image: "python".into(),
                    command: None,
                },
                ..EnvironmentSpec::default()
            },
        );
        env.kind = "Function".into();
        let err = env.validate().unwrap_err();
        assert_eq!(err.field, "kind");
    }
}
