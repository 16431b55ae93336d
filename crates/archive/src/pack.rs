//! Packing local sources into zips (used by the CLI for `--src DIR` and single files).
//!
//! The output is deterministic: entries in byte order of their paths, every timestamp set to the
//! zip epoch (1980-01-01), so packing the same tree twice gives the same bytes and therefore the
//! same digest, and the store de-duplicates the upload.

use std::fs::{self, File};
use std::io::{Cursor, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::error::{ArchiveError, at};

/// Names skipped when packing a directory (at any depth).
const SKIPPED: &[&str] = &["__pycache__", ".git"];

/// Zips the contents of `dir` (paths relative to it, unix modes kept, deterministic order and
/// timestamps), skipping `__pycache__` and `.git`. Symlinks are stored as symlinks (never
/// followed); sockets and FIFOs are skipped.
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>, ArchiveError> {
    let meta = fs::metadata(dir).map_err(at(dir))?;
    if !meta.is_dir() {
        return Err(ArchiveError::File {
            path: dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        });
    }
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    add_dir(&mut zip, dir, "")?;
    finish(zip)
}

/// Zips the single file at `path` under its file name, keeping its unix mode.
pub fn pack_file(path: &Path) -> Result<Vec<u8>, ArchiveError> {
    let meta = fs::metadata(path).map_err(at(path))?;
    if !meta.is_file() {
        return Err(ArchiveError::File {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ArchiveError::File {
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the file name is missing or not valid UTF-8",
            ),
        })?;
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    add_file(&mut zip, path, name, &meta)?;
    finish(zip)
}

/// Zips the regular files `files` (paths relative to `root`, `/`-separated) under those
/// names, in the order given, with their unix modes and the zip epoch as timestamp; the caller
/// sorts the list so the output is deterministic.
pub fn pack_files(root: &Path, files: &[String]) -> Result<Vec<u8>, ArchiveError> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for rel in files {
        let path = root.join(rel);
        let meta = fs::metadata(&path).map_err(at(&path))?;
        if !meta.is_file() {
            return Err(ArchiveError::File {
                path,
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        add_file(&mut zip, &path, rel, &meta)?;
    }
    finish(zip)
}

fn options() -> SimpleFileOptions {
    SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .last_modified_time(DateTime::default())
}

fn finish(zip: ZipWriter<Cursor<Vec<u8>>>) -> Result<Vec<u8>, ArchiveError> {
    zip.finish()
        .map(Cursor::into_inner)
        .map_err(|e| ArchiveError::Write(e.to_string()))
}

fn add_dir<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    dir: &Path,
    prefix: &str,
) -> Result<(), ArchiveError> {
    let mut entries = fs::read_dir(dir)
        .map_err(at(dir))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(at(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            return Err(ArchiveError::File {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the file name is not valid UTF-8",
                ),
            });
        };
        if SKIPPED.contains(&name) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        let file_type = entry.file_type().map_err(at(&path))?;
        if file_type.is_symlink() {
            let target = fs::read_link(&path).map_err(at(&path))?;
            let Some(target) = target.to_str() else {
                return Err(ArchiveError::File {
                    path,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the symlink target is not valid UTF-8",
                    ),
                });
            };
            zip.add_symlink(rel, target, options())
                .map_err(|e| ArchiveError::Write(e.to_string()))?;
        } else if file_type.is_dir() {
            zip.add_directory(format!("{rel}/"), options().unix_permissions(0o755))
                .map_err(|e| ArchiveError::Write(e.to_string()))?;
            add_dir(zip, &path, &rel)?;
        } else if file_type.is_file() {
            let meta = entry.metadata().map_err(at(&path))?;
            add_file(zip, &path, &rel, &meta)?;
        } else {
            tracing::debug!(path = %path.display(), "skipping a special file while packing");
        }
    }
    Ok(())
}

fn add_file<W: Write + Seek>(
    zip: &mut ZipWriter<W>,
    path: &Path,
    name: &str,
    meta: &fs::Metadata,
) -> Result<(), ArchiveError> {
    let mode = meta.permissions().mode() & 0o777;
    let opts = options()
        .unix_permissions(mode)
        .large_file(meta.len() >= u64::from(u32::MAX));
    zip.start_file(name, opts)
        .map_err(|e| ArchiveError::Write(e.to_string()))?;
    let mut file = File::open(path).map_err(at(path))?;
    std::io::copy(&mut file, zip).map_err(at(path))?;
    Ok(())
}
