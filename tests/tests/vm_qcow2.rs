//! A qcow2 image of the golden OS, as `qemu-img convert -c -O qcow2 -o
//! compression_type=zstd` makes it and named `.img` as cloud images are,
//! streamed onto the virtio disk without staging it; imprint then kexecs
//! into the deployed OS, which reports its root and the injected hostname;
//! and one on a second disk's filesystem (`file://LABEL=`), whose L1 table
//! is read from the filesystem already mounted, not mounted again.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Nic, Vm};
use imprint_vm_tests::{
    Artifacts, DEPLOY_TIMEOUT, ResultLine, boot_imprint, finish, golden_image, golden_root_uuid,
    gpt_ext4_image, sha256_hex, test_image, wait_golden,
};

/// kexec under TCG takes 7–11 s, the golden OS a few more; generous.
const GOLDEN_TIMEOUT: Duration = Duration::from_secs(180);
const DISK_SIZE: u64 = 256 << 20;

/// `qemu-img convert` of the golden image to a zstd-compressed qcow2.
fn golden_qcow2(dir: &Path) -> Vec<u8> {
    let out = dir.join("golden.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
        .args(["-o", "compression_type=zstd"])
        .arg(golden_image())
        .arg(&out)
        .status()
        .expect("running qemu-img (scripts/setup installs qemu-utils)");
    assert!(status.success());
    std::fs::read(out).unwrap()
}

#[test]
fn a_qcow2_of_the_golden_image_deploys_and_kexecs_into_it() {
    let dir = tempfile::tempdir().unwrap();
    let golden = std::fs::read(golden_image()).expect("reading the golden image");
    let qcow2 = golden_qcow2(dir.path());
    assert!(qcow2.starts_with(b"QFI\xfb"));
    let server = FixtureServer::start().unwrap();
    server.add_file("/golden-cloudimg.img", qcow2.clone());
    let url = server.guest_url("/golden-cloudimg.img");
    let checksum = format!("sha256:{}", sha256_hex(&qcow2));
    let disk = dir.path().join("disk.img");
    imprint_qemu::create_raw_disk(&disk, DISK_SIZE).expect("creating the target disk");
    let artifacts = Artifacts::get();
    let vm = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&artifacts.initramfs)
        // After `--`: the installed kernel's console, so the golden OS
        // reports on the serial line.
        .append(format!(
            "console=ttyS0 panic=-1 imprint.url={url} imprint.checksum={checksum} \
             imprint.disk=/dev/vda imprint.hostname=qcow2-1 -- console=ttyS0,115200"
        ))
        .memory_mib(1024)
        .nic(Nic::user())
        .disk(Disk::new(&disk))
        .no_reboot(true)
        .console_log(artifacts.log_path("qcow2_kexec"))
        .start()
        .expect("starting qemu");
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    let result = ResultLine::parse(&line);
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!(
            "deploy failed: {line} (console {})",
            vm.console_log_path().display()
        )
    };
    // The guest image is the golden image, byte for byte.
    assert_eq!(bytes, golden.len() as u64);
    assert_eq!(sha256, sha256_hex(&golden));
    assert!(line.contains(" format=qcow2+zstd "), "{line}");
    assert!(line.contains(" verified=sha256 "), "{line}");
    let report = wait_golden(&vm, GOLDEN_TIMEOUT);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off");
    let console = vm.console();
    assert!(console.contains("kexec into /boot/vmlinuz-"));
    // One pass over the file: the out-of-order clusters qemu-img -c
    // writes were kept as the stream passed them.
    assert!(!console.contains("read again by Range"), "{console}");
    assert_eq!(report.root_uuid, golden_root_uuid());
    assert_eq!(report.hostname, "qcow2-1");
}

#[test]
fn a_qcow2_on_a_local_filesystem_deploys_with_one_mount() {
    let dir = tempfile::tempdir().unwrap();
    let noise = test_image(4 << 20, 43);
    let image = gpt_ext4_image(32 << 20, &[("var/lib/noise.bin", &noise)]);
    let raw = dir.path().join("image.raw");
    std::fs::write(&raw, &image).unwrap();
    let root = dir.path().join("source-root");
    std::fs::create_dir_all(&root).unwrap();
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(root.join("image.qcow2"))
        .status()
        .unwrap();
    assert!(status.success());
    let source = dir.path().join("source.raw");
    std::fs::File::create(&source)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "IMAGES", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&source)
        .status()
        .unwrap();
    assert!(status.success());
    // The target holds non-zero bytes where the image has unallocated
    // clusters: on a block device those must be zeroed, not skipped.
    let target = dir.path().join("target.raw");
    std::fs::write(&target, vec![0xa5u8; 40 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let vm = boot_imprint(
        "qcow2_local_label",
        "imprint.url=file://LABEL=IMAGES/image.qcow2 imprint.disk=/dev/vda",
        vec![Disk::new(&target), Disk::new(&source)],
    );
    let result = finish(&vm);
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(bytes, image.len() as u64);
    assert_eq!(sha256, sha256_hex(&image));
    let written = std::fs::read(&target).unwrap();
    // The partition table is rewritten for the larger disk (the backup GPT
    // moves to the end), so compare what lies between.
    let (from, to) = (1 << 20, image.len() - (64 << 10));
    assert!(
        written[from..to] == image[from..to],
        "the target does not read back as the image"
    );
    let console = vm.console();
    assert!(console.contains(" format=qcow2 "), "{console}");
    assert_eq!(
        console.matches("source LABEL=IMAGES is /dev/vdb").count(),
        1,
        "the source filesystem is found and mounted once: {console}"
    );
}
