//! The kinds of resource, with their plural (URL) names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A kind of resource the platform stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Environment,
    Package,
    Function,
    HttpTrigger,
    MessageQueueTrigger,
    TimeTrigger,
    Secret,
    ConfigMap,
    FunctionVersion,
    CanaryConfig,
    /// An accepted asynchronous invocation and its outcome: runtime state, not desired state,
    /// so it is in none of the lists below (no CRUD routes, no specs); see
    /// [`Kind::STORED`].
    Invocation,
}

impl Kind {
    /// Every kind, in the order the CLI lists them.
    pub const ALL: [Kind; 10] = [
        Kind::Environment,
        Kind::Package,
        Kind::Function,
        Kind::HttpTrigger,
        Kind::MessageQueueTrigger,
        Kind::TimeTrigger,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::FunctionVersion,
        Kind::CanaryConfig,
    ];

    /// Every kind the store holds: [`Kind::ALL`] plus the runtime records (invocations).
    pub const STORED: [Kind; 11] = [
        Kind::Environment,
        Kind::Package,
        Kind::Function,
        Kind::HttpTrigger,
        Kind::MessageQueueTrigger,
        Kind::TimeTrigger,
        Kind::Secret,
        Kind::ConfigMap,
        Kind::FunctionVersion,
        Kind::CanaryConfig,
        Kind::Invocation,
    ];

    /// Every kind, each after the kinds its objects may reference (a Function after its
    /// Environment, Package, Secrets and ConfigMaps; triggers after their Function).
    pub const ALL_BY_DEPENDENCY: [Kind; 10] = [
        Kind::Secret,
        Kind::ConfigMap,
        Kind::Environment,
        Kind::Package,
        Kind::Function,
        Kind::FunctionVersion,
        Kind::HttpTrigger,
        Kind::MessageQueueTrigger,
        Kind::TimeTrigger,
        Kind::CanaryConfig,
    ];

    /// The `kind` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Environment => "Environment",
            Kind::Package => "Package",
            Kind::Function => "Function",
            Kind::HttpTrigger => "HttpTrigger",
            Kind::MessageQueueTrigger => "MessageQueueTrigger",
            Kind::TimeTrigger => "TimeTrigger",
            Kind::Secret => "Secret",
            Kind::ConfigMap => "ConfigMap",
            Kind::FunctionVersion => "FunctionVersion",
            Kind::CanaryConfig => "CanaryConfig",
            Kind::Invocation => "Invocation",
        }
    }

    /// The plural, lower-case name used in API paths (`/v1/functions`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Environment => "environments",
            Kind::Package => "packages",
            Kind::Function => "functions",
            Kind::HttpTrigger => "httptriggers",
            Kind::MessageQueueTrigger => "messagequeuetriggers",
            Kind::TimeTrigger => "timetriggers",
            Kind::Secret => "secrets",
            Kind::ConfigMap => "configmaps",
            Kind::FunctionVersion => "functionversions",
            Kind::CanaryConfig => "canaryconfigs",
            Kind::Invocation => "invocations",
        }
    }

    /// Finds a kind by its plural name.
    pub fn from_plural(plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Kind::STORED
            .into_iter()
            .find(|k| k.as_str() == s || k.plural() == s)
            .ok_or_else(|| format!("unknown kind {s:?}"))
    }
}
