//! Turning `--code FILE`, `--src DIR|ZIP` and `--deploy DIR|ZIP|FILE` into package archives:
//! inline (base64 literal) up to 256 KiB, uploaded to the platform's archive store above that.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use kappa_types::{Archive, ArchiveType, LITERAL_SIZE_LIMIT};

use crate::client::Client;

/// The annotation naming the function a package was created for (by `fn create --code/--src`).
pub const OWNER_ANNOTATION: &str = "kappa.dev/owner-function";

/// The zip local-file-header magic, and the end-of-central-directory one (an empty zip).
const ZIP_MAGIC: [&[u8; 4]; 2] = [b"PK\x03\x04", b"PK\x05\x06"];

/// Which flag a path came from; it names the flag in every error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeFlag {
    /// `--code FILE`: one file, placed under its own name.
    Code,
    /// `--src DIR|ZIP`: a source tree.
    Src,
    /// `--deploy DIR|ZIP|FILE`: ready-to-run code.
    Deploy,
}

impl CodeFlag {
    fn as_str(self) -> &'static str {
        match self {
            CodeFlag::Code => "--code",
            CodeFlag::Src => "--src",
            CodeFlag::Deploy => "--deploy",
        }
    }
}

/// Reads the code a flag names and returns the archive to put in a package: a literal when it
/// is at most 256 KiB, else uploaded to `POST /v1/archives` and referenced by sha256.
///
/// - `--code FILE`: a single-file archive carrying the file name.
/// - `--src`/`--deploy`: a directory is zipped (`kappa_archive::pack_dir`), a zip file is sent
///   as is, any other file is sent like `--code`.
pub async fn archive_for(client: &Client, flag: CodeFlag, path: &Path) -> anyhow::Result<Archive> {
    let what = || format!("reading {} {}", flag.as_str(), path.display());
    let meta = tokio::fs::metadata(path).await.with_context(what)?;
    if meta.is_dir() {
        if flag == CodeFlag::Code {
            bail!(
                "reading --code {}: it is a directory: use --src for a directory",
                path.display()
            );
        }
        let dir = path.to_path_buf();
        let bytes = tokio::task::spawn_blocking(move || kappa_archive::pack_dir(&dir))
            .await
            .context("packing the directory was interrupted")?
            .with_context(|| format!("packing {} {}", flag.as_str(), path.display()))?;
        tracing::debug!(path = %path.display(), bytes = bytes.len(), "packed directory");
        return bytes_archive(client, flag, path, bytes, None).await;
    }
    let filename = if flag == CodeFlag::Code || !is_zip(path).await.with_context(what)? {
        Some(file_name(flag, path)?)
    } else {
        None
    };
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if size <= LITERAL_SIZE_LIMIT {
        let bytes = tokio::fs::read(path).await.with_context(what)?;
        return bytes_archive(client, flag, path, bytes, filename).await;
    }
    let file = tokio::fs::File::open(path).await.with_context(what)?;
    let uploaded = client
        .upload_file(file)
        .await
        .with_context(|| format!("uploading {} {}", flag.as_str(), path.display()))?;
    tracing::info!(sha256 = %uploaded.sha256, size = uploaded.size, "uploaded archive");
    Ok(Archive::stored(&uploaded.sha256, filename))
}

async fn bytes_archive(
    client: &Client,
    flag: CodeFlag,
    path: &Path,
    bytes: Vec<u8>,
    filename: Option<String>,
) -> anyhow::Result<Archive> {
    if bytes.len() <= LITERAL_SIZE_LIMIT {
        return Ok(literal(&bytes, filename));
    }
    let uploaded = client
        .upload_bytes(bytes)
        .await
        .with_context(|| format!("uploading {} {}", flag.as_str(), path.display()))?;
    tracing::info!(sha256 = %uploaded.sha256, size = uploaded.size, "uploaded archive");
    Ok(Archive::stored(&uploaded.sha256, filename))
}

/// An inline archive.
pub fn literal(bytes: &[u8], filename: Option<String>) -> Archive {
    Archive {
        kind: ArchiveType::Literal,
        literal: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        url: None,
        checksum: None,
        filename,
    }
}

async fn is_zip(path: &Path) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut file = tokio::fs::File::open(path).await?;
    let mut magic = [0u8; 4];
    let mut read = 0;
    while read < magic.len() {
        let n = file.read(&mut magic[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    Ok(read == magic.len() && ZIP_MAGIC.iter().any(|m| **m == magic))
}

fn file_name(flag: CodeFlag, path: &Path) -> anyhow::Result<String> {
    match path.file_name().and_then(|n| n.to_str()) {
        Some(name) => Ok(name.to_string()),
        None => bail!(
            "{} {}: expected a file with a UTF-8 name",
            flag.as_str(),
            path.display()
        ),
    }
}

/// `<base>-<6 random lowercase hex>`, with `base` cut so the result is a valid name (at most 63
/// characters). `base` should already be a DNS-1123 label.
pub fn generated_name(base: &str) -> String {
    let suffix: String = uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .chars()
        .take(6)
        .collect();
    let base: String = base.chars().take(63 - 7).collect();
    let base = base.trim_end_matches('-');
    if base.is_empty() {
        suffix
    } else {
        format!("{base}-{suffix}")
    }
}

/// A name-safe stem of a path (`hello_world.py` → `hello-world-py`), `pkg` when nothing is left.
pub fn name_stem(path: &Path) -> String {
    let raw = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let mut out = String::new();
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() { "pkg".into() } else { out }
}

/// The paths a command was given, for the "source or deployment" decision.
#[derive(Debug, Clone, Default)]
pub struct CodePaths {
    pub code: Option<PathBuf>,
    pub src: Option<PathBuf>,
    pub deploy: Option<PathBuf>,
}

impl CodePaths {
    /// True when any code was given.
    pub fn any(&self) -> bool {
        self.code.is_some() || self.src.is_some() || self.deploy.is_some()
    }
}

/// The archives of a package built from flags.
#[derive(Debug, Clone, Default)]
pub struct PackageCode {
    pub source: Option<Archive>,
    pub deployment: Option<Archive>,
}

/// Reads the code flags into archives. `--src` becomes the package's *source* (built by the
/// environment's builder) when `build` is true (the environment has a builder or `--buildcmd`
/// was given) or `--deploy` is given too; otherwise it is deployed as is.
pub async fn package_code(
    client: &Client,
    paths: &CodePaths,
    build: bool,
) -> anyhow::Result<PackageCode> {
    let mut out = PackageCode::default();
    if let Some(path) = &paths.code {
        out.deployment = Some(archive_for(client, CodeFlag::Code, path).await?);
    }
    if let Some(path) = &paths.deploy {
        out.deployment = Some(archive_for(client, CodeFlag::Deploy, path).await?);
    }
    if let Some(path) = &paths.src {
        let archive = archive_for(client, CodeFlag::Src, path).await?;
        if build || out.deployment.is_some() {
            out.source = Some(archive);
        } else {
            out.deployment = Some(archive);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_are_valid() {
        let name = generated_name("hello");
        assert_eq!(name.len(), "hello-".len() + 6);
        assert!(name.starts_with("hello-"));
        kappa_types::validate::dns1123_label("metadata.name", &name).unwrap();
        let long = "a".repeat(55) + "-" + &"b".repeat(7);
        let name = generated_name(&long);
        assert!(name.len() <= 63, "{name}");
        kappa_types::validate::dns1123_label("metadata.name", &name).unwrap();
    }

    #[test]
    fn stems() {
        assert_eq!(name_stem(Path::new("dir/Hello_World.py")), "hello-world-py");
        assert_eq!(name_stem(Path::new("__")), "pkg");
    }

    #[test]
    fn literals_carry_the_filename() {
        let a = literal(b"print(1)", Some("hello.py".into()));
        assert_eq!(a.literal.as_deref(), Some("cHJpbnQoMSk="));
        assert_eq!(a.filename.as_deref(), Some("hello.py"));
    }
}
