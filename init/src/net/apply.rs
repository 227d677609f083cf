//! Carrying out an [`InterfacePlan`]: the address, the routes and
//! `/etc/resolv.conf`; and the lease as the log shows it.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use anyhow::{Context as _, Result};

use super::{InterfacePlan, Lease, sys};

/// Sets the address and routes and writes `<root>/etc/resolv.conf`.
pub(super) fn apply(plan: &InterfacePlan, root: &Path) -> Result<()> {
    let name = &plan.interface;
    sys::set_ipv4_address(name, plan.address, plan.netmask)
        .with_context(|| format!("setting {}/{} on {name}", plan.address, plan.prefix_len))?;
    for route in &plan.routes {
        sys::add_route(name, route.destination, route.netmask(), route.gateway)
            .with_context(|| format!("adding route {route} on {name}"))?;
    }
    write_resolv_conf(root, &plan.resolv_conf)
}

pub(super) fn write_resolv_conf(root: &Path, text: &str) -> Result<()> {
    let etc = root.join("etc");
    fs::create_dir_all(&etc).with_context(|| format!("creating {}", etc.display()))?;
    let path = etc.join("resolv.conf");
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// `10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 from 10.0.2.2`.
pub fn describe_lease(lease: &Lease) -> String {
    let mut text = format!("{}/{}", lease.address, lease.prefix_len);
    if let Some(router) = lease.router {
        let _ = write!(text, " via {router}");
    }
    if !lease.dns_servers.is_empty() {
        let servers: Vec<String> = lease.dns_servers.iter().map(ToString::to_string).collect();
        let _ = write!(text, " dns {}", servers.join(","));
    }
    let _ = write!(text, " from {}", lease.server);
    text
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn lease_log_line() {
        let lease = Lease {
            address: Ipv4Addr::new(10, 0, 2, 15),
            prefix_len: 24,
            router: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns_servers: vec![Ipv4Addr::new(10, 0, 2, 3)],
            server: Ipv4Addr::new(10, 0, 2, 2),
            lease_duration: None,
            domain: None,
            hostname: None,
        };
        assert_eq!(
            describe_lease(&lease),
            "10.0.2.15/24 via 10.0.2.2 dns 10.0.2.3 from 10.0.2.2"
        );
    }

    #[test]
    fn resolv_conf_is_written_under_root() {
        let root = tempfile::tempdir().unwrap();
        write_resolv_conf(root.path(), "nameserver 10.0.2.3\n").unwrap();
        assert_eq!(
            fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 10.0.2.3\n"
        );
    }
}
