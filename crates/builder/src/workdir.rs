//! Build directories: a writable copy of the extracted source, and the bounds its result must
//! stay within before it is packed.
//!
//! A build's root directory (bound by the sandbox as its working directory) holds the source
//! in [`SRC_DIR`], which is Fission's `$SRC_PKG` and the command's working directory, and
//! leaves [`DEPLOY_DIR`], Fission's `$DEPLOY_PKG`, for the build to create: what it creates
//! there is the deployment. A build that creates nothing there (Kappa's own default builds,
//! `pip install --target .`) deploys the source directory as the build left it.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kappa_archive::{ExtractLimits, Extracted};

/// The source directory inside a build's root: `$SRC_PKG` and the working directory.
pub(crate) const SRC_DIR: &str = "src";
/// Where the build puts the deployment inside its root: `$DEPLOY_PKG`, absent before the
/// build.
pub(crate) const DEPLOY_DIR: &str = "deploy";

/// Creates a build's root `root` (must not exist) with the source copied into [`SRC_DIR`].
pub(crate) fn prepare_root(source: &Extracted, root: &Path) -> io::Result<()> {
    std::fs::create_dir(root)?;
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    prepare(source, &root.join(SRC_DIR))
}

/// The shell text that runs `command` with Fission's build layout: `SRC_PKG` is the source
/// directory (and the working directory) and `DEPLOY_PKG` a path that does not exist yet, both
/// inside the build's root, which is the directory the sandbox starts the shell in (whatever
/// path it has there). The command follows on its own line, so it may be a whole script.
pub(crate) fn fission_layout(command: &str) -> String {
    format!(
        "SRC_PKG=\"$PWD/{SRC_DIR}\"; DEPLOY_PKG=\"$PWD/{DEPLOY_DIR}\"; export SRC_PKG DEPLOY_PKG; \
         cd \"$SRC_PKG\" || exit 1\n{command}"
    )
}

/// What a finished build deploys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BuildResult {
    /// A directory's contents (zipped).
    Dir(PathBuf),
    /// One file (zipped under its name, `deploy`).
    File(PathBuf),
}

/// The deployment a build in `root` left: `$DEPLOY_PKG` when the build created it, else the
/// source directory, with a line for the log saying so.
pub(crate) fn result_of(root: &Path) -> Result<(BuildResult, Option<&'static str>), String> {
    let deploy = root.join(DEPLOY_DIR);
    match std::fs::symlink_metadata(&deploy) {
        Ok(meta) if meta.is_dir() => Ok((BuildResult::Dir(deploy), None)),
        Ok(meta) if meta.is_file() => Ok((BuildResult::File(deploy), None)),
        Ok(_) => Err(
            "$DEPLOY_PKG is neither a directory nor a regular file (a symlink?): \
             the build must put the deployment itself there"
                .into(),
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((
            BuildResult::Dir(root.join(SRC_DIR)),
            Some("$DEPLOY_PKG was not created: deploying $SRC_PKG as the build left it"),
        )),
        Err(e) => Err(format!("reading $DEPLOY_PKG failed: {e}")),
    }
}

/// Copies the extracted source into `dest` (created, must not exist): a directory's tree
/// (files with their modes made owner-writable, symlinks as symlinks), or a single file under
/// its name.
pub(crate) fn prepare(source: &Extracted, dest: &Path) -> io::Result<()> {
    std::fs::create_dir(dest)?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755))?;
    match source {
        Extracted::Dir(dir) => copy_tree(dir, dest),
        Extracted::File(file) => {
            let name = file
                .file_name()
                .ok_or_else(|| io::Error::other("the extracted file has no name"))?;
            copy_file(file, &dest.join(name))
        }
    }
}

fn copy_file(source: &Path, dest: &Path) -> io::Result<()> {
    std::fs::copy(source, dest)?;
    let mode = std::fs::metadata(source)?.permissions().mode() & 0o777;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(mode | 0o600))
}

fn copy_tree(source: &Path, dest: &Path) -> io::Result<()> {
    for entry in std::fs::read_dir(source)? {
        let entry = entry?;
        let from = entry.path();
        let to = dest.join(entry.file_name());
        let file_type = entry.file_type()?;
        if file_type.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if file_type.is_dir() {
            std::fs::create_dir(&to)?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))?;
            copy_tree(&from, &to)?;
        } else if file_type.is_file() {
            copy_file(&from, &to)?;
        }
    }
    Ok(())
}

/// Removes a build directory, making read-only directories writable first (a build may have
/// left some, and `remove_dir_all` cannot empty them).
pub(crate) fn remove(dir: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    make_writable(dir);
    std::fs::remove_dir_all(dir)
}

fn make_writable(dir: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            make_writable(&entry.path());
        }
    }
}

/// What a build left, as the deployment's extraction will count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TreeSize {
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    pub(crate) largest_file: u64,
}

/// Counts the entries and bytes under `dir` (skipping what packing skips), stopping early once
/// past `limits`: the result is refused then anyway.
pub(crate) fn measure(dir: &Path, limits: &ExtractLimits) -> io::Result<TreeSize> {
    let mut size = TreeSize::default();
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in std::fs::read_dir(&current)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == "__pycache__" || name == ".git" {
                continue;
            }
            size.entries += 1;
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                stack.push(entry.path());
            } else if file_type.is_file() {
                let len = entry.metadata()?.len();
                size.bytes = size.bytes.saturating_add(len);
                size.largest_file = size.largest_file.max(len);
            }
            if size.entries > limits.max_files || size.bytes > limits.max_total_bytes {
                return Ok(size);
            }
        }
    }
    Ok(size)
}

/// Why the build's result cannot be deployed, if it breaks the extraction limits.
pub(crate) fn check(size: TreeSize, limits: &ExtractLimits) -> Result<(), String> {
    if size.entries > limits.max_files {
        return Err(format!(
            "the build left more than {} files and directories, the most a deployment may hold",
            limits.max_files
        ));
    }
    if size.bytes > limits.max_total_bytes {
        return Err(format!(
            "the build left more than {} bytes, the most a deployment may hold",
            limits.max_total_bytes
        ));
    }
    if size.largest_file > limits.max_file_bytes {
        return Err(format!(
            "the build left a file of {} bytes; a deployment's files may hold at most {} bytes",
            size.largest_file, limits.max_file_bytes
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trees_are_copied_writable_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        std::fs::write(src.join("main.py"), "x").unwrap();
        std::fs::write(src.join("lib/run.sh"), "#!/bin/sh").unwrap();
        std::fs::set_permissions(src.join("lib/run.sh"), PermissionsExt::from_mode(0o555)).unwrap();
        std::os::unix::fs::symlink("main.py", src.join("link.py")).unwrap();
        let dest = dir.path().join("build");
        prepare(&Extracted::Dir(src.clone()), &dest).unwrap();
        assert_eq!(std::fs::read_to_string(dest.join("main.py")).unwrap(), "x");
        let mode = std::fs::metadata(dest.join("lib/run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_link(dest.join("link.py")).unwrap(),
            PathBuf::from("main.py")
        );
        let size = measure(&dest, &ExtractLimits::default()).unwrap();
        assert_eq!(size.entries, 4);
        assert_eq!(size.bytes, 1 + 9);
        let tight = ExtractLimits {
            max_files: 2,
            ..ExtractLimits::default()
        };
        assert!(check(measure(&dest, &tight).unwrap(), &tight).is_err());
        std::fs::set_permissions(dest.join("lib"), PermissionsExt::from_mode(0o500)).unwrap();
        remove(&dest).unwrap();
        assert!(!dest.exists());
        remove(&dest).unwrap();
    }

    #[test]
    fn single_files_keep_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hello.py");
        std::fs::write(&file, "print(1)").unwrap();
        let dest = dir.path().join("build");
        prepare(&Extracted::File(file), &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("hello.py")).unwrap(),
            "print(1)"
        );
    }
}
