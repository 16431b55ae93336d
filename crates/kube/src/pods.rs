//! The objects the pod backend creates, as pure functions (no IO), so tests and the manifest
//! validation see exactly what a cluster would get.
//!
//! A function pod has two containers sharing emptyDir volumes:
//! - `runtime`: the Environment's image (any Fission v2 environment image works), port 8888,
//!   `/userfunc`, `/secrets`, `/configs` mounted read-only, a writable `/tmp`;
//! - `fetcher`: the platform's own image running `kappa fetcher` on port 8000, which places the
//!   code and calls the runtime's `/v2/specialize` (the `kappa-fetcher` crate). Its readiness
//!   (`/readyz`) is "the runtime answers", so the pod is Ready when both are up.
//!
//! Both run as non-root with a read-only root filesystem, no privilege escalation, every
//! capability dropped and the runtime's default seccomp profile. A pool pod is bare (no
//! ReplicaSet: see `docs/design/001-pool-pods.md`) with `restartPolicy: Never`, since a
//! restarted runtime would come back generic behind an endpoint that expects specialized code.
//!
//! A `newdeploy` pod ([`newdeploy_pod_template`], the template of a function's Deployment) has
//! the same two containers, but specializes itself: the fetcher runs with `--specialize-from`
//! on the request mounted (read-only, into the fetcher alone) from the function's Secret, its
//! readiness means "specialized and the runtime answers", and it re-specializes a runtime that
//! was restarted, so the pod can use `restartPolicy: Always` under a ReplicaSet.

use std::collections::BTreeMap;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kappa_core::{DeploymentSpec, FunctionId, InstanceSpec, Limits};
use kappa_types::{Resources, Toleration};
use serde_json::{Value, json};

use kappa_runtime::{FETCHER_PORT, FETCHER_TOKEN_ENV, RUNTIME_PORT};

/// Label on everything Kappa creates (`kappa`).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// `pool` (warm, generic), `specialized` or `newdeploy` (a pod of a function's Deployment).
pub const LABEL_ROLE: &str = "kappa.dev/role";
/// The instance id (also the pod's name).
pub const LABEL_INSTANCE: &str = "kappa.dev/instance";
/// Environment name and namespace, and the environment generation the pod was made for.
pub const LABEL_ENVIRONMENT: &str = "kappa.dev/environment";
pub const LABEL_ENVIRONMENT_NAMESPACE: &str = "kappa.dev/environment-namespace";
pub const LABEL_ENV_GENERATION: &str = "kappa.dev/env-generation";
/// Function name and namespace, and the function generation it was specialized with (set when
/// specialized).
pub const LABEL_FUNCTION: &str = "kappa.dev/function";
pub const LABEL_FUNCTION_NAMESPACE: &str = "kappa.dev/function-namespace";
pub const LABEL_GENERATION: &str = "kappa.dev/generation";
/// The revision (`DeploymentSpec::revision`) a `newdeploy` Deployment and its pods run.
pub const LABEL_REVISION: &str = "kappa.dev/revision";
/// `none` on a function pod made for an instance without egress (`egress: false` on its
/// Environment, or on the Function of a `newdeploy` Deployment). The chart's NetworkPolicy for
/// such pods allows them no egress but DNS and the API server (the fetcher's archive
/// download). A pod without the label has egress. Set at creation, never patched: the policy
/// must already hold when the function's code arrives.
pub const LABEL_EGRESS: &str = "kappa.dev/egress";
/// [`LABEL_EGRESS`]'s value on a pod without egress.
pub const EGRESS_NONE: &str = "none";
/// Annotation: the identity of the pool manager replica that created the pod.
pub const ANNOTATION_CREATED_BY: &str = "kappa.dev/created-by";
/// Annotation: the sha256 of the archive a specialized pod runs.
pub const ANNOTATION_ARCHIVE: &str = "kappa.dev/archive-sha256";
/// `kappa.dev/role` of a warm pod.
pub const ROLE_POOL: &str = "pool";
/// `kappa.dev/role` of a specialized pod.
pub const ROLE_SPECIALIZED: &str = "specialized";
/// `kappa.dev/role` of a function's Deployment and of its pods.
pub const ROLE_NEWDEPLOY: &str = "newdeploy";
/// Annotation on a `newdeploy` pod template: the sha256 of the specialization request in the
/// Secret, so a new request rolls the pods.
pub const ANNOTATION_SPECIALIZE: &str = "kappa.dev/specialize-sha256";
/// The key of the specialization request (the fetcher's JSON) in a `newdeploy` Secret.
pub const SPECIALIZE_KEY: &str = "request.json";
/// Where a `newdeploy` pod's fetcher finds the Secret (read-only, the fetcher alone).
pub const SPECIALIZE_DIR: &str = "/etc/kappa/specialize";

/// What every pod of this installation shares (from the chart's values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTemplate {
    /// The namespace function pods live in.
    pub namespace: String,
    /// The platform's image, whose `kappa fetcher` is the fetcher container.
    pub fetcher_image: String,
    /// The fetcher's command (`["kappa", "fetcher"]`).
    pub fetcher_command: Vec<String>,
    /// `imagePullPolicy` of both containers, when set.
    pub image_pull_policy: Option<String>,
    /// Service account of function pods (none: the namespace's default; its token is not
    /// mounted either way).
    pub service_account: Option<String>,
    /// Image pull secrets of function pods.
    pub image_pull_secrets: Vec<String>,
    /// UID (and GID) the containers run as.
    pub run_as_user: i64,
    /// The fetcher container's resources.
    pub fetcher_resources: Resources,
    /// Identity of this pool manager replica (recorded on the pods it creates).
    pub created_by: String,
}

impl Default for PodTemplate {
    fn default() -> Self {
        Self {
            namespace: "kappa-functions".into(),
            fetcher_image: "kappa:latest".into(),
            fetcher_command: vec!["kappa".into(), "fetcher".into()],
            image_pull_policy: None,
            service_account: None,
            image_pull_secrets: Vec::new(),
            run_as_user: 10001,
            fetcher_resources: Resources {
                requests: kappa_types::ResourceList {
                    cpu: Some("10m".into()),
                    memory: Some("16Mi".into()),
                    pids: None,
                },
                limits: kappa_types::ResourceList {
                    cpu: Some("500m".into()),
                    memory: Some("128Mi".into()),
                    pids: None,
                },
            },
            created_by: "kappa-executor".into(),
        }
    }
}

/// Scheduling and requests that come from the Environment (and the Function) rather than from
/// the pool manager's [`InstanceSpec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Resource requests (limits come from [`InstanceSpec::limits`]).
    pub requests: kappa_types::ResourceList,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// The labels of a warm pod for `spec`.
pub fn pool_labels(spec: &InstanceSpec) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "kappa".to_string()),
        (LABEL_ROLE.to_string(), ROLE_POOL.to_string()),
        (LABEL_INSTANCE.to_string(), spec.id.clone()),
        (LABEL_ENVIRONMENT.to_string(), spec.environment.name.clone()),
        (
            LABEL_ENVIRONMENT_NAMESPACE.to_string(),
            spec.environment.namespace.clone(),
        ),
        (
            LABEL_ENV_GENERATION.to_string(),
            spec.env_generation.to_string(),
        ),
    ]);
    if !spec.egress {
        labels.insert(LABEL_EGRESS.to_string(), EGRESS_NONE.to_string());
    }
    labels
}

/// Whether a pod with these labels was made with egress (see [`LABEL_EGRESS`]).
pub fn pod_has_egress(labels: &BTreeMap<String, String>) -> bool {
    labels.get(LABEL_EGRESS).map(String::as_str) != Some(EGRESS_NONE)
}

/// The labels a pod gets once specialized for `function` at `generation`.
pub fn specialized_labels(function: &FunctionId, generation: i64) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_ROLE.to_string(), ROLE_SPECIALIZED.to_string()),
        (LABEL_FUNCTION.to_string(), function.name.clone()),
        (
            LABEL_FUNCTION_NAMESPACE.to_string(),
            function.namespace.clone(),
        ),
        (LABEL_GENERATION.to_string(), generation.to_string()),
    ])
}

/// The labels that select a function's `newdeploy` pods (immutable for the Deployment's
/// lifetime, so they form its selector).
pub fn newdeploy_selector(function: &FunctionId) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), "kappa".to_string()),
        (LABEL_ROLE.to_string(), ROLE_NEWDEPLOY.to_string()),
        (LABEL_FUNCTION.to_string(), function.name.clone()),
        (
            LABEL_FUNCTION_NAMESPACE.to_string(),
            function.namespace.clone(),
        ),
    ])
}

/// The labels of a function's Deployment and of its pods: the selector plus the function
/// generation, the revision and the environment.
pub fn newdeploy_labels(spec: &DeploymentSpec) -> BTreeMap<String, String> {
    let mut labels = newdeploy_selector(&spec.function);
    labels.extend([
        (LABEL_GENERATION.to_string(), spec.generation.to_string()),
        (LABEL_REVISION.to_string(), spec.revision.clone()),
        (
            LABEL_ENVIRONMENT.to_string(),
            spec.instance.environment.name.clone(),
        ),
        (
            LABEL_ENVIRONMENT_NAMESPACE.to_string(),
            spec.instance.environment.namespace.clone(),
        ),
        (
            LABEL_ENV_GENERATION.to_string(),
            spec.instance.env_generation.to_string(),
        ),
    ]);
    if !spec.specialize.egress {
        labels.insert(LABEL_EGRESS.to_string(), EGRESS_NONE.to_string());
    }
    labels
}

/// A Kubernetes quantity map from Kappa's resource list (pids have no container equivalent).
pub(crate) fn quantities(cpu: Option<String>, memory: Option<String>) -> Value {
    let mut map = serde_json::Map::new();
    if let Some(cpu) = cpu {
        map.insert("cpu".into(), Value::String(cpu));
    }
    if let Some(memory) = memory {
        map.insert("memory".into(), Value::String(memory));
    }
    Value::Object(map)
}

pub(crate) fn limits_of(limits: &Limits) -> Value {
    quantities(
        limits.cpu_millis.map(|m| format!("{m}m")),
        limits.memory_bytes.map(|b| b.to_string()),
    )
}

pub(crate) fn container_security(run_as_user: i64) -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "runAsUser": run_as_user,
        "runAsGroup": run_as_user,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    })
}

/// How a pod gets its code.
enum Start<'a> {
    /// Warm and generic: the pool manager specializes it through the fetcher's `/specialize`,
    /// authenticated with the pod's `fetcher_token` (see [`kappa_runtime::pod_fetcher_token`]).
    Pool { fetcher_token: &'a str },
    /// Specializes itself on start from the request in the Secret `secret`.
    SelfSpecialize { secret: &'a str },
}

/// The pod spec shared by pool and `newdeploy` pods.
fn pod_spec(
    template: &PodTemplate,
    spec: &InstanceSpec,
    placement: &Placement,
    grace: Duration,
    start: &Start<'_>,
) -> Value {
    let mut env: Vec<Value> = vec![
        json!({"name": "HOST", "value": "0.0.0.0"}),
        json!({"name": "PORT", "value": RUNTIME_PORT.to_string()}),
        json!({"name": "RUNTIME_PORT", "value": RUNTIME_PORT.to_string()}),
        json!({"name": "KAPPA_CONCURRENCY", "value": spec.concurrency.to_string()}),
    ];
    for (k, v) in &spec.env {
        env.push(json!({"name": k, "value": v}));
    }
    let mut runtime = json!({
        "name": "runtime",
        "image": spec.image,
        "ports": [{"name": "http-env", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
        "env": env,
        "resources": {
            "requests": quantities(placement.requests.cpu.clone(), placement.requests.memory.clone()),
            "limits": limits_of(&spec.limits),
        },
        "securityContext": container_security(template.run_as_user),
        "volumeMounts": [
            {"name": "userfunc", "mountPath": "/userfunc", "readOnly": true},
            {"name": "secrets", "mountPath": "/secrets", "readOnly": true},
            {"name": "configs", "mountPath": "/configs", "readOnly": true},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    });
    if let Some(command) = spec.command.as_deref().filter(|c| !c.trim().is_empty()) {
        runtime["command"] = json!(["/bin/sh", "-c", command]);
    }
    let fetcher_resources = &template.fetcher_resources;
    let mut fetcher = json!({
        "name": "fetcher",
        "image": template.fetcher_image,
        "command": template.fetcher_command,
        "args": ["--listen", format!("0.0.0.0:{FETCHER_PORT}")],
        "ports": [{"name": "http-fetcher", "containerPort": FETCHER_PORT, "protocol": "TCP"}],
        "env": [{"name": "RUST_LOG", "value": "info"}],
        "resources": {
            "requests": quantities(fetcher_resources.requests.cpu.clone(), fetcher_resources.requests.memory.clone()),
            "limits": quantities(fetcher_resources.limits.cpu.clone(), fetcher_resources.limits.memory.clone()),
        },
        "securityContext": container_security(template.run_as_user),
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": FETCHER_PORT},
            "periodSeconds": 1,
            "failureThreshold": 3,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": FETCHER_PORT},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 2,
        },
        "volumeMounts": [
            {"name": "userfunc", "mountPath": "/userfunc"},
            {"name": "secrets", "mountPath": "/secrets"},
            {"name": "configs", "mountPath": "/configs"},
        ],
    });
    if let Some(policy) = &template.image_pull_policy {
        runtime["imagePullPolicy"] = json!(policy);
        fetcher["imagePullPolicy"] = json!(policy);
    }
    let mut volumes = vec![
        json!({"name": "userfunc", "emptyDir": {}}),
        json!({"name": "secrets", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
        json!({"name": "configs", "emptyDir": {"sizeLimit": "16Mi"}}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}),
    ];
    let restart_policy = match start {
        Start::Pool { fetcher_token } => {
            // In the fetcher's environment only: the runtime container (the function) never
            // sees it.
            if let Some(env) = fetcher["env"].as_array_mut() {
                env.push(json!({"name": FETCHER_TOKEN_ENV, "value": fetcher_token}));
            }
            "Never"
        }
        Start::SelfSpecialize { secret } => {
            // The request carries Secret values and the API token: the fetcher alone mounts it.
            fetcher["args"] = json!([
                "--listen",
                format!("0.0.0.0:{FETCHER_PORT}"),
                "--specialize-from",
                format!("{SPECIALIZE_DIR}/{SPECIALIZE_KEY}"),
            ]);
            if let Some(mounts) = fetcher["volumeMounts"].as_array_mut() {
                mounts.push(
                    json!({"name": "specialize", "mountPath": SPECIALIZE_DIR, "readOnly": true}),
                );
            }
            // A refused code is reported through the termination message (the watcher's
            // `Failed`); a crash without one falls back to the log's tail.
            fetcher["terminationMessagePath"] = json!("/dev/termination-log");
            fetcher["terminationMessagePolicy"] = json!("FallbackToLogsOnError");
            // Ready once it accepts connections; the fetcher's readiness adds "specialized".
            runtime["readinessProbe"] = json!({
                "tcpSocket": {"port": RUNTIME_PORT},
                "periodSeconds": 1,
                "failureThreshold": 3,
                "timeoutSeconds": 2,
            });
            volumes.push(json!({
                "name": "specialize",
                "secret": {
                    "secretName": secret,
                    "items": [{"key": SPECIALIZE_KEY, "path": SPECIALIZE_KEY}],
                    "defaultMode": 0o440,
                },
            }));
            "Always"
        }
    };
    let mut pod_spec = json!({
        "restartPolicy": restart_policy,
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": grace.as_secs(),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": template.run_as_user,
            "runAsGroup": template.run_as_user,
            "fsGroup": template.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [runtime, fetcher],
        "volumes": volumes,
    });
    if let Some(sa) = &template.service_account {
        pod_spec["serviceAccountName"] = json!(sa);
    }
    if !template.image_pull_secrets.is_empty() {
        pod_spec["imagePullSecrets"] = Value::Array(
            template
                .image_pull_secrets
                .iter()
                .map(|name| json!({"name": name}))
                .collect(),
        );
    }
    if !placement.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(placement.node_selector);
    }
    if !placement.tolerations.is_empty() {
        pod_spec["tolerations"] = json!(placement.tolerations);
    }
    pod_spec
}

/// The warm pod for `spec`: the runtime container plus the fetcher, labelled for adoption.
/// `fetcher_token` is the token its fetcher accepts on `/specialize`.
pub fn pool_pod(
    template: &PodTemplate,
    spec: &InstanceSpec,
    placement: &Placement,
    fetcher_token: &str,
) -> Pod {
    let pod_spec = pod_spec(
        template,
        spec,
        placement,
        spec.grace,
        &Start::Pool { fetcher_token },
    );
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.id,
            "namespace": template.namespace,
            "labels": pool_labels(spec),
            "annotations": { ANNOTATION_CREATED_BY: template.created_by },
        },
        "spec": pod_spec,
    });
    // Every value above is a valid Pod field; a failure here is a bug caught by the tests.
    serde_json::from_value(pod).unwrap_or_default()
}

/// The pod template of a function's Deployment: the pool pod's containers, with the fetcher
/// specializing on start from `secret` (whose request has the sha256 `request_sha256`, recorded
/// as an annotation so that a new request rolls the pods), `restartPolicy: Always` and the
/// grace period of `spec`.
pub fn newdeploy_pod_template(
    template: &PodTemplate,
    spec: &DeploymentSpec,
    placement: &Placement,
    secret: &str,
    request_sha256: &str,
) -> PodTemplateSpec {
    let pod_spec = pod_spec(
        template,
        &spec.instance,
        placement,
        spec.grace,
        &Start::SelfSpecialize { secret },
    );
    let object = json!({
        "metadata": {
            "labels": newdeploy_labels(spec),
            "annotations": {
                ANNOTATION_SPECIALIZE: request_sha256,
                ANNOTATION_ARCHIVE: spec.specialize.archive_sha256,
            },
        },
        "spec": pod_spec,
    });
    // Every value above is a valid pod template field; a failure here is a bug caught by the
    // tests.
    serde_json::from_value(object).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;

    pub(crate) fn spec() -> InstanceSpec {
        InstanceSpec {
            id: "python-0123456789".into(),
            environment: FunctionId::new("default", "python"),
            env_generation: 3,
            image: "ghcr.io/example/python-env:1".into(),
            command: None,
            limits: Limits {
                memory_bytes: Some(256 << 20),
                cpu_millis: Some(500),
                pids: Some(1024),
            },
            grace: Duration::from_secs(30),
            concurrency: 64,
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            egress: true,
            host_ports: Vec::new(),
            zygote: None,
        }
    }

    #[test]
    fn pods_without_egress_carry_the_label_the_network_policy_selects() {
        let mut spec = spec();
        assert!(pod_has_egress(&pool_labels(&spec)));
        assert!(!pool_labels(&spec).contains_key(LABEL_EGRESS));
        spec.egress = false;
        let pod = pool_pod(&PodTemplate::default(), &spec, &Placement::default(), "t");
        let json = serde_json::to_value(&pod).unwrap();
        assert_eq!(json["metadata"]["labels"][LABEL_EGRESS], EGRESS_NONE);
        assert!(!pod_has_egress(&pool_labels(&spec)));
    }

    #[test]
    fn pool_pods_are_locked_down_and_labelled() {
        let pod = pool_pod(
            &PodTemplate::default(),
            &spec(),
            &Placement::default(),
            "fetcher-token",
        );
        let json = serde_json::to_value(&pod).unwrap();
        assert_eq!(json["metadata"]["name"], "python-0123456789");
        assert_eq!(json["metadata"]["labels"][LABEL_ROLE], ROLE_POOL);
        assert_eq!(json["metadata"]["labels"][LABEL_ENV_GENERATION], "3");
        assert_eq!(json["spec"]["restartPolicy"], "Never");
        assert_eq!(json["spec"]["automountServiceAccountToken"], false);
        let containers = json["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 2);
        for c in containers {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false);
            assert_eq!(sc["readOnlyRootFilesystem"], true);
            assert_eq!(sc["runAsNonRoot"], true);
            assert_eq!(sc["capabilities"]["drop"][0], "ALL");
        }
        assert_eq!(containers[0]["resources"]["limits"]["memory"], "268435456");
        assert_eq!(containers[0]["resources"]["limits"]["cpu"], "500m");
        assert_eq!(containers[1]["command"][1], "fetcher");
        // The fetcher token is in the fetcher's environment, never in the runtime's.
        let has_token = |c: &serde_json::Value| {
            c["env"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == FETCHER_TOKEN_ENV && e["value"] == "fetcher-token")
        };
        assert!(has_token(&containers[1]));
        assert!(!has_token(&containers[0]));
    }
}
