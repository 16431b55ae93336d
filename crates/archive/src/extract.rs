//! Safe zip extraction.
//!
//! Extraction happens in two passes. The first reads only the central directory and refuses the
//! whole archive if any entry name is unsafe (absolute, `..`, Windows drive or backslash,
//! duplicate after normalisation, nested under a symlink entry or under a file entry) or if
//! there are too many entries. The second writes regular files and directories with fresh
//! `O_EXCL` opens, counting inflated bytes as they are written, and creates symlinks last, each
//! checked to resolve inside the destination. Because no entry may live under a symlink entry,
//! every directory on the way to an entry is a real directory this function created, so the
//! lexical checks match what the kernel will resolve.

use std::collections::HashSet;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zip::ZipArchive;

use crate::error::{ArchiveError, at};

/// Bounds applied while extracting a zip, so a small upload cannot fill the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    /// Maximum bytes written in total, counted as inflated (default 1 GiB).
    pub max_total_bytes: u64,
    /// Maximum number of entries (files, directories and symlinks; default 20 000).
    pub max_files: u64,
    /// Maximum bytes written for one file, counted as inflated (default 512 MiB).
    pub max_file_bytes: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits {
            max_total_bytes: 1 << 30,
            max_files: 20_000,
            max_file_bytes: 512 << 20,
        }
    }
}

/// The longest symlink target accepted, in bytes.
const MAX_SYMLINK_TARGET: u64 = 4096;
/// Mode of extracted directories and of executable files.
const MODE_EXEC: u32 = 0o755;
/// Mode of extracted non-executable files.
const MODE_PLAIN: u32 = 0o644;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File { executable: bool },
    Symlink,
}

#[derive(Debug)]
struct Planned {
    index: usize,
    name: String,
    components: Vec<String>,
    kind: EntryKind,
}

/// Extracts the zip at `zip_path` into `dest` (created if missing), refusing anything unsafe.
///
/// Refused with [`ArchiveError::Unsafe`]: absolute paths, any `..` component, Windows drive
/// letters and backslashes, NUL bytes, duplicate names (also after normalising `./` and `//`),
/// entries nested under a symlink or file entry, symlinks whose target is absolute or resolves
/// outside `dest`, encrypted entries, and archives beyond `limits` (counting the bytes actually
/// inflated, so a zip bomb is stopped as soon as it passes a limit). Files keep their executable
/// bit (mode 0755 if any execute bit is set in the archive, else 0644); nothing is made
/// world-writable or setuid. Unreadable archives give [`ArchiveError::Corrupt`].
///
/// On error `dest` may hold part of the archive: callers extract into a fresh directory and
/// discard it on failure (as [`crate::ArchiveStore::extracted`] does).
pub fn extract_zip(
    zip_path: &Path,
    dest: &Path,
    limits: &ExtractLimits,
) -> Result<(), ArchiveError> {
    let file = File::open(zip_path).map_err(at(zip_path))?;
    let mut archive =
        ZipArchive::new(BufReader::new(file)).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    let plan = plan(&archive, limits)?;

    DirBuilder::new()
        .recursive(true)
        .mode(MODE_EXEC)
        .create(dest)
        .map_err(at(dest))?;

    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for entry in plan.iter().filter(|p| p.kind != EntryKind::Symlink) {
        let out = join(dest, &entry.components);
        match entry.kind {
            EntryKind::Dir => create_dirs(&out)?,
            EntryKind::File { executable } => {
                if let Some(parent) = out.parent() {
                    create_dirs(parent)?;
                }
                let mode = if executable { MODE_EXEC } else { MODE_PLAIN };
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&out)
                    .map_err(at(&out))?;
                let mut reader = archive
                    .by_index(entry.index)
                    .map_err(|e| ArchiveError::Corrupt(format!("{}: {e}", entry.name)))?;
                let mut written: u64 = 0;
                loop {
                    let n = reader
                        .read(&mut buf)
                        .map_err(|e| ArchiveError::Corrupt(format!("{}: {e}", entry.name)))?;
                    if n == 0 {
                        break;
                    }
                    let n64 = n as u64;
                    if written + n64 > limits.max_file_bytes {
                        return Err(unsafe_entry(
                            &entry.name,
                            format!(
                                "inflates to more than the per-file limit of {} bytes",
                                limits.max_file_bytes
                            ),
                        ));
                    }
                    if total + written + n64 > limits.max_total_bytes {
                        return Err(unsafe_entry(
                            &entry.name,
                            format!(
                                "the archive inflates to more than the total limit of {} bytes",
                                limits.max_total_bytes
                            ),
                        ));
                    }
                    file.write_all(&buf[..n]).map_err(at(&out))?;
                    written += n64;
                }
                total += written;
            }
            EntryKind::Symlink => {}
        }
    }

    for entry in plan.iter().filter(|p| p.kind == EntryKind::Symlink) {
        let reader = archive
            .by_index(entry.index)
            .map_err(|e| ArchiveError::Corrupt(format!("{}: {e}", entry.name)))?;
        let target = symlink_target(reader, &entry.name)?;
        check_symlink_target(&entry.components, &target)
            .map_err(|reason| unsafe_entry(&entry.name, reason))?;
        let out = join(dest, &entry.components);
        if let Some(parent) = out.parent() {
            create_dirs(parent)?;
        }
        std::os::unix::fs::symlink(&target, &out).map_err(at(&out))?;
    }
    tracing::debug!(archive = %zip_path.display(), entries = plan.len(), bytes = total, "extracted zip");
    Ok(())
}

/// Checks, without writing anything, that [`extract_zip`] would accept the zip at `zip_path`:
/// every rule on names, links, entry counts and the sizes the entries declare (the per-file
/// limit, and the total limit counted in archive order, naming the first entry that passes
/// it). The API runs it when an archive is stored, so an unsafe archive is refused when it is
/// uploaded rather than at its first use. A zip that lies about its sizes passes this check
/// and is still stopped by [`extract_zip`], which counts the bytes it actually inflates.
pub fn check_zip(zip_path: &Path, limits: &ExtractLimits) -> Result<(), ArchiveError> {
    let file = File::open(zip_path).map_err(at(zip_path))?;
    let mut archive =
        ZipArchive::new(BufReader::new(file)).map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
    let plan = plan(&archive, limits)?;
    let mut total: u64 = 0;
    for entry in &plan {
        match entry.kind {
            EntryKind::Dir => {}
            EntryKind::File { .. } => {
                // The central directory's size: no need to read the entry itself.
                let size = archive
                    .by_index_data(entry.index)
                    .map_err(|e| ArchiveError::Corrupt(format!("{}: {e}", entry.name)))?
                    .size();
                total = total.saturating_add(size);
                if total > limits.max_total_bytes {
                    return Err(unsafe_entry(
                        &entry.name,
                        format!(
                            "the archive declares more than the total limit of {} bytes once inflated (reached at this entry)",
                            limits.max_total_bytes
                        ),
                    ));
                }
            }
            EntryKind::Symlink => {
                let reader = archive
                    .by_index(entry.index)
                    .map_err(|e| ArchiveError::Corrupt(format!("{}: {e}", entry.name)))?;
                let target = symlink_target(reader, &entry.name)?;
                check_symlink_target(&entry.components, &target)
                    .map_err(|reason| unsafe_entry(&entry.name, reason))?;
            }
        }
    }
    Ok(())
}

/// Reads a symlink entry's target, bounded and UTF-8.
fn symlink_target(reader: impl Read, name: &str) -> Result<String, ArchiveError> {
    let mut raw = Vec::new();
    reader
        .take(MAX_SYMLINK_TARGET + 1)
        .read_to_end(&mut raw)
        .map_err(|e| ArchiveError::Corrupt(format!("{name}: {e}")))?;
    if raw.len() as u64 > MAX_SYMLINK_TARGET {
        return Err(unsafe_entry(
            name,
            format!("symlink target is longer than {MAX_SYMLINK_TARGET} bytes"),
        ));
    }
    String::from_utf8(raw).map_err(|_| unsafe_entry(name, "symlink target is not valid UTF-8"))
}

/// Reads the central directory and decides what to write, refusing unsafe archives before any
/// byte is written.
fn plan<R: Read + std::io::Seek>(
    archive: &ZipArchive<R>,
    limits: &ExtractLimits,
) -> Result<Vec<Planned>, ArchiveError> {
    let count = archive.len();
    if count as u64 > limits.max_files {
        // The first entry past the limit, in the archive's own (central directory) order, so
        // the message names the same entry however often it is checked.
        let index = usize::try_from(limits.max_files).unwrap_or(usize::MAX);
        let entry = archive
            .name_for_index(index)
            .and_then(Result::ok)
            .map(|n| n.into_owned())
            .unwrap_or_default();
        return Err(unsafe_entry(
            &entry,
            format!(
                "the archive has {count} entries, more than the limit of {limit}; this is entry {next} in archive order, the first past the limit",
                limit = limits.max_files,
                next = limits.max_files.saturating_add(1),
            ),
        ));
    }
    if archive.has_duplicate_names() {
        return Err(unsafe_entry(
            "",
            "the archive's central directory holds duplicate entry names",
        ));
    }

    let mut plan = Vec::with_capacity(count);
    let mut seen: HashSet<Vec<String>> = HashSet::with_capacity(count);
    for index in 0..count {
        let entry = archive
            .by_index_data(index)
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?;
        let name = entry
            .name()
            .map_err(|e| ArchiveError::Corrupt(e.to_string()))?
            .into_owned();
        if entry.encrypted() {
            return Err(unsafe_entry(&name, "encrypted entries are not supported"));
        }
        let components = safe_components(&name).map_err(|reason| unsafe_entry(&name, reason))?;
        let kind = if entry.is_symlink() {
            EntryKind::Symlink
        } else if entry.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File {
                executable: entry.unix_mode().is_some_and(|m| m & 0o111 != 0),
            }
        };
        if components.is_empty() {
            if kind == EntryKind::Dir {
                continue; // "./" names the destination itself
            }
            return Err(unsafe_entry(&name, "the entry has an empty path"));
        }
        if let EntryKind::File { .. } = kind
            && entry.size() > limits.max_file_bytes
        {
            return Err(unsafe_entry(
                &name,
                format!(
                    "declares {} bytes, more than the per-file limit of {} bytes",
                    entry.size(),
                    limits.max_file_bytes
                ),
            ));
        }
        if !seen.insert(components.clone()) {
            return Err(unsafe_entry(&name, "duplicate entry name"));
        }
        plan.push(Planned {
            index,
            name,
            components,
            kind,
        });
    }

    // No entry may live under a symlink entry (it would be written through the link) or under a
    // file entry (it could not be created).
    let non_dirs: HashSet<&[String]> = plan
        .iter()
        .filter(|p| p.kind != EntryKind::Dir)
        .map(|p| p.components.as_slice())
        .collect();
    for p in &plan {
        for len in 1..p.components.len() {
            if non_dirs.contains(&p.components[..len]) {
                return Err(unsafe_entry(
                    &p.name,
                    format!(
                        "the entry lies under {:?}, which is a symlink or file entry",
                        p.components[..len].join("/")
                    ),
                ));
            }
        }
    }
    Ok(plan)
}

/// Splits an entry name into normal components, or says why it is unsafe.
fn safe_components(name: &str) -> Result<Vec<String>, String> {
    if name.is_empty() {
        return Err("the entry has an empty name".into());
    }
    if name.contains('\0') {
        return Err("the name contains a NUL byte".into());
    }
    if name.contains('\\') {
        return Err("the name contains a backslash (a Windows path separator)".into());
    }
    if name.starts_with('/') {
        return Err("the path is absolute".into());
    }
    if has_drive_prefix(name) {
        return Err("the path starts with a Windows drive letter".into());
    }
    let mut out = Vec::new();
    for component in name.split('/') {
        match component {
            "" | "." => {}
            ".." => return Err("the path has a '..' component".into()),
            normal => out.push(normal.to_owned()),
        }
    }
    Ok(out)
}

fn has_drive_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// Checks that a symlink at `link` (normal components, relative to the destination) with
/// `target` resolves inside the destination. Only leading `..` components are accepted: a `..`
/// after a normal component would be resolved by the kernel relative to wherever that component
/// points, which a lexical check cannot follow.
fn check_symlink_target(link: &[String], target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("the symlink target is empty".into());
    }
    if target.contains('\0') {
        return Err("the symlink target contains a NUL byte".into());
    }
    if target.contains('\\') {
        return Err("the symlink target contains a backslash".into());
    }
    if target.starts_with('/') || has_drive_prefix(target) {
        return Err(format!("the symlink target {target:?} is absolute"));
    }
    // Depth of the directory holding the link.
    let mut depth = link.len().saturating_sub(1);
    let mut seen_normal = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." if seen_normal => {
                return Err(format!(
                    "the symlink target {target:?} has '..' after a normal component"
                ));
            }
            ".." => {
                if depth == 0 {
                    return Err(format!(
                        "the symlink target {target:?} points outside the destination"
                    ));
                }
                depth -= 1;
            }
            _ => seen_normal = true,
        }
    }
    Ok(())
}

fn create_dirs(path: &Path) -> Result<(), ArchiveError> {
    DirBuilder::new()
        .recursive(true)
        .mode(MODE_EXEC)
        .create(path)
        .map_err(at(path))
}

fn join(dest: &Path, components: &[String]) -> PathBuf {
    let mut out = dest.to_path_buf();
    out.extend(components);
    out
}

fn unsafe_entry(entry: &str, reason: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comps(s: &str) -> Vec<String> {
        safe_components(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(comps("a/b.txt"), ["a", "b.txt"]);
        assert_eq!(comps("./a//b/"), ["a", "b"]);
        assert!(comps("./").is_empty());
    }

    #[test]
    fn unsafe_names_are_refused() {
        for name in [
            "",
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "C:/windows/x",
            "c:x",
            "a\\..\\x",
            "a\0b",
        ] {
            assert!(safe_components(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn symlink_targets() {
        let link = comps("a/b/link");
        for ok in ["x", "../x", "../../x", "./x/y", "../../a/b/c", "."] {
            assert!(check_symlink_target(&link, ok).is_ok(), "{ok:?} refused");
        }
        for bad in [
            "",
            "/etc",
            "../../..",
            "../../../x",
            "x/../..",
            "x/../y",
            "C:/x",
            "..\\x",
        ] {
            assert!(
                check_symlink_target(&link, bad).is_err(),
                "{bad:?} accepted"
            );
        }
        assert!(check_symlink_target(&comps("top"), "..").is_err());
    }

    #[test]
    fn default_limits() {
        let l = ExtractLimits::default();
        assert_eq!(l.max_total_bytes, 1024 * 1024 * 1024);
        assert_eq!(l.max_files, 20_000);
        assert_eq!(l.max_file_bytes, 512 * 1024 * 1024);
    }
}
