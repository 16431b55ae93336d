//! `kappa configmap create|get|list|update|delete` (alias `cm`): plain-text key/values that
//! functions read from `/configs/<namespace>/<name>/<key>`. Same flags as `kappa secret`, but
//! values are shown.

use kappa_types::{ConfigMap, ConfigMapSpec, Kind};

use super::secret::{DataFlags, SecretUpdate};
use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::output::{Table, age};

/// `kappa configmap ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ConfigMapCommand {
    /// Create a config map from literals and files.
    Create(ConfigMapCreate),
    /// Print a config map (YAML by default).
    Get(NameArg),
    /// List config maps with their keys.
    #[command(alias = "ls")]
    List,
    /// Set (or with --remove, delete) keys; functions using the config map are rolled.
    Update(SecretUpdate),
    /// Delete a config map (refused while functions use it, unless --force).
    #[command(alias = "rm")]
    Delete(DeleteArgs),
}

/// `configmap create`.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigMapCreate {
    /// The config map's name.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub data: DataFlags,
}

/// Config map values are text: a file that is not UTF-8 belongs in a secret.
fn text(key: &str, value: Vec<u8>) -> anyhow::Result<String> {
    String::from_utf8(value).map_err(|_| {
        usage(format!(
            "the value of key {key:?} is not UTF-8 text: config maps hold text (use a secret for binary data)"
        ))
    })
}

/// Runs a `configmap` subcommand.
pub async fn run(ctx: &Ctx, command: ConfigMapCommand) -> anyhow::Result<()> {
    match command {
        ConfigMapCommand::Create(args) => {
            super::check_name(&args.name)?;
            let mut spec = ConfigMapSpec::default();
            for (key, value) in args.data.read()? {
                let value = text(&key, value)?;
                spec.data.insert(key, value);
            }
            if spec.data.is_empty() {
                return Err(usage(
                    "a config map needs at least one --from-literal or --from-file",
                ));
            }
            let config: ConfigMap = ctx.resource(&args.name, spec);
            let created = super::create(ctx, &config).await?;
            super::report(ctx, Kind::ConfigMap, &args.name, "created", &created)
        }
        ConfigMapCommand::Get(name) => super::get(ctx, &name, table).await,
        ConfigMapCommand::List => super::list(ctx, table).await,
        ConfigMapCommand::Update(args) => {
            super::check_name(&args.name)?;
            let mut set = Vec::new();
            for (key, value) in args.changes()? {
                let value = text(&key, value)?;
                set.push((key, value));
            }
            let updated = super::update::<ConfigMapSpec, _>(ctx, &args.name, |config| {
                for key in &args.remove {
                    if config.spec.data.remove(key).is_none() {
                        return Err(usage(format!(
                            "config map '{}' has no key {key:?} to remove",
                            args.name
                        )));
                    }
                }
                for (key, value) in &set {
                    config.spec.data.insert(key.clone(), value.clone());
                }
                Ok(())
            })
            .await?;
            super::report(ctx, Kind::ConfigMap, &args.name, "updated", &updated)
        }
        ConfigMapCommand::Delete(args) => super::delete(ctx, Kind::ConfigMap, &args).await,
    }
}

/// NAME, KEYS, AGE.
pub fn table(items: &[ConfigMap]) -> Table {
    let mut t = Table::new(&["NAME", "KEYS", "AGE"]);
    for c in items {
        let keys: Vec<&str> = c.spec.data.keys().map(String::as_str).collect();
        t.row(vec![
            c.metadata.name.clone(),
            if keys.is_empty() {
                "-".into()
            } else {
                keys.join(", ")
            },
            age(c.metadata.creation_timestamp.as_deref()),
        ]);
    }
    t
}
