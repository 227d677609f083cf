//! The static setup DRP renders onto the command line (`provisioner.ip=`
//! and friends, with VLAN and MTU): which NIC, the plan, and carrying it
//! out. No DHCP packet is sent.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};

use super::apply::apply;
use super::links::{
    InterfaceInfo, describe_interfaces, ethernet_interfaces, format_mac, list_interfaces,
    wait_for_carrier, wait_for_nic_carrier,
};
use super::{Configured, InterfacePlan, InterfaceSelector, StaticConfig, config, sys};

/// How long the NIC chosen for a static setup may take to get link. Longer
/// than [`DEFAULT_LINK_TIMEOUT`]: there is no DHCP timeout behind it to absorb a
/// switch port that runs spanning tree before forwarding (up to 30 s).
const STATIC_CARRIER_WAIT: Duration = Duration::from_secs(30);

/// The longest interface name the kernel takes (IFNAMSIZ - 1).
const MAX_INTERFACE_NAME: usize = 15;

/// The static setup: no DHCP packet is sent.
pub(super) fn bring_up_static(
    sysfs: &Path,
    static_ipv4: &StaticConfig,
    boot_mac: Option<[u8; 6]>,
    link_timeout: Duration,
) -> Result<Configured> {
    // Named NICs need no carrier to be chosen; "the only NIC with carrier"
    // needs every NIC to have had its chance to get link.
    let interfaces = if !static_ipv4.interface.is_empty() || boot_mac.is_some() {
        list_interfaces(sysfs).context("listing /sys/class/net")?
    } else {
        wait_for_carrier(sysfs, None, link_timeout)?
    };
    let (nic, mac) =
        choose_static_nic(&interfaces, &static_ipv4.interface, boot_mac).map_err(|e| anyhow!(e))?;
    let plan = plan_static(&nic, mac, static_ipv4).map_err(|e| anyhow!(e))?;
    wait_for_nic_carrier(sysfs, &nic, STATIC_CARRIER_WAIT)?;
    let link_up = crate::timeline::since_boot();
    if let Some(mtu) = plan.mtu {
        sys::set_mtu(&nic, mtu).with_context(|| format!("setting mtu {mtu} on {nic}"))?;
        log::info!("net: {nic} mtu {mtu}");
    }
    if let Some(vid) = plan.vlan {
        let vlan = &plan.address.interface;
        load_vlan_module();
        sys::add_vlan(&nic, vid)
            .with_context(|| format!("creating VLAN interface {vlan} on {nic} (needs 8021q)"))?;
        if let Some(mtu) = plan.mtu {
            sys::set_mtu(vlan, mtu).with_context(|| format!("setting mtu {mtu} on {vlan}"))?;
        }
        sys::set_link_up(vlan).with_context(|| format!("bringing up {vlan}"))?;
        log::info!("net: {vlan} up (vlan {vid} on {nic})");
    }
    apply(&plan.address, Path::new("/"))?;
    log::info!("net: static {}", describe_plan(&plan.address));
    Ok(Configured {
        interface: plan.address.interface,
        mac,
        lease: None,
        ipv6: None,
        link_up: Some(link_up),
    })
}

/// Loads 8021q and its dependencies from the initramfs's module tree. A
/// failure is only logged: the kernel may have it built in, and if it has
/// not, creating the VLAN interface fails naming it.
fn load_vlan_module() {
    let dir = Path::new("/lib/modules").join(crate::sys::kmod::kernel_release());
    let load = || -> Result<()> {
        let index = crate::modules::ModuleIndex::load(&dir)?;
        for entry in index.closure(&["8021q"])? {
            if crate::sys::kmod::load_module(&dir.join(&entry.path))?
                == crate::sys::kmod::Loaded::Now
            {
                log::info!("loaded {}", entry.name);
            }
        }
        Ok(())
    };
    if let Err(e) = load() {
        log::warn!("net: loading 8021q: {e:#}");
    }
}

/// What the static setup does, decided before anything is touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticPlan {
    /// The physical NIC.
    pub nic: String,
    pub mac: [u8; 6],
    /// Set on the NIC (and on the VLAN interface) before the address.
    pub mtu: Option<u32>,
    /// The VLAN interface `<nic>.<vid>` is created on the NIC.
    pub vlan: Option<u16>,
    /// The address, routes and resolver, on the VLAN interface if any.
    pub address: InterfacePlan,
}

/// Plans the static setup on `nic`. The VLAN interface is named the way the
/// kernel names it by default (`<nic>.<vid>`, VLAN_NAME_TYPE_RAW_PLUS_VID_NO_PAD),
/// which must fit in IFNAMSIZ.
pub fn plan_static(nic: &str, mac: [u8; 6], config: &StaticConfig) -> Result<StaticPlan, String> {
    let interface = match config.vlan {
        Some(vid) => {
            let name = format!("{nic}.{vid}");
            if name.len() > MAX_INTERFACE_NAME {
                return Err(format!(
                    "provisioner.vlan={vid}: the VLAN interface name {name} is longer than the kernel's {MAX_INTERFACE_NAME} bytes"
                ));
            }
            name
        }
        None => nic.to_owned(),
    };
    Ok(StaticPlan {
        nic: nic.to_owned(),
        mac,
        mtu: config.mtu,
        vlan: config.vlan,
        address: config::static_plan(&interface, config),
    })
}

/// The NIC a static setup configures: the first item of
/// `provisioner.interface=` (names and MACs, in order) that an Ethernet NIC
/// matches, else the `BOOTIF=` NIC, else the only Ethernet NIC with
/// carrier. Errors name the parameter and every NIC seen.
pub fn choose_static_nic(
    interfaces: &[InterfaceInfo],
    selectors: &[InterfaceSelector],
    boot_mac: Option<[u8; 6]>,
) -> Result<(String, [u8; 6]), String> {
    let ethernet = ethernet_interfaces(interfaces);
    let found = || describe_with_macs(&ethernet);
    let by_mac = |mac: [u8; 6]| {
        ethernet
            .iter()
            .find(|i| i.mac == Some(mac))
            .map(|i| (i.name.clone(), mac))
    };
    let by_selector = |selector: &InterfaceSelector| match selector {
        InterfaceSelector::Name(name) => ethernet
            .iter()
            .find(|i| &i.name == name)
            .and_then(|i| Some((i.name.clone(), i.mac?))),
        InterfaceSelector::Mac(mac) => by_mac(*mac),
    };
    if !selectors.is_empty() {
        if let Some(chosen) = selectors.iter().find_map(by_selector) {
            return Ok(chosen);
        }
        let given: Vec<String> = selectors.iter().map(ToString::to_string).collect();
        let what = match selectors {
            [InterfaceSelector::Name(_)] => "no Ethernet interface of that name",
            [InterfaceSelector::Mac(_)] => "no Ethernet interface has that MAC",
            _ => "no Ethernet interface matches any of them",
        };
        return Err(format!(
            "provisioner.interface={}: {what} (found: {})",
            given.join(","),
            found()
        ));
    }
    match boot_mac {
        Some(mac) => by_mac(mac).ok_or_else(|| {
            format!(
                "BOOTIF={}: no Ethernet interface has that MAC (found: {}); set provisioner.interface=",
                format_mac(&mac),
                found()
            )
        }),
        None => {
            let with_carrier: Vec<&&InterfaceInfo> =
                ethernet.iter().filter(|i| i.carrier).collect();
            match with_carrier.as_slice() {
                [only] => Ok((only.name.clone(), only.mac.unwrap_or_default())),
                [] => Err(format!(
                    "provisioner.ip=: no network interface with carrier (found: {}); set provisioner.interface=",
                    describe_interfaces(&ethernet.iter().map(|i| (*i).clone()).collect::<Vec<_>>())
                )),
                several => {
                    let names: Vec<&str> = several.iter().map(|i| i.name.as_str()).collect();
                    Err(format!(
                        "provisioner.ip=: {} all have carrier; say which to use with provisioner.interface= or BOOTIF=",
                        names.join(", ")
                    ))
                }
            }
        }
    }
}

/// `eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57`, or `none`.
fn describe_with_macs(interfaces: &[&InterfaceInfo]) -> String {
    if interfaces.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = interfaces
        .iter()
        .map(|i| match i.mac {
            Some(mac) => format!("{} {}", i.name, format_mac(&mac)),
            None => i.name.clone(),
        })
        .collect();
    parts.join(", ")
}

/// `10.0.2.50/24 on eth0 via 10.0.2.2`, the static counterpart of
/// [`describe_lease`].
pub fn describe_plan(plan: &InterfacePlan) -> String {
    let mut text = format!("{}/{} on {}", plan.address, plan.prefix_len, plan.interface);
    for route in &plan.routes {
        if route.prefix_len == 0
            && let Some(gateway) = route.gateway
        {
            let _ = write!(text, " via {gateway}");
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::cmdline::KernelCmdline;
    use crate::net::NetConfig;
    use crate::net::links::tests::{MAC0, MAC1, iface};

    fn static_config(vlan: Option<u16>) -> StaticConfig {
        StaticConfig {
            address: Ipv4Addr::new(10, 0, 2, 50),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
            dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
            interface: Vec::new(),
            vlan,
            mtu: Some(1400),
        }
    }

    #[test]
    fn static_nic_by_name_or_mac_regardless_of_carrier() {
        let list = [iface("eth0", 1, true, MAC0), iface("eth1", 1, false, MAC1)];
        let by_name = InterfaceSelector::Name("eth1".into());
        assert_eq!(
            choose_static_nic(&list, &[by_name], Some(MAC0)).unwrap(),
            ("eth1".to_owned(), MAC1),
            "provisioner.interface= wins over BOOTIF="
        );
        let by_mac = InterfaceSelector::Mac(MAC1);
        assert_eq!(
            choose_static_nic(&list, &[by_mac], None).unwrap(),
            ("eth1".to_owned(), MAC1)
        );
        assert_eq!(
            choose_static_nic(&list, &[], Some(MAC1)).unwrap(),
            ("eth1".to_owned(), MAC1),
            "the BOOTIF NIC without provisioner.interface="
        );
    }

    /// `network-data`'s `interface` is a comma-separated list
    /// (provision-content v4.8.0 `content/params/network-data.yaml`, e.g.
    /// `eth0,enp0s3`), rendered as it is: the first item present wins.
    #[test]
    fn static_nic_from_a_list_is_the_first_item_present() {
        let list = [
            iface("enp0s3", 1, false, MAC0),
            iface("eth1", 1, true, MAC1),
        ];
        let config = NetConfig::from_cmdline(&KernelCmdline::parse(
            "provisioner.ip=10.0.0.5/24 provisioner.interface=eth0,enp0s3,eth1",
        ))
        .unwrap();
        let selectors = config.static_ipv4.unwrap().interface;
        assert_eq!(
            choose_static_nic(&list, &selectors, Some(MAC1)).unwrap(),
            ("enp0s3".to_owned(), MAC0),
            "eth0 is absent; enp0s3 comes before eth1 and wins over BOOTIF="
        );
        let by_mac_then_name = [
            InterfaceSelector::Mac([9; 6]),
            InterfaceSelector::Name("eth1".into()),
        ];
        assert_eq!(
            choose_static_nic(&list, &by_mac_then_name, None).unwrap(),
            ("eth1".to_owned(), MAC1)
        );
        let none_present = [
            InterfaceSelector::Name("eth0".into()),
            InterfaceSelector::Mac([9; 6]),
        ];
        assert_eq!(
            choose_static_nic(&list, &none_present, None).unwrap_err(),
            "provisioner.interface=eth0,09:09:09:09:09:09: no Ethernet interface matches any \
             of them (found: enp0s3 52:54:00:12:34:56, eth1 52:54:00:12:34:57)"
        );
    }

    #[test]
    fn static_nic_missing_names_the_parameter_and_the_nics() {
        let list = [
            iface("eth0", 1, true, MAC0),
            iface("eth1", 1, false, MAC1),
            iface("lo", 772, true, [0; 6]),
        ];
        assert_eq!(
            choose_static_nic(&list, &[InterfaceSelector::Name("eno1".into())], None).unwrap_err(),
            "provisioner.interface=eno1: no Ethernet interface of that name \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57)"
        );
        assert_eq!(
            choose_static_nic(&list, &[InterfaceSelector::Name("lo".into())], None).unwrap_err(),
            "provisioner.interface=lo: no Ethernet interface of that name \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57)"
        );
        assert_eq!(
            choose_static_nic(&list, &[InterfaceSelector::Mac([9; 6])], None).unwrap_err(),
            "provisioner.interface=09:09:09:09:09:09: no Ethernet interface has that MAC \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57)"
        );
        assert_eq!(
            choose_static_nic(&list, &[], Some([9; 6])).unwrap_err(),
            "BOOTIF=09:09:09:09:09:09: no Ethernet interface has that MAC \
             (found: eth0 52:54:00:12:34:56, eth1 52:54:00:12:34:57); set provisioner.interface="
        );
    }

    #[test]
    fn static_nic_without_hints_is_the_only_one_with_carrier() {
        let one_up = [iface("eth0", 1, false, MAC0), iface("eth1", 1, true, MAC1)];
        assert_eq!(
            choose_static_nic(&one_up, &[], None).unwrap(),
            ("eth1".to_owned(), MAC1)
        );
        let both_up = [
            iface("eth0", 1, true, MAC0),
            iface("eth1", 1, true, MAC1),
            iface("lo", 772, true, [0; 6]),
        ];
        assert_eq!(
            choose_static_nic(&both_up, &[], None).unwrap_err(),
            "provisioner.ip=: eth0, eth1 all have carrier; \
             say which to use with provisioner.interface= or BOOTIF="
        );
        let none_up = [iface("eth0", 1, false, MAC0), iface("eth1", 1, false, MAC1)];
        assert_eq!(
            choose_static_nic(&none_up, &[], None).unwrap_err(),
            "provisioner.ip=: no network interface with carrier \
             (found: eth0 [no carrier], eth1 [no carrier]); set provisioner.interface="
        );
        assert_eq!(
            choose_static_nic(&[], &[], None).unwrap_err(),
            "provisioner.ip=: no network interface with carrier (found: none); \
             set provisioner.interface="
        );
    }

    #[test]
    fn static_plan_without_vlan_configures_the_nic() {
        let plan = plan_static("eth0", MAC0, &static_config(None)).unwrap();
        assert_eq!(plan.nic, "eth0");
        assert_eq!(plan.mac, MAC0);
        assert_eq!(plan.vlan, None);
        assert_eq!(plan.mtu, Some(1400));
        assert_eq!(plan.address.interface, "eth0");
        assert_eq!(
            describe_plan(&plan.address),
            "10.0.2.50/24 on eth0 via 10.0.2.2"
        );
    }

    #[test]
    fn static_plan_with_vlan_puts_the_address_on_nic_dot_vid() {
        let plan = plan_static("enp3s0f1", MAC1, &static_config(Some(4094))).unwrap();
        assert_eq!(plan.nic, "enp3s0f1");
        assert_eq!(plan.mac, MAC1, "the physical NIC's MAC");
        assert_eq!(plan.vlan, Some(4094));
        assert_eq!(plan.address.interface, "enp3s0f1.4094");
        assert_eq!(
            describe_plan(&plan.address),
            "10.0.2.50/24 on enp3s0f1.4094 via 10.0.2.2"
        );
        assert!(plan.address.resolv_conf.contains("nameserver 10.0.2.3\n"));
    }

    #[test]
    fn static_plan_refuses_a_vlan_name_the_kernel_cannot_hold() {
        // 15 bytes fit, 16 do not.
        assert!(plan_static("enp129s0f1", MAC0, &static_config(Some(4094))).is_ok());
        assert_eq!(
            plan_static("enp129s0f1np1", MAC0, &static_config(Some(42))).unwrap_err(),
            "provisioner.vlan=42: the VLAN interface name enp129s0f1np1.42 is longer than the kernel's 15 bytes"
        );
    }
}
