//! `kappa fn create|get|list|update|delete|test|logs` (alias `function`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt;
use kappa_types::{
    ExecutorType, FunctionSpec, HttpTrigger, HttpTriggerSpec, Kind, NamedRef, Package, PackageSpec,
};
use reqwest::Method;

use super::{Ctx, NameArg, ResourceFlags, usage};
use crate::client::{ClientError, Invocation, LogLine, error_from_body, read_bounded};
use crate::cmd::package::{set_code, wait_if_building, wants_build};
use crate::code::{CodePaths, OWNER_ANNOTATION, generated_name, package_code};
use crate::output::{self, OutputFormat, Table, age, parse_duration};

/// The longest log line we accept from the API before giving up on the stream.
const MAX_LOG_LINE: usize = 1024 * 1024;
/// The most of an error answer from `fn test` we read and print.
const MAX_TEST_ERROR_BODY: usize = 1024 * 1024;

/// `kappa fn ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum FnCommand {
    /// Create a function from code (--code, --src, --deploy) or an existing package (--pkg).
    Create(FnCreate),
    /// Print a function (YAML by default).
    Get(NameArg),
    /// List functions.
    #[command(alias = "ls")]
    List,
    /// Change the flags given; new code goes to the function's package and new requests run it.
    Update(FnUpdate),
    /// Delete a function, the routes `fn create` made for it, and the package it owns when no
    /// other function uses it.
    #[command(alias = "rm")]
    Delete(NameArg),
    /// Invoke a function through the API and print its response body (with --async: queue
    /// an asynchronous invocation and print its id).
    #[command(alias = "invoke")]
    Test(FnTest),
    /// List a function's asynchronous invocations, newest first.
    Invocations(FnInvocations),
    /// Show one asynchronous invocation: its request, attempts and outcome (YAML by default).
    Invocation(InvocationArg),
    /// Print a function's logs.
    #[command(alias = "log")]
    Logs(FnLogs),
    /// List the function's instances (specialized, being specialized or draining).
    #[command(alias = "instances")]
    Pods(NameArg),
    /// List the function's kept versions: number, time, code checksum, what changed.
    #[command(alias = "versions")]
    History(NameArg),
    /// Make an earlier version current again (new requests run it, old instances drain).
    Rollback(FnRollback),
}

/// `fn rollback`.
#[derive(Debug, Clone, clap::Args)]
pub struct FnRollback {
    #[command(flatten)]
    pub name: NameArg,
    /// The version to make current [default: the newest kept version before the current one].
    #[arg(long)]
    pub to: Option<u32>,
}

/// Where a function's code comes from (at most one).
#[derive(Debug, Clone, Default, clap::Args)]
#[group(multiple = false)]
pub struct FnCode {
    /// One file, deployed under its own name.
    #[arg(long)]
    pub code: Option<PathBuf>,
    /// A source directory or zip: built when the environment has a builder or --buildcmd is
    /// given, otherwise deployed as is.
    #[arg(long, alias = "source", alias = "sourcearchive")]
    pub src: Option<PathBuf>,
    /// A directory, zip or file deployed as is.
    #[arg(long, alias = "deployarchive")]
    pub deploy: Option<PathBuf>,
    /// An existing package.
    #[arg(long, alias = "pkgname")]
    pub pkg: Option<String>,
}

impl FnCode {
    fn paths(&self) -> CodePaths {
        CodePaths {
            code: self.code.clone(),
            src: self.src.clone(),
            deploy: self.deploy.clone(),
        }
    }
}

/// The executor type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Executor {
    /// Specialize warm instances from the environment's pool on demand.
    Poolmgr,
    /// Instances start specialized, between --minscale and --maxscale.
    Newdeploy,
}

impl From<Executor> for ExecutorType {
    fn from(e: Executor) -> Self {
        match e {
            Executor::Poolmgr => ExecutorType::Poolmgr,
            Executor::Newdeploy => ExecutorType::Newdeploy,
        }
    }
}

/// A function's settings; on update only those given change.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FnSettings {
    /// The entrypoint, interpreted by the runtime (Python `module.func`, Node.js `file.export`).
    #[arg(long, alias = "entry")]
    pub entrypoint: Option<String>,
    /// How instances are provisioned [default: poolmgr].
    #[arg(long, value_enum)]
    pub executortype: Option<Executor>,
    /// Instances kept specialized even when idle [default: 0].
    #[arg(long)]
    pub minscale: Option<u32>,
    /// Most instances for newdeploy [default: 1].
    #[arg(long)]
    pub maxscale: Option<u32>,
    /// Most specialized instances for poolmgr [default: 10].
    #[arg(long, alias = "con")]
    pub concurrency: Option<u32>,
    /// Requests one instance serves at once [default: 1].
    #[arg(long, alias = "rpp")]
    pub requestsperpod: Option<u32>,
    /// Seconds the router waits for a response [default: 60].
    #[arg(long, alias = "ft")]
    pub fntimeout: Option<u64>,
    /// Seconds an idle instance is kept [default: 120].
    #[arg(long)]
    pub idletimeout: Option<u64>,
    /// Seconds specialization may take [default: 120].
    #[arg(long, alias = "st")]
    pub specializationtimeout: Option<u64>,
    /// An environment variable for the function, KEY=VALUE (repeatable).
    #[arg(long = "envvar", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub envvars: Vec<(String, String)>,
    /// A secret the function reads from /secrets/<namespace>/<name>/ (repeatable; on update,
    /// the list given replaces the function's secrets).
    #[arg(long = "secret", value_name = "NAME")]
    pub secrets: Vec<String>,
    /// A config map the function reads from /configs/<namespace>/<name>/ (repeatable; on
    /// update, the list given replaces the function's config maps).
    #[arg(long = "configmap", value_name = "NAME")]
    pub configmaps: Vec<String>,
    /// Whether the function may open connections to addresses outside the machine (local
    /// sandbox; default: its environment's).
    #[arg(long, value_name = "BOOL")]
    pub egress: Option<bool>,
    /// A port of the host's own loopback (127.0.0.1) the function may connect to at the same
    /// port of its own, e.g. a local database in development (repeatable; local sandbox only;
    /// replaces the environment's list; on update, the ports given replace the function's).
    #[arg(long = "host-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub host_ports: Vec<u16>,
    /// No host ports for this function, whatever its environment allows.
    #[arg(long, conflicts_with_all = ["host_ports", "env_host_ports"])]
    pub no_host_ports: bool,
    /// Update: the function takes its environment's host ports again.
    #[arg(long, conflicts_with = "host_ports")]
    pub env_host_ports: bool,
    /// Asynchronous invocations: attempts after the first failed one, with exponential
    /// back-off [default: 2].
    #[arg(long)]
    pub retries: Option<u32>,
    /// Asynchronous invocations: the message-queue topic they go to after their last failed
    /// attempt (without one they stay in the store, dead-lettered); "" removes it on update.
    #[arg(long, value_name = "TOPIC")]
    pub dead_letter_topic: Option<String>,
    /// The broker of --dead-letter-topic: nats-jetstream, redis or kafka [default: nats-jetstream].
    #[arg(long, value_name = "TYPE")]
    pub dead_letter_mqtype: Option<String>,
    /// The broker URL of --dead-letter-topic [default: the platform's broker of that type].
    #[arg(long, value_name = "URL")]
    pub dead_letter_url: Option<String>,
    #[command(flatten)]
    pub resources: ResourceFlags,
}

impl FnSettings {
    fn apply(&self, spec: &mut FunctionSpec) {
        if let Some(e) = &self.entrypoint {
            spec.package.function_name = e.clone();
        }
        if let Some(e) = self.executortype {
            spec.executor_type = e.into();
        }
        if let Some(v) = self.minscale {
            spec.min_scale = v;
        }
        if let Some(v) = self.maxscale {
            spec.max_scale = v;
        }
        if let Some(v) = self.concurrency {
            spec.concurrency = v;
        }
        if let Some(v) = self.requestsperpod {
            spec.requests_per_pod = v;
        }
        if let Some(v) = self.fntimeout {
            spec.function_timeout = v;
        }
        if let Some(v) = self.idletimeout {
            spec.idletimeout = v;
        }
        if let Some(v) = self.specializationtimeout {
            spec.specialization_timeout = v;
        }
        if let Some(v) = self.egress {
            spec.egress = Some(v);
        }
        if !self.host_ports.is_empty() {
            spec.host_ports = Some(self.host_ports.clone());
        }
        if self.no_host_ports {
            spec.host_ports = Some(Vec::new());
        }
        if self.env_host_ports {
            spec.host_ports = None;
        }
        if let Some(v) = self.retries {
            spec.retries = v;
        }
        match self.dead_letter_topic.as_deref() {
            Some("") => spec.dead_letter = None,
            Some(topic) => {
                let previous = spec.dead_letter.take().unwrap_or_default();
                let mut dead_letter = kappa_types::DeadLetter {
                    topic: topic.to_string(),
                    message_queue_type: if previous.message_queue_type.is_empty() {
                        "nats-jetstream".into()
                    } else {
                        previous.message_queue_type
                    },
                    metadata: previous.metadata,
                };
                if let Some(t) = &self.dead_letter_mqtype {
                    dead_letter.message_queue_type = t.clone();
                }
                if let Some(url) = &self.dead_letter_url {
                    dead_letter.metadata.insert("url".into(), url.clone());
                }
                spec.dead_letter = Some(dead_letter);
            }
            None => {
                if let Some(dead_letter) = spec.dead_letter.as_mut() {
                    if let Some(t) = &self.dead_letter_mqtype {
                        dead_letter.message_queue_type = t.clone();
                    }
                    if let Some(url) = &self.dead_letter_url {
                        dead_letter.metadata.insert("url".into(), url.clone());
                    }
                }
            }
        }
        for (k, v) in &self.envvars {
            spec.env.insert(k.clone(), v.clone());
        }
        // Secrets and config maps live in the function's own namespace, which is its
        // environment reference's namespace by the time this runs.
        let reference = |name: &String| NamedRef {
            name: name.clone(),
            namespace: spec.environment.namespace.clone(),
        };
        if !self.secrets.is_empty() {
            spec.secrets = self.secrets.iter().map(reference).collect();
        }
        if !self.configmaps.is_empty() {
            spec.configmaps = self.configmaps.iter().map(reference).collect();
        }
        self.resources.apply(&mut spec.resources);
    }
}

/// `fn create`.
#[derive(Debug, Clone, clap::Args)]
pub struct FnCreate {
    /// Write the YAML into specs/ (for `kappa spec apply`) instead of creating it.
    #[arg(long)]
    pub spec: bool,
    /// The function's name.
    #[arg(long)]
    pub name: String,
    /// The environment it runs in (taken from the package with --pkg).
    #[arg(long)]
    pub env: Option<String>,
    #[command(flatten)]
    pub code: FnCode,
    /// The build command for --src (overrides the environment builder's).
    #[arg(long)]
    pub buildcmd: Option<String>,
    #[command(flatten)]
    pub settings: FnSettings,
    /// Also create a route with this path template.
    #[arg(long, conflicts_with = "prefix")]
    pub url: Option<String>,
    /// Also create a route with this path prefix.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Keep the prefix when forwarding (with --prefix).
    #[arg(long)]
    pub keepprefix: bool,
    /// The route's methods (repeatable; with --url/--prefix) [default: GET].
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
}

/// `fn update`.
#[derive(Debug, Clone, clap::Args)]
pub struct FnUpdate {
    /// The function to change.
    #[arg(long)]
    pub name: String,
    /// Move it to another environment.
    #[arg(long)]
    pub env: Option<String>,
    #[command(flatten)]
    pub code: FnCode,
    /// The build command for --src.
    #[arg(long)]
    pub buildcmd: Option<String>,
    #[command(flatten)]
    pub settings: FnSettings,
}

/// `fn test`.
#[derive(Debug, Clone, clap::Args)]
pub struct FnTest {
    #[command(flatten)]
    pub name: NameArg,
    /// The HTTP method.
    #[arg(short = 'X', long, default_value = "GET")]
    pub method: String,
    /// A request header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = super::header)]
    pub headers: Vec<(String, String)>,
    /// The request body.
    #[arg(short = 'b', long)]
    pub body: Option<String>,
    /// The path after the function's root, e.g. /users/42.
    #[arg(long, default_value = "")]
    pub subpath: String,
    /// A query parameter, key=value (repeatable).
    #[arg(short = 'q', long = "query", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub query: Vec<(String, String)>,
    /// How long to wait for the response (e.g. 60s, 500ms, 2m).
    #[arg(short = 't', long, default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Queue an asynchronous invocation (answered at once with its id; see `kappa fn
    /// invocation ID`) instead of waiting for the function.
    #[arg(long = "async")]
    pub asynchronous: bool,
}

/// `fn invocations`.
#[derive(Debug, Clone, clap::Args)]
pub struct FnInvocations {
    #[command(flatten)]
    pub name: NameArg,
    /// Show at most this many (the newest).
    #[arg(long)]
    pub limit: Option<u64>,
}

/// `fn invocation`.
#[derive(Debug, Clone, clap::Args)]
pub struct InvocationArg {
    /// The invocation id (as `fn test --async` or the 202 answer gave it).
    #[arg(value_name = "ID")]
    pub id: String,
}

/// `fn logs`.
#[derive(Debug, Clone, clap::Args)]
pub struct FnLogs {
    #[command(flatten)]
    pub name: NameArg,
    /// Keep printing new lines as they are written.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Print the last N lines.
    #[arg(long, default_value_t = 100)]
    pub tail: usize,
    /// Only this instance's lines.
    #[arg(long)]
    pub instance: Option<String>,
}

/// Runs an `fn` subcommand.
pub async fn run(ctx: &Ctx, command: FnCommand) -> anyhow::Result<()> {
    match command {
        FnCommand::Create(args) => create(ctx, args).await,
        FnCommand::Get(name) => super::get(ctx, &name, table).await,
        FnCommand::List => super::list(ctx, table).await,
        FnCommand::Update(args) => update(ctx, args).await,
        FnCommand::Delete(name) => delete(ctx, name.get()?).await,
        FnCommand::Test(args) if args.asynchronous => invoke_async(ctx, args).await,
        FnCommand::Test(args) => test(ctx, args).await,
        FnCommand::Invocations(args) => invocations(ctx, args).await,
        FnCommand::Invocation(args) => invocation(ctx, args).await,
        FnCommand::Logs(args) => logs(ctx, args).await,
        FnCommand::Pods(name) => super::pods(ctx, Kind::Function, &name).await,
        FnCommand::History(name) => history(ctx, name.get()?).await,
        FnCommand::Rollback(args) => rollback(ctx, &args).await,
    }
}

fn resource_version(value: &serde_json::Value) -> Option<String> {
    value["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_string)
}

/// A new package owned by `function`, created from code flags; returns its name and resource
/// version.
async fn create_owned_package(
    ctx: &Ctx,
    function: &str,
    env: &str,
    code: &FnCode,
    buildcmd: Option<&str>,
) -> anyhow::Result<(String, Option<String>)> {
    let paths = code.paths();
    let build = wants_build(ctx, env, &paths, buildcmd).await?;
    let code = package_code(&ctx.client, &paths, build).await?;
    let name = generated_name(function);
    let mut spec = PackageSpec {
        environment: NamedRef {
            name: env.to_string(),
            namespace: ctx.namespace().to_string(),
        },
        buildcmd: buildcmd
            .map(str::to_string)
            .filter(|c| !c.trim().is_empty()),
        ..PackageSpec::default()
    };
    set_code(&mut spec, code);
    let mut package: Package = ctx.resource(&name, spec);
    package
        .metadata
        .annotations
        .insert(OWNER_ANNOTATION.to_string(), function.to_string());
    let created = super::create(ctx, &package).await?;
    Ok((name, resource_version(&created)))
}

fn check_code_flags(code: &FnCode, buildcmd: Option<&str>) -> anyhow::Result<()> {
    if buildcmd.is_some() && code.src.is_none() {
        return Err(usage("--buildcmd builds a source archive: it needs --src"));
    }
    Ok(())
}

async fn create(ctx: &Ctx, args: FnCreate) -> anyhow::Result<()> {
    let name = args.name.as_str();
    super::check_name(name)?;
    check_code_flags(&args.code, args.buildcmd.as_deref())?;
    if !args.code.paths().any() && args.code.pkg.is_none() {
        return Err(usage("one of --code, --src, --deploy or --pkg is required"));
    }
    if args.url.is_none() && args.prefix.is_none() && (!args.methods.is_empty() || args.keepprefix)
    {
        return Err(usage(
            "--method and --keepprefix describe a route: give --url or --prefix too",
        ));
    }
    let env = match (&args.env, &args.code.pkg) {
        (Some(env), _) => env.clone(),
        (None, Some(pkg)) => {
            super::check_name(pkg)?;
            let package = ctx
                .client
                .get::<PackageSpec>(pkg)
                .await
                .with_context(|| format!("looking up package '{pkg}'"))?;
            package.spec.environment.name
        }
        (None, None) => {
            return Err(usage(
                "--env is required: the environment the function runs in",
            ));
        }
    };

    // Build and check everything before writing anything.
    let package_name = args
        .code
        .pkg
        .clone()
        .unwrap_or_else(|| generated_name(name));
    let mut spec = FunctionSpec::new(&env, &package_name, "");
    spec.environment.namespace = ctx.namespace().to_string();
    spec.package.packageref.namespace = ctx.namespace().to_string();
    args.settings.apply(&mut spec);
    let mut function = ctx.resource(name, spec);
    let what = || format!("creating function '{name}'");
    function
        .validate()
        .map_err(ClientError::from)
        .with_context(what)?;
    let route: Option<HttpTrigger> = if args.url.is_some() || args.prefix.is_some() {
        let spec = super::route::route_spec(
            name,
            args.url.as_deref(),
            args.prefix.as_deref(),
            args.keepprefix,
            &args.methods,
            None,
        );
        let mut route: HttpTrigger = ctx.resource(&generated_name(name), spec);
        // Owned like the package: `fn delete` removes it with the function.
        route
            .metadata
            .annotations
            .insert(OWNER_ANNOTATION.to_string(), name.to_string());
        route
            .validate()
            .map_err(ClientError::from)
            .with_context(|| format!("creating the route of function '{name}'"))?;
        Some(route)
    } else {
        None
    };
    if args.spec {
        return write_spec(ctx, &args, &env, &function, route.as_ref());
    }
    if ctx
        .client
        .find::<FunctionSpec>(name)
        .await
        .with_context(what)?
        .is_some()
    {
        return Err(anyhow::anyhow!(
            "function '{name}' already exists in namespace '{}': use `kappa fn update`",
            ctx.namespace()
        ))
        .with_context(what);
    }

    let owned_package = if args.code.pkg.is_none() {
        let (pkg, rv) =
            create_owned_package(ctx, name, &env, &args.code, args.buildcmd.as_deref()).await?;
        function.spec.package.packageref.name = pkg.clone();
        function.spec.package.packageref.resourceversion = rv;
        Some(pkg)
    } else {
        None
    };
    let created = match super::create(ctx, &function).await {
        Ok(created) => created,
        Err(e) => {
            if let Some(pkg) = &owned_package
                && let Err(cleanup) = ctx.client.delete(Kind::Package, pkg, true).await
            {
                tracing::warn!(package = %pkg, error = %cleanup, "could not delete the package created for the function");
            }
            return Err(e);
        }
    };
    super::report(ctx, Kind::Function, name, "created", &created)?;
    if let Some(route) = route {
        let created = super::create(ctx, &route).await?;
        if ctx.output.is_none() || ctx.output == Some(OutputFormat::Table) {
            super::report(
                ctx,
                Kind::HttpTrigger,
                &route.metadata.name,
                "created",
                &created,
            )?;
        }
    }
    // A source package is being built: wait for it (the log and exit code 1 on failure; the
    // function and route stay, so a fixed source can follow with `kappa fn update`).
    wait_if_building(ctx, &function.spec.package.packageref.name).await
}

async fn update(ctx: &Ctx, args: FnUpdate) -> anyhow::Result<()> {
    let name = args.name.as_str();
    super::check_name(name)?;
    check_code_flags(&args.code, args.buildcmd.as_deref())?;
    let what = || format!("updating function '{name}'");
    let current = ctx
        .client
        .get::<FunctionSpec>(name)
        .await
        .with_context(what)?;
    let env = args
        .env
        .clone()
        .unwrap_or_else(|| current.spec.environment.name.clone());
    let old_package = current.spec.package.packageref.name.clone();

    // The package the function should point at afterwards, with its resource version.
    let mut new_package: Option<(String, Option<String>)> = None;
    let mut created_package = None;
    if let Some(pkg) = &args.code.pkg {
        super::check_name(pkg)?;
        new_package = Some((pkg.clone(), None));
    } else if args.code.paths().any() || args.env.is_some() {
        let owned = ctx
            .client
            .find::<PackageSpec>(&old_package)
            .await
            .with_context(what)?
            .filter(|p| owned_by(p, name));
        match owned {
            Some(_) => {
                let code = if args.code.paths().any() {
                    let paths = args.code.paths();
                    let build = wants_build(ctx, &env, &paths, args.buildcmd.as_deref()).await?;
                    Some(package_code(&ctx.client, &paths, build).await?)
                } else {
                    None
                };
                let updated = super::update::<PackageSpec, _>(ctx, &old_package, |p| {
                    p.spec.environment.name = env.clone();
                    if let Some(code) = &code {
                        set_code(&mut p.spec, code.clone());
                        p.spec.buildcmd = args.buildcmd.clone().filter(|c| !c.trim().is_empty());
                    }
                    Ok(())
                })
                .await?;
                new_package = Some((old_package.clone(), resource_version(&updated)));
            }
            None if args.code.paths().any() => {
                let created =
                    create_owned_package(ctx, name, &env, &args.code, args.buildcmd.as_deref())
                        .await?;
                created_package = Some(created.0.clone());
                new_package = Some(created);
            }
            None => {}
        }
    }

    let result = super::update::<FunctionSpec, _>(ctx, name, |f| {
        if let Some(env) = &args.env {
            f.spec.environment.name = env.clone();
        }
        if let Some((pkg, rv)) = &new_package {
            f.spec.package.packageref.name = pkg.clone();
            f.spec.package.packageref.resourceversion = rv.clone();
        }
        args.settings.apply(&mut f.spec);
        Ok(())
    })
    .await;
    let updated = match result {
        Ok(updated) => updated,
        Err(e) => {
            if let Some(pkg) = &created_package
                && let Err(cleanup) = ctx.client.delete(Kind::Package, pkg, true).await
            {
                tracing::warn!(package = %pkg, error = %cleanup, "could not delete the package created for the function");
            }
            return Err(e);
        }
    };
    super::report(ctx, Kind::Function, name, "updated", &updated)?;
    if new_package
        .as_ref()
        .is_some_and(|(pkg, _)| *pkg != old_package)
    {
        delete_owned_package(ctx, name, &old_package).await?;
    }
    if let Some((pkg, _)) = &new_package {
        wait_if_building(ctx, pkg).await?;
    }
    Ok(())
}

fn owned_by(package: &Package, function: &str) -> bool {
    package
        .metadata
        .annotations
        .get(OWNER_ANNOTATION)
        .map(String::as_str)
        == Some(function)
}

async fn delete(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let what = || format!("deleting function '{name}'");
    let current = ctx
        .client
        .get::<FunctionSpec>(name)
        .await
        .with_context(what)?;
    let deleted = ctx
        .client
        .delete(Kind::Function, name, false)
        .await
        .with_context(what)?;
    super::report(ctx, Kind::Function, name, "deleted", &deleted)?;
    delete_owned_routes(ctx, name).await?;
    delete_owned_package(ctx, name, &current.spec.package.packageref.name).await
}

/// `fn create --spec`: the function, its package (with ArchiveUploadSpecs for the code flags)
/// unless `--pkg` names one, and its route, into `specs/function-<name>.yaml`.
fn write_spec(
    ctx: &Ctx,
    args: &FnCreate,
    env: &str,
    function: &kappa_types::Resource<FunctionSpec>,
    route: Option<&HttpTrigger>,
) -> anyhow::Result<()> {
    let mut docs = Vec::new();
    if args.code.pkg.is_none() {
        let spec = PackageSpec {
            environment: NamedRef {
                name: env.to_string(),
                namespace: ctx.namespace().to_string(),
            },
            buildcmd: args.buildcmd.clone().filter(|c| !c.trim().is_empty()),
            ..PackageSpec::default()
        };
        docs.extend(crate::spec::package_docs(
            ctx.resource(&function.spec.package.packageref.name, spec),
            args.code.code.as_deref(),
            args.code.src.as_deref(),
            args.code.deploy.as_deref(),
        )?);
    }
    docs.push(crate::spec::resource_doc(function)?);
    if let Some(route) = route {
        docs.push(crate::spec::resource_doc(route)?);
    }
    let file = crate::spec::write_documents(
        std::path::Path::new(crate::spec::SPEC_DIR),
        &format!("function-{}", function.metadata.name),
        &docs,
    )?;
    crate::output::print_stdout(&format!(
        "function '{}' written to {} (apply it with `kappa spec apply`)\n",
        function.metadata.name,
        file.display()
    ))
}

/// Deletes the routes `fn create --url/--prefix` made for `function`.
async fn delete_owned_routes(ctx: &Ctx, function: &str) -> anyhow::Result<()> {
    let what = || format!("deleting the routes of function '{function}'");
    let routes = ctx
        .client
        .list::<HttpTriggerSpec>()
        .await
        .with_context(what)?;
    let owned = routes.iter().filter(|r| {
        r.metadata
            .annotations
            .get(OWNER_ANNOTATION)
            .map(String::as_str)
            == Some(function)
            && r.spec.functionref.function_names() == [function]
    });
    for route in owned {
        let name = &route.metadata.name;
        match ctx.client.delete(Kind::HttpTrigger, name, false).await {
            Ok(deleted) => {
                if ctx.output.is_none() || ctx.output == Some(OutputFormat::Table) {
                    super::report(ctx, Kind::HttpTrigger, name, "deleted", &deleted)?;
                }
            }
            Err(ClientError::Api { status: 404, .. }) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(what())),
        }
    }
    Ok(())
}

/// Deletes `package` when `function` owns it and no function uses it any more.
async fn delete_owned_package(ctx: &Ctx, function: &str, package: &str) -> anyhow::Result<()> {
    let what = || format!("deleting package '{package}' of function '{function}'");
    let Some(pkg) = ctx
        .client
        .find::<PackageSpec>(package)
        .await
        .with_context(what)?
    else {
        return Ok(());
    };
    if !owned_by(&pkg, function) {
        return Ok(());
    }
    let functions = ctx.client.list::<FunctionSpec>().await.with_context(what)?;
    if let Some(user) = functions
        .iter()
        .find(|f| f.spec.package.packageref.name == package)
    {
        tracing::info!(package, user = %user.metadata.name, "package still in use; kept");
        return Ok(());
    }
    match ctx.client.delete(Kind::Package, package, false).await {
        Ok(deleted) => {
            if ctx.output.is_none() || ctx.output == Some(OutputFormat::Table) {
                super::report(ctx, Kind::Package, package, "deleted", &deleted)?;
            }
            Ok(())
        }
        Err(ClientError::Api { status: 404, .. }) => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(what())),
    }
}

async fn test(ctx: &Ctx, args: FnTest) -> anyhow::Result<()> {
    let name = args.name.get()?;
    let method = Method::from_bytes(args.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| usage(format!("--method {:?} is not an HTTP method", args.method)))?;
    if args
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
    {
        return Err(usage(
            "-H Authorization cannot be sent with `kappa fn test`: the API uses that header for its own token",
        ));
    }
    let call = Invocation {
        method,
        subpath: args.subpath.clone(),
        query: args.query.clone(),
        headers: args.headers.clone(),
        body: args.body.clone(),
        timeout: args.timeout,
    };
    let what = || format!("invoking function '{name}'");
    let response = ctx.client.invoke(name, call).await.with_context(what)?;
    let status = response.status();
    if status.is_success() {
        let mut body = response.bytes_stream();
        let stdout = std::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                anyhow::anyhow!(
                    "reading the response of function '{name}': {}",
                    crate::client::root_cause(&e)
                )
            })?;
            // Locked per chunk: never across an await.
            let mut out = stdout.lock();
            if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(anyhow::Error::new(e).context("writing to stdout"));
            }
        }
        return Ok(());
    }
    let invocation = response
        .headers()
        .get("x-kappa-invocation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = read_bounded(response, MAX_TEST_ERROR_BODY)
        .await
        .unwrap_or_default();
    if serde_json::from_slice::<kappa_types::ErrorBody>(&bytes).is_ok() {
        return Err(
            anyhow::Error::new(error_from_body(status, &bytes, invocation)).context(what()),
        );
    }
    let mut stderr = std::io::stderr().lock();
    // Best effort: the error line below says what happened even if stderr is closed.
    let _ = stderr.write_all(&bytes);
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        let _ = stderr.write_all(b"\n");
    }
    match invocation {
        Some(id) => bail!("function '{name}' answered {status} (invocation {id})"),
        None => bail!("function '{name}' answered {status}"),
    }
}

/// `fn test --async`: queues the invocation and prints its id.
async fn invoke_async(ctx: &Ctx, args: FnTest) -> anyhow::Result<()> {
    let name = args.name.get()?;
    let method = Method::from_bytes(args.method.trim().to_ascii_uppercase().as_bytes())
        .map_err(|_| usage(format!("--method {:?} is not an HTTP method", args.method)))?;
    let mut query = args.query.clone();
    query.push(("async".into(), "true".into()));
    let call = Invocation {
        method,
        subpath: args.subpath.clone(),
        query,
        headers: args.headers.clone(),
        body: args.body.clone(),
        timeout: args.timeout,
    };
    let what = || format!("queueing an asynchronous invocation of function '{name}'");
    let response = ctx.client.invoke(name, call).await.with_context(what)?;
    let status = response.status();
    let bytes = read_bounded(response, MAX_TEST_ERROR_BODY)
        .await
        .unwrap_or_default();
    if status != reqwest::StatusCode::ACCEPTED {
        return Err(anyhow::Error::new(error_from_body(status, &bytes, None)).context(what()));
    }
    let body: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("reading the answer to {}", what()))?;
    match ctx.output {
        None | Some(OutputFormat::Table) => {
            let id = body["invocationId"].as_str().unwrap_or_default();
            output::print_stdout(&format!("{id}\n"))
        }
        Some(format) => output::print_value(format, &body),
    }
}

/// `fn invocations NAME`: ID, PHASE, ATTEMPTS, STATUS, AGE, DURATION, ERROR.
async fn invocations(ctx: &Ctx, args: FnInvocations) -> anyhow::Result<()> {
    let name = args.name.get()?;
    let items = ctx
        .client
        .invocations(name, args.limit)
        .await
        .with_context(|| format!("listing the invocations of function '{name}'"))?;
    match ctx.output.unwrap_or(OutputFormat::Table) {
        OutputFormat::Table => {
            let mut t = output::Table::new(&[
                "ID", "PHASE", "ATTEMPTS", "STATUS", "AGE", "DURATION", "ERROR",
            ]);
            for item in &items {
                let status = &item["status"];
                let history = status["history"].as_array();
                let total_ms: u64 = history
                    .map(|h| h.iter().filter_map(|a| a["durationMs"].as_u64()).sum())
                    .unwrap_or(0);
                t.row(vec![
                    item["metadata"]["name"].as_str().unwrap_or("-").to_string(),
                    status["phase"].as_str().unwrap_or("pending").to_string(),
                    status["attempts"].as_u64().unwrap_or(0).to_string(),
                    output::or_dash(status["response"]["status"].as_u64()),
                    output::age(item["spec"]["acceptedAt"].as_str()),
                    if history.is_some_and(|h| !h.is_empty()) {
                        output::format_duration(Duration::from_millis(total_ms))
                    } else {
                        "-".to_string()
                    },
                    output::or_dash(status["error"].as_str()),
                ]);
            }
            output::print_stdout(&t.to_string())
        }
        format => output::print_value(format, &serde_json::Value::Array(items)),
    }
}

/// `fn invocation ID`.
async fn invocation(ctx: &Ctx, args: InvocationArg) -> anyhow::Result<()> {
    let id = args.id.trim();
    if !kappa_types::is_invocation_id(id) {
        return Err(usage(format!(
            "{id:?} is not an invocation id: expected 32 lower-case hex digits"
        )));
    }
    let value = ctx
        .client
        .invocation(id)
        .await
        .with_context(|| format!("reading invocation {id}"))?;
    output::print_value(ctx.output.unwrap_or(OutputFormat::Yaml), &value)
}

/// Formats a log line: `2026-11-30T12:00:00.123456Z [instance-id] stdout: message`.
pub fn format_log_line(line: &LogLine) -> String {
    format!(
        "{} [{}] {}: {}",
        line.timestamp, line.instance, line.stream, line.message
    )
}

async fn logs(ctx: &Ctx, args: FnLogs) -> anyhow::Result<()> {
    let name = args.name.get()?;
    let what = || format!("reading the logs of function '{name}'");
    let response = ctx
        .client
        .logs(name, Some(args.tail), args.instance.as_deref(), args.follow)
        .await
        .with_context(what)?;
    let mut body = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut stdout = std::io::stdout();
    let emit = |stdout: &mut std::io::Stdout, raw: &[u8]| -> std::io::Result<()> {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim();
        if text.is_empty() {
            return Ok(());
        }
        let line = match serde_json::from_str::<LogLine>(text) {
            Ok(line) => format_log_line(&line),
            Err(_) => text.to_string(),
        };
        let mut out = stdout.lock();
        writeln!(out, "{line}")?;
        out.flush()
    };
    let closed = |e: &std::io::Error| e.kind() == std::io::ErrorKind::BrokenPipe;
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| anyhow::anyhow!("{}: {}", what(), crate::client::root_cause(&e)))?;
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            match emit(&mut stdout, &line) {
                Ok(()) => {}
                Err(e) if closed(&e) => return Ok(()),
                Err(e) => return Err(anyhow::Error::new(e).context("writing to stdout")),
            }
        }
        if buf.len() > MAX_LOG_LINE {
            bail!("{}: a line is longer than {MAX_LOG_LINE} bytes", what());
        }
    }
    match emit(&mut stdout, &buf) {
        Err(e) if !closed(&e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        _ => Ok(()),
    }
}

/// NAME, ENV, EXECUTOR, ENTRYPOINT, CONCURRENCY, RPP, TIMEOUT, AGE.
pub fn table(items: &[kappa_types::Function]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "ENV",
        "EXECUTOR",
        "ENTRYPOINT",
        "CONCURRENCY",
        "RPP",
        "TIMEOUT",
        "AGE",
    ]);
    for f in items {
        let s = &f.spec;
        let executor = match s.executor_type {
            ExecutorType::Poolmgr => "poolmgr",
            ExecutorType::Newdeploy => "newdeploy",
        };
        t.row(vec![
            f.metadata.name.clone(),
            s.environment.name.clone(),
            executor.into(),
            output::or_dash(Some(&s.package.function_name)),
            s.concurrency.to_string(),
            s.requests_per_pod.to_string(),
            format!("{}s", s.function_timeout),
            age(f.metadata.creation_timestamp.as_deref()),
        ]);
    }
    t
}

/// `fn history`: the kept versions, oldest first, the current one marked.
async fn history(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let (current, versions) = ctx.client.versions(name).await?;
    if let Some(format @ (OutputFormat::Json | OutputFormat::Yaml)) = ctx.output {
        let items: Vec<serde_json::Value> = versions.iter().map(|v| v.to_json()).collect();
        return output::print_value(
            format,
            &serde_json::json!({"function": name, "current": current, "items": items}),
        );
    }
    let mut t = Table::new(&[
        "VERSION", "CURRENT", "CREATED", "AGE", "CHECKSUM", "CHANGES",
    ]);
    for v in &versions {
        let created = v.metadata.creation_timestamp.clone().unwrap_or_default();
        t.row(vec![
            v.spec.version.to_string(),
            if current == Some(v.spec.version) {
                "*".to_string()
            } else {
                String::new()
            },
            created.clone(),
            age(v.metadata.creation_timestamp.as_deref()),
            v.spec
                .checksum()
                .map_or("-".to_string(), |c| c.chars().take(12).collect()),
            if v.spec.changes.is_empty() {
                "-".to_string()
            } else {
                v.spec.changes.join(",")
            },
        ]);
    }
    output::print_stdout(&t.to_string())
}

/// `fn rollback`: version N (default: the one before the current) becomes current.
async fn rollback(ctx: &Ctx, args: &FnRollback) -> anyhow::Result<()> {
    let name = args.name.get()?;
    let function = ctx.client.rollback(name, args.to).await?;
    let version = function
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(kappa_types::VERSION_ANNOTATION))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("?")
        .to_string();
    match ctx.output {
        Some(format @ (OutputFormat::Json | OutputFormat::Yaml)) => {
            output::print_value(format, &function)
        }
        _ => output::print_stdout(&format!(
            "function '{name}' rolled back to version {version}\n"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines() {
        let line = LogLine {
            timestamp: "2026-11-30T12:00:00.123456Z".into(),
            instance: "abc".into(),
            stream: "stdout".into(),
            message: "hello".into(),
        };
        assert_eq!(
            format_log_line(&line),
            "2026-11-30T12:00:00.123456Z [abc] stdout: hello"
        );
    }

    #[test]
    fn settings_apply_only_what_is_given() {
        let mut spec = FunctionSpec::new("python", "p", "");
        FnSettings {
            concurrency: Some(5),
            envvars: vec![("A".into(), "1".into())],
            ..FnSettings::default()
        }
        .apply(&mut spec);
        assert_eq!(spec.concurrency, 5);
        assert_eq!(spec.function_timeout, 60);
        assert_eq!(spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(spec.host_ports, None);
    }

    #[test]
    fn host_port_flags_set_clear_and_inherit() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            settings: FnSettings,
        }
        let mut spec = FunctionSpec::new("python", "p", "");
        let parse = |args: &[&str]| {
            let mut argv = vec!["x"];
            argv.extend_from_slice(args);
            <Cli as clap::Parser>::try_parse_from(argv).map(|c| c.settings)
        };
        parse(&["--host-port", "5432", "--host-port", "6379"])
            .unwrap()
            .apply(&mut spec);
        assert_eq!(spec.host_ports, Some(vec![5432, 6379]));
        parse(&["--no-host-ports"]).unwrap().apply(&mut spec);
        assert_eq!(spec.host_ports, Some(vec![]));
        parse(&["--env-host-ports"]).unwrap().apply(&mut spec);
        assert_eq!(spec.host_ports, None);
        assert!(parse(&["--host-port", "0"]).is_err());
        assert!(parse(&["--host-port", "70000"]).is_err());
        assert!(parse(&["--host-port", "1", "--no-host-ports"]).is_err());
    }
}
