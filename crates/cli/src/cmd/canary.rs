//! `kappa canary create|get|list|update|delete`: Fission's CanaryConfig. The platform's canary
//! controller shifts the route's traffic to the new function step by step and rolls back on
//! its own when the new side fails too often (see docs/traffic.md).

use kappa_types::{CanaryConfig, CanaryConfigSpec, Kind};

use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::output::{Table, or_dash};

/// `kappa canary ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CanaryCommand {
    /// Start a canary: shift a route's traffic from --oldfunction to --newfunction.
    Create(CanaryCreate),
    /// Print a canary (YAML by default) with its status: weight, iteration, failure rates.
    Get(NameArg),
    /// List canaries with their state and current weight.
    #[command(alias = "ls")]
    List,
    /// Change the step, interval or threshold of a canary (the flags given).
    Update(CanaryUpdate),
    /// Delete a canary (the route keeps its current weights).
    #[command(alias = "rm")]
    Delete(DeleteArgs),
}

/// `canary create`.
#[derive(Debug, Clone, clap::Args)]
pub struct CanaryCreate {
    /// Write the YAML into specs/ (for `kappa spec apply`) instead of creating it.
    #[arg(long)]
    pub spec: bool,
    /// The canary's name.
    #[arg(long)]
    pub name: String,
    /// The route (HttpTrigger) whose traffic is shifted; it must route to --oldfunction.
    #[arg(long, alias = "httptrigger")]
    pub trigger: String,
    /// The function (or NAME@N version) traffic moves to.
    #[arg(long)]
    pub newfunction: String,
    /// The function (or NAME@N version) traffic moves from.
    #[arg(long)]
    pub oldfunction: String,
    /// Percentage points moved to the new function every interval.
    #[arg(long = "increment-step", default_value_t = 20)]
    pub increment_step: u32,
    /// Time between steps (e.g. 30s, 2m).
    #[arg(long = "increment-interval", default_value = "2m")]
    pub increment_interval: String,
    /// Roll back when more than this percentage of the new function's requests fail (5xx) in
    /// an interval.
    #[arg(long = "failure-threshold", default_value_t = 10)]
    pub failure_threshold: u32,
}

/// `canary update`.
#[derive(Debug, Clone, clap::Args)]
pub struct CanaryUpdate {
    /// The canary to change.
    #[arg(long)]
    pub name: String,
    /// Percentage points moved every interval.
    #[arg(long = "increment-step")]
    pub increment_step: Option<u32>,
    /// Time between steps.
    #[arg(long = "increment-interval")]
    pub increment_interval: Option<String>,
    /// Failure threshold in percent.
    #[arg(long = "failure-threshold")]
    pub failure_threshold: Option<u32>,
}

/// Runs a `canary` subcommand.
pub async fn run(ctx: &Ctx, command: CanaryCommand) -> anyhow::Result<()> {
    match command {
        CanaryCommand::Create(args) => {
            super::check_name(&args.name)?;
            for (flag, value) in [
                ("--newfunction", &args.newfunction),
                ("--oldfunction", &args.oldfunction),
            ] {
                kappa_types::validate_function_ref(flag, value).map_err(|_| {
                    usage(format!(
                        "{flag} {value:?} is not a function: expected a name, or NAME@N for version N"
                    ))
                })?;
            }
            let spec = CanaryConfigSpec {
                trigger: args.trigger.clone(),
                newfunction: args.newfunction.clone(),
                oldfunction: args.oldfunction.clone(),
                weightincrement: args.increment_step,
                duration: args.increment_interval.clone(),
                failurethreshold: args.failure_threshold,
                failure_type: "status-code".into(),
            };
            let canary: CanaryConfig = ctx.resource(&args.name, spec);
            if args.spec {
                return crate::spec::write_spec(&canary);
            }
            let created = super::create(ctx, &canary).await?;
            super::report(ctx, Kind::CanaryConfig, &args.name, "created", &created)
        }
        CanaryCommand::Get(name) => super::get(ctx, &name, table).await,
        CanaryCommand::List => super::list(ctx, table).await,
        CanaryCommand::Update(args) => {
            super::check_name(&args.name)?;
            let updated = super::update::<CanaryConfigSpec, _>(ctx, &args.name, |canary| {
                let s = &mut canary.spec;
                if let Some(step) = args.increment_step {
                    s.weightincrement = step;
                }
                if let Some(interval) = &args.increment_interval {
                    s.duration = interval.clone();
                }
                if let Some(threshold) = args.failure_threshold {
                    s.failurethreshold = threshold;
                }
                Ok(())
            })
            .await?;
            super::report(ctx, Kind::CanaryConfig, &args.name, "updated", &updated)
        }
        CanaryCommand::Delete(args) => super::delete(ctx, Kind::CanaryConfig, &args).await,
    }
}

/// NAME, TRIGGER, OLD, NEW, STEP, INTERVAL, THRESHOLD, STATUS, WEIGHT, ITERATION, REASON.
pub fn table(items: &[CanaryConfig]) -> Table {
    let mut t = Table::new(&[
        "NAME",
        "TRIGGER",
        "OLD",
        "NEW",
        "STEP",
        "INTERVAL",
        "THRESHOLD",
        "STATUS",
        "WEIGHT",
        "ITERATION",
        "REASON",
    ]);
    for canary in items {
        let s = &canary.spec;
        let st = &canary.status;
        t.row(vec![
            canary.metadata.name.clone(),
            s.trigger.clone(),
            s.oldfunction.clone(),
            s.newfunction.clone(),
            s.weightincrement.to_string(),
            s.duration.clone(),
            format!("{}%", s.failurethreshold),
            serde_json::to_value(st.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            format!("{}%", st.weight),
            st.iteration.to_string(),
            or_dash(st.reason.as_ref()),
        ]);
    }
    t
}
