//! The content-addressed blob store and its extraction cache.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use dashmap::DashMap;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use crate::error::{ArchiveError, at};
use crate::extract::{ExtractLimits, check_zip, extract_zip};
use crate::{hex, is_valid_digest};

/// The file name a non-zip archive gets when extracted without an explicit name (Fission's).
pub const DEFAULT_FILENAME: &str = "deployarchive";

/// What the store knows about one archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    /// Lower-case hexadecimal sha256 of the archive's bytes; also its name in the store.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// Where an archive's code is ready to run, as a host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extracted {
    /// A zip, extracted into this directory (`<root>/extracted/<sha256>/`).
    Dir(PathBuf),
    /// A non-zip archive, placed as this single file (`<root>/extracted/<sha256>/<filename>`).
    File(PathBuf),
}

impl Extracted {
    /// The path, whichever kind it is.
    pub fn path(&self) -> &Path {
        match self {
            Extracted::Dir(p) | Extracted::File(p) => p,
        }
    }
}

/// The archive store: blobs under `<root>/blobs/<sha256>`, extractions under
/// `<root>/extracted/<sha256>/`, temporary files under `<root>/tmp/` (cleared on open, so a
/// crash leaves nothing behind that a later run could mistake for finished work).
///
/// Cheap to clone; clones share the same directory and per-archive locks.
#[derive(Clone)]
pub struct ArchiveStore {
    inner: Arc<Inner>,
    limits: ExtractLimits,
}

struct Inner {
    blobs: PathBuf,
    extracted: PathBuf,
    /// `<root>/manifests/<sha256>`: what each extraction looked like when it was made (see
    /// [`manifest`]), checked before it is reused.
    manifests: PathBuf,
    tmp: PathBuf,
    max_archive_bytes: u64,
    /// One async mutex per digest with an operation in progress: `extracted` and `delete` for
    /// the same archive run one at a time (so an archive is extracted once however many callers
    /// ask at once), while different archives proceed in parallel. It is a tokio mutex because
    /// its guard is held while the blocking extraction runs on another thread; entries are
    /// removed when no operation holds them, so the map stays as small as the work in flight.
    locks: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    /// Extractions performed since open (zips unpacked or single files placed), for metrics.
    extractions: AtomicU64,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveStore")
            .field("blobs", &self.inner.blobs)
            .field("max_archive_bytes", &self.inner.max_archive_bytes)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Removes a temporary file or directory when dropped, unless disarmed: covers errors and a
/// cancelled upload future alike.
struct TempGuard {
    path: Option<PathBuf>,
}

impl TempGuard {
    fn new(path: PathBuf) -> Self {
        TempGuard { path: Some(path) }
    }

    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let result = if path.is_dir() {
                remove_tree(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = result
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a temporary file");
            }
        }
    }
}

impl ArchiveStore {
    /// Opens (creating if needed) a store rooted at `root`, accepting archives of at most
    /// `max_archive_bytes`. Creates `root/{blobs,extracted,tmp}` and empties `root/tmp`. The
    /// root is made absolute, so the paths [`ArchiveStore::extracted`] returns can be handed to
    /// processes with another working directory.
    pub fn open(root: impl Into<PathBuf>, max_archive_bytes: u64) -> Result<Self, ArchiveError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(at(&root))?;
        let root = std::fs::canonicalize(&root).map_err(at(&root))?;
        let blobs = root.join("blobs");
        let extracted = root.join("extracted");
        let manifests = root.join("manifests");
        let tmp = root.join("tmp");
        for dir in [&blobs, &extracted, &manifests] {
            std::fs::create_dir_all(dir).map_err(at(dir))?;
        }
        std::fs::set_permissions(&manifests, std::fs::Permissions::from_mode(0o700))
            .map_err(at(&manifests))?;
        match remove_tree(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ArchiveError::File {
                    path: tmp,
                    source: e,
                });
            }
        }
        std::fs::create_dir_all(&tmp).map_err(at(&tmp))?;
        Ok(ArchiveStore {
            inner: Arc::new(Inner {
                blobs,
                extracted,
                manifests,
                tmp,
                max_archive_bytes,
                locks: DashMap::new(),
                extractions: AtomicU64::new(0),
            }),
            limits: ExtractLimits::default(),
        })
    }

    /// Replaces the limits [`ArchiveStore::extracted`] applies to zips (default:
    /// [`ExtractLimits::default`]).
    pub fn with_extract_limits(mut self, limits: ExtractLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The largest archive [`ArchiveStore::put_stream`] accepts, in bytes.
    pub fn max_archive_bytes(&self) -> u64 {
        self.inner.max_archive_bytes
    }

    /// The number of extractions performed since the store was opened (a metric; cached
    /// results do not count).
    pub fn extractions_performed(&self) -> u64 {
        self.inner.extractions.load(Ordering::Relaxed)
    }

    /// Stores an archive from a stream of chunks, hashing it as it is written to a temporary
    /// file (the whole body is never held in memory). Over the size limit it fails with
    /// [`ArchiveError::TooLarge`] and leaves nothing behind; a failing stream gives
    /// [`ArchiveError::Body`]. A zip that [`check_zip`] refuses under the store's
    /// [`ExtractLimits`] fails with that error ([`ArchiveError::Unsafe`] naming the entry and
    /// the rule, or [`ArchiveError::Corrupt`]) and is not stored. On success the file is
    /// renamed to `blobs/<sha256>`; if that archive is already stored the new copy is dropped.
    pub async fn put_stream<S, E>(&self, body: S) -> Result<ArchiveInfo, ArchiveError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut body = std::pin::pin!(body);
        let limit = self.inner.max_archive_bytes;
        let tmp_path = self.inner.tmp.join(format!("upload-{}", Uuid::new_v4()));
        let mut guard = TempGuard::new(tmp_path.clone());
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .await
            .map_err(at(&tmp_path))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ArchiveError::Body(Box::new(e)))?;
            size = size.saturating_add(chunk.len() as u64);
            if size > limit {
                tracing::debug!(limit, "archive upload over the size limit");
                return Err(ArchiveError::TooLarge { limit });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(at(&tmp_path))?;
        }
        file.flush().await.map_err(at(&tmp_path))?;
        file.sync_all().await.map_err(at(&tmp_path))?;
        drop(file);

        // A zip that extraction would refuse is refused now, before it is stored, so the user
        // hears of it from the upload instead of from the first invocation.
        let (limits, check_path) = (self.limits, tmp_path.clone());
        tokio::task::spawn_blocking(move || check_archive(&check_path, &limits))
            .await
            .map_err(|e| ArchiveError::Task(e.to_string()))??;

        let sha256 = hex(&hasher.finalize());
        let dest = self.inner.blobs.join(&sha256);
        // Under the archive's lock, so a collection of unused archives
        // ([`ArchiveStore::delete_if_stored_before`]) either runs before this (and the archive is
        // stored again) or sees the refreshed time and keeps it.
        let lock = self.lock_for(&sha256);
        let held = lock.lock().await;
        let stored = async {
            if tokio::fs::try_exists(&dest).await.map_err(at(&dest))? {
                // Stored again: the archive counts as new for the collection's grace period.
                // (The guard removes the duplicate temporary file.)
                let blob = std::fs::File::open(&dest).map_err(at(&dest))?;
                blob.set_modified(SystemTime::now()).map_err(at(&dest))?;
                tracing::debug!(sha256 = %sha256, size, "archive already stored");
            } else {
                tokio::fs::rename(&tmp_path, &dest)
                    .await
                    .map_err(at(&dest))?;
                guard.disarm();
                tracing::info!(sha256 = %sha256, size, "archive stored");
            }
            Ok::<_, ArchiveError>(())
        }
        .await;
        drop(held);
        self.release(&sha256, lock);
        stored?;
        Ok(ArchiveInfo { sha256, size })
    }

    /// Stores an archive held in memory (see [`ArchiveStore::put_stream`]).
    pub async fn put_bytes(&self, bytes: &[u8]) -> Result<ArchiveInfo, ArchiveError> {
        let chunk = Bytes::copy_from_slice(bytes);
        self.put_stream(futures::stream::iter([Ok::<_, std::io::Error>(chunk)]))
            .await
    }

    /// Checks a stored archive as [`ArchiveStore::put_stream`] checks uploads (archives stored
    /// before that check existed may be unsafe): `Ok` for a safe zip or a single file,
    /// [`ArchiveError::NotFound`] when it is not stored.
    pub async fn check(&self, sha256: &str) -> Result<(), ArchiveError> {
        check_digest(sha256)?;
        let blob = self.inner.blobs.join(sha256);
        let limits = self.limits;
        let sha = sha256.to_owned();
        tokio::task::spawn_blocking(move || match check_archive(&blob, &limits) {
            Err(ArchiveError::File { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(ArchiveError::NotFound(sha))
            }
            other => other,
        })
        .await
        .map_err(|e| ArchiveError::Task(e.to_string()))?
    }

    /// The stored archive with this digest, if any.
    pub async fn info(&self, sha256: &str) -> Result<Option<ArchiveInfo>, ArchiveError> {
        check_digest(sha256)?;
        let path = self.inner.blobs.join(sha256);
        match tokio::fs::metadata(&path).await {
            Ok(meta) if meta.is_file() => Ok(Some(ArchiveInfo {
                sha256: sha256.to_owned(),
                size: meta.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ArchiveError::File { path, source: e }),
        }
    }

    /// Opens the stored archive for reading ([`ArchiveError::NotFound`] if it is not stored).
    pub async fn open_blob(&self, sha256: &str) -> Result<tokio::fs::File, ArchiveError> {
        check_digest(sha256)?;
        let path = self.inner.blobs.join(sha256);
        match tokio::fs::File::open(&path).await {
            Ok(file) => Ok(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ArchiveError::NotFound(sha256.to_owned()))
            }
            Err(e) => Err(ArchiveError::File { path, source: e }),
        }
    }

    /// Every stored archive, ordered by digest.
    pub async fn list(&self) -> Result<Vec<ArchiveInfo>, ArchiveError> {
        let blobs = &self.inner.blobs;
        let mut dir = tokio::fs::read_dir(blobs).await.map_err(at(blobs))?;
        let mut out = Vec::new();
        while let Some(entry) = dir.next_entry().await.map_err(at(blobs))? {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_valid_digest(&name) {
                continue;
            }
            match entry.metadata().await {
                Ok(meta) if meta.is_file() => out.push(ArchiveInfo {
                    sha256: name,
                    size: meta.len(),
                }),
                Ok(_) => {}
                // Deleted between the listing and the stat.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(ArchiveError::File {
                        path: entry.path(),
                        source: e,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(out)
    }

    /// Deletes the archive and its extraction. Returns whether the archive was stored.
    pub async fn delete(&self, sha256: &str) -> Result<bool, ArchiveError> {
        self.delete_where(sha256, None).await
    }

    /// Deletes the archive and its extraction if it was last stored (put, or put again) before
    /// `cutoff`. Returns whether it was deleted. The time is checked under the archive's lock,
    /// so an upload of the same content racing with this keeps the archive.
    pub async fn delete_if_stored_before(
        &self,
        sha256: &str,
        cutoff: SystemTime,
    ) -> Result<bool, ArchiveError> {
        self.delete_where(sha256, Some(cutoff)).await
    }

    /// Deletes the archive under its lock: always, or only if it was last stored before
    /// `cutoff`.
    async fn delete_where(
        &self,
        sha256: &str,
        cutoff: Option<SystemTime>,
    ) -> Result<bool, ArchiveError> {
        check_digest(sha256)?;
        let lock = self.lock_for(sha256);
        let guard = lock.clone().lock_owned().await;
        let inner = self.inner.clone();
        let sha = sha256.to_owned();
        let result = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            if let Some(cutoff) = cutoff {
                let path = inner.blobs.join(&sha);
                let modified = match std::fs::metadata(&path).and_then(|m| m.modified()) {
                    Ok(modified) => modified,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(ArchiveError::File { path, source: e }),
                };
                if modified >= cutoff {
                    return Ok(false);
                }
            }
            inner.delete_blocking(&sha)
        })
        .await;
        self.release(sha256, lock);
        result.map_err(|e| ArchiveError::Task(e.to_string()))?
    }

    /// Where the archive's code is ready to run, extracting it on first use.
    ///
    /// A zip (recognised by its `PK\x03\x04` magic) is extracted safely with the store's
    /// [`ExtractLimits`] into `<root>/extracted/<sha256>/` and gives [`Extracted::Dir`]. Any
    /// other archive is copied (mode 0555, so a binary can be run) to
    /// `<root>/extracted/<sha256>/<filename>` (default [`DEFAULT_FILENAME`]) and gives
    /// [`Extracted::File`]. Extraction goes through a temporary directory renamed into place,
    /// so a crash never leaves a half-extracted directory; concurrent callers for the same
    /// archive wait for one extraction.
    ///
    /// Extractions are sealed (directories 0555, files 0444, or 0555 when executable) and
    /// their manifest (`<root>/manifests/<sha256>`: every entry's kind, size, mode, owner,
    /// inode and modification time) is written when they are made. A cached extraction is
    /// reused only while it still matches its manifest; one that does not (or has none) is
    /// logged with a warning, removed and extracted again from the blob.
    pub async fn extracted(
        &self,
        sha256: &str,
        filename: Option<&str>,
    ) -> Result<Extracted, ArchiveError> {
        check_digest(sha256)?;
        let filename = match filename {
            Some(name) => {
                check_filename(name)?;
                name.to_owned()
            }
            None => DEFAULT_FILENAME.to_owned(),
        };
        let lock = self.lock_for(sha256);
        let guard = lock.clone().lock_owned().await;
        let inner = self.inner.clone();
        let limits = self.limits;
        let sha = sha256.to_owned();
        // The guard moves into the blocking task, so the lock is held until the work is done
        // even if this future is dropped.
        let result = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            inner.extract_blocking(&sha, &filename, &limits)
        })
        .await;
        self.release(sha256, lock);
        result.map_err(|e| ArchiveError::Task(e.to_string()))?
    }

    /// [`extracted`](Self::extracted)'s answer for a single file already placed and intact,
    /// checked on the caller's thread: a handful of system calls on a directory of one file
    /// and a two-line manifest, which cost less than a hand-off to a blocking thread and back
    /// (or the start of one, when the blocking pool's threads have timed out). `None` for
    /// everything else (a zip, not placed yet or under another name, an extraction or delete
    /// in progress, an extraction that differs from its manifest): then `extracted` does the
    /// whole work, with the same checks.
    pub fn cached_file(&self, sha256: &str, filename: Option<&str>) -> Option<PathBuf> {
        if check_digest(sha256).is_err() {
            return None;
        }
        let filename = filename.unwrap_or(DEFAULT_FILENAME);
        if check_filename(filename).is_err() || self.inner.locks.contains_key(sha256) {
            return None;
        }
        self.inner.cached_file(sha256, filename)
    }

    fn lock_for(&self, sha256: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .entry(sha256.to_owned())
            .or_default()
            .value()
            .clone()
    }

    /// Drops the caller's handle on a per-archive lock and forgets the lock once nobody else
    /// holds or waits for it.
    fn release(&self, sha256: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        drop(lock);
        self.inner
            .locks
            .remove_if(sha256, |_, l| Arc::strong_count(l) == 1);
    }
}

impl Inner {
    fn delete_blocking(&self, sha256: &str) -> Result<bool, ArchiveError> {
        let blob = self.blobs.join(sha256);
        let existed = match std::fs::remove_file(&blob) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(ArchiveError::File {
                    path: blob,
                    source: e,
                });
            }
        };
        // Move the extraction out of the way atomically first, so a reader never sees a
        // half-deleted directory under its final name.
        let extracted = self.extracted.join(sha256);
        let doomed = self.tmp.join(format!("delete-{}", Uuid::new_v4()));
        match std::fs::rename(&extracted, &doomed) {
            Ok(()) => {
                remove_tree(&doomed).map_err(at(&doomed))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(ArchiveError::File {
                    path: extracted,
                    source: e,
                });
            }
        }
        self.forget_manifest(sha256)?;
        if existed {
            tracing::info!(sha256 = %sha256, "archive deleted");
        }
        Ok(existed)
    }

    /// See [`ArchiveStore::cached_file`].
    fn cached_file(&self, sha256: &str, filename: &str) -> Option<PathBuf> {
        /// A single file's manifest is a few short lines (its directory and the file, under
        /// each name it was asked for): a longer one is left to the blocking path.
        const MAX_MANIFEST: u64 = 4096;
        let path = self.manifests.join(sha256);
        let mut file = std::fs::File::open(&path).ok()?;
        let mut recorded = String::new();
        (&mut file)
            .take(MAX_MANIFEST)
            .read_to_string(&mut recorded)
            .ok()?;
        if recorded.len() as u64 >= MAX_MANIFEST {
            return None;
        }
        if sniff_zip(&self.blobs.join(sha256)).ok()? {
            return None;
        }
        let final_dir = self.extracted.join(sha256);
        let target = final_dir.join(filename);
        let meta = target.symlink_metadata().ok()?;
        if !meta.is_file() || manifest(&final_dir).ok()? != recorded {
            return None;
        }
        Some(target)
    }

    fn extract_blocking(
        &self,
        sha256: &str,
        filename: &str,
        limits: &ExtractLimits,
    ) -> Result<Extracted, ArchiveError> {
        let blob = self.blobs.join(sha256);
        let is_zip = match sniff_zip(&blob) {
            Ok(is_zip) => is_zip,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArchiveError::NotFound(sha256.to_owned()));
            }
            Err(e) => {
                return Err(ArchiveError::File {
                    path: blob,
                    source: e,
                });
            }
        };
        let final_dir = self.extracted.join(sha256);
        let target = final_dir.join(filename);
        let cached = if is_zip {
            final_dir.is_dir()
        } else {
            target.is_file()
        };
        // An earlier extraction is reused only while it is exactly as it was made; otherwise it
        // is moved aside and made again from the blob, whose name is its content's digest.
        let mut verified = false;
        if final_dir.symlink_metadata().is_ok() {
            match self.verify(sha256, &final_dir) {
                Ok(()) if cached => {
                    return Ok(if is_zip {
                        Extracted::Dir(final_dir)
                    } else {
                        Extracted::File(target)
                    });
                }
                Ok(()) => verified = true,
                Err(mismatch) => {
                    tracing::warn!(
                        sha256 = %sha256,
                        dir = %final_dir.display(),
                        %mismatch,
                        "a cached extraction changed since it was made; extracting it again"
                    );
                    self.discard(sha256, &final_dir)?;
                }
            }
        }

        if is_zip {
            let tmp = self.tmp.join(format!("extract-{}", Uuid::new_v4()));
            let mut guard = TempGuard::new(tmp.clone());
            extract_zip(&blob, &tmp, limits)?;
            seal(&tmp).map_err(at(&tmp))?;
            std::fs::rename(&tmp, &final_dir).map_err(at(&final_dir))?;
            guard.disarm();
            self.record(sha256, &final_dir)?;
            self.extractions.fetch_add(1, Ordering::Relaxed);
            tracing::info!(sha256 = %sha256, dir = %final_dir.display(), "archive extracted");
            return Ok(Extracted::Dir(final_dir));
        }

        if verified {
            // Already placed (and intact) under another name: add this one with an atomic file
            // rename, opening the sealed directory for as long as that takes.
            std::fs::set_permissions(&final_dir, std::fs::Permissions::from_mode(0o755))
                .map_err(at(&final_dir))?;
            let tmp = final_dir.join(format!(".tmp-{}", Uuid::new_v4()));
            let mut guard = TempGuard::new(tmp.clone());
            let placed = place_file(&blob, &tmp)
                .and_then(|()| std::fs::rename(&tmp, &target).map_err(at(&target)));
            if placed.is_ok() {
                guard.disarm();
            }
            // The temporary file (if any) goes while the directory is still open.
            drop(guard);
            seal(&final_dir).map_err(at(&final_dir))?;
            placed?;
        } else {
            let tmp = self.tmp.join(format!("extract-{}", Uuid::new_v4()));
            let mut guard = TempGuard::new(tmp.clone());
            std::fs::create_dir(&tmp).map_err(at(&tmp))?;
            place_file(&blob, &tmp.join(filename))?;
            seal(&tmp).map_err(at(&tmp))?;
            std::fs::rename(&tmp, &final_dir).map_err(at(&final_dir))?;
            guard.disarm();
        }
        self.record(sha256, &final_dir)?;
        self.extractions.fetch_add(1, Ordering::Relaxed);
        tracing::info!(sha256 = %sha256, file = %target.display(), "archive placed as a single file");
        Ok(Extracted::File(target))
    }

    /// Writes the manifest of the extraction at `dir` (atomically, mode 0400).
    fn record(&self, sha256: &str, dir: &Path) -> Result<(), ArchiveError> {
        let text = manifest(dir).map_err(at(dir))?;
        let path = self.manifests.join(sha256);
        let tmp = self.manifests.join(format!(".tmp-{}", Uuid::new_v4()));
        let mut guard = TempGuard::new(tmp.clone());
        std::fs::write(&tmp, text).map_err(at(&tmp))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o400)).map_err(at(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(at(&path))?;
        guard.disarm();
        Ok(())
    }

    /// Whether the extraction at `dir` is still exactly as its manifest recorded it; the error
    /// says what differs.
    fn verify(&self, sha256: &str, dir: &Path) -> Result<(), String> {
        let path = self.manifests.join(sha256);
        let recorded = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err("it has no manifest".into());
            }
            Err(e) => return Err(format!("its manifest cannot be read: {e}")),
        };
        let current = manifest(dir).map_err(|e| format!("it cannot be read: {e}"))?;
        if current == recorded {
            return Ok(());
        }
        let first = |text: &str| -> std::collections::BTreeMap<String, String> {
            text.lines()
                .filter_map(|l| l.rsplit_once('\t'))
                .map(|(attrs, path)| (path.to_owned(), attrs.to_owned()))
                .collect()
        };
        let (was, now) = (first(&recorded), first(&current));
        let changed = was
            .keys()
            .chain(now.keys())
            .find(|p| was.get(*p) != now.get(*p))
            .map(|p| decode_name(p))
            .unwrap_or_default();
        Err(format!("entry {changed:?} differs from its manifest"))
    }

    /// Moves a rejected extraction out of the way and removes it with its manifest.
    fn discard(&self, sha256: &str, dir: &Path) -> Result<(), ArchiveError> {
        let doomed = self.tmp.join(format!("discard-{}", Uuid::new_v4()));
        std::fs::rename(dir, &doomed).map_err(at(dir))?;
        remove_tree(&doomed).map_err(at(&doomed))?;
        self.forget_manifest(sha256)
    }

    fn forget_manifest(&self, sha256: &str) -> Result<(), ArchiveError> {
        let path = self.manifests.join(sha256);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ArchiveError::File { path, source: e }),
        }
    }
}

/// Makes an extraction unwritable: directories 0555, files 0555 when any execute bit is set
/// and 0444 otherwise (symlinks have no mode of their own). The local backend hard-links these
/// files into instances, so no instance may be able to write them.
fn seal(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            seal(&entry.path())?;
        } else if kind.is_file() {
            let mode = entry.metadata()?.permissions().mode();
            let sealed = if mode & 0o111 != 0 { 0o555 } else { 0o444 };
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(sealed))?;
        }
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555))
}

/// Removes a tree whose directories may be sealed (0555: a non-root owner could not unlink
/// their entries): opens every directory for its owner first.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    fn open_up(dir: &Path) -> std::io::Result<()> {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                open_up(&entry.path())?;
            }
        }
        Ok(())
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            open_up(path)?;
            std::fs::remove_dir_all(path)
        }
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// What an extraction looks like, one line per entry (the directory itself included) in name
/// order: kind, size, mode, owner, inode, modification time and (for a symlink) its target,
/// then the path relative to `dir`, names hex-encoded so any byte is safe.
///
/// A write to a file changes its size or modification time, replacing it changes its inode,
/// `chmod` changes its mode, and adding or removing entries changes the list, so any of these
/// is caught without reading file contents. The change time is deliberately not recorded: the
/// local backend's hard links into instances change it (the link count), and they must not
/// count as tampering.
fn manifest(dir: &Path) -> std::io::Result<String> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;

    fn walk(dir: &Path, rel: &[u8], out: &mut String) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(dir)?;
        line(&meta, None, rel, out);
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let mut path = rel.to_vec();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(entry.file_name().as_bytes());
            let meta = entry.path().symlink_metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), &path, out)?;
            } else {
                let target = if meta.file_type().is_symlink() {
                    Some(std::fs::read_link(entry.path())?)
                } else {
                    None
                };
                line(&meta, target.as_deref(), &path, out);
            }
        }
        Ok(())
    }

    fn line(meta: &std::fs::Metadata, target: Option<&Path>, rel: &[u8], out: &mut String) {
        let kind = if meta.is_dir() {
            'd'
        } else if meta.file_type().is_symlink() {
            'l'
        } else if meta.is_file() {
            'f'
        } else {
            '?'
        };
        let target = target
            .map(|t| hex(t.as_os_str().as_bytes()))
            .unwrap_or_default();
        out.push_str(&format!(
            "{kind} {} {:o} {} {} {}.{:09} {target}\t{}\n",
            meta.len(),
            meta.mode(),
            meta.uid(),
            meta.ino(),
            meta.mtime(),
            meta.mtime_nsec(),
            hex(rel),
        ));
    }

    let mut out = String::new();
    walk(dir, b"", &mut out)?;
    Ok(out)
}

/// A hex-encoded manifest name, back as text for a message.
fn decode_name(hexed: &str) -> String {
    let bytes: Vec<u8> = (0..hexed.len() / 2)
        .filter_map(|i| u8::from_str_radix(hexed.get(2 * i..2 * i + 2)?, 16).ok())
        .collect();
    let name = String::from_utf8_lossy(&bytes).into_owned();
    if name.is_empty() { ".".into() } else { name }
}

/// Copies a blob to `dest` with mode 0755.
fn place_file(blob: &Path, dest: &Path) -> Result<(), ArchiveError> {
    std::fs::copy(blob, dest).map_err(at(dest))?;
    std::fs::set_permissions(dest, std::fs::Permissions::from_mode(0o755)).map_err(at(dest))
}

/// Checks a zip (by its magic) with [`check_zip`]; any other archive is a single file and
/// always acceptable.
fn check_archive(path: &Path, limits: &ExtractLimits) -> Result<(), ArchiveError> {
    if sniff_zip(path).map_err(at(path))? {
        check_zip(path, limits)?;
    }
    Ok(())
}

/// Whether the file starts with the zip local-file-header magic `PK\x03\x04`.
pub fn sniff_zip(path: &Path) -> std::io::Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = std::fs::File::open(path)?;
    let mut read = 0;
    while read < magic.len() {
        let n = file.read(&mut magic[read..])?;
        if n == 0 {
            return Ok(false);
        }
        read += n;
    }
    Ok(&magic == b"PK\x03\x04")
}

fn check_digest(sha256: &str) -> Result<(), ArchiveError> {
    if is_valid_digest(sha256) {
        Ok(())
    } else {
        Err(ArchiveError::InvalidDigest(sha256.to_owned()))
    }
}

fn check_filename(name: &str) -> Result<(), ArchiveError> {
    let reason = if name.is_empty() {
        Some("the name is empty")
    } else if name == "." || name == ".." {
        Some("the name must be a plain file name")
    } else if name.contains('/') || name.contains('\\') {
        Some("the name must not contain a path separator")
    } else if name.contains('\0') {
        Some("the name contains a NUL byte")
    } else if name.starts_with(".tmp-") {
        Some("the name is reserved")
    } else if name.len() > 255 {
        Some("the name is longer than 255 bytes")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ArchiveError::InvalidFilename {
            name: name.to_owned(),
            reason: reason.to_owned(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames() {
        for ok in ["main.py", "hello", "a.b.c", "deployarchive"] {
            assert!(check_filename(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "..\\x", "/etc", "a\0b", ".tmp-x"] {
            assert!(check_filename(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn zip_magic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"PK\x03\x04rest").unwrap();
        assert!(sniff_zip(&p).unwrap());
        std::fs::write(&p, b"PK").unwrap();
        assert!(!sniff_zip(&p).unwrap());
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        assert!(!sniff_zip(&p).unwrap());
    }
}
