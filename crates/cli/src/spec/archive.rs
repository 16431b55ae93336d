//! `ArchiveUploadSpec`: the files its globs select, zipped deterministically (so the same
//! files give the same sha256, and an unchanged archive is never uploaded again).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::load::ArchiveUpload;

/// The most files one archive may collect.
const MAX_FILES: usize = 100_000;

/// A zipped archive, ready to upload.
#[derive(Debug, Clone)]
pub struct Built {
    pub bytes: Vec<u8>,
    pub sha256: String,
    /// For a single-file archive (not a zip), the name the file is placed under.
    pub filename: Option<String>,
}

/// Where an upload's globs are relative to: `rootdir` (itself relative to the spec directory's
/// parent), else the spec directory's parent, as Fission does.
pub fn root_of(upload: &ArchiveUpload, specdir: &Path) -> PathBuf {
    let parent = specdir
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    match &upload.rootdir {
        Some(r) if Path::new(r).is_absolute() => PathBuf::from(r),
        Some(r) => parent.join(r),
        None => parent,
    }
}

/// The files `upload` selects: every included file (directories recursively) minus the
/// excluded ones; returns the root and their paths relative to it, sorted.
pub fn select(upload: &ArchiveUpload, specdir: &Path) -> anyhow::Result<(PathBuf, Vec<String>)> {
    let root = root_of(upload, specdir);
    let what = || format!("ArchiveUploadSpec {:?} ({})", upload.name, upload.at);
    let excludes: Vec<glob::Pattern> = upload
        .exclude
        .iter()
        .map(|g| glob::Pattern::new(g))
        .collect::<Result<_, _>>()
        .with_context(what)?;
    let mut files = Vec::new();
    for pattern in &upload.include {
        let full = root.join(pattern);
        let full = full.to_string_lossy();
        let mut matched = false;
        for entry in glob::glob(&full).with_context(what)? {
            let path = entry.with_context(what)?;
            matched = true;
            collect(&root, &path, &excludes, &mut files).with_context(what)?;
        }
        if !matched {
            bail!(
                "{}: include {pattern:?} matches no file under {}",
                what(),
                root.display()
            );
        }
    }
    files.sort();
    files.dedup();
    if files.is_empty() {
        bail!("{}: every included file is excluded", what());
    }
    Ok((root, files))
}

/// Zips what `upload` selects (see [`select`]) under the paths relative to the root. When that
/// is one file, it is used as is (Fission does the same): a zip as the archive, any other file
/// as a single-file archive.
pub fn build(upload: &ArchiveUpload, specdir: &Path) -> anyhow::Result<Built> {
    let what = || format!("ArchiveUploadSpec {:?} ({})", upload.name, upload.at);
    let (root, files) = select(upload, specdir)?;
    // One file is sent as it is, as Fission does: a zip is the archive, any other file is a
    // single-file archive placed under its own name (so a runtime loads it as `--code` would).
    let single = (files.len() == 1).then(|| root.join(&files[0]));
    let (bytes, filename) = match &single {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(what)?;
            let filename = (!is_zip(path)).then(|| {
                Path::new(&files[0])
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            });
            (bytes, filename)
        }
        None => (
            kappa_archive::pack_files(&root, &files).with_context(what)?,
            None,
        ),
    };
    Ok(Built {
        sha256: kappa_archive::sha256_hex(&bytes),
        bytes,
        filename,
    })
}

fn is_zip(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && (&magic == b"PK\x03\x04" || &magic == b"PK\x05\x06")
}

fn excluded(rel: &str, excludes: &[glob::Pattern]) -> bool {
    // A pattern excludes a path or anything under a directory it matches.
    let mut prefix = String::new();
    for part in rel.split('/') {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(part);
        if excludes.iter().any(|p| p.matches(&prefix)) {
            return true;
        }
    }
    false
}

fn collect(
    root: &Path,
    path: &Path,
    excludes: &[glob::Pattern],
    out: &mut Vec<String>,
) -> anyhow::Result<()> {
    let rel = path.strip_prefix(root).map_err(|_| {
        anyhow::anyhow!("{} is outside the root {}", path.display(), root.display())
    })?;
    let rel_text = rel
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("{}: the path is not UTF-8", path.display()))?
        .to_string();
    if rel_text.is_empty() || rel_text.split('/').any(|p| p == "..") {
        bail!("{} is outside the root {}", path.display(), root.display());
    }
    if excluded(&rel_text, excludes) {
        return Ok(());
    }
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            if name == "__pycache__" || name == ".git" {
                continue;
            }
            collect(root, &e.path(), excludes, out)?;
        }
    } else if meta.is_file() || (meta.file_type().is_symlink() && path.is_file()) {
        out.push(rel_text);
        if out.len() > MAX_FILES {
            bail!("more than {MAX_FILES} files: narrow the include globs");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::load::Location;

    fn upload(include: &[&str], exclude: &[&str]) -> ArchiveUpload {
        ArchiveUpload {
            name: "a".into(),
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            rootdir: None,
            at: Location {
                file: "x".into(),
                doc: 0,
                line: 1,
            },
        }
    }

    #[test]
    fn globs_select_and_exclude() {
        let dir = tempfile::tempdir().unwrap();
        let specs = dir.path().join("specs");
        std::fs::create_dir_all(&specs).unwrap();
        std::fs::create_dir_all(dir.path().join("src/sub")).unwrap();
        std::fs::write(dir.path().join("src/a.py"), "a").unwrap();
        std::fs::write(dir.path().join("src/sub/b.py"), "b").unwrap();
        std::fs::write(dir.path().join("src/sub/c.txt"), "c").unwrap();
        let (_, names) = select(&upload(&["src/*"], &["src/sub/*.txt"]), &specs).unwrap();
        assert_eq!(
            names,
            vec!["src/a.py".to_string(), "src/sub/b.py".to_string()]
        );
        let built = build(&upload(&["src/*"], &["src/sub/*.txt"]), &specs).unwrap();
        assert_eq!(built.filename, None);
        // Deterministic: the same files give the same digest.
        let again = build(&upload(&["src/*"], &["src/sub/*.txt"]), &specs).unwrap();
        assert_eq!(built.sha256, again.sha256);
        let err = build(&upload(&["nothing*"], &[]), &specs).unwrap_err();
        assert!(format!("{err:#}").contains("matches no file"), "{err:#}");
    }
}
