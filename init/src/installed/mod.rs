//! The installed system on the freshly written disk: its partitions as
//! root discovery looks into them, and its root, mounted once and handed
//! from discovery to injection to kexec staging.
//!
//! ```text
//! PartitionMounts (read-only looks, for discovery)
//!   -> InstalledRoot::mount (the chosen one remounted read-write, or mounted)
//!   -> injection reads and writes through InstalledRoot::dir
//!   -> kexec staging mounts a separate /boot on its /boot, reads the kernel
//!   -> unmounted: InstalledRoot::unmount, its Drop, or handoff::unmount_everything
//! ```
//!
//! Every path inside goes through [`RootDir`] and its one resolver
//! (`resolve.rs`): the kernel's `openat2(RESOLVE_IN_ROOT)` or, on kernels
//! without it, a userspace walk with the same rules.

mod resolve;
mod root_dir;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::disk::mount::{self, Access};
use crate::disk::root::{self, Candidate, Inspect, OsInfo};

pub use resolve::{MAX_SYMLINKS, Resolver};
pub use root_dir::RootDir;

/// Where the partitions of the deployed disk are mounted, one directory
/// per device (`/run/imprint/partitions/vda2`).
pub const PARTITION_MOUNTS: &str = "/run/imprint/partitions";

/// The most a configuration file read during discovery may hold: they are
/// small, and memory in the initramfs is not spare.
const READ_LIMIT: u64 = 1 << 20;

/// The partitions root discovery looks into: each mounted read-only
/// (`nodev`, `nosuid`, `noexec`) under `mount_root/<device name>` the first
/// time it is asked about, its filesystem's modules loaded first. The
/// chosen root's mount is handed to [`InstalledRoot::mount`]; the others
/// are unmounted then.
#[derive(Debug)]
pub struct PartitionMounts {
    mount_root: PathBuf,
    module_dir: PathBuf,
    /// Device path and where it is mounted.
    mounted: Vec<(PathBuf, PathBuf)>,
}

impl PartitionMounts {
    /// `mount_root` is normally [`PARTITION_MOUNTS`].
    pub fn new(mount_root: &Path) -> PartitionMounts {
        PartitionMounts {
            mount_root: mount_root.to_owned(),
            module_dir: mount::module_dir(),
            mounted: Vec::new(),
        }
    }

    /// Every device mounted so far and its mount point, in mount order.
    pub fn mounted(&self) -> &[(PathBuf, PathBuf)] {
        &self.mounted
    }

    /// Where `candidate` is to be mounted.
    fn point_for(&self, candidate: &Candidate) -> Result<PathBuf> {
        match candidate.dev_path.file_name() {
            Some(name) => Ok(self.mount_root.join(name)),
            None => bail!("{} is not a device path", candidate.dev_path.display()),
        }
    }

    /// Where `candidate` is mounted, mounting it now if it is not yet.
    pub fn mount_point(&mut self, candidate: &Candidate) -> Result<PathBuf> {
        if let Some((_, point)) = self
            .mounted
            .iter()
            .find(|(dev, _)| *dev == candidate.dev_path)
        {
            return Ok(point.clone());
        }
        let point = self.point_for(candidate)?;
        let fs = mountable(candidate)?;
        mount::mount_filesystem(
            &candidate.dev_path,
            fs,
            &point,
            Access::ReadOnly,
            &self.module_dir,
        )
        .with_context(|| {
            format!(
                "mounting {} read-only on {}",
                candidate.describe(),
                point.display()
            )
        })?;
        log::info!("mounted {} on {}", candidate.describe(), point.display());
        self.mounted
            .push((candidate.dev_path.clone(), point.clone()));
        Ok(point)
    }

    /// Hands over the mount of `dev`, if there is one: it is no longer
    /// this one's to unmount.
    fn take(&mut self, dev: &Path) -> Option<PathBuf> {
        let index = self.mounted.iter().position(|(d, _)| d == dev)?;
        Some(self.mounted.remove(index).1)
    }

    /// Unmounts everything mounted so far, newest first. Every mount is
    /// tried; the first failure is returned.
    pub fn unmount_all(&mut self) -> Result<()> {
        let mut first_error = None;
        while let Some((dev, point)) = self.mounted.pop() {
            let result = crate::sys::mount::unmount(&point)
                .with_context(|| format!("unmounting {}", dev.display()));
            if let Err(e) = result {
                log::warn!("{e:#}");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Inspect for PartitionMounts {
    fn has_path(&mut self, candidate: &Candidate, path: &str) -> Result<bool> {
        let root = RootDir::open(&self.mount_point(candidate)?)?;
        Ok(root.metadata(path, false)?.is_some())
    }

    fn read_file(&mut self, candidate: &Candidate, path: &str) -> Result<Option<String>> {
        let root = RootDir::open(&self.mount_point(candidate)?)?;
        root.read_text(path, READ_LIMIT)
            .with_context(|| format!("reading {path} on {}", candidate.describe()))
    }
}

fn mountable(candidate: &Candidate) -> Result<&crate::disk::probe::FsInfo> {
    match &candidate.fs {
        Some(fs) if candidate.mountable() => Ok(fs),
        _ => bail!(
            "{} holds no filesystem imprint can mount",
            candidate.describe()
        ),
    }
}

/// The root of the installed system, mounted read-write (`nodev,nosuid`)
/// from discovery until the handoff. Unmounted by [`unmount`](Self::unmount)
/// or, failing that, when dropped (a mount already gone, as after
/// `handoff::unmount_everything`, is left alone).
#[derive(Debug)]
pub struct InstalledRoot {
    partitions: Vec<Candidate>,
    index: usize,
    dir: RootDir,
    mounted: bool,
}

impl InstalledRoot {
    /// Mounts `partitions[index]`, the root discovery chose, read-write:
    /// in place when discovery already mounted it read-only to look
    /// inside, else on `probes`' mount root. The other partitions
    /// discovery mounted are unmounted.
    pub fn mount(
        partitions: Vec<Candidate>,
        index: usize,
        probes: &mut PartitionMounts,
    ) -> Result<InstalledRoot> {
        let candidate = partitions
            .get(index)
            .context("the chosen root is not among the partitions")?;
        let looked_into = probes.take(&candidate.dev_path);
        if let Err(e) = probes.unmount_all() {
            if let Some(point) = &looked_into {
                let _ = crate::sys::mount::unmount(point);
            }
            return Err(e);
        }
        let fs = mountable(candidate)?;
        let point = match looked_into {
            Some(point) => {
                // Dropping the mount on failure would leave nothing
                // mounted read-only behind either.
                if let Err(e) = mount::remount(&point, fs, Access::ReadWrite) {
                    let _ = crate::sys::mount::unmount(&point);
                    return Err(e.context(format!(
                        "remounting the root {} read-write",
                        candidate.describe()
                    )));
                }
                point
            }
            None => {
                let point = probes.point_for(candidate)?;
                mount::mount_filesystem(
                    &candidate.dev_path,
                    fs,
                    &point,
                    Access::ReadWrite,
                    &probes.module_dir,
                )
                .with_context(|| {
                    format!("mounting the root {} read-write", candidate.describe())
                })?;
                point
            }
        };
        log::info!(
            "installed root {} mounted read-write on {}",
            candidate.describe(),
            point.display()
        );
        // Owned from here, so that an error below unmounts it.
        let mut root = InstalledRoot {
            dir: RootDir::with_resolver(&point, Resolver::Kernel),
            partitions,
            index,
            mounted: true,
        };
        root.dir = RootDir::open(&point)?;
        Ok(root)
    }

    /// The root partition.
    pub fn partition(&self) -> &Candidate {
        &self.partitions[self.index]
    }

    /// Every partition of the deployed disk.
    pub fn partitions(&self) -> &[Candidate] {
        &self.partitions
    }

    /// `partition 2 (/dev/vda2, ext4 LABEL=root …)`.
    pub fn describe(&self) -> String {
        self.partition().describe()
    }

    /// Paths inside the installed system: every read and write goes here.
    pub fn dir(&self) -> &RootDir {
        &self.dir
    }

    /// Its `os-release(5)`: `/etc/os-release`, else `/usr/lib/os-release`.
    pub fn os_release(&self) -> Result<Option<OsInfo>> {
        root::read_os_release(&mut |path| self.dir.read_text(path, READ_LIMIT))
            .with_context(|| format!("reading os-release on {}", self.describe()))
    }

    /// Mounts `boot` read-only on the root's `/boot`, where the installed
    /// system mounts it, so that paths cross into it as they will there.
    pub fn mount_boot(&self, boot: &Candidate) -> Result<BootMount> {
        let mounting = || {
            format!(
                "mounting {} on /boot of the installed system",
                boot.describe()
            )
        };
        let is_dir = self
            .dir
            .metadata("/boot", false)
            .with_context(mounting)?
            .is_some_and(|m| m.is_dir());
        if !is_dir {
            bail!("{}: /boot is not a directory there", mounting());
        }
        let point = self.dir.path().join("boot");
        let fs = mountable(boot).with_context(mounting)?;
        let plan = mount::mount_plan(fs);
        mount::load_fs_modules(&mount::module_dir(), plan.fstype, &plan.modules)
            .with_context(mounting)?;
        mount::mount_device(
            &boot.dev_path,
            &point,
            plan.fstype,
            plan.data,
            Access::ReadOnly,
        )
        .with_context(mounting)?;
        log::info!("mounted {} on {}", boot.describe(), point.display());
        Ok(BootMount { point: Some(point) })
    }

    /// Syncs and unmounts the root.
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.mounted) {
            return Ok(());
        }
        rustix::fs::sync();
        let point = self.dir.path();
        if !crate::sys::mount::is_mount_point(point) {
            // Already unmounted (handoff::unmount_everything).
            return Ok(());
        }
        crate::sys::mount::unmount(point)
            .with_context(|| format!("unmounting the root {}", self.describe()))
    }
}

impl Drop for InstalledRoot {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            log::warn!("{e:#}");
        }
    }
}

/// A separate `/boot` mounted on the installed root's `/boot` while the
/// kernel is read; unmounted by [`unmount`](Self::unmount) or when dropped.
#[derive(Debug)]
pub struct BootMount {
    point: Option<PathBuf>,
}

impl BootMount {
    pub fn unmount(mut self) -> Result<()> {
        self.unmount_now()
    }

    fn unmount_now(&mut self) -> Result<()> {
        match self.point.take() {
            Some(point) => crate::sys::mount::unmount(&point),
            None => Ok(()),
        }
    }
}

impl Drop for BootMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_now() {
            log::warn!("{e:#}");
        }
    }
}
