//! The NICs as `/sys/class/net` shows them: reading them, which are
//! Ethernet, how they are named in messages, and waiting for carrier.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::sys;

pub(super) const CARRIER_POLL: Duration = Duration::from_millis(100);

/// ARPHRD_ETHER, the `type` of an Ethernet interface in sysfs.
const ARPHRD_ETHER: u16 = 1;

/// One entry of `/sys/class/net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub name: String,
    /// ARPHRD_* (`type`); `None` if unreadable.
    pub kind: Option<u16>,
    pub carrier: bool,
    pub mac: Option<[u8; 6]>,
}

/// The kernel's defaults already accept router advertisements and
/// autoconfigure on a host that does not forward; set them anyway, so a
/// kernel built or booted otherwise (`ipv6.disable_ipv6=1` aside) still
/// does. A kernel without IPv6 has no such files: only logged.
pub(super) fn enable_ipv6_autoconf(interface: &str) {
    for (key, value) in [("disable_ipv6", "0"), ("accept_ra", "1"), ("autoconf", "1")] {
        if let Err(e) = sys::set_ipv6_conf(interface, key, value) {
            log::debug!("net: ipv6 {key}={value} on {interface}: {e}");
        }
    }
}

/// Reads every interface under `sysfs_net` (normally `/sys/class/net`),
/// sorted by name.
pub fn list_interfaces(sysfs_net: &Path) -> std::io::Result<Vec<InterfaceInfo>> {
    let mut interfaces = Vec::new();
    for entry in fs::read_dir(sysfs_net)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let dir = entry.path();
        let read = |file: &str| fs::read_to_string(dir.join(file)).ok();
        interfaces.push(InterfaceInfo {
            kind: read("type").and_then(|s| s.trim().parse().ok()),
            // Reading `carrier` of a down interface fails with EINVAL.
            carrier: read("carrier").is_some_and(|s| s.trim() == "1"),
            mac: read("address").and_then(|s| parse_mac(s.trim())),
            name,
        });
    }
    interfaces.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(interfaces)
}

/// Interfaces DHCP can run on: Ethernet, not loopback.
pub fn ethernet_interfaces(interfaces: &[InterfaceInfo]) -> Vec<&InterfaceInfo> {
    interfaces
        .iter()
        .filter(|i| i.name != "lo" && i.kind == Some(ARPHRD_ETHER) && i.mac.is_some())
        .collect()
}

/// The interfaces to try DHCP on, in order: the one with `prefer_mac` first,
/// then the others with carrier by name. Errors name every interface seen.
pub fn dhcp_candidates(
    interfaces: &[InterfaceInfo],
    prefer_mac: Option<[u8; 6]>,
) -> Result<Vec<(String, [u8; 6])>, String> {
    let ethernet = ethernet_interfaces(interfaces);
    let mut candidates: Vec<(String, [u8; 6])> = ethernet
        .iter()
        .filter(|i| i.carrier)
        .filter_map(|i| Some((i.name.clone(), i.mac?)))
        .collect();
    if candidates.is_empty() {
        return Err(format!(
            "no network interface with carrier (found: {})",
            describe_interfaces(&ethernet.into_iter().cloned().collect::<Vec<_>>())
        ));
    }
    if let Some(preferred) = prefer_mac {
        // Stable: the rest keep their name order.
        candidates.sort_by_key(|(_, mac)| *mac != preferred);
        if candidates[0].1 != preferred {
            log::warn!(
                "net: no interface with carrier has the boot MAC {}, trying all",
                format_mac(&preferred)
            );
        }
    }
    Ok(candidates)
}

/// `eth0 [no carrier], eth1 [no carrier]`, or `none`.
pub fn describe_interfaces(interfaces: &[InterfaceInfo]) -> String {
    if interfaces.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = interfaces
        .iter()
        .map(|i| {
            let state = match (i.kind, i.carrier) {
                (Some(ARPHRD_ETHER), true) => "carrier",
                (Some(ARPHRD_ETHER), false) => "no carrier",
                _ => "not ethernet",
            };
            format!("{} [{state}]", i.name)
        })
        .collect();
    parts.join(", ")
}

/// Waits until `name` has carrier; an error after `timeout` names it.
pub(super) fn wait_for_nic_carrier(sysfs: &Path, name: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        let interfaces = list_interfaces(sysfs).context("listing /sys/class/net")?;
        if interfaces.iter().any(|i| i.name == name && i.carrier) {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            bail!(
                "{name} has no carrier after {} s: check its cable and switch port",
                timeout.as_secs()
            );
        }
        std::thread::sleep(CARRIER_POLL);
    }
}

/// Re-reads sysfs until the preferred NIC (or, without one, every Ethernet
/// NIC) has carrier, or `timeout` is over.
pub(super) fn wait_for_carrier(
    sysfs: &Path,
    prefer_mac: Option<[u8; 6]>,
    timeout: Duration,
) -> Result<Vec<InterfaceInfo>> {
    let start = Instant::now();
    loop {
        let interfaces = list_interfaces(sysfs).context("listing /sys/class/net")?;
        if carrier_settled(&interfaces, prefer_mac) || start.elapsed() >= timeout {
            return Ok(interfaces);
        }
        std::thread::sleep(CARRIER_POLL);
    }
}

/// Whether waiting longer for carrier could change the choice.
pub fn carrier_settled(interfaces: &[InterfaceInfo], prefer_mac: Option<[u8; 6]>) -> bool {
    let ethernet = ethernet_interfaces(interfaces);
    let preferred_up = prefer_mac.is_some_and(|preferred| {
        ethernet
            .iter()
            .any(|i| i.mac == Some(preferred) && i.carrier)
    });
    if preferred_up {
        return true;
    }
    !ethernet.is_empty() && ethernet.iter().all(|i| i.carrier)
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// Parses `52:54:00:12:34:56` (sysfs) or `52-54-00-12-34-56`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        // from_str_radix alone would take a sign ("+5").
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) const MAC0: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    pub(crate) const MAC1: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];

    pub(crate) fn iface(name: &str, kind: u16, carrier: bool, mac: [u8; 6]) -> InterfaceInfo {
        InterfaceInfo {
            name: name.into(),
            kind: Some(kind),
            carrier,
            mac: Some(mac),
        }
    }

    fn write_iface(root: &Path, name: &str, kind: &str, carrier: Option<&str>, address: &str) {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("type"), kind).unwrap();
        fs::write(dir.join("address"), address).unwrap();
        if let Some(carrier) = carrier {
            fs::write(dir.join("carrier"), carrier).unwrap();
        }
    }

    #[test]
    fn reads_a_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        write_iface(
            root.path(),
            "lo",
            "772\n",
            Some("1\n"),
            "00:00:00:00:00:00\n",
        );
        write_iface(root.path(), "eth1", "1\n", None, "52:54:00:12:34:57\n");
        write_iface(
            root.path(),
            "eth0",
            "1\n",
            Some("1\n"),
            "52:54:00:12:34:56\n",
        );
        let list = list_interfaces(root.path()).unwrap();
        assert_eq!(
            list,
            [
                iface("eth0", 1, true, MAC0),
                iface("eth1", 1, false, MAC1),
                iface("lo", 772, true, [0; 6]),
            ]
        );
        let names: Vec<&str> = ethernet_interfaces(&list)
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        assert_eq!(names, ["eth0", "eth1"]);
    }

    #[test]
    fn candidates_in_name_order_with_carrier_only() {
        let list = [
            iface("eth0", 1, false, MAC0),
            iface("eth1", 1, true, MAC1),
            iface("eth2", 1, true, [2; 6]),
            iface("wg0", 65534, true, [3; 6]),
        ];
        assert_eq!(
            dhcp_candidates(&list, None).unwrap(),
            [("eth1".to_owned(), MAC1), ("eth2".to_owned(), [2; 6])]
        );
    }

    #[test]
    fn preferred_mac_goes_first() {
        let list = [iface("eth0", 1, true, MAC0), iface("eth1", 1, true, MAC1)];
        let names: Vec<String> = dhcp_candidates(&list, Some(MAC1))
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["eth1", "eth0"]);
        // An unknown boot MAC falls back to name order.
        let names: Vec<String> = dhcp_candidates(&list, Some([9; 6]))
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["eth0", "eth1"]);
    }

    #[test]
    fn no_carrier_error_names_every_interface() {
        let list = [
            iface("eth0", 1, false, MAC0),
            iface("eth1", 1, false, MAC1),
            iface("lo", 772, true, [0; 6]),
        ];
        assert_eq!(
            dhcp_candidates(&list, None).unwrap_err(),
            "no network interface with carrier (found: eth0 [no carrier], eth1 [no carrier])"
        );
        assert_eq!(
            dhcp_candidates(&[], None).unwrap_err(),
            "no network interface with carrier (found: none)"
        );
    }

    #[test]
    fn carrier_wait_ends_when_preferred_or_all_have_link() {
        let both_down = [iface("eth0", 1, false, MAC0), iface("eth1", 1, false, MAC1)];
        let one_up = [iface("eth0", 1, false, MAC0), iface("eth1", 1, true, MAC1)];
        let both_up = [iface("eth0", 1, true, MAC0), iface("eth1", 1, true, MAC1)];
        assert!(!carrier_settled(&both_down, None));
        assert!(!carrier_settled(&one_up, None));
        assert!(!carrier_settled(&one_up, Some(MAC0)));
        assert!(carrier_settled(&one_up, Some(MAC1)));
        assert!(carrier_settled(&both_up, None));
        assert!(!carrier_settled(&[], None));
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("52:54:00:12:34:56"), Some(MAC0));
        assert_eq!(parse_mac("52-54-00-12-34-56"), Some(MAC0));
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("52:54:00:12:34:5g"), None);
        assert_eq!(parse_mac("52:54:00:12:34:+5"), None);
        assert_eq!(format_mac(&MAC0), "52:54:00:12:34:56");
    }
}
