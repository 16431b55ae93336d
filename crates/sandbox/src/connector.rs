//! The connector: how the platform opens a TCP connection to a runtime that listens inside its
//! sandbox's own network namespace, which no address outside reaches.
//!
//! Protocol (one exchange per Unix connection): the platform connects to the monitor's Unix
//! socket and writes the runtime's port (2 bytes, big endian). The monitor, which lives in the
//! sandbox's network namespace, connects a TCP socket to `127.0.0.1:port` there and answers one
//! message: byte `0` with the connected socket attached (`SCM_RIGHTS`), or byte `1` followed by
//! the `errno` of the failed connect (4 bytes, big endian) and no socket. The platform then owns
//! an ordinary connected TCP socket: requests flow over loopback inside the namespace with no
//! relay, and only the connect costs one extra round trip over the Unix socket.
//!
//! A second request opens a **host port** (`hostPorts`): the platform writes port `0` (never a
//! runtime's) followed by the port to listen on. The monitor binds and listens on
//! `127.0.0.1:port` inside the namespace and answers the same way, with the listening socket
//! attached. The platform accepts on it (the socket stays in the sandbox's namespace, whoever
//! holds it) and relays each connection to the host's own `127.0.0.1:port`; closing it frees the
//! port inside the sandbox again.
//!
//! The Unix socket lives in a directory only the platform's user can open, outside every
//! directory bound into any sandbox: no function can reach it.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use kappa_core::InstanceAddr;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};

/// Bound on the monitor's connect to the runtime (loopback: it succeeds or is refused at once
/// unless the runtime's accept queue is full).
const INNER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on reading a request from, or writing an answer to, one client.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Opens a TCP connection to an instance, however it is reached. The stream has `TCP_NODELAY`
/// set. The caller bounds the time.
pub async fn connect(addr: &InstanceAddr) -> io::Result<TcpStream> {
    let stream = match addr {
        InstanceAddr::Tcp(addr) => TcpStream::connect(addr).await?,
        InstanceAddr::Sandbox { connector, port } => connect_sandboxed(connector, *port).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect_sandboxed(connector: &Path, port: u16) -> io::Result<TcpStream> {
    let fd = exchange(connector, &port.to_be_bytes()).await?;
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    TcpStream::from_std(std)
}

/// Opens a listening socket on `127.0.0.1:port` inside the sandbox served by `connector`
/// (refused for port 0, or when the port is taken there). Connections the sandbox's processes
/// open to that address are accepted from it, outside the sandbox.
pub async fn listen_inside(connector: &Path, port: u16) -> io::Result<TcpListener> {
    if port == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "port 0 cannot be opened inside a sandbox",
        ));
    }
    let [high, low] = port.to_be_bytes();
    let fd = exchange(connector, &[0, 0, high, low]).await?;
    let std = std::net::TcpListener::from(fd);
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

/// One request to the connector: writes `request`, returns the socket it answers with.
async fn exchange(connector: &Path, request: &[u8]) -> io::Result<OwnedFd> {
    let mut unix = tokio::net::UnixStream::connect(connector)
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("sandbox connector {}: {e}", connector.display()),
            )
        })?;
    unix.write_all(request).await?;
    loop {
        unix.readable().await?;
        match unix.try_io(Interest::READABLE, || receive_answer(&unix)) {
            Ok(answer) => return answer,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads the monitor's answer: `Ok(Ok(socket))`, `Ok(Err(connect error))`, or `Err` for a
/// failed exchange (`WouldBlock` included, for `try_io`).
fn receive_answer(unix: &impl AsFd) -> io::Result<io::Result<OwnedFd>> {
    let mut body = [0u8; 5];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        unix,
        &mut [IoSliceMut::new(&mut body)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    match (received.bytes, body[0], fds.pop()) {
        (0, _, _) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the sandbox connector closed without an answer",
        )),
        (_, 0, Some(fd)) => Ok(Ok(fd)),
        (5, 1, None) => {
            let errno = i32::from_be_bytes([body[1], body[2], body[3], body[4]]);
            Ok(Err(io::Error::from_raw_os_error(errno)))
        }
        _ => Err(io::Error::other(
            "malformed answer from the sandbox connector",
        )),
    }
}

/// Serves connector requests on `listener` until the process ends, one at a time (each is a
/// loopback connect, microseconds). Runs in the monitor, inside the sandbox's network
/// namespace.
pub fn serve(listener: &UnixListener) {
    for client in listener.incoming() {
        match client {
            Ok(client) => {
                // A client that went away or sent garbage only loses its own exchange.
                let _ = answer(client);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn answer(mut client: UnixStream) -> io::Result<()> {
    client.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    client.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut port = [0u8; 2];
    client.read_exact(&mut port)?;
    let socket = match u16::from_be_bytes(port) {
        0 => {
            client.read_exact(&mut port)?;
            listen_on(u16::from_be_bytes(port))
        }
        port => connect_inside(port),
    };
    match socket {
        Ok(socket) => {
            let fds = [socket.as_fd()];
            let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            control.push(SendAncillaryMessage::ScmRights(&fds));
            rustix::net::sendmsg(
                &client,
                &[IoSlice::new(&[0u8])],
                &mut control,
                SendFlags::NOSIGNAL,
            )?;
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc_eio());
            let mut message = [1u8; 5];
            message[1..].copy_from_slice(&errno.to_be_bytes());
            client.write_all(&message)?;
        }
    }
    Ok(())
}

/// `EIO`, for a connect error that carries no errno (a timeout).
fn libc_eio() -> i32 {
    rustix::io::Errno::IO.raw_os_error()
}

/// Backlog of a host port's listening socket inside a sandbox.
const HOST_PORT_BACKLOG: i32 = 128;

fn listen_on(port: u16) -> io::Result<Socket> {
    if port == 0 {
        return Err(io::Error::from_raw_os_error(
            rustix::io::Errno::INVAL.raw_os_error(),
        ));
    }
    let socket = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
    // Reopened at once after a close even with earlier connections still in TIME_WAIT (Linux
    // still refuses a second listener).
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.listen(HOST_PORT_BACKLOG)?;
    Ok(socket)
}

fn connect_inside(port: u16) -> io::Result<Socket> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM.cloexec(), None)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    socket.connect_timeout(&addr.into(), INNER_CONNECT_TIMEOUT)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connector works the same without a namespace: a monitor stand-in serving on a
    /// socket in a temporary directory hands out connections to a local listener.
    #[tokio::test]
    async fn hands_out_connected_sockets_and_reports_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connector");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || serve(&listener));

        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        let addr = InstanceAddr::Sandbox {
            connector: path.clone(),
            port,
        };
        let accept = std::thread::spawn(move || {
            let (mut s, _) = server.accept().unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"pong").unwrap();
            buf
        });
        let mut stream = connect(&addr).await.unwrap();
        assert!(stream.nodelay().unwrap());
        stream.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut reply)
            .await
            .unwrap();
        assert_eq!(&reply, b"pong");
        assert_eq!(&accept.join().unwrap(), b"ping");

        // Nothing listens on port 1: the refusal comes back as the same error kind a direct
        // connect gives, so the router's retry rules still apply.
        let refused = InstanceAddr::Sandbox {
            connector: path,
            port: 1,
        };
        let err = connect(&refused).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");

        let missing = InstanceAddr::Sandbox {
            connector: dir.path().join("nope"),
            port,
        };
        let err = connect(&missing).await.unwrap_err();
        assert!(err.to_string().contains("sandbox connector"), "{err}");
    }

    /// A host port: the monitor stand-in opens a listener on a loopback port and hands it over;
    /// a connection to that port is accepted from the handed socket; the same port again is
    /// refused as taken.
    #[tokio::test]
    async fn hands_out_listening_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("connector");
        let listener = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || serve(&listener));

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let inside = listen_inside(&path, port).await.unwrap();
        assert_eq!(
            inside.local_addr().unwrap(),
            SocketAddr::from((Ipv4Addr::LOCALHOST, port))
        );
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        let (mut accepted, _) = inside.accept().await.unwrap();
        let mut buf = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut accepted, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"hi");
        client.await.unwrap();

        let err = listen_inside(&path, port).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        let err = listen_inside(&path, 0).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        // Closing the handed socket frees the port.
        drop(inside);
        drop(listen_inside(&path, port).await.unwrap());
    }
}
