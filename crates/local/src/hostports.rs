//! Host ports (`hostPorts`): named ports of the host's own loopback that a sandboxed instance
//! may reach at the same port of its own loopback (a local database in development).
//!
//! For each port, the sandbox's monitor opens a listening socket on `127.0.0.1:PORT` inside the
//! instance's network namespace and hands it to the platform through the connector
//! ([`kappa_sandbox::connector::listen_inside`]). A task of the platform (host namespace)
//! accepts on it and relays each connection to the host's `127.0.0.1:PORT`. Closing a port
//! (the instance ends, or is specialized for a function without it) ends its task, its
//! connections and the socket, which frees the port inside the sandbox.
//!
//! The platform's own listeners are never relayed, even when named: a port one of the
//! platform's processes (this one, or any running the same executable) listens on is refused
//! when the relay opens and again on every connection. So is the runtime's own port inside
//! the sandbox.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use kappa_logs::{InstanceLog, LogStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::sandbox::SANDBOX_PORT;

/// The host ports relayed into one instance. Dropping it closes them all.
#[derive(Debug, Default)]
pub(crate) struct HostPorts {
    /// A std mutex: never held across an `.await`.
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Port to its relay task.
    open: BTreeMap<u16, Relay>,
    /// The instance ended: nothing opens any more.
    closed: bool,
}

/// One port's relay task; aborted (with its connections) when dropped.
#[derive(Debug)]
struct Relay(JoinHandle<()>);

impl Drop for Relay {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl HostPorts {
    /// The ports open now.
    pub(crate) fn ports(&self) -> Vec<u16> {
        self.lock().open.keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the open ports exactly `wanted`: checks every wanted port first (nothing changes
    /// when one is refused), closes the ports not wanted, then opens the missing ones through
    /// `connector`. The error names the field and the port.
    pub(crate) async fn set(
        &self,
        wanted: &[u16],
        connector: &Path,
        log: &InstanceLog,
    ) -> Result<(), String> {
        check(wanted).await?;
        let missing: Vec<u16> = {
            let mut state = self.lock();
            state.open.retain(|port, _| wanted.contains(port));
            wanted
                .iter()
                .copied()
                .filter(|p| !state.open.contains_key(p))
                .collect()
        };
        for port in missing {
            let listener = kappa_sandbox::connector::listen_inside(connector, port)
                .await
                .map_err(|e| {
                    format!("hostPorts: cannot open port {port} inside the sandbox: {e}")
                })?;
            let task = Relay(tokio::spawn(relay(listener, port, log.clone())));
            let mut state = self.lock();
            if state.closed {
                // The instance ended while this port was being opened: its relay goes now.
                return Err("hostPorts: the instance ended".to_owned());
            }
            state.open.insert(port, task);
        }
        Ok(())
    }

    /// Closes every port, for good.
    pub(crate) fn close_all(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.open.clear();
    }
}

/// Refuses ports that must never be relayed: the runtime's own port inside the sandbox, and
/// the platform's own listeners.
pub(crate) async fn check(ports: &[u16]) -> Result<(), String> {
    if ports.is_empty() {
        return Ok(());
    }
    if ports.contains(&SANDBOX_PORT) {
        return Err(format!(
            "hostPorts: port {SANDBOX_PORT} is where the runtime listens inside its sandbox and \
             cannot be relayed; serve the host service on another port"
        ));
    }
    let ports = ports.to_vec();
    let own = tokio::task::spawn_blocking(move || {
        ports.into_iter().find(|port| platform_listens_on(*port))
    })
    .await
    .map_err(|e| format!("hostPorts: checking the platform's own ports failed: {e}"))?;
    match own {
        Some(port) => Err(format!(
            "hostPorts: port {port} is one of the platform's own listeners, which functions \
             may never reach"
        )),
        None => Ok(()),
    }
}

/// Accepts connections opened inside the sandbox and relays each to the host's
/// `127.0.0.1:port`, until aborted. Connections end with the task.
async fn relay(listener: TcpListener, port: u16, log: InstanceLog) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inside, _)) => {
                    connections.spawn(relay_one(inside, port, log.clone()));
                }
                Err(e) => {
                    tracing::debug!(port, error = %e, "host port accept failed");
                    // EMFILE and the like: give other tasks a chance before trying again.
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn relay_one(mut inside: TcpStream, port: u16, log: InstanceLog) {
    let own = tokio::task::spawn_blocking(move || platform_listens_on(port))
        .await
        .unwrap_or(true);
    if own {
        log.write(
            LogStream::Platform,
            &format!(
                "hostPorts: port {port} is now one of the platform's own listeners; connection refused"
            ),
        );
        return;
    }
    let mut outside = match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
        Ok(outside) => outside,
        Err(e) => {
            log.write(
                LogStream::Platform,
                &format!("hostPorts: cannot connect to the host's 127.0.0.1:{port}: {e}"),
            );
            return;
        }
    };
    let _ = inside.set_nodelay(true);
    let _ = outside.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
}

/// Whether a process of the platform (this one, or another running the same executable)
/// listens on `port` of any address of the host's network namespace.
fn platform_listens_on(port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let own_exe = std::fs::read_link("/proc/self/exe").ok();
    let own_pid = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        // Cannot tell: refuse rather than risk relaying to the platform.
        return true;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let same = pid == own_pid
            || (own_exe.is_some() && std::fs::read_link(dir.join("exe")).ok() == own_exe);
        if same && holds_any(&dir.join("fd"), &inodes) {
            return true;
        }
    }
    false
}

/// The inodes of the sockets listening on `port` (TCP, IPv4 and IPv6, any address).
fn listening_inodes(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(parse_listeners(&text, port));
        }
    }
    inodes
}

/// The inodes of the `LISTEN` rows of a `/proc/net/tcp{,6}` table whose local port is `port`.
fn parse_listeners(table: &str, port: u16) -> impl Iterator<Item = u64> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local = fields.get(1)?;
        let state = fields.get(3)?;
        let inode = fields.get(9)?;
        let (_, local_port) = local.rsplit_once(':')?;
        (*state == "0A" && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// Whether the descriptor directory `fds` holds a socket with one of `inodes`.
fn holds_any(fds: &Path, inodes: &HashSet<u64>) -> bool {
    let Ok(entries) = std::fs::read_dir(fds) else {
        return false;
    };
    entries.flatten().any(|fd| {
        std::fs::read_link(fd.path()).ok().is_some_and(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|n| inodes.contains(&n))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_are_found_in_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:1538 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n\
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(parse_listeners(table, 5432).collect::<Vec<_>>(), [4242]);
        assert_eq!(parse_listeners(table, 22).collect::<Vec<_>>(), [17]);
        assert!(parse_listeners(table, 80).next().is_none());
    }

    #[test]
    fn the_platforms_own_listener_is_recognised() {
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = own.local_addr().unwrap().port();
        assert!(platform_listens_on(port));
        drop(own);
        assert!(!platform_listens_on(port));
    }

    /// Without a namespace (a connector served in this process), the relay set follows what
    /// is asked, frees a port it closes, and opens nothing once the instance ended.
    #[tokio::test]
    async fn the_set_follows_the_request_and_ends_with_the_instance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connector");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || kappa_sandbox::connector::serve(&listener));
        let logs =
            kappa_logs::LogStore::open(dir.path().join("logs"), kappa_logs::LogConfig::default())
                .unwrap();
        let log = logs.instance("env", "i");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();

        let ports = HostPorts::default();
        ports.set(&[port], &path, &log).await.unwrap();
        assert_eq!(ports.ports(), [port]);
        assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_err());
        ports.set(&[], &path, &log).await.unwrap();
        assert!(ports.ports().is_empty());
        // The relay task is aborted at once; its socket closes when the runtime drops it.
        kappa_test_support::eventually(
            std::time::Duration::from_secs(10),
            "the closed port to be free",
            || std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        )
        .await;
        ports.close_all();
        let err = ports.set(&[port], &path, &log).await.unwrap_err();
        assert!(err.contains("ended"), "{err}");
        assert!(ports.ports().is_empty());
    }

    #[tokio::test]
    async fn the_runtime_port_and_own_listeners_are_refused() {
        let err = check(&[SANDBOX_PORT]).await.unwrap_err();
        assert!(err.contains("hostPorts") && err.contains("8888"), "{err}");
        let own = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = own.local_addr().unwrap().port();
        let err = check(&[port]).await.unwrap_err();
        assert!(err.contains(&format!("port {port}")), "{err}");
        check(&[]).await.unwrap();
    }
}
