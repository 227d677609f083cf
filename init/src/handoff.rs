//! Handing the machine over to the installed OS: find its kernel, stage it
//! with kexec, and leave nothing mounted behind.
//!
//! ```text
//! mount the root read-only -> /etc/fstab names a separate /boot? mount it
//! -> find the boot entry (explicit, BLS, grub.cfg, /vmlinuz) -> build the command line
//! -> kexec_file_load -> unmount everything -> (caller) reboot(KEXEC)
//! ```
//!
//! Staging happens before anything is unmounted or reported as handed over,
//! so a kernel that cannot be kexec'd (lockdown, no kernel found) leaves
//! time to fall back to a plain reboot.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::boot::{self, BootEntry, BootFs, FsSource};
use crate::disk::root::{Candidate, MountingInspector, RootSelector};
use crate::spec::KexecOverride;

/// Where the installed system is mounted (read-only) while its kernel is read.
const HANDOFF_MOUNTS: &str = "/run/imprint/handoff";
/// Several initrds (microcode first, then the main one) are concatenated
/// here: `kexec_file_load` takes one, and the kernel unpacks concatenated
/// cpio archives in order, as a boot loader passing several would.
const JOINED_INITRD: &str = "/run/imprint/kexec-initrd.img";
/// Everything imprint mounts lives under here.
const IMPRINT_MOUNTS: &str = "/run/imprint";

/// The installed system as the injection found it.
#[derive(Debug, Clone)]
pub struct Installed<'a> {
    pub partitions: &'a [Candidate],
    /// Index of the root in `partitions`.
    pub root: usize,
}

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
pub fn stage_kexec(
    installed: &Installed<'_>,
    explicit: &KexecOverride,
    init_args: &[String],
) -> Result<Staged> {
    let mut inspector = MountingInspector::new(Path::new(HANDOFF_MOUNTS));
    let staged = stage_with(&mut inspector, installed, explicit, init_args);
    let unmounted = inspector.unmount_all();
    let staged = staged?;
    unmounted?;
    Ok(staged)
}

fn stage_with(
    inspector: &mut MountingInspector,
    installed: &Installed<'_>,
    explicit: &KexecOverride,
    init_args: &[String],
) -> Result<Staged> {
    let root = &installed.partitions[installed.root];
    let root_dir = inspector.mount_point(root)?;
    let boot_dir = match separate_boot(&root_dir, installed.partitions)? {
        Some(boot) => Some(inspector.mount_point(boot)?),
        None => None,
    };
    let fs = BootFs {
        root: &root_dir,
        boot: boot_dir.as_deref(),
    };
    let explicit = boot::Explicit {
        kernel: explicit.kernel.clone(),
        initrd: explicit.initrd.clone(),
        cmdline: explicit.cmdline.clone(),
    };
    let entry = boot::find_boot_entry(&fs, &explicit)?;
    log::info!("kexec: {entry}");
    let root_uuid = root.fs.as_ref().and_then(|fs| fs.uuid.as_deref());
    let cmdline = boot::kexec_cmdline(entry.options.as_deref(), root_uuid, init_args)?;
    log::info!("kexec: command line {cmdline}");
    load(&entry, &cmdline)?;
    let kernel = inside(&entry.kernel, &root_dir, boot_dir.as_deref());
    Ok(Staged {
        entry: entry.to_string(),
        kernel,
        cmdline,
    })
}

/// The kernel's path as the installed system sees it, for reports.
fn inside(path: &Path, root: &Path, boot: Option<&Path>) -> String {
    if let Some(rest) = boot.and_then(|b| path.strip_prefix(b).ok()) {
        return format!("/boot/{}", rest.display());
    }
    match path.strip_prefix(root) {
        Ok(rest) => format!("/{}", rest.display()),
        Err(_) => path.display().to_string(),
    }
}

/// The partition `/etc/fstab` mounts on `/boot`, when it is not the root.
fn separate_boot<'a>(
    root_dir: &Path,
    partitions: &'a [Candidate],
) -> Result<Option<&'a Candidate>> {
    let fstab = match std::fs::read_to_string(root_dir.join("etc/fstab")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("reading /etc/fstab of the installed system"),
    };
    let Some(spec) = boot::boot_mount_from_fstab(&fstab) else {
        return Ok(None);
    };
    let wanted = selector(&spec.source);
    let found = partitions
        .iter()
        .find(|p| wanted.as_ref().is_some_and(|w| w.matches(p)));
    match found {
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

fn load(entry: &BootEntry, cmdline: &str) -> Result<()> {
    let kernel = File::open(&entry.kernel)
        .with_context(|| format!("opening the kernel {}", entry.kernel.display()))?;
    let initrd = match entry.initrds.as_slice() {
        [] => None,
        [one] => {
            Some(File::open(one).with_context(|| format!("opening the initrd {}", one.display()))?)
        }
        several => Some(join_initrds(several, Path::new(JOINED_INITRD))?),
    };
    crate::sys::kexec::load(&kernel, initrd.as_ref(), cmdline)
}

/// Concatenates `parts` into `out` (on tmpfs) and opens the result.
fn join_initrds(parts: &[PathBuf], out: &Path) -> Result<File> {
    let mut joined = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for part in parts {
        let mut input =
            File::open(part).with_context(|| format!("opening the initrd {}", part.display()))?;
        std::io::copy(&mut input, &mut joined)
            .with_context(|| format!("joining the initrd {}", part.display()))?;
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
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        let parts = [partition(1, "1111", "boot"), partition(2, "2222", "root")];
        std::fs::write(
            root.path().join("etc/fstab"),
            "UUID=2222 / ext4 defaults 0 1\nUUID=1111 /boot ext4 defaults 0 2\n",
        )
        .unwrap();
        let boot = separate_boot(root.path(), &parts).unwrap().unwrap();
        assert_eq!(boot.number, 1);

        std::fs::write(
            root.path().join("etc/fstab"),
            "LABEL=root / ext4 defaults 0 1\nPARTLABEL=boot /boot ext4 defaults 0 2\n",
        )
        .unwrap();
        assert_eq!(
            separate_boot(root.path(), &parts).unwrap().unwrap().number,
            1
        );

        std::fs::write(
            root.path().join("etc/fstab"),
            "UUID=9999 /boot ext4 defaults 0 2\n",
        )
        .unwrap();
        let error = separate_boot(root.path(), &parts).unwrap_err().to_string();
        assert!(
            error.contains("not a partition of the deployed disk"),
            "{error}"
        );

        std::fs::write(
            root.path().join("etc/fstab"),
            "UUID=2222 / ext4 defaults 0 1\n",
        )
        .unwrap();
        assert!(separate_boot(root.path(), &parts).unwrap().is_none());
        std::fs::remove_file(root.path().join("etc/fstab")).unwrap();
        assert!(separate_boot(root.path(), &parts).unwrap().is_none());
    }

    #[test]
    fn several_initrds_are_joined_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("ucode.img");
        let b = dir.path().join("initrd.img");
        std::fs::write(&a, b"early").unwrap();
        std::fs::write(&b, b"main").unwrap();
        let out = dir.path().join("joined");
        join_initrds(&[a, b], &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"earlymain");
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

    #[test]
    fn kernel_paths_are_reported_as_the_installed_system_sees_them() {
        let root = Path::new("/run/imprint/handoff/vda2");
        let boot = Path::new("/run/imprint/handoff/vda1");
        assert_eq!(
            inside(&root.join("boot/vmlinuz-6.1"), root, None),
            "/boot/vmlinuz-6.1"
        );
        assert_eq!(
            inside(&boot.join("vmlinuz-6.1"), root, Some(boot)),
            "/boot/vmlinuz-6.1"
        );
    }
}
