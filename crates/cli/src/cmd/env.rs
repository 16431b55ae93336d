//! `kappa env create|get|list|update|delete`.

use kappa_types::{Builder, Environment, EnvironmentSpec, Kind, PoolMode, PoolPolicy, Runtime};

use super::{Ctx, DeleteArgs, NameArg, ResourceFlags, usage};
use crate::output::{Table, age, or_dash};

/// `kappa env ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum EnvCommand {
    /// Create an environment (a runtime and its warm pool).
    Create(EnvCreate),
    /// Print an environment (YAML by default).
    Get(NameArg),
    /// List environments.
    #[command(alias = "ls")]
    List,
    /// Change the flags given; the rest stays as it is.
    Update(EnvUpdate),
    /// Delete an environment (refused while functions use it, unless --force).
    #[command(alias = "rm")]
    Delete(DeleteArgs),
    /// List the environment's instances: its warm pool and those specialized for its functions.
    #[command(alias = "instances")]
    Pods(NameArg),
}

/// `env create`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnvCreate {
    /// Write the YAML into specs/ (for `kappa spec apply`) instead of creating it.
    #[arg(long)]
    pub spec: bool,
    /// The environment's name.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub flags: EnvFlags,
}

/// `env update`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnvUpdate {
    /// The environment to change.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub flags: EnvFlags,
}

/// The settings of an environment; on update only those given change.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EnvFlags {
    /// The runtime: a built-in name (python, nodejs, binary) or a Fission environment image.
    #[arg(long)]
    pub image: Option<String>,
    /// An explicit command that starts a runtime-protocol server on $PORT (instead of --image).
    #[arg(long)]
    pub command: Option<String>,
    /// Warm generic instances kept ready [default: 3].
    #[arg(long)]
    pub poolsize: Option<u32>,
    /// How the pool is sized: fixed (exactly --poolsize, the default, as in Fission) or
    /// adaptive (follows demand between --pool-min and --pool-max, starting at --poolsize).
    #[arg(long, value_name = "MODE", value_parser = ["fixed", "adaptive"])]
    pub pool_policy: Option<String>,
    /// Adaptive pools: the fewest warm instances kept [default: 0].
    #[arg(long, value_name = "N")]
    pub pool_min: Option<u32>,
    /// Adaptive pools: the most warm instances kept [default: 20].
    #[arg(long, value_name = "N")]
    pub pool_max: Option<u32>,
    #[command(flatten)]
    pub resources: ResourceFlags,
    /// Most processes an instance may run.
    #[arg(long)]
    pub maxpids: Option<u64>,
    /// Seconds an instance gets to finish in-flight work before it is killed [default: 30].
    #[arg(long, alias = "period")]
    pub graceperiod: Option<u64>,
    /// The builder image or command that builds source packages.
    #[arg(long)]
    pub builder: Option<String>,
    /// The builder's default build command (e.g. "pip install -r requirements.txt").
    #[arg(long)]
    pub buildcmd: Option<String>,
    /// Keep deployment archives as files instead of extracting them (e.g. JVM jars).
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub keeparchive: Option<bool>,
    /// Whether instances may open connections to addresses outside the machine (local sandbox;
    /// default true where the platform provides egress).
    #[arg(long, value_name = "BOOL")]
    pub egress: Option<bool>,
    /// A port of the host's own loopback (127.0.0.1) the instances may connect to at the same
    /// port of theirs, e.g. a local database in development (repeatable; local sandbox only;
    /// on update, the ports given replace the environment's). Off by default.
    #[arg(long = "host-port", value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub host_ports: Vec<u16>,
    /// Update: allow no host ports any more.
    #[arg(long, conflicts_with = "host_ports")]
    pub no_host_ports: bool,
    /// Whether instances are forked from a template process (a zygote) instead of starting the
    /// runtime by exec (local backend, built-in Python runtime; default: the platform's
    /// `kappa up --zygote`).
    #[arg(long, value_name = "BOOL")]
    pub zygote: Option<bool>,
    /// The environment protocol version, as Fission's `--version`: 2 or 3 (Kappa speaks the v2
    /// protocol, `POST /v2/specialize`, for both); 1 is refused [default: 3].
    #[arg(long = "version", id = "env_version", value_name = "N")]
    pub version: Option<u32>,
}

impl EnvFlags {
    /// Refuses what Kappa cannot honour, naming the flag the user typed.
    fn check(&self) -> anyhow::Result<()> {
        match self.version {
            None | Some(2 | 3) => Ok(()),
            Some(1) => Err(usage(
                "--version 1 is not supported: it is Fission's v1 environment protocol \
                 (POST /specialize loading the single file /userfunc/user), and Kappa speaks v2 \
                 (POST /v2/specialize with filepath and functionName); use --version 2 or 3 \
                 (every Fission environment image of version 2 or later works)",
            )),
            Some(n) => Err(usage(format!(
                "--version {n} is not an environment protocol version: expected 2 or 3 \
                 (1 is Fission's legacy protocol, which Kappa does not speak)"
            ))),
        }
    }

    fn apply(&self, spec: &mut EnvironmentSpec) {
        if let Some(version) = self.version {
            spec.version = version;
        }
        if let Some(image) = &self.image {
            spec.runtime.image = image.clone();
        }
        if let Some(command) = &self.command {
            spec.runtime.command = Some(command.clone()).filter(|c| !c.trim().is_empty());
        }
        if let Some(poolsize) = self.poolsize {
            spec.poolsize = poolsize;
        }
        match self.pool_policy.as_deref() {
            Some("fixed") => spec.pool_policy = None,
            Some(_) => {
                spec.pool_policy
                    .get_or_insert_with(PoolPolicy::default)
                    .mode = PoolMode::Adaptive;
            }
            None => {}
        }
        if self.pool_min.is_some() || self.pool_max.is_some() {
            // A fixed pool with bounds is refused by validation, naming spec.poolPolicy.min/max.
            let policy = spec.pool_policy.get_or_insert_with(PoolPolicy::default);
            if let Some(min) = self.pool_min {
                policy.min = Some(min);
            }
            if let Some(max) = self.pool_max {
                policy.max = Some(max);
            }
        }
        self.resources.apply(&mut spec.resources);
        match self.maxpids {
            Some(0) => spec.resources.limits.pids = None,
            Some(n) => spec.resources.limits.pids = Some(n),
            None => {}
        }
        if let Some(grace) = self.graceperiod {
            spec.termination_grace_period = grace;
        }
        if self.builder.is_some() || self.buildcmd.is_some() {
            let builder = spec.builder.get_or_insert_with(Builder::default);
            if let Some(image) = &self.builder {
                builder.image = image.clone();
            }
            if let Some(cmd) = &self.buildcmd {
                builder.command = cmd.clone();
            }
            if builder.image.trim().is_empty() && builder.command.trim().is_empty() {
                spec.builder = None;
            }
        }
        if let Some(keep) = self.keeparchive {
            spec.keeparchive = keep;
        }
        if let Some(egress) = self.egress {
            spec.egress = Some(egress);
        }
        if !self.host_ports.is_empty() {
            spec.host_ports = self.host_ports.clone();
        }
        if self.no_host_ports {
            spec.host_ports.clear();
        }
        if let Some(zygote) = self.zygote {
            spec.zygote = Some(zygote);
        }
    }
}

/// Runs an `env` subcommand.
pub async fn run(ctx: &Ctx, command: EnvCommand) -> anyhow::Result<()> {
    match command {
        EnvCommand::Create(args) => {
            super::check_name(&args.name)?;
            args.flags.check()?;
            let mut spec = EnvironmentSpec {
                runtime: Runtime::default(),
                ..EnvironmentSpec::default()
            };
            args.flags.apply(&mut spec);
            let env: Environment = ctx.resource(&args.name, spec);
            if args.spec {
                return crate::spec::write_spec(&env);
            }
            let created = super::create(ctx, &env).await?;
            super::report(ctx, Kind::Environment, &args.name, "created", &created)
        }
        EnvCommand::Get(name) => super::get(ctx, &name, table).await,
        EnvCommand::List => super::list(ctx, table).await,
        EnvCommand::Update(args) => {
            super::check_name(&args.name)?;
            args.flags.check()?;
            let updated = super::update::<EnvironmentSpec, _>(ctx, &args.name, |env| {
                args.flags.apply(&mut env.spec);
                Ok(())
            })
            .await?;
            super::report(ctx, Kind::Environment, &args.name, "updated", &updated)
        }
        EnvCommand::Delete(args) => super::delete(ctx, Kind::Environment, &args).await,
        EnvCommand::Pods(name) => super::pods(ctx, Kind::Environment, &name).await,
    }
}

/// NAME, IMAGE, BUILDER, POOLSIZE, MINCPU, MAXCPU, MINMEMORY, MAXMEMORY, AGE.
pub fn table(items: &[Environment]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "IMAGE",
        "BUILDER",
        "POOLSIZE",
        "MINCPU",
        "MAXCPU",
        "MINMEMORY",
        "MAXMEMORY",
        "AGE",
    ]);
    for env in items {
        let s = &env.spec;
        let image = if s.runtime.image.is_empty() {
            s.runtime.command.clone().unwrap_or_default()
        } else {
            s.runtime.image.clone()
        };
        let builder = s.builder.as_ref().map(|b| {
            if b.image.is_empty() {
                b.command.clone()
            } else {
                b.image.clone()
            }
        });
        t.row(vec![
            env.metadata.name.clone(),
            or_dash(Some(image)),
            or_dash(builder),
            match s.adaptive_pool() {
                Some((min, max)) => format!("auto {min}-{max}"),
                None => s.poolsize.to_string(),
            },
            or_dash(s.resources.requests.cpu.as_ref()),
            or_dash(s.resources.limits.cpu.as_ref()),
            or_dash(s.resources.requests.memory.as_ref()),
            or_dash(s.resources.limits.memory.as_ref()),
            age(env.metadata.creation_timestamp.as_deref()),
        ]);
    }
    t
}
