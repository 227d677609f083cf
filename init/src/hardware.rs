//! The boot-time hardware report: what coldplug could not drive.
//!
//! After coldplug PID 1 looks at two things and logs each problem as one
//! warning line, so an unsupported NIC or disk controller, or a driver
//! without its firmware, shows on the console by name instead of as a
//! later "no disk"/"no network" or a silent hang:
//!
//! - every PCI network (class 0x02) or mass-storage (class 0x01) device with
//!   no bound driver, from `/sys/bus/pci/devices/*/{class,vendor,device,driver}`;
//! - every firmware file a driver failed to load, from the kernel's own
//!   `Direct firmware load for X failed with error -N` lines in `/dev/kmsg`.
//!   The kernel log is the record of what was actually asked for: a driver
//!   declares firmware for every chip it supports, but only asks for the one
//!   its device needs, so comparing declared lists with `/lib/firmware` would
//!   flag files no machine here needs.
//!
//! Scanning and parsing are plain file reads on a root that tests point at a
//! fake tree; nothing here needs `sys`.

use std::io::{ErrorKind, Read};
use std::path::Path;

/// A PCI function as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciDevice {
    /// `0000:03:00.0`.
    pub address: String,
    pub vendor: u16,
    pub device: u16,
    /// Base class, subclass, programming interface: `0x020000` for Ethernet.
    pub class: u32,
    /// The bound driver's name, if any.
    pub driver: Option<String>,
}

impl PciDevice {
    /// Network (0x02) or mass storage (0x01): what a deploy needs.
    pub fn matters_for_deploy(&self) -> bool {
        matches!(self.class >> 16, 0x01 | 0x02)
    }

    /// lspci's name for the class: `Ethernet controller`, `SATA controller`.
    pub fn class_name(&self) -> &'static str {
        match self.class >> 8 {
            0x0100 => "SCSI storage controller",
            0x0101 => "IDE interface",
            0x0104 => "RAID bus controller",
            0x0105 => "ATA controller",
            0x0106 => "SATA controller",
            0x0107 => "Serial Attached SCSI controller",
            0x0108 => "Non-Volatile memory controller",
            0x0200 => "Ethernet controller",
            0x0207 => "Infiniband controller",
            0x0208 => "Fabric controller",
            class if class >> 8 == 0x01 => "Mass storage controller",
            class if class >> 8 == 0x02 => "Network controller",
            _ => "PCI device",
        }
    }
}

fn read_hex(path: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    u32::from_str_radix(text.strip_prefix("0x").unwrap_or(text), 16).ok()
}

/// The PCI devices under `<sys>/bus/pci/devices`, sorted by address. A
/// device whose attributes cannot be read is skipped (it vanished or is not
/// a PCI function).
pub fn scan_pci(sys: &Path) -> Vec<PciDevice> {
    let Ok(entries) = std::fs::read_dir(sys.join("bus/pci/devices")) else {
        return Vec::new();
    };
    let mut devices: Vec<PciDevice> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let vendor = u16::try_from(read_hex(&dir.join("vendor"))?).ok()?;
            let device = u16::try_from(read_hex(&dir.join("device"))?).ok()?;
            let class = read_hex(&dir.join("class"))?;
            let driver = std::fs::read_link(dir.join("driver"))
                .ok()
                .and_then(|target| target.file_name().map(|n| n.to_string_lossy().into_owned()));
            Some(PciDevice {
                address: entry.file_name().to_string_lossy().into_owned(),
                vendor,
                device,
                class,
                driver,
            })
        })
        .collect();
    devices.sort_by(|a, b| a.address.cmp(&b.address));
    devices
}

/// The warning for each network or storage device that no driver took:
/// `no driver for 0000:03:00.0 Ethernet controller [8086:1593]`.
pub fn undriven_devices(devices: &[PciDevice]) -> Vec<String> {
    devices
        .iter()
        .filter(|device| device.matters_for_deploy() && device.driver.is_none())
        .map(|device| {
            format!(
                "no driver for {} {} [{:04x}:{:04x}] (check `imprint-build hardware`; add the module with --extra-module)",
                device.address,
                device.class_name(),
                device.vendor,
                device.device
            )
        })
        .collect()
}

/// A firmware file the kernel could not load, and who asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirmwareFailure {
    /// The file under `/lib/firmware`.
    pub file: String,
    /// `driver device` as the kernel prefixed the line (`ice 0000:03:00.0`),
    /// empty when it did not.
    pub requester: String,
}

impl std::fmt::Display for FirmwareFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "firmware {} failed to load", self.file)?;
        if !self.requester.is_empty() {
            write!(f, " for {}", self.requester)?;
        }
        write!(
            f,
            " (not in this initramfs: add its package to scripts/fetch-firmware)"
        )
    }
}

const FIRMWARE_MARKER: &str = "Direct firmware load for ";

/// The firmware failures in kernel log text: `/dev/kmsg` records
/// (`6,812,3070931,-;ice 0000:03:00.0: Direct firmware load for … failed
/// with error -2`, continuation lines starting with a space) or plain
/// `dmesg` lines. Each file once, in log order.
pub fn firmware_failures(log: &str) -> Vec<FirmwareFailure> {
    let mut failures: Vec<FirmwareFailure> = Vec::new();
    for line in log.lines() {
        if line.starts_with(' ') {
            continue;
        }
        // kmsg: "prio,seq,usec,flags;message".
        let message = match line.split_once(';') {
            Some((header, message))
                if header
                    .split(',')
                    .next()
                    .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) =>
            {
                message
            }
            _ => line,
        };
        let Some(at) = message.find(FIRMWARE_MARKER) else {
            continue;
        };
        let rest = &message[at + FIRMWARE_MARKER.len()..];
        let Some((file, _)) = rest.split_once(" failed") else {
            continue;
        };
        let requester = message[..at].trim().trim_end_matches(':').trim().to_owned();
        if !failures.iter().any(|failure| failure.file == file) {
            failures.push(FirmwareFailure {
                file: file.to_owned(),
                requester,
            });
        }
    }
    failures
}

/// The kernel log so far, from `/dev/kmsg` opened non-blocking: one record
/// per read until there are no more. Records lost to a wrapped ring buffer
/// (`EPIPE`) are skipped; any other error ends the read with what was read.
pub fn read_kmsg(path: &Path) -> String {
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(mut file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    else {
        return String::new();
    };
    let mut log = String::new();
    // One record per read, each at most 8 KiB (the kernel's limit for a
    // record as /dev/kmsg formats it); a smaller buffer gets EINVAL.
    let mut record = vec![0u8; 16 * 1024];
    // Bounded: the ring buffer holds a finite number of records, and a
    // regular file (tests) ends with a 0-byte read.
    for _ in 0..100_000 {
        match file.read(&mut record) {
            Ok(0) => break,
            Ok(length) => log.push_str(&String::from_utf8_lossy(&record[..length])),
            Err(error) if error.kind() == ErrorKind::BrokenPipe => {}
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    log
}

/// Everything the report found, one warning line each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HardwareReport {
    pub undriven: Vec<String>,
    pub firmware: Vec<FirmwareFailure>,
}

impl HardwareReport {
    /// Scans `<sys>/bus/pci/devices` and the kernel log at `kmsg`.
    pub fn gather(sys: &Path, kmsg: &Path) -> HardwareReport {
        HardwareReport {
            undriven: undriven_devices(&scan_pci(sys)),
            firmware: firmware_failures(&read_kmsg(kmsg)),
        }
    }

    /// Logs each finding as a warning.
    pub fn log(&self) {
        for line in &self.undriven {
            log::warn!("{line}");
        }
        for failure in &self.firmware {
            log::warn!("{failure}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_device(sys: &Path, address: &str, ids: (u16, u16), class: u32, driver: Option<&str>) {
        let dir = sys.join("devices/pci0000:00").join(address);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vendor"), format!("0x{:04x}\n", ids.0)).unwrap();
        std::fs::write(dir.join("device"), format!("0x{:04x}\n", ids.1)).unwrap();
        std::fs::write(dir.join("class"), format!("0x{class:06x}\n")).unwrap();
        if let Some(driver) = driver {
            let driver_dir = sys.join("bus/pci/drivers").join(driver);
            std::fs::create_dir_all(&driver_dir).unwrap();
            std::os::unix::fs::symlink(&driver_dir, dir.join("driver")).unwrap();
        }
        let link_dir = sys.join("bus/pci/devices");
        std::fs::create_dir_all(&link_dir).unwrap();
        std::os::unix::fs::symlink(&dir, link_dir.join(address)).unwrap();
    }

    #[test]
    fn reports_unbound_network_and_storage_devices_only() {
        let root = tempfile::tempdir().unwrap();
        let sys = root.path();
        fake_device(
            sys,
            "0000:00:03.0",
            (0x8086, 0x10d3),
            0x020000,
            Some("e1000e"),
        );
        fake_device(
            sys,
            "0000:00:04.0",
            (0x1b36, 0x0010),
            0x010802,
            Some("nvme"),
        );
        fake_device(sys, "0000:03:00.0", (0x8086, 0x1593), 0x020000, None);
        fake_device(sys, "0000:00:1f.2", (0x8086, 0x2922), 0x010601, None);
        fake_device(sys, "0000:00:02.0", (0x1234, 0x1111), 0x030000, None);
        fake_device(sys, "0000:00:1f.3", (0x8086, 0x2930), 0x0c0500, None);

        let devices = scan_pci(sys);
        assert_eq!(devices.len(), 6);
        assert_eq!(devices[0].address, "0000:00:02.0");
        let e1000e = devices
            .iter()
            .find(|d| d.address == "0000:00:03.0")
            .unwrap();
        assert_eq!(e1000e.driver.as_deref(), Some("e1000e"));
        assert_eq!(e1000e.class_name(), "Ethernet controller");

        let lines = undriven_devices(&devices);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("no driver for 0000:00:1f.2 SATA controller [8086:2922]"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("no driver for 0000:03:00.0 Ethernet controller [8086:1593]"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn class_names_follow_lspci() {
        let device = |class| PciDevice {
            address: String::new(),
            vendor: 0,
            device: 0,
            class,
            driver: None,
        };
        assert_eq!(
            device(0x010700).class_name(),
            "Serial Attached SCSI controller"
        );
        assert_eq!(device(0x010400).class_name(), "RAID bus controller");
        assert_eq!(device(0x018000).class_name(), "Mass storage controller");
        assert_eq!(device(0x028000).class_name(), "Network controller");
        assert!(!device(0x0c0330).matters_for_deploy());
    }

    #[test]
    fn no_sysfs_means_nothing_to_report() {
        assert!(scan_pci(Path::new("/nonexistent")).is_empty());
    }

    const KMSG: &str = "\
6,801,3070001,-;e1000e: Intel(R) PRO/1000 Network Driver
4,812,3070931,-;ice 0000:03:00.0: Direct firmware load for intel/ice/ddp/ice.pkg failed with error -2
 SUBSYSTEM=pci
 DEVICE=+pci:0000:03:00.0
3,813,3070940,-;ice 0000:03:00.0: The DDP package file was not found or could not be read. Entering Safe Mode
4,814,3071000,-;ice 0000:03:00.1: Direct firmware load for intel/ice/ddp/ice.pkg failed with error -2
4,815,3072000,-;r8169 0000:02:00.0: Direct firmware load for rtl_nic/rtl8168h-2.fw failed with error -2
";

    #[test]
    fn firmware_failures_name_the_file_and_the_requester_once() {
        let failures = firmware_failures(KMSG);
        assert_eq!(
            failures,
            [
                FirmwareFailure {
                    file: "intel/ice/ddp/ice.pkg".to_owned(),
                    requester: "ice 0000:03:00.0".to_owned(),
                },
                FirmwareFailure {
                    file: "rtl_nic/rtl8168h-2.fw".to_owned(),
                    requester: "r8169 0000:02:00.0".to_owned(),
                },
            ]
        );
        assert_eq!(
            failures[0].to_string(),
            "firmware intel/ice/ddp/ice.pkg failed to load for ice 0000:03:00.0 \
             (not in this initramfs: add its package to scripts/fetch-firmware)"
        );
        // dmesg text works too.
        let dmesg = "[    3.070931] bnx2x 0000:05:00.0: Direct firmware load for bnx2x/bnx2x-e2-7.13.21.0.fw failed with error -2";
        assert_eq!(
            firmware_failures(dmesg)[0].file,
            "bnx2x/bnx2x-e2-7.13.21.0.fw"
        );
        assert!(firmware_failures("6,1,1,-;all good\n").is_empty());
    }

    #[test]
    fn gathers_from_a_fake_sys_and_kmsg() {
        let root = tempfile::tempdir().unwrap();
        fake_device(
            root.path(),
            "0000:03:00.0",
            (0x14e4, 0x16a1),
            0x020000,
            None,
        );
        let kmsg = root.path().join("kmsg");
        std::fs::write(&kmsg, KMSG).unwrap();
        let report = HardwareReport::gather(root.path(), &kmsg);
        assert_eq!(report.undriven.len(), 1);
        assert!(report.undriven[0].contains("[14e4:16a1]"));
        assert_eq!(report.firmware.len(), 2);
        let empty = HardwareReport::gather(Path::new("/nonexistent"), Path::new("/nonexistent"));
        assert_eq!(empty, HardwareReport::default());
    }
}
