//! Finding and signalling instance processes through `/proc`.

use std::collections::{HashMap, HashSet};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// The environment variable that marks every process of an instance, so a recycled pid is never
/// mistaken for one.
pub(crate) const INSTANCE_ID_VAR: &str = "KAPPA_INSTANCE_ID";

/// `(pid, parent pid)` of every process visible in `/proc`.
fn parents() -> Vec<(i32, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_ppid(&stat)?))
        })
        .collect()
}

/// The parent pid from a `/proc/<pid>/stat` line (`pid (comm) state ppid ...`; `comm` may hold
/// spaces and parentheses, so parse after the last `)`).
fn parse_ppid(stat: &str) -> Option<i32> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Every descendant of `root` (not `root` itself), parents before children.
pub(crate) fn descendants(root: i32) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (pid, ppid) in parents() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        for &child in children.get(&pid).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(child) {
                out.push(child);
                queue.push(child);
            }
        }
    }
    out
}

/// Sends `signal` to the instance whose first process is `root` (its own process group leader).
///
/// `spare_root`: the root is the sandbox's monitor, which stays to report the payload's status;
/// a graceful stop signals what runs inside instead (the sandbox's init ignores signals from
/// outside its namespace unless it has a handler, so only the payload acts on it), and the monitor
/// exits with the runtime's status. A process may leave the group (`setsid`), so descendants
/// are found through `/proc` too.
pub(crate) fn signal_tree(root: i32, signal: Signal, spare_root: bool) {
    let below = descendants(root);
    if !spare_root || below.is_empty() {
        let _ = killpg(Pid::from_raw(root), signal);
        let _ = kill(Pid::from_raw(root), signal);
    }
    for pid in below {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Whether the process `pid` carries `KAPPA_INSTANCE_ID=<id>` in its environment.
pub(crate) fn is_instance_process(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| environ_has(&environ, id))
}

fn environ_has(environ: &[u8], id: &str) -> bool {
    let wanted = format!("{INSTANCE_ID_VAR}={id}");
    environ
        .split(|b| *b == 0)
        .any(|entry| entry == wanted.as_bytes())
}

/// The instance id a process is marked with, if any.
fn instance_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{INSTANCE_ID_VAR}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|id| String::from_utf8_lossy(id).into_owned())
}

/// SIGKILLs every visible process marked with one of `ids`; returns how many were signalled.
pub(crate) fn kill_marked(ids: &HashSet<String>) -> usize {
    if ids.is_empty() {
        return 0;
    }
    let me = std::process::id();
    let mut killed = 0;
    for (pid, _) in parents() {
        if u32::try_from(pid).is_ok_and(|p| p == me) {
            continue;
        }
        if instance_of(pid).is_some_and(|id| ids.contains(&id))
            && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok()
        {
            killed += 1;
        }
    }
    killed
}

/// Whether a process with this pid exists (and is not a zombie awaiting its parent).
#[cfg(test)]
pub(crate) fn alive(pid: i32) -> bool {
    let path = format!("/proc/{pid}/stat");
    match std::fs::read_to_string(&path) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppid_parses_after_odd_comm() {
        assert_eq!(parse_ppid("123 (a (b) c) S 77 123 123 0"), Some(77));
        assert_eq!(parse_ppid("garbage"), None);
    }

    #[test]
    fn environ_matches_whole_entries_only() {
        let environ = b"PATH=/bin\0KAPPA_INSTANCE_ID=abc\0";
        assert!(environ_has(environ, "abc"));
        assert!(!environ_has(environ, "ab"));
        assert!(!environ_has(b"KAPPA_INSTANCE_ID=abcd\0", "abc"));
    }

    #[test]
    fn own_process_is_alive_and_has_descendants_listed() {
        let me = i32::try_from(std::process::id()).unwrap();
        assert!(alive(me));
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        assert!(descendants(me).contains(&pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
