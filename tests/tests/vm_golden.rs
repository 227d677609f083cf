//! The golden test OS (`scripts/golden-os`) boots, both ways a deployed
//! machine will boot it: UEFI firmware from the disk alone (the UKI on the
//! ESP), and its kernel and initrd loaded directly with `root=UUID=` on the
//! command line, as imprint's kexec hand-over will. Each test prints how
//! long the boot took under TCG.

use std::time::{Duration, Instant};

use imprint_qemu::{Disk, Vm};
use imprint_vm_tests::{
    Artifacts, GoldenReport, golden_image, golden_initrd, golden_root_uuid, wait_golden,
};

/// OVMF under TCG takes ~10 s to the report; generous for a loaded machine.
const GOLDEN_TIMEOUT: Duration = Duration::from_secs(180);

/// A private copy of the golden disk, so that no test boots the shared file.
fn golden_disk_copy(dir: &tempfile::TempDir) -> Disk {
    let copy = dir.path().join("golden.img");
    std::fs::copy(golden_image(), &copy).expect("copying the golden image");
    Disk::new(copy)
}

/// What a pristine golden root holds, whichever way it was booted.
fn assert_pristine(report: &GoldenReport) {
    assert_eq!(report.root_uuid, golden_root_uuid(), "{report:?}");
    assert_eq!(report.hostname, "golden", "{report:?}");
    assert_eq!(report.keys, "none", "{report:?}");
    assert_eq!(report.machine_id, "set", "{report:?}");
    assert_eq!(report.network, "none", "{report:?}");
    assert_eq!(report.cloud_init, "none", "{report:?}");
    assert_eq!(report.drp_agent, "none", "{report:?}");
}

fn finish(vm: &Vm, started: Instant, what: &str) -> GoldenReport {
    let report = wait_golden(vm, GOLDEN_TIMEOUT);
    let to_report = started.elapsed();
    vm.wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off after its report");
    eprintln!(
        "{what}: VM start to GOLDEN-OS: end in {:.1} s, to power-off in {:.1} s (TCG)",
        to_report.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    report
}

#[test]
fn ovmf_boots_the_disk_alone_through_the_uki() {
    let artifacts = Artifacts::get();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let vm = Vm::builder()
        .uefi()
        .disk(golden_disk_copy(&dir))
        .console_log(artifacts.log_path("golden_uefi"))
        .start()
        .expect("starting qemu");
    let report = finish(&vm, started, "UEFI boot of the UKI");
    assert_pristine(&report);
    assert!(
        report.cmdline.contains("golden.entry=uki"),
        "the UKI's own command line: {}",
        report.cmdline
    );
    assert!(
        report
            .cmdline
            .contains(&format!("root=UUID={}", golden_root_uuid())),
        "{}",
        report.cmdline
    );
    assert!(
        vm.console().contains("EFI stub:"),
        "the kernel was started by the firmware, not by QEMU"
    );
}

#[test]
fn its_kernel_and_initrd_boot_directly_with_root_uuid() {
    let artifacts = Artifacts::get();
    let dir = tempfile::tempdir().unwrap();
    let append = format!("root=UUID={} console=ttyS0 panic=-1", golden_root_uuid());
    let started = Instant::now();
    let vm = Vm::builder()
        .kernel(&artifacts.bzimage)
        .initrd(golden_initrd())
        .append(&append)
        .disk(golden_disk_copy(&dir))
        .console_log(artifacts.log_path("golden_direct"))
        .start()
        .expect("starting qemu");
    let report = finish(&vm, started, "direct boot of the bzImage");
    assert_pristine(&report);
    assert_eq!(report.cmdline, append);
}
