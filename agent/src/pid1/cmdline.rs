//! The `sealroom.*` parameters PID 1 reads from the kernel command line (`/proc/cmdline`).
//!
//! The command line is part of the UKI and therefore measured (PCR 11 / RTMR2); anything that
//! changes behaviour is configured here rather than from unmeasured sources.

use std::net::Ipv4Addr;

/// How to configure the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetConfig {
    /// DHCPv4 on every non-loopback interface, first lease wins (the default).
    Dhcp,
    /// No network configuration beyond loopback.
    Off,
    /// `sealroom.net=static:IFACE,ADDR/PREFIX,GATEWAY[,MTU]` (GATEWAY may be `-`).
    Static {
        /// Interface name.
        iface: String,
        /// Address.
        addr: Ipv4Addr,
        /// Prefix length.
        prefix: u8,
        /// Default gateway.
        gateway: Option<Ipv4Addr>,
        /// MTU to set.
        mtu: Option<u32>,
    },
}

/// What PID 1 does when the agent process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAgentExit {
    /// Power the VM off (the default: a confidential VM whose agent is gone serves nobody).
    PowerOff,
    /// Start the agent again (at most a few times, with a pause).
    Restart,
}

/// Parsed `sealroom.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `sealroom.net=`.
    pub net: NetConfig,
    /// `sealroom.agent_exit=poweroff|restart`.
    pub on_agent_exit: OnAgentExit,
    /// Problems found while parsing (logged by PID 1, never fatal).
    pub warnings: Vec<String>,
}

impl Settings {
    /// Parses a kernel command line; unknown or malformed `sealroom.*` values fall back to the default
    /// and leave a warning.
    pub fn parse(cmdline: &str) -> Self {
        let mut s = Self { net: NetConfig::Dhcp, on_agent_exit: OnAgentExit::PowerOff, warnings: Vec::new() };
        for word in cmdline.split_ascii_whitespace() {
            let Some((key, value)) = word.split_once('=') else { continue };
            match key {
                "sealroom.net" => match parse_net(value) {
                    Ok(net) => s.net = net,
                    Err(e) => s.warnings.push(format!("sealroom.net={value}: {e}; using dhcp")),
                },
                "sealroom.agent_exit" => match value {
                    "poweroff" => s.on_agent_exit = OnAgentExit::PowerOff,
                    "restart" => s.on_agent_exit = OnAgentExit::Restart,
                    other => s.warnings.push(format!("sealroom.agent_exit={other}: unknown; using poweroff")),
                },
                _ => {}
            }
        }
        s
    }
}

fn parse_net(value: &str) -> Result<NetConfig, String> {
    match value {
        "dhcp" => return Ok(NetConfig::Dhcp),
        "off" => return Ok(NetConfig::Off),
        _ => {}
    }
    let spec = value.strip_prefix("static:").ok_or("expected dhcp, off or static:…")?;
    let mut parts = spec.split(',');
    let iface = parts.next().filter(|s| !s.is_empty()).ok_or("missing interface")?.to_owned();
    let cidr = parts.next().ok_or("missing ADDR/PREFIX")?;
    let (addr, prefix) = cidr.split_once('/').ok_or("address needs /PREFIX")?;
    let addr: Ipv4Addr = addr.parse().map_err(|e| format!("address: {e}"))?;
    let prefix: u8 = prefix.parse().map_err(|e| format!("prefix: {e}"))?;
    if prefix > 32 {
        return Err("prefix above 32".into());
    }
    let gateway = match parts.next() {
        None | Some("-" | "") => None,
        Some(gw) => Some(gw.parse().map_err(|e| format!("gateway: {e}"))?),
    };
    let mtu = match parts.next() {
        None => None,
        Some(m) => Some(m.parse().map_err(|e| format!("mtu: {e}"))?),
    };
    if parts.next().is_some() {
        return Err("too many fields".into());
    }
    Ok(NetConfig::Static { iface, addr, prefix, gateway, mtu })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_sealroom_parameters() {
        let s = Settings::parse("rdinit=/init console=ttyS0 quiet");
        assert_eq!(s.net, NetConfig::Dhcp);
        assert_eq!(s.on_agent_exit, OnAgentExit::PowerOff);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn static_network() {
        let s = Settings::parse(
            "x sealroom.net=static:eth0,10.1.2.3/24,10.1.2.1,1460 sealroom.agent_exit=restart",
        );
        assert_eq!(
            s.net,
            NetConfig::Static {
                iface: "eth0".into(),
                addr: Ipv4Addr::new(10, 1, 2, 3),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 1, 2, 1)),
                mtu: Some(1460),
            }
        );
        assert_eq!(s.on_agent_exit, OnAgentExit::Restart);
        let s = Settings::parse("sealroom.net=static:eth1,192.168.0.2/32,-");
        assert!(matches!(s.net, NetConfig::Static { gateway: None, mtu: None, prefix: 32, .. }));
    }

    #[test]
    fn malformed_values_warn_and_fall_back() {
        for bad in [
            "static:",
            "static:eth0",
            "static:eth0,1.2.3.4",
            "static:eth0,1.2.3.4/33",
            "bogus",
            "static:e,1.2.3.4/8,x",
        ] {
            let s = Settings::parse(&format!("sealroom.net={bad} sealroom.agent_exit=maybe"));
            assert_eq!(s.net, NetConfig::Dhcp, "{bad}");
            assert_eq!(s.warnings.len(), 2, "{bad}");
        }
        assert_eq!(Settings::parse("sealroom.net=off").net, NetConfig::Off);
    }
}
