//! Handing the machine over to the installed OS: find its kernel, stage it
//! with kexec, and leave nothing mounted behind.
//!
//! ```text
//! the installed root (still mounted since injection) -> /etc/fstab names a
//! separate /boot? mount it on the root's /boot -> find the boot entry
//! (explicit, BLS, grub.cfg, /vmlinuz) -> build the command line
//! -> kexec_file_load -> unmount /boot -> (caller) unmount everything, reboot(KEXEC)
//! ```
//!
//! Staging happens before anything is unmounted or reported as handed over,
//! so a kernel that cannot be kexec'd (lockdown, no kernel found) leaves
//! time to fall back to a plain reboot.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use crate::boot::{self, BootEntry, BootFs, FsSource};
use crate::disk::root::{Candidate, RootSelector};
use crate::installed::{InstalledRoot, RootDir};
use crate::spec::KexecOverride;

/// Several initrds (microcode first, then the main one) are concatenated
/// here: `kexec_file_load` takes one, and the kernel unpacks concatenated
/// cpio archives in order, as a boot loader passing several would.
const JOINED_INITRD: &str = "/run/imprint/kexec-initrd.img";
/// Everything imprint mounts lives under here.
const IMPRINT_MOUNTS: &str = "/run/imprint";
/// The most `/etc/fstab` may hold.
const FSTAB_LIMIT: u64 = 1 << 20;

/// A kernel staged for `reboot(LINUX_REBOOT_CMD_KEXEC)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// The entry it came from, for the log and the `handoff` event.
    pub entry: String,
    /// The kernel's path inside the installed system.
    pub kernel: String,
    pub cmdline: String,
}

/// Finds the installed kernel, builds its command line and stages it.
/// `init_args` are the words after `--` on imprint's own command line.
/// A separate `/boot` is mounted on the root's `/boot` meanwhile; the root
/// itself stays mounted (the caller unmounts everything before the kexec).
pub fn stage_kexec(
    root: &InstalledRoot,
    explicit: &KexecOverride,
    init_args: &[String],
) -> Result<Staged> {
    let fstab = root
        .dir()
        .read_text("/etc/fstab", FSTAB_LIMIT)
        .context("reading /etc/fstab of the installed system")?;
    let boot = match separate_boot(fstab.as_deref(), root.partitions(), root.partition())? {
        Some(partition) => Some(root.mount_boot(partition)?),
        None => None,
    };
    let staged = stage(root, boot.is_some(), explicit, init_args);
    let unmounted = boot.map_or(Ok(()), |boot| boot.unmount());
    let staged = staged?;
    unmounted?;
    Ok(staged)
}

fn stage(
    root: &InstalledRoot,
    separate_boot: bool,
    explicit: &KexecOverride,
    init_args: &[String],
) -> Result<Staged> {
    let fs = BootFs {
        root: root.dir(),
        separate_boot,
    };
    let explicit = boot::Explicit {
        kernel: explicit.kernel.clone(),
        initrd: explicit.initrd.clone(),
        cmdline: explicit.cmdline.clone(),
    };
    let entry = boot::find_boot_entry(&fs, &explicit)?;
    log::info!("kexec: {entry}");
    let root_uuid = root
        .partition()
        .fs
        .as_ref()
        .and_then(|fs| fs.uuid.as_deref());
    let cmdline = boot::kexec_cmdline(entry.options.as_deref(), root_uuid, init_args)?;
    log::info!("kexec: command line {cmdline}");
    load(root.dir(), &entry, &cmdline)?;
    Ok(Staged {
        entry: entry.to_string(),
        kernel: entry.kernel.display().to_string(),
        cmdline,
    })
}

/// The partition the installed system's `/etc/fstab` mounts on `/boot`,
/// when it is not the root.
fn separate_boot<'a>(
    fstab: Option<&str>,
    partitions: &'a [Candidate],
    root: &Candidate,
) -> Result<Option<&'a Candidate>> {
    let Some(spec) = fstab.and_then(boot::boot_mount_from_fstab) else {
        return Ok(None);
    };
    let wanted = selector(&spec.source);
    let found = partitions
        .iter()
        .find(|p| wanted.as_ref().is_some_and(|w| w.matches(p)));
    match found {
        Some(partition) if partition.dev_path == root.dev_path => Ok(None),
        Some(partition) => {
            log::info!("kexec: /boot is {}", partition.describe());
            Ok(Some(partition))
        }
        None => {
            let named = match &spec.source {
                FsSource::Device(path) => path.display().to_string(),
                _ => wanted.as_ref().map(ToString::to_string).unwrap_or_default(),
            };
            anyhow::bail!(
                "/etc/fstab of the installed system mounts /boot from {named}, which is not a partition of the deployed disk"
            )
        }
    }
}

/// The fstab source as the partition selector `imprint.root=` uses, so both
/// match partitions the same way. `/dev/sda1` in the installed system's
/// fstab names a disk as that system will see it, not as we do: only its
/// partition number can be trusted.
fn selector(source: &FsSource) -> Option<RootSelector> {
    Some(match source {
        FsSource::Uuid(v) => RootSelector::Uuid(v.clone()),
        FsSource::Label(v) => RootSelector::Label(v.clone()),
        FsSource::PartUuid(v) => RootSelector::PartUuid(v.clone()),
        FsSource::PartLabel(v) => RootSelector::PartLabel(v.clone()),
        FsSource::Device(path) => RootSelector::Number(
            path.to_str()?
                .rsplit(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()?,
        ),
    })
}

/// Opens a file of the entry through the installed system's resolver.
fn open_in(root: &RootDir, path: &Path, what: &str) -> Result<File> {
    let shown = path.display().to_string();
    root.open_file(&shown)
        .with_context(|| format!("opening the {what} {shown}"))?
        .with_context(|| format!("the {what} {shown} is gone"))
}

fn load(root: &RootDir, entry: &BootEntry, cmdline: &str) -> Result<()> {
    let kernel = open_in(root, &entry.kernel, "kernel")?;
    let initrds = entry
        .initrds
        .iter()
        .map(|path| open_in(root, path, "initrd"))
        .collect::<Result<Vec<File>>>()?;
    let initrd = match initrds.len() {
        0 => None,
        1 => initrds.into_iter().next(),
        _ => Some(join_initrds(
            &entry.initrds,
            initrds,
            Path::new(JOINED_INITRD),
        )?),
    };
    crate::sys::kexec::load(&kernel, initrd.as_ref(), cmdline)
}

/// Concatenates `parts` (opened from `names`) into `out` (on tmpfs) and
/// opens the result.
fn join_initrds(names: &[std::path::PathBuf], parts: Vec<File>, out: &Path) -> Result<File> {
    let mut joined = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for (name, mut part) in names.iter().zip(parts) {
        std::io::copy(&mut part, &mut joined)
            .with_context(|| format!("joining the initrd {}", name.display()))?;
    }
    joined.flush()?;
    File::open(out).with_context(|| format!("reopening {}", out.display()))
}

/// Mount points under `prefix` in `/proc/self/mounts` text, deepest first.
pub fn mounts_under(mounts: &str, prefix: &str) -> Vec<String> {
    let mut found: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(unescape_mount_path)
        .filter(|point| {
            point
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .collect();
    found.reverse();
    found
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal
/// escapes (`\040`).
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let value = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts everything imprint mounted (sources, probes, the installed
/// system), newest first, so that no filesystem is left dirty when the
/// machine is handed over. Failures are logged: the handoff goes on, after
/// a sync.
pub fn unmount_everything() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for point in mounts_under(&mounts, IMPRINT_MOUNTS) {
        match crate::sys::mount::unmount(Path::new(&point)) {
            Ok(()) => log::info!("unmounted {point}"),
            Err(e) => log::warn!("{e:#}"),
        }
    }
    rustix::fs::sync();
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::disk::probe::FsInfo;

    fn partition(number: u32, uuid: &str, label: &str) -> Candidate {
        Candidate {
            number,
            dev_path: PathBuf::from(format!("/dev/vda{number}")),
            part_type_guid: None,
            part_uuid: Some(format!("0000000{number}-aaaa-bbbb-cccc-dddddddddddd")),
            part_label: Some(label.to_owned()),
            fs: Some(FsInfo {
                fstype: "ext4",
                uuid: Some(uuid.to_owned()),
                label: Some(label.to_owned()),
            }),
        }
    }

    #[test]
    fn finds_the_separate_boot_partition_named_by_fstab() {
        let parts = [partition(1, "1111", "boot"), partition(2, "2222", "root")];
        let root = &parts[1];
        let find = |fstab: &str| separate_boot(Some(fstab), &parts, root);
        let boot = find("UUID=2222 / ext4 defaults 0 1\nUUID=1111 /boot ext4 defaults 0 2\n");
        assert_eq!(boot.unwrap().unwrap().number, 1);
        let boot = find("LABEL=root / ext4 defaults 0 1\nPARTLABEL=boot /boot ext4 defaults 0 2\n");
        assert_eq!(boot.unwrap().unwrap().number, 1);
        let error = find("UUID=9999 /boot ext4 defaults 0 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not a partition of the deployed disk"),
            "{error}"
        );
        assert!(find("UUID=2222 / ext4 defaults 0 1\n").unwrap().is_none());
        assert!(
            find("UUID=2222 /boot ext4 defaults 0 1\n")
                .unwrap()
                .is_none(),
            "the root itself"
        );
        assert!(separate_boot(None, &parts, root).unwrap().is_none());
    }

    #[test]
    fn several_initrds_are_joined_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ucode.img"), b"early").unwrap();
        std::fs::write(dir.path().join("initrd.img"), b"main").unwrap();
        let root = RootDir::open(dir.path()).unwrap();
        let names = [PathBuf::from("/ucode.img"), PathBuf::from("/initrd.img")];
        let parts = names
            .iter()
            .map(|n| open_in(&root, n, "initrd").unwrap())
            .collect();
        let out = dir.path().join("joined");
        join_initrds(&names, parts, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"earlymain");
        let gone = open_in(&root, Path::new("/gone"), "kernel").unwrap_err();
        assert_eq!(gone.to_string(), "the kernel /gone is gone");
    }

    #[test]
    fn mounts_under_prefix_deepest_first() {
        let mounts = "proc /proc proc rw 0 0\n\
            /dev/vdb1 /run/imprint/sources/vdb1 ext4 ro 0 0\n\
            /dev/vda2 /run/imprint/handoff/vda2 ext4 ro 0 0\n\
            /dev/vda1 /run/imprint/handoff/vda2/boot\\040x ext4 ro 0 0\n\
            tmpfs /run/imprintx tmpfs rw 0 0\n";
        assert_eq!(
            mounts_under(mounts, "/run/imprint"),
            [
                "/run/imprint/handoff/vda2/boot x",
                "/run/imprint/handoff/vda2",
                "/run/imprint/sources/vdb1",
            ]
        );
    }
}
