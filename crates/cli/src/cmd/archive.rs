//! `kappa archive upload|list|get-url|download|delete` (alias `ar`): the API's content-addressed
//! archive store, as Fission's `archive` verbs over its storage service. An archive's id is its
//! sha256; packages name it `archive://sha256/<id>`.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use futures::StreamExt as _;

use super::{Ctx, usage};
use crate::client::UploadedArchive;
use crate::output::{self, OutputFormat, Table};

/// `kappa archive ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ArchiveCommand {
    /// Upload a file (a zip, or any single file) and print its id.
    Upload(ArchiveUpload),
    /// List the stored archives.
    #[command(alias = "ls")]
    List,
    /// Print the URL an archive is downloaded from (with the API token).
    GetUrl(ArchiveId),
    /// Download an archive into a file (-o FILE, default: the id) or to stdout (-o -).
    Download(ArchiveId),
    /// Delete an archive (refused while a package uses it).
    #[command(alias = "rm")]
    Delete(ArchiveId),
}

/// `archive upload`.
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct ArchiveUpload {
    /// The file to upload.
    #[arg(value_name = "FILE")]
    pub positional: Option<PathBuf>,
    /// The file to upload (Fission's spelling; same as FILE).
    #[arg(long = "name", value_name = "FILE")]
    pub name: Option<PathBuf>,
}

/// An archive's id.
#[derive(Debug, Clone, clap::Args)]
pub struct ArchiveId {
    /// The archive's id: its sha256 (64 hex digits), or its `archive://sha256/...` URL.
    #[arg(long)]
    pub id: String,
}

impl ArchiveId {
    fn sha256(&self) -> anyhow::Result<String> {
        let id = self.id.trim();
        let id = id
            .strip_prefix(kappa_types::ARCHIVE_STORE_PREFIX)
            .unwrap_or(id);
        let id = id.to_ascii_lowercase();
        if !kappa_types::is_sha256_hex(&id) {
            return Err(usage(format!(
                "--id {:?} is not an archive id: expected its sha256 (64 hex digits) or archive://sha256/<digest>",
                self.id
            )));
        }
        Ok(id)
    }
}

/// Runs an `archive` subcommand; `dest` is the global `-o` given to `download`.
pub async fn run(ctx: &Ctx, command: ArchiveCommand, dest: Option<&str>) -> anyhow::Result<()> {
    match command {
        ArchiveCommand::Upload(args) => {
            let path = args
                .positional
                .or(args.name)
                .ok_or_else(|| usage("a FILE or --name FILE is required"))?;
            let file = tokio::fs::File::open(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?;
            let uploaded = ctx
                .client
                .upload_file(file)
                .await
                .with_context(|| format!("uploading {}", path.display()))?;
            match ctx.output {
                Some(f @ (OutputFormat::Json | OutputFormat::Yaml)) => {
                    output::print_value(f, &serde_json::to_value(&uploaded)?)
                }
                _ => output::print_stdout(&format!(
                    "archive {} uploaded ({} bytes): {}\n",
                    uploaded.sha256, uploaded.size, uploaded.url
                )),
            }
        }
        ArchiveCommand::List => {
            let items = ctx
                .client
                .list_archives()
                .await
                .context("listing archives")?;
            match ctx.output.unwrap_or(OutputFormat::Table) {
                OutputFormat::Table => output::print_stdout(&table(&items).to_string()),
                f => output::print_value(f, &serde_json::to_value(&items)?),
            }
        }
        ArchiveCommand::GetUrl(id) => {
            let sha = id.sha256()?;
            output::print_stdout(&format!(
                "{}/v1/archives/{sha}\n",
                ctx.client.endpoint().api_url.trim_end_matches('/')
            ))
        }
        ArchiveCommand::Download(id) => {
            let sha = id.sha256()?;
            let dest = dest.unwrap_or(&sha);
            download(ctx, &sha, Some(dest))
                .await
                .with_context(|| format!("downloading archive {sha}"))
        }
        ArchiveCommand::Delete(id) => {
            let sha = id.sha256()?;
            let deleted = ctx
                .client
                .delete_archive(&sha)
                .await
                .with_context(|| format!("deleting archive {sha}"))?;
            match ctx.output {
                Some(f @ (OutputFormat::Json | OutputFormat::Yaml)) => {
                    output::print_value(f, &serde_json::to_value(&deleted)?)
                }
                _ => output::print_stdout(&format!("archive {sha} deleted\n")),
            }
        }
    }
}

/// ID (sha256), SIZE, URL.
fn table(items: &[UploadedArchive]) -> Table {
    let mut t = Table::new(&["ID", "SIZE", "URL"]);
    for a in items {
        t.row(vec![a.sha256.clone(), a.size.to_string(), a.url.clone()]);
    }
    t
}

/// Where downloaded bytes go: a file (written next to it, then renamed), or stdout for `-` or
/// no destination (refused when stdout is a terminal).
enum Sink {
    File {
        tmp: PathBuf,
        dest: PathBuf,
        file: std::fs::File,
    },
    Stdout(std::io::Stdout),
}

impl Sink {
    fn open(dest: Option<&str>) -> anyhow::Result<Self> {
        match dest {
            None | Some("-") => {
                let out = std::io::stdout();
                if out.is_terminal() {
                    return Err(usage(
                        "stdout is a terminal: give -o FILE to write the archive into a file",
                    ));
                }
                Ok(Self::Stdout(out))
            }
            Some(path) => {
                let dest = PathBuf::from(path);
                let name = dest
                    .file_name()
                    .ok_or_else(|| usage(format!("-o {path:?} is not a file name")))?;
                let mut tmp_name = std::ffi::OsString::from(".");
                tmp_name.push(name);
                tmp_name.push(".kappa-download");
                let tmp = dest.with_file_name(tmp_name);
                let file = std::fs::File::create(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                Ok(Self::File { tmp, dest, file })
            }
        }
    }

    fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::File { tmp, file, .. } => file
                .write_all(bytes)
                .with_context(|| format!("writing {}", tmp.display())),
            Self::Stdout(out) => out.lock().write_all(bytes).context("writing to stdout"),
        }
    }

    fn finish(self) -> anyhow::Result<Option<PathBuf>> {
        match self {
            Self::File { tmp, dest, file } => {
                file.sync_all()
                    .with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &dest)
                    .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))?;
                Ok(Some(dest))
            }
            Self::Stdout(out) => {
                out.lock().flush().context("writing to stdout")?;
                Ok(None)
            }
        }
    }

    fn abandon(self) {
        if let Self::File { tmp, .. } = self {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Streams archive `sha256` into `dest` (a file, or stdout for `-`/`None`); a file appears only
/// complete. Reports where it went on stderr.
pub async fn download(ctx: &Ctx, sha256: &str, dest: Option<&str>) -> anyhow::Result<()> {
    let response = ctx.client.download_archive(sha256).await?;
    let mut sink = Sink::open(dest)?;
    let mut stream = response.bytes_stream();
    let mut written: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                sink.abandon();
                return Err(anyhow::anyhow!(
                    "the download broke off after {written} bytes: {}",
                    crate::client::root_cause(&e)
                ));
            }
        };
        if let Err(e) = sink.write(&chunk) {
            sink.abandon();
            return Err(e);
        }
        written += chunk.len() as u64;
    }
    if let Some(path) = sink.finish()? {
        eprintln!("wrote {written} bytes to {}", display(&path));
    }
    Ok(())
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// Writes `bytes` (an inline archive) into `dest` like [`download`].
pub fn write_bytes(bytes: &[u8], dest: Option<&str>) -> anyhow::Result<()> {
    let mut sink = Sink::open(dest)?;
    if let Err(e) = sink.write(bytes) {
        sink.abandon();
        return Err(e);
    }
    if let Some(path) = sink.finish()? {
        eprintln!("wrote {} bytes to {}", bytes.len(), display(&path));
    }
    Ok(())
}
