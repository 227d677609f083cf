//! Booting another kernel without the firmware: `kexec_file_load` stages
//! it, `reboot(LINUX_REBOOT_CMD_KEXEC)` jumps into it.
//!
//! `kexec_file_load` (not the older `kexec_load`) lets the kernel parse the
//! bzImage and check its signature itself, which is what lockdown and
//! Secure Boot require; there is no userspace image parser to trust.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};

/// Why the kernel refused to stage a kernel, in words an operator can act on.
fn explain(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => {
            "not permitted (kexec disabled by kernel.kexec_load_disabled, lockdown, or missing CAP_SYS_BOOT)"
        }
        libc::EKEYREJECTED | libc::EKEYEXPIRED | libc::EKEYREVOKED => {
            "the kernel's signature was rejected (Secure Boot / lockdown requires a signed kernel)"
        }
        libc::ENOEXEC => "not a kernel image this kernel can boot (kexec needs a bzImage)",
        libc::ENOSYS => "this kernel was built without kexec_file_load (CONFIG_KEXEC_FILE)",
        libc::EBUSY => "another kexec image is being loaded",
        libc::ENOMEM => "not enough memory to stage the kernel and initrd",
        libc::EINVAL => "the kernel rejected the image or the command line",
        _ => "kexec_file_load failed",
    }
}

/// Stages `kernel` (a bzImage) with `initrd` and `cmdline` for the next
/// [`exec`]. Nothing happens to the running system yet.
pub fn load(kernel: &File, initrd: Option<&File>, cmdline: &str) -> Result<()> {
    let cmdline = CString::new(cmdline).context("the kexec command line contains a NUL byte")?;
    let cmdline_len = cmdline.as_bytes_with_nul().len();
    let (initrd_fd, flags) = match initrd {
        Some(file) => (file.as_raw_fd(), 0),
        None => (-1, libc::KEXEC_FILE_NO_INITRAMFS),
    };
    // SAFETY: kexec_file_load(kernel_fd, initrd_fd, cmdline_len, cmdline, flags)
    // only reads: two descriptors we own (or -1 with KEXEC_FILE_NO_INITRAMFS)
    // that stay open for the call, and `cmdline_len` bytes of a NUL-terminated
    // string that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kexec_file_load,
            kernel.as_raw_fd(),
            initrd_fd,
            cmdline_len,
            cmdline.as_ptr(),
            libc::c_ulong::try_from(flags).unwrap_or(0),
        )
    };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        let errno = error.raw_os_error().unwrap_or(0);
        bail!("kexec_file_load: {} ({error})", explain(errno));
    }
    Ok(())
}

/// Jumps into the staged kernel after syncing. Returns only on failure.
pub fn exec() -> Result<std::convert::Infallible> {
    rustix::fs::sync();
    let error = rustix::system::reboot(rustix::system::RebootCommand::Kexec)
        .err()
        .map(std::io::Error::from);
    match error {
        Some(e) => Err(e).context("reboot(LINUX_REBOOT_CMD_KEXEC)"),
        None => bail!("reboot(LINUX_REBOOT_CMD_KEXEC) returned"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_explained() {
        assert!(explain(libc::EPERM).contains("lockdown"));
        assert!(explain(libc::EKEYREJECTED).contains("signed kernel"));
        assert!(explain(libc::ENOEXEC).contains("bzImage"));
    }

    #[test]
    fn loading_a_non_kernel_fails_with_a_reason() {
        // Unprivileged, or privileged with a file that is no kernel: either
        // way the call must fail, and say why, without staging anything.
        let file = tempfile::tempfile().unwrap();
        let error = load(&file, None, "console=ttyS0").unwrap_err().to_string();
        assert!(error.starts_with("kexec_file_load: "), "{error}");
    }
}
