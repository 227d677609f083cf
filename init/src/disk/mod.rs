//! Disks: what is attached (read from sysfs, since PID 1 has no udev), which
//! one is the target, and opening it for writing.
//!
//! # Choosing the target: `imprint.disk=`
//!
//! The value takes one of three forms.
//!
//! - **A device**: `/dev/vda` or the bare kernel name `vda`.
//! - **A persistent name**: `/dev/disk/by-id/<id>` or
//!   `/dev/disk/by-path/<path>`. There is no udev in the initramfs, so these
//!   names are computed from sysfs the way udev's `60-persistent-storage.rules`
//!   would create them (`virtio-<serial>`, `nvme-<model>_<serial>`,
//!   `nvme-eui.<…>`, `ata-<model>_<serial>`, `scsi-<…>`, `usb-<…>`,
//!   `wwn-0x<…>`; `pci-0000:00:04.0`, `pci-0000:00:1f.2-ata-1`,
//!   `pci-0000:03:00.0-nvme-1`, `pci-0000:00:05.0-scsi-0:0:0:0`,
//!   `pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0`). When a name is not
//!   found, the error lists the names each disk has; `sysfs.rs` lists where
//!   they can differ from udev's.
//! - **Root-device hints**, in the spirit of OpenStack Ironic's, separated by
//!   commas; a disk must satisfy all of them:
//!
//!   | hint | matches |
//!   |---|---|
//!   | `size>=100G`, `size<=2T`, `size>1T`, `size<4T` | the size in bytes against the bound |
//!   | `size=8G` | sizes from 8 GiB up to, not including, 9 GiB (whole units) |
//!   | `size=100`, `size>=100` (no unit) | whole GiB, as Ironic does: `size=100` is 100.0–100.99 GiB |
//!   | `model=`, `vendor=`, `serial=` | the value exactly (trimmed, case-sensitive); a trailing `*` matches a prefix: `model=Samsung*` |
//!   | `wwn=` | the WWN, case-insensitive, with or without `0x` (`naa.` also accepted); NVMe: the namespace `wwid`, e.g. `eui.0025388b91b1a2c3` |
//!   | `rotational=0` or `1` | spinning (1) or not (0), from `queue/rotational` |
//!   | `name=/dev/sda` or `name=sda` | the kernel name |
//!   | `by-id=<id>`, `by-path=<path>` | a computed persistent name, with or without the `/dev/disk/by-…/` prefix |
//!
//!   Size units are binary: `K` = KiB, `M` = MiB, `G` = GiB, `T` = TiB,
//!   `P` = PiB (`KiB`…`PiB` and `B` for bytes are accepted too; `GB` is
//!   refused as ambiguous). Whole numbers only. A value may be wrapped in
//!   double quotes (`model="QEMU HARDDISK"`); it cannot contain a comma.
//!   `by_id` and `by_path` are accepted as Ironic spells them. An unknown key
//!   is an error that lists the known ones.
//!
//! Exactly one disk must match, or nothing is written: the error lists every
//! disk with its size, model and serial, and why it did or did not match.
//! Hints never choose a removable disk (`removable=1`, or any USB disk), the
//! disk holding the image source, or a virtual device (device mapper, md):
//! those are chosen only when named (`/dev/…`, `/dev/disk/by-…`, or a
//! `name=`, `by-id=` or `by-path=` hint). A read-only disk is never chosen.
//!
//! Examples: `imprint.disk=/dev/nvme0n1`,
//! `imprint.disk=/dev/disk/by-path/pci-0000:00:1f.2-ata-1`,
//! `imprint.disk=size>=100G,rotational=0`, `imprint.disk=serial=S4EWNX0R123456`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

#[cfg(test)]
mod fake_sysfs;
pub(crate) mod gpt;
mod hints;
pub(crate) mod mbr;
pub(crate) mod mount;
pub(crate) mod partitions;
pub mod probe;
pub mod root;
mod select;
mod sysfs;

pub use hints::{DiskSelector, Hint, SizeOp, TextMatch};
pub(crate) use select::hint_verdicts;
pub use select::{select_disk, wait_for_disk};

/// A whole disk as the kernel shows it under `/sys/block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name, e.g. `vda`, `nvme0n1`, `sda`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub removable: bool,
    pub read_only: bool,
    pub logical_block_size: u32,
    /// SCSI INQUIRY vendor (`ATA` for SATA disks); none for virtio and NVMe.
    pub vendor: Option<String>,
    /// As udev's `ID_WWN`: `0x5000c500…` for SATA/SCSI, the namespace
    /// `wwid` (`eui.…`, `nvme.…`) for NVMe.
    pub wwn: Option<String>,
    pub rotational: bool,
    pub transport: Transport,
    /// Names udev would create under `/dev/disk/by-id`, without that prefix.
    pub by_id: Vec<String>,
    /// Names udev would create under `/dev/disk/by-path`, without that prefix.
    pub by_path: Vec<String>,
}

/// The bus a disk hangs off, from its sysfs device path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Virtio,
    Nvme,
    /// Any ATA disk behind libata (AHCI, legacy IDE), seen as `sd*`.
    Sata,
    /// SCSI other than ATA and USB: virtio-scsi, SAS, RAID volumes.
    Scsi,
    Usb,
    Mmc,
    /// No hardware below it: device mapper, md, and the like.
    Virtual,
    Unknown,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Virtio => "virtio",
            Self::Nvme => "nvme",
            Self::Sata => "sata",
            Self::Scsi => "scsi",
            Self::Usb => "usb",
            Self::Mmc => "mmc",
            Self::Virtual => "virtual",
            Self::Unknown => "unknown",
        })
    }
}

impl DiskInfo {
    /// A regular file standing in for a disk (the CLI's target), named by
    /// its path.
    pub fn file(path: &Path, size_bytes: u64) -> DiskInfo {
        DiskInfo {
            name: path.display().to_string(),
            size_bytes,
            model: None,
            serial: None,
            removable: false,
            read_only: false,
            logical_block_size: 512,
            vendor: None,
            wwn: None,
            rotational: false,
            transport: Transport::Virtual,
            by_id: Vec::new(),
            by_path: Vec::new(),
        }
    }

    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// `vda (256.0 MiB, model "QEMU HARDDISK", serial "abc")`
    pub fn describe(&self) -> String {
        format!("{})", self.describe_open())
    }

    /// [`describe`](Self::describe) without the closing parenthesis, so a
    /// caller can append why the disk was or was not chosen.
    pub(crate) fn describe_open(&self) -> String {
        let mut s = format!(
            "{} ({}",
            self.name,
            crate::text::human_size(self.size_bytes)
        );
        if let Some(model) = &self.model {
            s += &format!(", model {model:?}");
        }
        if let Some(serial) = &self.serial {
            s += &format!(", serial {serial:?}");
        }
        if self.removable {
            s += ", removable";
        }
        if self.read_only {
            s += ", read-only";
        }
        s
    }
}

/// The device node of partition `n` of `disk_name`. The kernel puts a `p`
/// between the two when the disk name ends in a digit, so the number stays
/// readable: `nvme0n1p1`, `mmcblk0p1`, `loop0p1`, but `sda1`, `vda1`.
pub fn partition_path(disk_name: &str, n: u32) -> PathBuf {
    let separator = if disk_name.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    PathBuf::from(format!("/dev/{disk_name}{separator}{n}"))
}

/// Block devices that are never deploy targets: loop and RAM disks, CD
/// drives, floppies, and the eMMC hardware boot partitions.
fn is_never_a_target(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
        || (name.starts_with("mmcblk") && name.contains("boot"))
}

/// Lists whole disks under `sys_block` (normally `/sys/block`), sorted by
/// name. Partitions are not listed there, so none appear; neither do the
/// hidden per-path devices of NVMe multipath (`nvme0c0n1`).
pub fn list_disks(sys_block: &Path) -> Result<Vec<DiskInfo>> {
    let entries =
        std::fs::read_dir(sys_block).with_context(|| format!("listing {}", sys_block.display()))?;
    let mut disks = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", sys_block.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_never_a_target(&name) || sysfs::read_number(&entry.path().join("hidden")) == Some(1) {
            continue;
        }
        disks.push(sysfs::read_disk(sys_block, &name));
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// Lists the disks for an error message: `vda (256.0 MiB), vdb (1.0 GiB)`.
pub fn describe_all(disks: &[DiskInfo]) -> String {
    if disks.is_empty() {
        return "none".to_owned();
    }
    disks
        .iter()
        .map(DiskInfo::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds the disk the user named: `/dev/vda` or `vda`. Nothing else is
/// guessed; when the name matches no disk, the error lists those that exist.
pub fn find_named<'a>(wanted: &str, disks: &'a [DiskInfo]) -> Result<&'a DiskInfo> {
    let name = wanted.strip_prefix("/dev/").unwrap_or(wanted);
    match disks.iter().find(|d| d.name == name) {
        Some(disk) if disk.read_only => bail!("disk {wanted} is read-only: {}", disk.describe()),
        Some(disk) => Ok(disk),
        None => bail!(
            "disk {wanted} not found; disks present: {}",
            describe_all(disks)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use fake_sysfs::FakeSysfs;

    fn by_name<'a>(disks: &'a [DiskInfo], name: &str) -> &'a DiskInfo {
        disks.iter().find(|d| d.name == name).unwrap()
    }

    fn fake_disk(root: &Path, name: &str, sectors: u64, model: Option<&str>, removable: bool) {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("device")).unwrap();
        std::fs::create_dir_all(dir.join("queue")).unwrap();
        std::fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
        std::fs::write(dir.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        std::fs::write(dir.join("ro"), "0\n").unwrap();
        std::fs::write(dir.join("queue/logical_block_size"), "4096\n").unwrap();
        if let Some(model) = model {
            std::fs::write(dir.join("device/model"), format!("{model}    \n")).unwrap();
        }
    }

    #[test]
    fn lists_real_disks_sorted_and_skips_virtual_ones() {
        let root = tempfile::tempdir().unwrap();
        fake_disk(root.path(), "vdb", 2_097_152, None, false);
        fake_disk(
            root.path(),
            "nvme0n1",
            524_288,
            Some("QEMU NVMe Ctrl"),
            false,
        );
        fake_disk(root.path(), "loop0", 100, None, false);
        fake_disk(root.path(), "sr0", 100, None, true);
        std::fs::write(root.path().join("nvme0n1/device/serial"), "deadbeef\n").unwrap();
        let disks = list_disks(root.path()).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "vdb"]);
        assert_eq!(disks[0].size_bytes, 256 << 20);
        assert_eq!(disks[0].model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(disks[0].serial.as_deref(), Some("deadbeef"));
        assert_eq!(disks[0].logical_block_size, 4096);
        assert_eq!(disks[1].size_bytes, 1 << 30);
        assert_eq!(
            describe_all(&disks),
            "nvme0n1 (256.0 MiB, model \"QEMU NVMe Ctrl\", serial \"deadbeef\"), vdb (1.0 GiB)"
        );
    }

    #[test]
    fn missing_sys_block_names_path() {
        let msg = format!(
            "{:#}",
            list_disks(Path::new("/nonexistent/sys/block")).unwrap_err()
        );
        assert!(msg.starts_with("listing /nonexistent/sys/block"), "{msg}");
    }

    #[test]
    fn find_named_accepts_dev_path_and_bare_name() {
        let root = tempfile::tempdir().unwrap();
        fake_disk(root.path(), "vda", 2048, None, false);
        let disks = list_disks(root.path()).unwrap();
        assert_eq!(find_named("/dev/vda", &disks).unwrap().name, "vda");
        assert_eq!(
            find_named("vda", &disks).unwrap().dev_path(),
            Path::new("/dev/vda")
        );
    }

    #[test]
    fn unknown_disk_lists_existing_ones() {
        let root = tempfile::tempdir().unwrap();
        fake_disk(root.path(), "vda", 2048, Some("QEMU HARDDISK"), false);
        fake_disk(root.path(), "vdb", 4096, None, true);
        let disks = list_disks(root.path()).unwrap();
        let msg = find_named("/dev/sdz", &disks).unwrap_err().to_string();
        assert_eq!(
            msg,
            "disk /dev/sdz not found; disks present: vda (1.0 MiB, model \"QEMU HARDDISK\"), vdb (2.0 MiB, removable)"
        );
        assert!(
            find_named("sdz", &[])
                .unwrap_err()
                .to_string()
                .ends_with("disks present: none")
        );
    }

    #[test]
    fn read_only_disk_is_refused() {
        let root = tempfile::tempdir().unwrap();
        fake_disk(root.path(), "vda", 2048, None, false);
        std::fs::write(root.path().join("vda/ro"), "1\n").unwrap();
        let disks = list_disks(root.path()).unwrap();
        assert!(
            find_named("vda", &disks)
                .unwrap_err()
                .to_string()
                .contains("read-only")
        );
    }

    #[test]
    fn virtio_blk_names_follow_udev() {
        let sys = FakeSysfs::new();
        sys.virtio_blk("0000:00:04.0", "virtio2", "vda", Some("abc"), 16_777_216);
        sys.virtio_blk("0000:00:05.0", "virtio3", "vdb", None, 2048);
        let disks = list_disks(&sys.sys_block()).unwrap();
        let vda = by_name(&disks, "vda");
        assert_eq!(vda.transport, Transport::Virtio);
        assert_eq!(vda.serial.as_deref(), Some("abc"));
        // `device/vendor` of a virtio device is a PCI id, not a name.
        assert_eq!(vda.vendor, None);
        assert_eq!(vda.model, None);
        assert_eq!(vda.size_bytes, 8 << 30);
        assert!(vda.rotational);
        assert_eq!(vda.by_id, ["virtio-abc"]);
        assert_eq!(vda.by_path, ["pci-0000:00:04.0", "virtio-pci-0000:00:04.0"]);
        let vdb = by_name(&disks, "vdb");
        assert!(vdb.by_id.is_empty());
        assert_eq!(vdb.by_path, ["pci-0000:00:05.0", "virtio-pci-0000:00:05.0"]);
    }

    #[test]
    fn nvme_names_follow_udev() {
        let sys = FakeSysfs::new();
        let wwid = "nvme.1b36-6465616462656566-51454d55204e566d65204374726c-00000001";
        sys.nvme(
            "0000:03:00.0",
            "nvme0",
            1,
            "QEMU NVMe Ctrl",
            "deadbeef",
            wwid,
        );
        let disks = list_disks(&sys.sys_block()).unwrap();
        let [nvme] = disks.as_slice() else {
            panic!("{disks:?}")
        };
        assert_eq!(nvme.name, "nvme0n1");
        assert_eq!(nvme.transport, Transport::Nvme);
        assert_eq!(nvme.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(nvme.serial.as_deref(), Some("deadbeef"));
        assert_eq!(nvme.wwn.as_deref(), Some(wwid));
        assert!(!nvme.rotational);
        assert_eq!(
            nvme.by_id,
            [
                format!("nvme-{wwid}"),
                "nvme-QEMU_NVMe_Ctrl_deadbeef_1".to_owned(),
                "nvme-QEMU_NVMe_Ctrl_deadbeef".to_owned(),
            ]
        );
        assert_eq!(nvme.by_path, ["pci-0000:03:00.0-nvme-1"]);
    }

    #[test]
    fn nvme_multipath_uses_the_controller_path_and_hides_path_nodes() {
        let sys = FakeSysfs::new();
        let wwid = "eui.0025388b91b1a2c3";
        sys.nvme_multipath(
            "0000:04:00.0",
            "Samsung SSD 980 PRO 1TB",
            "S5GXNF0R123456",
            wwid,
        );
        let disks = list_disks(&sys.sys_block()).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1"]);
        let nvme = &disks[0];
        assert_eq!(nvme.transport, Transport::Nvme);
        assert_eq!(nvme.model.as_deref(), Some("Samsung SSD 980 PRO 1TB"));
        assert_eq!(nvme.by_path, ["pci-0000:04:00.0-nvme-1"]);
        assert!(nvme.by_id.contains(&"nvme-eui.0025388b91b1a2c3".to_owned()));
        assert!(
            nvme.by_id
                .contains(&"nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R123456".to_owned())
        );
    }

    #[test]
    fn sata_names_follow_ata_id_and_path_id() {
        let sys = FakeSysfs::new();
        sys.ahci(
            "0000:00:1f.2",
            1,
            1,
            0,
            "sda",
            "QEMU HARDDISK",
            "QM00001",
            None,
        );
        // A model longer than the 16 bytes of the SCSI model field, on the
        // third port, with a WWN.
        let wwn = [0x50, 0x00, 0xc5, 0x00, 0xa1, 0xb2, 0xc3, 0xd4];
        sys.ahci(
            "0000:00:1f.2",
            3,
            3,
            2,
            "sdb",
            "Samsung SSD 860 EVO 500GB",
            "S3Z2NB0K123456A",
            Some(wwn),
        );
        sys.cdrom("0000:00:1f.2", 2, 1);
        let disks = list_disks(&sys.sys_block()).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["sda", "sdb"]);
        let sda = by_name(&disks, "sda");
        assert_eq!(sda.transport, Transport::Sata);
        assert_eq!(sda.vendor.as_deref(), Some("ATA"));
        assert_eq!(sda.model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(sda.serial.as_deref(), Some("QM00001"));
        assert_eq!(sda.wwn, None);
        assert_eq!(sda.by_id, ["ata-QEMU_HARDDISK_QM00001"]);
        assert_eq!(
            sda.by_path,
            ["pci-0000:00:1f.2-ata-1.0", "pci-0000:00:1f.2-ata-1"]
        );
        let sdb = by_name(&disks, "sdb");
        assert_eq!(sdb.model.as_deref(), Some("Samsung SSD 860 EVO 500GB"));
        assert_eq!(sdb.wwn.as_deref(), Some("0x5000c500a1b2c3d4"));
        assert_eq!(
            sdb.by_id,
            [
                "ata-Samsung_SSD_860_EVO_500GB_S3Z2NB0K123456A",
                "wwn-0x5000c500a1b2c3d4"
            ]
        );
        assert_eq!(
            sdb.by_path,
            ["pci-0000:00:1f.2-ata-3.0", "pci-0000:00:1f.2-ata-3"]
        );
    }

    #[test]
    fn sata_without_vpd_pages_falls_back_to_inquiry_strings() {
        let sys = FakeSysfs::new();
        sys.ahci(
            "0000:00:1f.2",
            1,
            1,
            0,
            "sda",
            "QEMU HARDDISK",
            "QM00001",
            None,
        );
        let dev = "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0";
        std::fs::remove_file(sys.root().join("devices").join(dev).join("vpd_pg83")).unwrap();
        let disks = list_disks(&sys.sys_block()).unwrap();
        assert_eq!(disks[0].serial.as_deref(), Some("QM00001"));
        assert_eq!(disks[0].by_id, ["ata-QEMU_HARDDISK_QM00001"]);
    }

    #[test]
    fn virtio_scsi_names_follow_scsi_id_and_path_id() {
        let sys = FakeSysfs::new();
        sys.virtio_scsi(
            "0000:00:05.0",
            "virtio3",
            [2, 0, 0, 0],
            "sda",
            "drive-scsi0-0-0-0",
        );
        sys.virtio_scsi("0000:00:05.0", "virtio3", [2, 0, 1, 0], "sdb", "data1");
        let dev = "pci0000:00/0000:00:05.0/virtio3/host2/target2:0:1/2:0:1:0";
        sys.attr(dev, "vpd_pg80", fake_sysfs::vpd80("data1"));
        let disks = list_disks(&sys.sys_block()).unwrap();
        let sda = by_name(&disks, "sda");
        assert_eq!(sda.transport, Transport::Scsi);
        assert_eq!(sda.vendor.as_deref(), Some("QEMU"));
        assert_eq!(sda.model.as_deref(), Some("QEMU HARDDISK"));
        assert_eq!(sda.by_id, ["scsi-0QEMU_QEMU_HARDDISK_drive-scsi0-0-0-0"]);
        assert_eq!(sda.by_path, ["pci-0000:00:05.0-scsi-0:0:0:0"]);
        let sdb = by_name(&disks, "sdb");
        assert_eq!(sdb.serial.as_deref(), Some("data1"));
        assert_eq!(sdb.by_id, ["scsi-0QEMU_QEMU_HARDDISK_data1"]);
        assert_eq!(sdb.by_path, ["pci-0000:00:05.0-scsi-0:0:1:0"]);
    }

    #[test]
    fn sas_disk_with_naa_gets_scsi_and_wwn_names() {
        let sys = FakeSysfs::new();
        sys.virtio_scsi("0000:00:05.0", "virtio3", [0, 0, 0, 0], "sda", "unused");
        let dev = "pci0000:00/0000:00:05.0/virtio3/host0/target0:0:0/0:0:0:0";
        let naa = [0x50, 0x00, 0xc5, 0x00, 0x8c, 0x8e, 0x12, 0x34];
        sys.attr(
            dev,
            "vpd_pg83",
            fake_sysfs::vpd83(&[
                fake_sysfs::Designator(2, 0, b"unused"),
                fake_sysfs::Designator(1, 3, &naa),
            ]),
        );
        let disks = list_disks(&sys.sys_block()).unwrap();
        assert_eq!(disks[0].wwn.as_deref(), Some("0x5000c5008c8e1234"));
        assert_eq!(
            disks[0].by_id,
            ["scsi-35000c5008c8e1234", "wwn-0x5000c5008c8e1234"]
        );
    }

    #[test]
    fn usb_stick_names_follow_usb_id() {
        let sys = FakeSysfs::new();
        sys.usb_stick("0000:00:14.0", "sdc", 6, "4C530001230826117354", true);
        let disks = list_disks(&sys.sys_block()).unwrap();
        let sdc = &disks[0];
        assert_eq!(sdc.transport, Transport::Usb);
        assert!(sdc.removable);
        assert_eq!(sdc.vendor.as_deref(), Some("SanDisk"));
        assert_eq!(sdc.model.as_deref(), Some("Cruzer Blade"));
        assert_eq!(sdc.serial.as_deref(), Some("4C530001230826117354"));
        assert_eq!(
            sdc.by_id,
            ["usb-SanDisk_Cruzer_Blade_4C530001230826117354-0:0"]
        );
        assert_eq!(sdc.by_path, ["pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0"]);
    }

    #[test]
    fn loop_and_cdrom_are_skipped_and_virtual_devices_are_marked() {
        let sys = FakeSysfs::new();
        sys.loop_device("loop0");
        sys.cdrom("0000:00:1f.2", 1, 0);
        sys.block("virtual/block/dm-0", None, 2048);
        let disks = list_disks(&sys.sys_block()).unwrap();
        assert_eq!(disks.len(), 1);
        assert_eq!(disks[0].name, "dm-0");
        assert_eq!(disks[0].transport, Transport::Virtual);
        assert!(disks[0].by_path.is_empty());
    }

    #[test]
    fn partition_paths() {
        for (disk, n, path) in [
            ("nvme0n1", 1, "/dev/nvme0n1p1"),
            ("mmcblk0", 2, "/dev/mmcblk0p2"),
            ("loop0", 1, "/dev/loop0p1"),
            ("sda", 1, "/dev/sda1"),
            ("vda", 15, "/dev/vda15"),
            ("sdaa", 3, "/dev/sdaa3"),
        ] {
            assert_eq!(partition_path(disk, n), Path::new(path), "{disk} {n}");
        }
    }
}
