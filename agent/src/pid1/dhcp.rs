//! A small DHCPv4 client (RFC 2131): DISCOVER → OFFER → REQUEST → ACK with the broadcast flag set,
//! so that replies reach a UDP socket bound to the interface before it has an address. Enough for
//! QEMU user networking and GCP's metadata DHCP server (which hands out a /32 with an off-link
//! gateway and classless static routes). Replies are untrusted bytes, parsed with [`Reader`].

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use sealroom_measurements::reader::Reader;

const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
const BOOTREQUEST: u8 = 1;
const BOOTREPLY: u8 = 2;
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
const OPT_PAD: u8 = 0;
const OPT_SUBNET_MASK: u8 = 1;
const OPT_ROUTER: u8 = 3;
const OPT_MTU: u8 = 26;
const OPT_REQUESTED_IP: u8 = 50;
const OPT_LEASE_TIME: u8 = 51;
const OPT_MESSAGE_TYPE: u8 = 53;
const OPT_SERVER_ID: u8 = 54;
const OPT_PARAMS: u8 = 55;
const OPT_CLASSLESS_ROUTES: u8 = 121;
const OPT_END: u8 = 255;

/// A route from option 121 (or the router option): destination/prefix via gateway (0.0.0.0 = on-link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination network.
    pub dst: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Next hop; unspecified means on-link.
    pub gateway: Ipv4Addr,
}

/// What a server said in one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// DHCP message type (option 53).
    pub kind: u8,
    /// Offered address (`yiaddr`).
    pub addr: Ipv4Addr,
    /// Subnet mask as a prefix length.
    pub prefix: Option<u8>,
    /// First router (option 3).
    pub router: Option<Ipv4Addr>,
    /// Classless static routes (option 121).
    pub routes: Vec<Route>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Server identifier (option 54).
    pub server: Option<Ipv4Addr>,
    /// Lease time in seconds (option 51).
    pub lease_secs: Option<u32>,
}

impl Reply {
    /// The routes to install: option 121 when present (RFC 3442 says to ignore option 3 then),
    /// else a default route through the router.
    pub fn effective_routes(&self) -> Vec<Route> {
        if !self.routes.is_empty() {
            return self.routes.clone();
        }
        self.router
            .map(|gw| Route { dst: Ipv4Addr::UNSPECIFIED, prefix: 0, gateway: gw })
            .into_iter()
            .collect()
    }
}

/// Builds a BOOTREQUEST of `kind` for `mac` with transaction `xid`.
pub fn request_packet(kind: u8, xid: u32, mac: [u8; 6], requested: Option<(Ipv4Addr, Ipv4Addr)>) -> Vec<u8> {
    let mut p = Vec::with_capacity(300);
    p.extend_from_slice(&[BOOTREQUEST, 1, 6, 0]); // op, htype ethernet, hlen, hops
    p.extend_from_slice(&xid.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes()); // secs
    p.extend_from_slice(&0x8000u16.to_be_bytes()); // flags: broadcast replies
    p.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    p.extend_from_slice(&mac);
    p.extend_from_slice(&[0; 10 + 64 + 128]); // chaddr padding, sname, file
    p.extend_from_slice(&MAGIC_COOKIE);
    p.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind]);
    p.extend_from_slice(&[
        OPT_PARAMS,
        5,
        OPT_SUBNET_MASK,
        OPT_ROUTER,
        OPT_MTU,
        OPT_LEASE_TIME,
        OPT_CLASSLESS_ROUTES,
    ]);
    if let Some((addr, server)) = requested {
        p.push(OPT_REQUESTED_IP);
        p.push(4);
        p.extend_from_slice(&addr.octets());
        p.push(OPT_SERVER_ID);
        p.push(4);
        p.extend_from_slice(&server.octets());
    }
    p.push(OPT_END);
    p.resize(p.len().max(300), OPT_PAD); // BOOTP minimum size, some servers insist
    p
}

/// Parses a server reply; `None` unless it is a well-formed BOOTREPLY for `xid` and `mac`.
pub fn parse_reply(packet: &[u8], xid: u32, mac: [u8; 6]) -> Option<Reply> {
    let mut r = Reader::new(packet);
    let op = r.u8("op").ok()?;
    let _htype_hlen_hops = r.take(3, "htype").ok()?;
    let reply_xid = r.u32_be("xid").ok()?;
    r.skip(4 + 4, "secs, flags, ciaddr").ok()?;
    let yiaddr = Ipv4Addr::from(r.take_array::<4>("yiaddr").ok()?);
    r.skip(8, "siaddr, giaddr").ok()?;
    let chaddr = r.take_array::<6>("chaddr").ok()?;
    r.skip(10 + 64 + 128, "sname, file").ok()?;
    if op != BOOTREPLY
        || reply_xid != xid
        || chaddr != mac
        || r.take_array::<4>("cookie").ok()? != MAGIC_COOKIE
    {
        return None;
    }
    let mut reply = Reply {
        kind: 0,
        addr: yiaddr,
        prefix: None,
        router: None,
        routes: Vec::new(),
        mtu: None,
        server: None,
        lease_secs: None,
    };
    while !r.is_empty() {
        let code = r.u8("option").ok()?;
        match code {
            OPT_PAD => continue,
            OPT_END => break,
            _ => {}
        }
        let len = usize::from(r.u8("option length").ok()?);
        let mut v = r.sub(len, "option value").ok()?;
        match code {
            OPT_MESSAGE_TYPE => reply.kind = v.u8("message type").ok()?,
            OPT_SUBNET_MASK => reply.prefix = mask_to_prefix(Ipv4Addr::from(v.take_array::<4>("mask").ok()?)),
            OPT_ROUTER => reply.router = Some(Ipv4Addr::from(v.take_array::<4>("router").ok()?)),
            OPT_MTU => reply.mtu = Some(v.u16_be("mtu").ok()?),
            OPT_SERVER_ID => reply.server = Some(Ipv4Addr::from(v.take_array::<4>("server").ok()?)),
            OPT_LEASE_TIME => reply.lease_secs = Some(v.u32_be("lease").ok()?),
            OPT_CLASSLESS_ROUTES => reply.routes = parse_classless_routes(&mut v)?,
            _ => {}
        }
    }
    (reply.kind != 0).then_some(reply)
}

fn parse_classless_routes(v: &mut Reader<'_>) -> Option<Vec<Route>> {
    let mut routes = Vec::new();
    while !v.is_empty() {
        let prefix = v.u8("route prefix").ok()?;
        if prefix > 32 {
            return None;
        }
        let significant = usize::from(prefix.div_ceil(8));
        let mut dst = [0u8; 4];
        for (slot, byte) in dst.iter_mut().zip(v.take(significant, "route destination").ok()?) {
            *slot = *byte;
        }
        let gateway = Ipv4Addr::from(v.take_array::<4>("route gateway").ok()?);
        routes.push(Route { dst: Ipv4Addr::from(dst), prefix, gateway });
    }
    Some(routes)
}

/// The prefix length of a contiguous netmask.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then(|| u8::try_from(ones).unwrap_or(32))
}

/// Runs one DHCP exchange on `socket` (bound to the interface, port 68, broadcast enabled).
/// Retransmits with growing timeouts (1, 2, 4, 4, … s) until `deadline`.
pub fn acquire(socket: &UdpSocket, mac: [u8; 6], xid: u32, deadline: Instant) -> Result<Reply, String> {
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut wait = Duration::from_secs(1);
    let mut buf = vec![0u8; 1500];
    // Phase 1: DISCOVER until an OFFER; phase 2: REQUEST until ACK/NAK.
    let mut offer: Option<Reply> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(if offer.is_some() {
                "no ACK before the deadline"
            } else {
                "no OFFER before the deadline"
            }
            .into());
        }
        let packet = match &offer {
            None => request_packet(DISCOVER, xid, mac, None),
            Some(o) => {
                request_packet(REQUEST, xid, mac, Some((o.addr, o.server.unwrap_or(Ipv4Addr::UNSPECIFIED))))
            }
        };
        socket.send_to(&packet, server).map_err(|e| format!("send: {e}"))?;
        let round_end = (now + wait).min(deadline);
        while let Some(left) = round_end.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            socket.set_read_timeout(Some(left)).map_err(|e| format!("timeout: {e}"))?;
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) => return Err(format!("recv: {e}")),
            };
            let Some(reply) = buf.get(..n).and_then(|p| parse_reply(p, xid, mac)) else { continue };
            match (offer.is_some(), reply.kind) {
                (false, OFFER) => {
                    offer = Some(reply);
                    wait = Duration::from_secs(1);
                    break;
                }
                (true, ACK) => return Ok(reply),
                (true, NAK) => {
                    offer = None;
                    break;
                }
                _ => {}
            }
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn reply_bytes(kind: u8, xid: u32, extra_options: &[u8]) -> Vec<u8> {
        let mut p = request_packet(DISCOVER, xid, MAC, None);
        p.truncate(236);
        p[0] = BOOTREPLY;
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p.extend_from_slice(&MAGIC_COOKIE);
        p.extend_from_slice(&[OPT_MESSAGE_TYPE, 1, kind, OPT_SUBNET_MASK, 4, 255, 255, 255, 0]);
        p.extend_from_slice(&[OPT_ROUTER, 4, 10, 0, 2, 2, OPT_SERVER_ID, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[OPT_LEASE_TIME, 4, 0, 1, 0x51, 0x80, OPT_PAD]);
        p.extend_from_slice(extra_options);
        p.push(OPT_END);
        p
    }

    #[test]
    fn request_layout() {
        let p = request_packet(
            REQUEST,
            0xdead_beef,
            MAC,
            Some((Ipv4Addr::new(10, 0, 2, 15), Ipv4Addr::new(10, 0, 2, 2))),
        );
        assert_eq!(p.len(), 300);
        assert_eq!(&p[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&p[10..12], &[0x80, 0]);
        assert_eq!(&p[28..34], &MAC);
        assert_eq!(&p[236..240], &MAGIC_COOKIE);
        assert_eq!(&p[240..243], &[OPT_MESSAGE_TYPE, 1, REQUEST]);
    }

    #[test]
    fn parses_a_qemu_style_ack() {
        let r = parse_reply(&reply_bytes(ACK, 7, &[]), 7, MAC).unwrap();
        assert_eq!(r.kind, ACK);
        assert_eq!(r.addr, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.prefix, Some(24));
        assert_eq!(r.lease_secs, Some(86_400));
        assert_eq!(
            r.effective_routes(),
            vec![Route { dst: Ipv4Addr::UNSPECIFIED, prefix: 0, gateway: Ipv4Addr::new(10, 0, 2, 2) }]
        );
    }

    #[test]
    fn parses_gcp_style_classless_routes_and_mtu() {
        // 10.128.0.1/32 on-link, then default via 10.128.0.1; MTU 1460.
        let opts = [
            OPT_CLASSLESS_ROUTES,
            14,
            32,
            10,
            128,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            10,
            128,
            0,
            1,
            OPT_MTU,
            2,
            0x05,
            0xb4,
        ];
        let r = parse_reply(&reply_bytes(ACK, 9, &opts), 9, MAC).unwrap();
        assert_eq!(r.mtu, Some(1460));
        assert_eq!(
            r.effective_routes(),
            vec![
                Route { dst: Ipv4Addr::new(10, 128, 0, 1), prefix: 32, gateway: Ipv4Addr::UNSPECIFIED },
                Route { dst: Ipv4Addr::UNSPECIFIED, prefix: 0, gateway: Ipv4Addr::new(10, 128, 0, 1) },
            ]
        );
    }

    #[test]
    fn rejects_foreign_or_malformed_replies() {
        let good = reply_bytes(OFFER, 7, &[]);
        assert!(parse_reply(&good, 8, MAC).is_none());
        assert!(parse_reply(&good, 7, [0; 6]).is_none());
        for cut in 0..good.len() - 1 {
            let _ = parse_reply(&good[..cut], 7, MAC); // never panics
        }
        let mut bad_route = reply_bytes(OFFER, 7, &[OPT_CLASSLESS_ROUTES, 2, 40, 1]);
        assert!(parse_reply(&bad_route, 7, MAC).is_none());
        bad_route[0] = BOOTREQUEST;
        assert!(parse_reply(&bad_route, 7, MAC).is_none());
    }

    #[test]
    fn netmasks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}
