//! Network configuration for the installed OS, in the flavour it uses.
//!
//! Interfaces are matched by MAC wherever the flavour allows: the deploy
//! kernel's names (`eth0`) rarely match the installed OS's (`enp3s0`).

use std::fmt::Write as _;
use std::net::IpAddr;

use anyhow::{Context, Result, bail};
use sha2::{Digest as _, Sha256};

use super::{FileOp, ImageView, InterfaceSpec, NetworkSpec, OsFamilyHint};

/// How the installed OS configures its network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkFlavour {
    /// `/etc/netplan/50-imprint.yaml` (Ubuntu).
    Netplan,
    /// `/etc/NetworkManager/system-connections/imprint-<id>.nmconnection`.
    NetworkManager,
    /// `/etc/sysconfig/network-scripts/ifcfg-<id>` (RHEL without NM keyfiles).
    Ifcfg,
    /// `/etc/systemd/network/50-imprint-<id>.network`.
    Networkd,
    /// `/etc/network/interfaces.d/50-imprint` (Debian ifupdown).
    Ifupdown,
}

const NETPLAN_DIR: &str = "/etc/netplan";
const NM_DIR: &str = "/etc/NetworkManager";
const IFCFG_DIR: &str = "/etc/sysconfig/network-scripts";
const NETWORKD_DIR: &str = "/etc/systemd/network";
/// systemd-networkd counts as in use only when enabled: most images ship it
/// unused next to NetworkManager or ifupdown.
const NETWORKD_ENABLED: [&str; 2] = [
    "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
    "/etc/systemd/system/dbus-org.freedesktop.network1.service",
];
const IFUPDOWN_FILE: &str = "/etc/network/interfaces";

/// The first flavour, in the family's order of preference, whose traces the
/// image carries. Netplan before NetworkManager: on Ubuntu netplan renders
/// NM's configuration, and a keyfile beside it would fight it.
pub fn choose_flavour(family: OsFamilyHint, image: &dyn ImageView) -> Result<NetworkFlavour> {
    use NetworkFlavour::*;
    let order: &[NetworkFlavour] = match family {
        OsFamilyHint::Debian => &[Netplan, Networkd, NetworkManager, Ifupdown],
        OsFamilyHint::RedHat => &[NetworkManager, Ifcfg, Networkd],
        OsFamilyHint::Suse => &[NetworkManager, Networkd],
        OsFamilyHint::Other => &[Netplan, Networkd, NetworkManager, Ifcfg, Ifupdown],
    };
    let present = |flavour: &NetworkFlavour| match flavour {
        Netplan => image.exists(NETPLAN_DIR),
        NetworkManager => image.exists(NM_DIR),
        Ifcfg => image.exists(IFCFG_DIR),
        Networkd => NETWORKD_ENABLED.iter().any(|p| image.exists(p)),
        Ifupdown => image.exists(IFUPDOWN_FILE),
    };
    order.iter().copied().find(present).with_context(|| {
        format!(
            "no network configuration this {family:?} image uses was found \
             (looked for {order:?}: {NETPLAN_DIR}, {NM_DIR}, {IFCFG_DIR}, an enabled \
             systemd-networkd, {IFUPDOWN_FILE})"
        )
    })
}

/// An interface with everything checked and parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Interface {
    /// The name in configuration files: the given name, or `imprint<i>`.
    pub id: String,
    /// Lowercase, colon-separated.
    pub mac: Option<String>,
    pub name: Option<String>,
    pub dhcp: bool,
    pub addresses: Vec<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub vlan: Option<u16>,
    pub mtu: Option<u32>,
}

impl Interface {
    /// The device that carries the addresses: the VLAN if any.
    fn ip_device(&self) -> String {
        match self.vlan {
            Some(vlan) => format!("{}.{vlan}", self.id),
            None => self.id.clone(),
        }
    }

    fn v4(&self) -> impl Iterator<Item = &(IpAddr, u8)> {
        self.addresses.iter().filter(|(a, _)| a.is_ipv4())
    }

    fn v6(&self) -> impl Iterator<Item = &(IpAddr, u8)> {
        self.addresses.iter().filter(|(a, _)| a.is_ipv6())
    }
}

/// Check and normalise the spec. No interfaces: DHCP on the boot NIC.
pub(crate) fn resolve(spec: &NetworkSpec, boot_mac: Option<[u8; 6]>) -> Result<Vec<Interface>> {
    let default = [InterfaceSpec::default()];
    let specs = if spec.interfaces.is_empty() {
        &default[..]
    } else {
        &spec.interfaces[..]
    };
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut boot_used = false;
    for (i, spec) in specs.iter().enumerate() {
        let interface = resolve_one(i, spec, boot_mac, &mut boot_used)
            .with_context(|| format!("interfaces[{i}]"))?;
        if interfaces.iter().any(|other| other.id == interface.id) {
            bail!("interfaces[{i}]: name {:?} is used twice", interface.id);
        }
        interfaces.push(interface);
    }
    Ok(interfaces)
}

fn resolve_one(
    i: usize,
    spec: &InterfaceSpec,
    boot_mac: Option<[u8; 6]>,
    boot_used: &mut bool,
) -> Result<Interface> {
    let mut mac = spec.mac.as_deref().map(parse_mac).transpose()?;
    if let Some(name) = &spec.name {
        check_ifname(name)?;
    }
    if mac.is_none() && spec.name.is_none() {
        if *boot_used {
            bail!("only one interface may leave out both mac and name (the boot NIC)");
        }
        let boot =
            boot_mac.context("no mac or name given and the boot NIC is unknown (BOOTIF=)")?;
        mac = Some(format_mac(boot));
        *boot_used = true;
    }
    let id = spec.name.clone().unwrap_or_else(|| format!("imprint{i}"));
    let addresses = spec
        .addresses
        .iter()
        .map(|a| parse_cidr(a))
        .collect::<Result<Vec<_>>>()?;
    let gateway = spec
        .gateway
        .as_deref()
        .map(|g| {
            g.parse::<IpAddr>()
                .with_context(|| format!("gateway {g:?} is not an IP address"))
        })
        .transpose()?;
    let dns = spec
        .dns
        .iter()
        .map(|d| {
            d.parse::<IpAddr>()
                .with_context(|| format!("dns {d:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(vlan) = spec.vlan {
        if !(1..=4094).contains(&vlan) {
            bail!("vlan {vlan} is outside 1..=4094");
        }
        check_ifname(&format!("{id}.{vlan}")).context("vlan device name")?;
    }
    if let Some(mtu) = spec.mtu {
        if !(576..=65535).contains(&mtu) {
            bail!("mtu {mtu} is outside 576..=65535");
        }
    }
    Ok(Interface {
        id,
        mac,
        name: spec.name.clone(),
        dhcp: spec.dhcp || addresses.is_empty(),
        addresses,
        gateway,
        dns,
        vlan: spec.vlan,
        mtu: spec.mtu,
    })
}

/// `aa:bb:cc:dd:ee:ff` or with dashes, any case, as lowercase text.
fn parse_mac(text: &str) -> Result<String> {
    match crate::text::parse_mac(text) {
        Some(mac) => Ok(format_mac(mac)),
        None => bail!("mac {text:?} is not a MAC address"),
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    crate::text::format_mac(&mac)
}

/// Kernel interface names: at most 15 bytes, no `/`, whitespace or `:`.
/// Stricter here, since names land in shell-sourced ifcfg files.
fn check_ifname(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        bail!("interface name {name:?} is not valid (1-15 of A-Z a-z 0-9 . _ -)");
    }
    Ok(())
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8)> {
    let (address, prefix) = text
        .split_once('/')
        .with_context(|| format!("address {text:?} has no /prefix"))?;
    let address: IpAddr = address
        .parse()
        .with_context(|| format!("address {text:?} is not an IP address"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = prefix.parse::<u8>().ok().filter(|p| *p <= max);
    let prefix = prefix.with_context(|| format!("address {text:?}: prefix must be 0..={max}"))?;
    Ok((address, prefix))
}

const HEADER: &str = "# Written by imprint at deploy time.\n";

/// The file operations for `flavour`.
pub(crate) fn plan(flavour: NetworkFlavour, interfaces: &[Interface]) -> Result<Vec<FileOp>> {
    let write = |path: String, contents: String, mode: u32| FileOp::Write {
        path,
        contents: contents.into_bytes(),
        mode,
        uid: 0,
        gid: 0,
    };
    let mkdir = |path: &str| FileOp::Mkdir {
        path: path.to_owned(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    };
    let mut ops = Vec::new();
    match flavour {
        NetworkFlavour::Netplan => {
            ops.push(mkdir(NETPLAN_DIR));
            // 0600: netplan warns about world-readable configs (they may hold
            // Wi-Fi keys).
            ops.push(write(
                format!("{NETPLAN_DIR}/50-imprint.yaml"),
                netplan(interfaces),
                0o600,
            ));
        }
        NetworkFlavour::NetworkManager => {
            let dir = format!("{NM_DIR}/system-connections");
            ops.push(mkdir(&dir));
            for (name, text) in nm_keyfiles(interfaces) {
                // NM ignores keyfiles that are not 0600 and owned by root.
                ops.push(write(format!("{dir}/{name}.nmconnection"), text, 0o600));
            }
        }
        NetworkFlavour::Ifcfg => {
            ops.push(mkdir(IFCFG_DIR));
            for (name, text) in ifcfg(interfaces)? {
                ops.push(write(format!("{IFCFG_DIR}/ifcfg-{name}"), text, 0o644));
            }
        }
        NetworkFlavour::Networkd => {
            ops.push(mkdir(NETWORKD_DIR));
            for (name, text) in networkd(interfaces) {
                ops.push(write(format!("{NETWORKD_DIR}/{name}"), text, 0o644));
            }
        }
        NetworkFlavour::Ifupdown => {
            let links = ifupdown_links(interfaces);
            if !links.is_empty() {
                ops.push(mkdir(NETWORKD_DIR));
            }
            for (name, text) in links {
                ops.push(write(format!("{NETWORKD_DIR}/{name}"), text, 0o644));
            }
            ops.push(mkdir("/etc/network/interfaces.d"));
            ops.push(write(
                "/etc/network/interfaces.d/50-imprint".into(),
                ifupdown(interfaces),
                0o644,
            ));
        }
    }
    Ok(ops)
}

/// Netplan v2 YAML; also cloud-init's network-config v2, which is the same
/// format. Values are double-quoted: YAML 1.1 reads an unquoted MAC such as
/// `52:54:00:12:34:56` as a base-60 integer.
pub(crate) fn netplan(interfaces: &[Interface]) -> String {
    let mut out = format!("{HEADER}network:\n  version: 2\n  ethernets:\n");
    for iface in interfaces {
        let mut body = String::new();
        if let Some(mac) = &iface.mac {
            let _ = writeln!(body, "      match:\n        macaddress: \"{mac}\"");
        }
        if let Some(mtu) = iface.mtu {
            let _ = writeln!(body, "      mtu: {mtu}");
        }
        if iface.vlan.is_none() {
            netplan_ip(&mut body, iface);
        }
        // A bare `eno1:` is null, which netplan refuses; a VLAN's parent
        // named by the spec may have nothing else to say.
        let empty = if body.is_empty() { " {}" } else { "" };
        let _ = write!(out, "    {}:{empty}\n{body}", iface.id);
    }
    let vlans: Vec<&Interface> = interfaces.iter().filter(|i| i.vlan.is_some()).collect();
    if !vlans.is_empty() {
        out.push_str("  vlans:\n");
        for iface in vlans {
            let _ = writeln!(out, "    {}:", iface.ip_device());
            let _ = writeln!(out, "      id: {}", iface.vlan.unwrap_or_default());
            let _ = writeln!(out, "      link: {}", iface.id);
            if let Some(mtu) = iface.mtu {
                let _ = writeln!(out, "      mtu: {mtu}");
            }
            netplan_ip(&mut out, iface);
        }
    }
    out
}

fn netplan_ip(out: &mut String, iface: &Interface) {
    if iface.dhcp {
        out.push_str("      dhcp4: true\n");
    }
    if !iface.addresses.is_empty() {
        out.push_str("      addresses:\n");
        for (address, prefix) in &iface.addresses {
            let _ = writeln!(out, "        - \"{address}/{prefix}\"");
        }
    }
    if let Some(gateway) = iface.gateway {
        // `to: default` needs netplan 0.103+; the explicit prefix works on all.
        let to = if gateway.is_ipv4() {
            "0.0.0.0/0"
        } else {
            "::/0"
        };
        let _ = writeln!(
            out,
            "      routes:\n        - to: \"{to}\"\n          via: \"{gateway}\""
        );
    }
    if !iface.dns.is_empty() {
        let list: Vec<String> = iface.dns.iter().map(|d| format!("\"{d}\"")).collect();
        let _ = writeln!(
            out,
            "      nameservers:\n        addresses: [{}]",
            list.join(", ")
        );
    }
}

/// A stable UUID per connection name (NM wants one; random ones would make
/// the same deploy produce different images).
fn nm_uuid(name: &str) -> String {
    let digest = Sha256::digest(format!("imprint:{name}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    // RFC 4122 version 5 and variant bits: a name-based UUID.
    b[6] = (b[6] & 0x0f) | 0x50;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// NetworkManager keyfiles: (connection name, text).
pub(crate) fn nm_keyfiles(interfaces: &[Interface]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for iface in interfaces {
        let name = format!("imprint-{}", iface.id);
        let uuid = nm_uuid(&name);
        let mut text = format!("{HEADER}[connection]\nid={name}\nuuid={uuid}\ntype=ethernet\n");
        if iface.mac.is_none() {
            let _ = writeln!(text, "interface-name={}", iface.id);
        }
        text.push_str("autoconnect=true\n\n[ethernet]\n");
        if let Some(mac) = &iface.mac {
            let _ = writeln!(text, "mac-address={}", mac.to_ascii_uppercase());
        }
        if let Some(mtu) = iface.mtu {
            let _ = writeln!(text, "mtu={mtu}");
        }
        text.push('\n');
        if iface.vlan.is_some() {
            text.push_str("[ipv4]\nmethod=disabled\n\n[ipv6]\nmethod=ignore\n");
            files.push((name, text));
            let vlan_name = format!("imprint-{}", iface.ip_device());
            let mut vlan = format!(
                "{HEADER}[connection]\nid={vlan_name}\nuuid={}\ntype=vlan\ninterface-name={}\nautoconnect=true\n\n[vlan]\nid={}\nparent={uuid}\n",
                nm_uuid(&vlan_name),
                iface.ip_device(),
                iface.vlan.unwrap_or_default(),
            );
            if let Some(mtu) = iface.mtu {
                let _ = writeln!(vlan, "mtu={mtu}");
            }
            vlan.push('\n');
            nm_ip(&mut vlan, iface);
            files.push((vlan_name, vlan));
        } else {
            nm_ip(&mut text, iface);
            files.push((name, text));
        }
    }
    files
}

fn nm_ip(text: &mut String, iface: &Interface) {
    let v4: Vec<_> = iface.v4().collect();
    let v6: Vec<_> = iface.v6().collect();
    let method = |static_: bool, off: &str| match (iface.dhcp, static_) {
        (true, _) => "auto".to_owned(),
        (false, true) => "manual".to_owned(),
        (false, false) => off.to_owned(),
    };
    for (section, addresses, off) in [("ipv4", &v4, "disabled"), ("ipv6", &v6, "ignore")] {
        let _ = writeln!(
            text,
            "[{section}]\nmethod={}",
            method(!addresses.is_empty(), off)
        );
        for (n, (address, prefix)) in addresses.iter().enumerate() {
            let _ = writeln!(text, "address{}={address}/{prefix}", n + 1);
        }
        let is_v4 = section == "ipv4";
        if let Some(gateway) = iface.gateway.filter(|g| g.is_ipv4() == is_v4) {
            let _ = writeln!(text, "gateway={gateway}");
        }
        let dns: Vec<String> = iface
            .dns
            .iter()
            .filter(|d| d.is_ipv4() == is_v4)
            .map(|d| format!("{d};"))
            .collect();
        if !dns.is_empty() {
            let _ = writeln!(text, "dns={}", dns.concat());
        }
        if is_v4 {
            text.push('\n');
        }
    }
}

/// RHEL ifcfg files: (device part of `ifcfg-<name>`, text). A VLAN needs
/// the parent's device name (`DEVICE=eth0.7`), which a MAC cannot give.
pub(crate) fn ifcfg(interfaces: &[Interface]) -> Result<Vec<(String, String)>> {
    let mut files = Vec::new();
    for iface in interfaces {
        let mut text = format!("{HEADER}NAME={}\nTYPE=Ethernet\n", iface.id);
        if let Some(name) = &iface.name {
            let _ = writeln!(text, "DEVICE={name}");
        }
        if let Some(mac) = &iface.mac {
            let _ = writeln!(text, "HWADDR={mac}");
        }
        text.push_str("ONBOOT=yes\n");
        if let Some(mtu) = iface.mtu {
            let _ = writeln!(text, "MTU={mtu}");
        }
        if let Some(vlan) = iface.vlan {
            let Some(name) = &iface.name else {
                bail!(
                    "{}: a VLAN in ifcfg needs the interface name (name)",
                    iface.id
                );
            };
            text.push_str("BOOTPROTO=none\n");
            files.push((iface.id.clone(), text));
            let device = iface.ip_device();
            let mut vlan_text = format!(
                "{HEADER}NAME={device}\nDEVICE={device}\nPHYSDEV={name}\nVLAN=yes\nVLAN_ID={vlan}\nONBOOT=yes\n"
            );
            if let Some(mtu) = iface.mtu {
                let _ = writeln!(vlan_text, "MTU={mtu}");
            }
            ifcfg_ip(&mut vlan_text, iface);
            files.push((device, vlan_text));
        } else {
            ifcfg_ip(&mut text, iface);
            files.push((iface.id.clone(), text));
        }
    }
    Ok(files)
}

fn ifcfg_ip(text: &mut String, iface: &Interface) {
    let _ = writeln!(
        text,
        "BOOTPROTO={}",
        if iface.dhcp { "dhcp" } else { "none" }
    );
    for (n, (address, prefix)) in iface.v4().enumerate() {
        let _ = writeln!(text, "IPADDR{n}={address}\nPREFIX{n}={prefix}");
    }
    let v6: Vec<String> = iface.v6().map(|(a, p)| format!("{a}/{p}")).collect();
    if let Some((first, rest)) = v6.split_first() {
        let _ = writeln!(text, "IPV6INIT=yes\nIPV6ADDR={first}");
        if !rest.is_empty() {
            let _ = writeln!(text, "IPV6ADDR_SECONDARIES=\"{}\"", rest.join(" "));
        }
    }
    match iface.gateway {
        Some(gateway @ IpAddr::V4(_)) => {
            let _ = writeln!(text, "GATEWAY={gateway}");
        }
        Some(gateway @ IpAddr::V6(_)) => {
            let _ = writeln!(text, "IPV6_DEFAULTGW={gateway}");
        }
        None => {}
    }
    for (n, dns) in iface.dns.iter().enumerate() {
        let _ = writeln!(text, "DNS{}={dns}", n + 1);
    }
}

/// `[Match]` for the physical NIC. `Type=ether`: a VLAN on top shares the
/// NIC's MAC and would match too.
fn networkd_match(iface: &Interface) -> String {
    match &iface.mac {
        Some(mac) => format!("[Match]\nMACAddress={mac}\nType=ether\n"),
        None => format!("[Match]\nName={}\n", iface.id),
    }
}

/// systemd-networkd units: (file name, text).
pub(crate) fn networkd(interfaces: &[Interface]) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for iface in interfaces {
        let mut text = format!("{HEADER}{}", networkd_match(iface));
        if let Some(mtu) = iface.mtu {
            let _ = write!(text, "\n[Link]\nMTUBytes={mtu}\n");
        }
        text.push_str("\n[Network]\n");
        if iface.vlan.is_some() {
            let device = iface.ip_device();
            let _ = writeln!(text, "VLAN={device}\nLinkLocalAddressing=no");
            files.push((format!("50-imprint-{}.network", iface.id), text));
            let mut netdev = format!("{HEADER}[NetDev]\nName={device}\nKind=vlan\n");
            if let Some(mtu) = iface.mtu {
                let _ = writeln!(netdev, "MTUBytes={mtu}");
            }
            let _ = write!(netdev, "\n[VLAN]\nId={}\n", iface.vlan.unwrap_or_default());
            files.push((format!("50-imprint-{device}.netdev"), netdev));
            let mut vlan = format!("{HEADER}[Match]\nName={device}\n\n[Network]\n");
            networkd_ip(&mut vlan, iface);
            files.push((format!("50-imprint-{device}.network"), vlan));
        } else {
            networkd_ip(&mut text, iface);
            files.push((format!("50-imprint-{}.network", iface.id), text));
        }
    }
    files
}

fn networkd_ip(text: &mut String, iface: &Interface) {
    if iface.dhcp {
        text.push_str("DHCP=ipv4\n");
    }
    for (address, prefix) in &iface.addresses {
        let _ = writeln!(text, "Address={address}/{prefix}");
    }
    if let Some(gateway) = iface.gateway {
        let _ = writeln!(text, "Gateway={gateway}");
    }
    for dns in &iface.dns {
        let _ = writeln!(text, "DNS={dns}");
    }
}

/// ifupdown cannot match by MAC, so an interface known only by MAC is given
/// a fixed name by a systemd `.link` file (udev applies it at boot).
fn ifupdown_links(interfaces: &[Interface]) -> Vec<(String, String)> {
    interfaces
        .iter()
        .filter(|iface| iface.name.is_none())
        .filter_map(|iface| {
            let mac = iface.mac.as_ref()?;
            Some((
                format!("10-imprint-{}.link", iface.id),
                format!(
                    "{HEADER}[Match]\nMACAddress={mac}\nType=ether\n\n[Link]\nName={}\n",
                    iface.id
                ),
            ))
        })
        .collect()
}

pub(crate) fn ifupdown(interfaces: &[Interface]) -> String {
    let mut out = HEADER.to_owned();
    for iface in interfaces {
        let mtu = iface
            .mtu
            .map(|m| format!("    mtu {m}\n"))
            .unwrap_or_default();
        if iface.vlan.is_some() {
            let _ = write!(out, "\nauto {0}\niface {0} inet manual\n{mtu}", iface.id);
            let device = iface.ip_device();
            let raw = format!("    vlan-raw-device {}\n{mtu}", iface.id);
            ifupdown_ip(&mut out, &device, iface, &raw);
        } else {
            ifupdown_ip(&mut out, &iface.id, iface, &mtu);
        }
    }
    out
}

fn ifupdown_ip(out: &mut String, device: &str, iface: &Interface, extra: &str) {
    let v4: Vec<_> = iface.v4().collect();
    let v6: Vec<_> = iface.v6().collect();
    let method = if iface.dhcp {
        "dhcp"
    } else if v4.is_empty() {
        "manual"
    } else {
        "static"
    };
    let _ = write!(
        out,
        "\nauto {device}\niface {device} inet {method}\n{extra}"
    );
    for (address, prefix) in &v4 {
        let _ = writeln!(out, "    address {address}/{prefix}");
    }
    if let Some(gateway) = iface.gateway.filter(IpAddr::is_ipv4) {
        let _ = writeln!(out, "    gateway {gateway}");
    }
    if !iface.dns.is_empty() {
        let list: Vec<String> = iface.dns.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "    dns-nameservers {}", list.join(" "));
    }
    if !v6.is_empty() {
        let _ = writeln!(out, "iface {device} inet6 static");
        for (address, prefix) in &v6 {
            let _ = writeln!(out, "    address {address}/{prefix}");
        }
        if let Some(gateway) = iface.gateway.filter(IpAddr::is_ipv6) {
            let _ = writeln!(out, "    gateway {gateway}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::MemoryImage;
    use super::*;

    const BOOT: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn dhcp_boot() -> Vec<Interface> {
        resolve(&NetworkSpec::default(), Some(BOOT)).unwrap()
    }

    /// A static interface on VLAN 7 (named, so ifcfg can do VLANs) plus a
    /// second NIC by MAC with IPv6 and MTU.
    fn static_pair() -> Vec<Interface> {
        let spec = NetworkSpec {
            interfaces: vec![
                InterfaceSpec {
                    name: Some("eno1".into()),
                    addresses: vec!["10.0.0.5/24".into()],
                    gateway: Some("10.0.0.1".into()),
                    dns: vec!["1.1.1.1".into(), "2606:4700::1111".into()],
                    vlan: Some(7),
                    ..InterfaceSpec::default()
                },
                InterfaceSpec {
                    mac: Some("AA-BB-CC-DD-EE-FF".into()),
                    addresses: vec!["192.168.1.9/16".into(), "2001:db8::9/64".into()],
                    gateway: Some("2001:db8::1".into()),
                    mtu: Some(9000),
                    ..InterfaceSpec::default()
                },
            ],
        };
        resolve(&spec, None).unwrap()
    }

    #[test]
    fn the_default_is_dhcp_on_the_boot_nic() {
        let interfaces = dhcp_boot();
        assert_eq!(interfaces.len(), 1);
        assert_eq!(interfaces[0].id, "imprint0");
        assert_eq!(interfaces[0].mac.as_deref(), Some("52:54:00:12:34:56"));
        assert!(interfaces[0].dhcp);
        let err = resolve(&NetworkSpec::default(), None).unwrap_err();
        assert!(
            format!("{err:#}").contains("boot NIC is unknown"),
            "{err:#}"
        );
    }

    #[test]
    fn bad_interfaces_are_named() {
        let cases: [(InterfaceSpec, &str); 7] = [
            (
                InterfaceSpec {
                    mac: Some("52:54:00".into()),
                    ..Default::default()
                },
                "not a MAC",
            ),
            (
                InterfaceSpec {
                    name: Some("a/b".into()),
                    ..Default::default()
                },
                "not valid",
            ),
            (
                InterfaceSpec {
                    addresses: vec!["10.0.0.5".into()],
                    ..Default::default()
                },
                "no /prefix",
            ),
            (
                InterfaceSpec {
                    addresses: vec!["10.0.0.5/33".into()],
                    ..Default::default()
                },
                "0..=32",
            ),
            (
                InterfaceSpec {
                    gateway: Some("gw".into()),
                    ..Default::default()
                },
                "gateway \"gw\"",
            ),
            (
                InterfaceSpec {
                    vlan: Some(0),
                    ..Default::default()
                },
                "vlan 0",
            ),
            (
                InterfaceSpec {
                    name: Some("enp0s31f6abcd".into()),
                    vlan: Some(100),
                    ..Default::default()
                },
                "vlan device name",
            ),
        ];
        for (spec, expected) in cases {
            let err = resolve(
                &NetworkSpec {
                    interfaces: vec![spec],
                },
                Some(BOOT),
            )
            .unwrap_err();
            let err = format!("{err:#}");
            assert!(
                err.starts_with("interfaces[0]") && err.contains(expected),
                "{err}"
            );
        }
        let two_boot = NetworkSpec {
            interfaces: vec![InterfaceSpec::default(), InterfaceSpec::default()],
        };
        let err = format!("{:#}", resolve(&two_boot, Some(BOOT)).unwrap_err());
        assert!(
            err.contains("interfaces[1]") && err.contains("only one interface"),
            "{err}"
        );
    }

    #[test]
    fn flavour_follows_family_and_image() {
        let ubuntu = MemoryImage::default()
            .with_dir(NETPLAN_DIR)
            .with_dir(NM_DIR);
        assert_eq!(
            choose_flavour(OsFamilyHint::Debian, &ubuntu).unwrap(),
            NetworkFlavour::Netplan
        );
        let rhel9 = MemoryImage::default().with_dir(NM_DIR).with_dir(IFCFG_DIR);
        assert_eq!(
            choose_flavour(OsFamilyHint::RedHat, &rhel9).unwrap(),
            NetworkFlavour::NetworkManager
        );
        let rhel7 = MemoryImage::default().with_dir(IFCFG_DIR);
        assert_eq!(
            choose_flavour(OsFamilyHint::RedHat, &rhel7).unwrap(),
            NetworkFlavour::Ifcfg
        );
        // networkd shipped but not enabled does not count.
        let debian = MemoryImage::default()
            .with_dir(NETWORKD_DIR)
            .with_file(IFUPDOWN_FILE, "source /etc/network/interfaces.d/*\n");
        assert_eq!(
            choose_flavour(OsFamilyHint::Debian, &debian).unwrap(),
            NetworkFlavour::Ifupdown
        );
        let arch = MemoryImage::default().with_file(NETWORKD_ENABLED[0], "");
        assert_eq!(
            choose_flavour(OsFamilyHint::Other, &arch).unwrap(),
            NetworkFlavour::Networkd
        );
        let err = choose_flavour(OsFamilyHint::Suse, &MemoryImage::default()).unwrap_err();
        assert!(err.to_string().contains("Suse image"), "{err}");
    }

    #[test]
    fn netplan_dhcp_and_static() {
        assert_eq!(
            netplan(&dhcp_boot()),
            "# Written by imprint at deploy time.\nnetwork:\n  version: 2\n  ethernets:\n    imprint0:\n      match:\n        macaddress: \"52:54:00:12:34:56\"\n      dhcp4: true\n"
        );
        let expected = r#"# Written by imprint at deploy time.
network:
  version: 2
  ethernets:
    eno1: {}
    imprint1:
      match:
        macaddress: "aa:bb:cc:dd:ee:ff"
      mtu: 9000
      addresses:
        - "192.168.1.9/16"
        - "2001:db8::9/64"
      routes:
        - to: "::/0"
          via: "2001:db8::1"
  vlans:
    eno1.7:
      id: 7
      link: eno1
      addresses:
        - "10.0.0.5/24"
      routes:
        - to: "0.0.0.0/0"
          via: "10.0.0.1"
      nameservers:
        addresses: ["1.1.1.1", "2606:4700::1111"]
"#;
        assert_eq!(netplan(&static_pair()), expected);
    }

    #[test]
    fn network_manager_keyfiles() {
        let files = nm_keyfiles(&dhcp_boot());
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "imprint-imprint0");
        let uuid = nm_uuid("imprint-imprint0");
        assert_eq!(
            files[0].1,
            format!(
                "# Written by imprint at deploy time.\n[connection]\nid=imprint-imprint0\nuuid={uuid}\ntype=ethernet\nautoconnect=true\n\n[ethernet]\nmac-address=52:54:00:12:34:56\n\n[ipv4]\nmethod=auto\n\n[ipv6]\nmethod=auto\n"
            )
        );
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "5");
        assert_eq!(uuid, nm_uuid("imprint-imprint0"), "stable across runs");

        let files = nm_keyfiles(&static_pair());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["imprint-eno1", "imprint-eno1.7", "imprint-imprint1"]
        );
        let parent_uuid = nm_uuid("imprint-eno1");
        assert_eq!(
            files[0].1,
            format!(
                "# Written by imprint at deploy time.\n[connection]\nid=imprint-eno1\nuuid={parent_uuid}\ntype=ethernet\ninterface-name=eno1\nautoconnect=true\n\n[ethernet]\n\n[ipv4]\nmethod=disabled\n\n[ipv6]\nmethod=ignore\n"
            )
        );
        assert_eq!(
            files[1].1,
            format!(
                "# Written by imprint at deploy time.\n[connection]\nid=imprint-eno1.7\nuuid={}\ntype=vlan\ninterface-name=eno1.7\nautoconnect=true\n\n[vlan]\nid=7\nparent={parent_uuid}\n\n[ipv4]\nmethod=manual\naddress1=10.0.0.5/24\ngateway=10.0.0.1\ndns=1.1.1.1;\n\n[ipv6]\nmethod=ignore\ndns=2606:4700::1111;\n",
                nm_uuid("imprint-eno1.7")
            )
        );
        assert!(
            files[2]
                .1
                .contains("[ethernet]\nmac-address=AA:BB:CC:DD:EE:FF\nmtu=9000\n")
        );
        assert!(files[2].1.ends_with(
            "[ipv4]\nmethod=manual\naddress1=192.168.1.9/16\n\n[ipv6]\nmethod=manual\naddress1=2001:db8::9/64\ngateway=2001:db8::1\n"
        ));
    }

    #[test]
    fn ifcfg_files() {
        let files = ifcfg(&dhcp_boot()).unwrap();
        assert_eq!(
            files,
            [(
                "imprint0".to_owned(),
                "# Written by imprint at deploy time.\nNAME=imprint0\nTYPE=Ethernet\nHWADDR=52:54:00:12:34:56\nONBOOT=yes\nBOOTPROTO=dhcp\n".to_owned()
            )]
        );
        let files = ifcfg(&static_pair()).unwrap();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["eno1", "eno1.7", "imprint1"]);
        assert_eq!(
            files[0].1,
            "# Written by imprint at deploy time.\nNAME=eno1\nTYPE=Ethernet\nDEVICE=eno1\nONBOOT=yes\nBOOTPROTO=none\n"
        );
        assert_eq!(
            files[1].1,
            "# Written by imprint at deploy time.\nNAME=eno1.7\nDEVICE=eno1.7\nPHYSDEV=eno1\nVLAN=yes\nVLAN_ID=7\nONBOOT=yes\nBOOTPROTO=none\nIPADDR0=10.0.0.5\nPREFIX0=24\nGATEWAY=10.0.0.1\nDNS1=1.1.1.1\nDNS2=2606:4700::1111\n"
        );
        assert_eq!(
            files[2].1,
            "# Written by imprint at deploy time.\nNAME=imprint1\nTYPE=Ethernet\nHWADDR=aa:bb:cc:dd:ee:ff\nONBOOT=yes\nMTU=9000\nBOOTPROTO=none\nIPADDR0=192.168.1.9\nPREFIX0=16\nIPV6INIT=yes\nIPV6ADDR=2001:db8::9/64\nIPV6_DEFAULTGW=2001:db8::1\n"
        );
        let vlan_by_mac = NetworkSpec {
            interfaces: vec![InterfaceSpec {
                vlan: Some(7),
                ..InterfaceSpec::default()
            }],
        };
        let err = ifcfg(&resolve(&vlan_by_mac, Some(BOOT)).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("needs the interface name"),
            "{err}"
        );
    }

    #[test]
    fn networkd_units() {
        assert_eq!(
            networkd(&dhcp_boot()),
            [(
                "50-imprint-imprint0.network".to_owned(),
                "# Written by imprint at deploy time.\n[Match]\nMACAddress=52:54:00:12:34:56\nType=ether\n\n[Network]\nDHCP=ipv4\n".to_owned()
            )]
        );
        let files = networkd(&static_pair());
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "50-imprint-eno1.network",
                "50-imprint-eno1.7.netdev",
                "50-imprint-eno1.7.network",
                "50-imprint-imprint1.network"
            ]
        );
        assert_eq!(
            files[0].1,
            "# Written by imprint at deploy time.\n[Match]\nName=eno1\n\n[Network]\nVLAN=eno1.7\nLinkLocalAddressing=no\n"
        );
        assert_eq!(
            files[1].1,
            "# Written by imprint at deploy time.\n[NetDev]\nName=eno1.7\nKind=vlan\n\n[VLAN]\nId=7\n"
        );
        assert_eq!(
            files[2].1,
            "# Written by imprint at deploy time.\n[Match]\nName=eno1.7\n\n[Network]\nAddress=10.0.0.5/24\nGateway=10.0.0.1\nDNS=1.1.1.1\nDNS=2606:4700::1111\n"
        );
        assert_eq!(
            files[3].1,
            "# Written by imprint at deploy time.\n[Match]\nMACAddress=aa:bb:cc:dd:ee:ff\nType=ether\n\n[Link]\nMTUBytes=9000\n\n[Network]\nAddress=192.168.1.9/16\nAddress=2001:db8::9/64\nGateway=2001:db8::1\n"
        );
    }

    #[test]
    fn ifupdown_stanzas_and_link_renames() {
        let ops = plan(NetworkFlavour::Ifupdown, &dhcp_boot()).unwrap();
        let lines: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "mkdir /etc/systemd/network (0755 0:0)",
                "write /etc/systemd/network/10-imprint-imprint0.link (0644 0:0, 107 bytes)",
                "mkdir /etc/network/interfaces.d (0755 0:0)",
                "write /etc/network/interfaces.d/50-imprint (0644 0:0, 77 bytes)",
            ]
        );
        assert_eq!(
            ifupdown_links(&dhcp_boot())[0].1,
            "# Written by imprint at deploy time.\n[Match]\nMACAddress=52:54:00:12:34:56\nType=ether\n\n[Link]\nName=imprint0\n"
        );
        assert_eq!(
            ifupdown(&dhcp_boot()),
            "# Written by imprint at deploy time.\n\nauto imprint0\niface imprint0 inet dhcp\n"
        );
        let expected = "# Written by imprint at deploy time.

auto eno1
iface eno1 inet manual

auto eno1.7
iface eno1.7 inet static
    vlan-raw-device eno1
    address 10.0.0.5/24
    gateway 10.0.0.1
    dns-nameservers 1.1.1.1 2606:4700::1111

auto imprint1
iface imprint1 inet static
    mtu 9000
    address 192.168.1.9/16
iface imprint1 inet6 static
    address 2001:db8::9/64
    gateway 2001:db8::1
";
        assert_eq!(ifupdown(&static_pair()), expected);
    }

    #[test]
    fn plan_modes_per_flavour() {
        let mode_of = |flavour| {
            plan(flavour, &dhcp_boot())
                .unwrap()
                .into_iter()
                .filter_map(|op| match op {
                    FileOp::Write { path, mode, .. } => Some((path, mode)),
                    _ => None,
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(
            mode_of(NetworkFlavour::Netplan),
            [("/etc/netplan/50-imprint.yaml".to_owned(), 0o600)]
        );
        assert_eq!(
            mode_of(NetworkFlavour::NetworkManager),
            [(
                "/etc/NetworkManager/system-connections/imprint-imprint0.nmconnection".to_owned(),
                0o600
            )]
        );
        assert_eq!(
            mode_of(NetworkFlavour::Ifcfg),
            [(
                "/etc/sysconfig/network-scripts/ifcfg-imprint0".to_owned(),
                0o644
            )]
        );
        assert_eq!(
            mode_of(NetworkFlavour::Networkd),
            [(
                "/etc/systemd/network/50-imprint-imprint0.network".to_owned(),
                0o644
            )]
        );
    }
}
