//! What the kernel and libc must be told about a lease or a static setup:
//! a pure plan that `sys::net` carries out.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::dhcp::Lease;
use super::params::StaticConfig;

/// One IPv4 route through the leased interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub destination: Ipv4Addr,
    pub prefix_len: u8,
    /// `None` for an on-link route.
    pub gateway: Option<Ipv4Addr>,
}

impl Route {
    pub fn netmask(&self) -> Ipv4Addr {
        netmask(self.prefix_len)
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix_len == 0 {
            f.write_str("default")?;
        } else {
            write!(f, "{}/{}", self.destination, self.prefix_len)?;
        }
        match self.gateway {
            Some(gateway) => write!(f, " via {gateway}"),
            None => f.write_str(" on-link"),
        }
    }
}

/// Everything needed to configure one interface from a lease or from
/// `provisioner.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfacePlan {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub netmask: Ipv4Addr,
    /// In order: the kernel refuses a route via a gateway it cannot reach.
    pub routes: Vec<Route>,
    pub resolv_conf: String,
}

/// The plan for a DHCP lease on `interface`.
pub fn plan(interface: &str, lease: &Lease) -> InterfacePlan {
    InterfacePlan {
        interface: interface.to_owned(),
        address: lease.address,
        prefix_len: lease.prefix_len,
        netmask: netmask(lease.prefix_len),
        routes: routes(lease.address, lease.prefix_len, lease.router),
        resolv_conf: resolv_conf(interface, lease),
    }
}

/// The plan for a static setup on `interface` (the VLAN interface when
/// there is one).
pub fn static_plan(interface: &str, config: &StaticConfig) -> InterfacePlan {
    let mut resolv_conf = format!("# written by imprint from provisioner.dns= for {interface}\n");
    for server in &config.dns {
        let _ = writeln!(resolv_conf, "nameserver {server}");
    }
    InterfacePlan {
        interface: interface.to_owned(),
        address: config.address,
        prefix_len: config.prefix_len,
        netmask: netmask(config.prefix_len),
        routes: routes(config.address, config.prefix_len, config.gateway),
        resolv_conf,
    }
}

/// The default route via the router. A router outside the leased subnet
/// (a /32 lease, as some clouds and routed fabrics hand out) needs an on-link
/// host route to it first, or SIOCADDRT fails with ENETUNREACH.
fn routes(address: Ipv4Addr, prefix_len: u8, router: Option<Ipv4Addr>) -> Vec<Route> {
    let Some(router) = router else {
        return Vec::new();
    };
    let mut routes = Vec::new();
    if !same_subnet(address, router, prefix_len) {
        routes.push(Route {
            destination: router,
            prefix_len: 32,
            gateway: None,
        });
    }
    routes.push(Route {
        destination: Ipv4Addr::UNSPECIFIED,
        prefix_len: 0,
        gateway: Some(router),
    });
    routes
}

/// musl's resolver reads only `nameserver`, `search`/`domain` and `options`,
/// and uses the first three nameservers; the rest are kept for the record.
pub fn resolv_conf(interface: &str, lease: &Lease) -> String {
    let mut text = format!(
        "# written by imprint from the DHCP lease on {interface} from {}\n",
        lease.server
    );
    if let Some(domain) = &lease.domain {
        let _ = writeln!(text, "search {domain}");
    }
    for server in &lease.dns_servers {
        let _ = writeln!(text, "nameserver {server}");
    }
    text
}

/// `24` -> 255.255.255.0; anything above 32 is treated as 32.
pub fn netmask(prefix_len: u8) -> Ipv4Addr {
    let ones = u32::from(prefix_len.min(32));
    Ipv4Addr::from_bits(u32::MAX.checked_shl(32 - ones).unwrap_or(0))
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = netmask(prefix_len).to_bits();
    a.to_bits() & mask == b.to_bits() & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)],
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_duration: None,
            domain: Some("lab.example".into()),
            hostname: None,
        }
    }

    #[test]
    fn plans_address_default_route_and_resolver() {
        let plan = plan("eth0", &lease());
        assert_eq!(plan.interface, "eth0");
        assert_eq!(plan.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(plan.netmask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            plan.routes,
            [Route {
                destination: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            }]
        );
        assert_eq!(plan.routes[0].to_string(), "default via 10.0.2.2");
        assert_eq!(
            plan.resolv_conf,
            "# written by imprint from the DHCP lease on eth0 from 10.0.2.2\n\
             search lab.example\n\
             nameserver 10.0.2.3\n\
             nameserver 1.1.1.1\n"
        );
    }

    #[test]
    fn no_router_means_no_routes() {
        let lease = Lease {
            router: None,
            ..lease()
        };
        assert!(plan("eth0", &lease).routes.is_empty());
    }

    #[test]
    fn off_link_router_gets_a_host_route_first() {
        let lease = Lease {
            address: Ipv4Addr::new(203, 0, 113, 7),
            prefix_len: 32,
            router: Some(Ipv4Addr::new(203, 0, 113, 1)),
            ..lease()
        };
        let routes = plan("eth0", &lease).routes;
        let shown: Vec<String> = routes.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["203.0.113.1/32 on-link", "default via 203.0.113.1"]);
        assert_eq!(routes[0].netmask(), Ipv4Addr::BROADCAST);
    }

    #[test]
    fn resolv_conf_without_domain_or_servers() {
        let lease = Lease {
            domain: None,
            dns_servers: Vec::new(),
            ..lease()
        };
        assert_eq!(
            resolv_conf("eno1", &lease),
            "# written by imprint from the DHCP lease on eno1 from 10.0.2.2\n"
        );
    }

    fn static_config() -> StaticConfig {
        StaticConfig {
            address: Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            interface: Vec::new(),
            vlan: Some(42),
            mtu: None,
        }
    }

    #[test]
    fn static_plan_has_address_route_and_resolver() {
        let plan = static_plan("eth0.42", &static_config());
        assert_eq!(plan.interface, "eth0.42");
        assert_eq!(plan.address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(plan.netmask, Ipv4Addr::new(255, 255, 255, 0));
        let shown: Vec<String> = plan.routes.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["default via 10.0.0.1"]);
        assert_eq!(
            plan.resolv_conf,
            "# written by imprint from provisioner.dns= for eth0.42\n\
             nameserver 10.0.0.2\n\
             nameserver 10.0.0.3\n"
        );
    }

    #[test]
    fn static_plan_with_off_link_gateway_or_none() {
        let config = StaticConfig {
            prefix_len: 32,
            ..static_config()
        };
        let shown: Vec<String> = static_plan("eno1", &config)
            .routes
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.1/32 on-link", "default via 10.0.0.1"]);
        let config = StaticConfig {
            gateway: None,
            dns: Vec::new(),
            ..static_config()
        };
        let plan = static_plan("eno1", &config);
        assert!(plan.routes.is_empty());
        assert_eq!(
            plan.resolv_conf,
            "# written by imprint from provisioner.dns= for eno1\n"
        );
    }

    #[test]
    fn netmasks() {
        assert_eq!(netmask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(netmask(8), Ipv4Addr::new(255, 0, 0, 0));
        assert_eq!(netmask(20), Ipv4Addr::new(255, 255, 240, 0));
        assert_eq!(netmask(32), Ipv4Addr::BROADCAST);
        assert_eq!(netmask(40), Ipv4Addr::BROADCAST);
    }
}
