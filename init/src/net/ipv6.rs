//! IPv6 without a daemon: the kernel does SLAAC (addresses from the router
//! advertisement's prefixes, and the default route) by itself once a link is
//! up with `accept_ra`/`autoconf` on. What it leaves to user space is read
//! here: the RA's managed flag (then DHCPv6 gives the address, see
//! [`super::dhcp6`]) and its RDNSS option (RFC 8106), which becomes
//! `/etc/resolv.conf`. Whether an interface is ready is decided from
//! `/proc/net/if_inet6` and `/proc/net/ipv6_route`, parsed here.

use std::fmt::Write as _;
use std::net::Ipv6Addr;

/// ICMPv6 types (RFC 4861 §4).
const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
/// NDP option types: prefix information (RFC 4861), RDNSS (RFC 8106).
const OPTION_PREFIX: u8 = 3;
const OPTION_RDNSS: u8 = 25;
/// `/proc/net/if_inet6` flags: IFA_F_TENTATIVE (DAD not finished) and
/// IFA_F_DADFAILED (<linux/if_addr.h>).
const IFA_F_TENTATIVE: u32 = 0x40;
const IFA_F_DADFAILED: u32 = 0x08;
/// `/proc/net/if_inet6` scopes that reach past the link: global
/// (IPV6_ADDR_ANY) and site-local (IPV6_ADDR_SITELOCAL), which `fec0::/10`
/// is, and which QEMU's user network hands out.
const SCOPE_GLOBAL: u32 = 0x00;
const SCOPE_SITE: u32 = 0x40;

/// What a router advertisement says that the kernel does not act on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterAdvert {
    /// M: addresses come from DHCPv6.
    pub managed: bool,
    /// O: other configuration (DNS) comes from DHCPv6.
    pub other: bool,
    /// Seconds; 0 means "not a default router".
    pub router_lifetime: u16,
    /// On-link/autonomous prefixes as `(prefix, length)`.
    pub prefixes: Vec<(Ipv6Addr, u8)>,
    /// RDNSS: recursive DNS servers.
    pub dns_servers: Vec<Ipv6Addr>,
}

/// Parses an ICMPv6 message (as a raw ICMPv6 socket delivers it, without the
/// IPv6 header). `None` for anything but a well-formed router advertisement.
pub fn parse_router_advert(message: &[u8]) -> Option<RouterAdvert> {
    // type, code, checksum(2), hop limit, flags, router lifetime(2),
    // reachable time(4), retrans timer(4): 16 bytes, then options.
    if message.len() < 16 || message[0] != ROUTER_ADVERTISEMENT || message[1] != 0 {
        return None;
    }
    let flags = message[5];
    let mut advert = RouterAdvert {
        managed: flags & 0x80 != 0,
        other: flags & 0x40 != 0,
        router_lifetime: u16::from_be_bytes([message[6], message[7]]),
        ..RouterAdvert::default()
    };
    let mut options = &message[16..];
    while !options.is_empty() {
        // Length in units of 8 bytes, including type and length; 0 is invalid
        // and means the whole message is to be dropped (RFC 4861 §4.6).
        let kind = options[0];
        let len = usize::from(*options.get(1)?) * 8;
        if len == 0 || len > options.len() {
            return None;
        }
        let option = &options[..len];
        match kind {
            OPTION_PREFIX if len == 32 => {
                let prefix_len = option[2];
                let address = ipv6_at(option, 16)?;
                if prefix_len <= 128 {
                    advert.prefixes.push((address, prefix_len));
                }
            }
            OPTION_RDNSS if len >= 24 => {
                let lifetime = u32::from_be_bytes([option[4], option[5], option[6], option[7]]);
                if lifetime != 0 {
                    advert
                        .dns_servers
                        .extend((8..len).step_by(16).filter_map(|at| ipv6_at(option, at)));
                }
            }
            _ => {}
        }
        options = &options[len..];
    }
    Some(advert)
}

/// A router solicitation (RFC 4861 §4.1) without the source link-layer
/// option, which is not allowed while the link-local address is still
/// tentative. The kernel fills in the checksum on a raw ICMPv6 socket.
pub fn router_solicitation() -> [u8; 8] {
    [ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0]
}

fn ipv6_at(bytes: &[u8], at: usize) -> Option<Ipv6Addr> {
    let octets: [u8; 16] = bytes.get(at..at + 16)?.try_into().ok()?;
    Some(Ipv6Addr::from(octets))
}

/// One line of `/proc/net/if_inet6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub address: Ipv6Addr,
    pub ifindex: u32,
    pub prefix_len: u8,
    pub scope: u32,
    pub flags: u32,
    pub interface: String,
}

impl InterfaceAddress {
    /// A global (or site-local) address that passed duplicate address detection.
    pub fn is_usable_global(&self) -> bool {
        (self.scope == SCOPE_GLOBAL || self.scope == SCOPE_SITE)
            && self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0
            && !self.address.is_loopback()
    }

    /// A link-local address that passed duplicate address detection.
    pub fn is_usable_link_local(&self) -> bool {
        self.address.segments()[0] & 0xffc0 == 0xfe80
            && self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) == 0
    }
}

/// Parses `/proc/net/if_inet6`:
/// `20010db8000000000000000000000001 02 40 00 80 eth0`. Lines that do not
/// parse are skipped.
pub fn parse_if_inet6(text: &str) -> Vec<InterfaceAddress> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [address, ifindex, prefix_len, scope, flags, interface] = fields.as_slice() else {
                return None;
            };
            Some(InterfaceAddress {
                address: parse_hex_ipv6(address)?,
                ifindex: u32::from_str_radix(ifindex, 16).ok()?,
                prefix_len: u8::from_str_radix(prefix_len, 16).ok()?,
                scope: u32::from_str_radix(scope, 16).ok()?,
                flags: u32::from_str_radix(flags, 16).ok()?,
                interface: (*interface).to_owned(),
            })
        })
        .collect()
}

/// The gateway of a default route through `interface` in
/// `/proc/net/ipv6_route` (`dest plen src plen nexthop metric refcnt use
/// flags dev`), if there is one.
pub fn default_gateway(ipv6_route: &str, interface: &str) -> Option<Ipv6Addr> {
    ipv6_route.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [dest, dest_len, _, _, next_hop, _, _, _, _, dev] = fields.as_slice() else {
            return None;
        };
        let default = parse_hex_ipv6(dest)?.is_unspecified() && *dest_len == "00";
        let gateway = parse_hex_ipv6(next_hop)?;
        (default && *dev == interface && !gateway.is_unspecified()).then_some(gateway)
    })
}

fn parse_hex_ipv6(hex: &str) -> Option<Ipv6Addr> {
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok().map(Ipv6Addr::from)
}

/// How an IPv6 address was configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ipv6Origin {
    /// The kernel's stateless autoconfiguration from the RA's prefix.
    Slaac,
    /// A DHCPv6 lease (the RA said managed).
    Dhcpv6,
}

/// A usable IPv6 setup on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Setup {
    pub interface: String,
    pub address: Ipv6Addr,
    pub prefix_len: u8,
    pub origin: Ipv6Origin,
    /// The default router (link-local), as the kernel learned it from the RA.
    pub router: Ipv6Addr,
    /// From the RA's RDNSS, else from DHCPv6.
    pub dns_servers: Vec<Ipv6Addr>,
}

impl Ipv6Setup {
    /// `fec0::5054:ff:fe12:3456/64 (slaac) via fe80::2 dns fec0::3`.
    pub fn describe(&self) -> String {
        let origin = match self.origin {
            Ipv6Origin::Slaac => "slaac",
            Ipv6Origin::Dhcpv6 => "dhcpv6",
        };
        let mut text = format!(
            "{}/{} ({origin}) via {}",
            self.address, self.prefix_len, self.router
        );
        for (index, server) in self.dns_servers.iter().enumerate() {
            text.push_str(if index == 0 { " dns " } else { "," });
            let _ = write!(text, "{server}");
        }
        text
    }

    /// `/etc/resolv.conf` for this setup. A link-local server needs its zone
    /// (`fe80::1%eth0`), which musl understands.
    pub fn resolv_conf(&self) -> String {
        let mut text = format!(
            "# written by imprint from the IPv6 setup of {}\n",
            self.interface
        );
        for server in self.dns_servers.iter().take(3) {
            if server.segments()[0] & 0xffc0 == 0xfe80 {
                let _ = writeln!(text, "nameserver {server}%{}", self.interface);
            } else {
                let _ = writeln!(text, "nameserver {server}");
            }
        }
        text
    }
}

/// What to do next for IPv6 on one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipv6Step {
    /// No router advertisement seen yet: solicit one.
    Solicit,
    /// The router says managed: get an address from DHCPv6.
    RunDhcpv6,
    /// Wait for the kernel (DAD, the default route, the DHCPv6 client).
    Wait,
    /// The interface is usable over IPv6.
    Ready(Ipv6Setup),
}

/// Decides [`Ipv6Step`] for `interface` from the last RA seen on it, the
/// kernel's addresses and routes, and the DHCPv6 result if any (its address
/// and DNS servers). An RA with router lifetime 0 never makes an interface
/// ready: without a default router the provisioning server is unreachable
/// unless it is on-link, and IPv4 is the better bet then.
pub fn ipv6_step(
    interface: &str,
    advert: Option<&RouterAdvert>,
    addresses: &[InterfaceAddress],
    ipv6_route: &str,
    dhcpv6: Option<&(Ipv6Addr, Vec<Ipv6Addr>)>,
) -> Ipv6Step {
    let Some(advert) = advert else {
        return Ipv6Step::Solicit;
    };
    if advert.router_lifetime == 0 {
        return Ipv6Step::Wait;
    }
    let Some(router) = default_gateway(ipv6_route, interface) else {
        return Ipv6Step::Wait;
    };
    let on_interface = || {
        addresses
            .iter()
            .filter(|a| a.interface == interface && a.is_usable_global())
    };
    if advert.managed {
        let Some((leased, dhcp_dns)) = dhcpv6 else {
            return Ipv6Step::RunDhcpv6;
        };
        return match on_interface().find(|a| a.address == *leased) {
            Some(found) => Ipv6Step::Ready(Ipv6Setup {
                interface: interface.to_owned(),
                address: found.address,
                prefix_len: found.prefix_len,
                origin: Ipv6Origin::Dhcpv6,
                router,
                dns_servers: if advert.dns_servers.is_empty() {
                    dhcp_dns.clone()
                } else {
                    advert.dns_servers.clone()
                },
            }),
            None => Ipv6Step::Wait,
        };
    }
    // Prefer an address inside one of the advertised prefixes: a stale
    // address from an earlier router is not what this one routes.
    let in_prefix = |a: &&InterfaceAddress| {
        advert
            .prefixes
            .iter()
            .any(|(prefix, len)| same_prefix(a.address, *prefix, *len))
    };
    let found = on_interface()
        .find(in_prefix)
        .or_else(|| on_interface().next());
    match found {
        Some(found) => Ipv6Step::Ready(Ipv6Setup {
            interface: interface.to_owned(),
            address: found.address,
            prefix_len: found.prefix_len,
            origin: Ipv6Origin::Slaac,
            router,
            dns_servers: advert.dns_servers.clone(),
        }),
        None => Ipv6Step::Wait,
    }
}

fn same_prefix(a: Ipv6Addr, b: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(len.min(128)))
        .unwrap_or(0);
    u128::from(a) & mask == u128::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RA shaped like the one QEMU's slirp sends: source link-layer
    /// option, prefix fec0::/64 (on-link, autonomous), RDNSS fec0::3.
    fn slirp_advert(flags: u8, lifetime: u16) -> Vec<u8> {
        let mut ra = vec![134, 0, 0x12, 0x34, 64, flags];
        ra.extend(lifetime.to_be_bytes());
        ra.extend([0; 8]);
        // Source link-layer address.
        ra.extend([1, 1, 0x52, 0x55, 10, 0, 2, 2]);
        // Prefix information: fec0::/64, L and A, valid/preferred lifetimes.
        ra.extend([3, 4, 64, 0xc0]);
        ra.extend(86400u32.to_be_bytes());
        ra.extend(14400u32.to_be_bytes());
        ra.extend([0; 4]);
        ra.extend("fec0::".parse::<Ipv6Addr>().unwrap().octets());
        // RDNSS with one server.
        ra.extend([25, 3, 0, 0]);
        ra.extend(600u32.to_be_bytes());
        ra.extend("fec0::3".parse::<Ipv6Addr>().unwrap().octets());
        ra
    }

    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fec0000000000000505400fffe000001 02 40 40 00     eth0
fe80000000000000505400fffe000001 02 40 20 80     eth0
fec0000000000000505400fffe000002 03 40 40 40     eth1
20010db8000000000000000000000005 03 40 00 40     eth1
";
    const IPV6_ROUTE: &str = "\
fec00000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe800000000000000000000000000002 00000400 00000001 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";

    #[test]
    fn parses_slirps_router_advert() {
        let advert = parse_router_advert(&slirp_advert(0, 1800)).unwrap();
        assert_eq!(
            advert,
            RouterAdvert {
                managed: false,
                other: false,
                router_lifetime: 1800,
                prefixes: vec![("fec0::".parse().unwrap(), 64)],
                dns_servers: vec!["fec0::3".parse().unwrap()],
            }
        );
        let managed = parse_router_advert(&slirp_advert(0xc0, 1800)).unwrap();
        assert!(managed.managed && managed.other);
    }

    #[test]
    fn refuses_malformed_adverts_without_panicking() {
        let good = slirp_advert(0, 1800);
        for len in 0..good.len() {
            // Every truncation inside an option drops the message; none panics.
            let parsed = parse_router_advert(&good[..len]);
            assert!(
                parsed.is_none() || [16, 24, 56].contains(&len),
                "truncated to {len}: {parsed:?}"
            );
        }
        let mut zero_length = good.clone();
        zero_length[17] = 0;
        assert_eq!(parse_router_advert(&zero_length), None);
        let mut solicitation = good.clone();
        solicitation[0] = 133;
        assert_eq!(parse_router_advert(&solicitation), None);
        // An expired RDNSS (lifetime 0) withdraws the servers.
        let mut expired = good;
        expired[60..64].copy_from_slice(&[0; 4]);
        assert!(
            parse_router_advert(&expired)
                .unwrap()
                .dns_servers
                .is_empty()
        );
    }

    #[test]
    fn parses_the_kernels_address_and_route_tables() {
        let addresses = parse_if_inet6(IF_INET6);
        assert_eq!(addresses.len(), 5);
        assert_eq!(
            addresses[1].address,
            "fec0::5054:ff:fe00:1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!((addresses[1].ifindex, addresses[1].prefix_len), (2, 64));
        assert!(addresses[1].is_usable_global());
        assert!(!addresses[0].is_usable_global(), "loopback");
        assert!(!addresses[2].is_usable_global() && addresses[2].is_usable_link_local());
        assert!(!addresses[3].is_usable_global(), "tentative");
        assert_eq!(addresses[4].scope, 0);
        assert!(!addresses[4].is_usable_global(), "tentative");
        let global = InterfaceAddress {
            flags: 0,
            ..addresses[4].clone()
        };
        assert!(global.is_usable_global());
        assert_eq!(
            default_gateway(IPV6_ROUTE, "eth0"),
            Some("fe80::2".parse().unwrap())
        );
        assert_eq!(default_gateway(IPV6_ROUTE, "eth1"), None);
        assert_eq!(default_gateway(IPV6_ROUTE, "lo"), None, "unreachable route");
    }

    #[test]
    fn slaac_is_ready_with_an_address_a_route_and_an_advert() {
        let advert = parse_router_advert(&slirp_advert(0, 1800)).unwrap();
        let addresses = parse_if_inet6(IF_INET6);
        assert_eq!(
            ipv6_step("eth0", None, &addresses, IPV6_ROUTE, None),
            Ipv6Step::Solicit
        );
        let Ipv6Step::Ready(setup) = ipv6_step("eth0", Some(&advert), &addresses, IPV6_ROUTE, None)
        else {
            panic!("not ready");
        };
        assert_eq!(
            setup.describe(),
            "fec0::5054:ff:fe00:1/64 (slaac) via fe80::2 dns fec0::3"
        );
        assert_eq!(
            setup.resolv_conf(),
            "# written by imprint from the IPv6 setup of eth0\nnameserver fec0::3\n"
        );
        // eth1's address is still tentative and it has no default route.
        assert_eq!(
            ipv6_step("eth1", Some(&advert), &addresses, IPV6_ROUTE, None),
            Ipv6Step::Wait
        );
        let not_a_router = RouterAdvert {
            router_lifetime: 0,
            ..advert
        };
        assert_eq!(
            ipv6_step("eth0", Some(&not_a_router), &addresses, IPV6_ROUTE, None),
            Ipv6Step::Wait
        );
    }

    #[test]
    fn managed_adverts_need_the_dhcpv6_address() {
        let mut advert = parse_router_advert(&slirp_advert(0x80, 1800)).unwrap();
        advert.dns_servers.clear();
        let mut addresses = parse_if_inet6(IF_INET6);
        assert_eq!(
            ipv6_step("eth0", Some(&advert), &addresses, IPV6_ROUTE, None),
            Ipv6Step::RunDhcpv6
        );
        let leased: Ipv6Addr = "fec0::1:15".parse().unwrap();
        let dns: Ipv6Addr = "fec0::53".parse().unwrap();
        let dhcp = (leased, vec![dns]);
        assert_eq!(
            ipv6_step("eth0", Some(&advert), &addresses, IPV6_ROUTE, Some(&dhcp)),
            Ipv6Step::Wait,
            "the leased address is not on the interface yet"
        );
        addresses.push(InterfaceAddress {
            address: leased,
            ifindex: 2,
            prefix_len: 128,
            scope: 0,
            flags: 0x80,
            interface: "eth0".into(),
        });
        let Ipv6Step::Ready(setup) =
            ipv6_step("eth0", Some(&advert), &addresses, IPV6_ROUTE, Some(&dhcp))
        else {
            panic!("not ready");
        };
        assert_eq!(
            setup.describe(),
            "fec0::1:15/128 (dhcpv6) via fe80::2 dns fec0::53"
        );
    }

    #[test]
    fn link_local_dns_servers_get_their_zone() {
        let setup = Ipv6Setup {
            interface: "eth0".into(),
            address: "2001:db8::5".parse().unwrap(),
            prefix_len: 64,
            origin: Ipv6Origin::Slaac,
            router: "fe80::1".parse().unwrap(),
            dns_servers: vec!["fe80::53".parse().unwrap(), "2001:db8::53".parse().unwrap()],
        };
        assert!(
            setup
                .resolv_conf()
                .ends_with("nameserver fe80::53%eth0\nnameserver 2001:db8::53\n")
        );
    }

    #[test]
    fn prefixes_compare_by_length() {
        let a: Ipv6Addr = "2001:db8:1:2::5".parse().unwrap();
        assert!(same_prefix(a, "2001:db8:1:2::".parse().unwrap(), 64));
        assert!(!same_prefix(a, "2001:db8:1:3::".parse().unwrap(), 64));
        assert!(same_prefix(a, "2001:db8:1:3::".parse().unwrap(), 47));
        assert!(same_prefix(a, "::".parse().unwrap(), 0));
    }
}
