//! Spare sandboxes (`docs/design/011-spare-sandboxes.md`): a sandbox assembled ahead of time
//! whose init waits to be claimed before it starts anything.
//!
//! The platform starts the monitor with one end of a Unix socket pair as its stdin (the init
//! inherits it) and [`SandboxSpec::claim`](crate::SandboxSpec) set. The init assembles the
//! sandbox as usual (root, host name, `no_new_privs`), writes [`READY`] on that socket and
//! waits. A claim is one message: a 4-byte big-endian length, then a JSON [`Claim`] (the
//! instance's own environment variables), with at most one descriptor attached
//! (`SCM_RIGHTS`): a connection to the environment's template process, opened by the platform
//! (the template's socket is outside the sandbox, which is already pivoted). The init then
//! replaces its stdin with `/dev/null` (the payload never sees the socket) and goes on exactly
//! as an init that was not a spare: the payload forked from the template over that connection,
//! or started by exec when none came. End of file instead of a claim means the spare was
//! dropped: the init exits without starting anything.
//!
//! Before the claim, the platform may send a message with [`Claim::prefork`] set and a template
//! connection (`docs/design/012-pre-forked-spares.md`): the init then has the template fork
//! the payload ahead of time (its waiter's cgroup migrations and namespace joins, the payload's
//! isolation), answers [`FORKED`] and waits for the real claim, which carries only the
//! variables. A spare whose pre-forked payload ends before the claim ends too.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

/// What the init of a spare writes once it waits for a claim.
pub const READY: &[u8] = b"ready\n";
/// What the init of a spare writes once its payload is forked ahead and waits for the claim.
pub const FORKED: &[u8] = b"forked\n";
/// The largest claim accepted (the instance's variables).
const MAX_CLAIM: usize = 1 << 20;

/// What a claim tells the waiting init: what differs between instances of one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The payload's whole environment (replaces the spec's).
    pub env: Vec<(String, String)>,
    /// Not the claim yet: fork the payload now over the template connection attached, and
    /// wait for the claim.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefork: bool,
}

/// Connects to a template's control socket the way an init does (with the same answer
/// timeouts), for a claim to carry.
pub fn connect_template(path: &Path) -> io::Result<UnixStream> {
    crate::zygote::connect(path)
}

/// Sends `claim` (and the template connection, if any) to a spare's init over the platform's
/// end of its stdin socket. The message is small: it goes whole into the socket's buffer.
pub fn send(
    socket: BorrowedFd<'_>,
    claim: &Claim,
    template: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let json = serde_json::to_vec(claim).map_err(io::Error::other)?;
    let len = u32::try_from(json.len()).map_err(io::Error::other)?;
    let head = len.to_be_bytes();
    let fds: Vec<BorrowedFd<'_>> = template.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the template's descriptor"));
    }
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(&head), IoSlice::new(&json)],
        &mut control,
        SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
    )?;
    if sent < head.len() + json.len() {
        return Err(io::Error::other("the claim did not fit the spare's socket"));
    }
    Ok(())
}

/// The init's side: writes `line` ([`READY`], [`FORKED`]) to the platform on stdin (a socket).
pub(crate) fn say(line: &[u8]) -> io::Result<()> {
    rustix::net::send(io::stdin().as_fd(), line, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// Replaces stdin (the platform's socket) with `/dev/null`, once the claim is in.
pub(crate) fn detach() -> io::Result<()> {
    let null = std::fs::File::open("/dev/null")?;
    rustix::stdio::dup2_stdin(&null)?;
    Ok(())
}

/// The init's side: waits for the platform's next message on stdin. Returns it and the
/// template connection that came with it. `preforked`, the connection of a payload forked
/// ahead: when it becomes readable or closes first (the payload or its waiter ended), this is
/// an error, so that the spare ends instead of waiting with a dead payload.
pub(crate) fn receive(preforked: Option<&UnixStream>) -> io::Result<(Claim, Option<UnixStream>)> {
    let stdin = io::stdin();
    let socket = stdin.as_fd();
    let mut data = Vec::new();
    let mut template: Option<OwnedFd> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if let Some(payload) = preforked {
            let mut fds = [
                PollFd::new(&socket, PollFlags::IN),
                PollFd::new(payload, PollFlags::IN),
            ];
            match poll(&mut fds, None) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            if fds[0].revents().is_empty() && !fds[1].revents().is_empty() {
                return Err(io::Error::other(
                    "the payload forked ahead ended before the claim",
                ));
            }
        }
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = match rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(got) => got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = message {
                for fd in fds {
                    // Only the first descriptor is the template's; any other is closed.
                    if template.is_none() {
                        template = Some(fd);
                    }
                }
            }
        }
        if got.bytes == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the platform dropped this spare sandbox",
            ));
        }
        data.extend_from_slice(buf.get(..got.bytes).unwrap_or_default());
        if let Some(head) = data.first_chunk::<4>() {
            let len = u32::from_be_bytes(*head) as usize;
            if len > MAX_CLAIM {
                return Err(io::Error::other("the claim is too large"));
            }
            if data.len() >= 4 + len {
                let claim: Claim = serde_json::from_slice(data.get(4..4 + len).unwrap_or_default())
                    .map_err(io::Error::other)?;
                return Ok((claim, template.map(UnixStream::from)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// The wire format both sides agree on, through a socket pair (the init's side reads
    /// stdin, so it is exercised by the backend's tests with real sandboxes).
    #[test]
    fn a_claim_carries_the_variables_and_one_descriptor() {
        let (platform, init) = UnixStream::pair().unwrap();
        let (template, mut other) = UnixStream::pair().unwrap();
        let claim = Claim {
            env: vec![("KAPPA_INSTANCE_ID".into(), "i-1".into())],
            prefork: false,
        };
        send(platform.as_fd(), &claim, Some(template.as_fd())).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &init,
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::empty(),
        )
        .unwrap();
        let mut fds = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = message {
                fds.extend(received);
            }
        }
        assert_eq!(fds.len(), 1);
        let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert_eq!(got.bytes, 4 + len);
        let back: Claim = serde_json::from_slice(&buf[4..4 + len]).unwrap();
        assert_eq!(back, claim);
        // The descriptor is the template connection: what is written to it arrives at `other`.
        let passed = UnixStream::from(fds.remove(0));
        rustix::io::write(&passed, b"x").unwrap();
        let mut one = [0u8; 1];
        other.read_exact(&mut one).unwrap();
        assert_eq!(&one, b"x");
    }
}
