//! `kappa spec init|validate|apply|destroy|list`: declarative deployment from a directory of
//! YAML specs, in Fission's format unchanged or in Kappa's own, mixed freely.
//!
//! - [`load`] reads the directory (`.specignore`, multi-document files with line numbers) and
//!   collects every problem at once;
//! - [`fission`] converts Fission's documents to Kappa's resources, field by field;
//! - [`archive`] zips what an `ArchiveUploadSpec` selects;
//! - this module plans an apply against what the API holds (create, update, leave alone,
//!   delete with `--delete`), uploads only archives the platform does not hold yet, and sends
//!   the whole change as one `POST /v1/batch` (every object at its old or its new version).
//!
//! Every applied object carries the label [`DEPLOYMENT_LABEL`] with the DeploymentConfig's uid
//! (Fission's `fission-uid` annotation) and the annotation [`DEPLOYMENT_NAME_ANNOTATION`].

pub mod archive;
pub mod fission;
pub mod load;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use kappa_types::{
    Archive, ConfigMapSpec, EnvironmentSpec, FunctionSpec, HttpTriggerSpec, Kind,
    MessageQueueTriggerSpec, PackageSpec, Resource, SecretSpec, Spec, TimeTriggerSpec,
};
use serde_json::{Value, json};

use crate::cmd::{Ctx, noun, usage};
use crate::output::{self, OutputFormat, Table};
use load::{DeploymentConfig, SpecSet};

/// The label every object applied from a spec directory carries: the DeploymentConfig's uid.
pub const DEPLOYMENT_LABEL: &str = "kappa.dev/deployment-uid";
/// The annotation naming the DeploymentConfig (`kappa spec list` shows it).
pub const DEPLOYMENT_NAME_ANNOTATION: &str = "kappa.dev/deployment-name";
/// How often `--watch` looks at the files.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often `--wait` looks at the packages.
const WAIT_INTERVAL: Duration = Duration::from_millis(500);

/// `kappa spec ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SpecCommand {
    /// Create a spec directory with a DeploymentConfig (a new deployment id) and a README.
    Init(InitArgs),
    /// Check the specs without talking to the platform; every problem is reported, with file:line.
    Validate(DirArgs),
    /// Create, update (and with --delete, remove) what the specs describe, as one change.
    Apply(ApplyArgs),
    /// Delete every object of this spec directory's deployment id.
    Destroy(DirArgs),
    /// List the deployments on the platform (deployment ids and their objects).
    List(ListArgs),
}

/// Where the specs are.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// The spec directory.
    #[arg(long, default_value = "specs", value_name = "DIR")]
    pub specdir: PathBuf,
    /// A file of globs naming spec files to skip [default: <specdir>/.specignore].
    #[arg(long, value_name = "FILE")]
    pub specignore: Option<PathBuf>,
}

/// `kappa spec init`.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// The deployment's name [default: the current directory's name].
    #[arg(long)]
    pub name: Option<String>,
    /// The deployment id [default: a new random UUID].
    #[arg(long, alias = "id")]
    pub deployid: Option<String>,
    /// The spec directory to create.
    #[arg(long, default_value = "specs", value_name = "DIR")]
    pub specdir: PathBuf,
}

/// `kappa spec apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Also delete objects of this deployment id that are no longer in the specs.
    #[arg(long)]
    pub delete: bool,
    /// Wait until the applied packages are built (failing when a build fails).
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub wait_timeout: u64,
    /// Keep running and apply again whenever a spec or an archived file changes.
    #[arg(long, conflicts_with = "dry_run")]
    pub watch: bool,
    /// Print what would change, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `kappa spec list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this deployment id.
    #[arg(long, alias = "id")]
    pub deployid: Option<String>,
    /// Every namespace, not only --namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// Runs a spec command; `ctx` connects to the platform (not needed by init and validate).
pub async fn run(
    ctx: impl FnOnce() -> anyhow::Result<Ctx>,
    command: SpecCommand,
) -> anyhow::Result<()> {
    match command {
        SpecCommand::Init(args) => init(&args),
        SpecCommand::Validate(args) => validate(&args),
        SpecCommand::Apply(args) => {
            let ctx = ctx()?;
            if args.watch {
                watch(&ctx, &args).await
            } else {
                apply(&ctx, &args).await.map(|_| ())
            }
        }
        SpecCommand::Destroy(args) => destroy(&ctx()?, &args).await,
        SpecCommand::List(args) => list(&ctx()?, &args).await,
    }
}

const README: &str = "\
Kappa specs
===========

The YAML files in this directory describe functions, environments, packages and triggers.
`kappa spec apply` creates and updates them on the platform as one change (objects are
labelled kappa.dev/deployment-uid with the uid in kappa-deployment-config.yaml);
`kappa spec apply --delete` also removes objects of this deployment that are no longer here;
`kappa spec destroy` removes them all; `kappa spec validate` checks the files.

Files may use Kappa's format (apiVersion: kappa.dev/v1) or Fission's (fission.io/v1),
mixed freely. Write them by hand or with `kappa <env|fn|pkg|route|mqt|tt> create ... --spec`.
Files matching the globs in .specignore are skipped.

Do not change the uid in kappa-deployment-config.yaml: it is how Kappa knows which objects
on the platform belong to this directory.
";

fn init(args: &InitArgs) -> anyhow::Result<()> {
    let dir = &args.specdir;
    if dir.exists()
        && let Ok(set) = load::read_dir(dir, None)
        && let Some(d) = set.deployment
    {
        bail!(
            "{} already has a DeploymentConfig ({}, uid {}): nothing to do",
            dir.display(),
            d.at,
            d.uid
        );
    }
    let uid = match &args.deployid {
        Some(id) => uuid::Uuid::parse_str(id)
            .map_err(|e| usage(format!("--deployid {id:?} is not a UUID: {e}")))?
            .to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => std::env::current_dir()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "kappa".into()),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = format!(
        "# Written by `kappa spec init`. Do not change the uid: it identifies what `kappa spec apply`\n# created from this directory.\napiVersion: {}\nkind: DeploymentConfig\nname: {}\nuid: {uid}\n",
        kappa_types::API_VERSION,
        serde_json::to_string(&name).unwrap_or_default()
    );
    let path = dir.join(load::DEPLOYMENT_FILE);
    std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    let readme = dir.join("README");
    if !readme.exists() {
        std::fs::write(&readme, README).with_context(|| format!("writing {}", readme.display()))?;
    }
    output::print_stdout(&format!(
        "spec directory {} created (deployment {name:?}, uid {uid})\n",
        dir.display()
    ))
}

/// Reads the specs and prints every problem; fails when one is an error.
fn load_checked(dir: &DirArgs) -> anyhow::Result<SpecSet> {
    let set = load::read_dir(&dir.specdir, dir.specignore.as_deref())?;
    for p in &set.problems {
        eprintln!("{p}");
    }
    let errors = set.problems.iter().filter(|p| !p.warning).count();
    if errors > 0 {
        bail!(
            "{} has {errors} error{}: nothing was applied",
            dir.specdir.display(),
            if errors == 1 { "" } else { "s" }
        );
    }
    Ok(set)
}

fn deployment(set: &SpecSet) -> anyhow::Result<&DeploymentConfig> {
    set.deployment.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no DeploymentConfig: run `kappa spec init --specdir {}` first",
            set.dir.display(),
            set.dir.display()
        )
    })
}

fn validate(args: &DirArgs) -> anyhow::Result<()> {
    let mut set = load::read_dir(&args.specdir, args.specignore.as_deref())?;
    if set.deployment.is_none() {
        set.problems.push(load::Problem {
            at: load::Location {
                file: set.dir.clone(),
                doc: 0,
                line: 0,
            },
            message: format!(
                "no DeploymentConfig: run `kappa spec init --specdir {}`",
                set.dir.display()
            ),
            warning: false,
        });
    }
    // Zip every archive, so a glob that matches nothing is reported with the rest.
    for upload in set.uploads.values() {
        if let Err(e) = archive::build(upload, &set.dir) {
            set.problems.push(load::Problem {
                at: upload.at.clone(),
                message: format!("{e:#}"),
                warning: false,
            });
        }
    }
    for p in &set.problems {
        eprintln!("{p}");
    }
    let errors = set.problems.iter().filter(|p| !p.warning).count();
    if errors > 0 {
        bail!(
            "{} has {errors} error{}",
            set.dir.display(),
            if errors == 1 { "" } else { "s" }
        );
    }
    let warnings = set.problems.len();
    output::print_stdout(&format!(
        "{}: {} object{} and {} archive{} are valid{}\n",
        set.dir.display(),
        set.objects.len(),
        if set.objects.len() == 1 { "" } else { "s" },
        set.uploads.len(),
        if set.uploads.len() == 1 { "" } else { "s" },
        if warnings > 0 {
            format!(
                " ({warnings} warning{})",
                if warnings == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        }
    ))
}

/// What apply does with one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Create,
    Update,
    Delete,
    Unchanged,
}

impl Action {
    fn past(self) -> &'static str {
        match self {
            Action::Create => "created",
            Action::Update => "updated",
            Action::Delete => "deleted",
            Action::Unchanged => "unchanged",
        }
    }

    fn future(self) -> &'static str {
        match self {
            Action::Create => "would be created",
            Action::Update => "would be updated",
            Action::Delete => "would be deleted",
            Action::Unchanged => "unchanged",
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    action: Action,
    kind: Kind,
    namespace: String,
    name: String,
    /// The object to write (create and update).
    object: Option<Value>,
    /// The resource version read (update and delete precondition).
    resource_version: Option<String>,
    /// Why, when not obvious ("its package changed").
    note: Option<&'static str>,
}

type Key = (Kind, String, String);

fn key_of(value: &Value, kind: Kind) -> Key {
    (
        kind,
        value["metadata"]["namespace"]
            .as_str()
            .unwrap_or(kappa_types::DEFAULT_NAMESPACE)
            .to_string(),
        value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn label_of(value: &Value) -> Option<&str> {
    value["metadata"]["labels"][DEPLOYMENT_LABEL].as_str()
}

/// What of an object apply compares: spec, labels and annotations, in canonical form (the
/// typed round trip fills defaults); a Function's pinned package version is left out (apply
/// pins it itself).
fn comparable(kind: Kind, value: &Value) -> Value {
    fn norm<S: Spec>(v: &Value) -> Value {
        Resource::<S>::from_json(v.clone())
            .map(|r| r.to_json())
            .unwrap_or_else(|_| v.clone())
    }
    let mut v = match kind {
        Kind::Environment => norm::<EnvironmentSpec>(value),
        Kind::Package => norm::<PackageSpec>(value),
        Kind::Function => norm::<FunctionSpec>(value),
        Kind::HttpTrigger => norm::<HttpTriggerSpec>(value),
        Kind::MessageQueueTrigger => norm::<MessageQueueTriggerSpec>(value),
        Kind::TimeTrigger => norm::<TimeTriggerSpec>(value),
        Kind::Secret => norm::<SecretSpec>(value),
        Kind::ConfigMap => norm::<ConfigMapSpec>(value),
        Kind::CanaryConfig => norm::<kappa_types::CanaryConfigSpec>(value),
        Kind::FunctionVersion => norm::<kappa_types::FunctionVersionSpec>(value),
        Kind::Invocation => norm::<kappa_types::InvocationSpec>(value),
    };
    if kind == Kind::Function
        && let Some(p) = v["spec"]["package"]["packageref"].as_object_mut()
    {
        p.remove("resourceversion");
    }
    json!({
        "spec": v["spec"],
        "labels": v["metadata"]["labels"],
        "annotations": v["metadata"]["annotations"],
    })
}

/// Every object of every kind the platform holds (all namespaces), by key.
async fn current_state(ctx: &Ctx) -> anyhow::Result<BTreeMap<Key, Value>> {
    let mut out = BTreeMap::new();
    for kind in Kind::ALL_BY_DEPENDENCY {
        for item in ctx
            .client
            .list_all_raw(kind)
            .await
            .with_context(|| format!("listing {}", kind.plural()))?
        {
            out.insert(key_of(&item, kind), item);
        }
    }
    Ok(out)
}

/// What apply reports.
struct Outcome {
    steps: Vec<Step>,
    uploads: Vec<(String, String, bool)>,
}

async fn apply(ctx: &Ctx, args: &ApplyArgs) -> anyhow::Result<Outcome> {
    let set = load_checked(&args.dir)?;
    let deployment = deployment(&set)?.clone();

    // Zip every archive a package names.
    let mut built = HashMap::new();
    for o in &set.objects {
        for (_, name) in &o.uploads {
            if !built.contains_key(name) {
                let upload = &set.uploads[name];
                built.insert(name.clone(), archive::build(upload, &set.dir)?);
            }
        }
    }

    // Every archive apply may upload, by sha256: the zipped ArchiveUploadSpecs, and literal
    // archives (uploaded here, so the stored Package names the same digest as the spec).
    let mut blobs: HashMap<String, (String, Vec<u8>)> = built
        .iter()
        .map(|(n, b)| {
            (
                b.sha256.clone(),
                (format!("archive '{n}'"), b.bytes.clone()),
            )
        })
        .collect();

    // The desired objects, labelled and with their archives' digests.
    let mut desired: Vec<(Key, Value)> = Vec::new();
    for o in &set.objects {
        let mut value = o.value.clone();
        value["metadata"]["labels"][DEPLOYMENT_LABEL] = json!(deployment.uid);
        value["metadata"]["annotations"][DEPLOYMENT_NAME_ANNOTATION] = json!(deployment.name);
        for (field, name) in &o.uploads {
            let key = field.trim_start_matches("spec.");
            let b = &built[name];
            value["spec"][key] =
                serde_json::to_value(Archive::stored(&b.sha256, b.filename.clone()))?;
        }
        if o.kind == Kind::Package {
            for key in ["source", "deployment"] {
                let archive = &value["spec"][key];
                if archive["type"].as_str() != Some("literal") {
                    continue;
                }
                let text: String = archive["literal"]
                    .as_str()
                    .unwrap_or_default()
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect();
                let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                    .decode(text.trim_end_matches('='))
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "{}: Package {}: spec.{key}.literal is not base64: {e}",
                            o.at,
                            o.name
                        )
                    })?;
                let sha = kappa_archive::sha256_hex(&bytes);
                let filename = archive["filename"].as_str().map(str::to_string);
                value["spec"][key] = serde_json::to_value(Archive::stored(&sha, filename))?;
                blobs.insert(
                    sha,
                    (
                        format!("literal {key} archive of package '{}'", o.name),
                        bytes,
                    ),
                );
            }
        }
        desired.push(((o.kind, o.namespace.clone(), o.name.clone()), value));
    }

    let current = current_state(ctx).await?;
    let mut steps = Vec::new();
    let mut foreign = Vec::new();
    for (key, value) in &desired {
        let (kind, ns, name) = key.clone();
        let step = match current.get(key) {
            None => Step {
                action: Action::Create,
                kind,
                namespace: ns,
                name,
                object: Some(value.clone()),
                resource_version: None,
                note: None,
            },
            Some(cur) => {
                if label_of(cur) != Some(deployment.uid.as_str()) {
                    foreign.push(format!(
                        "{} {ns}/{name} exists and is not part of this deployment ({}: {}): delete it or rename it in the specs",
                        kind,
                        DEPLOYMENT_LABEL,
                        label_of(cur).unwrap_or("not set")
                    ));
                    continue;
                }
                let rv = cur["metadata"]["resourceVersion"]
                    .as_str()
                    .map(str::to_string);
                let mut cur_cmp = comparable(kind, cur);
                // A source package's deployment is the builder's output, not part of the spec.
                if kind == Kind::Package
                    && !value["spec"]["source"].is_null()
                    && value["spec"]["deployment"].is_null()
                    && let Some(spec) = cur_cmp["spec"].as_object_mut()
                {
                    spec.remove("deployment");
                }
                let same = cur_cmp == comparable(kind, value);
                let mut object = value.clone();
                object["metadata"]["resourceVersion"] = json!(rv);
                // Keep the build output of a source that did not change (a replace without it
                // would leave the package with nothing to run and no new build).
                if kind == Kind::Package
                    && !same
                    && !value["spec"]["source"].is_null()
                    && value["spec"]["deployment"].is_null()
                    && cur["spec"]["source"] == value["spec"]["source"]
                {
                    object["spec"]["deployment"] = cur["spec"]["deployment"].clone();
                }
                Step {
                    action: if same {
                        Action::Unchanged
                    } else {
                        Action::Update
                    },
                    kind,
                    namespace: ns,
                    name,
                    object: Some(object),
                    resource_version: rv,
                    note: None,
                }
            }
        };
        steps.push(step);
    }
    if !foreign.is_empty() {
        bail!("{}", foreign.join("\n"));
    }
    // A function whose package changes rolls to the new code (its pinned version changes).
    let changed_packages: Vec<(String, String)> = steps
        .iter()
        .filter(|s| s.kind == Kind::Package && s.action != Action::Unchanged)
        .map(|s| (s.namespace.clone(), s.name.clone()))
        .collect();
    for s in steps.iter_mut().filter(|s| s.kind == Kind::Function) {
        let pref = s
            .object
            .as_ref()
            .map(|o| &o["spec"]["package"]["packageref"]);
        let pkg = pref.map(|p| {
            (
                p["namespace"].as_str().unwrap_or_default().to_string(),
                p["name"].as_str().unwrap_or_default().to_string(),
            )
        });
        if s.action == Action::Unchanged && pkg.is_some_and(|p| changed_packages.contains(&p)) {
            s.action = Action::Update;
            s.note = Some("its package changed");
        }
    }
    if args.delete {
        let wanted: Vec<&Key> = desired.iter().map(|(k, _)| k).collect();
        for (key, cur) in &current {
            if label_of(cur) == Some(deployment.uid.as_str()) && !wanted.contains(&key) {
                steps.push(Step {
                    action: Action::Delete,
                    kind: key.0,
                    namespace: key.1.clone(),
                    name: key.2.clone(),
                    object: None,
                    resource_version: cur["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_string),
                    note: None,
                });
            }
        }
    }

    // Upload the archives of packages being written, unless the platform holds them already.
    let mut uploads = Vec::new();
    for s in steps
        .iter()
        .filter(|s| s.kind == Kind::Package && matches!(s.action, Action::Create | Action::Update))
    {
        for field in ["source", "deployment"] {
            let Some(object) = &s.object else { continue };
            let Some(sha) = object["spec"][field]["url"]
                .as_str()
                .and_then(|u| u.strip_prefix(kappa_types::ARCHIVE_STORE_PREFIX))
            else {
                continue;
            };
            let Some((label, bytes)) = blobs.get(sha) else {
                continue;
            };
            if uploads
                .iter()
                .any(|(_, s, _): &(String, String, bool)| s == sha)
            {
                continue;
            }
            let stored = ctx
                .client
                .archive_exists(sha)
                .await
                .with_context(|| format!("looking up {label}"))?;
            if !stored && !args.dry_run {
                let up = ctx
                    .client
                    .upload_bytes(bytes.clone())
                    .await
                    .with_context(|| format!("uploading {label}"))?;
                if up.sha256 != sha {
                    bail!(
                        "uploading {label}: the platform stored sha256 {}, expected {sha}",
                        up.sha256
                    );
                }
            }
            uploads.push((label.clone(), sha.to_string(), !stored));
        }
    }

    let ops: Vec<Value> = steps
        .iter()
        .filter_map(|s| match s.action {
            Action::Create => Some(json!({"op": "create", "object": s.object})),
            Action::Update => Some(json!({"op": "replace", "object": s.object})),
            Action::Delete => Some(json!({
                "op": "delete", "kind": s.kind.as_str(), "namespace": s.namespace,
                "name": s.name, "resourceVersion": s.resource_version,
            })),
            Action::Unchanged => None,
        })
        .collect();
    if !ops.is_empty() {
        ctx.client
            .batch(ops, args.dry_run)
            .await
            .context("applying the specs (nothing was changed)")?;
    }
    let outcome = Outcome { steps, uploads };
    report(ctx, &outcome, args.dry_run)?;
    if args.wait && !args.dry_run {
        wait_built(ctx, &outcome, Duration::from_secs(args.wait_timeout)).await?;
    }
    Ok(outcome)
}

fn report(ctx: &Ctx, outcome: &Outcome, dry_run: bool) -> anyhow::Result<()> {
    let count = |a: Action| outcome.steps.iter().filter(|s| s.action == a).count();
    if let Some(format @ (OutputFormat::Json | OutputFormat::Yaml)) = ctx.output {
        let steps: Vec<Value> = outcome
            .steps
            .iter()
            .map(|s| {
                json!({"kind": s.kind.as_str(), "namespace": s.namespace, "name": s.name,
                       "action": s.action.past(), "note": s.note})
            })
            .collect();
        let uploads: Vec<Value> = outcome
            .uploads
            .iter()
            .map(|(n, sha, up)| json!({"name": n, "sha256": sha, "uploaded": *up && !dry_run}))
            .collect();
        return output::print_value(
            format,
            &json!({"dryRun": dry_run, "objects": steps, "archives": uploads}),
        );
    }
    let mut text = String::new();
    for (label, sha, upload) in &outcome.uploads {
        let what = match (upload, dry_run) {
            (true, true) => "would be uploaded",
            (true, false) => "uploaded",
            (false, _) => "already stored",
        };
        text.push_str(&format!(
            "{label} (sha256 {}) {what}\n",
            &sha[..12.min(sha.len())]
        ));
    }
    for s in &outcome.steps {
        let verb = if dry_run {
            s.action.future()
        } else {
            s.action.past()
        };
        let ns = if s.namespace == kappa_types::DEFAULT_NAMESPACE {
            String::new()
        } else {
            format!(" in namespace '{}'", s.namespace)
        };
        let note = s.note.map(|n| format!(" ({n})")).unwrap_or_default();
        text.push_str(&format!("{} '{}'{ns} {verb}{note}\n", noun(s.kind), s.name));
    }
    let (c, u, d, n) = (
        count(Action::Create),
        count(Action::Update),
        count(Action::Delete),
        count(Action::Unchanged),
    );
    if c + u + d == 0 {
        text.push_str(&format!(
            "nothing to apply: all {n} object{} are up to date\n",
            if n == 1 { "" } else { "s" }
        ));
    } else if dry_run {
        text.push_str(&format!(
            "dry run: {c} to create, {u} to update, {d} to delete, {n} unchanged; nothing was changed\n"
        ));
    } else {
        text.push_str(&format!(
            "applied: {c} created, {u} updated, {d} deleted, {n} unchanged\n"
        ));
    }
    output::print_stdout(&text)
}

/// `--wait`: until every package written is built (or needs no build).
async fn wait_built(ctx: &Ctx, outcome: &Outcome, limit: Duration) -> anyhow::Result<()> {
    let packages: Vec<&Step> = outcome
        .steps
        .iter()
        .filter(|s| s.kind == Kind::Package && s.action != Action::Delete)
        .collect();
    let deadline = Instant::now() + limit;
    for p in packages {
        loop {
            let raw = ctx
                .client
                .list_all_raw(Kind::Package)
                .await
                .context("waiting for the packages")?
                .into_iter()
                .find(|v| {
                    key_of(v, Kind::Package) == (Kind::Package, p.namespace.clone(), p.name.clone())
                });
            let Some(raw) = raw else {
                bail!(
                    "package '{}' disappeared while waiting for its build",
                    p.name
                );
            };
            let status = raw["status"]["buildstatus"].as_str().unwrap_or("none");
            match status {
                "succeeded" | "none" => break,
                "failed" => {
                    let log = raw["status"]["buildlog"].as_str().unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    bail!(
                        "the build of package '{}' failed; the end of its log:\n{}",
                        p.name,
                        tail.join("\n")
                    );
                }
                _ if Instant::now() > deadline => bail!(
                    "package '{}' is still {status} after {}s (--wait-timeout)",
                    p.name,
                    limit.as_secs()
                ),
                _ => tokio::time::sleep(WAIT_INTERVAL).await,
            }
        }
        if ctx.output.is_none() {
            output::print_stdout(&format!("package '{}' is built\n", p.name))?;
        }
    }
    Ok(())
}

/// The modification times and sizes of the spec files and of everything the archives hold.
fn fingerprint(args: &ApplyArgs) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut paths: Vec<PathBuf> = Vec::new();
    if let Ok(set) = load::read_dir(&args.dir.specdir, args.dir.specignore.as_deref()) {
        paths.extend(set.files.iter().cloned());
        for upload in set.uploads.values() {
            if let Ok((root, files)) = archive::select(upload, &set.dir) {
                paths.extend(files.iter().map(|f| root.join(f)));
            }
        }
    }
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect()
}

/// `--watch`: apply, then apply again after every change of the files, until Ctrl-C.
async fn watch(ctx: &Ctx, args: &ApplyArgs) -> anyhow::Result<()> {
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let before = fingerprint(args);
        if let Err(e) = apply(ctx, args).await {
            eprintln!("error: {e:#}");
        }
        output::print_stdout(&format!(
            "watching {} for changes (Ctrl-C to stop)\n",
            args.dir.specdir.display()
        ))?;
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(()),
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            if fingerprint(args) != before {
                break;
            }
        }
    }
}

/// The objects labelled with `uid`, in deletion order (triggers first).
fn of_deployment<'a>(current: &'a BTreeMap<Key, Value>, uid: &str) -> Vec<(&'a Key, &'a Value)> {
    let mut objects: Vec<(&Key, &Value)> = current
        .iter()
        .filter(|(_, v)| label_of(v) == Some(uid))
        .collect();
    objects.sort_by_key(|(k, _)| {
        std::cmp::Reverse(Kind::ALL_BY_DEPENDENCY.iter().position(|x| *x == k.0))
    });
    objects
}

async fn destroy(ctx: &Ctx, args: &DirArgs) -> anyhow::Result<()> {
    let set = load::read_dir(&args.specdir, args.specignore.as_deref())?;
    let deployment = deployment(&set)?;
    let current = current_state(ctx).await?;
    let objects = of_deployment(&current, &deployment.uid);
    if objects.is_empty() {
        return output::print_stdout(&format!(
            "nothing to destroy: no object carries {DEPLOYMENT_LABEL}={}\n",
            deployment.uid
        ));
    }
    let ops: Vec<Value> = objects
        .iter()
        .map(|(k, v)| {
            json!({"op": "delete", "kind": k.0.as_str(), "namespace": k.1, "name": k.2,
                   "resourceVersion": v["metadata"]["resourceVersion"]})
        })
        .collect();
    ctx.client
        .batch(ops, false)
        .await
        .context("destroying the deployment (nothing was deleted)")?;
    let mut text = String::new();
    for (k, _) in &objects {
        text.push_str(&format!("{} '{}' deleted\n", noun(k.0), k.2));
    }
    text.push_str(&format!(
        "destroyed: {} objects of deployment {}\n",
        objects.len(),
        deployment.uid
    ));
    output::print_stdout(&text)
}

async fn list(ctx: &Ctx, args: &ListArgs) -> anyhow::Result<()> {
    let current = current_state(ctx).await?;
    // uid → (name, namespaces, counts by kind)
    let mut deployments: BTreeMap<String, (String, BTreeMap<Kind, usize>)> = BTreeMap::new();
    for ((kind, ns, _), v) in &current {
        if !args.all_namespaces && ns != ctx.namespace() {
            continue;
        }
        let Some(uid) = label_of(v) else { continue };
        if args.deployid.as_deref().is_some_and(|d| d != uid) {
            continue;
        }
        let name = v["metadata"]["annotations"][DEPLOYMENT_NAME_ANNOTATION]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let entry = deployments.entry(uid.to_string()).or_default();
        if entry.0.is_empty() {
            entry.0 = name;
        }
        *entry.1.entry(*kind).or_default() += 1;
    }
    match ctx.output.unwrap_or(OutputFormat::Table) {
        OutputFormat::Table => {
            let mut table = Table::new(&["DEPLOYMENT-UID", "NAME", "OBJECTS", "KINDS"]);
            for (uid, (name, counts)) in &deployments {
                let total: usize = counts.values().sum();
                let kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
                table.row(vec![
                    uid.clone(),
                    name.clone(),
                    total.to_string(),
                    kinds.join(", "),
                ]);
            }
            output::print_stdout(&table.to_string())
        }
        format => {
            let items: Vec<Value> = deployments
                .iter()
                .map(|(uid, (name, counts))| {
                    let by_kind: BTreeMap<&str, usize> =
                        counts.iter().map(|(k, n)| (k.as_str(), *n)).collect();
                    json!({"uid": uid, "name": name, "objects": counts.values().sum::<usize>(), "kinds": by_kind})
                })
                .collect();
            output::print_value(format, &Value::Array(items))
        }
    }
}

/// `--spec` on create commands: writes `resource` as YAML into `specs/<kind>-<name>.yaml`
/// (Kappa's format) instead of creating it. Fails when the file exists.
pub fn write_spec<S: Spec>(resource: &Resource<S>) -> anyhow::Result<()> {
    let doc = resource_doc(resource)?;
    write_documents(
        Path::new(SPEC_DIR),
        &format!(
            "{}-{}",
            S::KIND.as_str().to_ascii_lowercase(),
            resource.metadata.name
        ),
        &[doc],
    )?;
    output::print_stdout(&format!(
        "{} '{}' written to {}/{}-{}.yaml (apply it with `kappa spec apply`)\n",
        noun(S::KIND),
        resource.metadata.name,
        SPEC_DIR,
        S::KIND.as_str().to_ascii_lowercase(),
        resource.metadata.name
    ))
}

/// The spec directory `--spec` writes into.
pub const SPEC_DIR: &str = "specs";

/// A resource as a spec document: validated, without status and store metadata.
pub fn resource_doc<S: Spec>(resource: &Resource<S>) -> anyhow::Result<Value> {
    resource
        .validate()
        .map_err(crate::client::ClientError::from)
        .with_context(|| format!("checking {} '{}'", noun(S::KIND), resource.metadata.name))?;
    let mut value = resource.to_json();
    if let Some(m) = value.as_object_mut() {
        m.remove("status");
    }
    Ok(value)
}

/// An `ArchiveUploadSpec` named `name` for a `--code`/`--src`/`--deploy` path: a directory's
/// contents, or one file, relative to the spec directory's parent (the current directory).
pub fn archive_upload_doc(name: &str, path: &Path) -> anyhow::Result<Value> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let (root, include) = if meta.is_dir() {
        (path.to_path_buf(), "*".to_string())
    } else {
        let file = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            anyhow::anyhow!("{}: expected a file with a UTF-8 name", path.display())
        })?;
        (
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
            file.to_string(),
        )
    };
    let root = root.to_string_lossy().into_owned();
    let mut doc = json!({
        "apiVersion": kappa_types::API_VERSION,
        "kind": "ArchiveUploadSpec",
        "name": name,
        "include": [include],
    });
    if !root.is_empty() && root != "." {
        doc["rootdir"] = json!(root);
    }
    Ok(doc)
}

/// Writes `docs` as one multi-document YAML file `<dir>/<stem>.yaml`; fails when it exists.
pub fn write_documents(dir: &Path, stem: &str, docs: &[Value]) -> anyhow::Result<PathBuf> {
    let mut text = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_norway::to_string(doc).context("encoding the spec")?);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{stem}.yaml"));
    if file.exists() {
        bail!(
            "{} already exists: edit it, or delete it first",
            file.display()
        );
    }
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}

/// `fn create --spec` / `pkg create --spec`: the documents for a package of `--code`, `--src`
/// or `--deploy` paths: one `ArchiveUploadSpec` per path, then the Package naming them with
/// `archive://<package>-src` / `archive://<package>-deploy` (source for `--src`, deployment
/// for `--code` and `--deploy`).
pub fn package_docs(
    mut package: Resource<PackageSpec>,
    code: Option<&Path>,
    src: Option<&Path>,
    deploy: Option<&Path>,
) -> anyhow::Result<Vec<Value>> {
    let name = package.metadata.name.clone();
    let mut docs = Vec::new();
    let mut urls = Vec::new();
    let placeholder = Archive::stored(load::PENDING_DIGEST, None);
    if let Some(path) = src {
        let upload = format!("{name}-src");
        docs.push(archive_upload_doc(&upload, path)?);
        package.spec.source = Some(placeholder.clone());
        urls.push(("source", upload));
    }
    if let Some(path) = code.or(deploy) {
        let upload = format!("{name}-deploy");
        docs.push(archive_upload_doc(&upload, path)?);
        package.spec.deployment = Some(placeholder);
        urls.push(("deployment", upload));
    }
    let mut doc = resource_doc(&package)?;
    for (field, upload) in urls {
        doc["spec"][field] = json!({"type": "url", "url": format!("archive://{upload}")});
    }
    docs.push(doc);
    Ok(docs)
}
