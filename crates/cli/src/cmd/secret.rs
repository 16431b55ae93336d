//! `kappa secret create|get|list|update|delete` and the flags it shares with `kappa configmap`.
//!
//! Secret values go to the API base64-encoded in `spec.data` and never come back: the API
//! answers `<redacted>` for each value (keys stay) and the sizes in `status.dataBytes`, which is
//! all `get` and `list` can show.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use kappa_types::{Kind, Secret, SecretSpec, validate_config_key};

use super::{Ctx, DeleteArgs, NameArg, usage};
use crate::output::{Table, age};

/// `kappa secret ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SecretCommand {
    /// Create a secret from literals and files.
    Create(SecretCreate),
    /// Print a secret with its values masked (YAML by default).
    Get(NameArg),
    /// List secrets with their keys and value sizes.
    #[command(alias = "ls")]
    List,
    /// Set (or with --remove, delete) keys; functions using the secret are rolled.
    Update(SecretUpdate),
    /// Delete a secret (refused while functions use it, unless --force).
    #[command(alias = "rm")]
    Delete(DeleteArgs),
}

/// Where the key/values come from: `--from-literal` and `--from-file` (repeatable).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DataFlags {
    /// A key and its value, KEY=VALUE (repeatable).
    #[arg(long = "from-literal", value_name = "KEY=VALUE", value_parser = super::key_value)]
    pub literals: Vec<(String, String)>,
    /// A key and a file holding its value, KEY=PATH (repeatable).
    #[arg(long = "from-file", value_name = "KEY=PATH", value_parser = key_path)]
    pub files: Vec<(String, PathBuf)>,
}

/// Parses `KEY=PATH`.
fn key_path(text: &str) -> Result<(String, PathBuf), String> {
    let (key, path) = super::key_value(text).map_err(|_| format!("{text:?} is not KEY=PATH"))?;
    if path.is_empty() {
        return Err(format!("{text:?} names no file: expected KEY=PATH"));
    }
    Ok((key, PathBuf::from(path)))
}

impl DataFlags {
    /// Whether any key was given.
    pub fn any(&self) -> bool {
        !self.literals.is_empty() || !self.files.is_empty()
    }

    /// The keys and their raw values; a key given twice is a usage error. Errors name the key
    /// or the file, never a value.
    pub fn read(&self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        let mut out = BTreeMap::new();
        let entries = self
            .literals
            .iter()
            .map(|(k, v)| anyhow::Ok((k.clone(), v.clone().into_bytes())))
            .chain(self.files.iter().map(|(k, path)| {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading {} for key {k:?}", path.display()))?;
                Ok((k.clone(), bytes))
            }));
        for entry in entries {
            let (key, value): (String, Vec<u8>) = entry?;
            validate_config_key("key", &key).map_err(|e| usage(format!("{key:?}: {e}")))?;
            if out.insert(key.clone(), value).is_some() {
                return Err(usage(format!("key {key:?} is given twice")));
            }
        }
        Ok(out)
    }
}

/// `secret create`.
#[derive(Debug, Clone, clap::Args)]
pub struct SecretCreate {
    /// The secret's name.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub data: DataFlags,
}

/// `secret update` (also `configmap update`).
#[derive(Debug, Clone, clap::Args)]
pub struct SecretUpdate {
    /// The secret to change.
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub data: DataFlags,
    /// Remove this key (repeatable).
    #[arg(long = "remove", value_name = "KEY")]
    pub remove: Vec<String>,
}

impl SecretUpdate {
    /// The keys to set and to remove, checked not to overlap.
    pub fn changes(&self) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
        if !self.data.any() && self.remove.is_empty() {
            return Err(usage(
                "nothing to change: give --from-literal, --from-file or --remove",
            ));
        }
        let set = self.data.read()?;
        if let Some(both) = self.remove.iter().find(|k| set.contains_key(*k)) {
            return Err(usage(format!("key {both:?} is both set and removed")));
        }
        Ok(set)
    }
}

fn encode(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

/// Runs a `secret` subcommand.
pub async fn run(ctx: &Ctx, command: SecretCommand) -> anyhow::Result<()> {
    match command {
        SecretCommand::Create(args) => {
            super::check_name(&args.name)?;
            let entries = args.data.read()?;
            if entries.is_empty() {
                return Err(usage(
                    "a secret needs at least one --from-literal or --from-file",
                ));
            }
            let spec = SecretSpec {
                data: entries
                    .iter()
                    .map(|(k, v)| (k.clone(), encode(v)))
                    .collect(),
                ..SecretSpec::default()
            };
            let secret: Secret = ctx.resource(&args.name, spec);
            let created = super::create(ctx, &secret).await?;
            super::report(ctx, Kind::Secret, &args.name, "created", &created)
        }
        SecretCommand::Get(name) => super::get(ctx, &name, table).await,
        SecretCommand::List => super::list(ctx, table).await,
        SecretCommand::Update(args) => {
            super::check_name(&args.name)?;
            let set = args.changes()?;
            let updated = super::update::<SecretSpec, _>(ctx, &args.name, |secret| {
                // Values read back are `<redacted>`: sent back so, the API keeps them.
                for key in &args.remove {
                    if secret.spec.data.remove(key).is_none() {
                        return Err(usage(format!(
                            "secret '{}' has no key {key:?} to remove",
                            args.name
                        )));
                    }
                }
                for (key, value) in &set {
                    secret.spec.data.insert(key.clone(), encode(value));
                }
                Ok(())
            })
            .await?;
            super::report(ctx, Kind::Secret, &args.name, "updated", &updated)
        }
        SecretCommand::Delete(args) => super::delete(ctx, Kind::Secret, &args).await,
    }
}

/// `password (7 bytes), token (20 bytes)`: keys with the sizes the API reports.
fn keys_and_sizes(secret: &Secret) -> String {
    let sizes = &secret.status["dataBytes"];
    let keys: Vec<String> = secret
        .spec
        .data
        .keys()
        .chain(secret.spec.string_data.keys())
        .map(|k| match sizes[k.as_str()].as_u64() {
            Some(n) => format!("{k} ({n} bytes)"),
            None => k.clone(),
        })
        .collect();
    if keys.is_empty() {
        "-".into()
    } else {
        keys.join(", ")
    }
}

/// NAME, KEYS (with sizes, never values), AGE.
pub fn table(items: &[Secret]) -> Table {
    let mut t = Table::new(&["NAME", "KEYS", "AGE"]);
    for s in items {
        t.row(vec![
            s.metadata.name.clone(),
            keys_and_sizes(s),
            age(s.metadata.creation_timestamp.as_deref()),
        ]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_flags_read_literals_and_files_and_refuse_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cert");
        std::fs::write(&file, b"\x00\x01binary").unwrap();
        let flags = DataFlags {
            literals: vec![("user".into(), "admin".into())],
            files: vec![("cert".into(), file.clone())],
        };
        let read = flags.read().unwrap();
        assert_eq!(read["user"], b"admin");
        assert_eq!(read["cert"], b"\x00\x01binary");
        let twice = DataFlags {
            literals: vec![("cert".into(), "x".into())],
            files: vec![("cert".into(), file)],
        };
        assert!(twice.read().is_err());
        let bad = DataFlags {
            literals: vec![("../x".into(), "v".into())],
            files: vec![],
        };
        assert!(bad.read().is_err());
        assert!(key_path("k=").is_err());
    }

    #[test]
    fn tables_show_keys_and_sizes_only() {
        let mut secret: Secret = Secret::new("db", SecretSpec::default());
        secret
            .spec
            .data
            .insert("password".into(), "<redacted>".into());
        secret.status = serde_json::json!({"dataBytes": {"password": 7}});
        let text = table(&[secret]).to_string();
        assert!(text.contains("password (7 bytes)"), "{text}");
        assert!(!text.contains("redacted"), "{text}");
    }
}
