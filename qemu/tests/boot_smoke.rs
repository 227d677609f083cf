//! Boots a real kernel to its "no root filesystem" panic.
//!
//! The one test here that may skip: it needs a kernel, which the repository does not
//! carry. Set `IMPRINT_KERNEL` to a bzImage (e.g. from `scripts/fetch-kernel`) to run it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imprint_qemu::{Vm, fast_boot_kernel};

fn kernel_from_env(test: &str) -> Option<PathBuf> {
    let kernel = std::env::var_os("IMPRINT_KERNEL").map(PathBuf::from);
    if kernel.is_none() {
        eprintln!("{test}: skipped, IMPRINT_KERNEL is not set");
    }
    kernel
}

fn boot_to_panic(kernel: &Path) -> Duration {
    let started = Instant::now();
    let vm = Vm::builder()
        .kernel(kernel)
        .append("console=ttyS0 panic=-1")
        .start()
        .unwrap();
    let (_, line) = vm
        .expect_any(
            &["Kernel panic", "VFS: Unable to mount root fs"],
            Duration::from_secs(60),
        )
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!("{}: {line:?} after {elapsed:.1?}", kernel.display());
    // panic=-1 reboots at once; -no-reboot turns that into QEMU exiting.
    let status = vm.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "qemu exit status {status}");
    assert!(vm.console().contains("Linux version"));
    elapsed
}

#[test]
fn bzimage_boots_to_root_fs_panic() {
    let Some(kernel) = kernel_from_env("bzimage_boots_to_root_fs_panic") else {
        return;
    };
    boot_to_panic(&kernel);
}

#[test]
fn pvh_vmlinux_boots_to_root_fs_panic() {
    let Some(kernel) = kernel_from_env("pvh_vmlinux_boots_to_root_fs_panic") else {
        return;
    };
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmlinux-cache");
    let vmlinux = fast_boot_kernel(&kernel, &cache).unwrap();
    boot_to_panic(&vmlinux);
}

#[test]
fn pxe_boots_kernel_over_tftp() {
    let Some(kernel) = kernel_from_env("pxe_boots_kernel_over_tftp") else {
        return;
    };
    let tftp = tempfile::tempdir().unwrap();
    std::fs::copy(&kernel, tftp.path().join("vmlinuz")).unwrap();
    // iPXE prints to VGA only, so the first serial output is the kernel's.
    let script = "#!ipxe\nkernel vmlinuz console=ttyS0 panic=-1\nboot\n";
    std::fs::write(tftp.path().join("boot.ipxe"), script).unwrap();
    let vm = Vm::builder()
        .boot_from_network(tftp.path(), "boot.ipxe")
        .start()
        .unwrap();
    vm.expect("Kernel panic", Duration::from_secs(120)).unwrap();
    assert!(vm.wait_exit(Duration::from_secs(30)).unwrap().success());
}
