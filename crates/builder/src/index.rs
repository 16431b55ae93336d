//! The build index: which deployment archive an earlier build of the same inputs produced.
//!
//! A build is identified by the sha256 of its inputs ([`build_key`]: the source archive's
//! digest, the command, and what of the environment can change the result). Each finished
//! build writes one small file, `<dir>/<key>.json`, naming its deployment archive and keeping
//! its log; a later build with the same key reuses the archive (when the archive store still
//! holds it) instead of running again. Entries are written atomically (temporary file, then
//! rename), so a crash leaves either the whole entry or none.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{BuildError, at};

/// One finished build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    /// The sha256 of the deployment archive the build produced.
    pub deployment: String,
    /// The build's log.
    pub log: String,
    /// When it finished (RFC 3339).
    pub built_at: String,
}

/// The on-disk index of finished builds.
#[derive(Debug, Clone)]
pub struct BuildIndex {
    dir: PathBuf,
}

/// The identity of a build: sha256 over the source digest, the command and the environment
/// fingerprint, each length-prefixed so no two different inputs give the same bytes.
pub fn build_key(source_sha256: &str, command: &str, environment: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [source_sha256, command, environment] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl BuildIndex {
    /// Opens (creating) the index in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, BuildError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(at(&dir))?;
        Ok(Self { dir })
    }

    /// The directory the entries live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// The entry for `key`, if a build with that key finished.
    pub fn get(&self, key: &str) -> Result<Option<IndexEntry>, BuildError> {
        if !kappa_archive::is_valid_digest(key) {
            return Ok(None);
        }
        let path = self.path(key);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BuildError::File { path, source: e }),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BuildError::Index {
                path,
                reason: e.to_string(),
            })
    }

    /// Records a finished build under `key`.
    pub fn put(&self, key: &str, entry: &IndexEntry) -> Result<(), BuildError> {
        let path = self.path(key);
        let tmp = self
            .dir
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let bytes = serde_json::to_vec(entry).map_err(|e| BuildError::Index {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        std::fs::write(&tmp, bytes).map_err(at(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            BuildError::File {
                path: path.clone(),
                source: e,
            }
        })
    }

    /// Forgets `key` (its archive is gone).
    pub fn remove(&self, key: &str) {
        if kappa_archive::is_valid_digest(key) {
            let _ = std::fs::remove_file(self.path(key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_their_parts() {
        let a = build_key("s", "ab", "c");
        assert_eq!(a.len(), 64);
        assert_ne!(a, build_key("s", "a", "bc"));
        assert_eq!(a, build_key("s", "ab", "c"));
    }

    #[test]
    fn entries_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let index = BuildIndex::open(dir.path().join("index")).unwrap();
        let key = build_key("x", "y", "z");
        assert_eq!(index.get(&key).unwrap(), None);
        let entry = IndexEntry {
            deployment: "d".repeat(64),
            log: "ok".into(),
            built_at: "2026-01-01T00:00:00Z".into(),
        };
        index.put(&key, &entry).unwrap();
        assert_eq!(index.get(&key).unwrap(), Some(entry));
        index.remove(&key);
        assert_eq!(index.get(&key).unwrap(), None);
        assert_eq!(index.get("../etc/passwd").unwrap(), None);
    }
}
