//! Hardware coverage in a VM: bare-metal-like NIC and disk controllers
//! (e1000e, NVMe, AHCI, virtio-scsi), disk hints choosing between two
//! SCSI-presented disks, the boot-time warning for a controller with no
//! driver, and the size budget of the shipped initramfs.

use std::path::{Path, PathBuf};

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, DiskInterface, Nic, Vm};
use imprint_vm_tests::{Artifacts, ResultLine, finish, sha256_hex, test_image};

/// The compressed initramfs with the distribution kernel's driver set and
/// its firmware must stay under this (issue 8).
const INITRAMFS_BUDGET: u64 = 40 << 20;

fn disk_file(dir: &Path, name: &str, size: u64, fill: u8) -> PathBuf {
    let path = dir.join(name);
    // Non-zero bytes up front, so a write that should not happen shows.
    std::fs::write(&path, vec![fill; 4 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size)
        .unwrap();
    path
}

/// Like `boot_imprint`, with the NIC model and extra QEMU devices chosen here.
fn boot(name: &str, params: &str, nic: Nic, disks: Vec<Disk>, extra: &[&str]) -> Vm {
    let artifacts = Artifacts::get();
    let mut builder = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&artifacts.initramfs)
        .append(format!(
            "console=ttyS0 panic=-1 imprint.on-success=poweroff imprint.on-failure=poweroff {params}"
        ))
        .memory_mib(1024)
        .nic(nic)
        .args(extra.iter().copied())
        .console_log(artifacts.log_path(name));
    for disk in disks {
        builder = builder.disk(disk);
    }
    builder.start().expect("starting qemu")
}

fn assert_deployed(result: &ResultLine, image: &[u8], vm: &Vm) {
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(*bytes, image.len() as u64);
    assert_eq!(*sha256, sha256_hex(image));
}

/// A common server shape: an Intel NIC (e1000e, QEMU's 82574L) and an NVMe
/// disk, no virtio anywhere. An LSI 53C895A SCSI controller, whose driver
/// (sym53c8xx) imprint does not carry, must be reported by name and ID.
#[test]
fn e1000e_nic_and_nvme_disk_deploy() {
    let image = test_image(16 << 20, 81);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path(), "nvme.raw", 128 << 20, 0xa5);

    let vm = boot(
        "hw_e1000e_nvme",
        &format!(
            "imprint.url={} imprint.disk=/dev/nvme0n1",
            server.guest_url("golden.raw")
        ),
        Nic::with_model("e1000e"),
        vec![Disk::new(&disk).with_interface(DiskInterface::Nvme)],
        &["-device", "lsi53c895a"],
    );
    let result = finish(&vm);
    assert_deployed(&result, &image, &vm);

    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "the NVMe disk holds the image"
    );
    let console = vm.console();
    assert!(console.contains("imprint: loaded e1000e"), "{console}");
    assert!(console.contains("imprint: loaded nvme"), "{console}");
    assert!(
        !console.contains("loaded virtio_net"),
        "no virtio NIC in this machine"
    );
    let warning = console
        .lines()
        .find(|line| line.contains("no driver for "))
        .unwrap_or_else(|| panic!("no boot-time report of the SCSI controller:\n{console}"));
    assert!(
        warning.contains("SCSI storage controller [1000:0012]"),
        "{warning}"
    );
    assert_eq!(
        console.matches("no driver for ").count(),
        1,
        "only the LSI controller lacks a driver:\n{console}"
    );
}

/// An AHCI disk and a virtio-scsi disk both show up as /dev/sdX, in an
/// order that depends on probing; the hints pick the virtio-scsi disk by
/// serial and size, and the AHCI disk keeps every byte.
#[test]
fn disk_hints_choose_between_ahci_and_virtio_scsi() {
    let image = test_image(8 << 20, 82);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let ahci = disk_file(dir.path(), "ahci.raw", 256 << 20, 0x5a);
    let scsi = disk_file(dir.path(), "scsi.raw", 512 << 20, 0xa5);
    let ahci_before = std::fs::read(&ahci).unwrap();

    let vm = boot(
        "hw_ahci_virtio_scsi",
        &format!(
            "imprint.url={} imprint.disk=serial=TARGET-SCSI,size>=384M",
            server.guest_url("golden.raw")
        ),
        Nic::user(),
        vec![
            Disk::new(&ahci)
                .with_interface(DiskInterface::Ahci)
                .with_serial("OTHER-AHCI"),
            Disk::new(&scsi)
                .with_interface(DiskInterface::VirtioScsi)
                .with_serial("TARGET-SCSI"),
        ],
        &[],
    );
    let result = finish(&vm);
    assert_deployed(&result, &image, &vm);

    let written = std::fs::read(&scsi).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "the virtio-scsi disk holds the image"
    );
    assert!(
        std::fs::read(&ahci).unwrap() == ahci_before,
        "the AHCI disk was touched"
    );
    let console = vm.console();
    assert!(console.contains("imprint: loaded ahci"), "{console}");
    assert!(console.contains("imprint: loaded virtio_scsi"), "{console}");
}

/// The shipped `out/initramfs.img` (scripts/build: every driver of
/// drivers.rs and their firmware) stays within its budget.
#[test]
fn initramfs_fits_its_size_budget() {
    let path = &Artifacts::get().initramfs;
    let size = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build first", path.display()))
        .len();
    assert!(
        size <= INITRAMFS_BUDGET,
        "{} is {size} bytes ({:.1} MiB), over its budget of {INITRAMFS_BUDGET} bytes ({} MiB): \
         drop drivers or firmware from build/src/drivers.rs, or raise the budget with a reason",
        path.display(),
        size as f64 / f64::from(1u32 << 20),
        INITRAMFS_BUDGET >> 20
    );
}
