//! `kappa timetrigger create|get|list|update|delete|showschedule` (aliases `tt`, `timer`).

use kappa_types::{FunctionReference, Kind, TimeTrigger, TimeTriggerSpec};

use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::code::generated_name;
use crate::output::{Table, or_dash};

/// `kappa timetrigger ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TtCommand {
    /// Create a time trigger: a cron schedule that invokes a function.
    Create(TtCreate),
    /// Print a time trigger (YAML by default), with its status.
    Get(NameArg),
    /// List time triggers with their state and last run.
    #[command(alias = "ls")]
    List,
    /// Change the flags given; the rest stays as it is.
    Update(TtUpdate),
    /// Delete a time trigger.
    #[command(alias = "rm")]
    Delete(DeleteArgs),
    /// Print the next fire times of a cron expression (computed here, no platform needed).
    Showschedule(TtShow),
}

/// `timetrigger create`.
#[derive(Debug, Clone, clap::Args)]
pub struct TtCreate {
    /// Write the YAML into specs/ (for `kappa spec apply`) instead of creating it.
    #[arg(long)]
    pub spec: bool,
    /// The trigger's name [default: <function>-<6 random hex>].
    #[arg(long)]
    pub name: Option<String>,
    /// The function it invokes.
    #[arg(long)]
    pub function: String,
    /// 5 fields (minute hour day month weekday), 6 with leading seconds, or @every 30s,
    /// @hourly, @daily, ... (UTC).
    #[arg(long)]
    pub cron: String,
    /// HTTP method of the invocation.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Path the function receives.
    #[arg(long, default_value = "/")]
    pub subpath: String,
}

/// `timetrigger update`.
#[derive(Debug, Clone, clap::Args)]
pub struct TtUpdate {
    /// The trigger to change.
    #[arg(long)]
    pub name: String,
    /// The function it invokes.
    #[arg(long)]
    pub function: Option<String>,
    /// A new schedule.
    #[arg(long)]
    pub cron: Option<String>,
    /// HTTP method of the invocation.
    #[arg(long)]
    pub method: Option<String>,
    /// Path the function receives.
    #[arg(long)]
    pub subpath: Option<String>,
}

/// `timetrigger showschedule`.
#[derive(Debug, Clone, clap::Args)]
pub struct TtShow {
    /// The schedule to preview.
    #[arg(long)]
    pub cron: String,
    /// How many fire times to print.
    #[arg(long, default_value_t = 1)]
    pub round: usize,
}

fn normalize_subpath(path: &str) -> String {
    let path = path.trim();
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    }
}

/// Runs a `timetrigger` subcommand. `ctx` is only built for the commands that need the
/// platform.
pub async fn run(
    ctx: impl FnOnce() -> anyhow::Result<Ctx>,
    command: TtCommand,
) -> anyhow::Result<()> {
    match command {
        TtCommand::Showschedule(args) => show_schedule(&args),
        TtCommand::Create(args) => {
            let ctx = ctx()?;
            super::check_name(&args.function).map_err(|_| {
                usage(format!(
                    "--function {:?} is not a function name: expected a DNS-1123 label",
                    args.function
                ))
            })?;
            let name = match &args.name {
                Some(name) => name.clone(),
                None => generated_name(&args.function),
            };
            super::check_name(&name)?;
            let spec = TimeTriggerSpec {
                cron: args.cron.trim().to_string(),
                functionref: FunctionReference::name(&args.function),
                method: args.method.trim().to_ascii_uppercase(),
                subpath: normalize_subpath(&args.subpath),
            };
            let trigger: TimeTrigger = ctx.resource(&name, spec);
            if args.spec {
                return crate::spec::write_spec(&trigger);
            }
            let created = super::create(&ctx, &trigger).await?;
            super::report(&ctx, Kind::TimeTrigger, &name, "created", &created)
        }
        TtCommand::Get(name) => super::get(&ctx()?, &name, table).await,
        TtCommand::List => super::list(&ctx()?, table).await,
        TtCommand::Update(args) => {
            let ctx = ctx()?;
            super::check_name(&args.name)?;
            let updated = super::update::<TimeTriggerSpec, _>(&ctx, &args.name, |trigger| {
                let s = &mut trigger.spec;
                if let Some(function) = &args.function {
                    s.functionref = FunctionReference::name(function);
                }
                if let Some(cron) = &args.cron {
                    s.cron = cron.trim().to_string();
                }
                if let Some(method) = &args.method {
                    s.method = method.trim().to_ascii_uppercase();
                }
                if let Some(subpath) = &args.subpath {
                    s.subpath = normalize_subpath(subpath);
                }
                Ok(())
            })
            .await?;
            super::report(&ctx, Kind::TimeTrigger, &args.name, "updated", &updated)
        }
        TtCommand::Delete(args) => super::delete(&ctx()?, Kind::TimeTrigger, &args).await,
    }
}

/// The next `round` fire times of `cron` after now, one RFC 3339 (UTC) time per line.
fn show_schedule(args: &TtShow) -> anyhow::Result<()> {
    let schedule =
        kappa_types::Schedule::parse(&args.cron).map_err(|e| usage(format!("--cron: {e}")))?;
    if args.round == 0 || args.round > 1000 {
        return Err(usage("--round must be between 1 and 1000"));
    }
    let times = schedule.upcoming(chrono::Utc::now(), args.round);
    let mut out = String::new();
    for t in times {
        out.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        out.push('\n');
    }
    crate::output::print_stdout(&out)
}

/// NAME, CRON, FUNCTION, METHOD, SUBPATH, LAST RUN, STATE, REASON.
pub fn table(items: &[TimeTrigger]) -> Table {
    let mut t = Table::new(&[
        "NAME", "CRON", "FUNCTION", "METHOD", "SUBPATH", "LAST RUN", "STATE", "REASON",
    ]);
    for trigger in items {
        let s = &trigger.spec;
        t.row(vec![
            trigger.metadata.name.clone(),
            s.cron.clone(),
            s.functionref.name.clone(),
            s.method.clone(),
            s.subpath.clone(),
            or_dash(trigger.status.last_fired_time.as_ref()),
            or_dash(Some(&trigger.status.state).filter(|v| !v.is_empty())),
            or_dash(Some(&trigger.status.reason).filter(|v| !v.is_empty())),
        ]);
    }
    t
}
