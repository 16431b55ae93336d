//! Writing one instance's log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::{LogStream, POOL_DIR, StoreInner, sanitize_component};

/// The longest line written, in bytes; longer messages are split into several lines.
pub(crate) const MAX_LINE_BYTES: usize = 16 * 1024;

/// Pool log files kept per environment (instances that died before being specialized leave
/// their file behind; this bounds how many).
const MAX_POOL_FILES: usize = 256;

/// One instance's log writer. Cheap to clone (an `Arc` inside); clones write to the same file.
/// Thread-safe: lines from different threads never interleave within a line.
#[derive(Debug, Clone)]
pub struct InstanceLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<StoreInner>,
    id: String,
    /// A std mutex: it guards a synchronous append that takes microseconds and is never held
    /// across an `.await`, so an async mutex would only add cost.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// The current file (`<dir>/<id>.log`).
    path: PathBuf,
    /// Open lazily on the first write after a (re)assignment or rotation.
    file: Option<File>,
    /// Bytes in the current file.
    size: u64,
    /// Whether an IO error was already reported: reported once, then ignored.
    warned: bool,
}

impl InstanceLog {
    pub(crate) fn new(store: Arc<StoreInner>, environment: &str, instance_id: &str) -> Self {
        let id = sanitize_component(instance_id);
        let dir = store
            .root
            .join(POOL_DIR)
            .join(sanitize_component(environment));
        let path = dir.join(format!("{id}.log"));
        prune(&dir, MAX_POOL_FILES, &id);
        InstanceLog {
            inner: Arc::new(Inner {
                store,
                id,
                state: Mutex::new(State {
                    path,
                    file: None,
                    size: 0,
                    warned: false,
                }),
            }),
        }
    }

    /// The instance id (as used in file names).
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The file lines currently go to.
    pub fn path(&self) -> PathBuf {
        self.state().path.clone()
    }

    /// From now on lines go to `<namespace>/<function>/<id>.log`. What was written so far
    /// (the runtime's start-up lines, in the pool file) moves there too. Then the function's
    /// directory is pruned to the newest `max_instances_per_function` instances' files.
    pub fn assign(&self, namespace: &str, function: &str) {
        let dir = self
            .inner
            .store
            .root
            .join(sanitize_component(namespace))
            .join(sanitize_component(function));
        let new_path = dir.join(format!("{}.log", self.inner.id));
        let mut state = self.state();
        if state.path == new_path {
            return;
        }
        let old_path = std::mem::replace(&mut state.path, new_path.clone());
        let result = std::fs::create_dir_all(&dir)
            .and_then(|()| move_file(&rotated(&old_path), &rotated(&new_path)))
            .and_then(|_| move_file(&old_path, &new_path));
        // A renamed file stays open: its descriptor follows it to the new name, so the next
        // line (often the runtime's, racing the platform's own) needs no reopen. Otherwise the
        // open file is the old one, now removed or left behind.
        if !matches!(result, Ok(Moved::Renamed)) {
            state.file = None;
        }
        state.size = std::fs::metadata(&new_path).map(|m| m.len()).unwrap_or(0);
        if let Err(e) = result {
            warn_once(&mut state, &self.inner.id, &new_path, &e);
        }
        drop(state);
        prune(
            &dir,
            self.inner.store.config.max_instances_per_function,
            &self.inner.id,
        );
        tracing::debug!(instance = %self.inner.id, namespace, function, "instance log assigned");
    }

    /// Appends one line per line of `message` (a trailing newline is ignored; lines longer than
    /// 16 KiB are split). Never panics and never waits on anything but a short file append;
    /// an IO error is reported once with `tracing::warn` and otherwise ignored.
    pub fn write(&self, stream: LogStream, message: &str) {
        let message = message.strip_suffix('\n').unwrap_or(message);
        let mut state = self.state();
        for line in message.split('\n') {
            let line = line.strip_suffix('\r').unwrap_or(line);
            for piece in split_at_boundaries(line, MAX_LINE_BYTES) {
                let text = format!(
                    "{} {} {}\n",
                    self.inner.store.timestamp(),
                    stream.as_str(),
                    piece
                );
                if let Err(e) = self.append(&mut state, text.as_bytes()) {
                    let path = state.path.clone();
                    warn_once(&mut state, &self.inner.id, &path, &e);
                }
            }
        }
    }

    /// Reads `reader` line by line until EOF (or a read error), writing each line to this log
    /// as `stream`. A line longer than 16 KiB is split into several.
    pub fn spawn_pump<R: AsyncRead + Unpin + Send + 'static>(
        &self,
        reader: R,
        stream: LogStream,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move { log.pump(reader, stream).await })
    }

    async fn pump<R: AsyncRead + Unpin>(&self, reader: R, stream: LogStream) {
        let mut reader = BufReader::new(reader);
        let mut line: Vec<u8> = Vec::new();
        loop {
            let buf = match reader.fill_buf().await {
                Ok(buf) => buf,
                Err(e) => {
                    tracing::debug!(instance = %self.inner.id, %stream, error = %e, "log pump read failed");
                    break;
                }
            };
            if buf.is_empty() {
                break;
            }
            let room = MAX_LINE_BYTES - line.len();
            // Look one byte past the room, so a line of exactly the maximum is not followed by
            // an empty one.
            let window = &buf[..buf.len().min(room + 1)];
            if let Some(i) = window.iter().position(|&b| b == b'\n') {
                line.extend_from_slice(&buf[..i]);
                reader.consume(i + 1);
                self.emit(stream, &mut line);
            } else {
                let take = buf.len().min(room);
                line.extend_from_slice(&buf[..take]);
                reader.consume(take);
                if line.len() >= MAX_LINE_BYTES {
                    self.emit(stream, &mut line);
                }
            }
        }
        if !line.is_empty() {
            self.emit(stream, &mut line);
        }
    }

    fn emit(&self, stream: LogStream, line: &mut Vec<u8>) {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(line);
        self.write(stream, &text);
        line.clear();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another writer panicked mid-append; the state is still
        // usable (at worst one partial line), and logging must never panic.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn append(&self, state: &mut State, bytes: &[u8]) -> std::io::Result<()> {
        let max = self.inner.store.config.max_file_bytes;
        if state.size > 0 && state.size + bytes.len() as u64 > max {
            state.file = None;
            match std::fs::rename(&state.path, rotated(&state.path)) {
                Ok(()) => {}
                // Deleted under us (the function's logs were deleted): start a new file.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            state.size = 0;
        }
        let file = match &mut state.file {
            Some(file) => file,
            slot @ None => {
                if let Some(parent) = state.path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&state.path)?;
                state.size = file.metadata()?.len();
                slot.insert(file)
            }
        };
        file.write_all(bytes)?;
        state.size += bytes.len() as u64;
        Ok(())
    }
}

fn warn_once(state: &mut State, id: &str, path: &Path, error: &std::io::Error) {
    if !state.warned {
        state.warned = true;
        tracing::warn!(instance = %id, path = %path.display(), error = %error, "cannot write instance log; further errors are ignored");
    }
}

/// `<path>.1`
pub(crate) fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// What [`move_file`] did.
enum Moved {
    /// There was nothing to move.
    Missing,
    /// `from` now has the name `to` (same file, so an open descriptor follows it).
    Renamed,
    /// `from` was appended to an existing `to` and removed.
    Appended,
}

/// Moves `from` to `to`; if `to` exists, appends `from` to it instead. A missing `from` is fine.
fn move_file(from: &Path, to: &Path) -> std::io::Result<Moved> {
    if !from.exists() {
        return Ok(Moved::Missing);
    }
    if !to.exists() {
        return std::fs::rename(from, to).map(|()| Moved::Renamed);
    }
    let mut src = File::open(from)?;
    let mut dst = OpenOptions::new().append(true).open(to)?;
    std::io::copy(&mut src, &mut dst)?;
    std::fs::remove_file(from).map(|()| Moved::Appended)
}

/// Splits `s` into pieces of at most `max` bytes at character boundaries (one empty piece for
/// an empty string).
fn split_at_boundaries(s: &str, max: usize) -> Vec<&str> {
    if s.len() <= max {
        return vec![s];
    }
    let mut pieces = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // Only possible if max is smaller than one character; take that character whole.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (piece, tail) = rest.split_at(end);
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// The instance id of a log file name (`<id>.log` or `<id>.log.1`).
pub(crate) fn instance_of(file_name: &str) -> Option<(&str, bool)> {
    if let Some(id) = file_name.strip_suffix(".log") {
        Some((id, false))
    } else {
        file_name.strip_suffix(".log.1").map(|id| (id, true))
    }
}

/// Keeps the files of the `keep` most recently modified instances in `dir` (always counting
/// `current` among them) and deletes the others. Errors are logged and ignored.
fn prune(dir: &Path, keep: usize, current: &str) {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list logs to prune");
            return;
        }
    };
    let mut newest: std::collections::HashMap<String, SystemTime> = Default::default();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((id, _)) = name.to_str().and_then(instance_of) else {
            continue;
        };
        if id == current {
            continue;
        }
        let modified = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let slot = newest.entry(id.to_owned()).or_insert(modified);
        *slot = (*slot).max(modified);
    }
    let others = keep.saturating_sub(1);
    if newest.len() <= others {
        return;
    }
    let mut ids: Vec<(SystemTime, String)> = newest.into_iter().map(|(id, t)| (t, id)).collect();
    ids.sort_by(|a, b| b.cmp(a));
    for (_, id) in ids.into_iter().skip(others) {
        for name in [format!("{id}.log"), format!("{id}.log.1")] {
            let path = dir.join(name);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot prune an old instance log");
            }
        }
        tracing::debug!(dir = %dir.display(), instance = %id, "pruned an old instance log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitting_respects_char_boundaries() {
        assert_eq!(split_at_boundaries("", 4), vec![""]);
        assert_eq!(split_at_boundaries("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(split_at_boundaries("ééé", 3), vec!["é", "é", "é"]);
        assert_eq!(split_at_boundaries("é", 1), vec!["é"]);
    }

    #[test]
    fn file_names() {
        assert_eq!(instance_of("abc.log"), Some(("abc", false)));
        assert_eq!(instance_of("abc.log.1"), Some(("abc", true)));
        assert_eq!(instance_of("abc.txt"), None);
        assert_eq!(rotated(Path::new("/x/a.log")), PathBuf::from("/x/a.log.1"));
    }
}
