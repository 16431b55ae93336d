use std::path::PathBuf;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A namespace, function, environment or instance name cannot be used as a path component.
    #[error("invalid {field} {value:?}: expected letters, digits, '-', '_' or '.'")]
    InvalidName {
        /// Which name: `namespace`, `function`, `environment` or `instance`.
        field: &'static str,
        /// The name as given.
        value: String,
    },
    /// `since` is neither an RFC 3339 timestamp nor a duration such as `30s`, `5m`, `2h`, `1d`.
    #[error("invalid since {value:?}: {reason}")]
    InvalidSince {
        /// The value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A stream name other than `stdout`, `stderr` or `platform`.
    #[error("invalid log stream {0:?}: expected stdout, stderr or platform")]
    InvalidStream(String),
    /// A file system operation failed.
    #[error("{}: {source}", path.display())]
    File {
        /// The path the operation was about.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The background task reading the files panicked or was cancelled.
    #[error("log reader task failed: {0}")]
    Task(String),
}
