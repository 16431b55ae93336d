//! The CustomResourceDefinitions: one wrapper type per Kappa kind, derived with
//! `kube::CustomResource`, whose spec *is* the `kappa-types` spec (a transparent newtype, so the
//! JSON on the wire and the OpenAPI schema are exactly those of the domain type).
//!
//! Secrets and ConfigMaps have no CRD: in a cluster they are the native `v1` objects.

// kube's `printcolumn(name = .., type_ = ..)` repeats the same keys once per column by design.
#![allow(clippy::duplicated_attributes)]

use std::borrow::Cow;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kappa_types::Kind;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Kappa resource.
pub const GROUP: &str = "kappa.dev";
/// The API version of every Kappa resource.
pub const VERSION: &str = "v1";

/// A status the platform keeps free-form (`serde_json::Value` in `kappa-types`): any object,
/// kept as is by the API server (`x-kubernetes-preserve-unknown-fields`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpaqueStatus(pub serde_json::Value);

impl JsonSchema for OpaqueStatus {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("OpaqueStatus")
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
        })
    }
}

/// `spec` of the `Environment` CRD: exactly [`kappa_types::EnvironmentSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "Environment",
    root = "EnvironmentCrd",
    namespaced,
    status = "OpaqueStatus",
    shortname = "env",
    category = "kappa",
    doc = "A runtime (and optionally a builder) functions run in, with its warm pool",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.runtime.image"),
    printcolumn(name = "Poolsize", type_ = "integer", json_path = ".spec.poolsize"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct EnvironmentCrdSpec(pub kappa_types::EnvironmentSpec);

/// `spec` of the `Package` CRD: exactly [`kappa_types::PackageSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "Package",
    root = "PackageCrd",
    namespaced,
    status = "kappa_types::PackageStatus",
    shortname = "pkg",
    category = "kappa",
    doc = "The code of one or more functions, as source and/or deployment archives",
    printcolumn(name = "Env", type_ = "string", json_path = ".spec.environment.name"),
    printcolumn(name = "Build", type_ = "string", json_path = ".status.buildstatus"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct PackageCrdSpec(pub kappa_types::PackageSpec);

/// `spec` of the `Function` CRD: exactly [`kappa_types::FunctionSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "Function",
    root = "FunctionCrd",
    namespaced,
    status = "kappa_types::FunctionStatus",
    shortname = "fn",
    category = "kappa",
    doc = "An entrypoint in a package, run in an environment, with its scaling settings",
    printcolumn(name = "Env", type_ = "string", json_path = ".spec.environment.name"),
    printcolumn(name = "Executor", type_ = "string", json_path = ".spec.executorType"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct FunctionCrdSpec(pub kappa_types::FunctionSpec);

/// `spec` of the `HttpTrigger` CRD: exactly [`kappa_types::HttpTriggerSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "HttpTrigger",
    root = "HttpTriggerCrd",
    namespaced,
    status = "OpaqueStatus",
    shortname = "route",
    shortname = "ht",
    category = "kappa",
    doc = "A route on the public router that invokes a function",
    printcolumn(
        name = "Function",
        type_ = "string",
        json_path = ".spec.functionref.name"
    ),
    printcolumn(name = "Url", type_ = "string", json_path = ".spec.relativeurl"),
    printcolumn(name = "Prefix", type_ = "string", json_path = ".spec.prefix"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct HttpTriggerCrdSpec(pub kappa_types::HttpTriggerSpec);

/// `spec` of the `MessageQueueTrigger` CRD: exactly [`kappa_types::MessageQueueTriggerSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "MessageQueueTrigger",
    root = "MessageQueueTriggerCrd",
    namespaced,
    status = "kappa_types::TriggerStatus",
    shortname = "mqt",
    category = "kappa",
    doc = "A broker topic whose messages invoke a function",
    printcolumn(
        name = "Function",
        type_ = "string",
        json_path = ".spec.functionref.name"
    ),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.messageQueueType"),
    printcolumn(name = "Topic", type_ = "string", json_path = ".spec.topic"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct MessageQueueTriggerCrdSpec(pub kappa_types::MessageQueueTriggerSpec);

/// `spec` of the `TimeTrigger` CRD: exactly [`kappa_types::TimeTriggerSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "TimeTrigger",
    root = "TimeTriggerCrd",
    namespaced,
    status = "kappa_types::TriggerStatus",
    shortname = "tt",
    category = "kappa",
    doc = "A cron schedule that invokes a function",
    printcolumn(
        name = "Function",
        type_ = "string",
        json_path = ".spec.functionref.name"
    ),
    printcolumn(name = "Cron", type_ = "string", json_path = ".spec.cron"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct TimeTriggerCrdSpec(pub kappa_types::TimeTriggerSpec);

/// `spec` of the `FunctionVersion` CRD: exactly [`kappa_types::FunctionVersionSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "FunctionVersion",
    root = "FunctionVersionCrd",
    namespaced,
    status = "OpaqueStatus",
    shortname = "fnver",
    category = "kappa",
    doc = "An immutable numbered snapshot of a function's spec and code (written by the platform)",
    printcolumn(name = "Function", type_ = "string", json_path = ".spec.function"),
    printcolumn(name = "Version", type_ = "integer", json_path = ".spec.version"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct FunctionVersionCrdSpec(pub kappa_types::FunctionVersionSpec);

/// `spec` of the `CanaryConfig` CRD: exactly [`kappa_types::CanaryConfigSpec`].
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "CanaryConfig",
    root = "CanaryConfigCrd",
    namespaced,
    status = "kappa_types::CanaryConfigStatus",
    shortname = "canary",
    category = "kappa",
    doc = "A gradual shift of a route's traffic to a new function, rolled back on failures",
    printcolumn(name = "Trigger", type_ = "string", json_path = ".spec.trigger"),
    printcolumn(name = "New", type_ = "string", json_path = ".spec.newfunction"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.weight"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct CanaryConfigCrdSpec(pub kappa_types::CanaryConfigSpec);

/// `spec` of the `Invocation` CRD: exactly [`kappa_types::InvocationSpec`]. Written by the
/// router or the API server when they accept an asynchronous invocation, and by the
/// asynchronous worker (status) as it runs it.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
#[kube(
    group = "kappa.dev",
    version = "v1",
    kind = "Invocation",
    root = "InvocationCrd",
    namespaced,
    status = "kappa_types::InvocationStatus",
    shortname = "inv",
    category = "kappa",
    doc = "An accepted asynchronous invocation of a function and its outcome",
    printcolumn(name = "Function", type_ = "string", json_path = ".spec.function"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Attempts", type_ = "integer", json_path = ".status.attempts"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct InvocationCrdSpec(pub kappa_types::InvocationSpec);

/// The kinds stored as CRDs (every [`Kind`] but Secret and ConfigMap).
pub const CRD_KINDS: [Kind; 9] = [
    Kind::Environment,
    Kind::Package,
    Kind::Function,
    Kind::HttpTrigger,
    Kind::MessageQueueTrigger,
    Kind::TimeTrigger,
    Kind::FunctionVersion,
    Kind::CanaryConfig,
    Kind::Invocation,
];

/// The CRD of a kind, or `None` for Secret and ConfigMap (native Kubernetes objects).
pub fn crd_of(kind: Kind) -> Option<CustomResourceDefinition> {
    Some(match kind {
        Kind::Environment => EnvironmentCrd::crd(),
        Kind::Package => PackageCrd::crd(),
        Kind::Function => FunctionCrd::crd(),
        Kind::HttpTrigger => HttpTriggerCrd::crd(),
        Kind::MessageQueueTrigger => MessageQueueTriggerCrd::crd(),
        Kind::TimeTrigger => TimeTriggerCrd::crd(),
        Kind::FunctionVersion => FunctionVersionCrd::crd(),
        Kind::CanaryConfig => CanaryConfigCrd::crd(),
        Kind::Invocation => InvocationCrd::crd(),
        Kind::Secret | Kind::ConfigMap => return None,
    })
}

/// Every CRD with the file name it is committed under in `charts/kappa/crds/`
/// (`<plural>.kappa.dev.yaml`).
pub fn all_crds() -> Vec<(String, CustomResourceDefinition)> {
    CRD_KINDS
        .into_iter()
        .filter_map(|kind| crd_of(kind).map(|crd| (format!("{}.{GROUP}.yaml", kind.plural()), crd)))
        .collect()
}

/// A CRD as the YAML document the generator writes (with a header saying it is generated).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_norway::Error> {
    let body = serde_norway::to_string(crd)?;
    Ok(format!(
        "# Generated by `cargo run -p kappa-kube --bin kappa-crdgen` from the kappa-types specs.\n# Do not edit: change the Rust types and regenerate.\n{body}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_the_kappa_shape() {
        let crds = all_crds();
        assert_eq!(crds.len(), 9);
        for (file, crd) in &crds {
            assert!(file.ends_with(".kappa.dev.yaml"), "{file}");
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            let version = &crd.spec.versions[0];
            assert_eq!(version.name, VERSION);
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some(),
                "{file}: status subresource"
            );
            assert!(version.schema.is_some(), "{file}: schema");
        }
        let function = crd_of(Kind::Function).unwrap();
        let columns: Vec<String> = function.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(columns, ["Env", "Executor", "Age"]);
        assert_eq!(
            function.spec.names.short_names.as_deref(),
            Some(&["fn".to_string()][..])
        );
    }

    #[test]
    fn wire_shape_is_the_domain_shape() {
        let spec = kappa_types::FunctionSpec::new("python", "hello", "hello.main");
        let crd = FunctionCrd::new("hello", FunctionCrdSpec(spec.clone()));
        let json = serde_json::to_value(&crd).unwrap();
        assert_eq!(json["apiVersion"], "kappa.dev/v1");
        assert_eq!(json["kind"], "Function");
        assert_eq!(json["spec"], serde_json::to_value(&spec).unwrap());
    }
}
