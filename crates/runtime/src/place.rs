//! The layout of an instance's code and configuration, shared by the local backend (which
//! places into each instance's own directory) and a function pod's fetcher (which places into
//! the pod's shared volumes).
//!
//! Placing a function's extracted code into an instance's `userfunc` directory (local backend).
//!
//! Files are hard-linked from the archive store's cached extraction (so placing a large package
//! costs one link per file), falling back to a copy when linking fails (another file system).
//! Their content is never written. They are made read-only — `0444`, or `0555` when executable;
//! for a link that is the shared inode's mode, which only ever loses write bits — and the
//! directories created here become `0555` once filled. The sandbox also binds `userfunc`
//! read-only, which is what stops an instance running as root from writing its code.
//!
//! It also places a function's Secrets and ConfigMaps as files in
//! `secrets/<namespace>/<name>/<key>` and `configs/<namespace>/<name>/<key>` (files
//! [`ConfigKind::file_mode`], `0400` and `0440`; directories [`dir_mode`], `0500` and `0550`):
//! locally in the instance's own directory, which the sandbox binds read-only at `/secrets` and
//! `/configs`; in a pod, in the volumes the fetcher shares with the runtime (both containers
//! run as the same user, so owner-only modes suffice there too).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kappa_core::{ConfigKind, ConfigVolume};

/// The directory name an extracted (zip) archive is placed under, as in Fission.
pub const DEPLOY_ARCHIVE: &str = "deployarchive";

/// What was placed, relative to `userfunc`.
pub fn place_dir(source: &Path, userfunc: &Path) -> io::Result<PathBuf> {
    let dest = userfunc.join(DEPLOY_ARCHIVE);
    remove_tree(&dest)?;
    copy_tree(source, &dest)?;
    Ok(PathBuf::from(DEPLOY_ARCHIVE))
}

/// Places a single file as `userfunc/<name>`; `name` must be one plain path component.
pub fn place_file(source: &Path, name: &str, userfunc: &Path) -> io::Result<PathBuf> {
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

/// Writes `volume` under `base/<namespace>/<name>/` (`base` is the instance's `secrets` or
/// `configs` directory), one file per key, replacing an earlier placement of it. Namespace, name
/// and keys must be plain path components (the API checks them; this checks again). Errors name
/// the volume and key, never a value. With an `owner` (a sandboxed instance's user and group),
/// the files and directories placed are the owner's, so that user alone reads them.
pub fn place_config(
    base: &Path,
    volume: &ConfigVolume,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    for part in [&volume.namespace, &volume.name] {
        if !is_plain_name(part) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} name {part:?} is not a plain path component",
                    volume.kind
                ),
            ));
        }
    }
    let (file_mode, dir_mode) = (volume.kind.file_mode(), dir_mode(volume.kind));
    let ns_dir = base.join(&volume.namespace);
    fs::create_dir_all(&ns_dir)?;
    // Writable while placing; read-only again at the end.
    fs::set_permissions(&ns_dir, fs::Permissions::from_mode(0o700))?;
    let dir = ns_dir.join(&volume.name);
    remove_tree(&dir)?;
    fs::create_dir(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    for (key, value) in &volume.entries {
        if !is_plain_name(key) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "key {key:?} of {} {}/{} is not a plain file name",
                    volume.kind, volume.namespace, volume.name
                ),
            ));
        }
        // Created with its final mode: the open handle may write it, nobody else ever could.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(file_mode)
            .open(dir.join(key))?;
        file.write_all(value)?;
        file.sync_all()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
        }
    }
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        std::os::unix::fs::chown(&ns_dir, Some(uid), Some(gid))?;
    }
    fs::set_permissions(&dir, fs::Permissions::from_mode(dir_mode))?;
    fs::set_permissions(&ns_dir, fs::Permissions::from_mode(dir_mode))
}

/// The mode of the directories placed for a volume of `kind` (its files'
/// [`ConfigKind::file_mode`] plus the search bit wherever a read bit is).
pub fn dir_mode(kind: ConfigKind) -> u32 {
    match kind {
        ConfigKind::Secret => 0o500,
        ConfigKind::ConfigMap => 0o550,
    }
}

/// Whether `name` is one plain path component: not empty, `.` or `..`, at most 255 bytes,
/// without `/`, `\` or NUL.
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 255
        && !name.contains(['/', '\\', '\0'])
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
pub fn remove_tree(path: &Path) -> io::Result<()> {
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
    fn config_volumes_become_read_only_files() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("secrets");
        fs::create_dir(&base).unwrap();
        let mut volume = ConfigVolume {
            kind: ConfigKind::Secret,
            namespace: "default".into(),
            name: "db".into(),
            entries: [("password".to_string(), b"hunter2".to_vec())].into(),
        };
        place_config(&base, &volume, None).unwrap();
        let file = base.join("default/db/password");
        assert_eq!(fs::read(&file).unwrap(), b"hunter2");
        assert_eq!(mode(&file), 0o400);
        assert_eq!(mode(&base.join("default/db")), 0o500);
        // Placing again replaces the whole volume.
        volume.entries = [("user".to_string(), b"admin".to_vec())].into();
        place_config(&base, &volume, None).unwrap();
        assert!(!file.exists());
        assert_eq!(fs::read(base.join("default/db/user")).unwrap(), b"admin");

        let configs = tmp.path().join("configs");
        fs::create_dir(&configs).unwrap();
        let config = ConfigVolume {
            kind: ConfigKind::ConfigMap,
            namespace: "default".into(),
            name: "app".into(),
            entries: [("mode".to_string(), b"fast".to_vec())].into(),
        };
        place_config(&configs, &config, None).unwrap();
        assert_eq!(mode(&configs.join("default/app/mode")), 0o440);

        for bad in ["..", "a/b", ""] {
            let evil = ConfigVolume {
                entries: [(bad.to_string(), b"x".to_vec())].into(),
                ..config.clone()
            };
            assert!(place_config(&configs, &evil, None).is_err(), "{bad:?}");
        }
        remove_tree(tmp.path()).unwrap();
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
