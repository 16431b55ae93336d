//! Fuzz targets for extraction: zips built from random entries (hostile names, symlinks,
//! nesting, zip bombs under random limits), optionally corrupted byte by byte, and raw uploads
//! through the store.
//!
//! Properties, whatever the input:
//! - nothing is written outside the destination, and no symlink in it resolves outside it;
//! - no written file is setuid, setgid, sticky, or group- or world-writable;
//! - the limits hold even for a refused archive's partial output (entries, bytes per file,
//!   bytes in total).
//!
//! For an intact archive, a reference model (written from `extract_zip`'s documented rules,
//! reading the names, kinds and contents the zip holds) decides whether it must be refused, and
//! an accepted archive must come out exactly as the model says: the same files with the same
//! bytes, directories and symlink targets, nothing else.
//!
//! Each runs for a few seconds in a normal test run; longer with `BOLERO_RANDOM_TEST_TIME_MS`, or
//! with libFuzzer through `cargo bolero test` (docs/security.md, "Fuzzing").

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bolero::{TypeGenerator, check};
use kappa_archive::{ArchiveError, ArchiveStore, ExtractLimits, Extracted, extract_zip};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

/// How long each target runs in an ordinary test run (`BOLERO_RANDOM_TEST_TIME_MS` overrides).
const TEST_TIME: Duration = Duration::from_secs(3);

const NORMAL: [&str; 5] = ["a", "b", "lib", "main.py", ".hidden"];
const WEIRD: [&str; 8] = ["C:", "c:x", "a\\b", "..\\x", "a\0b", "", "....", "é"];

/// A path component: `class` picks the kind (mostly normal names, so that some archives are
/// accepted), `index` the name.
#[derive(Debug, Clone, Copy, TypeGenerator)]
struct GenComp {
    class: u8,
    index: u8,
}

fn render(comps: &[GenComp], leading_slash: bool, trailing_slash: bool) -> String {
    let parts: Vec<&str> = comps
        .iter()
        .take(5)
        .map(|c| match c.class % 32 {
            0 => ".",
            1 => "..",
            2 => "",
            3 => WEIRD[usize::from(c.index) % WEIRD.len()],
            _ => NORMAL[usize::from(c.index) % NORMAL.len()],
        })
        .collect();
    let mut out = parts.join("/");
    if leading_slash {
        out.insert(0, '/');
    }
    if trailing_slash {
        out.push('/');
    }
    out
}

#[derive(Debug, Clone, TypeGenerator)]
enum GenData {
    Bytes(Vec<u8>),
    /// `1 << (n % 21)` zero bytes: deflates to almost nothing (a small zip bomb).
    Zeros(u8),
}

#[derive(Debug, Clone, TypeGenerator)]
enum GenKind {
    File {
        data: GenData,
        mode: u16,
    },
    Dir,
    Symlink {
        target: Vec<GenComp>,
        absolute: bool,
    },
}

#[derive(Debug, Clone, TypeGenerator)]
struct GenEntry {
    first: GenComp,
    name: Vec<GenComp>,
    leading_slash: bool,
    trailing_slash: bool,
    kind: GenKind,
    stored: bool,
}

#[derive(Debug, Clone, TypeGenerator)]
struct Case {
    /// How many of `entries` go into the zip (`% 6`).
    count: u8,
    entries: Vec<GenEntry>,
    max_files: u8,
    /// In units of 4 KiB.
    max_total: u16,
    max_file: u16,
    /// Corrupt the finished zip (when `% 4 == 0`) with the byte flips (offset, xor mask).
    corrupt: u8,
    flips: Vec<(u16, u8)>,
}

fn build_zip(entries: &[GenEntry]) -> Vec<u8> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    for entry in entries {
        let comps: Vec<GenComp> = std::iter::once(entry.first)
            .chain(entry.name.iter().copied())
            .collect();
        let name = render(&comps, entry.leading_slash, entry.trailing_slash);
        let method = if entry.stored {
            CompressionMethod::Stored
        } else {
            CompressionMethod::Deflated
        };
        let opts = SimpleFileOptions::default().compression_method(method);
        // The writer refuses some names (duplicates): the entry is left out.
        let written = match &entry.kind {
            GenKind::File { data, mode } => zip
                .start_file(name, opts.unix_permissions(u32::from(*mode) & 0o7777))
                .and_then(|()| {
                    match data {
                        GenData::Bytes(b) => zip.write_all(&b[..b.len().min(256)])?,
                        GenData::Zeros(n) => {
                            let len = 1usize << (n % 21);
                            zip.write_all(&vec![0u8; len])?;
                        }
                    }
                    Ok(())
                }),
            GenKind::Dir => zip.add_directory(name, opts),
            GenKind::Symlink { target, absolute } => {
                zip.add_symlink(name, render(target, *absolute, false), opts)
            }
        };
        if written.is_err() {
            break;
        }
    }
    zip.finish().map(Cursor::into_inner).unwrap_or_default()
}

fn limits(case: &Case) -> ExtractLimits {
    ExtractLimits {
        max_files: u64::from(case.max_files % 16),
        max_total_bytes: u64::from(case.max_total % 1024) * 4096,
        max_file_bytes: u64::from(case.max_file % 1024) * 4096,
    }
}

// ---- the reference model ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

/// What an intact zip must extract to, or `None` when it must be refused.
fn model(zip: &[u8], limits: &ExtractLimits) -> Option<BTreeMap<Vec<String>, Want>> {
    let mut archive = ZipArchive::new(Cursor::new(zip)).ok()?;
    if archive.len() as u64 > limits.max_files {
        return None;
    }
    let mut out: BTreeMap<Vec<String>, Want> = BTreeMap::new();
    let mut total = 0u64;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).ok()?;
        let name = entry.name().ok()?.into_owned();
        let is_symlink = entry.is_symlink();
        let is_dir = entry.is_dir();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).ok()?;
        if name.is_empty()
            || name.contains('\0')
            || name.contains('\\')
            || name.starts_with('/')
            || has_drive(&name)
        {
            return None;
        }
        let mut comps = Vec::new();
        for c in name.split('/') {
            match c {
                "" | "." => {}
                ".." => return None,
                c => comps.push(c.to_owned()),
            }
        }
        let want = if is_symlink {
            Want::Symlink(String::from_utf8(data).ok()?)
        } else if is_dir {
            Want::Dir
        } else {
            if data.len() as u64 > limits.max_file_bytes {
                return None;
            }
            total += data.len() as u64;
            Want::File(data)
        };
        if comps.is_empty() {
            if want == Want::Dir {
                continue;
            }
            return None;
        }
        if out.insert(comps, want).is_some() {
            return None; // duplicate after normalisation
        }
    }
    if total > limits.max_total_bytes {
        return None;
    }
    for (path, want) in &out {
        // Nothing under a file or symlink entry.
        for len in 1..path.len() {
            if matches!(
                out.get(&path[..len]),
                Some(Want::File(_) | Want::Symlink(_))
            ) {
                return None;
            }
        }
        if let Want::Symlink(target) = want
            && !symlink_stays_inside(path, target)
        {
            return None;
        }
    }
    Some(out)
}

fn has_drive(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// The documented rule: a relative target of at most 4096 bytes, with `..` only leading and
/// never above the destination.
fn symlink_stays_inside(link: &[String], target: &str) -> bool {
    if target.is_empty()
        || target.len() > 4096
        || target.contains('\0')
        || target.contains('\\')
        || target.starts_with('/')
        || has_drive(target)
    {
        return false;
    }
    let mut depth = link.len() - 1;
    let mut seen_normal = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." if seen_normal || depth == 0 => return false,
            ".." => depth -= 1,
            _ => seen_normal = true,
        }
    }
    true
}

// ---- properties of what is on disk ----

/// Every path under `root` (not following symlinks), relative.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().to_path_buf());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

/// `path` with `.` and `..` removed lexically.
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Checks what an extraction (successful or not) left behind.
fn check_disk(tmp: &Path, dest: &Path, limits: &ExtractLimits) {
    for path in walk(tmp) {
        let ok = path == Path::new("a.zip")
            || path == Path::new("work")
            || path == Path::new("work/canary")
            || path.starts_with("work/dest");
        assert!(ok, "written outside the destination: {}", path.display());
    }
    assert_eq!(
        std::fs::read(tmp.join("work/canary")).unwrap(),
        b"canary",
        "a file next to the destination changed"
    );
    let Ok(real_dest) = std::fs::canonicalize(dest) else {
        return; // refused before anything was created
    };
    let (mut entries, mut total) = (0u64, 0u64);
    for rel in walk(dest) {
        let path = dest.join(&rel);
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            entries += 1;
            let target = std::fs::read_link(&path).unwrap();
            let resolved = match std::fs::canonicalize(&path) {
                Ok(real) => real,
                // Dangling: where the kernel would create or look for it.
                Err(_) => lexical(
                    &std::fs::canonicalize(path.parent().unwrap())
                        .unwrap()
                        .join(&target),
                ),
            };
            assert!(
                resolved.starts_with(&real_dest),
                "symlink {} -> {} resolves outside the destination",
                rel.display(),
                target.display()
            );
            continue;
        }
        assert_eq!(
            mode & 0o7022,
            0,
            "{} has mode {mode:o}: setuid, setgid, sticky or writable by others",
            rel.display()
        );
        if meta.is_file() {
            entries += 1;
            total += meta.len();
            assert!(
                meta.len() <= limits.max_file_bytes,
                "{} has {} bytes, over the per-file limit {}",
                rel.display(),
                meta.len(),
                limits.max_file_bytes
            );
        }
    }
    assert!(
        total <= limits.max_total_bytes,
        "{total} bytes written, over the limit {}",
        limits.max_total_bytes
    );
    assert!(
        entries <= limits.max_files,
        "{entries} files and symlinks written, over the limit {}",
        limits.max_files
    );
}

/// Checks an accepted intact archive against the model's tree.
fn check_tree(dest: &Path, want: &BTreeMap<Vec<String>, Want>) {
    let mut expected: BTreeSet<PathBuf> = BTreeSet::new();
    for (comps, what) in want {
        let rel: PathBuf = comps.iter().collect();
        for len in 1..comps.len() {
            expected.insert(comps[..len].iter().collect());
        }
        expected.insert(rel.clone());
        let path = dest.join(&rel);
        match what {
            Want::File(data) => assert_eq!(
                std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", rel.display())),
                *data,
                "{} has other bytes",
                rel.display()
            ),
            Want::Dir => assert!(path.is_dir(), "{} is not a directory", rel.display()),
            Want::Symlink(target) => assert_eq!(
                std::fs::read_link(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", rel.display()))
                    .to_str(),
                Some(target.as_str()),
                "{} has another target",
                rel.display()
            ),
        }
    }
    let found: BTreeSet<PathBuf> = walk(dest).into_iter().collect();
    assert_eq!(
        found, expected,
        "the extracted tree differs from the archive"
    );
}

fn check_case(case: &Case) {
    let count = usize::from(case.count % 6).min(case.entries.len());
    let mut bytes = build_zip(&case.entries[..count]);
    let intact = !case.corrupt.is_multiple_of(4) || case.flips.is_empty() || bytes.is_empty();
    if !intact {
        for (offset, mask) in case.flips.iter().take(4) {
            let i = usize::from(*offset) % bytes.len();
            bytes[i] ^= mask;
        }
    }
    let limits = limits(case);
    let tmp = tempfile::tempdir().unwrap();
    let zip_path = tmp.path().join("a.zip");
    std::fs::write(&zip_path, &bytes).unwrap();
    std::fs::create_dir(tmp.path().join("work")).unwrap();
    std::fs::write(tmp.path().join("work/canary"), b"canary").unwrap();
    let dest = tmp.path().join("work/dest");

    let result = extract_zip(&zip_path, &dest, &limits);
    check_disk(tmp.path(), &dest, &limits);
    if let Err(e) = &result {
        assert!(
            matches!(e, ArchiveError::Unsafe { .. } | ArchiveError::Corrupt(_)),
            "an archive is refused as unsafe or corrupt, not {e:?}"
        );
    }
    if intact {
        match (model(&bytes, &limits), &result) {
            (Some(want), Ok(())) => {
                check_tree(&dest, &want);
                ACCEPTED.fetch_add(1, Ordering::Relaxed);
            }
            (None, Err(_)) => {
                REFUSED.fetch_add(1, Ordering::Relaxed);
            }
            (Some(want), Err(e)) => panic!("refused ({e}), yet the model accepts: {want:?}"),
            (None, Ok(())) => panic!(
                "accepted, yet the model refuses; extracted {:?}",
                walk(&dest)
            ),
        }
    }
}

/// How many intact archives were accepted and refused (printed, so a long run shows that both
/// outcomes are explored).
static ACCEPTED: AtomicUsize = AtomicUsize::new(0);
static REFUSED: AtomicUsize = AtomicUsize::new(0);

#[test]
fn zip_extraction_stays_inside_and_within_limits() {
    check!()
        .with_type::<Case>()
        .with_test_time(TEST_TIME)
        .for_each(check_case);
    eprintln!(
        "intact archives: {} accepted, {} refused",
        ACCEPTED.load(Ordering::Relaxed),
        REFUSED.load(Ordering::Relaxed)
    );
}

#[test]
fn any_upload_is_stored_and_placed_safely() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    check!()
        .with_type::<(bool, Vec<u8>, Option<String>)>()
        .with_test_time(TEST_TIME)
        .for_each(|(as_zip_magic, body, filename)| {
            let mut upload = Vec::new();
            if *as_zip_magic {
                upload.extend_from_slice(b"PK\x03\x04");
            }
            upload.extend_from_slice(body);
            let root = tempfile::tempdir().unwrap();
            let store = ArchiveStore::open(root.path().join("store"), 1 << 20).unwrap();
            rt.block_on(async {
                // A zip (by its magic) that breaks the extraction rules, or is corrupt, is
                // refused when it is stored; nothing is kept of it.
                let info = match store.put_bytes(&upload).await {
                    Ok(info) => info,
                    Err(e) => {
                        assert!(
                            upload.starts_with(b"PK"),
                            "a non-zip upload was refused: {e}"
                        );
                        let blobs = root.path().join("store/blobs");
                        let kept = std::fs::read_dir(&blobs).map_or(0, |d| d.count());
                        assert_eq!(kept, 0, "a refused upload left a blob");
                        return;
                    }
                };
                assert_eq!(info.size, upload.len() as u64);
                let result = store.extracted(&info.sha256, filename.as_deref()).await;
                let real_root = std::fs::canonicalize(root.path()).unwrap();
                let own = real_root.join("store/extracted").join(&info.sha256);
                match result {
                    Ok(Extracted::File(path)) => {
                        assert!(
                            path.starts_with(&own),
                            "{} outside {}",
                            path.display(),
                            own.display()
                        );
                        assert_eq!(std::fs::read(&path).unwrap(), upload);
                        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
                        assert_eq!(mode & 0o7022, 0, "mode {mode:o}");
                    }
                    Ok(Extracted::Dir(path)) => assert_eq!(path, own),
                    Err(
                        ArchiveError::InvalidFilename { .. }
                        | ArchiveError::Unsafe { .. }
                        | ArchiveError::Corrupt(_),
                    ) => {}
                    Err(e) => panic!("unexpected error {e:?}"),
                }
                // Nothing anywhere else in the store but the blob and this extraction.
                for rel in walk(&real_root) {
                    let ok = rel == Path::new("store")
                        || rel.starts_with("store/blobs")
                        || rel.starts_with("store/tmp")
                        // The extraction's manifest (the cache's tamper check).
                        || rel == Path::new("store/manifests")
                        || rel == Path::new("store/manifests").join(&info.sha256)
                        || rel == Path::new("store/extracted")
                        || rel.starts_with(Path::new("store/extracted").join(&info.sha256));
                    assert!(ok, "unexpected path {}", rel.display());
                }
                let leftovers = walk(&real_root.join("store/tmp"));
                assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
            });
        });
}
