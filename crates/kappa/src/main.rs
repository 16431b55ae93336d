//! `kappa`: the command-line tool of the Kappa serverless platform, in one executable.
//!
//! The verbs over the API (`env`, `fn`, `route`, `pkg`, `spec`, ...) are `kappa_cli`'s; this
//! binary adds what runs the platform: `kappa up` ([`up`], every role on this machine) and
//! `kappa server --role ...` ([`server`]), both assembled by `kappa_platform::Platform::build`,
//! the fetcher of Kubernetes function pods, and the sandbox helper every local instance
//! starts through.

mod flags;
mod server;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kappa_cli::{GlobalArgs, Verb};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Kappa: serverless functions, Fission style.
#[derive(Debug, Parser)]
// `version` only on `kappa` itself (`kappa --version`, `-V`): propagated to the subcommands it
// would swallow Fission's own `--version` flag (`env create --version 2`, the environment
// protocol version) and print the CLI's version instead.
#[command(name = "kappa", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole platform on this machine (API, store, pool manager, router, triggers,
    /// builder).
    Up(up::UpArgs),
    /// Run platform components (roles) on their own, as the Helm chart does.
    Server(server::ServerArgs),
    #[command(flatten)]
    Verb(Verb),
    /// Print a shell completion script: `source <(kappa completion bash)`.
    Completion(CompletionArgs),
    /// Run the fetcher of a Kubernetes function pod (its second container; see kappa-fetcher).
    Fetcher(FetcherArgs),
    /// Run a step of a Kubernetes builder pod (see kappa-kube's builds module).
    #[command(hide = true)]
    BuildStep(BuildStepArgs),
}

/// `kappa build-step fetch|upload`: a builder pod's step around the build command, configured
/// by the pod's environment (`KAPPA_API_URL`, `KAPPA_BUILD_TOKEN`, `KAPPA_BUILD_SOURCE`...).
#[derive(Debug, Clone, clap::Args)]
struct BuildStepArgs {
    /// fetch: place the source in /build/src; upload: store the result through the API.
    #[arg(value_parser = ["fetch", "upload"])]
    step: String,
    /// Where the step's report (or its error) is written: the container's termination message.
    #[arg(long, default_value = "/dev/termination-log", value_name = "FILE")]
    termination_log: PathBuf,
}

/// Runs a builder pod's step; its report or error goes to the termination log too.
async fn build_step(args: BuildStepArgs) -> anyhow::Result<()> {
    use kappa_kube::builds::{BuildStep, StepConfig, run_step};
    let step = if args.step == "fetch" {
        BuildStep::Fetch
    } else {
        BuildStep::Upload
    };
    let result = match StepConfig::from_vars(|name| std::env::var(name).ok()) {
        Ok(config) => run_step(step, &config).await,
        Err(e) => Err(e),
    };
    let message = match &result {
        Ok(report) => report.clone(),
        Err(e) => e.clone(),
    };
    if let Err(e) = std::fs::write(&args.termination_log, &message) {
        tracing::warn!(file = %args.termination_log.display(), error = %e, "could not write the termination message");
    }
    match result {
        Ok(report) => kappa_cli::output::print_stdout(&format!("{report}\n")),
        Err(e) => Err(anyhow::anyhow!(e)),
    }
}

/// `kappa completion SHELL`.
#[derive(Debug, Clone, clap::Args)]
struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

/// `kappa fetcher`: places a function's code in the pod's shared volumes and specializes the
/// runtime next to it when the pool manager asks (`POST /specialize`).
#[derive(Debug, Clone, clap::Args)]
struct FetcherArgs {
    /// Address to listen on.
    #[arg(long, env = "KAPPA_FETCHER_LISTEN", default_value = "0.0.0.0:8000")]
    listen: std::net::SocketAddr,
    /// The shared code volume.
    #[arg(long, env = "KAPPA_FETCHER_USERFUNC", default_value = "/userfunc")]
    userfunc: PathBuf,
    /// Where Secrets are written.
    #[arg(long, env = "KAPPA_FETCHER_SECRETS", default_value = "/secrets")]
    secrets: PathBuf,
    /// Where ConfigMaps are written.
    #[arg(long, env = "KAPPA_FETCHER_CONFIGS", default_value = "/configs")]
    configs: PathBuf,
    /// The runtime container's URL.
    #[arg(
        long,
        env = "KAPPA_FETCHER_RUNTIME_URL",
        default_value = "http://127.0.0.1:8888"
    )]
    runtime_url: String,
    /// The token `POST /specialize` requires (the pool manager puts each pod's own in its
    /// fetcher container). Needed unless --specialize-from is given.
    #[arg(
        long = "fetcher-token",
        env = "KAPPA_FETCHER_TOKEN",
        hide_env_values = true
    )]
    fetcher_token: Option<String>,
    /// Largest archive accepted, in bytes.
    #[arg(long, env = "KAPPA_FETCHER_MAX_ARCHIVE_BYTES", default_value_t = 512 << 20)]
    max_archive_bytes: u64,
    /// Specialize on start from this fetch request (JSON; a `newdeploy` pod's mounted Secret)
    /// instead of waiting for `POST /specialize`. Ready only once specialized; a definitive
    /// failure is written to --termination-log and exits non-zero.
    #[arg(long, env = "KAPPA_SPECIALIZE_FROM", value_name = "FILE")]
    specialize_from: Option<PathBuf>,
    /// Where a failed start-up specialization's message is written (Kubernetes reports it as
    /// the container's termination message).
    #[arg(
        long,
        env = "KAPPA_TERMINATION_LOG",
        default_value = "/dev/termination-log",
        value_name = "FILE"
    )]
    termination_log: PathBuf,
    /// How long transient start-up failures (runtime not up yet, download connection errors)
    /// are retried, in seconds.
    #[arg(long, env = "KAPPA_SPECIALIZE_RETRY_SECS", default_value_t = 300)]
    specialize_retry_secs: u64,
}

/// Runs the fetcher until SIGTERM or Ctrl-C.
async fn fetcher(args: FetcherArgs, token: Option<String>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = kappa_fetcher::FetcherConfig {
        userfunc: args.userfunc,
        secrets: args.secrets,
        configs: args.configs,
        runtime_url: args.runtime_url.trim_end_matches('/').to_string(),
        api_token: token,
        specialize_token: kappa_core::TokenCheck::optional(args.fetcher_token.as_deref()),
        max_archive_bytes: args.max_archive_bytes,
        ..kappa_fetcher::FetcherConfig::in_pod()
    };
    let startup = args.specialize_from.map(|file| kappa_fetcher::Startup {
        termination_log: args.termination_log,
        retry_for: std::time::Duration::from_secs(args.specialize_retry_secs),
        ..kappa_fetcher::Startup::new(file)
    });
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => None } } => {}
        }
        stop.cancel();
    });
    kappa_fetcher::run(args.listen, config, startup, shutdown)
        .await
        .with_context(|| format!("fetcher on {}", args.listen))
}

fn main() -> ExitCode {
    // The kappa executable is also the sandbox's helper (monitor and init of each instance);
    // that must run before anything else starts, threads included.
    if let Some(code) = kappa_sandbox::run_if_requested() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    let telemetry = match init_tracing(&cli) {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli));
    drop(runtime);
    // Flushes the last batched spans (the exporter's client runs on its own thread).
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => kappa_cli::report_error(&e),
    }
}

/// Logging to stderr, plus OpenTelemetry trace export for the servers (`up`, `server`) when the
/// `OTEL_*` variables name an endpoint (`kappa_telemetry`, docs/observability.md).
fn init_tracing(
    cli: &Cli,
) -> Result<Option<kappa_telemetry::Telemetry>, kappa_telemetry::TelemetryError> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    // `kappa up` is a server: it logs at info by default. Commands are quiet unless -v.
    let base = match (&cli.command, cli.global.verbose) {
        (Command::Up(_), 0) => "info",
        (Command::Server(_), 0) => "info",
        (Command::Fetcher(_), 0) => "info",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(base));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let service = match &cli.command {
        Command::Up(_) => Some("kappa"),
        Command::Server(_) => Some("kappa-server"),
        _ => None,
    };
    let otel = match service {
        Some(service) => kappa_telemetry::init(service)?,
        None => None,
    };
    let (layer, telemetry) = match otel {
        Some((layer, telemetry)) => (Some(layer), Some(telemetry)),
        None => (None, None),
    };
    // A second initialisation (e.g. by `up`) is harmless: the first one wins.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(layer)
        .try_init();
    Ok(telemetry)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Server(args) => server::run(args).await,
        Command::Completion(args) => completion(args.shell),
        Command::Fetcher(args) => fetcher(args, cli.global.token.clone()).await,
        Command::BuildStep(args) => build_step(args).await,
        Command::Verb(verb) => kappa_cli::run(cli.global, verb).await,
    }
}

/// `kappa completion SHELL`: the completion script on stdout.
fn completion(shell: clap_complete::Shell) -> anyhow::Result<()> {
    use clap::CommandFactory as _;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "kappa", &mut script);
    kappa_cli::output::print_stdout(&String::from_utf8_lossy(&script))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use kappa_cli::output::OutputFormat;
    use kappa_cli::{cmd, output_format};

    fn output_is_a_file(command: &Command) -> bool {
        matches!(command, Command::Verb(verb) if kappa_cli::output_is_a_file(verb))
    }

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn aliases_and_globals_parse() {
        let cli =
            Cli::try_parse_from(["kappa", "function", "list", "-n", "dev", "-o", "json"]).unwrap();
        assert_eq!(cli.global.namespace, "dev");
        assert_eq!(cli.global.output.as_deref(), Some("json"));
        let cli = Cli::try_parse_from(["kappa", "ht", "create", "--function", "f", "--url", "/x"])
            .unwrap();
        assert!(matches!(cli.command, Command::Verb(Verb::Route(_))));
        // Both the positional and the flag form of a name.
        Cli::try_parse_from(["kappa", "fn", "get", "hello"]).unwrap();
        Cli::try_parse_from(["kappa", "fn", "get", "--name", "hello"]).unwrap();
        assert!(Cli::try_parse_from(["kappa", "fn", "get"]).is_err());
        // --url and --prefix exclude each other.
        assert!(
            Cli::try_parse_from([
                "kappa",
                "route",
                "create",
                "--function",
                "f",
                "--url",
                "/a",
                "--prefix",
                "/b"
            ])
            .is_err()
        );
        // --code and --src exclude each other.
        assert!(
            Cli::try_parse_from([
                "kappa", "fn", "create", "--name", "f", "--env", "e", "--code", "a", "--src", "b"
            ])
            .is_err()
        );
    }

    /// Every command path below `kappa` (`["env", "create"]`, ...).
    fn command_paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
        for sub in cmd.get_subcommands() {
            let mut path = prefix.to_vec();
            path.push(sub.get_name().to_string());
            out.push(path.clone());
            command_paths(sub, &path, out);
        }
    }

    #[test]
    fn no_subcommand_swallows_version_flags() {
        // clap's automatic --version/-V would print the CLI's version and exit 0 whatever the
        // user meant (Fission's `env create --version 2`): only `kappa` itself has it.
        let root = Cli::command();
        let mut paths = Vec::new();
        command_paths(&root, &[], &mut paths);
        assert!(paths.len() > 40, "{paths:?}");
        for path in &paths {
            for flag in ["--version", "-V"] {
                let mut argv = vec!["kappa".to_string()];
                argv.extend(path.iter().cloned());
                argv.push(flag.to_string());
                if let Err(e) = Cli::try_parse_from(&argv) {
                    assert_ne!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayVersion,
                        "{argv:?} prints the version"
                    );
                }
            }
        }
        let e = Cli::try_parse_from(["kappa", "--version"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion);
        // No Fission flag is spelled -h (help) or -V: the only short flags are ours.
        let mut shorts = std::collections::BTreeSet::new();
        for path in &paths {
            let mut cmd = Cli::command();
            cmd.build();
            let mut sub = &cmd;
            for name in path {
                sub = sub.find_subcommand(name).unwrap();
            }
            for arg in sub.get_arguments() {
                if let Some(short) = arg.get_short() {
                    assert!(short != 'V' || arg.get_id() == "version", "{path:?} -V");
                    shorts.insert(short);
                }
            }
        }
        assert!(shorts.contains(&'H') && shorts.contains(&'f'), "{shorts:?}");
    }

    /// Fission's documented command lines (its CLI reference), as a Fission user types them:
    /// each either parses to what it means, or is refused with an error naming the flag
    /// (never accepted and ignored).
    #[test]
    fn fission_command_lines() {
        let ok = |line: &str| {
            let argv: Vec<&str> = std::iter::once("kappa").chain(line.split(' ')).collect();
            Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{line}: {e}"))
        };
        let cli = ok(
            "env create --name py --image fission/python-env --version 2 --poolsize 3 \
                      --mincpu 100 --maxcpu 200 --minmemory 128 --maxmemory 256 --graceperiod 30 \
                      --builder fission/python-builder --buildcmd build --keeparchive",
        );
        match cli.command {
            Command::Verb(Verb::Env(cmd::env::EnvCommand::Create(c))) => {
                assert_eq!(c.flags.version, Some(2));
                assert_eq!(c.flags.poolsize, Some(3));
            }
            other => panic!("{other:?}"),
        }
        match ok("env update --name py --version 3 --period 10").command {
            Command::Verb(Verb::Env(cmd::env::EnvCommand::Update(c))) => {
                assert_eq!(c.flags.version, Some(3));
                assert_eq!(c.flags.graceperiod, Some(10));
            }
            other => panic!("{other:?}"),
        }
        for line in [
            "env get --name py",
            "env list",
            "env delete --name py --force",
            "fn create --name f --env py --code f.py --entrypoint main.main --executortype poolmgr \
             --minscale 1 --maxscale 2 --concurrency 5 --requestsperpod 2 --fntimeout 30 \
             --idletimeout 60 --specializationtimeout 120 --secret s --configmap c --mincpu 1 \
             --maxcpu 2 --minmemory 64 --maxmemory 128 --url /f --method GET",
            "fn create --name f --env py --src src.zip --entry main.main --buildcmd ./build.sh",
            "fn create --name f --env py --sourcearchive src.zip --entrypoint main.main",
            "fn create --name f --env py --deployarchive d.zip --entrypoint main.main",
            "fn create --name f --env py --deploy d.zip --con 3 --rpp 2 --ft 9 --st 120",
            "fn create --name f --pkg p --prefix /p",
            "fn update --name f --code f.py",
            "fn test --name f --method POST -H X-A:1 --body x --query a=b --timeout 5s --subpath /x",
            "fn logs --name f -f",
            "fn log --name f",
            "fn get --name f",
            "fn delete --name f",
            "pkg create --name p --env py --sourcearchive s.zip --buildcmd ./build.sh",
            "pkg create --env py --deployarchive d.zip",
            "pkg update --name p --src s.zip",
            "pkg getsrc --name p -o s.zip",
            "pkg getdeploy --name p --output d.zip",
            "pkg info --name p",
            "pkg rebuild --name p",
            "pkg list",
            "archive upload --name a.zip",
            "archive list",
            "archive get-url --id abc",
            "archive download --id abc -o a.zip",
            "archive delete --id abc",
            "ht create --name h --function f --url /users/{id} --method GET --method POST",
            "route create --function f --prefix /api --keepprefix",
            "mqt create --name m --function f --mqtype nats-jetstream --topic t --resptopic r \
             --errortopic e --maxretries 3 -c text/plain --metadata k=v --secret s",
            "tt create --name t --function f --cron @every_1m --method GET --subpath /x",
            "tt showschedule --cron 0_*_*_*_* --round 3",
            "completion bash",
            "completion zsh",
            "completion fish",
        ] {
            let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
            let line = line
                .replace("@every_1m", "@every 1m")
                .replace("0_*_*_*_*", "0 * * * *");
            // Values with spaces are one argument: split by hand around them.
            let argv: Vec<String> = match line.split_once("--cron ") {
                Some((before, after)) => {
                    let (cron, rest) = if let Some(rest) = after.strip_prefix("@every 1m") {
                        ("@every 1m", rest)
                    } else {
                        ("0 * * * *", after.trim_start_matches("0 * * * *"))
                    };
                    let mut v: Vec<String> = before.split_whitespace().map(String::from).collect();
                    v.push("--cron".into());
                    v.push(cron.into());
                    v.extend(rest.split_whitespace().map(String::from));
                    v
                }
                None => line.split_whitespace().map(String::from).collect(),
            };
            let argv: Vec<String> = std::iter::once("kappa".to_string()).chain(argv).collect();
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("{line}: {e}");
            }
        }
        // Fission flags Kappa does not have are refused, naming the flag.
        for line in [
            "env create --name py --image x --imagepullsecret s",
            "fn create --name f --env py --code f.py --onceonly",
            "fn logs --name f --recordcount 5",
            "mqt create --name m --function f --topic t --mqtkind keda",
        ] {
            let argv: Vec<&str> = std::iter::once("kappa").chain(line.split(' ')).collect();
            let e = Cli::try_parse_from(&argv).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::UnknownArgument, "{line}");
        }
    }

    #[test]
    fn output_is_a_format_or_the_download_file() {
        assert_eq!(
            output_format(Some("JSON")).unwrap(),
            Some(OutputFormat::Json)
        );
        let e = output_format(Some("a.zip")).unwrap_err();
        assert!(
            e.to_string().contains("expected table, yaml or json"),
            "{e}"
        );
        let cli = Cli::try_parse_from(["kappa", "pkg", "getsrc", "p", "-o", "a.zip"]).unwrap();
        assert!(output_is_a_file(&cli.command));
        let cli = Cli::try_parse_from(["kappa", "pkg", "list", "-o", "a.zip"]).unwrap();
        assert!(!output_is_a_file(&cli.command));
    }

    #[test]
    fn data_dir_is_shared_with_up() {
        let cli = Cli::try_parse_from(["kappa", "--data-dir", "/tmp/x", "version"]).unwrap();
        assert_eq!(cli.global.data_dir, Some(PathBuf::from("/tmp/x")));
        let cli = Cli::try_parse_from(["kappa", "up", "--data-dir", "/tmp/y"]).unwrap();
        match cli.command {
            Command::Up(args) => assert_eq!(args.data_dir, Some(PathBuf::from("/tmp/y"))),
            other => panic!("{other:?}"),
        }
    }
}
