//! Kappa's instance logs: what each function instance printed (stdout, stderr) and what Kappa
//! itself recorded about it (`platform` lines such as "specialized for function hello" or
//! "exited with signal 9 (out of memory)"), kept on disk, bounded, and readable per function.
//!
//! Layout under the root directory:
//! - `<namespace>/<function>/<instance-id>.log`, rotated to `<instance-id>.log.1` when it passes
//!   `max_file_bytes` (one rotated file is kept), and at most `max_instances_per_function`
//!   instances' files per function (the newest);
//! - `_pool/<environment>/<instance-id>.log` for instances not yet specialized; their lines move
//!   to the function's directory when the instance is assigned, so start-up output is kept.
//!
//! Each line is `<RFC 3339 UTC timestamp with microseconds> <stream> <message>`. Timestamps are
//! fixed-width and strictly increasing within one [`LogStore`], so files merge by comparing
//! strings, in the order the lines were written.
//!
//! This crate deliberately does not capture processes (the backend hands it readers), ship logs
//! anywhere, or decide who may read them (the API server does).

// Tests may unwrap: a panic there is the failure report.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod error;
mod read;
mod write;

pub use error::LogError;
pub use read::ReadOptions;
pub use write::InstanceLog;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

/// Bounds on what is kept on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    /// Size at which an instance's log is rotated (default 1 MiB). An instance keeps at most
    /// about twice this: the current file and one rotated file.
    pub max_file_bytes: u64,
    /// Instances whose logs are kept per function, newest first (default 20).
    pub max_instances_per_function: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            max_file_bytes: 1 << 20,
            max_instances_per_function: 20,
        }
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    /// The instance's standard output.
    Stdout,
    /// The instance's standard error.
    Stderr,
    /// A message Kappa recorded about the instance.
    Platform,
}

impl LogStream {
    /// The lower-case name used in files and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
            LogStream::Platform => "platform",
        }
    }
}

impl fmt::Display for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LogStream {
    type Err = LogError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "stdout" => Ok(LogStream::Stdout),
            "stderr" => Ok(LogStream::Stderr),
            "platform" => Ok(LogStream::Platform),
            other => Err(LogError::InvalidStream(other.to_owned())),
        }
    }
}

/// One log line as read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// RFC 3339 UTC timestamp with microseconds, e.g. `2025-01-02T03:04:05.678901Z`.
    pub timestamp: String,
    /// The instance id.
    pub instance: String,
    /// Which stream the line came from.
    pub stream: LogStream,
    /// The text, without the trailing newline.
    pub message: String,
}

impl LogLine {
    /// Parses one line of a log file (without its newline); `None` if it is malformed.
    pub(crate) fn parse(instance: &str, line: &str) -> Option<LogLine> {
        let (timestamp, rest) = line.split_once(' ')?;
        let (stream, message) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(LogLine {
            timestamp: timestamp.to_owned(),
            instance: instance.to_owned(),
            stream: stream.parse().ok()?,
            message: message.to_owned(),
        })
    }
}

/// The log store: hands out writers for instances and reads logs back per function.
///
/// Cheap to clone; clones share the root, the configuration and the timestamp clock.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<StoreInner>,
}

#[derive(Debug)]
pub(crate) struct StoreInner {
    pub(crate) root: PathBuf,
    pub(crate) config: LogConfig,
    /// The last timestamp handed out, in microseconds since the epoch: an atomic so every
    /// writer of this store gets strictly increasing timestamps without a lock.
    last_micros: AtomicI64,
}

impl StoreInner {
    /// A timestamp strictly after every one this store handed out before.
    pub(crate) fn timestamp(&self) -> String {
        let now = chrono::Utc::now().timestamp_micros();
        let previous = self
            .last_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last.saturating_add(1)))
            })
            // The closure always returns Some, so this is the Ok value either way.
            .unwrap_or_else(|last| last);
        let micros = now.max(previous.saturating_add(1));
        match chrono::DateTime::from_timestamp_micros(micros) {
            Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            None => chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        }
    }
}

/// The directory of pool instances of an environment, relative to the root.
pub(crate) const POOL_DIR: &str = "_pool";

impl LogStore {
    /// Opens (creating if needed) a log store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>, config: LogConfig) -> Result<Self, LogError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| LogError::File {
            path: root.clone(),
            source,
        })?;
        Ok(LogStore {
            inner: Arc::new(StoreInner {
                root,
                config,
                last_micros: AtomicI64::new(0),
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &std::path::Path {
        &self.inner.root
    }

    /// The configuration.
    pub fn config(&self) -> LogConfig {
        self.inner.config
    }

    /// A writer for a new instance of `environment`; lines go to
    /// `_pool/<environment>/<instance_id>.log` until [`InstanceLog::assign`]. Names that are not
    /// safe path components are sanitised (DNS-1123 names and typical ids are kept as they are).
    pub fn instance(&self, environment: &str, instance_id: &str) -> InstanceLog {
        InstanceLog::new(self.inner.clone(), environment, instance_id)
    }

    /// The lines of every instance of the function (current and rotated files), merged in
    /// timestamp order, filtered by `opts`. A function with no logs gives an empty list.
    pub async fn read(
        &self,
        namespace: &str,
        function: &str,
        opts: &ReadOptions,
    ) -> Result<Vec<LogLine>, LogError> {
        let dir = self.function_dir(namespace, function)?;
        read::read_dir_lines(dir, opts.clone()).await
    }

    /// Like [`LogStore::read`], for the instances of an environment's pool that are not yet
    /// specialized.
    pub async fn read_pool(
        &self,
        environment: &str,
        opts: &ReadOptions,
    ) -> Result<Vec<LogLine>, LogError> {
        check_name("environment", environment)?;
        let dir = self.inner.root.join(POOL_DIR).join(environment);
        read::read_dir_lines(dir, opts.clone()).await
    }

    /// First the lines [`LogStore::read`] would return (the last `tail` of them), then new
    /// lines from every instance file of the function as they are written, including files
    /// that appear later, polling about every 200 ms. The stream never ends by itself; drop it
    /// to stop. Invalid names or options give an empty stream that never yields (the error is
    /// logged); validate them with [`LogStore::read`] first to report it.
    pub fn follow(
        &self,
        namespace: &str,
        function: &str,
        opts: ReadOptions,
    ) -> impl futures::Stream<Item = LogLine> + Send + 'static {
        let dir = self.function_dir(namespace, function);
        read::follow(dir, opts)
    }

    /// Deletes every log of the function.
    pub async fn delete_function(&self, namespace: &str, function: &str) -> Result<(), LogError> {
        let dir = self.function_dir(namespace, function)?;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {
                tracing::debug!(namespace, function, "function logs deleted");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LogError::File { path: dir, source }),
        }
    }

    fn function_dir(&self, namespace: &str, function: &str) -> Result<PathBuf, LogError> {
        check_name("namespace", namespace)?;
        check_name("function", function)?;
        Ok(self.inner.root.join(namespace).join(function))
    }
}

/// Whether `s` can be used as one path component as it is.
pub(crate) fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `s` made safe as one path component (unchanged when it already is).
pub(crate) fn sanitize_component(s: &str) -> String {
    if is_safe_component(s) {
        return s.to_owned();
    }
    let cleaned: String = s
        .chars()
        .take(200)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "_".to_owned()
    } else {
        cleaned
    }
}

pub(crate) fn check_name(field: &'static str, value: &str) -> Result<(), LogError> {
    if is_safe_component(value) {
        Ok(())
    } else {
        Err(LogError::InvalidName {
            field,
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip() {
        for s in [LogStream::Stdout, LogStream::Stderr, LogStream::Platform] {
            assert_eq!(s.to_string().parse::<LogStream>().unwrap(), s);
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!("STDOUT".parse::<LogStream>().is_err());
    }

    #[test]
    fn line_parsing() {
        let l = LogLine::parse("i1", "2025-01-02T03:04:05.000001Z stderr boom: x y").unwrap();
        assert_eq!(l.timestamp, "2025-01-02T03:04:05.000001Z");
        assert_eq!(l.stream, LogStream::Stderr);
        assert_eq!(l.message, "boom: x y");
        assert_eq!(l.instance, "i1");
        let empty = LogLine::parse("i1", "2025-01-02T03:04:05.000001Z stdout ").unwrap();
        assert_eq!(empty.message, "");
        assert!(LogLine::parse("i1", "garbage").is_none());
        assert!(LogLine::parse("i1", "2025 nostream x").is_none());
    }

    #[test]
    fn line_json_is_camel_case() {
        let l = LogLine {
            timestamp: "t".into(),
            instance: "i".into(),
            stream: LogStream::Platform,
            message: "m".into(),
        };
        let v = serde_json::to_value(&l).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"timestamp": "t", "instance": "i", "stream": "platform", "message": "m"})
        );
    }

    #[test]
    fn timestamps_strictly_increase_and_are_fixed_width() {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), LogConfig::default()).unwrap();
        let stamps: Vec<String> = (0..1000).map(|_| store.inner.timestamp()).collect();
        for w in stamps.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
            assert_eq!(w[0].len(), w[1].len());
        }
        assert!(chrono::DateTime::parse_from_rfc3339(&stamps[0]).is_ok());
        assert!(stamps[0].ends_with('Z'));
        assert_eq!(stamps[0].len(), "2025-01-02T03:04:05.678901Z".len());
    }

    #[test]
    fn components() {
        assert!(is_safe_component("hello-world"));
        assert!(is_safe_component("abc_123.x"));
        for bad in ["", ".", "..", "a/b", "a\\b", "é"] {
            assert!(!is_safe_component(bad), "{bad:?}");
        }
        assert_eq!(sanitize_component("a/b"), "a_b");
        assert_eq!(sanitize_component(".."), "__");
        assert_eq!(sanitize_component(""), "_");
        assert_eq!(sanitize_component("ok-1"), "ok-1");
    }
}
