//! Whether a source has a build manifest: the CLI's `--src` check and the builder's default
//! build both ask, so the answer lives with the archives (no builder needed to know it).

use std::io;
use std::path::Path;

/// The files whose presence at the root of a source makes the runtime's default build do
/// something: `requirements.txt` (Python, pip) and `package.json` (Node.js, npm).
pub const BUILD_MANIFESTS: [&str; 2] = ["requirements.txt", "package.json"];

/// The manifest among [`BUILD_MANIFESTS`] at the root of `dir`, if any.
pub fn manifest_in_dir(dir: &Path) -> Option<&'static str> {
    BUILD_MANIFESTS
        .into_iter()
        .find(|name| dir.join(name).is_file())
}

/// The manifest among [`BUILD_MANIFESTS`] at the root of the zip at `path`, if any (only the
/// zip's directory is read).
pub fn manifest_in_zip(path: &Path) -> io::Result<Option<&'static str>> {
    let file = std::fs::File::open(path)?;
    let archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(BUILD_MANIFESTS.into_iter().find(|manifest| {
        archive
            .file_names()
            .any(|name| name.is_ok_and(|n| n.trim_start_matches("./") == *manifest))
    }))
}
