//! Bringing the loopback interface of a new network namespace up, with one rtnetlink message.

use std::io;

use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

/// `RTM_NEWLINK`.
const RTM_NEWLINK: u16 = 16;
/// `NLMSG_ERROR`, which also carries the acknowledgement (error 0).
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST | NLM_F_ACK`.
const FLAGS: u16 = 0x1 | 0x4;
/// `IFF_UP`.
const IFF_UP: u32 = 0x1;

/// Sets `IFF_UP` on the interface `lo` of the calling thread's network namespace.
pub(crate) fn loopback_up() -> io::Result<()> {
    // No protocol is `NETLINK_ROUTE`.
    let socket = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
    let index = rustix::net::netdevice::name_to_index(&socket, "lo")?;
    let index = i32::try_from(index).map_err(|_| io::Error::other("lo has no valid index"))?;
    let message = newlink_up(index);
    rustix::net::sendto(
        &socket,
        &message,
        SendFlags::empty(),
        &SocketAddrNetlink::new(0, 0),
    )?;
    let mut reply = [0u8; 1024];
    let (n, _) = rustix::net::recv(&socket, &mut reply, RecvFlags::empty())?;
    check_ack(reply.get(..n).unwrap_or_default())
}

/// An `RTM_NEWLINK` request setting `IFF_UP` on interface `index`: `nlmsghdr` then
/// `ifinfomsg`, native endian.
fn newlink_up(index: i32) -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes()); // nlmsg_type
    m.extend_from_slice(&FLAGS.to_ne_bytes()); // nlmsg_flags
    m.extend_from_slice(&1u32.to_ne_bytes()); // nlmsg_seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
    m.push(0); // ifi_family: AF_UNSPEC
    m.push(0); // padding
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&index.to_ne_bytes()); // ifi_index
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    m
}

/// Reads the kernel's `NLMSG_ERROR` answer: error 0 is the acknowledgement.
fn check_ack(reply: &[u8]) -> io::Result<()> {
    let field = |at: usize, len: usize| reply.get(at..at + len);
    let kind = field(4, 2)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes);
    let error = field(16, 4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes);
    match (kind, error) {
        (Some(NLMSG_ERROR), Some(0)) => Ok(()),
        (Some(NLMSG_ERROR), Some(errno)) => Err(io::Error::from_raw_os_error(-errno)),
        _ => Err(io::Error::other("unexpected rtnetlink answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layout() {
        let m = newlink_up(1);
        assert_eq!(m.len(), 32);
        assert_eq!(&m[4..6], &RTM_NEWLINK.to_ne_bytes());
        assert_eq!(&m[20..24], &1i32.to_ne_bytes());
    }

    #[test]
    fn acks_and_errors() {
        let mut reply = vec![0u8; 36];
        reply[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(check_ack(&reply).is_ok());
        reply[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(check_ack(&reply).unwrap_err().raw_os_error(), Some(1));
        assert!(check_ack(&[]).is_err());
    }
}
