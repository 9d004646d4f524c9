//! Just enough rtnetlink to configure IPv4 on an interface: link up + MTU, add an address, add a
//! route. Messages are built by hand (native byte order, 4-byte aligned attributes) and every reply
//! is parsed with the bounds-checked [`Reader`].

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use nix::sys::socket::{self, AddressFamily, NetlinkAddr, SockFlag, SockProtocol, SockType};
use sealroom_measurements::reader::Reader;

use crate::error::{Error, Result};

const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;

fn nl_err(what: &'static str, reason: impl std::fmt::Display) -> Error {
    Error::System { call: "rtnetlink", reason: format!("{what}: {reason}") }
}

/// One rtnetlink request under construction.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Self { buf }
    }

    fn bytes(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Self {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = u32::try_from(self.buf.len()).unwrap_or(u32::MAX).to_ne_bytes();
        for (slot, byte) in self.buf.iter_mut().zip(len) {
            *slot = byte;
        }
        self.buf
    }
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens and binds an `AF_NETLINK`/`NETLINK_ROUTE` socket.
    pub fn open() -> Result<Self> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )
        .map_err(|e| nl_err("socket", e))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| nl_err("bind", e))?;
        Ok(Self { fd, seq: 0 })
    }

    fn request(&mut self, what: &'static str, build: impl FnOnce(u32) -> Vec<u8>) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let msg = build(seq);
        socket::sendto(self.fd.as_raw_fd(), &msg, &NetlinkAddr::new(0, 0), socket::MsgFlags::empty())
            .map_err(|e| nl_err(what, e))?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = socket::recv(self.fd.as_raw_fd(), &mut buf, socket::MsgFlags::empty())
                .map_err(|e| nl_err(what, e))?;
            let reply = buf.get(..n).ok_or_else(|| nl_err(what, "short read"))?;
            if let Some(errno) = ack_for(reply, seq).map_err(|e| nl_err(what, e))? {
                return if errno == 0 {
                    Ok(())
                } else {
                    Err(nl_err(what, nix::errno::Errno::from_raw(-errno)))
                };
            }
        }
    }

    /// Brings `ifindex` up, optionally setting its MTU.
    pub fn link_up(&mut self, ifindex: u32, mtu: Option<u32>) -> Result<()> {
        self.request("link up", |seq| {
            let mut m = Message::new(RTM_NEWLINK, 0, seq)
                .bytes(&[0, 0]) // family AF_UNSPEC, padding
                .bytes(&0u16.to_ne_bytes()) // device type
                .bytes(&ifindex.to_ne_bytes())
                .bytes(&IFF_UP.to_ne_bytes()) // flags
                .bytes(&IFF_UP.to_ne_bytes()); // change mask
            if let Some(mtu) = mtu {
                m = m.attr(IFLA_MTU, &mtu.to_ne_bytes());
            }
            m.finish()
        })
    }

    /// Adds (or replaces) `addr/prefix` on `ifindex`.
    pub fn add_address(&mut self, ifindex: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let broadcast = broadcast(addr, prefix);
        self.request("add address", |seq| {
            Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq)
                .bytes(&[AF_INET, prefix, 0, RT_SCOPE_UNIVERSE])
                .bytes(&ifindex.to_ne_bytes())
                .attr(IFA_LOCAL, &addr.octets())
                .attr(IFA_ADDRESS, &addr.octets())
                .attr(IFA_BROADCAST, &broadcast.octets())
                .finish()
        })
    }

    /// Adds (or replaces) a route to `dst/prefix` out of `ifindex`, through `gateway` or on-link.
    pub fn add_route(
        &mut self,
        ifindex: u32,
        dst: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<()> {
        let scope = if gateway.is_some() { RT_SCOPE_UNIVERSE } else { RT_SCOPE_LINK };
        self.request("add route", |seq| {
            let mut m = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq)
                .bytes(&[AF_INET, prefix, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST])
                .bytes(&0u32.to_ne_bytes()) // rtm_flags
                .attr(RTA_OIF, &ifindex.to_ne_bytes());
            if prefix > 0 {
                m = m.attr(RTA_DST, &dst.octets());
            }
            if let Some(gw) = gateway {
                m = m.attr(RTA_GATEWAY, &gw.octets());
            }
            m.finish()
        })
    }
}

/// The directed broadcast address of `addr/prefix` (the address itself for /31 and /32).
pub fn broadcast(addr: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    if prefix >= 31 {
        return addr;
    }
    let host_bits = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(addr) | host_bits)
}

/// Scans a netlink reply for the `NLMSG_ERROR` acknowledging `seq`; returns its (negative) errno,
/// 0 for success, or `None` when the reply holds no acknowledgement for `seq`.
fn ack_for(reply: &[u8], seq: u32) -> std::result::Result<Option<i32>, String> {
    let mut r = Reader::new(reply);
    while !r.is_empty() {
        let header = r.take_array::<16>("nlmsghdr").map_err(|e| e.to_string())?;
        let mut h = Reader::new(&header);
        let len = h.u32_le("nlmsg_len").map_err(|e| e.to_string())?;
        let kind = h.u16_le("nlmsg_type").map_err(|e| e.to_string())?;
        let _flags = h.u16_le("nlmsg_flags").map_err(|e| e.to_string())?;
        let msg_seq = h.u32_le("nlmsg_seq").map_err(|e| e.to_string())?;
        let body_len = usize::try_from(len).map_err(|e| e.to_string())?.saturating_sub(16);
        let mut body = r.sub(body_len, "nlmsg body").map_err(|e| e.to_string())?;
        let pad = (4 - body_len % 4) % 4;
        r.skip(pad.min(r.left()), "nlmsg padding").map_err(|e| e.to_string())?;
        if kind == NLMSG_ERROR && msg_seq == seq {
            let errno = body.u32_le("nlmsgerr.error").map_err(|e| e.to_string())?;
            return Ok(Some(i32::from_ne_bytes(errno.to_le_bytes())));
        }
    }
    Ok(None)
}

/// The interface index of `name`, from sysfs.
pub fn ifindex(name: &str) -> Result<u32> {
    let path = Path::new("/sys/class/net").join(name).join("ifindex");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Error::System { call: "read", reason: format!("{}: {e}", path.display()) })?;
    text.trim()
        .parse()
        .map_err(|e| Error::System { call: "parse", reason: format!("{}: {e}", path.display()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_addresses() {
        assert_eq!(broadcast(Ipv4Addr::new(10, 0, 2, 15), 24), Ipv4Addr::new(10, 0, 2, 255));
        assert_eq!(broadcast(Ipv4Addr::new(10, 128, 0, 7), 32), Ipv4Addr::new(10, 128, 0, 7));
        assert_eq!(broadcast(Ipv4Addr::new(192, 168, 1, 1), 0), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn finds_the_ack_and_its_errno() {
        let mut reply = Vec::new();
        reply.extend_from_slice(&36u32.to_le_bytes());
        reply.extend_from_slice(&NLMSG_ERROR.to_le_bytes());
        reply.extend_from_slice(&0u16.to_le_bytes());
        reply.extend_from_slice(&7u32.to_le_bytes());
        reply.extend_from_slice(&0u32.to_le_bytes());
        reply.extend_from_slice(&(-17i32).to_le_bytes());
        reply.extend_from_slice(&[0u8; 16]);
        assert_eq!(ack_for(&reply, 7), Ok(Some(-17)));
        assert_eq!(ack_for(&reply, 8), Ok(None));
        assert!(ack_for(&reply[..10], 7).is_err());
    }

    #[test]
    fn message_length_is_patched_and_attributes_aligned() {
        let m = Message::new(RTM_NEWADDR, 0, 1).bytes(&[1, 2, 3, 4]).attr(IFA_LOCAL, &[9, 9, 9]).finish();
        assert_eq!(m.len(), 16 + 4 + 8);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 28);
    }
}
