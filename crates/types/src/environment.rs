//! Environment: the runtime functions run in, and its warm pool.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::kind::Kind;
use crate::meta::Spec;
use crate::quantity::{parse_cpu_millis, parse_memory_bytes};
use crate::validate::{self, ValidationError};

/// Desired state of an Environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// Runtime protocol version; Kappa speaks v2 (`/v2/specialize`) for 2 and 3.
    #[serde(default = "default_version")]
    pub version: u32,
    pub runtime: Runtime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builder: Option<Builder>,
    /// Number of warm generic instances kept ready (Fission's meaning, default 3). With
    /// `poolPolicy.mode: adaptive` it is only the starting size, which then follows demand.
    #[serde(default = "default_poolsize")]
    pub poolsize: u32,
    /// How the pool is sized: absent (or `mode: fixed`) keeps exactly `poolsize` warm, as
    /// Fission does; `mode: adaptive` lets the pool manager follow recent demand between `min`
    /// and `max`, within the platform's pool memory budget (design note 006).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_policy: Option<PoolPolicy>,
    #[serde(default, skip_serializing_if = "Resources::is_empty")]
    pub resources: Resources,
    /// Seconds an instance is given to finish in-flight work before it is killed.
    #[serde(default = "default_grace")]
    pub termination_grace_period: u64,
    /// Keep the deployment archive as a file instead of extracting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keeparchive: bool,
    /// Kubernetes only: node labels the environment's pods must be scheduled on (the pod's
    /// `nodeSelector`); ignored by the local backend.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Kubernetes only: taints the environment's pods tolerate (the pod's `tolerations`);
    /// ignored by the local backend.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Whether the environment's instances may open connections to addresses outside the
    /// machine (absent: yes, where the platform provides egress). They never reach the
    /// platform's or the host's own listeners either way. On Kubernetes, `false` labels the
    /// environment's pods `kappa.dev/egress=none` when they are created, and the chart's
    /// NetworkPolicy then lets them reach only the API server and DNS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<bool>,
    /// Ports of the host's own loopback (`127.0.0.1`) the environment's instances may connect
    /// to, each at the same port of their own loopback (a local database in development, say).
    /// Empty (the default): none. A function's own `hostPorts` replaces this list. The
    /// platform's own listeners are never reachable, even when named. Local backend only: the
    /// pod backend refuses instances that name any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_ports: Vec<u16>,
    /// Whether the environment's instances are forked from a template process (a zygote,
    /// design note 009) instead of starting the runtime by exec (absent: the platform's
    /// `--zygote` setting). Local backend, built-in Python runtime; ignored elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zygote: Option<bool>,
}

/// How an environment's warm pool is sized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolPolicy {
    /// `fixed` (exactly `poolsize`) or `adaptive` (follows demand).
    #[serde(default)]
    pub mode: PoolMode,
    /// Adaptive only: the fewest warm instances kept [default: 0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    /// Adaptive only: the most warm instances kept [default: 20].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
}

/// `poolPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    #[default]
    Fixed,
    Adaptive,
}

/// The default `poolPolicy.max` of an adaptive pool.
pub const DEFAULT_POOL_MAX: u32 = 20;

impl PoolPolicy {
    /// `(min, max)` when adaptive; `None` when the pool is fixed at `poolsize`.
    pub fn adaptive_bounds(&self) -> Option<(u32, u32)> {
        (self.mode == PoolMode::Adaptive)
            .then(|| (self.min.unwrap_or(0), self.max.unwrap_or(DEFAULT_POOL_MAX)))
    }

    fn validate(&self) -> Result<(), ValidationError> {
        match self.adaptive_bounds() {
            None => {
                for (field, value) in [("min", self.min), ("max", self.max)] {
                    if value.is_some() {
                        return Err(ValidationError::new(
                            format!("spec.poolPolicy.{field}"),
                            "only applies to mode: adaptive (a fixed pool keeps exactly spec.poolsize)",
                        ));
                    }
                }
                Ok(())
            }
            Some((min, max)) => {
                validate::in_range("spec.poolPolicy.max", max, 1, 100)?;
                if min > max {
                    return Err(ValidationError::new(
                        "spec.poolPolicy.min",
                        format!("{min} is above poolPolicy.max ({max}): expected 0 to {max}"),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl EnvironmentSpec {
    /// `(min, max)` when the pool is adaptive; `None` when `poolsize` pins it.
    pub fn adaptive_pool(&self) -> Option<(u32, u32)> {
        self.pool_policy
            .as_ref()
            .and_then(PoolPolicy::adaptive_bounds)
    }
}

/// A Kubernetes toleration, passed through to the environment's pods as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Toleration {
    /// The taint key; empty with operator `Exists` tolerates every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (the default) or `Exists`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`; empty matches every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// For `NoExecute`: seconds the pod stays bound after the taint appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

impl Toleration {
    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        match self.operator.as_deref() {
            None | Some("Equal") => {}
            Some("Exists") => {
                if self.value.as_deref().is_some_and(|v| !v.is_empty()) {
                    return Err(ValidationError::new(
                        format!("{path}.value"),
                        "must be empty when operator is \"Exists\"",
                    ));
                }
            }
            Some(other) => {
                return Err(ValidationError::new(
                    format!("{path}.operator"),
                    format!("{other:?} is not an operator: expected \"Equal\" or \"Exists\""),
                ));
            }
        }
        match self.effect.as_deref() {
            None | Some("" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") => {}
            Some(other) => {
                return Err(ValidationError::new(
                    format!("{path}.effect"),
                    format!(
                        "{other:?} is not a taint effect: expected NoSchedule, PreferNoSchedule or NoExecute"
                    ),
                ));
            }
        }
        if self.key.as_deref().is_none_or(str::is_empty)
            && self.operator.as_deref() != Some("Exists")
        {
            return Err(ValidationError::new(
                format!("{path}.key"),
                "must not be empty unless operator is \"Exists\"",
            ));
        }
        Ok(())
    }
}

fn default_version() -> u32 {
    3
}
fn default_poolsize() -> u32 {
    3
}
fn default_grace() -> u64 {
    30
}

impl Default for EnvironmentSpec {
    fn default() -> Self {
        Self {
            version: default_version(),
            runtime: Runtime::default(),
            builder: None,
            poolsize: default_poolsize(),
            pool_policy: None,
            resources: Resources::default(),
            termination_grace_period: default_grace(),
            keeparchive: false,
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            egress: None,
            host_ports: Vec::new(),
            zygote: None,
        }
    }
}

/// The runtime server of an environment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Runtime {
    /// Container image; locally a built-in runtime name (`python`, ...) or a Fission image name.
    #[serde(default)]
    pub image: String,
    /// Locally: an explicit command line that starts a runtime-protocol server on `$PORT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// The builder of an environment (source packages).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Builder {
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub command: String,
}

/// CPU and memory requests and limits, as Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub requests: ResourceList,
    #[serde(default, skip_serializing_if = "ResourceList::is_empty")]
    pub limits: ResourceList,
}

/// `cpu` (`500m`, `1`) and `memory` (`128Mi`), plus `pids` (a count, a Kappa extension).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourceList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

impl ResourceList {
    pub fn is_empty(&self) -> bool {
        self.cpu.is_none() && self.memory.is_none() && self.pids.is_none()
    }

    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        if let Some(cpu) = &self.cpu
            && parse_cpu_millis(cpu).is_none()
        {
            return Err(ValidationError::new(
                format!("{path}.cpu"),
                format!("{cpu:?} is not a CPU quantity: expected e.g. \"500m\" or \"1\""),
            ));
        }
        if let Some(memory) = &self.memory {
            match parse_memory_bytes(memory) {
                Some(b) if b >= 4 << 20 => {}
                Some(_) => {
                    return Err(ValidationError::new(
                        format!("{path}.memory"),
                        format!("{memory:?} is too small: expected at least 4Mi"),
                    ));
                }
                None => {
                    return Err(ValidationError::new(
                        format!("{path}.memory"),
                        format!(
                            "{memory:?} is not a memory quantity: expected e.g. \"128Mi\" or \"1Gi\""
                        ),
                    ));
                }
            }
        }
        if let Some(pids) = self.pids {
            validate::in_range(&format!("{path}.pids"), pids, 8, 1_000_000)?;
        }
        Ok(())
    }
}

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.limits.is_empty()
    }

    pub fn validate(&self, path: &str) -> Result<(), ValidationError> {
        self.requests.validate(&format!("{path}.requests"))?;
        self.limits.validate(&format!("{path}.limits"))
    }

    /// Memory limit in bytes, if set.
    pub fn memory_limit_bytes(&self) -> Option<u64> {
        self.limits.memory.as_deref().and_then(parse_memory_bytes)
    }

    /// CPU limit in millicores, if set.
    pub fn cpu_limit_millis(&self) -> Option<u64> {
        self.limits.cpu.as_deref().and_then(parse_cpu_millis)
    }

    /// Limits of `self` where set, else those of `fallback`.
    pub fn or(&self, fallback: &Resources) -> Resources {
        let pick = |a: &ResourceList, b: &ResourceList| ResourceList {
            cpu: a.cpu.clone().or_else(|| b.cpu.clone()),
            memory: a.memory.clone().or_else(|| b.memory.clone()),
            pids: a.pids.or(b.pids),
        };
        Resources {
            requests: pick(&self.requests, &fallback.requests),
            limits: pick(&self.limits, &fallback.limits),
        }
    }
}

/// Labels are free-form, but keys must be non-empty and short.
pub(crate) fn validate_string_map(
    path: &str,
    map: &BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    for key in map.keys() {
        if key.is_empty() || key.len() > 253 {
            return Err(ValidationError::new(
                format!("{path}.{key}"),
                "keys must be 1 to 253 characters",
            ));
        }
    }
    Ok(())
}

impl Spec for EnvironmentSpec {
    const KIND: Kind = Kind::Environment;
    type Status = serde_json::Value;

    fn validate(&self) -> Result<(), ValidationError> {
        if !(2..=3).contains(&self.version) {
            return Err(ValidationError::new(
                "spec.version",
                format!(
                    "{} is not supported: Kappa speaks runtime protocol v2, expected 2 or 3",
                    self.version
                ),
            ));
        }
        if self.runtime.image.trim().is_empty()
            && self
                .runtime
                .command
                .as_deref()
                .is_none_or(|c| c.trim().is_empty())
        {
            return Err(ValidationError::new(
                "spec.runtime.image",
                "must not be empty: expected a runtime name (python, nodejs, binary), an image, or spec.runtime.command",
            ));
        }
        if let Some(builder) = &self.builder
            && builder.image.trim().is_empty()
            && builder.command.trim().is_empty()
        {
            return Err(ValidationError::new(
                "spec.builder",
                "expected an image or a command when a builder is given",
            ));
        }
        validate::in_range("spec.poolsize", self.poolsize, 0, 100)?;
        if let Some(policy) = &self.pool_policy {
            policy.validate()?;
        }
        self.resources.validate("spec.resources")?;
        validate::in_range(
            "spec.terminationGracePeriod",
            self.termination_grace_period,
            0,
            3600,
        )?;
        validate_string_map("spec.nodeSelector", &self.node_selector)?;
        validate::in_range("spec.tolerations (count)", self.tolerations.len(), 0, 32)?;
        for (i, t) in self.tolerations.iter().enumerate() {
            t.validate(&format!("spec.tolerations[{i}]"))?;
        }
        validate::host_ports("spec.hostPorts", &self.host_ports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> EnvironmentSpec {
        EnvironmentSpec {
            runtime: Runtime {
                image: "python".into(),
                command: None,
            },
            ..EnvironmentSpec::default()
        }
    }

    #[test]
    fn defaults_validate() {
        env().validate().unwrap();
    }

    #[test]
    fn tolerations_are_checked() {
        let mut e = env();
        e.node_selector.insert("pool".into(), "functions".into());
        e.tolerations.push(Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("functions".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        });
        e.validate().unwrap();
        e.tolerations[0].operator = Some("Maybe".into());
        assert_eq!(
            e.validate().unwrap_err().field,
            "spec.tolerations[0].operator"
        );
        e.tolerations[0].operator = None;
        e.tolerations[0].effect = Some("Never".into());
        assert_eq!(
            e.validate().unwrap_err().field,
            "spec.tolerations[0].effect"
        );
    }

    #[test]
    fn pool_policy_is_opt_in_and_checked() {
        // Absent: poolsize pins the pool, as in Fission.
        let spec: EnvironmentSpec =
            serde_json::from_value(serde_json::json!({"runtime": {"image": "python"}})).unwrap();
        assert_eq!(spec.poolsize, 3);
        assert_eq!(spec.adaptive_pool(), None);
        let spec: EnvironmentSpec = serde_json::from_value(serde_json::json!({
            "runtime": {"image": "python"}, "poolPolicy": {"mode": "adaptive"}
        }))
        .unwrap();
        assert_eq!(spec.adaptive_pool(), Some((0, DEFAULT_POOL_MAX)));
        spec.validate().unwrap();
        let mut e = env();
        e.pool_policy = Some(PoolPolicy {
            mode: PoolMode::Fixed,
            min: Some(1),
            max: None,
        });
        assert_eq!(e.validate().unwrap_err().field, "spec.poolPolicy.min");
        e.pool_policy = Some(PoolPolicy {
            mode: PoolMode::Adaptive,
            min: Some(5),
            max: Some(2),
        });
        assert_eq!(e.validate().unwrap_err().field, "spec.poolPolicy.min");
        e.pool_policy = Some(PoolPolicy {
            mode: PoolMode::Adaptive,
            min: None,
            max: Some(500),
        });
        assert_eq!(e.validate().unwrap_err().field, "spec.poolPolicy.max");
    }

    #[test]
    fn bad_fields_are_named() {
        let mut e = env();
        e.poolsize = 1000;
        assert_eq!(e.validate().unwrap_err().field, "spec.poolsize");
        let mut e = env();
        e.runtime.image = String::new();
        assert_eq!(e.validate().unwrap_err().field, "spec.runtime.image");
        let mut e = env();
        e.resources.limits.memory = Some("lots".into());
        assert_eq!(
            e.validate().unwrap_err().field,
            "spec.resources.limits.memory"
        );
    }
}
