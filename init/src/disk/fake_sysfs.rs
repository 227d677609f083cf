//! Fake sysfs trees for tests, laid out like the real ones: `block/<name>`
//! links into `devices/…`, every device directory has a `uevent` and a
//! `subsystem` link, glue directories (`block/`, `nvme/`) have neither.
//! Attribute values copy what QEMU guests and real machines show, padding
//! included.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

pub struct FakeSysfs {
    dir: TempDir,
}

/// SPC page 0x83 designator: (code set, type, id).
pub struct Designator<'a>(pub u8, pub u8, pub &'a [u8]);

pub fn vpd83(designators: &[Designator<'_>]) -> Vec<u8> {
    let mut page = vec![0, 0x83, 0, 0];
    for Designator(code_set, kind, id) in designators {
        page.extend([*code_set, *kind, 0, u8::try_from(id.len()).unwrap()]);
        page.extend(*id);
    }
    let len = u16::try_from(page.len() - 4).unwrap().to_be_bytes();
    page[2..4].copy_from_slice(&len);
    page
}

pub fn vpd80(serial: &str) -> Vec<u8> {
    let mut page = vec![0, 0x80, 0, u8::try_from(serial.len()).unwrap()];
    page.extend(serial.as_bytes());
    page
}

impl FakeSysfs {
    pub fn new() -> Self {
        let fake = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(fake.root().join("block")).unwrap();
        std::fs::create_dir_all(fake.root().join("devices/pci0000:00")).unwrap();
        std::fs::write(fake.root().join("devices/pci0000:00/uevent"), "").unwrap();
        fake
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn sys_block(&self) -> PathBuf {
        self.root().join("block")
    }

    fn devices(&self, rel: &str) -> PathBuf {
        self.root().join("devices").join(rel)
    }

    /// A device directory: `uevent` (with `DEVTYPE=` when given) and a
    /// `subsystem` link to `bus/<subsystem>` or `class/<subsystem>`.
    pub fn device(&self, rel: &str, subsystem: Option<&str>, devtype: Option<&str>) {
        let dir = self.devices(rel);
        if dir.join("uevent").exists() {
            return;
        }
        std::fs::create_dir_all(&dir).unwrap();
        let uevent = devtype.map_or_else(String::new, |t| format!("DEVTYPE={t}\n"));
        std::fs::write(dir.join("uevent"), uevent).unwrap();
        if let Some(subsystem) = subsystem {
            let kind = if ["pci", "virtio", "scsi", "usb", "platform"].contains(&subsystem) {
                "bus"
            } else {
                "class"
            };
            let target = self.root().join(kind).join(subsystem);
            std::fs::create_dir_all(&target).unwrap();
            std::os::unix::fs::symlink(target, dir.join("subsystem")).unwrap();
        }
    }

    pub fn attr(&self, rel: &str, name: &str, value: impl AsRef<[u8]>) {
        let path = self.devices(rel).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, value).unwrap();
    }

    pub fn link(&self, rel: &str, name: &str, target_rel: &str) {
        std::os::unix::fs::symlink(self.devices(target_rel), self.devices(rel).join(name)).unwrap();
    }

    /// A whole disk at `devices/<rel>` whose `device` link points at
    /// `devices/<parent>`, listed as `block/<name>`.
    pub fn block(&self, rel: &str, parent: Option<&str>, sectors: u64) {
        let name = rel.rsplit('/').next().unwrap();
        self.device(rel, Some("block"), Some("disk"));
        for (attr, value) in [
            ("size", format!("{sectors}\n")),
            ("ro", "0\n".to_owned()),
            ("removable", "0\n".to_owned()),
            ("hidden", "0\n".to_owned()),
            ("queue/rotational", "1\n".to_owned()),
            ("queue/logical_block_size", "512\n".to_owned()),
        ] {
            self.attr(rel, attr, value);
        }
        if let Some(parent) = parent {
            self.link(rel, "device", parent);
        }
        std::os::unix::fs::symlink(self.devices(rel), self.sys_block().join(name)).unwrap();
    }

    pub fn set(&self, name: &str, attr: &str, value: &str) {
        std::fs::write(self.sys_block().join(name).join(attr), format!("{value}\n")).unwrap();
    }

    fn pci(&self, slot: &str) -> String {
        let rel = format!("pci0000:00/{slot}");
        if !self.devices(&rel).exists() {
            self.device(&rel, Some("pci"), None);
            self.attr(&rel, "vendor", "0x8086\n");
        }
        rel
    }

    /// virtio-blk as QEMU shows it: `-device virtio-blk-pci,serial=…`.
    pub fn virtio_blk(
        &self,
        slot: &str,
        virtio: &str,
        name: &str,
        serial: Option<&str>,
        sectors: u64,
    ) {
        let pci = self.pci(slot);
        let dev = format!("{pci}/{virtio}");
        self.device(&dev, Some("virtio"), None);
        // The PCI vendor id, which must not be mistaken for a disk vendor.
        self.attr(&dev, "vendor", "0x1af4\n");
        self.attr(&dev, "device", "0x0002\n");
        self.attr(&dev, "modalias", "virtio:d00000002v00001AF4\n");
        let rel = format!("{dev}/block/{name}");
        self.block(&rel, Some(&dev), sectors);
        if let Some(serial) = serial {
            self.attr(&rel, "serial", format!("{serial}\n"));
        }
    }

    /// An NVMe controller and one namespace, without native multipath.
    pub fn nvme(&self, slot: &str, ctrl: &str, nsid: u32, model: &str, serial: &str, wwid: &str) {
        let pci = self.pci(slot);
        let ctrl_rel = format!("{pci}/nvme/{ctrl}");
        self.nvme_controller(&ctrl_rel, model, serial);
        let rel = format!("{ctrl_rel}/{ctrl}n{nsid}");
        self.block(&rel, Some(&ctrl_rel), 2_097_152);
        self.nvme_namespace(&rel, nsid, wwid);
    }

    fn nvme_controller(&self, rel: &str, model: &str, serial: &str) {
        self.device(rel, Some("nvme"), None);
        // The kernel shows the identify strings padded to 40 and 20 bytes.
        self.attr(rel, "model", format!("{model:<40}\n"));
        self.attr(rel, "serial", format!("{serial:<20}\n"));
        self.attr(rel, "firmware_rev", "8.0.2   \n");
    }

    fn nvme_namespace(&self, rel: &str, nsid: u32, wwid: &str) {
        self.attr(rel, "nsid", format!("{nsid}\n"));
        self.attr(rel, "wwid", format!("{wwid}\n"));
        self.attr(rel, "queue/rotational", "0\n");
    }

    /// Native NVMe multipath: the namespace lives under a virtual subsystem
    /// device that links to its controllers; the per-path node is hidden.
    pub fn nvme_multipath(&self, slot: &str, model: &str, serial: &str, wwid: &str) {
        let pci = self.pci(slot);
        let ctrl_rel = format!("{pci}/nvme/nvme0");
        self.nvme_controller(&ctrl_rel, model, serial);
        let subsys = "virtual/nvme-subsystem/nvme-subsys0";
        self.device(subsys, Some("nvme-subsystem"), None);
        self.attr(subsys, "model", format!("{model:<40}\n"));
        self.attr(subsys, "serial", format!("{serial:<20}\n"));
        self.link(subsys, "nvme0", &ctrl_rel);
        let rel = format!("{subsys}/nvme0n1");
        self.block(&rel, Some(subsys), 2_097_152);
        self.nvme_namespace(&rel, 1, wwid);
        let path_rel = format!("{ctrl_rel}/nvme0c0n1");
        self.block(&path_rel, Some(&ctrl_rel), 2_097_152);
        self.attr(&path_rel, "hidden", "1\n");
    }

    /// The SCSI host/target/device triple; returns the device's path.
    fn scsi_device(&self, host_parent: &str, hctl: [u32; 4], vendor: &str, model: &str) -> String {
        let [h, c, t, l] = hctl;
        let host = format!("{host_parent}/host{h}");
        self.device(&host, Some("scsi"), Some("scsi_host"));
        let target = format!("{host}/target{h}:{c}:{t}");
        self.device(&target, Some("scsi"), Some("scsi_target"));
        let dev = format!("{target}/{h}:{c}:{t}:{l}");
        self.device(&dev, Some("scsi"), Some("scsi_device"));
        self.attr(&dev, "vendor", format!("{vendor:<8.8}\n"));
        self.attr(&dev, "model", format!("{model:<16.16}\n"));
        self.attr(&dev, "rev", "2.5+\n");
        self.attr(&dev, "type", "0\n");
        self.attr(&dev, "scsi_level", "6\n");
        dev
    }

    /// A SATA disk on an AHCI port: libata's SAT translation of the
    /// drive's IDENTIFY data into VPD pages 0x80 and 0x83.
    #[allow(clippy::too_many_arguments)]
    pub fn ahci(
        &self,
        slot: &str,
        ata: u32,
        port_no: u32,
        host: u32,
        name: &str,
        model: &str,
        serial: &str,
        wwn: Option<[u8; 8]>,
    ) {
        let pci = self.pci(slot);
        let port = format!("{pci}/ata{ata}");
        self.device(&port, None, None);
        let ata_port = format!("{port}/ata_port/ata{ata}");
        self.device(&ata_port, Some("ata_port"), None);
        self.attr(&ata_port, "port_no", format!("{port_no}\n"));
        let dev = self.scsi_device(&port, [host, 0, 0, 0], "ATA", model);
        self.attr(&dev, "vpd_pg80", vpd80(&format!("{serial:>20}")));
        let sat = format!("ATA     {model:<40}{serial:<20}");
        let mut designators = vec![
            Designator(2, 0, format!("{serial:<20}").into_bytes().leak()),
            Designator(2, 1, sat.into_bytes().leak()),
        ];
        if let Some(wwn) = &wwn {
            designators.push(Designator(1, 3, wwn.to_vec().leak()));
        }
        self.attr(&dev, "vpd_pg83", vpd83(&designators));
        let rel = format!("{dev}/block/{name}");
        self.block(&rel, Some(&dev), 16_777_216);
    }

    /// A CD-ROM on a SATA port: listed as `sr0`, never a target.
    pub fn cdrom(&self, slot: &str, ata: u32, host: u32) {
        let pci = self.pci(slot);
        let port = format!("{pci}/ata{ata}");
        self.device(&port, None, None);
        let dev = self.scsi_device(&port, [host, 0, 0, 0], "QEMU", "QEMU DVD-ROM");
        let rel = format!("{dev}/block/sr0");
        self.block(&rel, Some(&dev), 0);
        self.attr(&rel, "removable", "1\n");
    }

    /// A disk on virtio-scsi: QEMU's scsi-hd answers page 0x83 with one
    /// vendor-specific ASCII designator, its device id (the serial when
    /// set, else the drive name).
    pub fn virtio_scsi(
        &self,
        slot: &str,
        virtio: &str,
        hctl: [u32; 4],
        name: &str,
        device_id: &str,
    ) {
        let pci = self.pci(slot);
        let dev_parent = format!("{pci}/{virtio}");
        if !self.devices(&dev_parent).exists() {
            self.device(&dev_parent, Some("virtio"), None);
            self.attr(&dev_parent, "vendor", "0x1af4\n");
        }
        let dev = self.scsi_device(&dev_parent, hctl, "QEMU", "QEMU HARDDISK");
        self.attr(
            &dev,
            "vpd_pg83",
            vpd83(&[Designator(2, 0, device_id.as_bytes())]),
        );
        let rel = format!("{dev}/block/{name}");
        self.block(&rel, Some(&dev), 4_194_304);
    }

    /// A USB stick behind an xHCI controller (usb-storage).
    pub fn usb_stick(&self, slot: &str, name: &str, host: u32, serial: &str, removable: bool) {
        let pci = self.pci(slot);
        let bus = format!("{pci}/usb2");
        self.device(&bus, Some("usb"), Some("usb_device"));
        let usb_dev = format!("{bus}/2-1");
        self.device(&usb_dev, Some("usb"), Some("usb_device"));
        self.attr(&usb_dev, "serial", format!("{serial}\n"));
        self.attr(&usb_dev, "manufacturer", " SanDisk'\n");
        let iface = format!("{usb_dev}/2-1:1.0");
        self.device(&iface, Some("usb"), Some("usb_interface"));
        let dev = self.scsi_device(&iface, [host, 0, 0, 0], "SanDisk", "Cruzer Blade");
        let rel = format!("{dev}/block/{name}");
        self.block(&rel, Some(&dev), 30_031_872);
        self.attr(&rel, "removable", if removable { "1\n" } else { "0\n" });
    }

    /// A loop device: under `devices/virtual`, never a target.
    pub fn loop_device(&self, name: &str) {
        let rel = format!("virtual/block/{name}");
        self.block(&rel, None, 0);
    }
}
