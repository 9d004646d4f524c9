//! Brings up loopback and one uplink: DHCP (QEMU user networking, GCP) or a static address from the
//! kernel command line.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use super::cmdline::NetConfig;
use super::dhcp;
use super::log;
use crate::sys::netlink::{self, Netlink};

/// How long DHCP may take per interface before the next one is tried.
const DHCP_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures networking per `config`; logs every step, never fails the boot.
pub fn configure(config: &NetConfig) {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => return log!("network: {e}"),
    };
    match netlink::ifindex("lo").and_then(|lo| nl.link_up(lo, None)) {
        Ok(()) => {}
        Err(e) => log!("network: loopback: {e}"),
    }
    match config {
        NetConfig::Off => log!("network: off (sealroom.net=off)"),
        NetConfig::Static { iface, addr, prefix, gateway, mtu } => {
            let routes = gateway
                .map(|gw| dhcp::Route { dst: Ipv4Addr::UNSPECIFIED, prefix: 0, gateway: gw })
                .into_iter()
                .collect::<Vec<_>>();
            match apply(&mut nl, iface, *addr, *prefix, &routes, *mtu) {
                Ok(()) => log!("network: {iface} {addr}/{prefix} (static) via {}", show_gw(*gateway)),
                Err(e) => log!("network: {iface}: {e}"),
            }
        }
        NetConfig::Dhcp => {
            let ifaces = uplinks();
            if ifaces.is_empty() {
                log!("network: no interface besides lo");
            }
            for iface in ifaces {
                match dhcp_on(&mut nl, &iface) {
                    Ok(()) => return,
                    Err(e) => log!("network: {iface}: dhcp: {e}"),
                }
            }
        }
    }
}

fn show_gw(gw: Option<Ipv4Addr>) -> String {
    gw.map_or_else(|| "-".to_owned(), |g| g.to_string())
}

/// Non-loopback interfaces, sorted by name.
fn uplinks() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names
}

fn mac_of(iface: &str) -> Result<[u8; 6], String> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address"))
        .map_err(|e| format!("mac: {e}"))?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for slot in &mut mac {
        let part = parts.next().ok_or("mac: too short")?;
        *slot = u8::from_str_radix(part, 16).map_err(|e| format!("mac: {e}"))?;
    }
    Ok(mac)
}

fn dhcp_on(nl: &mut Netlink, iface: &str) -> Result<(), String> {
    let index = netlink::ifindex(iface).map_err(|e| e.to_string())?;
    nl.link_up(index, None).map_err(|e| e.to_string())?;
    let mac = mac_of(iface)?;
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 68)).map_err(|e| format!("bind :68: {e}"))?;
    socket.set_broadcast(true).map_err(|e| format!("SO_BROADCAST: {e}"))?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::BindToDevice, &iface.into())
        .map_err(|e| format!("SO_BINDTODEVICE: {e}"))?;
    // The transaction id only has to differ between clients on one link; the MAC does that.
    let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]);
    let lease = dhcp::acquire(&socket, mac, xid, Instant::now() + DHCP_TIMEOUT)?;
    drop(socket);
    let prefix = lease.prefix.unwrap_or(32);
    let routes = lease.effective_routes();
    apply(nl, iface, lease.addr, prefix, &routes, lease.mtu.map(u32::from)).map_err(|e| e.to_string())?;
    let default_gw = routes.iter().find(|r| r.prefix == 0).map(|r| r.gateway);
    log!(
        "network: {iface} {}/{prefix} via {} mtu {} lease {}s (dhcp from {})",
        lease.addr,
        show_gw(default_gw),
        lease.mtu.map_or_else(|| "-".to_owned(), |m| m.to_string()),
        lease.lease_secs.unwrap_or(0),
        show_gw(lease.server),
    );
    Ok(())
}

fn in_subnet(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix.min(32))).unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

fn apply(
    nl: &mut Netlink,
    iface: &str,
    addr: Ipv4Addr,
    prefix: u8,
    routes: &[dhcp::Route],
    mtu: Option<u32>,
) -> crate::Result<()> {
    let index = netlink::ifindex(iface)?;
    nl.link_up(index, mtu)?;
    nl.add_address(index, addr, prefix)?;
    for route in routes {
        let gateway = (!route.gateway.is_unspecified()).then_some(route.gateway);
        if let Some(gw) = gateway {
            // An off-link gateway (GCP hands out a /32) needs a host route to it first, unless the
            // server's own routes already provide one.
            let covered = in_subnet(gw, addr, prefix)
                || routes.iter().any(|r| r.gateway.is_unspecified() && in_subnet(gw, r.dst, r.prefix));
            if !covered {
                nl.add_route(index, gw, 32, None)?;
            }
        }
        nl.add_route(index, route.dst, route.prefix, gateway)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        assert!(in_subnet(Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 15), 24));
        assert!(!in_subnet(Ipv4Addr::new(10, 128, 0, 1), Ipv4Addr::new(10, 128, 0, 7), 32));
        assert!(in_subnet(Ipv4Addr::new(1, 2, 3, 4), Ipv4Addr::new(9, 9, 9, 9), 0));
    }
}
