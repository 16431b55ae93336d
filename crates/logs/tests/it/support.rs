use std::path::Path;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kappa_logs::{LogConfig, LogLine, LogStore};

pub fn store(root: &Path) -> LogStore {
    LogStore::open(root, LogConfig::default()).unwrap()
}

pub fn messages(lines: &[LogLine]) -> Vec<&str> {
    lines.iter().map(|l| l.message.as_str()).collect()
}

/// The next item, failing the test if none comes within a generous bound (this is not a timing
/// assertion: the follower polls every ~200 ms).
pub async fn next<S: Stream<Item = LogLine> + Unpin>(stream: &mut S) -> LogLine {
    tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("no log line within 20 s")
        .expect("the follow stream ended")
}

/// Files under `dir`, relative, sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}
