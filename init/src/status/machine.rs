//! Which machine this is, for the `started` event: its network cards, what
//! the firmware says about it (DMI), and its disks. Read from sysfs, so a
//! provisioning server can match the report to its inventory.

use std::path::Path;

use serde::Serialize;

/// The machine's identity as sysfs shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MachineInfo {
    /// Network cards with a MAC address, by name; `lo` left out.
    pub nics: Vec<Nic>,
    pub dmi: Dmi,
    /// Whole disks, as [`crate::disk::list_disks`] finds them.
    pub disks: Vec<MachineDisk>,
}

/// One network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// Kernel name, e.g. `eth0`, `enp1s0`.
    pub name: String,
    /// Lowercase, colon-separated: `52:54:00:12:34:56`.
    pub mac: String,
}

/// What the firmware reports (`/sys/class/dmi/id`); absent or empty values
/// are `None`. The serial and UUID are readable by root only, so the CLI run
/// by another user reports them as `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Dmi {
    /// `product_serial`.
    pub serial: Option<String>,
    /// `product_name`.
    pub product: Option<String>,
    /// `product_uuid`.
    pub uuid: Option<String>,
    /// `sys_vendor`.
    pub vendor: Option<String>,
}

/// One whole disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineDisk {
    /// Kernel name, e.g. `vda`, `nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
}

impl MachineInfo {
    /// Reads the machine's identity from the sysfs tree at `sys_root`
    /// (normally `/sys`). Whatever cannot be read is left out, and logged
    /// at debug level: a report with less in it beats no report.
    pub fn gather(sys_root: &Path) -> MachineInfo {
        let dmi_dir = sys_root.join("class/dmi/id");
        let dmi_value = |file: &str| read_value(&dmi_dir.join(file));
        let disks = match crate::disk::list_disks(&sys_root.join("block")) {
            Ok(disks) => disks
                .into_iter()
                .map(|disk| MachineDisk {
                    name: disk.name,
                    size_bytes: disk.size_bytes,
                    model: disk.model,
                    serial: disk.serial,
                })
                .collect(),
            Err(error) => {
                log::debug!("machine identity: {error:#}");
                Vec::new()
            }
        };
        MachineInfo {
            nics: read_nics(&sys_root.join("class/net")),
            dmi: Dmi {
                serial: dmi_value("product_serial"),
                product: dmi_value("product_name"),
                uuid: dmi_value("product_uuid"),
                vendor: dmi_value("sys_vendor"),
            },
            disks,
        }
    }
}

/// The cards under `class_net` with a real MAC: not `lo`, not all zeros
/// (tunnels and other link types without one).
fn read_nics(class_net: &Path) -> Vec<Nic> {
    let entries = match std::fs::read_dir(class_net) {
        Ok(entries) => entries,
        Err(error) => {
            log::debug!("machine identity: listing {}: {error}", class_net.display());
            return Vec::new();
        }
    };
    let mut nics: Vec<Nic> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mac = read_value(&entry.path().join("address"))?.to_ascii_lowercase();
            let is_zero = mac.split(':').all(|octet| octet == "00");
            (name != "lo" && !is_zero).then_some(Nic { name, mac })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// A sysfs attribute, trimmed; `None` when unreadable or empty.
fn read_value(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, relative: &str, content: &str) {
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    #[test]
    fn gathers_nics_dmi_and_disks_from_a_fake_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let root = sys.path();
        write(root, "class/net/lo/address", "00:00:00:00:00:00\n");
        write(root, "class/net/eth1/address", "52:54:00:AB:CD:EF\n");
        write(root, "class/net/eth0/address", "52:54:00:12:34:56\n");
        write(root, "class/net/tunl0/address", "00:00:00:00\n");
        write(root, "class/dmi/id/product_serial", "  S4EWNX0R123456 \n");
        write(
            root,
            "class/dmi/id/product_name",
            "Standard PC (Q35 + ICH9, 2009)\n",
        );
        write(root, "class/dmi/id/sys_vendor", "QEMU\n");
        // product_uuid absent; an empty value counts as absent too.
        write(root, "class/dmi/id/product_version", "\n");
        write(root, "block/vda/size", "2097152\n");
        write(root, "block/vda/device/model", "FAKE DISK \n");
        write(root, "block/loop0/size", "8\n");
        write(root, "block/sdb/size", "16\n");
        write(root, "block/sdb/device/serial", "XYZ\n");

        let info = MachineInfo::gather(root);
        assert_eq!(
            info.nics,
            vec![
                Nic {
                    name: "eth0".into(),
                    mac: "52:54:00:12:34:56".into()
                },
                Nic {
                    name: "eth1".into(),
                    mac: "52:54:00:ab:cd:ef".into()
                },
            ]
        );
        assert_eq!(
            info.dmi,
            Dmi {
                serial: Some("S4EWNX0R123456".into()),
                product: Some("Standard PC (Q35 + ICH9, 2009)".into()),
                uuid: None,
                vendor: Some("QEMU".into()),
            }
        );
        assert_eq!(
            info.disks,
            vec![
                MachineDisk {
                    name: "sdb".into(),
                    size_bytes: 16 * 512,
                    model: None,
                    serial: Some("XYZ".into()),
                },
                MachineDisk {
                    name: "vda".into(),
                    size_bytes: 1 << 30,
                    model: Some("FAKE DISK".into()),
                    serial: None,
                },
            ]
        );
    }

    #[test]
    fn missing_tree_gives_an_empty_identity() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(
            MachineInfo::gather(&sys.path().join("nonexistent")),
            MachineInfo::default()
        );
    }
}
