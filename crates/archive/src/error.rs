use std::path::PathBuf;

/// Why an archive operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The uploaded archive is larger than the store accepts; nothing was stored.
    #[error("archive exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The configured maximum, in bytes.
        limit: u64,
    },
    /// A digest is not 64 lower-case hexadecimal characters.
    #[error("invalid sha256 digest {0:?}: expected 64 lower-case hexadecimal characters")]
    InvalidDigest(String),
    /// No archive with this digest is stored.
    #[error("archive {0} not found")]
    NotFound(String),
    /// An archive entry would escape the destination, or the archive breaks an extraction
    /// limit (too many entries, too many bytes once inflated).
    #[error("unsafe archive entry {entry:?}: {reason}")]
    Unsafe {
        /// The entry's name as stored in the archive.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The archive claims to be a zip but cannot be read as one.
    #[error("corrupt archive: {0}")]
    Corrupt(String),
    /// The file name asked for a non-zip archive is not a single plain path component.
    #[error("invalid file name {name:?}: {reason}")]
    InvalidFilename {
        /// The file name as given.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The upload body stream returned an error; nothing was stored.
    #[error("reading the archive body failed: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
    /// Writing a zip (packing) failed.
    #[error("writing the zip failed: {0}")]
    Write(String),
    /// A file system operation on a known path failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file system operation failed.
    #[error("archive store i/o: {0}")]
    Io(#[source] std::io::Error),
    /// The background task doing blocking file work panicked or was cancelled.
    #[error("archive background task failed: {0}")]
    Task(String),
}

impl From<std::io::Error> for ArchiveError {
    fn from(e: std::io::Error) -> Self {
        ArchiveError::Io(e)
    }
}

/// Maps an io error to [`ArchiveError::File`] naming `path`.
pub(crate) fn at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let path = path.into();
    move |source| ArchiveError::File { path, source }
}
