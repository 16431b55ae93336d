//! Reading a spec directory: the YAML files (minus `.specignore`), split into documents with
//! their first line, each document dispatched on `apiVersion`/`kind` to the Fission converter
//! ([`super::fission`]) or to Kappa's own types, and every problem collected with file:line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use kappa_types::{
    ConfigMapSpec, EnvironmentSpec, FunctionSpec, HttpTriggerSpec, Kind, MessageQueueTriggerSpec,
    PackageSpec, Resource, SecretSpec, Spec, TimeTriggerSpec,
};
use serde_json::Value;

use super::fission;

/// Fission's API version, read unchanged.
pub const FISSION_API_VERSION: &str = "fission.io/v1";
/// The file `kappa spec init` writes the deployment config into.
pub const DEPLOYMENT_FILE: &str = "kappa-deployment-config.yaml";
/// The ignore file read from the spec directory unless `--specignore` names another.
pub const SPECIGNORE: &str = ".specignore";
/// The most YAML files one spec directory may hold (a mistyped `--specdir /` must not read the
/// whole disk).
const MAX_FILES: usize = 10_000;

/// Where something is: file, document (0-based, in the file) and line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub doc: usize,
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} (document {})",
            self.file.display(),
            self.line,
            self.doc + 1
        )
    }
}

/// An error (or a warning) about the specs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub at: Location,
    pub message: String,
    pub warning: bool,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = if self.warning { "warning" } else { "error" };
        write!(f, "{}: {level}: {}", self.at, self.message)
    }
}

/// One YAML document of a file, with the line its first line has in the file.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: PathBuf,
    pub index: usize,
    pub first_line: usize,
    pub text: String,
}

impl Document {
    /// The location of the field at dotted `path` (`spec.methods[1]`), or of the document when
    /// the field cannot be found in the text.
    pub fn locate(&self, path: &str) -> Location {
        Location {
            file: self.file.clone(),
            doc: self.index,
            line: self.first_line + locate_line(&self.text, path).unwrap_or(0),
        }
    }

    /// The location of a line of this document (0-based, as serde reports 1-based minus one).
    pub fn at_line(&self, line0: usize) -> Location {
        Location {
            file: self.file.clone(),
            doc: self.index,
            line: self.first_line + line0,
        }
    }
}

/// `ArchiveUploadSpec`: files zipped by the CLI for `archive://NAME` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveUpload {
    pub name: String,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Where the globs are relative to; the spec directory's parent when unset.
    pub rootdir: Option<String>,
    pub at: Location,
}

/// `DeploymentConfig`: the id every applied object is labelled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentConfig {
    pub name: String,
    pub uid: String,
    pub at: Location,
}

/// An object to apply, as Kappa's resource JSON (typed, defaults filled in).
#[derive(Debug, Clone)]
pub struct Desired {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub value: Value,
    pub at: Location,
    /// `(field, ArchiveUploadSpec name)` for every `archive://NAME` archive of a Package.
    pub uploads: Vec<(&'static str, String)>,
}

/// Everything a spec directory holds.
#[derive(Debug, Default)]
pub struct SpecSet {
    pub dir: PathBuf,
    pub deployment: Option<DeploymentConfig>,
    pub objects: Vec<Desired>,
    pub uploads: BTreeMap<String, ArchiveUpload>,
    pub problems: Vec<Problem>,
    /// The files read, for `--watch`.
    pub files: Vec<PathBuf>,
}

impl SpecSet {
    fn error(&mut self, at: Location, message: impl Into<String>) {
        self.problems.push(Problem {
            at,
            message: message.into(),
            warning: false,
        });
    }
}

/// Reads every YAML file of `dir` (recursively, in path order) except those `.specignore`
/// (or `ignore_file`) matches.
pub fn read_dir(dir: &Path, ignore_file: Option<&Path>) -> anyhow::Result<SpecSet> {
    use anyhow::Context as _;
    let meta = std::fs::metadata(dir).with_context(|| {
        format!(
            "reading the spec directory {}: run `kappa spec init` to create one, or pass --specdir",
            dir.display()
        )
    })?;
    if !meta.is_dir() {
        anyhow::bail!("the spec directory {} is not a directory", dir.display());
    }
    let ignore = read_ignore(dir, ignore_file)?;
    let mut files = Vec::new();
    collect_yaml(dir, dir, &ignore, &mut files)?;
    files.sort();
    let mut set = SpecSet {
        dir: dir.to_path_buf(),
        ..SpecSet::default()
    };
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for doc in split_documents(file, &text) {
            read_document(&mut set, &doc);
        }
    }
    set.files = files;
    check_references(&mut set);
    Ok(set)
}

fn read_ignore(dir: &Path, ignore_file: Option<&Path>) -> anyhow::Result<Vec<glob::Pattern>> {
    let path = ignore_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(SPECIGNORE));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && ignore_file.is_none() => {
            return Ok(Vec::new());
        }
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    };
    let mut patterns = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let pattern = glob::Pattern::new(line.trim_start_matches('/').trim_end_matches('/'))
            .map_err(|e| {
                anyhow::anyhow!("{}:{}: {line:?} is not a glob: {e}", path.display(), i + 1)
            })?;
        patterns.push(pattern);
    }
    Ok(patterns)
}

/// Whether `rel` (relative to the spec directory) or one of its parent directories or its file
/// name matches an ignore pattern.
fn ignored(rel: &Path, ignore: &[glob::Pattern]) -> bool {
    let text = rel.to_string_lossy();
    let name = rel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    ignore.iter().any(|p| p.matches(&text) || p.matches(&name))
}

fn collect_yaml(
    root: &Path,
    dir: &Path,
    ignore: &[glob::Pattern],
    out: &mut Vec<PathBuf>,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if ignored(&rel, ignore) {
            continue;
        }
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            collect_yaml(root, &path, ignore, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
            if out.len() > MAX_FILES {
                anyhow::bail!(
                    "{} holds more than {MAX_FILES} YAML files: is --specdir right?",
                    root.display()
                );
            }
        }
    }
    Ok(())
}

/// Splits a file into YAML documents at `---` lines (and `...` ends), keeping each one's first
/// line number so errors point into the file, not into the document.
pub fn split_documents(file: &Path, text: &str) -> Vec<Document> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    let push = |current: &mut String, first_line: usize, docs: &mut Vec<Document>| {
        let has_content = current
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if has_content {
            docs.push(Document {
                file: file.to_path_buf(),
                index: docs.len(),
                first_line,
                text: std::mem::take(current),
            });
        } else {
            current.clear();
        }
    };
    for (i, line) in text.lines().enumerate() {
        let is_separator = line == "---"
            || line.starts_with("--- ")
            || line.starts_with("---\t")
            || line.trim_end() == "...";
        if is_separator {
            push(&mut current, first_line, &mut docs);
            first_line = i + 2;
            // Content after `--- ` on the same line belongs to the next document.
            if let Some(rest) = line.strip_prefix("--- ")
                && !rest.trim().is_empty()
                && !rest.trim_start().starts_with('#')
            {
                first_line = i + 1;
                current.push_str(rest);
                current.push('\n');
            }
            continue;
        }
        if current.is_empty() && line.trim().is_empty() {
            // Leading blank lines: keep the line numbers right by counting them in.
            current.push('\n');
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    push(&mut current, first_line, &mut docs);
    docs
}

/// The 0-based line of `path` (`a.b[2].c`) in a YAML block document, found by indentation.
pub fn locate_line(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0usize;
    let mut end = lines.len();
    let mut min_indent: Option<usize> = None;
    let mut found = None;
    for segment in path.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        // The shallowest line of the block holding the key (a deeper one belongs to a child).
        let mut hit: Option<(usize, usize)> = None;
        for (i, line) in lines.iter().enumerate().take(end).skip(start) {
            let indent = line.len() - line.trim_start().len();
            let trimmed = line.trim_start().trim_start_matches("- ");
            if min_indent.is_some_and(|m| indent < m) && !line.trim().is_empty() {
                break;
            }
            if !key.is_empty()
                && (trimmed.starts_with(&format!("{key}:"))
                    || trimmed.starts_with(&format!("\"{key}\":")))
                && hit.is_none_or(|(_, best)| indent < best)
            {
                hit = Some((i, indent));
            }
        }
        let (line, indent) = match hit {
            Some(h) => h,
            None if key.is_empty() => (start.saturating_sub(1), min_indent.unwrap_or(0)),
            None => return found,
        };
        found = Some(line);
        start = line + 1;
        min_indent = Some(indent + 1);
        // The block of this key ends at the next line indented as much or less.
        end = lines
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, l)| {
                !l.trim().is_empty() && {
                    let ind = l.len() - l.trim_start().len();
                    ind < indent + 1 && !(ind == indent && l.trim_start().starts_with("- "))
                }
            })
            .map_or(lines.len(), |(i, _)| i);
        if let Some(n) = index {
            let items: Vec<usize> = lines
                .iter()
                .enumerate()
                .take(end)
                .skip(start)
                .filter(|(_, l)| l.trim_start().starts_with("- ") || l.trim() == "-")
                .map(|(i, l)| (i, l.len() - l.trim_start().len()))
                .fold(Vec::new(), |mut acc: Vec<(usize, usize)>, item| {
                    if acc.first().is_none_or(|f| f.1 == item.1) {
                        acc.push(item);
                    }
                    acc
                })
                .into_iter()
                .map(|(i, _)| i)
                .collect();
            let Some(&item) = items.get(n) else {
                return found;
            };
            found = Some(item);
            start = item;
            let next = items.get(n + 1).copied().unwrap_or(end);
            end = next;
            min_indent = None;
        }
    }
    found
}

/// The line (0-based, in the document) a serde_norway error points at.
fn yaml_error_line(e: &serde_norway::Error) -> usize {
    e.location().map_or(0, |l| l.line().saturating_sub(1))
}

/// Parses one document and adds what it holds to `set`.
fn read_document(set: &mut SpecSet, doc: &Document) {
    let value: Value = match serde_norway::from_str(&doc.text) {
        Ok(v) => v,
        Err(e) => {
            set.error(
                doc.at_line(yaml_error_line(&e)),
                format!("not valid YAML: {e}"),
            );
            return;
        }
    };
    let Value::Object(_) = &value else {
        set.error(
            doc.locate(""),
            "expected a mapping with apiVersion and kind",
        );
        return;
    };
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match (api_version, kind) {
        (_, "") => set.error(doc.locate("kind"), "missing `kind`"),
        // Fission writes ArchiveUploadSpec without an apiVersion.
        ("" | FISSION_API_VERSION | kappa_types::API_VERSION, "ArchiveUploadSpec") => {
            read_upload(set, doc, &value);
        }
        // Older `fission spec init` wrote it without an apiVersion too.
        ("" | FISSION_API_VERSION | kappa_types::API_VERSION, "DeploymentConfig") => {
            read_deployment(set, doc, &value);
        }
        (FISSION_API_VERSION, _) => match fission::convert(&value, doc) {
            Ok(converted) => {
                set.problems.extend(converted.warnings);
                if let Some(desired) = converted.object {
                    add_typed(set, doc, desired.0, desired.1, desired.2, true);
                }
            }
            Err(problems) => set.problems.extend(problems),
        },
        (kappa_types::API_VERSION, kind) => match kind.parse::<Kind>() {
            Ok(Kind::Invocation) => set.error(
                doc.locate("kind"),
                "kind Invocation is not applied from specs: invocations are records the platform writes when it accepts an asynchronous invocation",
            ),
            Ok(Kind::Secret) => set.error(
                doc.locate("kind"),
                "kind Secret is not applied from specs (its values would sit in the files): create it with `kappa secret create`",
            ),
            Ok(k) if k.as_str() == kind => {
                let uploads = kappa_uploads(&value);
                add_typed(set, doc, k, value, uploads, false);
            }
            _ => set.error(
                doc.locate("kind"),
                format!(
                    "kind {kind:?} is not a {} kind: expected one of {}, ArchiveUploadSpec, DeploymentConfig",
                    kappa_types::API_VERSION,
                    Kind::ALL.map(Kind::as_str).join(", ")
                ),
            ),
        },
        ("", _) => set.error(
            doc.locate("kind"),
            format!("missing `apiVersion`: expected {FISSION_API_VERSION} or {}", kappa_types::API_VERSION),
        ),
        (other, _) => set.error(
            doc.locate("apiVersion"),
            format!(
                "apiVersion {other:?} is not supported: expected {FISSION_API_VERSION} or {}",
                kappa_types::API_VERSION
            ),
        ),
    }
}

/// `archive://NAME` URLs of a Kappa-format Package (NAME not a `sha256/...` digest).
fn kappa_uploads(value: &Value) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for field in ["source", "deployment"] {
        if let Some(url) = value["spec"][field]["url"].as_str()
            && let Some(name) = url.strip_prefix("archive://")
            && !name.starts_with("sha256/")
        {
            out.push((
                if field == "source" {
                    "spec.source"
                } else {
                    "spec.deployment"
                },
                name.to_string(),
            ));
        }
    }
    out
}

/// A placeholder store URL for an archive still to be zipped, so the typed checks pass; the
/// apply replaces it with the real digest.
pub const PENDING_DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Checks a Kappa resource (JSON) with its kind's types and validation, and records it.
fn add_typed(
    set: &mut SpecSet,
    doc: &Document,
    kind: Kind,
    mut value: Value,
    uploads: Vec<(&'static str, String)>,
    from_fission: bool,
) {
    for (field, _) in &uploads {
        let key = field.trim_start_matches("spec.");
        value["spec"][key] =
            serde_json::to_value(kappa_types::Archive::stored(PENDING_DIGEST, None))
                .unwrap_or(Value::Null);
    }
    let checked = match kind {
        Kind::Environment => check::<EnvironmentSpec>(value),
        Kind::Package => check::<PackageSpec>(value),
        Kind::Function => check::<FunctionSpec>(value),
        Kind::HttpTrigger => check::<HttpTriggerSpec>(value),
        Kind::MessageQueueTrigger => check::<MessageQueueTriggerSpec>(value),
        Kind::TimeTrigger => check::<TimeTriggerSpec>(value),
        Kind::Secret => check::<SecretSpec>(value),
        Kind::ConfigMap => check::<ConfigMapSpec>(value),
        Kind::CanaryConfig => check::<kappa_types::CanaryConfigSpec>(value),
        Kind::FunctionVersion => check::<kappa_types::FunctionVersionSpec>(value),
        Kind::Invocation => check::<kappa_types::InvocationSpec>(value),
    };
    match checked {
        Ok(value) => {
            let namespace = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or(kappa_types::DEFAULT_NAMESPACE)
                .to_string();
            let name = value["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if let Some(first) = set
                .objects
                .iter()
                .find(|o| o.kind == kind && o.namespace == namespace && o.name == name)
            {
                let first = first.at.clone();
                set.error(
                    doc.locate("metadata.name"),
                    format!("{kind} {namespace}/{name} is already defined at {first}"),
                );
                return;
            }
            set.objects.push(Desired {
                kind,
                namespace,
                name,
                value,
                at: doc.locate("metadata.name"),
                uploads,
            });
        }
        Err((field, message)) => {
            // Converted Fission fields keep Fission's names where Kappa's differ.
            let located = if from_fission {
                fission::fission_path(kind, &field)
            } else {
                field.clone()
            };
            set.error(doc.locate(&located), format!("{field}: {message}"));
        }
    }
}

fn check<S: Spec>(value: Value) -> Result<Value, (String, String)> {
    let resource = Resource::<S>::from_json(value).map_err(|e| (e.field, e.message))?;
    resource.validate().map_err(|e| (e.field, e.message))?;
    Ok(resource.to_json())
}

/// Fields of an `ArchiveUploadSpec`.
fn read_upload(set: &mut SpecSet, doc: &Document, value: &Value) {
    let mut fields = Fields::new(doc, value);
    fields.take("apiVersion");
    fields.take("kind");
    let name = fields.string("name");
    let include = fields.strings("include");
    let exclude = fields.strings("exclude");
    let rootdir = fields.string("rootdir").filter(|r| !r.is_empty());
    let problems = fields.finish();
    let ok = problems.is_empty();
    set.problems.extend(problems);
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        set.error(doc.locate("name"), "ArchiveUploadSpec: missing `name`");
        return;
    };
    if !ok {
        return;
    }
    if include.is_empty() {
        set.error(
            doc.locate("include"),
            format!("ArchiveUploadSpec {name:?}: `include` must list at least one glob"),
        );
        return;
    }
    for (i, g) in include.iter().chain(exclude.iter()).enumerate() {
        if let Err(e) = glob::Pattern::new(g) {
            let field = if i < include.len() {
                format!("include[{i}]")
            } else {
                format!("exclude[{}]", i - include.len())
            };
            set.error(doc.locate(&field), format!("{g:?} is not a glob: {e}"));
            return;
        }
    }
    if let Some(first) = set.uploads.get(&name) {
        let first = first.at.clone();
        set.error(
            doc.locate("name"),
            format!("ArchiveUploadSpec {name:?} is already defined at {first}"),
        );
        return;
    }
    set.uploads.insert(
        name.clone(),
        ArchiveUpload {
            name,
            include,
            exclude,
            rootdir,
            at: doc.locate("name"),
        },
    );
}

fn read_deployment(set: &mut SpecSet, doc: &Document, value: &Value) {
    let mut fields = Fields::new(doc, value);
    fields.take("apiVersion");
    fields.take("kind");
    let name = fields.string("name").unwrap_or_default();
    let uid = fields.string("uid").unwrap_or_default();
    let problems = fields.finish();
    set.problems.extend(problems);
    if uuid::Uuid::parse_str(&uid).is_err() {
        set.error(
            doc.locate("uid"),
            format!(
                "DeploymentConfig: uid {uid:?} is not a UUID (run `kappa spec init` for a new one)"
            ),
        );
        return;
    }
    if let Some(first) = &set.deployment {
        let first = first.at.clone();
        set.error(
            doc.locate("kind"),
            format!("a second DeploymentConfig: the first is at {first}; a spec directory has one"),
        );
        return;
    }
    set.deployment = Some(DeploymentConfig {
        name,
        uid: uid.to_ascii_lowercase(),
        at: doc.locate("uid"),
    });
}

/// Cross-document checks: archives named by packages exist; a function's package is in the
/// specs (as Fission requires).
fn check_references(set: &mut SpecSet) {
    let mut problems = Vec::new();
    for o in &set.objects {
        for (field, upload) in &o.uploads {
            if !set.uploads.contains_key(upload) {
                problems.push(Problem {
                    at: o.at.clone(),
                    message: format!(
                        "Package {}: {field}.url archive://{upload} names no ArchiveUploadSpec in the specs",
                        o.name
                    ),
                    warning: false,
                });
            }
        }
        if o.kind == Kind::Function {
            let pref = &o.value["spec"]["package"]["packageref"];
            let (ns, name) = (
                pref["namespace"].as_str().unwrap_or_default(),
                pref["name"].as_str().unwrap_or_default(),
            );
            let defined = set
                .objects
                .iter()
                .any(|p| p.kind == Kind::Package && p.namespace == ns && p.name == name);
            if !defined {
                problems.push(Problem {
                    at: o.at.clone(),
                    message: format!(
                        "Function {}: package {ns}/{name} (spec.package.packageref) is not defined in the specs",
                        o.name
                    ),
                    warning: false,
                });
            }
        }
    }
    set.problems.extend(problems);
}

/// Reads the fields of a YAML mapping one by one; whatever is left unread at the end is an
/// error naming it, so nothing is silently dropped.
pub struct Fields<'a> {
    doc: &'a Document,
    prefix: String,
    map: serde_json::Map<String, Value>,
    pub problems: Vec<Problem>,
}

impl<'a> Fields<'a> {
    pub fn new(doc: &'a Document, value: &Value) -> Self {
        Self::at(doc, "", value)
    }

    /// The fields of `value`, found at dotted `prefix`.
    pub fn at(doc: &'a Document, prefix: &str, value: &Value) -> Self {
        let mut problems = Vec::new();
        let map = match value {
            Value::Object(m) => m.clone(),
            Value::Null => serde_json::Map::new(),
            other => {
                problems.push(Problem {
                    at: doc.locate(prefix),
                    message: format!("{prefix}: expected a mapping, found {}", type_name(other)),
                    warning: false,
                });
                serde_json::Map::new()
            }
        };
        Self {
            doc,
            prefix: prefix.to_string(),
            map,
            problems,
        }
    }

    /// The dotted path of `key`.
    pub fn path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    pub fn doc(&self) -> &'a Document {
        self.doc
    }

    /// Takes a field (`None` when absent or null). A key spelt with other capitals counts
    /// too, as Fission decodes with Go's `encoding/json`, which matches names that way
    /// (`Concurrency` is `concurrency`).
    pub fn take(&mut self, key: &str) -> Option<Value> {
        let found = if self.map.contains_key(key) {
            Some(key.to_string())
        } else {
            self.map
                .keys()
                .find(|k| k.eq_ignore_ascii_case(key))
                .cloned()
        };
        found
            .and_then(|k| self.map.remove(&k))
            .filter(|v| !v.is_null())
    }

    pub fn error(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.problems.push(Problem {
            at: self.doc.locate(&path),
            message: format!("{path}: {}", message.into()),
            warning: false,
        });
    }

    pub fn warn(&mut self, key: &str, message: impl Into<String>) {
        let path = self.path(key);
        self.problems.push(Problem {
            at: self.doc.locate(&path),
            message: format!("{path}: {}", message.into()),
            warning: true,
        });
    }

    fn typed<T: serde::de::DeserializeOwned>(&mut self, key: &str, what: &str) -> Option<T> {
        let value = self.take(key)?;
        match serde_json::from_value::<T>(value.clone()) {
            Ok(v) => Some(v),
            Err(_) => {
                self.error(key, format!("expected {what}, found {}", type_name(&value)));
                None
            }
        }
    }

    pub fn string(&mut self, key: &str) -> Option<String> {
        self.typed(key, "a string")
    }

    pub fn strings(&mut self, key: &str) -> Vec<String> {
        self.typed(key, "a list of strings").unwrap_or_default()
    }

    pub fn bool(&mut self, key: &str) -> Option<bool> {
        self.typed(key, "true or false")
    }

    pub fn u64(&mut self, key: &str) -> Option<u64> {
        self.typed(key, "a non-negative integer")
    }

    /// Takes a field that Kappa accepts only at its zero value (`""`, `0`, `false`, `{}`, `[]`,
    /// null); anything else is an error saying why.
    pub fn zero_only(&mut self, key: &str, why: &str) {
        if let Some(v) = self.take(key)
            && !is_zero(&v)
        {
            self.error(key, format!("is not supported: {why}"));
        }
    }

    /// Takes a field that Kappa ignores, with a warning when it is set.
    pub fn ignored(&mut self, key: &str, why: &str) {
        if let Some(v) = self.take(key)
            && !is_zero(&v)
        {
            self.warn(key, format!("ignored: {why}"));
        }
    }

    /// Ends the reading: every field left is an error.
    pub fn finish(mut self) -> Vec<Problem> {
        let left: Vec<String> = self.map.keys().cloned().collect();
        for key in left {
            self.error(&key, "unknown or unsupported field");
        }
        self.problems
    }
}

/// Whether a value is a zero value (`""`, `0`, `false`, null, `{}`, `[]`, or a mapping of
/// zero values).
pub fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.values().all(is_zero),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_line_numbers() {
        let text = "a: 1\n---\n\n# c\nkind: X\nb:\n  c: 2\n--- \n...\n---\nz: 1\n";
        let docs = split_documents(Path::new("f.yaml"), text);
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[0].first_line, 1);
        assert_eq!(docs[1].first_line, 3);
        assert_eq!(docs[1].locate("b.c").line, 7);
        assert_eq!(docs[2].first_line, 11);
        assert_eq!(docs[2].locate("z").line, 11);
    }

    #[test]
    fn lines_of_nested_fields_and_list_items() {
        let text = "spec:\n  methods:\n  - GET\n  - POST\n  functionref:\n    name: x\nname: y\n";
        assert_eq!(locate_line(text, "spec.functionref.name"), Some(5));
        assert_eq!(locate_line(text, "spec.methods[1]"), Some(3));
        assert_eq!(locate_line(text, "name"), Some(6));
        assert_eq!(locate_line(text, "spec.missing"), Some(0));
    }
}
