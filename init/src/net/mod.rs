//! Network bring-up: a sans-IO DHCPv4 client, the static setup DRP renders
//! onto the command line (`provisioner.ip=` and friends, with VLAN and MTU),
//! and the plans that configure the kernel.
//!
//! [`bring_up`] is what PID 1 calls. The decisions in it (which interface,
//! when to retransmit, what to configure) are pure functions tested here; the
//! syscalls are in [`crate::sys::net`].
//!
//! - `links`: the NICs in `/sys/class/net`, carrier, MAC addresses.
//! - `dynamic`: DHCPv4 and IPv6 raced on every NIC, one result chosen by
//!   [`choice`]; `dhcp_worker` runs one DHCPv4 client over a packet socket.
//! - `static_setup`: `provisioner.ip=` and friends, no DHCP.
//! - `apply`: the address, routes and `/etc/resolv.conf` of a plan.
//! - [`dhcp`], [`dhcp6`], [`ipv6`]: the sans-IO protocol code; [`config`]
//!   turns a lease into a plan; [`params`] reads the command line.

mod apply;
pub mod choice;
pub mod config;
pub mod dhcp;
pub mod dhcp6;
mod dhcp_worker;
mod dynamic;
pub mod ipv6;
mod links;
pub mod params;
mod static_setup;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

pub use apply::describe_lease;
pub use choice::{Candidate, Decision, LeaseChoice, Offer};
pub use config::{InterfacePlan, Route};
pub use dhcp::{DhcpClient, Lease};
pub use dhcp_worker::{FrameLink, run_dhcp};
pub use dhcp6::Dhcp6Client;
pub use ipv6::{Ipv6Setup, Ipv6Step};
pub use links::{
    InterfaceInfo, carrier_settled, describe_interfaces, dhcp_candidates, ethernet_interfaces,
    format_mac, list_interfaces, parse_mac,
};
pub use params::{InterfaceSelector, NetConfig, StaticConfig};
pub use static_setup::{StaticPlan, choose_static_nic, describe_plan, plan_static};

use crate::sys::net as sys;

/// How long to wait for link after bringing interfaces up, unless
/// `imprint.link-timeout=` says otherwise. Copper links negotiate in 1–3 s;
/// DHCP starts on each NIC the moment it has link, so a port with nothing
/// plugged in only delays the deploy when it is the `BOOTIF=` NIC, and
/// then by `BOOTIF_GRACE` (2 s) at most once another NIC has a lease.
pub const DEFAULT_LINK_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`bring_up`] configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configured {
    /// The interface holding the address: the NIC, or `<nic>.<vid>` with a VLAN.
    pub interface: String,
    /// The MAC of the physical NIC.
    pub mac: [u8; 6],
    /// The DHCP lease; `None` for a static setup or IPv6.
    pub lease: Option<Lease>,
    /// The IPv6 setup, when IPv6 was chosen (no IPv4 lease came).
    pub ipv6: Option<Ipv6Setup>,
    /// When (since the kernel started) a NIC first had carrier, for the
    /// boot timeline.
    pub link_up: Option<Duration>,
}

/// Brings up `lo` and every Ethernet NIC (with IPv6 autoconfiguration on),
/// then configures one: statically when `config` has `provisioner.ip=`, else
/// from DHCP run on every NIC with carrier at once, choosing as
/// [`choice`] says (the `BOOTIF=` NIC's lease first; IPv6 when no IPv4 lease
/// comes). Sets the address, default route and `/etc/resolv.conf`.
pub fn bring_up(config: &NetConfig, dhcp_timeout: Duration) -> Result<Configured> {
    sys::set_ipv4_address("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0))
        .context("setting 127.0.0.1/8 on lo")?;
    sys::set_link_up("lo").context("bringing up lo")?;

    let sysfs = Path::new("/sys/class/net");
    let interfaces = list_interfaces(sysfs).context("listing /sys/class/net")?;
    let ethernet = ethernet_interfaces(&interfaces);
    if ethernet.is_empty() {
        bail!(
            "no Ethernet interface (found: {})",
            describe_interfaces(&interfaces)
        );
    }
    for iface in &ethernet {
        links::enable_ipv6_autoconf(&iface.name);
        match sys::set_link_up(&iface.name) {
            Ok(()) => log::info!(
                "net: {} up, mac {}",
                iface.name,
                iface
                    .mac
                    .map_or_else(|| "unknown".to_owned(), |m| format_mac(&m))
            ),
            Err(e) => log::warn!("net: bringing up {}: {e}", iface.name),
        }
    }
    match &config.static_ipv4 {
        Some(static_ipv4) => static_setup::bring_up_static(
            sysfs,
            static_ipv4,
            config.boot_mac,
            config.link_timeout.unwrap_or(DEFAULT_LINK_TIMEOUT),
        ),
        None => dynamic::bring_up_dynamic(
            sysfs,
            config.boot_mac,
            config.link_timeout.unwrap_or(DEFAULT_LINK_TIMEOUT),
            dhcp_timeout,
        ),
    }
}

/// Real sockets and ioctls against a veth pair, with a scripted DHCP server on
/// the far end. Needs root in a private network namespace with its own sysfs:
///
/// `unshare -nm sh -c 'mount -t sysfs sysfs /sys && cargo test -p imprint --lib -- --ignored veth'`
#[cfg(test)]
mod veth_tests {
    use std::fs;
    use std::sync::atomic::AtomicBool;

    use super::apply::apply;
    use super::dhcp_worker::dhcp_on;
    use super::links::wait_for_carrier;
    use super::*;
    use smoltcp::wire::{
        DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetAddress, EthernetFrame,
        Ipv4Packet, UdpPacket,
    };
    use std::process::Command;

    fn ip(args: &str) -> String {
        let out = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .unwrap();
        assert!(out.status.success(), "ip {args}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    /// Answers one DISCOVER and one REQUEST on `veth-s`.
    fn serve(server_mac: [u8; 6]) {
        let socket = sys::PacketSocket::open("veth-s").unwrap();
        let mut buf = [0u8; 1514];
        let mut answered = 0;
        while answered < 2 {
            let Some(len) = socket
                .recv_timeout(&mut buf, Duration::from_secs(20))
                .unwrap()
            else {
                panic!("server: no request");
            };
            let Some((kind, xid, chaddr)) = parse_request(&buf[..len]) else {
                continue;
            };
            let reply_kind = match kind {
                DhcpMessageType::Discover => DhcpMessageType::Offer,
                DhcpMessageType::Request => DhcpMessageType::Ack,
                _ => continue,
            };
            let server = Ipv4Addr::new(10, 9, 0, 1);
            let repr = DhcpRepr {
                message_type: reply_kind,
                transaction_id: xid,
                secs: 0,
                client_hardware_address: chaddr,
                client_ip: Ipv4Addr::UNSPECIFIED,
                your_ip: Ipv4Addr::new(10, 9, 0, 15),
                server_ip: Ipv4Addr::UNSPECIFIED,
                router: Some(server),
                subnet_mask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                relay_agent_ip: Ipv4Addr::UNSPECIFIED,
                broadcast: true,
                requested_ip: None,
                client_identifier: None,
                server_identifier: Some(server),
                parameter_request_list: None,
                dns_servers: None,
                max_size: None,
                lease_duration: Some(600),
                renew_duration: None,
                rebind_duration: None,
                additional_options: &[DhcpOption {
                    kind: 6,
                    data: &[10, 9, 0, 53],
                }],
            };
            let frame = dhcp::build_frame(
                &dhcp::FrameAddrs {
                    src_mac: EthernetAddress(server_mac),
                    dst_mac: EthernetAddress::BROADCAST,
                    src_ip: server,
                    dst_ip: Ipv4Addr::BROADCAST,
                    src_port: 67,
                    dst_port: 68,
                },
                &repr,
            );
            socket.send(&frame).unwrap();
            answered += 1;
        }
    }

    fn parse_request(frame: &[u8]) -> Option<(DhcpMessageType, u32, EthernetAddress)> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        let udp = UdpPacket::new_checked(ip.payload()).ok()?;
        if udp.dst_port() != 67 {
            return None;
        }
        let dhcp = DhcpPacket::new_checked(udp.payload()).ok()?;
        let repr = DhcpRepr::parse(&dhcp).ok()?;
        Some((
            repr.message_type,
            repr.transaction_id,
            repr.client_hardware_address,
        ))
    }

    #[test]
    #[ignore = "needs root in a private network namespace, see the module docs"]
    fn dhcp_over_a_veth_pair() {
        let links = ip("-o link show");
        assert!(
            links.lines().count() == 1 && links.contains("lo:"),
            "refusing to run outside an empty network namespace: {links}"
        );
        ip("link add veth-c type veth peer name veth-s");
        // No address on the server end: the scripted server speaks through a
        // packet socket, and a local 10.9.0.1 would make it an invalid gateway.
        ip("link set veth-s up");

        sys::set_ipv4_address("lo", Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0)).unwrap();
        sys::set_link_up("lo").unwrap();
        sys::set_link_up("veth-c").unwrap();
        let interfaces =
            wait_for_carrier(Path::new("/sys/class/net"), None, DEFAULT_LINK_TIMEOUT).unwrap();
        let candidates = dhcp_candidates(&interfaces, None).unwrap();
        let names: Vec<&str> = candidates.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["veth-c", "veth-s"]);
        let (name, mac) = candidates[0].clone();
        let server_mac = candidates[1].1;

        let server = std::thread::spawn(move || serve(server_mac));
        let lease = dhcp_on(&name, mac, Duration::from_secs(20), &AtomicBool::new(false)).unwrap();
        server.join().unwrap();
        assert_eq!(
            describe_lease(&lease),
            "10.9.0.15/24 via 10.9.0.1 dns 10.9.0.53 from 10.9.0.1"
        );

        let root = tempfile::tempdir().unwrap();
        let plan = config::plan(&name, &lease);
        apply(&plan, root.path()).unwrap();
        // Twice: a retried bring-up must not fail on the existing route.
        apply(&plan, root.path()).unwrap();
        assert!(ip("-4 -o addr show dev veth-c").contains("inet 10.9.0.15/24"));
        assert!(ip("-4 route show default").contains("default via 10.9.0.1 dev veth-c"));
        assert!(ip("-o link show lo").contains("UP"));
        assert!(
            fs::read_to_string(root.path().join("etc/resolv.conf"))
                .unwrap()
                .contains("nameserver 10.9.0.53\n")
        );
    }
}
