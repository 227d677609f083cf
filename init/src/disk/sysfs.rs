//! Facts about one whole disk, read from sysfs alone: PID 1 has no udev, so
//! the `/dev/disk/by-id` and `/dev/disk/by-path` names are computed here the
//! way systemd's `60-persistent-storage.rules`, `ata_id`, `scsi_id`, `usb_id`
//! and `path_id` compute them.
//!
//! Where this simplifies:
//! - SAS, Fibre Channel, iSCSI and Hyper-V disks get no by-path name (udev
//!   reads transport classes this code does not model); their by-id names are
//!   computed.
//! - The `usbv<N>` by-path variant and MMC by-path names are not produced.
//! - Non-removable USB-SATA enclosures get only the `usb-…` by-id name; udev
//!   also asks the drive itself (ATA pass-through) for an `ata-…` name.
//! - ATA model and serial come from the SAT page 0x83 designator the kernel
//!   exposes (`device/vpd_pg83`); without it, from the 16-character SCSI model
//!   and page 0x80, which a long model name does not fit.
//! - Whitespace inside a virtio serial becomes `_`; udev would make one link
//!   per word.

use crate::text::hex;
use std::path::{Path, PathBuf};

use super::{DiskInfo, Transport};

/// Reads one disk; `sys_block/name` is normally a symlink into
/// `/sys/devices`, whose ancestors tell the bus and the by-path name.
pub(super) fn read_disk(sys_block: &Path, name: &str) -> DiskInfo {
    let dir = sys_block.join(name);
    let canonical = std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let chain = device_chain(&canonical);
    let transport = transport_of(name, &canonical, &chain);
    let ids = match transport {
        Transport::Virtio => virtio_ids(&dir),
        Transport::Nvme => nvme_ids(&dir),
        Transport::Sata => ata_ids(&dir),
        Transport::Usb => usb_ids(&dir, &chain),
        Transport::Scsi => scsi_ids(&dir),
        Transport::Mmc => mmc_ids(&dir),
        Transport::Virtual | Transport::Unknown => generic_ids(&dir),
    };
    let mut by_path = path_id(&dir, chain).unwrap_or_default();
    if transport == Transport::Virtio
        && let Some(pci) = by_path.first().filter(|p| p.starts_with("pci-")).cloned()
    {
        // udev keeps this legacy alias for virtio-blk.
        by_path.push(format!("virtio-{pci}"));
    }
    // `size` is always in 512-byte sectors, whatever the logical block size.
    let sectors = read_number(&dir.join("size")).unwrap_or(0);
    DiskInfo {
        name: name.to_owned(),
        size_bytes: sectors.saturating_mul(512),
        model: ids.model,
        serial: ids.serial,
        removable: read_number(&dir.join("removable")) == Some(1),
        read_only: read_number(&dir.join("ro")) == Some(1),
        logical_block_size: read_number(&dir.join("queue/logical_block_size"))
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(512),
        vendor: ids.vendor,
        wwn: ids.wwn,
        rotational: read_number(&dir.join("queue/rotational")) == Some(1),
        transport,
        by_id: ids.by_id,
        by_path,
    }
}

pub(super) fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

pub(super) fn read_number(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// A device directory on the way from the disk up to the sysfs root.
#[derive(Debug)]
struct Node {
    path: PathBuf,
    name: String,
    subsystem: Option<String>,
    devtype: Option<String>,
}

/// The disk's own directory and every ancestor that is a device (has a
/// `uevent` file), nearest first. Directories without one, like the `block`
/// and `nvme` glue directories, are not devices: udev skips them too.
fn device_chain(start: &Path) -> Vec<Node> {
    let mut chain = Vec::new();
    for dir in start.ancestors().take(64) {
        let Ok(uevent) = std::fs::read_to_string(dir.join("uevent")) else {
            continue;
        };
        let Some(name) = dir.file_name() else {
            break;
        };
        chain.push(Node {
            path: dir.to_path_buf(),
            name: name.to_string_lossy().into_owned(),
            subsystem: std::fs::read_link(dir.join("subsystem"))
                .ok()
                .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned())),
            devtype: uevent
                .lines()
                .find_map(|l| l.strip_prefix("DEVTYPE="))
                .map(str::to_owned),
        });
    }
    chain
}

fn has_subsystem(chain: &[Node], subsystem: &str) -> bool {
    chain
        .iter()
        .any(|n| n.subsystem.as_deref() == Some(subsystem))
}

fn transport_of(name: &str, canonical: &Path, chain: &[Node]) -> Transport {
    if has_subsystem(chain, "usb") {
        Transport::Usb
    } else if has_subsystem(chain, "nvme") || has_subsystem(chain, "nvme-subsystem") {
        Transport::Nvme
    } else if has_subsystem(chain, "scsi") {
        let ata = chain.iter().any(|n| is_ata_port_name(&n.name));
        if ata {
            Transport::Sata
        } else {
            Transport::Scsi
        }
    } else if has_subsystem(chain, "virtio") {
        Transport::Virtio
    } else if has_subsystem(chain, "mmc") || name.starts_with("mmcblk") {
        Transport::Mmc
    } else if canonical.to_string_lossy().contains("/devices/virtual/") {
        Transport::Virtual
    } else {
        Transport::Unknown
    }
}

fn is_ata_port_name(name: &str) -> bool {
    name.strip_prefix("ata")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// What a transport-specific reader found besides the common attributes.
#[derive(Debug, Default)]
struct Ids {
    model: Option<String>,
    vendor: Option<String>,
    serial: Option<String>,
    wwn: Option<String>,
    by_id: Vec<String>,
}

fn generic_ids(dir: &Path) -> Ids {
    Ids {
        model: read_trimmed(&dir.join("device/model")),
        serial: read_trimmed(&dir.join("device/serial"))
            .or_else(|| read_trimmed(&dir.join("serial"))),
        ..Ids::default()
    }
}

fn virtio_ids(dir: &Path) -> Ids {
    // virtio-blk's `device/vendor` is the PCI vendor id (0x1af4), not a name.
    let serial = read_trimmed(&dir.join("serial"));
    Ids {
        by_id: serial
            .iter()
            .map(|s| format!("virtio-{}", escape_symlink(s)))
            .collect(),
        serial,
        ..Ids::default()
    }
}

fn nvme_ids(dir: &Path) -> Ids {
    // `device` is the controller (or, with native multipath, the subsystem);
    // both carry the model and serial. The namespace has wwid and nsid.
    let model = read_trimmed(&dir.join("device/model"));
    let serial = read_trimmed(&dir.join("device/serial"));
    let wwid = read_trimmed(&dir.join("wwid"));
    let nsid = read_trimmed(&dir.join("nsid"));
    let mut by_id = Vec::new();
    if let Some(wwid) = &wwid {
        by_id.push(format!("nvme-{}", escape_symlink(wwid)));
    }
    if let (Some(model), Some(serial)) = (&model, &serial) {
        let id_serial = format!("{}_{}", escape_symlink(model), escape_symlink(serial));
        if let Some(nsid) = &nsid {
            by_id.push(format!("nvme-{id_serial}_{}", escape_symlink(nsid)));
        }
        by_id.push(format!("nvme-{id_serial}"));
    }
    Ids {
        model,
        vendor: None,
        serial,
        wwn: wwid,
        by_id,
    }
}

fn mmc_ids(dir: &Path) -> Ids {
    let name = read_trimmed(&dir.join("device/name"));
    let serial = read_trimmed(&dir.join("device/serial"));
    let by_id = match (&name, &serial) {
        (Some(name), Some(serial)) => vec![format!(
            "mmc-{}_{}",
            escape_symlink(name),
            escape_symlink(serial)
        )],
        _ => Vec::new(),
    };
    Ids {
        model: name,
        serial,
        by_id,
        ..Ids::default()
    }
}

/// SATA behind libata: `ata_id` names it `ata-<model>_<serial>` from the
/// drive's IDENTIFY data, which libata repeats in the SAT designator of VPD
/// page 0x83 (`ATA     ` + 40-byte model + 20-byte serial).
fn ata_ids(dir: &Path) -> Ids {
    let device = dir.join("device");
    let designators = std::fs::read(device.join("vpd_pg83"))
        .map(|page| parse_vpd83(&page))
        .unwrap_or_default();
    let sat = designators.iter().find(|d| {
        d.kind == DesignatorKind::T10Vendor && d.id.len() >= 48 && d.id.starts_with(b"ATA ")
    });
    let (model, serial) = match sat {
        Some(d) => (trimmed_text(&d.id[8..48]), trimmed_text(&d.id[48..])),
        None => (read_trimmed(&device.join("model")), vpd80_serial(&device)),
    };
    let wwn = designators
        .iter()
        .find(|d| d.kind == DesignatorKind::Naa && d.id.len() >= 8)
        .map(|d| format!("0x{}", hex(&d.id[..8])))
        .or_else(|| wwn_from_wwid(&device));
    let mut by_id = Vec::new();
    if let Some(model) = &model {
        let mut id_serial = collapse_whitespace(model);
        if let Some(serial) = &serial {
            id_serial = format!("{id_serial}_{}", collapse_whitespace(serial));
        }
        by_id.push(format!("ata-{id_serial}"));
    }
    if let Some(wwn) = &wwn {
        by_id.push(format!("wwn-{wwn}"));
    }
    Ids {
        model,
        vendor: read_trimmed(&device.join("vendor")),
        serial,
        wwn,
        by_id,
    }
}

/// USB mass storage: `usb_id` builds `usb-<vendor>_<model>_<serial>-<target>:<lun>`
/// from the SCSI inquiry strings and the USB device's iSerial.
fn usb_ids(dir: &Path, chain: &[Node]) -> Ids {
    let device = dir.join("device");
    let vendor = read_trimmed(&device.join("vendor"));
    let model = read_trimmed(&device.join("model"));
    // The USB device (`2-1`) sits above the interface (`2-1:1.0`); the first
    // usb_device ancestor is the one with the string descriptors.
    let serial = chain
        .iter()
        .filter(|n| n.subsystem.as_deref() == Some("usb"))
        .find(|n| n.devtype.as_deref() == Some("usb_device"))
        .and_then(|n| read_trimmed(&n.path.join("serial")));
    let instance = std::fs::canonicalize(&device)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .and_then(|n| parse_hctl(&n))
        .map(|[_, _, target, lun]| format!("{target}:{lun}"));
    let mut id = format!(
        "{}_{}",
        collapse_whitespace(vendor.as_deref().unwrap_or("")),
        collapse_whitespace(model.as_deref().unwrap_or(""))
    );
    if let Some(serial) = &serial {
        id = format!("{id}_{}", collapse_whitespace(serial));
    }
    if let Some(instance) = instance {
        id = format!("{id}-{instance}");
    }
    Ids {
        model,
        vendor,
        serial,
        wwn: None,
        by_id: vec![format!("usb-{id}")],
    }
}

/// Any other SCSI disk (virtio-scsi, SAS, a RAID controller's volumes):
/// `scsi_id` names it from the best designator of VPD page 0x83, falling
/// back to the unit serial number of page 0x80.
fn scsi_ids(dir: &Path) -> Ids {
    let device = dir.join("device");
    let vendor_raw = std::fs::read_to_string(device.join("vendor")).unwrap_or_default();
    let model_raw = std::fs::read_to_string(device.join("model")).unwrap_or_default();
    // scsi_id prepends the INQUIRY fields at their fixed widths, padding
    // included; the whitespace collapse below turns that into one `_`.
    let vendor_model = format!(
        "{:<8}{:<16}",
        vendor_raw.trim_end_matches('\n'),
        model_raw.trim_end_matches('\n')
    );
    let designators = std::fs::read(device.join("vpd_pg83"))
        .map(|page| parse_vpd83(&page))
        .unwrap_or_default();
    let serial = vpd80_serial(&device);
    let mut by_id = Vec::new();
    let mut wwn = None;
    if let Some(best) = best_scsi_designator(&designators) {
        let value = if best.ascii {
            String::from_utf8_lossy(&best.id).into_owned()
        } else {
            hex(&best.id)
        };
        let prefix = best.kind.scsi_id_prefix();
        let id_serial = if best.kind == DesignatorKind::VendorSpecific {
            format!("{prefix}{vendor_model}{value}")
        } else {
            format!("{prefix}{value}")
        };
        by_id.push(format!("scsi-{}", collapse_whitespace(&id_serial)));
        if best.kind == DesignatorKind::Naa && !best.ascii && best.id.len() >= 8 {
            wwn = Some(format!("0x{}", hex(&best.id[..8])));
            by_id.push(format!("wwn-0x{}", hex(&best.id)));
        }
    } else if let Some(serial) = &serial {
        by_id.push(format!(
            "scsi-{}",
            collapse_whitespace(&format!("S{vendor_model}{serial}"))
        ));
    }
    Ids {
        model: trimmed_text(model_raw.as_bytes()),
        vendor: trimmed_text(vendor_raw.as_bytes()),
        serial,
        wwn: wwn.or_else(|| wwn_from_wwid(&device)),
        by_id,
    }
}

/// The kernel's own pick of a designator, `naa.5000c500…`, as udev spells a
/// WWN.
fn wwn_from_wwid(device: &Path) -> Option<String> {
    let wwid = read_trimmed(&device.join("wwid"))?;
    let naa = wwid.strip_prefix("naa.")?;
    Some(format!(
        "0x{}",
        naa.get(..16).unwrap_or(naa).to_ascii_lowercase()
    ))
}

fn vpd80_serial(device: &Path) -> Option<String> {
    let page = std::fs::read(device.join("vpd_pg80")).ok()?;
    let len = usize::from(u16::from_be_bytes([*page.get(2)?, *page.get(3)?]));
    trimmed_text(page.get(4..)?.get(..len).unwrap_or(&page[4..]))
}

fn trimmed_text(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!text.is_empty()).then(|| text.to_owned())
}

/// SPC designator types, numbered as in page 0x83.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DesignatorKind {
    VendorSpecific,
    T10Vendor,
    Eui64,
    Naa,
    Other(u8),
}

impl DesignatorKind {
    fn from_code(code: u8) -> Self {
        match code {
            0 => Self::VendorSpecific,
            1 => Self::T10Vendor,
            2 => Self::Eui64,
            3 => Self::Naa,
            other => Self::Other(other),
        }
    }

    /// scsi_id starts its serial with the designator type as a hex digit.
    fn scsi_id_prefix(self) -> char {
        let code = match self {
            Self::VendorSpecific => 0,
            Self::T10Vendor => 1,
            Self::Eui64 => 2,
            Self::Naa => 3,
            Self::Other(code) => u32::from(code),
        };
        char::from_digit(code, 16).unwrap_or('?')
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Designator {
    kind: DesignatorKind,
    ascii: bool,
    id: Vec<u8>,
}

/// Designators of a Device Identification page (SPC-4 7.8.6) that name the
/// logical unit itself; port and target designators are skipped, as scsi_id
/// skips them. A truncated page yields what was complete.
fn parse_vpd83(page: &[u8]) -> Vec<Designator> {
    let mut found = Vec::new();
    let Some(len) = page
        .get(2..4)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return found;
    };
    let end = page.len().min(4 + len);
    let mut at = 4;
    while at + 4 <= end {
        let (code_set, flags, id_len) = (page[at] & 0x0f, page[at + 1], usize::from(page[at + 3]));
        let Some(id) = page
            .get(at + 4..at + 4 + id_len)
            .filter(|_| at + 4 + id_len <= end)
        else {
            break;
        };
        let logical_unit = flags & 0x30 == 0;
        if logical_unit && matches!(code_set, 1 | 2) {
            found.push(Designator {
                kind: DesignatorKind::from_code(flags & 0x0f),
                ascii: code_set == 2,
                id: id.to_vec(),
            });
        }
        at += 4 + id_len;
    }
    found
}

/// scsi_id's preference: NAA (IEEE registered extended, then registered,
/// then any), EUI-64, T10 vendor id, vendor specific; binary before ASCII
/// within each.
fn best_scsi_designator(designators: &[Designator]) -> Option<&Designator> {
    let naa_type = |d: &Designator| d.id.first().map(|b| b >> 4);
    let order: [(DesignatorKind, Option<u8>); 6] = [
        (DesignatorKind::Naa, Some(6)),
        (DesignatorKind::Naa, Some(5)),
        (DesignatorKind::Naa, None),
        (DesignatorKind::Eui64, None),
        (DesignatorKind::T10Vendor, None),
        (DesignatorKind::VendorSpecific, None),
    ];
    order.iter().find_map(|&(kind, naa)| {
        [false, true].iter().find_map(|&ascii| {
            designators.iter().find(|d| {
                d.kind == kind
                    && d.ascii == ascii
                    && !d.id.is_empty()
                    && (naa.is_none() || naa_type(d) == naa)
            })
        })
    })
}

/// udev's `udev_replace_whitespace` followed by `udev_replace_chars`: trim,
/// each run of whitespace becomes one `_`, unsafe characters become `_`.
fn collapse_whitespace(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    escape_symlink(&words.join("_"))
}

/// What a `$attr{}` value turns into inside a symlink name under
/// `string_escape=replace`: trailing whitespace dropped, every character
/// outside udev's allow list (`0-9A-Za-z#+-.:=@_`, `/`, multi-byte UTF-8)
/// replaced with `_`.
fn escape_symlink(text: &str) -> String {
    text.trim_end()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "#+-.:=@_/".contains(c) || !c.is_ascii() {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `H:C:T:L` of a SCSI device directory.
fn parse_hctl(name: &str) -> Option<[u32; 4]> {
    let mut parts = name.split(':').map(|p| p.parse::<u32>().ok());
    let hctl = [
        parts.next()??,
        parts.next()??,
        parts.next()??,
        parts.next()??,
    ];
    parts.next().is_none().then_some(hctl)
}

/// udev's `path_id` builtin: walks from the disk up to the root, prepending
/// one element per bus (`pci-0000:00:1f.2`, `ata-1.0`, `nvme-1`,
/// `usb-0:1:1.0`, `scsi-0:0:0:0`). Returns the by-path names (the main one
/// first, then the old `ata-<port>` form for ATA), or `None` where udev
/// would make none.
fn path_id(disk_dir: &Path, mut chain: Vec<Node>) -> Option<Vec<String>> {
    let mut path: Vec<String> = Vec::new();
    let mut compat: Option<Vec<String>> = None;
    let mut supported_parent = false;
    let mut supported_transport = false;
    let mut i = 0;
    while i < chain.len() {
        match chain[i].subsystem.as_deref() {
            Some("scsi") => {
                supported_transport = true;
                if chain[i].devtype.as_deref() == Some("scsi_device") {
                    i = scsi_path(&chain, i, &mut path, &mut compat)?;
                }
            }
            Some("usb") => {
                supported_transport = true;
                let dev_type = chain[i].devtype.as_deref();
                if matches!(dev_type, Some("usb_interface" | "usb_device"))
                    && let Some((_, port)) = chain[i].name.split_once('-')
                {
                    prepend(&mut path, &mut None, format!("usb-0:{port}"));
                    i = skip_subsystem(&chain, i, "usb");
                }
            }
            Some("pci") => {
                prepend(&mut path, &mut compat, format!("pci-{}", chain[i].name));
                supported_parent = true;
                i = skip_subsystem(&chain, i, "pci");
            }
            Some("platform") => {
                prepend(
                    &mut path,
                    &mut compat,
                    format!("platform-{}", chain[i].name),
                );
                supported_parent = true;
                supported_transport = true;
                i = skip_subsystem(&chain, i, "platform");
            }
            Some("virtio") => {
                supported_transport = true;
                i = skip_subsystem(&chain, i, "virtio");
            }
            Some(sub @ ("nvme" | "nvme-subsystem")) => {
                if let Some(nsid) = read_trimmed(&disk_dir.join("nsid")) {
                    prepend(&mut path, &mut compat, format!("nvme-{nsid}"));
                    supported_parent = true;
                    supported_transport = true;
                    if sub == "nvme-subsystem" {
                        // Native multipath puts the namespace under a virtual
                        // subsystem device; the path is that of a controller.
                        chain = device_chain(&nvme_controller(&chain[i].path, disk_dir)?);
                        i = 0;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    if path.is_empty() || !supported_parent || !supported_transport {
        return None;
    }
    let mut names = vec![path.join("-")];
    names.extend(compat.map(|c| c.join("-")));
    Some(names)
}

fn prepend(path: &mut Vec<String>, compat: &mut Option<Vec<String>>, element: String) {
    if let Some(compat) = compat {
        compat.insert(0, element.clone());
    }
    path.insert(0, element);
}

/// The last ancestor, from `i` up, still in `subsystem`.
fn skip_subsystem(chain: &[Node], mut i: usize, subsystem: &str) -> usize {
    while chain
        .get(i + 1)
        .is_some_and(|n| n.subsystem.as_deref() == Some(subsystem))
    {
        i += 1;
    }
    i
}

/// Returns the chain index to continue from; `None` where udev gives up.
fn scsi_path(
    chain: &[Node],
    i: usize,
    path: &mut Vec<String>,
    compat: &mut Option<Vec<String>>,
) -> Option<usize> {
    let syspath = chain[i].path.to_string_lossy();
    if ["/rport-", "/end_device-", "/session", "/vmbus_", "/VMBUS"]
        .iter()
        .any(|t| syspath.contains(t))
    {
        return None;
    }
    let [host, bus, target, lun] = parse_hctl(&chain[i].name)?;
    let host_index = (i + 1..chain.len()).find(|&j| {
        chain[j].subsystem.as_deref() == Some("scsi")
            && chain[j].devtype.as_deref() == Some("scsi_host")
    })?;
    if syspath.contains("/ata") {
        let port = chain.get(host_index + 1)?;
        let port_no = read_trimmed(&port.path.join("ata_port").join(&port.name).join("port_no"))?;
        let element = if bus == 0 {
            // Master and slave differ by target id.
            format!("ata-{port_no}.{target}")
        } else {
            // Behind a port multiplier.
            format!("ata-{port_no}.{bus}.0")
        };
        prepend(path, &mut None, element);
        *compat = Some(vec![format!("ata-{port_no}")]);
        return Some(i);
    }
    // Host numbers are global; udev rebases them on the lowest host number
    // under the same parent, so the first controller's disks are `scsi-0:…`.
    let parent_dir = chain[host_index].path.parent()?;
    let base = std::fs::read_dir(parent_dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("host")?
                .parse::<u32>()
                .ok()
        })
        .min()?;
    prepend(
        path,
        compat,
        format!("scsi-{}:{bus}:{target}:{lun}", host.checked_sub(base)?),
    );
    Some(host_index)
}

/// The controller behind a multipath namespace: the one whose number the
/// disk name carries (`nvme0n1` → `nvme0`), as udev picks it, else the
/// first the subsystem lists.
fn nvme_controller(subsystem_dir: &Path, disk_dir: &Path) -> Option<PathBuf> {
    let disk_name = disk_dir.file_name()?.to_str()?;
    let digits = disk_name
        .strip_prefix("nvme")?
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let wanted = &disk_name[..4 + digits];
    let is_controller = |name: &str| {
        name.strip_prefix("nvme")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut controllers: Vec<String> = std::fs::read_dir(subsystem_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_controller(n))
        .collect();
    controllers.sort();
    let pick = controllers
        .iter()
        .find(|n| n.as_str() == wanted)
        .or_else(|| controllers.first())?;
    std::fs::canonicalize(subsystem_dir.join(pick)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpd83_designators_in_scsi_id_order() {
        // Vendor specific ASCII, T10, NAA 5 binary, and a port designator
        // (association 1) that must be ignored.
        let mut page = vec![0, 0x83, 0, 0];
        page.extend([2, 0, 0, 3]);
        page.extend(b"abc");
        page.extend([2, 1, 0, 4]);
        page.extend(b"ATA ");
        page.extend([1, 3, 0, 8, 0x50, 0, 0xc5, 0, 1, 2, 3, 4]);
        page.extend([1, 0x13, 0, 8, 0x60, 0, 0, 0, 0, 0, 0, 9]);
        let len = u16::try_from(page.len() - 4).unwrap().to_be_bytes();
        page[2..4].copy_from_slice(&len);
        let found = parse_vpd83(&page);
        assert_eq!(found.len(), 3);
        let best = best_scsi_designator(&found).unwrap();
        assert_eq!(best.kind, DesignatorKind::Naa);
        assert_eq!(hex(&best.id), "5000c50001020304");
    }

    #[test]
    fn truncated_vpd83_keeps_complete_designators() {
        let mut page = vec![0, 0x83, 0, 40, 2, 0, 0, 3];
        page.extend(b"abc");
        page.extend([2, 0, 0, 30, b'x']);
        let found = parse_vpd83(&page);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].id, b"abc");
        assert!(parse_vpd83(&[0, 0x83]).is_empty());
        assert!(parse_vpd83(&[]).is_empty());
    }

    #[test]
    fn escaping_follows_udev() {
        assert_eq!(collapse_whitespace("  QEMU    HARDDISK  "), "QEMU_HARDDISK");
        assert_eq!(escape_symlink("QEMU NVMe Ctrl   "), "QEMU_NVMe_Ctrl");
        assert_eq!(escape_symlink("a*b?c"), "a_b_c");
        assert_eq!(parse_hctl("2:0:1:3"), Some([2, 0, 1, 3]));
        assert_eq!(parse_hctl("target2:0:1"), None);
        assert_eq!(parse_hctl("1:2:3:4:5"), None);
    }
}
