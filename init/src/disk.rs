//! Disks: what is attached (read from sysfs, since PID 1 has no udev), which
//! one is the target, and opening it for writing.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

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
}

impl DiskInfo {
    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(&self.name)
    }

    /// `vda (256.0 MiB, model "QEMU HARDDISK", serial "abc")`
    pub fn describe(&self) -> String {
        let mut s = format!("{} ({}", self.name, human_size(self.size_bytes));
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
        s + ")"
    }
}

/// Block devices that are never deploy targets: loop and RAM disks, CD
/// drives, floppies.
fn is_virtual_or_optical(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn read_number(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Lists whole disks under `sys_block` (normally `/sys/block`), sorted by
/// name. Partitions are not listed there, so none appear.
pub fn list_disks(sys_block: &Path) -> Result<Vec<DiskInfo>> {
    let entries =
        std::fs::read_dir(sys_block).with_context(|| format!("listing {}", sys_block.display()))?;
    let mut disks = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", sys_block.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_virtual_or_optical(&name) {
            continue;
        }
        let dir = entry.path();
        // `size` is always in 512-byte sectors, whatever the logical block size.
        let sectors = read_number(&dir.join("size")).unwrap_or(0);
        disks.push(DiskInfo {
            size_bytes: sectors.saturating_mul(512),
            model: read_trimmed(&dir.join("device/model")),
            serial: read_trimmed(&dir.join("device/serial"))
                .or_else(|| read_trimmed(&dir.join("serial"))),
            removable: read_number(&dir.join("removable")) == Some(1),
            read_only: read_number(&dir.join("ro")) == Some(1),
            logical_block_size: read_number(&dir.join("queue/logical_block_size"))
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(512),
            name,
        });
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

/// How the target is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    BlockDevice,
    /// A regular file standing in for a disk (CLI use and host tests).
    File,
}

/// Opens the target for writing without truncating it. A block device is
/// opened with `O_EXCL`, which the kernel refuses while the device or one of
/// its partitions is mounted or otherwise claimed: we never write under a
/// live filesystem. A regular file is created when missing.
pub fn open_target(path: &Path) -> Result<(File, TargetKind)> {
    let kind = match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_block_device() => TargetKind::BlockDevice,
        Ok(meta) if meta.is_file() => TargetKind::File,
        Ok(_) => bail!(
            "target {} is neither a block device nor a regular file",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TargetKind::File,
        Err(e) => return Err(e).with_context(|| format!("inspecting target {}", path.display())),
    };
    let mut options = OpenOptions::new();
    options.write(true);
    match kind {
        TargetKind::BlockDevice => {
            options.custom_flags(libc::O_EXCL | libc::O_CLOEXEC);
        }
        TargetKind::File => {
            options.create(true).custom_flags(libc::O_CLOEXEC);
        }
    }
    let file = options.open(path).with_context(|| match kind {
        TargetKind::BlockDevice => format!(
            "opening {} exclusively (is it mounted or in use?)",
            path.display()
        ),
        TargetKind::File => format!("opening {}", path.display()),
    })?;
    Ok((file, kind))
}

/// `1.5 GiB`, binary units, one decimal.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[allow(clippy::cast_precision_loss)] // for humans; one decimal is shown
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn open_target_creates_regular_file_without_truncating() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, b"0123456789").unwrap();
        let (_, kind) = open_target(&path).unwrap();
        assert_eq!(kind, TargetKind::File);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        let fresh = dir.path().join("new.img");
        assert_eq!(open_target(&fresh).unwrap().1, TargetKind::File);
        assert!(fresh.exists());
        let msg = format!("{:#}", open_target(dir.path()).unwrap_err());
        assert!(
            msg.contains("neither a block device nor a regular file"),
            "{msg}"
        );
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(256 << 20), "256.0 MiB");
        assert_eq!(human_size(3 << 30 | 512 << 20), "3.5 GiB");
    }
}
