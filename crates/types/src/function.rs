//! Function: an entrypoint in a package, run in an environment.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::environment::{EnvironmentSpec, Resources, validate_string_map};
use crate::kind::Kind;
use crate::meta::{DEFAULT_NAMESPACE, Spec};
use crate::validate::{self, ValidationError};

/// A reference to another resource by name (and namespace, defaulting to the referrer's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamedRef {
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
}

fn default_ns() -> String {
    DEFAULT_NAMESPACE.to_string()
}

impl NamedRef {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: default_ns(),
        }
    }

    pub fn validate(&self, path: &str) -> Result<(), ValidationError> {
        validate::dns1123_label(&format!("{path}.name"), &self.name)?;
        validate::dns1123_label(&format!("{path}.namespace"), &self.namespace)
    }
}

/// How a function's instances are provisioned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ExecutorType {
    /// Specialize warm generic instances from the environment's pool on demand.
    #[default]
    Poolmgr,
    /// Instances start already specialized, scaled between minScale and maxScale.
    Newdeploy,
}

/// The package a function's code is in, and the entrypoint inside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionPackageRef {
    pub packageref: PackageRef,
    /// The entrypoint, interpreted by the runtime (`module.func` for Python).
    #[serde(default)]
    pub function_name: String,
}

/// A package by name; `resourceversion` pins a version when set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PackageRef {
    pub name: String,
    #[serde(default = "default_ns")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resourceversion: Option<String>,
}

/// Desired state of a Function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FunctionSpec {
    pub environment: NamedRef,
    pub package: FunctionPackageRef,
    #[serde(default)]
    pub executor_type: ExecutorType,
    /// Instances kept specialized even when idle.
    #[serde(default)]
    pub min_scale: u32,
    /// Upper bound of instances for `newdeploy`.
    #[serde(default = "default_max_scale")]
    pub max_scale: u32,
    /// Upper bound of specialized instances (ready plus being specialized) for `poolmgr`.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Requests one instance serves at once.
    #[serde(default = "default_rpp")]
    pub requests_per_pod: u32,
    /// Seconds the router waits for a response.
    #[serde(default = "default_fn_timeout")]
    pub function_timeout: u64,
    /// Seconds an instance may sit idle before it is reaped.
    #[serde(default = "default_idle")]
    pub idletimeout: u64,
    /// Seconds specialization may take.
    #[serde(default = "default_specialization_timeout")]
    pub specialization_timeout: u64,
    /// Environment variables for the function's instances.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<NamedRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configmaps: Vec<NamedRef>,
    /// Overrides the environment's resources for this function's instances.
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Whether the function may open connections to addresses outside the machine (absent:
    /// its environment's `egress`). `false` takes egress away from the instance before the
    /// code is loaded. On Kubernetes a pod's egress is fixed at its creation: a function run
    /// from its environment's warm pods must agree with the environment (otherwise its
    /// specialization is refused, naming the field); a `newdeploy` function's pods get its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
    /// Ports of the host's own loopback (`127.0.0.1`) the function's instances may connect to,
    /// at the same port of their own loopback (absent: its environment's `hostPorts`; `[]`:
    /// none, whatever the environment allows). The platform's own listeners are never
    /// reachable, even when named. Local backend only: the pod backend refuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ports: Option<Vec<u16>>,
    /// How many versions (`kappa fn history`) are kept; older ones are collected unless a route
    /// or canary names them.
    #[serde(
        default = "default_version_limit",
        skip_serializing_if = "is_default_version_limit"
    )]
    pub version_limit: u32,
    /// Asynchronous invocations: attempts after the first failed one (exponential back-off).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Asynchronous invocations: where they go after their last failed attempt (absent: they
    /// stay in the store, dead-lettered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<crate::invocation::DeadLetter>,
}

fn default_version_limit() -> u32 {
    crate::version::DEFAULT_VERSION_LIMIT
}
fn is_default_version_limit(limit: &u32) -> bool {
    *limit == crate::version::DEFAULT_VERSION_LIMIT
}

fn default_retries() -> u32 {
    2
}
fn default_max_scale() -> u32 {
    1
}
fn default_concurrency() -> u32 {
    10
}
fn default_rpp() -> u32 {
    1
}
fn default_fn_timeout() -> u64 {
    60
}
fn default_idle() -> u64 {
    120
}
fn default_specialization_timeout() -> u64 {
    120
}

impl FunctionSpec {
    /// A poolmgr function with every default, in environment `env`, package `pkg`.
    pub fn new(env: &str, pkg: &str, entrypoint: &str) -> Self {
        Self {
            environment: NamedRef::new(env),
            package: FunctionPackageRef {
                packageref: PackageRef {
                    name: pkg.into(),
                    namespace: default_ns(),
                    resourceversion: None,
                },
                function_name: entrypoint.into(),
            },
            executor_type: ExecutorType::default(),
            min_scale: 0,
            max_scale: default_max_scale(),
            concurrency: default_concurrency(),
            requests_per_pod: default_rpp(),
            function_timeout: default_fn_timeout(),
            idletimeout: default_idle(),
            specialization_timeout: default_specialization_timeout(),
            env: BTreeMap::new(),
            secrets: Vec::new(),
            configmaps: Vec::new(),
            resources: Resources::default(),
            egress: None,
            host_ports: None,
            version_limit: default_version_limit(),
            retries: default_retries(),
            dead_letter: None,
        }
    }
}

/// Observed state of a Function (written by the platform).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// Human-readable last error, e.g. a specialization failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Spec for FunctionSpec {
    const KIND: Kind = Kind::Function;
    type Status = FunctionStatus;

    fn validate(&self) -> Result<(), ValidationError> {
        self.environment.validate("spec.environment")?;
        validate::dns1123_label(
            "spec.package.packageref.name",
            &self.package.packageref.name,
        )?;
        validate::dns1123_label(
            "spec.package.packageref.namespace",
            &self.package.packageref.namespace,
        )?;
        validate::entrypoint("spec.package.functionName", &self.package.function_name)?;
        validate::in_range("spec.concurrency", self.concurrency, 1, 10_000)?;
        validate::in_range("spec.requestsPerPod", self.requests_per_pod, 1, 10_000)?;
        validate::in_range("spec.maxScale", self.max_scale, 1, 10_000)?;
        // minScale instances must fit under the cap of the executor type.
        let (cap_field, cap) = match self.executor_type {
            ExecutorType::Newdeploy => ("spec.maxScale", self.max_scale),
            ExecutorType::Poolmgr => ("spec.concurrency", self.concurrency),
        };
        if self.min_scale > cap {
            return Err(ValidationError::new(
                "spec.minScale",
                format!(
                    "{} is larger than {cap_field} ({cap}): minScale instances must fit under the cap",
                    self.min_scale
                ),
            ));
        }
        validate::in_range("spec.functionTimeout", self.function_timeout, 1, 86_400)?;
        validate::in_range("spec.idletimeout", self.idletimeout, 1, 86_400)?;
        validate::in_range(
            "spec.specializationTimeout",
            self.specialization_timeout,
            1,
            3_600,
        )?;
        for key in self.env.keys() {
            let ok = !key.is_empty()
                && !key.as_bytes()[0].is_ascii_digit()
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(ValidationError::new(
                    format!("spec.env.{key}"),
                    "is not a valid environment variable name: expected letters, digits and '_', not starting with a digit",
                ));
            }
        }
        validate_string_map("spec.env", &self.env)?;
        for (i, s) in self.secrets.iter().enumerate() {
            s.validate(&format!("spec.secrets[{i}]"))?;
        }
        for (i, c) in self.configmaps.iter().enumerate() {
            c.validate(&format!("spec.configmaps[{i}]"))?;
        }
        validate::in_range("spec.versionLimit", self.version_limit, 1, 100)?;
        validate::in_range("spec.retries", self.retries, 0, 100)?;
        if let Some(dead_letter) = &self.dead_letter {
            dead_letter.validate("spec.deadLetter")?;
        }
        if let Some(ports) = &self.host_ports {
            validate::host_ports("spec.hostPorts", ports)?;
        }
        self.resources.validate("spec.resources")
    }
}

impl FunctionSpec {
    /// The host ports the function's instances may reach: its own `hostPorts`, else its
    /// environment's.
    pub fn effective_host_ports<'a>(&'a self, env: &'a EnvironmentSpec) -> &'a [u16] {
        self.host_ports.as_deref().unwrap_or(&env.host_ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        FunctionSpec::new("python", "hello", "hello.main")
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_fields_are_named() {
        let mut f = FunctionSpec::new("python", "hello", "hello.main");
        f.function_timeout = 0;
        assert_eq!(f.validate().unwrap_err().field, "spec.functionTimeout");
        let mut f = FunctionSpec::new("python", "hello", "../x");
        f.package.function_name = "../evil".into();
        assert_eq!(f.validate().unwrap_err().field, "spec.package.functionName");
        let f = FunctionSpec::new("Python", "hello", "main");
        assert_eq!(f.validate().unwrap_err().field, "spec.environment.name");
        let mut f = FunctionSpec::new("python", "hello", "main");
        f.env.insert("1BAD".into(), "x".into());
        assert_eq!(f.validate().unwrap_err().field, "spec.env.1BAD");
        let mut f = FunctionSpec::new("python", "hello", "main");
        f.executor_type = ExecutorType::Newdeploy;
        f.min_scale = 2;
        f.max_scale = 1;
        assert_eq!(f.validate().unwrap_err().field, "spec.minScale");
        f.max_scale = 2;
        f.validate().unwrap();
    }

    #[test]
    fn host_ports_are_checked_and_replace_the_environments() {
        let mut f = FunctionSpec::new("python", "hello", "main");
        f.host_ports = Some(vec![5432, 0]);
        let err = f.validate().unwrap_err();
        assert_eq!(err.field, "spec.hostPorts[1]");
        f.host_ports = Some(vec![5432, 6379, 5432]);
        let err = f.validate().unwrap_err();
        assert_eq!(err.field, "spec.hostPorts[2]");
        assert!(err.message.contains("twice"), "{err}");
        let env = EnvironmentSpec {
            host_ports: vec![6379],
            ..EnvironmentSpec::default()
        };
        f.host_ports = None;
        assert_eq!(f.effective_host_ports(&env), &[6379]);
        f.host_ports = Some(vec![]);
        assert!(f.effective_host_ports(&env).is_empty());
        f.host_ports = Some(vec![5432]);
        f.validate().unwrap();
        assert_eq!(f.effective_host_ports(&env), &[5432]);
        // Out of range values are refused when the document is read, naming the field.
        let err = serde_json::from_str::<FunctionSpec>(
            r#"{"environment":{"name":"python"},"package":{"packageref":{"name":"p"}},"hostPorts":[70000]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("u16"), "{err}");
    }
}
