use std::path::PathBuf;

/// Why the builder could not start or keep its state.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A directory or file of the builder's state could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The build index holds an entry that cannot be parsed.
    #[error("build index entry {path}: {reason}")]
    Index {
        /// The entry's file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Maps an io error to [`BuildError::File`] naming `path`.
pub(crate) fn at(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.into();
    move |source| BuildError::File { path, source }
}
