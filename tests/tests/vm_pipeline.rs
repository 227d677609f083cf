//! The deploy pipeline in the real initramfs: every compressed format, an
//! NVMe disk, a 4Kn disk, and a checksum mismatch that must leave no
//! partition table behind.

use std::path::{Path, PathBuf};

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, DiskInterface};
use imprint_vm_tests::{
    ResultLine, boot_imprint, filter, finish, gpt_ext4_image, partition_table, sha256_hex,
    test_image,
};

const DISK_SIZE: u64 = 128 << 20;

/// A real GPT + ext4 image with some incompressible content, so decoders
/// and the zero-run path both get work.
fn golden() -> Vec<u8> {
    let noise = test_image(6 << 20, 21);
    gpt_ext4_image(
        48 << 20,
        &[("etc/hostname", b"golden\n"), ("var/lib/noise.bin", &noise)],
    )
}

/// A disk file pre-filled with non-zero bytes, so skipped writes show.
fn disk_file(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::write(&path, vec![0xa5u8; 8 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    path
}

/// Serves `body` as `name`, deploys it to one disk and checks the disk
/// holds `image` byte for byte.
fn deploy_and_check(
    test: &str,
    image: &[u8],
    name: &str,
    body: Vec<u8>,
    extra: &str,
    disk: impl Fn(&Path) -> Disk,
    dev: &str,
) {
    let server = FixtureServer::start().unwrap();
    server.add_file(name, body);
    let dir = tempfile::tempdir().unwrap();
    let path = disk_file(dir.path());
    let vm = boot_imprint(
        test,
        &format!(
            "imprint.url={} imprint.disk={dev} {extra}",
            server.guest_url(name)
        ),
        vec![disk(&path)],
    );
    let result = finish(&vm);
    let ResultLine::Ok { bytes, sha256, .. } = &result else {
        panic!("{test}: deploy failed: {result:?}");
    };
    assert_eq!(*bytes, image.len() as u64, "{test}");
    assert_eq!(*sha256, sha256_hex(image), "{test}");
    let written = std::fs::read(&path).unwrap();
    // The partition table itself is rewritten for the larger disk (the
    // backup GPT moves to the end), so compare what lies between.
    let (from, to) = (1 << 20, image.len() - (64 << 10));
    assert!(
        written[from..to] == image[from..to],
        "{test}: the disk does not hold the image"
    );
    let verify = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&path)
        .output()
        .unwrap();
    let verify = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.contains("No problems found"),
        "{test}: sgdisk -v: {verify}"
    );
    let table = partition_table(&path).unwrap_or_else(|| panic!("{test}: no partition table"));
    assert!(table.contains("label: gpt"), "{test}: {table}");
}

fn virtio(path: &Path) -> Disk {
    Disk::new(path)
}

#[test]
fn gzip_image() {
    let image = golden();
    let body = filter("gzip", &["-c", "-n"], &image);
    deploy_and_check(
        "fmt_gz",
        &image,
        "golden.raw.gz",
        body,
        "imprint.format=dd-gz",
        virtio,
        "/dev/vda",
    );
}

#[test]
fn xz_image() {
    let image = golden();
    let body = filter("xz", &["-c", "-T1"], &image);
    deploy_and_check(
        "fmt_xz",
        &image,
        "golden.raw.xz",
        body,
        "imprint.format=dd-xz",
        virtio,
        "/dev/vda",
    );
}

#[test]
fn multi_frame_zstd_image() {
    let image = golden();
    let body = filter("pzstd", &["-c", "-q", "-p", "2"], &image);
    deploy_and_check(
        "fmt_zst",
        &image,
        "golden.raw.zst",
        body,
        "imprint.format=dd-zst",
        virtio,
        "/dev/vda",
    );
}

#[test]
fn bzip2_image() {
    let image = golden();
    let body = filter("bzip2", &["-c"], &image);
    deploy_and_check(
        "fmt_bz2",
        &image,
        "golden.raw.bz2",
        body,
        "",
        virtio,
        "/dev/vda",
    );
}

#[test]
fn gzip_tar_image() {
    let image = golden();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("golden.raw"), &image).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-c", "-f", "-", "-C"])
        .arg(dir.path())
        .arg("golden.raw")
        .output()
        .unwrap()
        .stdout;
    let body = filter("gzip", &["-c", "-n"], &tar);
    deploy_and_check(
        "fmt_tgz",
        &image,
        "golden.tgz",
        body,
        "imprint.format=dd-tgz",
        virtio,
        "/dev/vda",
    );
}

#[test]
fn nvme_disk() {
    let image = golden();
    let body = filter("zstd", &["-c", "-q"], &image);
    deploy_and_check(
        "nvme",
        &image,
        "golden.raw.zst",
        body,
        "",
        |p| {
            Disk::new(p)
                .with_interface(DiskInterface::Nvme)
                .with_serial("IMPRINT0001")
        },
        "/dev/nvme0n1",
    );
}

#[test]
fn four_k_native_disk_chosen_by_hints() {
    // The golden image's GPT is laid out for 512-byte sectors: written
    // byte for byte onto the 4Kn disk, but not rewritten, and the log says
    // the OS will not see its partitions.
    let image = golden();
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw.zst", filter("zstd", &["-c", "-q"], &image));
    let dir = tempfile::tempdir().unwrap();
    let path = disk_file(dir.path());
    let vm = boot_imprint(
        "4kn",
        &format!(
            "imprint.url={} imprint.disk=serial=FOURK,size>=100M",
            server.guest_url("golden.raw.zst")
        ),
        vec![
            Disk::new(&path)
                .with_serial("FOURK")
                .with_block_sizes(4096, 4096),
        ],
    );
    let result = finish(&vm);
    let ResultLine::Ok { bytes, sha256, .. } = &result else {
        panic!("4kn: deploy failed: {result:?}");
    };
    assert_eq!(*bytes, image.len() as u64);
    assert_eq!(*sha256, sha256_hex(&image));
    let written = std::fs::read(&path).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "the disk does not hold the image"
    );
    assert!(
        vm.console()
            .contains("laid out for 512-byte sectors but /dev/vda has 4096-byte sectors"),
        "the sector size mismatch is reported"
    );
}

#[test]
fn checksum_mismatch_leaves_no_partition_table() {
    let old = gpt_ext4_image(32 << 20, &[("etc/hostname", b"old\n")]);
    let image = golden();
    let body = filter("zstd", &["-c", "-q"], &image);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw.zst", body);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk.raw");
    std::fs::write(&path, &old).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(DISK_SIZE)
        .unwrap();
    assert!(
        partition_table(&path).is_some(),
        "the old disk starts with a table"
    );
    let wrong = sha256_hex(b"not the image");

    let vm = boot_imprint(
        "checksum_mismatch",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda imprint.checksum=sha256:{wrong}",
            server.guest_url("golden.raw.zst")
        ),
        vec![Disk::new(&path)],
    );
    let result = finish(&vm);

    let ResultLine::Error(message) = &result else {
        panic!("expected an error: {result:?}")
    };
    assert!(
        message.starts_with("checksum mismatch for http://10.0.2.2:"),
        "{message}"
    );
    assert!(
        message.contains(&format!("expected sha256:{wrong}, got sha256:")),
        "{message}"
    );
    assert_eq!(partition_table(&path), None, "a partition table survived");
    let blkid = std::process::Command::new("blkid")
        .arg("-p")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        !blkid.status.success(),
        "blkid found: {}",
        String::from_utf8_lossy(&blkid.stdout)
    );
    let after = std::fs::read(&path).unwrap();
    let len = after.len();
    assert!(
        after[..1 << 20].iter().all(|b| *b == 0)
            && after[len - (1 << 20)..].iter().all(|b| *b == 0)
    );
}
