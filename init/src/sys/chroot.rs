//! Running a program inside another root filesystem, as curtin's
//! `ChrootableTarget` does: the child changes its root before it runs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

/// Makes `command`'s child `chroot(root)` and `chdir("/")` before it runs
/// the program, which is then looked up inside `root`.
pub fn run_inside(command: &mut Command, root: &Path) -> Result<()> {
    let root = CString::new(root.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", root.display()))?;
    let slash = CString::from(c"/");
    // SAFETY: the closure runs in the forked child before exec. It only
    // makes two syscalls through rustix (no allocation: both paths were
    // made above and are borrowed) and returns their errors, as
    // pre_exec's contract asks of code between fork and exec.
    unsafe {
        command.pre_exec(move || {
            rustix::process::chroot(root.as_c_str())?;
            rustix::process::chdir(slash.as_c_str())?;
            Ok(())
        });
    }
    Ok(())
}

/// Bind-mounts `source` and everything mounted below it on `target`
/// (`mount --rbind`).
pub fn bind_recursive(source: &Path, target: &Path) -> Result<()> {
    rustix::mount::mount_bind_recursive(source, target)
        .map_err(std::io::Error::from)
        .with_context(|| format!("bind-mounting {} on {}", source.display(), target.display()))
}

/// Detaches the mount on `target` and everything below it (`umount -l`),
/// for bind mounts whose submounts may still be busy.
pub fn unmount_detach(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)
        .map_err(std::io::Error::from)
        .with_context(|| format!("unmounting {}", target.display()))
}

/// `sync(2)`: every filesystem's dirty data to its disk.
pub fn sync_all() {
    rustix::fs::sync();
}
