//! Where an instance's runtime server is reached.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the platform reaches one instance's runtime server.
///
/// Written and parsed as a string, so it travels in the executor's endpoint feed and in state
/// files unchanged: `10.0.0.7:8888` for [`InstanceAddr::Tcp`], `sandbox:8888:/path/to/socket`
/// for [`InstanceAddr::Sandbox`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum InstanceAddr {
    /// A TCP address any process of the platform can connect to (a pod's IP, or an
    /// unsandboxed local instance on the host's loopback).
    Tcp(SocketAddr),
    /// A runtime listening on `127.0.0.1:port` inside its sandbox's own network namespace, which
    /// no address outside reaches: a connection is made by the sandbox's connector, a Unix
    /// socket only the platform can open, which hands back a TCP socket connected inside the
    /// namespace (see `kappa_sandbox::connector`).
    Sandbox {
        /// The connector's Unix socket.
        connector: PathBuf,
        /// The runtime's port inside the sandbox.
        port: u16,
    },
}

/// The prefix of a [`InstanceAddr::Sandbox`] in its string form.
const SANDBOX_PREFIX: &str = "sandbox:";

impl InstanceAddr {
    /// The TCP address, for instances reached over TCP.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            Self::Tcp(addr) => Some(*addr),
            Self::Sandbox { .. } => None,
        }
    }

    /// The sandbox connector and port, for sandboxed instances.
    pub fn sandbox(&self) -> Option<(&Path, u16)> {
        match self {
            Self::Tcp(_) => None,
            Self::Sandbox { connector, port } => Some((connector, *port)),
        }
    }

    /// The `Host` header value a request to this instance carries: the address the runtime
    /// itself listens on.
    pub fn authority(&self) -> String {
        match self {
            Self::Tcp(addr) => addr.to_string(),
            Self::Sandbox { port, .. } => format!("127.0.0.1:{port}"),
        }
    }
}

impl From<SocketAddr> for InstanceAddr {
    fn from(addr: SocketAddr) -> Self {
        Self::Tcp(addr)
    }
}

impl fmt::Display for InstanceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Sandbox { connector, port } => {
                write!(f, "{SANDBOX_PREFIX}{port}:{}", connector.display())
            }
        }
    }
}

/// A string that is neither `ip:port` nor `sandbox:<port>:<absolute path>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid instance address {0:?}: expected ip:port or sandbox:<port>:<absolute socket path>"
)]
pub struct ParseAddrError(String);

impl FromStr for InstanceAddr {
    type Err = ParseAddrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix(SANDBOX_PREFIX) {
            let (port, path) = rest
                .split_once(':')
                .ok_or_else(|| ParseAddrError(s.to_owned()))?;
            let port = port.parse().map_err(|_| ParseAddrError(s.to_owned()))?;
            let connector = PathBuf::from(path);
            if !connector.is_absolute() {
                return Err(ParseAddrError(s.to_owned()));
            }
            return Ok(Self::Sandbox { connector, port });
        }
        s.parse::<SocketAddr>()
            .map(Self::Tcp)
            .map_err(|_| ParseAddrError(s.to_owned()))
    }
}

impl From<InstanceAddr> for String {
    fn from(addr: InstanceAddr) -> Self {
        addr.to_string()
    }
}

impl TryFrom<String> for InstanceAddr {
    type Error = ParseAddrError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_strings_and_json() {
        for text in [
            "127.0.0.1:8888",
            "[::1]:80",
            "sandbox:8888:/var/lib/kappa/sockets/pool-python-1",
            "sandbox:1:/a:b",
        ] {
            let addr: InstanceAddr = text.parse().unwrap();
            assert_eq!(addr.to_string(), text);
            let json = serde_json::to_string(&addr).unwrap();
            assert_eq!(serde_json::from_str::<InstanceAddr>(&json).unwrap(), addr);
        }
        let sandbox: InstanceAddr = "sandbox:1:/a:b".parse().unwrap();
        assert_eq!(sandbox.sandbox(), Some((Path::new("/a:b"), 1)));
        assert_eq!(sandbox.authority(), "127.0.0.1:1");
        assert_eq!(sandbox.tcp(), None);
    }

    #[test]
    fn bad_strings_are_refused() {
        for bad in [
            "",
            "localhost",
            "sandbox:x:/s",
            "sandbox:80:relative",
            "sandbox:80",
        ] {
            assert!(bad.parse::<InstanceAddr>().is_err(), "{bad}");
        }
    }
}
