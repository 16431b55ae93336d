//! The two steps of a build that runs away from the builder (a builder pod in a cluster), around
//! the build command: placing the source where the command expects it, and storing what the
//! command left. The layout is the local one ([`crate::workdir`]): the build's root holds the
//! source in `src/` (`$SRC_PKG`) and the command may create `deploy` (`$DEPLOY_PKG`).

use std::path::Path;

use kappa_archive::ExtractLimits;

use crate::archives::BuildArchives;
use crate::workdir;

/// Places the source archive `sha256` (a non-zip archive under `filename`) into `root/src`;
/// `root` must exist, `root/src` must not.
pub async fn fetch_source(
    archives: &dyn BuildArchives,
    sha256: &str,
    filename: Option<&str>,
    root: &Path,
) -> Result<(), String> {
    let extracted = archives
        .extracted(sha256, filename)
        .await
        .map_err(|e| format!("the source archive (sha256 {sha256}) could not be fetched: {e}"))?;
    let dest = root.join(workdir::SRC_DIR);
    tokio::task::spawn_blocking(move || workdir::prepare(&extracted, &dest))
        .await
        .map_err(|e| format!("placing the source failed: {e}"))?
        .map_err(|e| format!("placing the source failed: {e}"))
}

/// What a finished build stored: the deployment archive's digest, and a note for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    /// sha256 of the deployment archive.
    pub deployment: String,
    /// Said in the build log (e.g. that `$DEPLOY_PKG` was not created).
    pub note: Option<String>,
}

/// Checks what the build in `root` left against `limits`, zips it and stores it in `archives`.
pub async fn store_result(
    archives: &dyn BuildArchives,
    root: &Path,
    limits: ExtractLimits,
) -> Result<StoredResult, String> {
    let (result, note) = workdir::result_of(root)?;
    let deployment = crate::builder::pack_and_store(archives, &result, limits).await?;
    Ok(StoredResult {
        deployment,
        note: note.map(str::to_owned),
    })
}
