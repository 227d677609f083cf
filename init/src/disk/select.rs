//! Picking the one target disk for a [`DiskSelector`]: a pure function over
//! the disks [`list_disks`](super::list_disks) found.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{DiskInfo, DiskSelector, Transport, find_named};

/// Chooses the disk `selector` names. Exactly one disk must match; otherwise
/// the error lists every disk and why it did or did not match.
/// `excluded_names` are disks hints must never choose, e.g. the USB stick
/// the image is read from (`sdb` or `/dev/sdb`).
pub fn select_disk<'a>(
    selector: &DiskSelector,
    disks: &'a [DiskInfo],
    excluded_names: &[String],
) -> Result<&'a DiskInfo> {
    let (wanted, names): (&str, fn(&DiskInfo) -> &[String]) = match selector {
        DiskSelector::Name(name) => return find_named(name, disks),
        DiskSelector::ById(id) => (id, |d| &d.by_id),
        DiskSelector::ByPath(path) => (path, |d| &d.by_path),
        DiskSelector::Hints { text, hints } => {
            return select_by_hints(text, hints, selector.is_explicit(), disks, excluded_names);
        }
    };
    match disks.iter().find(|d| names(d).iter().any(|n| n == wanted)) {
        Some(disk) if disk.read_only => bail!("disk {selector} is read-only: {}", disk.describe()),
        Some(disk) => Ok(disk),
        None => {
            let kind = if matches!(selector, DiskSelector::ById(_)) {
                "by-id"
            } else {
                "by-path"
            };
            let present = if disks.is_empty() {
                "none".to_owned()
            } else {
                disks
                    .iter()
                    .map(|d| format!("{}, {kind} {})", d.describe_open(), list(names(d))))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!("disk {selector} not found; disks present: {present}")
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(" ")
    }
}

fn select_by_hints<'a>(
    text: &str,
    hints: &[super::Hint],
    explicit: bool,
    disks: &'a [DiskInfo],
    excluded_names: &[String],
) -> Result<&'a DiskInfo> {
    let verdicts = hint_verdicts(hints, explicit, disks, excluded_names);
    let (matching, other): (Vec<_>, Vec<_>) = verdicts
        .into_iter()
        .partition(|(_, reasons)| reasons.is_empty());
    let other_list = other
        .iter()
        .map(|(disk, reasons)| format!("{}: {})", disk.describe_open(), reasons.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    match matching.as_slice() {
        [(disk, _)] => Ok(disk),
        [] if disks.is_empty() => bail!("no disk matches {text:?}: no disks present"),
        [] => bail!("no disk matches {text:?}: {other_list}"),
        several => {
            let chosen: Vec<&DiskInfo> = several.iter().map(|(d, _)| *d).collect();
            let listed = chosen
                .iter()
                .map(|d| d.describe())
                .collect::<Vec<_>>()
                .join(", ");
            let not_matching = if other.is_empty() {
                String::new()
            } else {
                format!("; not matching: {other_list}")
            };
            bail!(
                "{} disks match {text:?}: {listed}{not_matching}; add a hint such as {} to choose one",
                chosen.len(),
                distinguishing_hint(&chosen)
            )
        }
    }
}

/// A hint key whose values differ between all of `disks`, to suggest.
fn distinguishing_hint(disks: &[&DiskInfo]) -> &'static str {
    fn all_distinct<T: PartialEq>(values: &[Option<T>]) -> bool {
        values.iter().all(Option::is_some)
            && values
                .iter()
                .enumerate()
                .all(|(i, v)| !values[..i].contains(v))
    }
    let serials: Vec<_> = disks.iter().map(|d| d.serial.as_ref()).collect();
    let paths: Vec<_> = disks.iter().map(|d| d.by_path.first()).collect();
    if all_distinct(&serials) {
        "serial="
    } else if all_distinct(&paths) {
        "by-path="
    } else {
        "name="
    }
}

/// Each disk with the reasons it fails `hints` (none: it matches). Without
/// a hint that names one disk (`explicit`), removable, USB and virtual
/// disks and the `excluded_names` (the image source) never match: each
/// could be the wrong disk to wipe. Deploy targets and the disks an erase
/// reaches are chosen by the same rules.
pub(crate) fn hint_verdicts<'a>(
    hints: &[super::Hint],
    explicit: bool,
    disks: &'a [DiskInfo],
    excluded_names: &[String],
) -> Vec<(&'a DiskInfo, Vec<String>)> {
    let excluded = |disk: &DiskInfo| {
        excluded_names
            .iter()
            .any(|e| e.strip_prefix("/dev/").unwrap_or(e) == disk.name)
    };
    disks
        .iter()
        .map(|disk| {
            let mut reasons: Vec<String> = hints.iter().filter_map(|h| h.mismatch(disk)).collect();
            if disk.read_only {
                reasons.push("read-only".to_owned());
            }
            if !explicit {
                if disk.removable {
                    reasons.push("removable (name it to choose it)".to_owned());
                } else if disk.transport == Transport::Usb {
                    reasons.push("on USB (name it to choose it)".to_owned());
                }
                if excluded(disk) {
                    reasons.push("holds the image source (name it to choose it)".to_owned());
                }
                if disk.transport == Transport::Virtual {
                    reasons.push("virtual device (name it to choose it)".to_owned());
                }
            }
            (disk, reasons)
        })
        .collect()
}

/// Quiet time before hints are matched again, so a disk that probes late
/// makes the choice ambiguous instead of losing the race.
const DISK_SETTLE: Duration = Duration::from_secs(1);

/// Waits (bounded) until the selector picks exactly one disk. Hints are
/// matched again after a quiet second: disks probe asynchronously, and a
/// second matching disk that shows up late must make the choice ambiguous
/// rather than lose the race.
pub fn wait_for_disk(
    selector: &DiskSelector,
    excluded: &[String],
    timeout: Duration,
) -> Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    let pick = || -> Result<DiskInfo> {
        let disks = super::list_disks(Path::new("/sys/block"))?;
        select_disk(selector, &disks, excluded).cloned()
    };
    loop {
        match pick() {
            Ok(found) if selector.is_explicit() => return Ok(announce(found)),
            Ok(found) => {
                std::thread::sleep(DISK_SETTLE);
                let again = pick()?;
                if again == found {
                    return Ok(announce(found));
                }
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn announce(disk: DiskInfo) -> PathBuf {
    log::info!("target disk: {}", disk.describe());
    disk.dev_path()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::fake_sysfs::FakeSysfs;
    use crate::disk::list_disks;

    const GIB: u64 = 1 << 30;

    fn disk(name: &str, size_bytes: u64, model: Option<&str>, serial: Option<&str>) -> DiskInfo {
        DiskInfo {
            name: name.to_owned(),
            size_bytes,
            model: model.map(str::to_owned),
            serial: serial.map(str::to_owned),
            removable: false,
            read_only: false,
            logical_block_size: 512,
            vendor: None,
            wwn: None,
            rotational: false,
            transport: Transport::Virtio,
            by_id: Vec::new(),
            by_path: Vec::new(),
        }
    }

    fn select<'a>(text: &str, disks: &'a [DiskInfo]) -> Result<&'a DiskInfo> {
        select_disk(&DiskSelector::parse(text).unwrap(), disks, &[])
    }

    fn chosen(text: &str, disks: &[DiskInfo]) -> String {
        match select(text, disks) {
            Ok(disk) => disk.name.clone(),
            Err(e) => panic!("{text}: {e:#}"),
        }
    }

    fn error(text: &str, disks: &[DiskInfo]) -> String {
        format!("{:#}", select(text, disks).unwrap_err())
    }

    /// A small server: a spinning virtio disk, an NVMe SSD, a SATA SSD with a
    /// WWN, a USB stick.
    fn machine() -> Vec<DiskInfo> {
        let mut vda = disk("vda", 8 * GIB, Some("QEMU HARDDISK"), Some("abc"));
        vda.rotational = true;
        vda.by_id = vec!["virtio-abc".into()];
        vda.by_path = vec!["pci-0000:00:04.0".into(), "virtio-pci-0000:00:04.0".into()];
        let mut nvme = disk("nvme0n1", 500 * GIB, Some("Samsung SSD 980"), Some("S5GX"));
        nvme.transport = Transport::Nvme;
        nvme.wwn = Some("eui.0025388b91b1a2c3".into());
        nvme.by_path = vec!["pci-0000:03:00.0-nvme-1".into()];
        let mut sda = disk("sda", 2000 * GIB, Some("ST2000DM008"), Some("ZFL1"));
        sda.transport = Transport::Sata;
        sda.vendor = Some("ATA".into());
        sda.rotational = true;
        sda.wwn = Some("0x5000c500a1b2c3d4".into());
        sda.by_id = vec![
            "ata-ST2000DM008_ZFL1".into(),
            "wwn-0x5000c500a1b2c3d4".into(),
        ];
        sda.by_path = vec![
            "pci-0000:00:1f.2-ata-1.0".into(),
            "pci-0000:00:1f.2-ata-1".into(),
        ];
        let mut sdb = disk("sdb", 16 * GIB, Some("Cruzer Blade"), Some("4C53"));
        sdb.transport = Transport::Usb;
        sdb.vendor = Some("SanDisk".into());
        sdb.removable = true;
        sdb.by_id = vec!["usb-SanDisk_Cruzer_Blade_4C53-0:0".into()];
        vec![nvme, sda, sdb, vda]
    }

    #[test]
    fn each_hint_chooses_one_disk() {
        let disks = machine();
        for (text, expected) in [
            ("size>=100G,size<=1T", "nvme0n1"),
            ("size>1000G", "sda"),
            ("size<10G", "vda"),
            ("size=8G", "vda"),
            ("size=500", "nvme0n1"),
            ("size>=1999", "sda"),
            ("size=8192M", "vda"),
            ("model=Samsung SSD 980", "nvme0n1"),
            ("model=\"ST2000DM008\"", "sda"),
            ("model=QEMU*", "vda"),
            ("vendor=ATA", "sda"),
            ("serial=abc", "vda"),
            ("serial=S5*", "nvme0n1"),
            ("wwn=0x5000C500A1B2C3D4", "sda"),
            ("wwn=naa.5000c500a1b2c3d4", "sda"),
            ("wwn=eui.0025388b91b1a2c3", "nvme0n1"),
            ("rotational=0", "nvme0n1"),
            ("rotational=1,size>=1T", "sda"),
            ("name=/dev/vda", "vda"),
            ("name=sda", "sda"),
            ("by-path=pci-0000:00:1f.2-ata-1", "sda"),
            ("by-id=/dev/disk/by-id/virtio-abc", "vda"),
            ("by_id=wwn-0x5000c500a1b2c3d4", "sda"),
            ("/dev/vda", "vda"),
            ("nvme0n1", "nvme0n1"),
            ("/dev/disk/by-id/ata-ST2000DM008_ZFL1", "sda"),
            ("/dev/disk/by-path/pci-0000:03:00.0-nvme-1", "nvme0n1"),
        ] {
            assert_eq!(chosen(text, &disks), expected, "{text}");
        }
    }

    #[test]
    fn no_match_lists_every_disk_and_why() {
        assert_eq!(
            error("size>=1T,rotational=0", &machine()),
            "no disk matches \"size>=1T,rotational=0\": \
             nvme0n1 (500.0 GiB, model \"Samsung SSD 980\", serial \"S5GX\": \
             size 500.0 GiB < 1.0 TiB); \
             sda (2.0 TiB, model \"ST2000DM008\", serial \"ZFL1\": rotational=1); \
             sdb (16.0 GiB, model \"Cruzer Blade\", serial \"4C53\", removable: \
             size 16.0 GiB < 1.0 TiB, removable (name it to choose it)); \
             vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\": \
             size 8.0 GiB < 1.0 TiB, rotational=1)"
        );
        assert_eq!(
            error("model=WD*,vendor=ATA,serial=x,wwn=0x1", &machine()[1..2]),
            "no disk matches \"model=WD*,vendor=ATA,serial=x,wwn=0x1\": \
             sda (2.0 TiB, model \"ST2000DM008\", serial \"ZFL1\": model is not \"WD*\", \
             serial is not \"x\", wwn is not \"1\")"
        );
        assert_eq!(
            error("size>=1G", &[]),
            "no disk matches \"size>=1G\": no disks present"
        );
    }

    #[test]
    fn several_matches_list_them_and_suggest_a_hint() {
        assert_eq!(
            error("size>=1G,size<=1T", &machine()),
            "2 disks match \"size>=1G,size<=1T\": \
             nvme0n1 (500.0 GiB, model \"Samsung SSD 980\", serial \"S5GX\"), \
             vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\"); \
             not matching: sda (2.0 TiB, model \"ST2000DM008\", serial \"ZFL1\": \
             size 2.0 TiB > 1.0 TiB); \
             sdb (16.0 GiB, model \"Cruzer Blade\", serial \"4C53\", removable: \
             removable (name it to choose it)); \
             add a hint such as serial= to choose one"
        );
        // Without distinct serials, a by-path name tells them apart.
        let twins = [disk("vda", GIB, None, None), disk("vdb", GIB, None, None)];
        let mut with_paths = twins.clone();
        with_paths[0].by_path = vec!["pci-0000:00:04.0".into()];
        with_paths[1].by_path = vec!["pci-0000:00:05.0".into()];
        assert_eq!(
            error("size=1", &with_paths),
            "2 disks match \"size=1\": vda (1.0 GiB), vdb (1.0 GiB); \
             add a hint such as by-path= to choose one"
        );
        assert!(error("size=1", &twins).ends_with("add a hint such as name= to choose one"));
    }

    #[test]
    fn removable_usb_excluded_and_virtual_disks_need_a_name() {
        let mut disks = machine();
        // A USB disk that claims not to be removable is still on USB.
        let mut usb_hdd = disk("sdc", 16 * GIB, Some("Elements"), Some("WX1"));
        usb_hdd.transport = Transport::Usb;
        let mut dm = disk("dm-0", 16 * GIB, None, None);
        dm.transport = Transport::Virtual;
        disks.extend([usb_hdd, dm]);
        assert!(error("size=16", &disks).starts_with("no disk matches \"size=16\": "));
        let msg = error("size=16", &disks);
        assert!(msg.contains("removable (name it to choose it)"), "{msg}");
        assert!(msg.contains("on USB (name it to choose it)"), "{msg}");
        assert!(
            msg.contains("virtual device (name it to choose it)"),
            "{msg}"
        );
        assert_eq!(chosen("size=16,name=sdb", &disks), "sdb");
        assert_eq!(chosen("/dev/sdc", &disks), "sdc");
        assert_eq!(
            chosen("by-id=usb-SanDisk_Cruzer_Blade_4C53-0:0", &disks),
            "sdb"
        );
        assert_eq!(
            chosen("/dev/disk/by-id/usb-SanDisk_Cruzer_Blade_4C53-0:0", &disks),
            "sdb"
        );
        assert_eq!(chosen("dm-0", &disks), "dm-0");

        // The disk holding the image source is never chosen by hints.
        let excluded = ["/dev/vda".to_owned()];
        let by_size = DiskSelector::parse("size<10G").unwrap();
        let msg = format!(
            "{:#}",
            select_disk(&by_size, &disks, &excluded).unwrap_err()
        );
        assert!(
            msg.contains(
                "; vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\": \
                 holds the image source (name it to choose it)); "
            ),
            "{msg}"
        );
        let named = DiskSelector::parse("name=vda,size<10G").unwrap();
        assert_eq!(select_disk(&named, &disks, &excluded).unwrap().name, "vda");
    }

    #[test]
    fn read_only_disks_are_never_chosen() {
        let mut disks = machine();
        disks[3].read_only = true;
        assert_eq!(
            error("serial=abc", &disks),
            "no disk matches \"serial=abc\": \
             nvme0n1 (500.0 GiB, model \"Samsung SSD 980\", serial \"S5GX\": serial is not \"abc\"); \
             sda (2.0 TiB, model \"ST2000DM008\", serial \"ZFL1\": serial is not \"abc\"); \
             sdb (16.0 GiB, model \"Cruzer Blade\", serial \"4C53\", removable: \
             serial is not \"abc\", removable (name it to choose it)); \
             vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\", read-only: read-only)"
        );
        assert!(error("name=vda", &disks).ends_with("read-only: read-only)"));
        assert_eq!(
            error("/dev/vda", &disks),
            "disk /dev/vda is read-only: vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\", read-only)"
        );
        assert_eq!(
            error("/dev/disk/by-id/virtio-abc", &disks),
            "disk /dev/disk/by-id/virtio-abc is read-only: \
             vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\", read-only)"
        );
    }

    #[test]
    fn missing_named_disks_list_what_is_present() {
        let disks = machine();
        let msg = error("/dev/sdz", &disks[3..]);
        assert_eq!(
            msg,
            "disk /dev/sdz not found; disks present: vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\")"
        );
        assert_eq!(
            error("/dev/disk/by-id/virtio-xyz", &disks[2..]),
            "disk /dev/disk/by-id/virtio-xyz not found; disks present: \
             sdb (16.0 GiB, model \"Cruzer Blade\", serial \"4C53\", removable, \
             by-id usb-SanDisk_Cruzer_Blade_4C53-0:0), \
             vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\", by-id virtio-abc)"
        );
        assert_eq!(
            error("/dev/disk/by-path/pci-0000:00:09.0", &disks[2..]),
            "disk /dev/disk/by-path/pci-0000:00:09.0 not found; disks present: \
             sdb (16.0 GiB, model \"Cruzer Blade\", serial \"4C53\", removable, by-path none), \
             vda (8.0 GiB, model \"QEMU HARDDISK\", serial \"abc\", \
             by-path pci-0000:00:04.0 virtio-pci-0000:00:04.0)"
        );
        assert_eq!(
            error("/dev/disk/by-id/x", &[]),
            "disk /dev/disk/by-id/x not found; disks present: none"
        );
    }

    /// The whole path from a realistic sysfs tree to a choice.
    #[test]
    fn resolves_persistent_names_on_a_fake_sysfs() {
        let sys = FakeSysfs::new();
        sys.virtio_blk("0000:00:04.0", "virtio2", "vda", Some("abc"), 16_777_216);
        sys.nvme(
            "0000:03:00.0",
            "nvme0",
            1,
            "QEMU NVMe Ctrl",
            "deadbeef",
            "eui.525400000000000a",
        );
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
        sys.virtio_scsi(
            "0000:00:05.0",
            "virtio3",
            [2, 0, 0, 0],
            "sdb",
            "drive-scsi0-0-0-0",
        );
        sys.usb_stick("0000:00:14.0", "sdc", 6, "4C530001230826117354", true);
        sys.loop_device("loop0");
        sys.cdrom("0000:00:1f.2", 2, 1);
        let disks = list_disks(&sys.sys_block()).unwrap();
        for (text, expected) in [
            ("/dev/disk/by-id/virtio-abc", "vda"),
            ("/dev/disk/by-path/virtio-pci-0000:00:04.0", "vda"),
            ("/dev/disk/by-id/nvme-eui.525400000000000a", "nvme0n1"),
            ("/dev/disk/by-id/nvme-QEMU_NVMe_Ctrl_deadbeef_1", "nvme0n1"),
            ("/dev/disk/by-path/pci-0000:03:00.0-nvme-1", "nvme0n1"),
            ("/dev/disk/by-id/ata-QEMU_HARDDISK_QM00001", "sda"),
            ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1", "sda"),
            ("/dev/disk/by-path/pci-0000:00:1f.2-ata-1.0", "sda"),
            (
                "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_drive-scsi0-0-0-0",
                "sdb",
            ),
            ("/dev/disk/by-path/pci-0000:00:05.0-scsi-0:0:0:0", "sdb"),
            (
                "/dev/disk/by-path/pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0",
                "sdc",
            ),
            ("rotational=0", "nvme0n1"),
            ("vendor=QEMU", "sdb"),
            ("serial=QM00001", "sda"),
        ] {
            assert_eq!(chosen(text, &disks), expected, "{text}");
        }
        // The stick matches on size, but hints skip it.
        sys.set("sdc", "size", "16777216");
        let disks = list_disks(&sys.sys_block()).unwrap();
        let msg = error("size=8G,rotational=1,vendor=SanDisk", &disks);
        assert!(
            msg.contains("sdc (8.0 GiB, model \"Cruzer Blade\""),
            "{msg}"
        );
        assert!(msg.contains("removable (name it to choose it)"), "{msg}");
    }
}
