//! Builds in a cluster: [`PodBuildRunner`], the builder's [`BuildRunner`] on Kubernetes, runs
//! each build in a pod of its own (Fission's builder manager does the same with a builder
//! Deployment per environment; see `docs/design/008-cluster-builds.md` for why a pod per build).
//!
//! A builder pod ([`build_pod`]) has three containers sharing the emptyDir `/build` (the
//! build's root, laid out as locally: the source in `src/`, `$SRC_PKG`; the result in `deploy`,
//! `$DEPLOY_PKG`, or the source directory as the build left it):
//!
//! 1. init container `fetch` (the platform's image, `kappa build-step fetch`): downloads the
//!    source archive from the API server and places it in `/build/src`
//!    ([`kappa_builder::steps::fetch_source`]);
//! 2. init container `build` (the environment's builder image, else its runtime image): runs
//!    the build command with `/bin/sh -c` in `/build`; its log is the build log;
//! 3. container `upload` (the platform's image, `kappa build-step upload`): checks the result
//!    against the extraction limits, zips it and uploads it to the API server
//!    ([`kappa_builder::steps::store_result`]), and writes the archive's digest to its
//!    termination message.
//!
//! The steps authenticate with a **build token** ([`kappa_core::build_token`], derived from the
//! platform token like the function pods' fetcher tokens, and in the two steps' environment
//! alone, never the build command's): it reads that one source archive and uploads archives,
//! nothing else. The builder role never shares a filesystem with the pod or the API server.
//!
//! The runner creates the pod, waits until it ends (or cannot start: an image that cannot be
//! pulled), reads the `build` container's log (its end, within the builder's log bound) and the
//! containers' exit states, and deletes the pod. [`PodBuildRunner::collect_garbage`] deletes the
//! builder pods a previous builder left (it runs at start; the builder puts their packages back
//! to `pending` and builds them again).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kappa_builder::steps::StoredResult;
use kappa_builder::{BuildJob, BuildOutcome, BuildOutput, BuildRun, BuildRunner, RunResult};
use kappa_core::{BackendError, ExitReason};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams};
use serde_json::{Value, json};

use crate::pods::{LABEL_MANAGED_BY, PodTemplate, container_security, limits_of, quantities};

/// `kappa.dev/role` of a builder pod.
pub const ROLE_BUILD: &str = "build";
/// Label: the build's id (also in the pod's name).
pub const LABEL_BUILD: &str = "kappa.dev/build";
/// Labels: the package being built.
pub const LABEL_PACKAGE: &str = "kappa.dev/package";
pub const LABEL_PACKAGE_NAMESPACE: &str = "kappa.dev/package-namespace";
/// The build's root in a builder pod.
pub const BUILD_ROOT: &str = "/build";
/// The containers of a builder pod.
pub const CONTAINER_FETCH: &str = "fetch";
pub const CONTAINER_BUILD: &str = "build";
pub const CONTAINER_UPLOAD: &str = "upload";

/// The steps' environment variables.
pub const ENV_API_URL: &str = "KAPPA_API_URL";
pub const ENV_BUILD_TOKEN: &str = "KAPPA_BUILD_TOKEN";
pub const ENV_SOURCE: &str = "KAPPA_BUILD_SOURCE";
pub const ENV_SOURCE_FILENAME: &str = "KAPPA_BUILD_SOURCE_FILENAME";
pub const ENV_MAX_ARCHIVE_BYTES: &str = "KAPPA_MAX_ARCHIVE_BYTES";

/// Waiting reasons of a container that will not start without someone changing something.
const STUCK_REASONS: [&str; 5] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// How builder pods are made.
#[derive(Clone)]
pub struct PodBuildConfig {
    /// What every pod of this installation shares: the namespace (the functions namespace),
    /// the platform's image (which runs the steps), pull policy and secrets, service account,
    /// the UID every container runs as, and the steps' resources.
    pub template: PodTemplate,
    /// The steps' command before `fetch`/`upload` (`["kappa", "build-step"]`).
    pub step_command: Vec<String>,
    /// The API server's URL as pods reach it (`http://kappa-api.kappa:8080`).
    pub api_url: String,
    /// The platform token: the key of the build tokens (none: an API without authentication).
    pub api_token: Option<String>,
    /// Largest deployment archive the upload step makes.
    pub max_archive_bytes: u64,
    /// Added to the build timeout for the pod's `activeDeadlineSeconds`: scheduling, pulling
    /// the images, fetching and uploading.
    pub start_allowance: Duration,
}

impl std::fmt::Debug for PodBuildConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBuildConfig")
            .field("template", &self.template)
            .field("step_command", &self.step_command)
            .field("api_url", &self.api_url)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("max_archive_bytes", &self.max_archive_bytes)
            .field("start_allowance", &self.start_allowance)
            .finish()
    }
}

impl PodBuildConfig {
    /// Defaults around `template`, for the API server at `api_url`.
    pub fn new(
        template: PodTemplate,
        api_url: impl Into<String>,
        api_token: Option<String>,
    ) -> Self {
        Self {
            template,
            step_command: vec!["kappa".into(), "build-step".into()],
            api_url: api_url.into(),
            api_token: api_token.filter(|t| !t.is_empty()),
            max_archive_bytes: 512 << 20,
            start_allowance: Duration::from_secs(300),
        }
    }
}

/// The builder pod's name for build `id`.
pub fn pod_name(id: &str) -> String {
    let id: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(40)
        .collect();
    format!("kappa-build-{id}")
}

/// The image a build runs in: the environment's builder image, else its runtime image (which
/// has the runtime's package manager: the built-in build commands use it).
pub fn builder_image(job: &BuildJob<'_>) -> String {
    job.environment
        .spec
        .builder
        .as_ref()
        .map(|b| b.image.trim())
        .filter(|i| !i.is_empty())
        .map_or_else(|| job.environment.spec.runtime.image.clone(), str::to_owned)
}

/// The builder pod of `job`, whose steps authenticate with `build_token`.
pub fn build_pod(config: &PodBuildConfig, job: &BuildJob<'_>, build_token: Option<&str>) -> Pod {
    let template = &config.template;
    let name = pod_name(&job.spec.id);
    let mut step_env = vec![
        json!({"name": "RUST_LOG", "value": "info"}),
        json!({"name": ENV_API_URL, "value": config.api_url}),
        json!({"name": ENV_SOURCE, "value": job.source_sha256}),
        json!({"name": ENV_MAX_ARCHIVE_BYTES, "value": config.max_archive_bytes.to_string()}),
    ];
    if let Some(filename) = job.source_filename {
        step_env.push(json!({"name": ENV_SOURCE_FILENAME, "value": filename}));
    }
    if let Some(token) = build_token {
        step_env.push(json!({"name": ENV_BUILD_TOKEN, "value": token}));
    }
    let step_resources = json!({
        "requests": quantities(template.fetcher_resources.requests.cpu.clone(), template.fetcher_resources.requests.memory.clone()),
        "limits": quantities(template.fetcher_resources.limits.cpu.clone(), template.fetcher_resources.limits.memory.clone()),
    });
    let step = |container: &str, step: &str| {
        let mut command = config.step_command.clone();
        command.push(step.to_owned());
        let mut c = json!({
            "name": container,
            "image": template.fetcher_image,
            "command": command,
            "env": step_env,
            "resources": step_resources,
            "securityContext": container_security(template.run_as_user),
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [
                {"name": "build", "mountPath": BUILD_ROOT},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        });
        if let Some(policy) = &template.image_pull_policy {
            c["imagePullPolicy"] = json!(policy);
        }
        c
    };
    let mut build_env: Vec<Value> = vec![json!({"name": "HOME", "value": "/tmp"})];
    for (k, v) in &job.spec.env {
        build_env.push(json!({"name": k, "value": v}));
    }
    let mut build = json!({
        "name": CONTAINER_BUILD,
        "image": builder_image(job),
        "command": ["/bin/sh", "-c", job.spec.command],
        "workingDir": BUILD_ROOT,
        "env": build_env,
        "resources": {
            "requests": quantities(
                job.environment.spec.resources.requests.cpu.clone(),
                job.environment.spec.resources.requests.memory.clone(),
            ),
            "limits": limits_of(&job.spec.limits),
        },
        "securityContext": container_security(template.run_as_user),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [
            {"name": "build", "mountPath": BUILD_ROOT},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    });
    if let Some(policy) = &template.image_pull_policy {
        build["imagePullPolicy"] = json!(policy);
    }
    let labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_owned(), "kappa".to_owned()),
        (crate::pods::LABEL_ROLE.to_owned(), ROLE_BUILD.to_owned()),
        (LABEL_BUILD.to_owned(), label_value(&job.spec.id)),
        (LABEL_PACKAGE.to_owned(), label_value(job.package)),
        (
            LABEL_PACKAGE_NAMESPACE.to_owned(),
            label_value(job.namespace),
        ),
    ]);
    let deadline = job.spec.timeout + config.start_allowance;
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "activeDeadlineSeconds": deadline.as_secs().max(1),
        "terminationGracePeriodSeconds": 5,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": template.run_as_user,
            "runAsGroup": template.run_as_user,
            "fsGroup": template.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [step(CONTAINER_FETCH, "fetch"), build],
        "containers": [step(CONTAINER_UPLOAD, "upload")],
        "volumes": [
            {"name": "build", "emptyDir": {}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        ],
    });
    if let Some(sa) = &template.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    if !template.image_pull_secrets.is_empty() {
        spec["imagePullSecrets"] = Value::Array(
            template
                .image_pull_secrets
                .iter()
                .map(|name| json!({"name": name}))
                .collect(),
        );
    }
    let env = &job.environment.spec;
    if !env.node_selector.is_empty() {
        spec["nodeSelector"] = json!(env.node_selector);
    }
    if !env.tolerations.is_empty() {
        spec["tolerations"] = json!(env.tolerations);
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": template.namespace,
            "labels": labels,
            "annotations": {
                "kappa.dev/package": format!("{}/{}", job.namespace, job.package),
                "kappa.dev/source-sha256": job.source_sha256,
            },
        },
        "spec": spec,
    });
    serde_json::from_value(pod).unwrap_or_else(|e| unreachable!("the builder pod is a Pod: {e}"))
}

/// `value` as a label value: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both
/// ends (names of Kappa objects already are).
fn label_value(value: &str) -> String {
    let kept: String = value
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63)
        .collect();
    kept.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// The builder's [`BuildRunner`] on Kubernetes: one pod per build (see the module docs).
#[derive(Clone)]
pub struct PodBuildRunner {
    pods: Api<Pod>,
    config: PodBuildConfig,
}

impl std::fmt::Debug for PodBuildRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodBuildRunner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PodBuildRunner {
    /// A runner creating builder pods with `client` in `config.template.namespace`.
    pub fn new(client: kube::Client, config: PodBuildConfig) -> Self {
        Self {
            pods: Api::namespaced(client, &config.template.namespace),
            config,
        }
    }

    /// Deletes every builder pod in the namespace (what a previous builder left: its builds
    /// are built again). Returns how many were deleted. Run it before the builder starts.
    pub async fn collect_garbage(&self) -> Result<usize, kube::Error> {
        let selector = format!(
            "{LABEL_MANAGED_BY}=kappa,{}={ROLE_BUILD}",
            crate::pods::LABEL_ROLE
        );
        let list = self
            .pods
            .list(&ListParams::default().labels(&selector))
            .await?;
        let mut deleted = 0;
        for pod in list.items {
            let Some(name) = pod.metadata.name.as_deref() else {
                continue;
            };
            match self.pods.delete(name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(pod = name, "deleted a builder pod a previous builder left");
                    deleted += 1;
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    async fn delete(&self, name: &str) {
        match self.pods.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(pod = name, error = %e, "could not delete a builder pod; it is collected at the next start")
            }
        }
    }

    /// The end of the build container's log, within `max` bytes.
    async fn build_log(&self, name: &str, max: usize) -> (String, bool) {
        let params = LogParams {
            container: Some(CONTAINER_BUILD.to_owned()),
            ..LogParams::default()
        };
        match self.pods.logs(name, &params).await {
            Ok(log) => tail(log, max),
            Err(e) => (format!("[the build's log could not be read: {e}]\n"), false),
        }
    }

    async fn wait(&self, name: &str, deadline: Duration) -> Result<Option<Pod>, BackendError> {
        let ended = |pod: Option<&Pod>| pod.is_none_or(|p| finished(p) || stuck(p).is_some());
        match tokio::time::timeout(
            deadline,
            kube::runtime::wait::await_condition(self.pods.clone(), name, ended),
        )
        .await
        {
            Ok(Ok(pod)) => Ok(pod),
            Ok(Err(e)) => Err(BackendError::Io(format!(
                "watching builder pod {name} failed: {e}"
            ))),
            Err(_) => Err(BackendError::Timeout(format!(
                "builder pod {name} did not finish within {} s",
                deadline.as_secs()
            ))),
        }
    }

    async fn run_in_pod(&self, job: &BuildJob<'_>, name: &str) -> Result<BuildRun, BackendError> {
        // Kubernetes ends the pod at its deadline; the wait allows for the status to arrive.
        let deadline = job.spec.timeout + self.config.start_allowance + Duration::from_secs(60);
        let pod = self
            .wait(name, deadline)
            .await?
            .ok_or_else(|| BackendError::Start(format!("builder pod {name} was deleted")))?;
        if let Some(message) = stuck(&pod) {
            return Err(BackendError::Start(format!(
                "builder pod {name} cannot start: {message}"
            )));
        }
        let status = pod.status.clone().unwrap_or_default();
        let inits = status.init_container_statuses.clone().unwrap_or_default();
        let containers = status.container_statuses.clone().unwrap_or_default();
        let fetch = terminated(&inits, CONTAINER_FETCH);
        let build = terminated(&inits, CONTAINER_BUILD);
        let upload = terminated(&containers, CONTAINER_UPLOAD);
        if let Some(fetch) = &fetch
            && fetch.exit_code != 0
        {
            return Err(BackendError::Code(format!(
                "fetching the source failed: {}",
                fetch.message.as_deref().unwrap_or("no message").trim()
            )));
        }
        let timed_out = status.reason.as_deref() == Some("DeadlineExceeded");
        let Some(build) = build else {
            if timed_out {
                let (log, log_truncated) = self.build_log(name, job.spec.max_log_bytes).await;
                return Ok(BuildRun {
                    output: BuildOutput {
                        outcome: BuildOutcome::TimedOut(job.spec.timeout),
                        log,
                        log_truncated,
                    },
                    result: RunResult::Refused("the build did not finish".into()),
                });
            }
            return Err(BackendError::Start(format!(
                "builder pod {name} ended without running the build ({})",
                status
                    .message
                    .as_deref()
                    .or(status.reason.as_deref())
                    .unwrap_or("no reason given")
            )));
        };
        let (log, log_truncated) = self.build_log(name, job.spec.max_log_bytes).await;
        let outcome = if build.exit_code == 0 {
            BuildOutcome::Succeeded
        } else if timed_out || build.reason.as_deref() == Some("DeadlineExceeded") {
            BuildOutcome::TimedOut(job.spec.timeout)
        } else {
            BuildOutcome::Failed(ExitReason {
                code: Some(build.exit_code),
                signal: build.signal,
                oom_killed: build.reason.as_deref() == Some("OOMKilled"),
            })
        };
        let result = match (&outcome, upload) {
            (BuildOutcome::Succeeded, Some(upload)) if upload.exit_code == 0 => {
                match serde_json::from_str::<StepReport>(upload.message.as_deref().unwrap_or("")) {
                    Ok(report) => RunResult::Stored(StoredResult {
                        deployment: report.deployment,
                        note: report.note,
                    }),
                    Err(e) => {
                        RunResult::Refused(format!("the upload step's report is unreadable: {e}"))
                    }
                }
            }
            (BuildOutcome::Succeeded, Some(upload)) => RunResult::Refused(
                upload
                    .message
                    .as_deref()
                    .unwrap_or("the upload step failed")
                    .trim()
                    .to_owned(),
            ),
            (BuildOutcome::Succeeded, None) if timed_out => {
                RunResult::Refused("the upload did not finish before the pod's deadline".into())
            }
            (BuildOutcome::Succeeded, None) => {
                RunResult::Refused("the builder pod ended without uploading the result".into())
            }
            _ => RunResult::Refused("the build failed".into()),
        };
        Ok(BuildRun {
            output: BuildOutput {
                outcome,
                log,
                log_truncated,
            },
            result,
        })
    }
}

#[async_trait]
impl BuildRunner for PodBuildRunner {
    async fn run(&self, job: &BuildJob<'_>) -> Result<BuildRun, BackendError> {
        let token = self
            .config
            .api_token
            .as_deref()
            .map(|key| kappa_core::build_token(key, &job.spec.id, job.source_sha256));
        let pod = build_pod(&self.config, job, token.as_deref());
        let name = pod_name(&job.spec.id);
        self.pods
            .create(&PostParams::default(), &pod)
            .await
            .map_err(|e| BackendError::Start(format!("creating builder pod {name} failed: {e}")))?;
        tracing::info!(pod = %name, namespace = job.namespace, package = job.package, "builder pod created");
        let result = self.run_in_pod(job, &name).await;
        self.delete(&name).await;
        result
    }

    fn describe(&self) -> String {
        format!(
            "builder pod in namespace {}",
            self.config.template.namespace
        )
    }

    fn on_this_host(&self) -> bool {
        false
    }
}

/// The terminated state of container `name`.
fn terminated(
    statuses: &[ContainerStatus],
    name: &str,
) -> Option<k8s_openapi::api::core::v1::ContainerStateTerminated> {
    statuses
        .iter()
        .find(|s| s.name == name)?
        .state
        .as_ref()?
        .terminated
        .clone()
}

/// Whether the pod ended.
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Why the pod cannot start (a container waiting for something that will not come).
fn stuck(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|s| {
            let waiting = s.state.as_ref()?.waiting.as_ref()?;
            let reason = waiting.reason.as_deref()?;
            STUCK_REASONS.contains(&reason).then(|| {
                format!(
                    "container {} ({}): {reason}: {}",
                    s.name,
                    s.image,
                    waiting.message.as_deref().unwrap_or("")
                )
            })
        })
}

/// The end of `log` within `max` bytes, from a line start; whether something was dropped.
fn tail(log: String, max: usize) -> (String, bool) {
    if log.len() <= max {
        return (log, false);
    }
    let mut start = log.len() - max;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    let rest = &log[start..];
    let rest = rest.find('\n').map_or(rest, |i| &rest[i + 1..]);
    (rest.to_owned(), true)
}

/// What the upload step writes to its termination message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepReport {
    /// sha256 of the deployment archive it uploaded.
    pub deployment: String,
    /// A note for the build log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A step of a builder pod (`kappa build-step fetch|upload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStep {
    /// Place the source in `<root>/src`.
    Fetch,
    /// Store the result; report its digest.
    Upload,
}

/// What a step needs, from its environment ([`StepConfig::from_vars`]).
#[derive(Clone)]
pub struct StepConfig {
    pub api_url: String,
    pub token: Option<String>,
    pub source_sha256: String,
    pub source_filename: Option<String>,
    pub max_archive_bytes: u64,
    /// The build's root (`/build`).
    pub root: PathBuf,
    /// Where downloads are cached (`/tmp/kappa-archives`).
    pub scratch: PathBuf,
}

impl std::fmt::Debug for StepConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepConfig")
            .field("api_url", &self.api_url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("source_sha256", &self.source_sha256)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl StepConfig {
    /// The configuration from environment variables (`var` looks one up: `std::env::var` in a
    /// pod, the pod's `env` in a test), with the pod's paths.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let required = |name: &str| {
            var(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{name} is not set: this runs in a builder pod"))
        };
        let max_archive_bytes = match var(ENV_MAX_ARCHIVE_BYTES) {
            Some(v) => v.parse().map_err(|_| {
                format!("{ENV_MAX_ARCHIVE_BYTES} must be a number of bytes, not {v:?}")
            })?,
            None => 512 << 20,
        };
        Ok(Self {
            api_url: required(ENV_API_URL)?,
            token: var(ENV_BUILD_TOKEN).filter(|v| !v.is_empty()),
            source_sha256: required(ENV_SOURCE)?,
            source_filename: var(ENV_SOURCE_FILENAME).filter(|v| !v.is_empty()),
            max_archive_bytes,
            root: PathBuf::from(BUILD_ROOT),
            scratch: PathBuf::from("/tmp/kappa-archives"),
        })
    }
}

/// Runs a step of a builder pod; returns what goes to the termination message (the upload's
/// [`StepReport`] as JSON), or why it failed.
pub async fn run_step(step: BuildStep, config: &StepConfig) -> Result<String, String> {
    let limits = kappa_archive::ExtractLimits::default();
    let archives = kappa_builder::ApiArchives::new(
        &config.api_url,
        config.token.clone(),
        &config.scratch,
        config.max_archive_bytes,
        limits,
        Duration::from_secs(300),
    )
    .map_err(|e| e.to_string())?;
    match step {
        BuildStep::Fetch => {
            kappa_builder::steps::fetch_source(
                &archives,
                &config.source_sha256,
                config.source_filename.as_deref(),
                &config.root,
            )
            .await?;
            Ok(format!("source {} placed", config.source_sha256))
        }
        BuildStep::Upload => {
            let stored =
                kappa_builder::steps::store_result(&archives, &config.root, limits).await?;
            serde_json::to_string(&StepReport {
                deployment: stored.deployment,
                note: stored.note,
            })
            .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_keep_their_end() {
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let (kept, truncated) = tail(log, 40);
        assert!(truncated);
        assert!(
            kept.ends_with("line 99\n") && kept.starts_with("line "),
            "{kept}"
        );
        assert_eq!(tail("short\n".into(), 40), ("short\n".to_owned(), false));
    }

    #[test]
    fn names_and_labels_are_valid() {
        assert_eq!(pod_name("0f3A-b_c"), "kappa-build-0f3abc");
        assert_eq!(label_value("-a.b_"), "a.b");
        assert_eq!(label_value(&"x".repeat(80)).len(), 63);
    }
}
