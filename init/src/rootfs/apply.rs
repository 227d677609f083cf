//! Carrying out a layout [`Plan`](super::layout::Plan): fresh partition
//! tables, filesystems made by the real tools, and the new tree mounted
//! under one directory, parents first. Undone by [`Mounted::unmount`]; a
//! failed deploy wipes what it wrote with [`fail_closed`].
//!
//! ```text
//! each disk: wipe old signatures -> GPT (backup first, MBR last) -> sync -> re-read
//! each partition: wait for its node -> mkfs.ext4 | mkfs.xfs | mkfs.fat | mkswap
//! mount: / first, then by depth (/boot, /boot/efi, /home)
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::mount::MountFlags;

use super::command;
use super::layout::{DiskPlan, Filesystem, FsId, Plan, PlannedPartition, gpt_writes};
use crate::disk::mount::{load_fs_modules, module_dir};
use crate::disk::partitions::wait_for_partition_nodes;
use crate::pipeline::direct::DirectIo;
use crate::pipeline::target::{self, BlockTarget};
use crate::sys;

/// How long the kernel may take to show a new partition's device node.
const PARTITION_NODES: Duration = Duration::from_secs(15);
/// mkfs on a large disk discards and writes its tables; xfs and ext4 are
/// quick, a FAT32 ESP on a slow disk is not much slower.
const MKFS_LIMIT: Duration = Duration::from_secs(600);
/// Old signatures (GPT, filesystems, RAID and LVM superblocks) sit in the
/// first and last MiB of the disk and of each partition; zeroing them
/// keeps blkid and the installed OS from finding a ghost of the last OS.
const WIPE: u64 = 1 << 20;
/// Where the mkfs tools are looked for: the tools initrd puts them in
/// `/usr/sbin`; PID 1 has no `PATH`.
const TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Writes every disk's fresh partition table and makes every filesystem.
/// Before the first write nothing is changed; after it, a failure leaves
/// what [`fail_closed`] then wipes.
pub fn partition_and_format(plan: &Plan, events: command::Events<'_>) -> Result<()> {
    check_tools(plan)?;
    for disk in &plan.disks {
        write_table(disk)?;
    }
    for disk in &plan.disks {
        let numbers: Vec<u32> = disk.partitions.iter().map(|p| p.number).collect();
        let name = disk.name.trim_start_matches("/dev/");
        wait_for_partition_nodes(name, &numbers, PARTITION_NODES, Path::exists)
            .with_context(|| format!("after writing the partition table of {}", disk.name))?;
        for p in &disk.partitions {
            make_filesystem(disk, p, events)?;
        }
    }
    Ok(())
}

/// Every mkfs tool `plan` needs is there: checked before the disk is
/// touched, so a machine booted without the tools initrd keeps its disk.
pub fn check_tools(plan: &Plan) -> Result<()> {
    for p in plan.disks.iter().flat_map(|d| &d.partitions) {
        if let Some(tool) = mkfs_tool(p.filesystem) {
            find_tool(tool)?;
        }
    }
    Ok(())
}

/// The program that makes `fs`, if any.
fn mkfs_tool(fs: Filesystem) -> Option<&'static str> {
    match fs {
        Filesystem::Ext4 => Some("mkfs.ext4"),
        Filesystem::Xfs => Some("mkfs.xfs"),
        Filesystem::Vfat => Some("mkfs.fat"),
        Filesystem::Swap => Some("mkswap"),
        Filesystem::None => None,
    }
}

fn find_tool(name: &str) -> Result<PathBuf> {
    TOOL_DIRS
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "{name} is missing, and a root-filesystem deploy makes its filesystems with it: \
                 boot imprint with the rootfs tools initrd (rootfs-tools.img) after its initramfs"
            )
        })
}

fn write_table(disk: &DiskPlan) -> Result<()> {
    let writes = gpt_writes(disk)?;
    let mut target = target::open_target(Path::new(&disk.name), DirectIo::Off)?;
    let size = target.size();
    let mut ranges = vec![
        (0, WIPE.min(size)),
        (size.saturating_sub(WIPE), WIPE.min(size)),
    ];
    let bs = u64::from(disk.logical_block_size);
    for p in &disk.partitions {
        let start = p.first_lba * bs;
        let end = (p.last_lba + 1) * bs;
        let len = WIPE.min(end - start);
        ranges.push((start, len));
        ranges.push((end - len, len));
    }
    log::info!(
        "{}: wiping old signatures ({} ranges of up to 1 MiB) and writing a new GPT",
        disk.name,
        ranges.len()
    );
    for (offset, len) in ranges {
        target
            .zero_range(offset, len)
            .with_context(|| format!("wiping {len} bytes at {offset} of {}", disk.name))?;
    }
    crate::disk::partitions::apply_writes(&mut target, &writes)?;
    target.reread_partitions().with_context(|| {
        format!(
            "asking the kernel to re-read the partitions of {}",
            disk.name
        )
    })
}

fn make_filesystem(
    disk: &DiskPlan,
    p: &PlannedPartition,
    events: command::Events<'_>,
) -> Result<()> {
    let Some(tool) = mkfs_tool(p.filesystem) else {
        return Ok(());
    };
    let device = disk.partition_device(p.number);
    let mut args: Vec<String> = Vec::new();
    let id = p.fs_id.to_string();
    match (p.filesystem, p.fs_id) {
        (Filesystem::Ext4, FsId::Uuid(_)) => {
            args.extend(["-F".into(), "-q".into(), "-U".into(), id])
        }
        (Filesystem::Xfs, FsId::Uuid(_)) => {
            args.extend(["-f".into(), "-q".into(), "-m".into(), format!("uuid={id}")]);
        }
        (Filesystem::Swap, FsId::Uuid(_)) => args.extend(["-U".into(), id]),
        (Filesystem::Vfat, FsId::VolumeId(v)) => {
            args.extend(["-F".into(), "32".into(), "-i".into(), format!("{v:08X}")]);
        }
        (fs, id) => bail!("partition {device}: no way to make {fs} with id {id}"),
    }
    if let Some(label) = &p.label {
        args.push(
            if p.filesystem == Filesystem::Vfat {
                "-n"
            } else {
                "-L"
            }
            .to_owned(),
        );
        args.push(label.clone());
    }
    args.push(device.clone());
    let shown = format!("{tool} {}", args.join(" "));
    log::info!("{device}: making {} ({shown})", p.filesystem);
    command::run(
        Command::new(find_tool(tool)?).args(&args),
        &shown,
        MKFS_LIMIT,
        events,
    )
}

/// The new tree, mounted.
#[derive(Debug)]
pub struct Mounted {
    root: PathBuf,
    /// Mount points in the order mounted.
    points: Vec<PathBuf>,
}

impl Mounted {
    /// The new root's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where `mount` (`/boot/efi`) of the layout is mounted now.
    pub fn path_of(&self, mount: &str) -> PathBuf {
        self.root.join(mount.trim_start_matches('/'))
    }

    /// Unmounts everything, children first, after a sync.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_all()
    }

    fn unmount_all(&mut self) -> Result<()> {
        sys::chroot::sync_all();
        let mut first_error = None;
        while let Some(point) = self.points.pop() {
            if let Err(e) = sys::mount::unmount(&point) {
                log::warn!("{e:#}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount_all();
    }
}

/// Mounts every filesystem of `plan` that has a mount point under `root`
/// (an empty directory), `/` first. A vfat filesystem is mounted `quiet`,
/// so that the unpacker's owners and modes, which FAT cannot hold, are
/// ignored as `tar` run by curtin sees them ignored.
pub fn mount_all(plan: &Plan, root: &Path) -> Result<Mounted> {
    let mut wanted: Vec<(&DiskPlan, &PlannedPartition, &str)> = plan
        .disks
        .iter()
        .flat_map(|d| d.partitions.iter().map(move |p| (d, p)))
        .filter_map(|(d, p)| p.mount.as_deref().map(|m| (d, p, m)))
        .collect();
    let depth = |m: &str| m.split('/').filter(|c| !c.is_empty()).count();
    wanted.sort_by(|a, b| depth(a.2).cmp(&depth(b.2)).then(a.2.cmp(b.2)));
    if wanted.first().is_none_or(|w| w.2 != "/") {
        bail!("the layout mounts nothing on /: give one partition \"mount\": \"/\"");
    }
    sys::mount::mkdir_all(root, 0o755)?;
    let mut mounted = Mounted {
        root: root.to_owned(),
        points: Vec::new(),
    };
    for (disk, p, mount) in wanted {
        let device = disk.partition_device(p.number);
        let at = mounted.path_of(mount);
        if mount != "/" {
            let dir = crate::installed::RootDir::open(root)?;
            dir.mkdir_all(mount, 0o755, 0, 0)?;
        }
        let (modules, data): (&[&str], _) = match p.filesystem {
            // FAT's code page and charset are modules too (no modprobe here).
            Filesystem::Vfat => (
                &["vfat", "nls_cp437", "nls_utf8"],
                Some("iocharset=utf8,quiet"),
            ),
            Filesystem::Xfs => (&["xfs"], None),
            _ => (&["ext4"], None),
        };
        let fstype = p.filesystem.name();
        load_fs_modules(&module_dir(), fstype, modules)?;
        sys::mount::mount(&device, &at, fstype, MountFlags::empty(), data)
            .with_context(|| format!("mounting {device} ({mount})"))?;
        if !sys::mount::is_mount_point(&at) {
            bail!("{device} did not mount on {}", at.display());
        }
        mounted.points.push(at);
    }
    Ok(mounted)
}

/// After a failure: zeroes the first and last MiB of every disk of `plan`
/// (the new GPT and its backup) and has the kernel forget the partitions,
/// so that nothing half-made is booted. Errors are logged: the deploy's
/// own error is what is reported.
pub fn fail_closed(plan: &Plan) {
    for disk in &plan.disks {
        let wiped = target::open_target(Path::new(&disk.name), DirectIo::Off).and_then(|mut t| {
            let size = t.size();
            t.zero_range(0, WIPE.min(size))?;
            t.zero_range(size.saturating_sub(WIPE), WIPE.min(size))?;
            t.sync()?;
            let _ = t.reread_partitions();
            Ok(())
        });
        match wiped {
            Ok(()) => log::warn!("{}: partition table wiped at both ends", disk.name),
            Err(e) => log::error!("{}: wiping the partition table failed: {e:#}", disk.name),
        }
    }
}
