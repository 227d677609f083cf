//! The network settings a DRP bootenv renders onto the kernel command line:
//! `BOOTIF=` (the NIC the machine PXE-booted from) and the static
//! `provisioner.ip=/gw=/dns=/interface=/vlan=/mtu=` settings. Parsing only;
//! choosing the NIC is [`super::choose_static_nic`].
//!
//! DRP converts its `network-data` param (`address` + `netmask`) into
//! `provisioner.ip=<addr>/<prefix>` when it renders Sledgehammer's boot
//! entry, so the CIDR form is the only one accepted here.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use super::{format_mac, parse_mac};
use crate::cmdline::KernelCmdline;

/// Where the network settings came from, parsed and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The NIC the machine booted from (`BOOTIF=`): DHCP tries it first, and
    /// a static setup uses it when `provisioner.interface=` is not given.
    pub boot_mac: Option<[u8; 6]>,
    /// `provisioner.ip=` and friends; `None` means DHCP.
    pub static_ipv4: Option<StaticConfig>,
    /// `imprint.link-timeout=`: how long a NIC without carrier is waited
    /// for; `None` means [`super::DEFAULT_LINK_TIMEOUT`].
    pub link_timeout: Option<Duration>,
}

/// A static IPv4 setup from `provisioner.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// In the order given; musl uses the first three.
    pub dns: Vec<Ipv4Addr>,
    /// `provisioner.interface=`, in preference order (DRP's `network-data`
    /// documents `interface` as a comma-separated list, e.g.
    /// `eth0,enp0s3`); empty: not given.
    pub interface: Vec<InterfaceSelector>,
    /// 802.1Q VLAN ID: the address goes on `<nic>.<vid>`.
    pub vlan: Option<u16>,
    pub mtu: Option<u32>,
}

/// One item of `provisioner.interface=`: a kernel name (`eno1`) or a MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceSelector {
    Name(String),
    Mac([u8; 6]),
}

impl std::fmt::Display for InterfaceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InterfaceSelector::Name(name) => f.write_str(name),
            InterfaceSelector::Mac(mac) => f.write_str(&format_mac(mac)),
        }
    }
}

/// The `provisioner.*` keys that only make sense with `provisioner.ip=`.
const STATIC_ONLY: [&str; 5] = [
    "provisioner.gw",
    "provisioner.dns",
    "provisioner.interface",
    "provisioner.vlan",
    "provisioner.mtu",
];

/// Linux's minimum IPv4 MTU, and the largest jumbo frame common switches take.
const MTU_RANGE: std::ops::RangeInclusive<u32> = 68..=9216;
/// 0 and 4095 are reserved by 802.1Q.
const VLAN_RANGE: std::ops::RangeInclusive<u16> = 1..=4094;

impl NetConfig {
    /// Reads `BOOTIF=` and `provisioner.*`. An empty value (`provisioner.gw=`,
    /// as a template renders an unset param) counts as not given. Errors
    /// name the parameter.
    pub fn from_cmdline(cmdline: &KernelCmdline) -> Result<Self> {
        // pxelinux's `IPAPPEND 2` appends BOOTIF= to the whole line, so
        // after a `--` it lands among init's arguments: look there too.
        let bootif_after_dashes = cmdline
            .init_args
            .iter()
            .rev()
            .find_map(|word| word.strip_prefix("BOOTIF="));
        let given = |key: &str| {
            let value = cmdline.value(key);
            let value = if key == "BOOTIF" {
                value.or(bootif_after_dashes)
            } else {
                value
            };
            value.map(|v| (v.trim().to_owned(), format!("parameter {key}={}", v.trim())))
        };
        Self::from_settings(&given)
    }

    /// The same settings from a deploy spec's `boot-network` object, keyed
    /// by the command line's names without their prefix (`bootif`, `ip`,
    /// `gw`, `dns`, `interface`, `vlan`, `mtu`), for a spec read before the
    /// network is up (`imprint.config=file://LABEL=…/spec.json`). It
    /// replaces the command line's static setup; without `bootif`, the
    /// command line's `BOOTIF=` still says which NIC to prefer
    /// ([`NetConfig::over`]).
    pub fn from_json(object: &serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        const KEYS: [(&str, &str); 7] = [
            ("bootif", "BOOTIF"),
            ("ip", "provisioner.ip"),
            ("gw", "provisioner.gw"),
            ("dns", "provisioner.dns"),
            ("interface", "provisioner.interface"),
            ("vlan", "provisioner.vlan"),
            ("mtu", "provisioner.mtu"),
        ];
        if let Some(unknown) = object.keys().find(|k| !KEYS.iter().any(|(j, _)| j == k)) {
            bail!(
                "field \"boot-network\" of the deploy spec: unknown key {unknown:?}; known keys: bootif, ip, gw, dns, interface, vlan, mtu"
            );
        }
        let given = |key: &str| {
            let (json_key, _) = KEYS.iter().find(|(_, k)| *k == key)?;
            let text = match object.get(*json_key)? {
                serde_json::Value::String(s) => s.trim().to_owned(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            let name = format!("field \"boot-network\".{json_key} of the deploy spec");
            Some((text, name))
        };
        Self::from_settings(&given)
    }

    /// This setup (a deploy spec's) over `base` (the command line's): the
    /// boot NIC is `base`'s unless this one names it.
    pub fn over(self, base: NetConfig) -> NetConfig {
        NetConfig {
            boot_mac: self.boot_mac.or(base.boot_mac),
            ..self
        }
    }

    /// `given(key)` answers a setting by its command-line name with its
    /// value and how to name it in an error.
    fn from_settings(given: &dyn Fn(&str) -> Option<(String, String)>) -> Result<Self> {
        let given = |key: &str| given(key).filter(|(value, _)| !value.is_empty());
        let boot_mac = match given("BOOTIF") {
            Some((value, name)) => parse_bootif(&value).with_context(|| name)?,
            None => None,
        };
        let Some((ip, ip_name)) = given("provisioner.ip") else {
            if let Some((_, name)) = STATIC_ONLY.iter().find_map(|key| given(key)) {
                bail!(
                    "{name} is set but no address is: a static setup needs provisioner.ip=<address>/<prefix> (\"ip\" in a deploy spec's boot-network)"
                );
            }
            return Ok(NetConfig {
                boot_mac,
                static_ipv4: None,
                link_timeout: None,
            });
        };
        let (address, prefix_len) = parse_cidr(&ip).with_context(|| ip_name)?;
        let gateway = given("provisioner.gw")
            .map(|(gw, name)| parse_host("gateway", &gw).with_context(|| name))
            .transpose()?;
        let dns = match given("provisioner.dns") {
            Some((list, name)) => parse_dns(&list).with_context(|| name)?,
            None => Vec::new(),
        };
        let interface = match given("provisioner.interface") {
            Some((text, name)) => parse_interfaces(&text).with_context(|| name)?,
            None => Vec::new(),
        };
        let vlan = given("provisioner.vlan")
            .map(|(vid, name)| parse_vlan(&vid).with_context(|| name))
            .transpose()?;
        let mtu = given("provisioner.mtu")
            .map(|(mtu, name)| parse_mtu(&mtu).with_context(|| name))
            .transpose()?;
        Ok(NetConfig {
            boot_mac,
            link_timeout: None,
            static_ipv4: Some(StaticConfig {
                address,
                prefix_len,
                gateway,
                dns,
                interface,
                vlan,
                mtu,
            }),
        })
    }
}

/// The longest `imprint.link-timeout=`: past a few minutes a port is not
/// slow, it is dead, and the deploy should fail saying so.
const MAX_LINK_TIMEOUT: Duration = Duration::from_secs(300);

/// `5`, `5s`, `1500ms`: a duration up to [`MAX_LINK_TIMEOUT`].
pub fn parse_link_timeout(value: &str) -> Result<Duration> {
    let timeout = crate::spec::parse_duration(value)?;
    if timeout > MAX_LINK_TIMEOUT {
        bail!(
            "{} s is longer than the {} s a port can take to get link",
            timeout.as_secs(),
            MAX_LINK_TIMEOUT.as_secs()
        );
    }
    Ok(timeout)
}

/// `01-52-54-00-12-34-56` (PXELINUX's `IPAPPEND 2` and iPXE's form: ARP
/// hardware type 1, Ethernet, then the MAC) or a plain `52:54:00:12:34:56`,
/// any case.
///
/// `discovery` gives `None`: DRP's virtual-media boot ISO renders that
/// placeholder when no PXE boot happened, so there is no boot NIC to prefer.
pub fn parse_bootif(value: &str) -> Result<Option<[u8; 6]>> {
    if value.eq_ignore_ascii_case("discovery") {
        return Ok(None);
    }
    if !value.contains('-')
        && let Some(mac) = parse_mac(value)
    {
        return Ok(Some(mac));
    }
    // Six hyphenated bytes alone are refused: `01-52-54-00-12-34` is a
    // truncated BOOTIF, not a MAC.
    if let Some((hardware_type, rest)) = value.split_once('-')
        && !rest.contains(':')
        && let Some(mac) = parse_mac(rest)
    {
        if hardware_type == "01" {
            return Ok(Some(mac));
        }
        bail!("hardware type {hardware_type} is not Ethernet (01)");
    }
    Err(anyhow!(
        "not a MAC address: expected 01-52-54-00-12-34-56 or 52:54:00:12:34:56"
    ))
}

/// `10.0.0.5/24`.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8)> {
    let Some((address, prefix)) = text.split_once('/') else {
        bail!("no prefix length: write it as <address>/<prefix>, e.g. {text}/24");
    };
    let address = parse_host("address", address)?;
    let prefix_len: u8 = prefix
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .with_context(|| format!("prefix length {prefix} is not a number from 1 to 32"))?;
    Ok((address, prefix_len))
}

/// One unicast IPv4 address.
fn parse_host(what: &str, text: &str) -> Result<Ipv4Addr> {
    let address: Ipv4Addr = text
        .parse()
        .ok()
        .with_context(|| format!("{what} {text} is not an IPv4 address"))?;
    if address.is_unspecified() || address.is_broadcast() || address.is_multicast() {
        bail!("{what} {address} is not a host address");
    }
    Ok(address)
}

/// `10.0.0.2,10.0.0.3`: one or more addresses, comma-separated.
fn parse_dns(list: &str) -> Result<Vec<Ipv4Addr>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|server| parse_host("DNS server", server))
        .collect()
}

/// A MAC if it reads as one, else a kernel interface name.
/// `eno1`, `52:54:00:12:34:56` or a comma-separated list of them
/// (`network-data`'s `interface`, provision-content v4.8.0
/// `content/params/network-data.yaml`), in preference order.
fn parse_interfaces(text: &str) -> Result<Vec<InterfaceSelector>> {
    if !text.contains(',') {
        return Ok(vec![parse_interface(text)?]);
    }
    text.split(',')
        .map(|item| parse_interface(item.trim()).with_context(|| format!("item {:?}", item.trim())))
        .collect()
}

fn parse_interface(text: &str) -> Result<InterfaceSelector> {
    if let Some(mac) = parse_mac(text) {
        return Ok(InterfaceSelector::Mac(mac));
    }
    // The kernel's dev_valid_name(): below IFNAMSIZ, no '/', ':' or whitespace.
    let valid = !text.is_empty()
        && text.len() < 16
        && text != "."
        && text != ".."
        && !text.contains(['/', ':'])
        && !text.chars().any(char::is_whitespace);
    if !valid {
        bail!("not an interface name (like eno1) or a MAC address");
    }
    Ok(InterfaceSelector::Name(text.to_owned()))
}

fn parse_vlan(text: &str) -> Result<u16> {
    text.parse()
        .ok()
        .filter(|vid| VLAN_RANGE.contains(vid))
        .context("not a VLAN ID from 1 to 4094")
}

fn parse_mtu(text: &str) -> Result<u32> {
    text.parse()
        .ok()
        .filter(|mtu| MTU_RANGE.contains(mtu))
        .context("not an MTU from 68 to 9216")
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn config(cmdline: &str) -> Result<NetConfig> {
        NetConfig::from_cmdline(&KernelCmdline::parse(cmdline))
    }

    fn error(cmdline: &str) -> String {
        format!("{:#}", config(cmdline).unwrap_err())
    }

    #[test]
    fn nothing_given_means_dhcp_without_preference() {
        assert_eq!(config("ro console=ttyS0").unwrap(), NetConfig::default());
    }

    #[test]
    fn bootif_in_every_spelling() {
        for value in ["01-52-54-00-12-34-56", "52:54:00:12:34:56"] {
            assert_eq!(parse_bootif(value).unwrap(), Some(MAC), "{value}");
        }
        let upper = [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff];
        assert_eq!(parse_bootif("01-AA-BB-CC-DD-EE-FF").unwrap(), Some(upper));
        assert_eq!(parse_bootif("aa:BB:cc:DD:ee:FF").unwrap(), Some(upper));
        assert_eq!(
            config("BOOTIF=01-52-54-00-12-34-56").unwrap().boot_mac,
            Some(MAC)
        );
    }

    #[test]
    fn bootif_discovery_placeholder_is_no_boot_nic() {
        assert_eq!(parse_bootif("discovery").unwrap(), None);
        assert_eq!(config("BOOTIF=discovery").unwrap(), NetConfig::default());
    }

    #[test]
    fn malformed_bootif_names_the_parameter() {
        assert_eq!(
            error("BOOTIF=01-52-54-00-12-34"),
            "parameter BOOTIF=01-52-54-00-12-34: not a MAC address: expected 01-52-54-00-12-34-56 or 52:54:00:12:34:56"
        );
        assert_eq!(
            error("BOOTIF=20-52-54-00-12-34-56"),
            "parameter BOOTIF=20-52-54-00-12-34-56: hardware type 20 is not Ethernet (01)"
        );
        assert!(error("BOOTIF=eth0").starts_with("parameter BOOTIF=eth0: not a MAC address"));
        for bad in [
            "52:54:00:12:34:5g",
            "52-54-00-12-34-56",
            "01-52:54:00:12:34:56",
            "01-52-54-00-12-34-56-78",
        ] {
            assert!(
                error(&format!("BOOTIF={bad}")).starts_with(&format!("parameter BOOTIF={bad}: ")),
                "{bad}"
            );
        }
        // Empty, as a template renders an unknown MAC: not given.
        assert_eq!(config("BOOTIF=").unwrap().boot_mac, None);
        assert_eq!(
            config("initrd=x -- console=ttyS0 BOOTIF=01-52-54-00-12-34-56")
                .unwrap()
                .boot_mac,
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            "pxelinux IPAPPEND 2 puts BOOTIF after --"
        );
    }

    #[test]
    fn link_timeout_is_a_bounded_duration() {
        assert_eq!(parse_link_timeout("2").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_link_timeout("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(
            format!("{:#}", parse_link_timeout("10m").unwrap_err()),
            "600 s is longer than the 300 s a port can take to get link"
        );
        assert!(
            format!("{:#}", parse_link_timeout("soon").unwrap_err())
                .starts_with("\"soon\" is not a duration")
        );
    }

    #[test]
    fn a_deploy_spec_sets_the_boot_network() {
        let object = |json: &str| match serde_json::from_str(json).unwrap() {
            serde_json::Value::Object(object) => object,
            _ => unreachable!(),
        };
        let cmdline = KernelCmdline::parse("BOOTIF=01-52-54-00-12-34-56 provisioner.ip=10.9.9.9/8");
        let config = NetConfig::from_json(&object(
            r#"{"ip": "10.0.0.5/24", "gw": "10.0.0.1", "dns": ["10.0.0.2", "10.0.0.3"], "vlan": 100, "mtu": 9000}"#,
        ))
        .unwrap()
        .over(NetConfig::from_cmdline(&cmdline).unwrap());
        assert_eq!(
            config.boot_mac,
            Some(MAC),
            "BOOTIF stays the command line's"
        );
        let ipv4 = config.static_ipv4.unwrap();
        assert_eq!(ipv4.address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(ipv4.prefix_len, 24);
        assert_eq!(
            ipv4.dns,
            [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)]
        );
        assert_eq!((ipv4.vlan, ipv4.mtu), (Some(100), Some(9000)));
        let error = |json: &str| format!("{:#}", NetConfig::from_json(&object(json)).unwrap_err());
        assert_eq!(
            error(r#"{"ip": "10.0.0.5"}"#),
            "field \"boot-network\".ip of the deploy spec: no prefix length: write it as <address>/<prefix>, e.g. 10.0.0.5/24"
        );
        assert!(
            error(r#"{"gw": "10.0.0.1"}"#).starts_with(
                "field \"boot-network\".gw of the deploy spec is set but no address is"
            )
        );
        assert!(error(r#"{"address": "x"}"#).contains("unknown key \"address\""));
    }

    #[test]
    fn full_static_setup() {
        let config = config(
            "BOOTIF=01-52-54-00-12-34-56 provisioner.ip=10.0.0.5/24 provisioner.gw=10.0.0.1 \
             provisioner.dns=10.0.0.2,1.1.1.1 provisioner.interface=eno1 provisioner.vlan=42 \
             provisioner.mtu=9000",
        )
        .unwrap();
        assert_eq!(config.boot_mac, Some(MAC));
        assert_eq!(
            config.static_ipv4.unwrap(),
            StaticConfig {
                address: Ipv4Addr::new(10, 0, 0, 5),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dns: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(1, 1, 1, 1)],
                interface: vec![InterfaceSelector::Name("eno1".into())],
                vlan: Some(42),
                mtu: Some(9000),
            }
        );
    }

    #[test]
    fn drp_rendered_line_with_quotes_and_empty_params() {
        // As DRP renders Sledgehammer's boot entry from network-data.
        let config = config(
            r#"BOOTIF=discovery provisioner.web=http://10.10.10.10:8091 provisioner.ip=10.10.10.199/24   provisioner.gw=10.10.10.254   provisioner.interface="eth10" provisioner.dns= -- console=ttyS0"#,
        )
        .unwrap();
        let static_ipv4 = config.static_ipv4.unwrap();
        assert_eq!(static_ipv4.address, Ipv4Addr::new(10, 10, 10, 199));
        assert_eq!(static_ipv4.gateway, Some(Ipv4Addr::new(10, 10, 10, 254)));
        assert_eq!(
            static_ipv4.interface,
            [InterfaceSelector::Name("eth10".into())]
        );
        assert!(static_ipv4.dns.is_empty());
        assert_eq!(static_ipv4.vlan, None);
    }

    #[test]
    fn address_only_is_enough() {
        let static_ipv4 = config("provisioner.ip=192.168.1.9/32")
            .unwrap()
            .static_ipv4
            .unwrap();
        assert_eq!(static_ipv4.prefix_len, 32);
        assert_eq!(static_ipv4.gateway, None);
        assert!(static_ipv4.interface.is_empty());
    }

    #[test]
    fn interface_may_be_a_mac() {
        let static_ipv4 =
            config("provisioner.ip=10.0.0.5/24 provisioner.interface=52:54:00:12:34:56")
                .unwrap()
                .static_ipv4
                .unwrap();
        assert_eq!(static_ipv4.interface, [InterfaceSelector::Mac(MAC)]);
    }

    #[test]
    fn interface_may_be_a_list_in_preference_order() {
        // network-data's documented form (provision-content v4.8.0
        // content/params/network-data.yaml).
        let static_ipv4 = config(
            "provisioner.ip=10.0.0.5/24 provisioner.interface=eth0,enp0s3,52:54:00:12:34:56",
        )
        .unwrap()
        .static_ipv4
        .unwrap();
        assert_eq!(
            static_ipv4.interface,
            [
                InterfaceSelector::Name("eth0".into()),
                InterfaceSelector::Name("enp0s3".into()),
                InterfaceSelector::Mac(MAC),
            ]
        );
        let err =
            config("provisioner.ip=10.0.0.5/24 provisioner.interface=eth0,,eth1").unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "parameter provisioner.interface=eth0,,eth1: item \"\": not an interface name (like eno1) or a MAC address"
        );
    }

    #[test]
    fn bad_static_values_name_the_parameter() {
        let cases = [
            (
                "provisioner.ip=10.0.0.5",
                "parameter provisioner.ip=10.0.0.5: no prefix length: write it as <address>/<prefix>, e.g. 10.0.0.5/24",
            ),
            (
                "provisioner.ip=10.0.0.5/33",
                "parameter provisioner.ip=10.0.0.5/33: prefix length 33 is not a number from 1 to 32",
            ),
            (
                "provisioner.ip=10.0.0.5/0",
                "parameter provisioner.ip=10.0.0.5/0: prefix length 0 is not a number from 1 to 32",
            ),
            (
                "provisioner.ip=10.0.0.5/255.255.255.0",
                "parameter provisioner.ip=10.0.0.5/255.255.255.0: prefix length 255.255.255.0 is not a number from 1 to 32",
            ),
            (
                "provisioner.ip=10.0.0/24",
                "parameter provisioner.ip=10.0.0/24: address 10.0.0 is not an IPv4 address",
            ),
            (
                "provisioner.ip=0.0.0.0/24",
                "parameter provisioner.ip=0.0.0.0/24: address 0.0.0.0 is not a host address",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.gw=gateway",
                "parameter provisioner.gw=gateway: gateway gateway is not an IPv4 address",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.dns=10.0.0.2,224.0.0.1",
                "parameter provisioner.dns=10.0.0.2,224.0.0.1: DNS server 224.0.0.1 is not a host address",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.vlan=4095",
                "parameter provisioner.vlan=4095: not a VLAN ID from 1 to 4094",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.vlan=0",
                "parameter provisioner.vlan=0: not a VLAN ID from 1 to 4094",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.mtu=67",
                "parameter provisioner.mtu=67: not an MTU from 68 to 9216",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.mtu=9217",
                "parameter provisioner.mtu=9217: not an MTU from 68 to 9216",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.interface=a-name-far-too-long",
                "parameter provisioner.interface=a-name-far-too-long: not an interface name (like eno1) or a MAC address",
            ),
            (
                "provisioner.ip=10.0.0.5/24 provisioner.interface=eth0:1",
                "parameter provisioner.interface=eth0:1: not an interface name (like eno1) or a MAC address",
            ),
        ];
        for (cmdline, expected) in cases {
            assert_eq!(error(cmdline), expected, "{cmdline}");
        }
    }

    #[test]
    fn static_settings_without_an_address_are_an_error() {
        assert_eq!(
            error("provisioner.vlan=42"),
            "parameter provisioner.vlan=42 is set but no address is: a static setup needs provisioner.ip=<address>/<prefix> (\"ip\" in a deploy spec's boot-network)"
        );
        assert!(
            error("provisioner.gw=10.0.0.1")
                .starts_with("parameter provisioner.gw=10.0.0.1 is set")
        );
        // Rendered but empty: fine, DHCP.
        assert_eq!(
            config("provisioner.ip= provisioner.gw=").unwrap(),
            NetConfig::default()
        );
    }

    #[test]
    fn later_value_wins() {
        let static_ipv4 = config("provisioner.ip=10.0.0.5/24 provisioner.ip=10.0.0.6/16")
            .unwrap()
            .static_ipv4
            .unwrap();
        assert_eq!(
            (static_ipv4.address, static_ipv4.prefix_len),
            (Ipv4Addr::new(10, 0, 0, 6), 16)
        );
    }
}
