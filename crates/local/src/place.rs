//! Placing a function's extracted code into an instance's `userfunc` directory.
//!
//! Files are hard-linked from the archive store's cached extraction (so placing a large package
//! costs one link per file), falling back to a copy when linking fails (another file system).
//! Their content is never written. They are made read-only — `0444`, or `0555` when executable;
//! for a link that is the shared inode's mode, which only ever loses write bits — and the
//! directories created here become `0555` once filled. The sandbox also binds `userfunc`
//! read-only, which is what stops an instance running as root from writing its code.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The directory name an extracted (zip) archive is placed under, as in Fission.
pub(crate) const DEPLOY_ARCHIVE: &str = "deployarchive";

/// What was placed, relative to `userfunc`.
pub(crate) fn place_dir(source: &Path, userfunc: &Path) -> io::Result<PathBuf> {
    let dest = userfunc.join(DEPLOY_ARCHIVE);
    remove_tree(&dest)?;
    copy_tree(source, &dest)?;
    Ok(PathBuf::from(DEPLOY_ARCHIVE))
}

/// Places a single file as `userfunc/<name>`; `name` must be one plain path component.
pub(crate) fn place_file(source: &Path, name: &str, userfunc: &Path) -> io::Result<PathBuf> {
    if !is_plain_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("filename {name:?} must be a plain file name (no '/', not '.' or '..')"),
        ));
    }
    let dest = userfunc.join(name);
    remove_tree(&dest)?;
    link_or_copy(source, &dest)?;
    Ok(PathBuf::from(name))
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn read_only_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o555 } else { 0o444 }
}

fn link_or_copy(source: &Path, dest: &Path) -> io::Result<()> {
    let mode = fs::metadata(source)?.permissions().mode() & 0o7777;
    let wanted = read_only_mode(mode);
    if fs::hard_link(source, dest).is_err() {
        fs::copy(source, dest)?;
    }
    if mode != wanted {
        fs::set_permissions(dest, fs::Permissions::from_mode(wanted))?;
    }
    Ok(())
}

fn copy_tree(source: &Path, dest: &Path) -> io::Result<()> {
    fs::create_dir(dest)?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o755))?;
    for entry in fs::read_dir(source)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = dest.join(entry.file_name());
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            link_or_copy(&entry.path(), &target)?;
        } else {
            // The archive store never extracts links or devices; skip anything else rather than
            // follow it.
            tracing::warn!(path = %entry.path().display(), "skipping a non-regular file in extracted code");
        }
    }
    // Read-only once filled.
    fs::set_permissions(dest, fs::Permissions::from_mode(0o555))
}

/// Removes a file or directory tree, making read-only directories writable first; a missing
/// path is fine.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    make_writable(path);
    fs::remove_dir_all(path)
}

fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn directory_is_placed_read_only_without_touching_the_source() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("pkg")).unwrap();
        fs::write(src.join("main.py"), "x").unwrap();
        fs::set_permissions(src.join("main.py"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(src.join("pkg/tool"), "y").unwrap();
        fs::set_permissions(src.join("pkg/tool"), fs::Permissions::from_mode(0o555)).unwrap();
        let userfunc = tmp.path().join("userfunc");
        fs::create_dir(&userfunc).unwrap();

        let placed = place_dir(&src, &userfunc).unwrap();
        let dest = userfunc.join(&placed);
        assert_eq!(placed, PathBuf::from("deployarchive"));
        assert_eq!(fs::read_to_string(dest.join("main.py")).unwrap(), "x");
        assert_eq!(mode(&dest.join("main.py")), 0o444);
        assert_eq!(mode(&dest.join("pkg/tool")), 0o555);
        assert_eq!(mode(&dest), 0o555);
        assert_eq!(mode(&dest.join("pkg")), 0o555);
        // Linked, not copied; the source's content is untouched.
        assert_eq!(fs::metadata(src.join("main.py")).unwrap().nlink(), 2);
        assert_eq!(fs::metadata(src.join("pkg/tool")).unwrap().nlink(), 2);
        assert_eq!(fs::read_to_string(src.join("main.py")).unwrap(), "x");

        // Placing again replaces the tree.
        place_dir(&src, &userfunc).unwrap();
        remove_tree(&userfunc).unwrap();
        assert!(!userfunc.exists());
    }

    #[test]
    fn single_file_gets_its_name_and_bad_names_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("blob");
        fs::write(&src, "print(1)").unwrap();
        let userfunc = tmp.path().join("userfunc");
        fs::create_dir(&userfunc).unwrap();
        let placed = place_file(&src, "hello.py", &userfunc).unwrap();
        assert_eq!(
            fs::read_to_string(userfunc.join(placed)).unwrap(),
            "print(1)"
        );
        for bad in ["", ".", "..", "a/b"] {
            assert!(place_file(&src, bad, &userfunc).is_err(), "{bad:?}");
        }
    }
}
