//! The resource commands (`env`, `fn`, `route`, `pkg`) and what they share: the context, name
//! arguments, flag value parsers, and the generic get/list/delete/update flows.

pub mod archive;
pub mod canary;
pub mod configmap;
pub mod env;
pub mod function;
pub mod mqtrigger;
pub mod package;
pub mod route;
pub mod secret;
pub mod timetrigger;

use anyhow::Context as _;
use kappa_types::{Kind, Resource, Spec, validate};

use crate::client::{Client, ClientError};
use crate::output::{self, OutputFormat, Table};

/// What every resource command runs with.
#[derive(Debug)]
pub struct Ctx {
    pub client: Client,
    /// `-o`, when given.
    pub output: Option<OutputFormat>,
}

impl Ctx {
    /// The namespace resources are created in and looked up from.
    pub fn namespace(&self) -> &str {
        self.client.namespace()
    }

    /// A new resource in this namespace.
    pub fn resource<S: Spec>(&self, name: &str, spec: S) -> Resource<S> {
        let mut r = Resource::new(name, spec);
        r.metadata.namespace = self.namespace().to_string();
        r
    }
}

/// A usage mistake clap cannot express (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Fails with a usage error.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
}

/// A resource name given as `NAME` or `--name NAME`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct NameArg {
    /// The resource's name.
    #[arg(value_name = "NAME")]
    pub positional: Option<String>,
    /// The resource's name (same as the positional NAME).
    #[arg(long = "name", value_name = "NAME")]
    pub flag: Option<String>,
}

impl NameArg {
    /// The name, checked to be a DNS-1123 label.
    pub fn get(&self) -> anyhow::Result<&str> {
        let name = self
            .positional
            .as_deref()
            .or(self.flag.as_deref())
            .ok_or_else(|| usage("a NAME or --name is required"))?;
        check_name(name)?;
        Ok(name)
    }
}

/// `fn pods NAME` / `env pods NAME`: the instances the pool manager holds for one function or
/// environment (Fission's verb; Kappa's instances are processes locally, pods on Kubernetes).
pub async fn pods(ctx: &Ctx, kind: Kind, name: &NameArg) -> anyhow::Result<()> {
    let name = name.get()?;
    let items = ctx
        .client
        .instances(kind, name)
        .await
        .with_context(|| format!("listing the instances of {} '{name}'", noun(kind)))?;
    match ctx.output.unwrap_or(OutputFormat::Table) {
        OutputFormat::Table => output::print_stdout(&instance_table(&items).to_string()),
        format => output::print_value(format, &serde_json::to_value(&items)?),
    }
}

/// NAME, STATE, FUNCTION, ENV, GENERATION, IN-FLIGHT, SERVED, ADDRESS.
pub fn instance_table(items: &[kappa_core::InstanceInfo]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "FUNCTION",
        "ENV",
        "GENERATION",
        "IN-FLIGHT",
        "SERVED",
        "ADDRESS",
    ]);
    for i in items {
        t.row(vec![
            i.id.clone(),
            i.state.to_string(),
            output::or_dash(i.function.as_ref().map(|f| f.name.clone())),
            output::or_dash(i.environment.as_ref().map(|e| e.name.clone())),
            output::or_dash(i.generation),
            if i.capacity == 0 {
                "-".to_string()
            } else {
                format!("{}/{}", i.in_flight, i.capacity)
            },
            i.served.to_string(),
            if i.address.is_empty() {
                "-".to_string()
            } else {
                i.address.clone()
            },
        ]);
    }
    t
}

/// `delete NAME [--force]`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub name: NameArg,
    /// Delete even when other resources still use it.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// Checks a resource name with the server's validator, so the message is the server's.
pub fn check_name(name: &str) -> Result<(), ClientError> {
    validate::dns1123_label("metadata.name", name).map_err(ClientError::from)
}

/// Parses `KEY=VALUE`.
pub fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Parses a header `Name: value`.
pub fn header(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once(':') else {
        return Err(format!("{text:?} is not a header: expected 'Name: value'"));
    };
    let name = name.trim();
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(format!("{name:?} is not a valid header name"));
    }
    let value = value.trim();
    if reqwest::header::HeaderValue::from_str(value).is_err() {
        return Err(format!(
            "the value of header {name:?} has characters a header cannot carry"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// The user-facing noun of a kind, as used in "function 'hello' created".
pub fn noun(kind: Kind) -> &'static str {
    match kind {
        Kind::Environment => "environment",
        Kind::Package => "package",
        Kind::Function => "function",
        Kind::HttpTrigger => "route",
        Kind::MessageQueueTrigger => "message queue trigger",
        Kind::TimeTrigger => "time trigger",
        Kind::Secret => "secret",
        Kind::ConfigMap => "config map",
        Kind::FunctionVersion => "function version",
        Kind::CanaryConfig => "canary",
        Kind::Invocation => "invocation",
    }
}

/// Reports a created/updated/deleted resource: one line, or the resource with `-o json|yaml`.
pub fn report(
    ctx: &Ctx,
    kind: Kind,
    name: &str,
    verb: &str,
    value: &serde_json::Value,
) -> anyhow::Result<()> {
    match ctx.output {
        Some(format @ (OutputFormat::Json | OutputFormat::Yaml)) => {
            output::print_value(format, value)
        }
        _ => output::print_stdout(&format!("{} '{name}' {verb}\n", noun(kind))),
    }
}

/// `list`: a table by default, the items array with `-o json|yaml`.
pub async fn list<S: Spec>(ctx: &Ctx, table: fn(&[Resource<S>]) -> Table) -> anyhow::Result<()> {
    let raw = ctx
        .client
        .list_raw(S::KIND)
        .await
        .with_context(|| format!("listing {}", S::KIND.plural()))?;
    match ctx.output.unwrap_or(OutputFormat::Table) {
        OutputFormat::Table => {
            let items = raw
                .into_iter()
                .map(crate::client::typed::<S>)
                .collect::<Result<Vec<_>, _>>()?;
            output::print_stdout(&table(&items).to_string())
        }
        format => output::print_value(format, &serde_json::Value::Array(raw)),
    }
}

/// `get NAME`: YAML by default, a one-row table with `-o table`.
pub async fn get<S: Spec>(
    ctx: &Ctx,
    name: &NameArg,
    table: fn(&[Resource<S>]) -> Table,
) -> anyhow::Result<()> {
    let name = name.get()?;
    let raw = ctx
        .client
        .get_raw(S::KIND, name)
        .await
        .with_context(|| format!("getting {} '{name}'", noun(S::KIND)))?;
    match ctx.output.unwrap_or(OutputFormat::Yaml) {
        OutputFormat::Table => {
            let item = crate::client::typed::<S>(raw)?;
            output::print_stdout(&table(std::slice::from_ref(&item)).to_string())
        }
        format => output::print_value(format, &raw),
    }
}

/// `delete NAME [--force]`.
pub async fn delete(ctx: &Ctx, kind: Kind, args: &DeleteArgs) -> anyhow::Result<()> {
    let name = args.name.get()?;
    let deleted = ctx
        .client
        .delete(kind, name, args.force)
        .await
        .with_context(|| format!("deleting {} '{name}'", noun(kind)))?;
    report(ctx, kind, name, "deleted", &deleted)
}

/// Creates a resource after checking it with the server's validation.
pub async fn create<S: Spec>(
    ctx: &Ctx,
    resource: &Resource<S>,
) -> anyhow::Result<serde_json::Value> {
    let name = &resource.metadata.name;
    let what = || format!("creating {} '{name}'", noun(S::KIND));
    resource
        .validate()
        .map_err(ClientError::from)
        .with_context(what)?;
    let created = ctx.client.create(resource).await.with_context(what)?;
    Ok(created)
}

/// Read-modify-write: gets the resource, applies `change`, validates, and replaces it with the
/// read resource version as a precondition; retried (up to 3 times) when someone else wrote in
/// between.
pub async fn update<S, F>(ctx: &Ctx, name: &str, mut change: F) -> anyhow::Result<serde_json::Value>
where
    S: Spec,
    F: FnMut(&mut Resource<S>) -> anyhow::Result<()>,
{
    const ATTEMPTS: usize = 3;
    let what = || format!("updating {} '{name}'", noun(S::KIND));
    let mut attempt = 1;
    loop {
        let mut resource = ctx.client.get::<S>(name).await.with_context(what)?;
        change(&mut resource)?;
        resource
            .validate()
            .map_err(ClientError::from)
            .with_context(what)?;
        match ctx.client.replace(&resource).await {
            Err(e) if attempt < ATTEMPTS && is_version_conflict(&e) => {
                tracing::info!(
                    name,
                    attempt,
                    "resource changed while updating it; retrying"
                );
                attempt += 1;
            }
            other => return other.with_context(what),
        }
    }
}

/// A 409 about the resource version (not about a reference or a duplicate route, which name a
/// field and would fail again).
fn is_version_conflict(e: &ClientError) -> bool {
    e.code() == Some("conflict") && e.field().is_none_or(|f| f == "metadata.resourceVersion")
}

/// Sets a resource quantity from a flag: `Some(0)` clears it.
pub fn set_quantity(slot: &mut Option<String>, value: Option<u64>, unit: &str) {
    match value {
        Some(0) => *slot = None,
        Some(n) => *slot = Some(format!("{n}{unit}")),
        None => {}
    }
}

/// CPU and memory flags shared by `env` and `fn`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ResourceFlags {
    /// Requested CPU in millicores (0 clears).
    #[arg(long, value_name = "MILLICORES")]
    pub mincpu: Option<u64>,
    /// CPU limit in millicores (0 clears).
    #[arg(long, value_name = "MILLICORES")]
    pub maxcpu: Option<u64>,
    /// Requested memory in MiB (0 clears).
    #[arg(long, value_name = "MIB")]
    pub minmemory: Option<u64>,
    /// Memory limit in MiB (0 clears).
    #[arg(long, value_name = "MIB")]
    pub maxmemory: Option<u64>,
}

impl ResourceFlags {
    /// Applies the flags that were given.
    pub fn apply(&self, resources: &mut kappa_types::Resources) {
        set_quantity(&mut resources.requests.cpu, self.mincpu, "m");
        set_quantity(&mut resources.limits.cpu, self.maxcpu, "m");
        set_quantity(&mut resources.requests.memory, self.minmemory, "Mi");
        set_quantity(&mut resources.limits.memory, self.maxmemory, "Mi");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_parsers() {
        assert_eq!(key_value("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(key_value("A="), Ok(("A".into(), String::new())));
        assert!(key_value("=x").is_err());
        assert!(key_value("novalue").is_err());
        assert_eq!(header("X-Id:  42 "), Ok(("X-Id".into(), "42".into())));
        assert!(header("no colon").is_err());
        assert!(header("bad name: x").is_err());
    }

    #[test]
    fn quantities() {
        let mut r = kappa_types::Resources::default();
        ResourceFlags {
            mincpu: Some(100),
            maxmemory: Some(256),
            ..ResourceFlags::default()
        }
        .apply(&mut r);
        assert_eq!(r.requests.cpu.as_deref(), Some("100m"));
        assert_eq!(r.limits.memory.as_deref(), Some("256Mi"));
        ResourceFlags {
            mincpu: Some(0),
            ..ResourceFlags::default()
        }
        .apply(&mut r);
        assert_eq!(r.requests.cpu, None);
        assert_eq!(r.limits.memory.as_deref(), Some("256Mi"));
    }
}
