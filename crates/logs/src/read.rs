//! Reading and following a directory of instance logs.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::write::{instance_of, rotated};
use crate::{LogError, LogLine, check_name};

/// How often [`crate::LogStore::follow`] looks for new lines.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Which lines to read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ReadOptions {
    /// Only the last N lines (over all instances).
    pub tail: Option<usize>,
    /// Only this instance's lines.
    pub instance: Option<String>,
    /// Only lines at or after this time: an RFC 3339 timestamp, or a duration back from now
    /// such as `30s`, `5m`, `2h` or `1d`.
    pub since: Option<String>,
}

/// Validated [`ReadOptions`] filters.
#[derive(Debug, Clone)]
struct Filter {
    instance: Option<String>,
    /// In the files' timestamp format, so it compares as a string.
    since: Option<String>,
}

impl Filter {
    fn new(opts: &ReadOptions) -> Result<Self, LogError> {
        if let Some(instance) = &opts.instance {
            check_name("instance", instance)?;
        }
        let since = opts.since.as_deref().map(parse_since).transpose()?;
        Ok(Filter {
            instance: opts.instance.clone(),
            since,
        })
    }

    fn wants_instance(&self, id: &str) -> bool {
        self.instance.as_deref().is_none_or(|want| want == id)
    }

    fn wants_line(&self, line: &LogLine) -> bool {
        self.since
            .as_deref()
            .is_none_or(|since| line.timestamp.as_str() >= since)
    }
}

/// Parses `since` into the files' timestamp format.
fn parse_since(value: &str) -> Result<String, LogError> {
    let invalid = |reason: &str| LogError::InvalidSince {
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let format =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        return Ok(format(t.with_timezone(&chrono::Utc)));
    }
    let unit_at = value
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| invalid("a duration needs a unit: s, m, h or d"))?;
    let (number, unit) = value.split_at(unit_at);
    let number: i64 = number.parse().map_err(|_| {
        invalid("expected an RFC 3339 timestamp or a duration such as 30s, 5m, 2h, 1d")
    })?;
    let seconds_per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(invalid(
                "expected an RFC 3339 timestamp or a duration such as 30s, 5m, 2h, 1d",
            ));
        }
    };
    let back = number
        .checked_mul(seconds_per_unit)
        .and_then(chrono::TimeDelta::try_seconds)
        .ok_or_else(|| invalid("the duration is too long"))?;
    let t = chrono::Utc::now()
        .checked_sub_signed(back)
        .ok_or_else(|| invalid("the duration is too long"))?;
    Ok(format(t))
}

/// Where reading of one instance's current file got to.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The inode of the file the offset is in: a different inode under `<id>.log` means the
    /// file was rotated (and the old one is now `<id>.log.1`).
    ino: u64,
    /// Bytes of complete lines already read.
    offset: u64,
}

/// The reading state over one directory: what has been read from which file.
#[derive(Debug)]
struct Scanner {
    dir: PathBuf,
    filter: Filter,
    cursors: HashMap<String, Cursor>,
}

impl Scanner {
    fn new(dir: PathBuf, filter: Filter) -> Self {
        Scanner {
            dir,
            filter,
            cursors: HashMap::new(),
        }
    }

    /// Every complete line written since the previous scan (on the first scan: every line),
    /// in timestamp order.
    fn scan(&mut self) -> Result<Vec<LogLine>, LogError> {
        let ids = match list_instances(&self.dir) {
            Ok(ids) => ids,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.cursors.clear();
                return Ok(Vec::new());
            }
            Err(source) => {
                return Err(LogError::File {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        self.cursors.retain(|id, _| ids.contains(id));
        let mut lines = Vec::new();
        for id in &ids {
            if !self.filter.wants_instance(id) {
                continue;
            }
            if let Err(e) = self.scan_instance(id, &mut lines) {
                // Files come and go (rotation, pruning, deletion) while we read: skip this one
                // until the next scan.
                tracing::debug!(dir = %self.dir.display(), instance = %id, error = %e, "skipping a log file");
            }
        }
        // Stable: lines with equal timestamps keep their file order.
        lines.sort_by(|a, b| a.timestamp.cmp(&b.timestamp));
        lines.retain(|l| self.filter.wants_line(l));
        Ok(lines)
    }

    fn scan_instance(&mut self, id: &str, out: &mut Vec<LogLine>) -> std::io::Result<()> {
        let current = self.dir.join(format!("{id}.log"));
        let previous = rotated(&current);
        // Open the current file first: its inode is then fixed, whatever rotation happens next.
        let mut file = match File::open(&current) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let ino = match &file {
            Some(f) => Some(f.metadata()?.ino()),
            None => None,
        };
        let cursor = self.cursors.get(id).copied();
        match (cursor, ino) {
            // Same file as last time: continue where we were (from the start if truncated).
            (Some(c), Some(ino)) if c.ino == ino => {
                if let Some(f) = &mut file {
                    let len = f.metadata()?.len();
                    let from = if len < c.offset { 0 } else { c.offset };
                    let offset = read_lines(f, from, id, out)?;
                    self.cursors.insert(id.to_owned(), Cursor { ino, offset });
                }
                return Ok(());
            }
            // Rotated since last time: finish the old file, now `.log.1`.
            (Some(c), _) => {
                if let Ok(mut old) = File::open(&previous)
                    && old.metadata()?.ino() == c.ino
                {
                    read_lines(&mut old, c.offset, id, out)?;
                }
            }
            // A file we have not seen: its rotated part first, unless that is the file we
            // opened (rotated just now).
            (None, _) => {
                if let Ok(mut old) = File::open(&previous)
                    && Some(old.metadata()?.ino()) != ino
                {
                    read_lines(&mut old, 0, id, out)?;
                }
            }
        }
        match (file, ino) {
            (Some(mut f), Some(ino)) => {
                let offset = read_lines(&mut f, 0, id, out)?;
                self.cursors.insert(id.to_owned(), Cursor { ino, offset });
            }
            _ => {
                self.cursors.remove(id);
            }
        }
        Ok(())
    }
}

/// The instance ids with a log file in `dir`, sorted.
fn list_instances(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some((id, _)) = entry.file_name().to_str().and_then(instance_of) {
            ids.insert(id.to_owned());
        }
    }
    Ok(ids)
}

/// Reads the complete lines of `file` from `offset`, appending them to `out`; returns the
/// offset after the last complete line (a partly written last line is left for next time).
fn read_lines(
    file: &mut File,
    offset: u64,
    instance: &str,
    out: &mut Vec<LogLine>,
) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let Some(end) = bytes.iter().rposition(|&b| b == b'\n') else {
        return Ok(offset);
    };
    for raw in bytes[..end].split(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(raw);
        if let Some(line) = LogLine::parse(instance, &text) {
            out.push(line);
        }
    }
    Ok(offset + end as u64 + 1)
}

fn apply_tail(mut lines: Vec<LogLine>, tail: Option<usize>) -> Vec<LogLine> {
    if let Some(n) = tail
        && lines.len() > n
    {
        lines.drain(..lines.len() - n);
    }
    lines
}

/// Every line in `dir`, filtered by `opts`.
pub(crate) async fn read_dir_lines(
    dir: PathBuf,
    opts: ReadOptions,
) -> Result<Vec<LogLine>, LogError> {
    let filter = Filter::new(&opts)?;
    tokio::task::spawn_blocking(move || {
        let lines = Scanner::new(dir, filter).scan()?;
        Ok(apply_tail(lines, opts.tail))
    })
    .await
    .map_err(|e| LogError::Task(e.to_string()))?
}

/// See [`crate::LogStore::follow`].
pub(crate) fn follow(
    dir: Result<PathBuf, LogError>,
    opts: ReadOptions,
) -> impl Stream<Item = LogLine> + Send + 'static {
    let start = match dir.and_then(|dir| Ok((dir, Filter::new(&opts)?))) {
        Ok((dir, filter)) => Some(Follow {
            scanner: Some(Scanner::new(dir.clone(), filter.clone())),
            dir,
            filter,
            tail: opts.tail,
            first: true,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "cannot follow logs");
            None
        }
    };
    futures::stream::unfold(start, |state| async move {
        let Some(mut state) = state else {
            // Invalid request: a stream that never yields and never ends, as documented.
            return futures::future::pending().await;
        };
        loop {
            if !state.first {
                tokio::time::sleep(POLL_INTERVAL).await;
            }
            let lines = state.poll().await;
            if !lines.is_empty() {
                return Some((lines, Some(state)));
            }
        }
    })
    .flat_map(futures::stream::iter)
}

/// The state of one follower between polls.
struct Follow {
    /// `None` only while a scan runs on the blocking pool (or after one panicked).
    scanner: Option<Scanner>,
    dir: PathBuf,
    filter: Filter,
    tail: Option<usize>,
    first: bool,
}

impl Follow {
    async fn poll(&mut self) -> Vec<LogLine> {
        let mut scanner = match self.scanner.take() {
            Some(s) => s,
            None => {
                // The previous scan panicked: start over, skipping what is already there.
                let mut s = Scanner::new(self.dir.clone(), self.filter.clone());
                let _ = s.scan();
                s
            }
        };
        let result = tokio::task::spawn_blocking(move || {
            let lines = scanner.scan();
            (scanner, lines)
        })
        .await;
        let lines = match result {
            Ok((scanner, lines)) => {
                self.scanner = Some(scanner);
                match lines {
                    Ok(lines) => lines,
                    Err(e) => {
                        tracing::debug!(error = %e, "log follow scan failed");
                        Vec::new()
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "log follow scan task failed");
                Vec::new()
            }
        };
        if std::mem::take(&mut self.first) {
            apply_tail(lines, self.tail)
        } else {
            lines
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_formats() {
        assert_eq!(
            parse_since("2025-01-02T04:04:05+01:00").unwrap(),
            "2025-01-02T03:04:05.000000Z"
        );
        let five_minutes_ago = parse_since("5m").unwrap();
        assert!(
            five_minutes_ago
                < chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        );
        for bad in ["", "5", "m", "5w", "yesterday", "99999999999999999999d"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tail() {
        let line = |m: &str| LogLine {
            timestamp: "t".into(),
            instance: "i".into(),
            stream: crate::LogStream::Stdout,
            message: m.into(),
        };
        let lines = vec![line("a"), line("b"), line("c")];
        assert_eq!(apply_tail(lines.clone(), None).len(), 3);
        assert_eq!(apply_tail(lines.clone(), Some(5)).len(), 3);
        let last = apply_tail(lines, Some(2));
        assert_eq!(last[0].message, "b");
        assert_eq!(last.len(), 2);
        assert!(apply_tail(vec![line("a")], Some(0)).is_empty());
    }
}
