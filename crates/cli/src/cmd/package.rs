//! `kappa pkg create|get|info|list|update|delete` (alias `package`).

use std::path::PathBuf;

use anyhow::Context as _;
use kappa_types::{Archive, ArchiveType, Kind, NamedRef, Package, PackageSpec};

use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::client::ClientError;
use crate::code::{
    CodePaths, OWNER_ANNOTATION, PackageCode, generated_name, name_stem, package_code,
};
use crate::output::{self, OutputFormat, Table, age, or_dash};

/// `kappa pkg ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum PkgCommand {
    /// Create a package from a file, a directory or a zip.
    Create(PkgCreate),
    /// Print a package (YAML by default).
    Get(NameArg),
    /// Show a package's archives, build status and build log.
    Info(NameArg),
    /// List packages.
    #[command(alias = "ls")]
    List,
    /// Replace a package's code or build command.
    Update(PkgUpdate),
    /// Delete a package (refused while functions use it, unless --force).
    #[command(alias = "rm")]
    Delete(DeleteArgs),
}

/// `pkg create`.
#[derive(Debug, Clone, clap::Args)]
pub struct PkgCreate {
    /// The package's name [default: <file name>-<6 random hex>].
    #[arg(long)]
    pub name: Option<String>,
    /// The environment that runs (and builds) it.
    #[arg(long)]
    pub env: String,
    #[command(flatten)]
    pub code: PkgCode,
    /// The build command (overrides the environment builder's).
    #[arg(long)]
    pub buildcmd: Option<String>,
}

/// The code of a new package: `--code`, or `--src` and/or `--deploy`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = true)]
pub struct PkgCode {
    /// One file, deployed under its own name.
    #[arg(long, conflicts_with = "deploy")]
    pub code: Option<PathBuf>,
    /// A source directory or zip: built when the environment has a builder or --buildcmd is
    /// given, otherwise deployed as is.
    #[arg(long, alias = "source", alias = "sourcearchive")]
    pub src: Option<PathBuf>,
    /// A directory, zip or file deployed as is.
    #[arg(long, alias = "deployarchive")]
    pub deploy: Option<PathBuf>,
}

/// `pkg update`.
#[derive(Debug, Clone, clap::Args)]
pub struct PkgUpdate {
    /// The package to change.
    #[arg(long)]
    pub name: String,
    /// Move it to another environment.
    #[arg(long)]
    pub env: Option<String>,
    /// One file, deployed under its own name.
    #[arg(long, conflicts_with = "deploy")]
    pub code: Option<PathBuf>,
    /// A source directory or zip.
    #[arg(long, alias = "source", alias = "sourcearchive")]
    pub src: Option<PathBuf>,
    /// A directory, zip or file deployed as is.
    #[arg(long, alias = "deployarchive")]
    pub deploy: Option<PathBuf>,
    /// The build command ("" clears it).
    #[arg(long)]
    pub buildcmd: Option<String>,
}

/// Whether `--src` in environment `env` is a source to build: `--buildcmd` was given or the
/// environment has a builder. Looks the environment up only when it matters.
pub async fn wants_build(
    ctx: &Ctx,
    env: &str,
    paths: &CodePaths,
    buildcmd: Option<&str>,
) -> anyhow::Result<bool> {
    if paths.src.is_none() || paths.deploy.is_some() {
        return Ok(false);
    }
    if buildcmd.is_some_and(|c| !c.trim().is_empty()) {
        return Ok(true);
    }
    match ctx.client.find::<kappa_types::EnvironmentSpec>(env).await {
        Ok(Some(environment)) => Ok(environment.spec.builder.is_some()),
        Ok(None) => Err(ClientError::Invalid {
            field: "spec.environment.name".into(),
            message: format!(
                "environment '{env}' not found in namespace '{}'",
                ctx.namespace()
            ),
        }
        .into()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("looking up environment '{env}'"))),
    }
}

/// Puts new code into a package spec: what is given replaces both archives.
pub fn set_code(spec: &mut PackageSpec, code: PackageCode) {
    spec.source = code.source;
    spec.deployment = code.deployment;
}

/// Runs a `pkg` subcommand.
pub async fn run(ctx: &Ctx, command: PkgCommand) -> anyhow::Result<()> {
    match command {
        PkgCommand::Create(args) => {
            super::check_name(&args.env).map_err(|_| {
                usage(format!(
                    "--env {:?} is not an environment name: expected a DNS-1123 label",
                    args.env
                ))
            })?;
            let paths = CodePaths {
                code: args.code.code.clone(),
                src: args.code.src.clone(),
                deploy: args.code.deploy.clone(),
            };
            let name = match &args.name {
                Some(name) => name.clone(),
                None => {
                    let first = paths
                        .code
                        .as_ref()
                        .or(paths.deploy.as_ref())
                        .or(paths.src.as_ref());
                    generated_name(&first.map(|p| name_stem(p)).unwrap_or_else(|| "pkg".into()))
                }
            };
            super::check_name(&name)?;
            let build = wants_build(ctx, &args.env, &paths, args.buildcmd.as_deref()).await?;
            let code = package_code(&ctx.client, &paths, build).await?;
            let mut spec = PackageSpec {
                environment: NamedRef {
                    name: args.env.clone(),
                    namespace: ctx.namespace().to_string(),
                },
                buildcmd: args.buildcmd.clone().filter(|c| !c.trim().is_empty()),
                ..PackageSpec::default()
            };
            set_code(&mut spec, code);
            let package: Package = ctx.resource(&name, spec);
            let created = super::create(ctx, &package).await?;
            super::report(ctx, Kind::Package, &name, "created", &created)
        }
        PkgCommand::Get(name) => super::get(ctx, &name, table).await,
        PkgCommand::Info(name) => info(ctx, &name).await,
        PkgCommand::List => super::list(ctx, table).await,
        PkgCommand::Update(args) => {
            super::check_name(&args.name)?;
            let paths = CodePaths {
                code: args.code.clone(),
                src: args.src.clone(),
                deploy: args.deploy.clone(),
            };
            let code = if paths.any() {
                let current = ctx
                    .client
                    .get::<PackageSpec>(&args.name)
                    .await
                    .with_context(|| format!("updating package '{}'", args.name))?;
                let env = args.env.clone().unwrap_or(current.spec.environment.name);
                let buildcmd = args.buildcmd.clone().or(current.spec.buildcmd);
                let build = wants_build(ctx, &env, &paths, buildcmd.as_deref()).await?;
                Some(package_code(&ctx.client, &paths, build).await?)
            } else {
                None
            };
            let updated = super::update::<PackageSpec, _>(ctx, &args.name, |package| {
                if let Some(env) = &args.env {
                    package.spec.environment.name = env.clone();
                }
                if let Some(cmd) = &args.buildcmd {
                    package.spec.buildcmd = Some(cmd.clone()).filter(|c| !c.trim().is_empty());
                }
                if let Some(code) = &code {
                    set_code(&mut package.spec, code.clone());
                }
                Ok(())
            })
            .await?;
            super::report(ctx, Kind::Package, &args.name, "updated", &updated)
        }
        PkgCommand::Delete(args) => super::delete(ctx, Kind::Package, &args).await,
    }
}

async fn info(ctx: &Ctx, name: &NameArg) -> anyhow::Result<()> {
    let name = name.get()?;
    let raw = ctx
        .client
        .get_raw(Kind::Package, name)
        .await
        .with_context(|| format!("getting package '{name}'"))?;
    if let Some(format @ (OutputFormat::Json | OutputFormat::Yaml)) = ctx.output {
        return output::print_value(format, &raw);
    }
    let package = crate::client::typed::<PackageSpec>(raw)?;
    output::print_stdout(&info_text(&package))
}

/// The `pkg info` text.
pub fn info_text(package: &Package) -> String {
    let status = serde_json::to_value(package.status.buildstatus)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<13}{v}\n"));
    line("Name:", package.metadata.name.clone());
    line("Namespace:", package.metadata.namespace.clone());
    line("Environment:", package.spec.environment.name.clone());
    line("Source:", archive_cell(package.spec.source.as_ref()));
    line(
        "Deployment:",
        archive_cell(package.spec.deployment.as_ref()),
    );
    line("Build cmd:", or_dash(package.spec.buildcmd.as_ref()));
    line("Status:", status);
    line(
        "Updated:",
        or_dash(package.status.last_update_timestamp.as_ref()),
    );
    if package.status.buildlog.is_empty() {
        out.push_str("Build log:   -\n");
    } else {
        out.push_str("Build log:\n");
        for l in package.status.buildlog.lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// An archive, briefly: `archive://sha256/<hex> (hello.py)` or `literal, 1234 bytes`.
pub fn archive_cell(archive: Option<&Archive>) -> String {
    let Some(a) = archive else {
        return "-".into();
    };
    let base = match a.kind {
        ArchiveType::Url => a.url.clone().unwrap_or_default(),
        ArchiveType::Literal => {
            let b64 = a.literal.as_deref().unwrap_or_default().len();
            format!("literal, about {} bytes", b64 / 4 * 3)
        }
    };
    match &a.filename {
        Some(f) => format!("{base} ({f})"),
        None => base,
    }
}

/// NAME, ENV, STATUS, FUNCTION (the owner, for packages `fn create` made), AGE.
pub fn table(items: &[Package]) -> Table {
    let mut t = Table::new(&["NAME", "ENV", "STATUS", "FUNCTION", "AGE"]);
    for package in items {
        let status = serde_json::to_value(package.status.buildstatus)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string));
        t.row(vec![
            package.metadata.name.clone(),
            package.spec.environment.name.clone(),
            or_dash(status),
            or_dash(package.metadata.annotations.get(OWNER_ANNOTATION)),
            age(package.metadata.creation_timestamp.as_deref()),
        ]);
    }
    t
}
