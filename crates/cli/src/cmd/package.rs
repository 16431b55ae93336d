//! `kappa pkg create|get|info|list|update|delete` (alias `package`).

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use kappa_types::{Archive, ArchiveType, BuildStatus, Kind, NamedRef, Package, PackageSpec};

use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::client::{ClientError, encode_segment, error_from_response};
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
    /// Build a source package again (a failed build, or to pick up new dependency versions).
    Rebuild(NameArg),
    /// Delete a package (refused while functions use it, unless --force).
    #[command(alias = "rm")]
    Delete(DeleteArgs),
    /// Download a package's source archive into -o FILE (or to stdout).
    Getsrc(NameArg),
    /// Download a package's deployment archive into -o FILE (or to stdout).
    Getdeploy(NameArg),
}

/// `pkg create`.
#[derive(Debug, Clone, clap::Args)]
pub struct PkgCreate {
    /// Write the YAML into specs/ (for `kappa spec apply`) instead of creating it.
    #[arg(long)]
    pub spec: bool,
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
    // A requirements.txt or package.json at the root: the runtime's default build installs it.
    if let Some(src) = &paths.src
        && has_build_manifest(src).await?
    {
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

/// Whether the `--src` directory or zip holds a build manifest (`requirements.txt`,
/// `package.json`) at its root.
async fn has_build_manifest(src: &Path) -> anyhow::Result<bool> {
    let src = src.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let meta =
            std::fs::metadata(&src).with_context(|| format!("reading --src {}", src.display()))?;
        if meta.is_dir() {
            return Ok(kappa_archive::manifest_in_dir(&src).is_some());
        }
        // A zip's directory names its files; any other file has no manifest.
        Ok(kappa_archive::manifest_in_zip(&src).is_ok_and(|m| m.is_some()))
    })
    .await
    .context("reading --src was interrupted")?
}

/// Puts new code into a package spec: what is given replaces both archives.
pub fn set_code(spec: &mut PackageSpec, code: PackageCode) {
    spec.source = code.source;
    spec.deployment = code.deployment;
}

/// Runs a `pkg` subcommand; `dest` is the global `-o` given to `getsrc`/`getdeploy`.
pub async fn run(ctx: &Ctx, command: PkgCommand, dest: Option<&str>) -> anyhow::Result<()> {
    match command {
        PkgCommand::Getsrc(name) => get_archive(ctx, name.get()?, false, dest).await,
        PkgCommand::Getdeploy(name) => get_archive(ctx, name.get()?, true, dest).await,
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
            if args.spec {
                let spec = PackageSpec {
                    environment: NamedRef {
                        name: args.env.clone(),
                        namespace: ctx.namespace().to_string(),
                    },
                    buildcmd: args.buildcmd.clone().filter(|c| !c.trim().is_empty()),
                    ..PackageSpec::default()
                };
                let docs = crate::spec::package_docs(
                    ctx.resource(&name, spec),
                    paths.code.as_deref(),
                    paths.src.as_deref(),
                    paths.deploy.as_deref(),
                )?;
                let file = crate::spec::write_documents(
                    std::path::Path::new(crate::spec::SPEC_DIR),
                    &format!("package-{name}"),
                    &docs,
                )?;
                return crate::output::print_stdout(&format!(
                    "package '{name}' written to {}\n",
                    file.display()
                ));
            }
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
            super::report(ctx, Kind::Package, &name, "created", &created)?;
            if build {
                wait_for_build(ctx, &name).await?;
            }
            Ok(())
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
            let mut build = false;
            let code = if paths.any() {
                let current = ctx
                    .client
                    .get::<PackageSpec>(&args.name)
                    .await
                    .with_context(|| format!("updating package '{}'", args.name))?;
                let env = args.env.clone().unwrap_or(current.spec.environment.name);
                let buildcmd = args.buildcmd.clone().or(current.spec.buildcmd);
                build = wants_build(ctx, &env, &paths, buildcmd.as_deref()).await?;
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
            super::report(ctx, Kind::Package, &args.name, "updated", &updated)?;
            // A new source or build command makes the package build again.
            if build || args.buildcmd.is_some() {
                wait_if_building(ctx, &args.name).await?;
            }
            Ok(())
        }
        PkgCommand::Rebuild(name) => rebuild(ctx, name.get()?).await,
        PkgCommand::Delete(args) => super::delete(ctx, Kind::Package, &args).await,
    }
}

/// `pkg getsrc|getdeploy`: the package's source or deployment archive, as stored (a stored
/// archive streamed from the API, an inline one decoded).
async fn get_archive(
    ctx: &Ctx,
    name: &str,
    deploy: bool,
    dest: Option<&str>,
) -> anyhow::Result<()> {
    let which = if deploy { "deployment" } else { "source" };
    let package = ctx
        .client
        .get::<PackageSpec>(name)
        .await
        .with_context(|| format!("getting package '{name}'"))?;
    let archive = if deploy {
        package.spec.deployment.as_ref()
    } else {
        package.spec.source.as_ref()
    };
    let Some(archive) = archive else {
        let hint = if deploy && package.spec.source.is_some() {
            match package.status.buildstatus {
                BuildStatus::Failed => " (its build failed: see `kappa pkg info`)",
                BuildStatus::Pending | BuildStatus::Running => " yet (it is being built)",
                _ => "",
            }
        } else {
            ""
        };
        return Err(anyhow::anyhow!(
            "package '{name}' has no {which} archive{hint}"
        ));
    };
    match archive.kind {
        ArchiveType::Literal => {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(archive.literal.as_deref().unwrap_or_default())
                .with_context(|| {
                    format!("the {which} archive of package '{name}' is not base64")
                })?;
            super::archive::write_bytes(&bytes, dest)
        }
        ArchiveType::Url => match archive.stored_sha256() {
            Some(sha) => super::archive::download(ctx, sha, dest)
                .await
                .with_context(|| format!("downloading the {which} archive of package '{name}'")),
            None => Err(anyhow::anyhow!(
                "the {which} archive of package '{name}' is at {}, outside Kappa: download it from there",
                archive.url.as_deref().unwrap_or("an empty URL")
            )),
        },
    }
}

/// How often the CLI looks at a package while its build runs.
const BUILD_POLL: Duration = Duration::from_millis(250);
/// How long a package may stay `pending` without any sign of a builder (a builder marks a
/// queued package in its log and a started one `running` at once) before the CLI stops waiting.
const BUILDER_PICKUP: Duration = Duration::from_secs(5);
/// The longest the CLI waits for one build (the platform's build timeout is 10 minutes by
/// default; a build may first wait for a free slot).
const MAX_BUILD_WAIT: Duration = Duration::from_secs(60 * 60);

/// `pkg rebuild`: sets the package's build status back to `pending` (the builder builds it
/// afresh), then waits for the build.
async fn rebuild(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let what = || format!("rebuilding package '{name}'");
    let package = ctx
        .client
        .get::<PackageSpec>(name)
        .await
        .with_context(what)?;
    if package.spec.source.is_none() {
        return Err(anyhow::anyhow!(
            "package '{name}' has no source archive: only source packages are built (give one with `kappa pkg update --name {name} --src DIR`)"
        ))
        .with_context(what);
    }
    let endpoint = ctx.client.endpoint();
    let url = format!(
        "{}/v1/packages/{}/status",
        endpoint.api_url,
        encode_segment(name)
    );
    let body = serde_json::json!({
        "metadata": { "resourceVersion": package.metadata.resource_version },
        "status": {
            "buildstatus": "pending",
            "buildlog": "",
            "lastUpdateTimestamp": chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
    });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let mut request = http
        .put(url)
        .query(&[("namespace", ctx.namespace())])
        .json(&body);
    if let Some(token) = &endpoint.token {
        request = request.bearer_auth(token);
    }
    let response = request
        .send()
        .await
        .map_err(|e| ClientError::Transport(format!("PUT package status: {e}")))
        .with_context(what)?;
    if !response.status().is_success() {
        return Err(anyhow::Error::new(error_from_response(response).await).context(what()));
    }
    if ctx.output.is_none() || ctx.output == Some(OutputFormat::Table) {
        output::print_stdout(&format!("package '{name}' queued for a rebuild\n"))?;
    }
    wait_for_build(ctx, name).await
}

/// Waits for the build of package `name`: a spinner on a terminal (plain progress lines
/// otherwise), on stderr. On failure prints the build log and fails (exit code 1). Stops
/// waiting, with a warning, when no builder shows any sign of taking the package.
pub async fn wait_for_build(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
    let tty = std::io::stderr().is_terminal();
    let started = tokio::time::Instant::now();
    let mut last: Option<BuildStatus> = None;
    let mut frame = 0usize;
    let mut next_poll = started;
    let clear = |tty: bool| {
        if tty {
            eprint!("\r\x1b[2K");
        }
    };
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_poll {
            next_poll = now + BUILD_POLL;
            let package = ctx
                .client
                .get::<PackageSpec>(name)
                .await
                .with_context(|| format!("waiting for the build of package '{name}'"))?;
            let status = package.status.buildstatus;
            if last != Some(status)
                && !tty
                && matches!(status, BuildStatus::Pending | BuildStatus::Running)
            {
                eprintln!("package '{name}': build {}", status_word(status));
            }
            last = Some(status);
            match status {
                BuildStatus::Succeeded | BuildStatus::None => {
                    clear(tty);
                    eprintln!("package '{name}': build succeeded");
                    return Ok(());
                }
                BuildStatus::Failed => {
                    clear(tty);
                    eprintln!("package '{name}': build failed; its log:");
                    for line in package.status.buildlog.lines() {
                        eprintln!("  {line}");
                    }
                    return Err(anyhow::anyhow!(
                        "the build of package '{name}' failed (log above; `kappa pkg info {name}` shows it again, `kappa pkg rebuild {name}` retries)"
                    ));
                }
                BuildStatus::Pending
                    if package.status.buildlog.is_empty()
                        && started.elapsed() >= BUILDER_PICKUP =>
                {
                    clear(tty);
                    eprintln!(
                        "warning: no builder has taken package '{name}' within {} s (is the platform running its builder?); not waiting: `kappa pkg info {name}` shows its status",
                        BUILDER_PICKUP.as_secs()
                    );
                    return Ok(());
                }
                _ => {}
            }
            if started.elapsed() >= MAX_BUILD_WAIT {
                clear(tty);
                return Err(anyhow::anyhow!(
                    "package '{name}' is still building after {} s: `kappa pkg info {name}` shows its status",
                    MAX_BUILD_WAIT.as_secs()
                ));
            }
        }
        if tty {
            let status = last.map_or("pending", status_word);
            eprint!(
                "\r\x1b[2K{} building package '{name}' ({status}, {} s)",
                SPINNER[frame % SPINNER.len()],
                started.elapsed().as_secs()
            );
            let _ = std::io::stderr().flush();
            frame += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep_until(next_poll).await;
        }
    }
}

/// Reports the build of package `name` when it is a source package, waiting for it while it is
/// pending or running.
pub async fn wait_if_building(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let package = ctx
        .client
        .get::<PackageSpec>(name)
        .await
        .with_context(|| format!("looking up package '{name}'"))?;
    // A source package: report its build, waiting for it if it is not done (a fast build may
    // already have succeeded or failed).
    if package.spec.source.is_some() && package.status.buildstatus != BuildStatus::None {
        wait_for_build(ctx, name).await?;
    }
    Ok(())
}

fn status_word(status: BuildStatus) -> &'static str {
    match status {
        BuildStatus::Pending => "pending",
        BuildStatus::Running => "running",
        BuildStatus::Succeeded => "succeeded",
        BuildStatus::Failed => "failed",
        BuildStatus::None => "none",
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
