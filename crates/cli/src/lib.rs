//! The verbs of `kappa`, the command-line tool of the Kappa serverless platform.
//!
//! Owns the Fission-like verbs over the API server's HTTP/JSON API (`env`, `fn`, `route`, `pkg`,
//! `spec`, `version`, ...), where to find the platform (`--api-url`/`KAPPA_API_URL`, else
//! `<data-dir>/client.json` written by `kappa up`), output formats and exit codes
//! (0 ok, 1 refused or failed, 2 usage, 3 platform unreachable). The CLI deliberately holds no
//! state of its own and never talks to the store, the router or the pool manager directly:
//! everything goes through the API, and this crate links none of the platform's servers. The
//! `kappa` binary (crate `kappa`) puts these verbs beside `kappa up` and `kappa server`
//! (`kappa-platform`).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod cmd;
mod code;
pub mod output;
pub mod spec;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::client::{Client, ClientError, ConnectOptions};
use crate::cmd::{Ctx, UsageError};
use crate::output::OutputFormat;

/// Flags every command accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// The namespace of the resources.
    #[arg(short = 'n', long, global = true, help_heading = "Global options", default_value = kappa_types::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Output format: table, yaml or json [default: table for lists, yaml for get]. For
    /// `pkg getsrc|getdeploy` and `archive download` (as in Fission): the file to write, `-`
    /// for stdout.
    #[arg(
        short = 'o',
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FORMAT|FILE"
    )]
    pub output: Option<String>,
    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short = 'v', long = "verbose", global = true, help_heading = "Global options", action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The API server's URL, e.g. http://127.0.0.1:8890 [default: from <data-dir>/client.json].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KAPPA_API_URL"
    )]
    pub api_url: Option<String>,
    /// The API's bearer token [default: from <data-dir>/client.json].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KAPPA_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Where `kappa up` keeps its data and client.json [default: $HOME/.kappa].
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "KAPPA_DATA_DIR"
    )]
    pub data_dir: Option<PathBuf>,
}

/// The verbs: everything `kappa` does over the API.
// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Environments: runtimes and their warm pools.
    #[command(subcommand, alias = "environment")]
    Env(cmd::env::EnvCommand),
    /// Functions: code in an environment, with scaling settings.
    #[command(subcommand, name = "fn", alias = "function")]
    Fn(cmd::function::FnCommand),
    /// Routes (HTTP triggers): paths on the public router that invoke functions.
    #[command(subcommand, alias = "httptrigger", alias = "ht")]
    Route(cmd::route::RouteCommand),
    /// Packages: the code of functions, as archives.
    #[command(subcommand, alias = "package")]
    Pkg(cmd::package::PkgCommand),
    /// Message-queue triggers: topics (NATS JetStream, Redis Streams) whose messages invoke functions.
    #[command(
        subcommand,
        name = "mqtrigger",
        alias = "mqt",
        alias = "messagequeuetrigger"
    )]
    Mqtrigger(cmd::mqtrigger::MqtCommand),
    /// Canary rollouts: shift a route's traffic to a new function step by step, rolled back
    /// automatically when it fails too often.
    #[command(subcommand)]
    Canary(cmd::canary::CanaryCommand),
    /// Time triggers: cron schedules that invoke functions.
    #[command(subcommand, name = "timetrigger", alias = "tt", alias = "timer")]
    Timetrigger(cmd::timetrigger::TtCommand),
    /// Secrets: key/values functions read from /secrets/<namespace>/<name>/<key> (never shown).
    #[command(subcommand)]
    Secret(cmd::secret::SecretCommand),
    /// Config maps: key/values functions read from /configs/<namespace>/<name>/<key>.
    #[command(subcommand, alias = "cm")]
    Configmap(cmd::configmap::ConfigMapCommand),
    /// Archives: the files packages are made of, in the API's content-addressed store.
    #[command(subcommand, alias = "ar")]
    Archive(cmd::archive::ArchiveCommand),
    /// Declarative deployment: apply a directory of YAML specs (Kappa's or Fission's format).
    #[command(subcommand)]
    Spec(spec::SpecCommand),
    /// Print the client's and the server's versions.
    Version,
}

/// Whether `-o` names a file for this command (Fission's `-o FILE` of the download verbs)
/// rather than an output format.
pub fn output_is_a_file(verb: &Verb) -> bool {
    matches!(
        verb,
        Verb::Pkg(cmd::package::PkgCommand::Getsrc(_) | cmd::package::PkgCommand::Getdeploy(_))
            | Verb::Archive(cmd::archive::ArchiveCommand::Download(_))
    )
}

/// The `-o` format, checked.
pub fn output_format(value: Option<&str>) -> anyhow::Result<Option<OutputFormat>> {
    use clap::ValueEnum as _;
    value
        .map(|v| {
            OutputFormat::from_str(v, true).map_err(|_| {
                cmd::usage(format!(
                    "-o/--output {v:?} is not an output format: expected table, yaml or json"
                ))
            })
        })
        .transpose()
}

pub async fn run(g: GlobalArgs, verb: Verb) -> anyhow::Result<()> {
    let (output, dest) = if output_is_a_file(&verb) {
        (None, g.output.clone())
    } else {
        (output_format(g.output.as_deref())?, None)
    };
    let connect = ConnectOptions {
        api_url: g.api_url.clone(),
        token: g.token.clone(),
        data_dir: g.data_dir.clone(),
    };
    let ctx = || -> anyhow::Result<Ctx> {
        cmd::check_name(&g.namespace).map_err(|_| {
            cmd::usage(format!(
                "--namespace {:?} is not a valid namespace: expected a DNS-1123 label",
                g.namespace
            ))
        })?;
        let endpoint = client::resolve(&connect)?;
        Ok(Ctx {
            client: Client::new(endpoint, &g.namespace)?,
            output,
        })
    };
    match verb {
        Verb::Env(c) => cmd::env::run(&ctx()?, c).await,
        Verb::Fn(c) => cmd::function::run(&ctx()?, c).await,
        Verb::Route(c) => cmd::route::run(&ctx()?, c).await,
        Verb::Pkg(c) => cmd::package::run(&ctx()?, c, dest.as_deref()).await,
        Verb::Archive(c) => cmd::archive::run(&ctx()?, c, dest.as_deref()).await,
        Verb::Mqtrigger(c) => cmd::mqtrigger::run(&ctx()?, c).await,
        Verb::Timetrigger(c) => cmd::timetrigger::run(ctx, c).await,
        Verb::Canary(c) => cmd::canary::run(&ctx()?, c).await,
        Verb::Secret(c) => cmd::secret::run(&ctx()?, c).await,
        Verb::Configmap(c) => cmd::configmap::run(&ctx()?, c).await,
        Verb::Spec(c) => spec::run(ctx, c).await,
        Verb::Version => version(&connect, &g.namespace, output).await,
    }
}

/// `kappa version`: the client's version always; the server's when it answers.
async fn version(
    connect: &ConnectOptions,
    namespace: &str,
    format: Option<OutputFormat>,
) -> anyhow::Result<()> {
    let client_version = env!("CARGO_PKG_VERSION");
    let server = match client::resolve(connect).and_then(|ep| Client::new(ep, namespace)) {
        Ok(client) => Some((client.endpoint().api_url.clone(), client.info().await)),
        Err(_) => None,
    };
    match format {
        Some(f @ (OutputFormat::Json | OutputFormat::Yaml)) => {
            let server = match &server {
                Some((url, Ok(info))) => serde_json::json!({
                    "apiUrl": url, "version": info.version, "routerUrl": info.router_url,
                }),
                Some((url, Err(e))) => serde_json::json!({"apiUrl": url, "error": e.to_string()}),
                None => serde_json::Value::Null,
            };
            output::print_value(
                f,
                &serde_json::json!({"client": {"version": client_version}, "server": server}),
            )
        }
        _ => {
            let mut text = format!("client: {client_version}\n");
            match server {
                Some((url, Ok(info))) => text.push_str(&format!("server: {} ({url})\n", info.version)),
                Some((url, Err(e))) => text.push_str(&format!("server: unknown ({url}: {e})\n")),
                None => text.push_str("server: unknown (no platform configured: run `kappa up` or set KAPPA_API_URL)\n"),
            }
            output::print_stdout(&text)
        }
    }
}

/// Prints `error: <chain>` (and `  field: <path>` when one is named) and picks the exit code.
pub fn report_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    let mut code = 1;
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<ClientError>() {
            if let Some(field) = e.field() {
                eprintln!("  field: {field}");
            }
            if let ClientError::Api {
                invocation_id: Some(id),
                ..
            } = e
            {
                eprintln!("  invocation: {id}");
            }
            code = e.exit_code();
            break;
        }
        if cause.downcast_ref::<UsageError>().is_some() {
            code = 2;
            break;
        }
    }
    ExitCode::from(code)
}
