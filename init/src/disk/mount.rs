//! Mounting a filesystem found by [`probe`](super::probe): which type,
//! modules and options it takes, loading those modules from the initramfs
//! (there is no modprobe), and the mount itself, checked.
//!
//! One place for every mount of a disk's filesystem: the image source
//! (`source::local`), the partitions root discovery looks into, and the
//! installed root (`installed`). The syscalls are in [`crate::sys::mount`].

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use rustix::mount::MountFlags;

use crate::disk::probe::FsInfo;

/// What mounting `fs` takes: the type, the modules, the mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub fstype: &'static str,
    pub modules: Vec<&'static str>,
    pub data: Option<&'static str>,
}

/// How FAT (an EFI system partition) is mounted: see [`mount_plan`].
pub fn vfat_plan() -> MountPlan {
    MountPlan {
        fstype: "vfat",
        modules: vec!["vfat", "nls_cp437", "nls_utf8"],
        data: Some("iocharset=utf8"),
    }
}

pub fn mount_plan(fs: &FsInfo) -> MountPlan {
    match fs.mount_type() {
        // FAT needs its code page and I/O charset as NLS modules, which the
        // kernel would ask modprobe for (there is none in the initramfs).
        // Debian's default charset is ascii, which mangles non-ASCII names;
        // utf8 is right for file names typed on a command line.
        "vfat" => vfat_plan(),
        fstype => MountPlan {
            fstype,
            modules: vec![fs.kernel_module()],
            data: None,
        },
    }
}

/// How a filesystem is mounted. Both are `nodev,nosuid`: nothing on a
/// deployed disk is trusted to carry devices or set-id programs here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `ro,noexec`: an image source, a partition looked into.
    ReadOnly,
    /// The installed root, while the identity is injected.
    ReadWrite,
}

impl Access {
    fn flags(self) -> MountFlags {
        let always = MountFlags::NODEV | MountFlags::NOSUID;
        match self {
            Access::ReadOnly => always | MountFlags::RDONLY | MountFlags::NOEXEC,
            Access::ReadWrite => always,
        }
    }
}

/// `/lib/modules/<running release>`, where the initramfs keeps modules.
pub fn module_dir() -> PathBuf {
    Path::new("/lib/modules").join(crate::sys::kmod::kernel_release())
}

/// Makes the kernel able to mount `fstype`, loading `modules` and their
/// dependencies from `module_dir`'s index.
pub fn load_fs_modules(module_dir: &Path, fstype: &str, modules: &[&str]) -> Result<()> {
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let load = || -> Result<()> {
        let index = crate::modules::ModuleIndex::load(module_dir)?;
        for entry in index.closure(modules)? {
            // As in coldplug: one alternative failing (crc32c_intel on a
            // CPU without SSE4.2, next to crc32c_generic) is not fatal;
            // if something needed is missing, the mount says so.
            if let Err(e) = crate::sys::kmod::load_module(&module_dir.join(&entry.path)) {
                log::warn!("{e:#}");
            }
        }
        Ok(())
    };
    match load() {
        // On a host (the CLI) the kernel may have it already, and
        // modprobe for anything else; no index there is no problem.
        Err(e) if kernel_has_filesystem(&filesystems, fstype) => {
            log::debug!("{e:#}");
            Ok(())
        }
        result => result,
    }
}

/// `/proc/filesystems` lists what the kernel can mount now (built in or
/// loaded): `nodev\tproc` and `\text4` lines.
fn kernel_has_filesystem(filesystems: &str, fstype: &str) -> bool {
    filesystems
        .lines()
        .any(|line| line.split_whitespace().last() == Some(fstype))
}

/// Mounts `device` on `mount_point` (which exists). Mounting the same
/// device on the same point again is a no-op; a mount the kernel accepted
/// without it showing (EBUSY: mounted read-write elsewhere) is an error.
pub fn mount_device(
    device: &Path,
    mount_point: &Path,
    fstype: &str,
    data: Option<&str>,
    access: Access,
) -> Result<()> {
    if crate::sys::mount::is_mount_point(mount_point) {
        return Ok(());
    }
    crate::sys::mount::mount(
        &device.to_string_lossy(),
        mount_point,
        fstype,
        access.flags(),
        data,
    )?;
    if !crate::sys::mount::is_mount_point(mount_point) {
        bail!("the device is busy (mounted read-write elsewhere?)");
    }
    Ok(())
}

/// The whole of it for a probed filesystem: makes `mount_point`, loads the
/// modules from `module_dir`, mounts.
pub fn mount_filesystem(
    device: &Path,
    fs: &FsInfo,
    mount_point: &Path,
    access: Access,
    module_dir: &Path,
) -> Result<()> {
    let plan = mount_plan(fs);
    crate::sys::mount::mkdir_all(mount_point, 0o755)?;
    load_fs_modules(module_dir, plan.fstype, &plan.modules)?;
    mount_device(device, mount_point, plan.fstype, plan.data, access)
}

/// Changes the access of `fs`, mounted on `mount_point`, in place.
pub fn remount(mount_point: &Path, fs: &FsInfo, access: Access) -> Result<()> {
    crate::sys::mount::remount(mount_point, access.flags(), mount_plan(fs).data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_plans_name_module_and_options() {
        let fs = |fstype| FsInfo {
            fstype,
            uuid: None,
            label: None,
        };
        assert_eq!(
            mount_plan(&fs("ext2")),
            MountPlan {
                fstype: "ext4",
                modules: vec!["ext4"],
                data: None
            }
        );
        assert_eq!(mount_plan(&fs("iso9660")).modules, ["isofs"]);
        assert_eq!(mount_plan(&fs("xfs")).fstype, "xfs");
        assert_eq!(mount_plan(&fs("vfat")).data, Some("iocharset=utf8"));
    }

    #[test]
    fn proc_filesystems_says_what_needs_no_module() {
        let filesystems = "nodev\tsysfs\nnodev\ttmpfs\n\text4\n\tvfat\nnodev\tfuseblk\n";
        assert!(kernel_has_filesystem(filesystems, "ext4"));
        assert!(kernel_has_filesystem(filesystems, "tmpfs"));
        assert!(!kernel_has_filesystem(filesystems, "xfs"));
        assert!(!kernel_has_filesystem(filesystems, "fuse"));
    }

    #[test]
    fn read_only_is_noexec_and_both_are_nodev_nosuid() {
        assert!(Access::ReadOnly.flags().contains(
            MountFlags::RDONLY | MountFlags::NOEXEC | MountFlags::NODEV | MountFlags::NOSUID
        ));
        assert_eq!(
            Access::ReadWrite.flags(),
            MountFlags::NODEV | MountFlags::NOSUID
        );
    }
}
