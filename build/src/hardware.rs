//! Which PCI devices an initramfs can drive, from its modules' aliases.
//!
//! Every PCI driver declares the devices it binds as `modules.alias` lines
//! such as `alias pci:v00008086d00001593sv*sd*bc*sc*i* ice`. [`pci_matches`]
//! turns the lines of the carried modules into one [`PciMatch`] per
//! vendor:device and driver, collapsing the subsystem-specific variants of
//! an ID the driver also takes whole. [`check_lspci`] holds a machine's
//! `lspci -n` (or `-nn`) output against that list, so a user can tell before
//! booting whether imprint will see its NICs and disk controllers.

use std::collections::BTreeMap;
use std::fmt;

/// One field of a PCI alias: a fixed value or `*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Any,
    Exact(u32),
    /// Anything else (a partial pattern such as `0000100?`), kept as written.
    Pattern(String),
}

impl Field {
    fn parse(text: &str) -> Field {
        if text == "*" {
            return Field::Any;
        }
        // kmod ends every pattern with `*`, so the last field reads `01*`.
        let digits = text.strip_suffix('*').unwrap_or(text);
        match u32::from_str_radix(digits, 16) {
            Ok(value) if digits.bytes().all(|b| b.is_ascii_hexdigit()) => Field::Exact(value),
            _ => Field::Pattern(text.to_owned()),
        }
    }

    /// Whether a known `value` may match (a pattern is given the benefit of the doubt).
    fn admits(&self, value: u32) -> bool {
        match self {
            Field::Any | Field::Pattern(_) => true,
            Field::Exact(exact) => *exact == value,
        }
    }

    fn show(&self, width: usize) -> String {
        match self {
            Field::Any => "*".to_owned(),
            Field::Exact(value) => format!("{value:0width$x}"),
            Field::Pattern(pattern) => pattern.to_ascii_lowercase(),
        }
    }
}

/// The parsed `pci:v…d…sv…sd…bc…sc…i…` pattern of one alias line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAlias {
    pub vendor: Field,
    pub device: Field,
    pub subvendor: Field,
    pub subdevice: Field,
    pub class: Field,
    pub subclass: Field,
    pub interface: Field,
}

impl PciAlias {
    /// Parses the pattern after `pci:`; `None` for anything that is not one.
    pub fn parse(pattern: &str) -> Option<PciAlias> {
        let rest = pattern.strip_prefix("pci:")?;
        // The fields come in this order; each value runs to the next key.
        let keys = ["v", "d", "sv", "sd", "bc", "sc", "i"];
        let mut values = Vec::with_capacity(keys.len());
        let mut rest = rest;
        for (position, key) in keys.iter().enumerate() {
            rest = rest.strip_prefix(key)?;
            let end = match keys.get(position + 1) {
                Some(next) => find_key(rest, next)?,
                None => rest.len(),
            };
            values.push(Field::parse(&rest[..end]));
            rest = &rest[end..];
        }
        let mut values = values.into_iter();
        let mut next = || values.next().unwrap_or(Field::Any);
        Some(PciAlias {
            vendor: next(),
            device: next(),
            subvendor: next(),
            subdevice: next(),
            class: next(),
            subclass: next(),
            interface: next(),
        })
    }

    fn any_subsystem(&self) -> bool {
        self.subvendor == Field::Any && self.subdevice == Field::Any
    }

    fn any_class(&self) -> bool {
        self.class == Field::Any && self.subclass == Field::Any && self.interface == Field::Any
    }

    fn qualifier(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.any_subsystem() {
            parts.push(format!(
                "subsystem {}:{}",
                self.subvendor.show(4),
                self.subdevice.show(4)
            ));
        }
        if !self.any_class() {
            let mut class = format!("class {}{}", self.class.show(2), self.subclass.show(2));
            if self.interface != Field::Any {
                class.push_str(&format!(" prog-if {}", self.interface.show(2)));
            }
            parts.push(class);
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }
}

/// Where `key` starts in `text`. Keys are lower-case letters and
/// `modules.alias` writes values in upper-case hex (or `*`, `?`, `[…]`), so
/// the first occurrence of the key is the field boundary.
fn find_key(text: &str, key: &str) -> Option<usize> {
    text.find(key)
}

/// One line of the hardware list: a vendor:device the initramfs drives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciMatch {
    pub vendor: Field,
    pub device: Field,
    pub module: String,
    /// Empty when the driver takes the ID whatever its subsystem and class;
    /// otherwise the aliases that restrict it (by subsystem or class).
    pub only: Vec<PciAlias>,
}

impl fmt::Display for PciMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{} {}",
            self.vendor.show(4),
            self.device.show(4),
            self.module
        )?;
        let only: Vec<String> = self.only.iter().filter_map(PciAlias::qualifier).collect();
        if !only.is_empty() {
            write!(f, " (only {})", only.join(", "))?;
        }
        Ok(())
    }
}

/// The PCI IDs in `modules.alias` text, one [`PciMatch`] per vendor:device
/// and module, sorted by vendor, device, module. Aliases of other buses
/// (`virtio:`, `cpu:`, `fs-…`) are skipped.
pub fn pci_matches(modules_alias: &str) -> Vec<PciMatch> {
    let mut grouped: BTreeMap<(Field, Field, String), Vec<PciAlias>> = BTreeMap::new();
    for line in modules_alias.lines() {
        let mut words = line.split_whitespace();
        let (Some("alias"), Some(pattern), Some(module)) =
            (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let Some(alias) = PciAlias::parse(pattern) else {
            continue;
        };
        grouped
            .entry((
                alias.vendor.clone(),
                alias.device.clone(),
                module.replace('-', "_"),
            ))
            .or_default()
            .push(alias);
    }
    grouped
        .into_iter()
        .map(|((vendor, device, module), aliases)| {
            let whole = aliases.iter().any(|a| a.any_subsystem() && a.any_class());
            let mut only = if whole { Vec::new() } else { aliases };
            only.sort();
            only.dedup();
            PciMatch {
                vendor,
                device,
                module,
                only,
            }
        })
        .collect()
}

/// One device line of `lspci -n` / `lspci -nn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LspciDevice {
    pub slot: String,
    /// Base class and subclass, `0x0200` for Ethernet.
    pub class: u16,
    pub vendor: u16,
    pub device: u16,
}

fn hex_pair(text: &str) -> Option<(u16, u16)> {
    let (left, right) = text.split_once(':')?;
    let parse = |t: &str| {
        (t.len() == 4 && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| u16::from_str_radix(t, 16).ok())
            .flatten()
    };
    Some((parse(left)?, parse(right)?))
}

/// Parses `03:00.0 0200: 8086:1593 (rev 02)` (`lspci -n`) or
/// `03:00.0 Ethernet controller [0200]: Intel … [8086:1593] (rev 02)`
/// (`lspci -nn`); other lines give `None`.
pub fn parse_lspci_line(line: &str) -> Option<LspciDevice> {
    let (slot, rest) = line.trim().split_once(' ')?;
    let class_text = match rest.find("]: ") {
        // -nn: the class is the bracket just before "]: ".
        Some(end) => &rest[rest[..end].rfind('[')? + 1..end],
        None => rest.split_once(": ")?.0.trim(),
    };
    let class = (class_text.len() == 4)
        .then(|| u16::from_str_radix(class_text, 16).ok())
        .flatten()?;
    let ids = rest
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']')
        .rev()
        .find_map(hex_pair)?;
    Some(LspciDevice {
        slot: slot.to_owned(),
        class,
        vendor: ids.0,
        device: ids.1,
    })
}

/// What the initramfs would do with one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCheck {
    pub device: LspciDevice,
    /// Drivers that take the device whatever its subsystem.
    pub drivers: Vec<String>,
    /// Drivers that take it only for some subsystems (which `lspci -n`
    /// does not show; `lspci -nv` does).
    pub maybe: Vec<PciMatch>,
}

/// Holds the network (class 02) and mass-storage (class 01) devices in
/// `lspci` output against `matches`. Other classes are left out: imprint
/// needs no driver for bridges, USB or graphics.
pub fn check_lspci(lspci: &str, matches: &[PciMatch]) -> Vec<DeviceCheck> {
    let mut checks = Vec::new();
    for device in lspci.lines().filter_map(parse_lspci_line) {
        let base = device.class >> 8;
        if base != 0x01 && base != 0x02 {
            continue;
        }
        let mut drivers = Vec::new();
        let mut maybe = Vec::new();
        for candidate in matches {
            if !candidate.vendor.admits(u32::from(device.vendor))
                || !candidate.device.admits(u32::from(device.device))
            {
                continue;
            }
            let class_fits = |alias: &&PciAlias| class_admits(alias, device.class);
            let certain = candidate.only.is_empty()
                || candidate
                    .only
                    .iter()
                    .filter(class_fits)
                    .any(PciAlias::any_subsystem);
            if certain {
                if !drivers.contains(&candidate.module) {
                    drivers.push(candidate.module.clone());
                }
            } else if candidate.only.iter().any(|alias| class_fits(&alias)) {
                maybe.push(candidate.clone());
            }
        }
        checks.push(DeviceCheck {
            device,
            drivers,
            maybe,
        });
    }
    checks
}

/// Whether `alias` admits `class` (base class and subclass, as `lspci -n`
/// prints it; the programming interface is not shown and not checked).
fn class_admits(alias: &PciAlias, class: u16) -> bool {
    let [base, sub] = class.to_be_bytes();
    alias.class.admits(u32::from(base)) && alias.subclass.admits(u32::from(sub))
}

impl fmt::Display for DeviceCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let device = &self.device;
        write!(
            f,
            "{} class {:04x} [{:04x}:{:04x}] ",
            device.slot, device.class, device.vendor, device.device
        )?;
        if !self.drivers.is_empty() {
            write!(f, "ok: {}", self.drivers.join(" "))
        } else if !self.maybe.is_empty() {
            let list: Vec<String> = self.maybe.iter().map(ToString::to_string).collect();
            write!(f, "maybe: {}", list.join("; "))
        } else {
            write!(f, "NO DRIVER in this initramfs")
        }
    }
}

/// The PCI IDs the initramfs built from this kernel drives: the aliases of
/// the module closure of [`crate::drivers::BOOT_DRIVERS`] plus
/// `extra_modules`, exactly as `imprint-build initramfs` collects it.
pub fn initramfs_pci_matches(
    kernel_root: &std::path::Path,
    kernel_version: &str,
    extra_modules: &[String],
) -> anyhow::Result<Vec<PciMatch>> {
    use anyhow::Context as _;
    let modules_dir = crate::initramfs::modules_dir(kernel_root, kernel_version)?;
    let index =
        imprint::modules::ModuleIndex::load(&modules_dir)?.with_kernel_version(kernel_version);
    let mut requested = crate::drivers::boot_driver_names();
    requested.extend(extra_modules.iter().map(String::as_str));
    let closure = index
        .resolve(&requested)
        .with_context(|| format!("collecting the modules of kernel {kernel_version}"))?;
    Ok(pci_matches(
        &index.restricted_to(&closure.modules).modules_alias_text(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines from depmod's output for Debian's 6.1.0-56-amd64 (and one
    // subsystem-only variant made up to show the collapsing).
    const ALIASES: &str = "\
alias pci:v00008086d00001593sv*sd*bc*sc*i* ice
alias pci:v00008086d00001593sv00008086sd00000001bc*sc*i* ice
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias pci:v*d*sv*sd*bc01sc06i01* ahci
alias pci:v00008086d0000104Fsv*sd*bc02sc00i* i40e
alias pci:v00001737d00001032sv*sd00000024bc*sc*i* r8169
alias pci:v00001737d00001032sv*sd00000025bc*sc*i* r8169
alias virtio:d00000001v* virtio_net
alias crypto-crc32c crc32c_generic
alias pci:v000014E4d000016A1sv*sd*bc*sc*i* bnx2x
";

    #[test]
    fn lists_ids_with_collapsed_subsystems() {
        let lines: Vec<String> = pci_matches(ALIASES)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "*:* ahci (only class 0106 prog-if 01)",
                "14e4:16a1 bnx2x",
                "1737:1032 r8169 (only subsystem *:0024, subsystem *:0025)",
                "1af4:* virtio_pci",
                "8086:104f i40e (only class 0200)",
                "8086:1593 ice",
            ]
        );
    }

    #[test]
    fn parses_aliases_field_by_field() {
        let alias = PciAlias::parse("pci:v00008086d00001593sv*sd*bc02sc00i*").unwrap();
        assert_eq!(alias.vendor, Field::Exact(0x8086));
        assert_eq!(alias.device, Field::Exact(0x1593));
        assert_eq!(alias.subvendor, Field::Any);
        assert_eq!(alias.class, Field::Exact(0x02));
        assert_eq!(alias.interface, Field::Any);
        assert_eq!(
            PciAlias::parse("pci:v0000100?d*sv*sd*bc*sc*i*")
                .unwrap()
                .vendor,
            Field::Pattern("0000100?".to_owned())
        );
        assert_eq!(PciAlias::parse("usb:v13FDp3940d0*"), None);
        assert_eq!(PciAlias::parse("pci:v00008086"), None);
    }

    #[test]
    fn parses_lspci_n_and_nn() {
        assert_eq!(
            parse_lspci_line("03:00.0 0200: 8086:1593 (rev 02)"),
            Some(LspciDevice {
                slot: "03:00.0".to_owned(),
                class: 0x0200,
                vendor: 0x8086,
                device: 0x1593
            })
        );
        assert_eq!(
            parse_lspci_line(
                "0000:00:1f.2 SATA controller [0106]: Intel Corporation 82801IR/IO/IH (ICH9R/DO/DH) 6 port SATA Controller [AHCI mode] [8086:2922] (rev 02)"
            ),
            Some(LspciDevice {
                slot: "0000:00:1f.2".to_owned(),
                class: 0x0106,
                vendor: 0x8086,
                device: 0x2922
            })
        );
        assert_eq!(parse_lspci_line("\tSubsystem: Dell Device 0001"), None);
        assert_eq!(parse_lspci_line(""), None);
    }

    #[test]
    fn checks_a_machine_against_the_list() {
        let matches = pci_matches(ALIASES);
        let lspci = "\
00:00.0 0600: 8086:29c0
00:1f.2 0106: 8086:2922 (rev 02)
03:00.0 0200: 8086:1593 (rev 02)
04:00.0 0200: 8086:104f
05:00.0 0200: 1737:1032
06:00.0 0280: 10ec:8139 (rev 20)
";
        let checks: Vec<String> = check_lspci(lspci, &matches)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            checks,
            [
                "00:1f.2 class 0106 [8086:2922] ok: ahci",
                "03:00.0 class 0200 [8086:1593] ok: ice",
                "04:00.0 class 0200 [8086:104f] ok: i40e",
                "05:00.0 class 0200 [1737:1032] maybe: 1737:1032 r8169 (only subsystem *:0024, subsystem *:0025)",
                "06:00.0 class 0280 [10ec:8139] NO DRIVER in this initramfs",
            ]
        );
        // The class restriction counts: i40e's 0200-only alias does not
        // claim a storage device with the same ID.
        let other = check_lspci("07:00.0 0180: 8086:104f", &matches);
        assert!(other[0].drivers.is_empty() && other[0].maybe.is_empty());
    }
}
