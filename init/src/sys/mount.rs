//! Mounting filesystems and making directories for early boot.

use std::path::Path;

use anyhow::{Context, Result};
use rustix::mount::MountFlags;

/// Mounts `fstype` from `source` on `target`. A target that is already a
/// mount point (`EBUSY`) counts as done: the kernel or a previous attempt
/// got there first.
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: MountFlags,
    data: Option<&str>,
) -> Result<()> {
    let data = data
        .map(std::ffi::CString::new)
        .transpose()
        .context("mount options contain a NUL byte")?;
    match rustix::mount::mount(source, target, fstype, flags, data.as_deref()) {
        Ok(()) | Err(rustix::io::Errno::BUSY) => Ok(()),
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("mounting {fstype} on {}", target.display())),
    }
}

pub fn mkdir_all(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .with_context(|| format!("creating {}", path.display()))
}

pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty())
        .map_err(std::io::Error::from)
        .with_context(|| format!("unmounting {}", target.display()))
}

/// Changes the flags of the filesystem mounted on `target` (`MS_REMOUNT`):
/// a read-only mount becomes read-write in place, as an init system
/// remounts `/` once it has checked it.
pub fn remount(target: &Path, flags: MountFlags, data: Option<&str>) -> Result<()> {
    rustix::mount::mount_remount(target, flags, data.unwrap_or(""))
        .map_err(std::io::Error::from)
        .with_context(|| format!("remounting {}", target.display()))
}

/// Whether `path` is the root of a mount: its device differs from its
/// parent's. (`mount(2)` says EBUSY both for "already mounted here" and
/// for "mounted read-write elsewhere", and [`mount`] takes EBUSY as done,
/// so callers check the result rather than trust it.)
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::metadata(path), std::fs::metadata(parent)) {
        (Ok(here), Ok(above)) => here.dev() != above.dev(),
        _ => false,
    }
}

/// Bytes an unprivileged writer may still use on the filesystem holding
/// `path` (`statvfs`: available blocks times the fragment size).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}
