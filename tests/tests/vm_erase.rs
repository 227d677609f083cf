//! Erasing disks in the real initramfs under QEMU (`imprint.erase=`,
//! `imprint.action=erase`), checked from the host with util-linux's own
//! `blkid` and by reading the disk files back.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Vm};
use imprint_vm_tests::{DEPLOY_TIMEOUT, boot_imprint, sha256_hex, test_image};

const MIB: u64 = 1 << 20;

/// The result line of an erase-only boot, after the VM powered off.
fn erase_result(vm: &Vm) -> String {
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    vm.wait_exit(Duration::from_secs(60))
        .expect("the VM powers off after the result");
    let at = line.find("IMPRINT-RESULT:").unwrap();
    line[at..].trim_end().to_owned()
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What `blkid` finds at `offset` of `disk` (low-level probe of every
/// superblock and partition-table type it knows); empty when nothing.
fn blkid_at(disk: &Path, offset: u64) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "export", "-O", &offset.to_string()])
        .arg(disk)
        .output()
        .expect("running blkid (util-linux)");
    // Exit status 2: nothing found.
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An md RAID superblock, version 1.2 (4 KiB into the member), as mdadm
/// writes it (`struct mdp_superblock_1`, linux/raid/md_p.h), with the
/// checksum libblkid verifies.
fn md_superblock_1_2() -> Vec<u8> {
    let mut sb = vec![0u8; 256 + 2 * 2];
    let put32 =
        |sb: &mut Vec<u8>, at: usize, v: u32| sb[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 =
        |sb: &mut Vec<u8>, at: usize, v: u64| sb[at..at + 8].copy_from_slice(&v.to_le_bytes());
    put32(&mut sb, 0, 0xa92b_4efc); // magic
    put32(&mut sb, 4, 1); // major_version
    sb[16..32].copy_from_slice(&[0x5e; 16]); // set_uuid
    sb[32..44].copy_from_slice(b"imprint:md0\0");
    put32(&mut sb, 72, 1); // level: raid1
    put64(&mut sb, 80, 60 * 2048); // size in sectors
    put32(&mut sb, 92, 2); // raid_disks
    put64(&mut sb, 128, 2048); // data_offset
    put64(&mut sb, 136, 60 * 2048); // data_size
    put64(&mut sb, 144, 8); // super_offset: sector 8 (4 KiB)
    sb[168..184].copy_from_slice(&[0x7d; 16]); // device_uuid
    put64(&mut sb, 200, 1); // events
    put32(&mut sb, 220, 2); // max_dev
    sb[258] = 1; // dev_roles[1] = 1
    // calc_sb_1_csum: le32 sum of the superblock and its roles, sb_csum as 0.
    let mut sum: u64 = sb
        .chunks(4)
        .map(|w| u64::from(u32::from_le_bytes(w.try_into().unwrap())))
        .sum();
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    put32(&mut sb, 216, u32::try_from(sum & 0xffff_ffff).unwrap());
    sb
}

/// A 256 MiB disk as a machine leaves it: a GPT, partition 1 an md RAID
/// member, partition 2 ext4 made by mkfs, and data in between.
fn used_disk(dir: &Path) -> PathBuf {
    let disk = dir.join("used.raw");
    imprint_qemu::create_raw_disk(&disk, 256 * MIB).unwrap();
    let path = disk.to_str().unwrap();
    run(
        "sgdisk",
        &["-n1:2048:+64M", "-t1:fd00", "-n2:0:0", "-t2:8300", path],
    );
    imprint_qemu::write_disk_at(&disk, MIB + 4096, &md_superblock_1_2()).unwrap();
    let ext4_at = (2048 + 64 * 2048) * 512;
    let ext4_kib = (256 * MIB - ext4_at - MIB) / 1024;
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-E",
            &format!("offset={ext4_at}"),
            path,
            &format!("{ext4_kib}k"),
        ],
    );
    imprint_qemu::fill_disk(&disk, 30 * MIB, MIB, 0xd7).unwrap();
    disk
}

#[test]
fn metadata_erase_leaves_nothing_blkid_can_find() {
    let dir = tempfile::tempdir().unwrap();
    let disk = used_disk(dir.path());
    let ext4_at = (2048 + 64 * 2048) * 512;
    // The fixture is real to util-linux before the erase.
    assert!(blkid_at(&disk, 0).contains("PTTYPE=gpt"));
    assert!(
        blkid_at(&disk, MIB).contains("TYPE=linux_raid_member"),
        "{}",
        blkid_at(&disk, MIB)
    );
    assert!(blkid_at(&disk, ext4_at).contains("TYPE=ext4"));

    let vm = boot_imprint(
        "erase_metadata",
        "imprint.action=erase imprint.erase=metadata imprint.disk=/dev/vda",
        vec![Disk::new(&disk)],
    );
    let line = erase_result(&vm);
    assert!(
        line.starts_with("IMPRINT-RESULT: ok action=erase seconds=")
            && line.contains(" erased=vda:metadata:")
            && line.ends_with(":verified"),
        "{line}\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        console.contains("erase plan (1 disk(s), nothing erased yet)"),
        "{console}"
    );
    for offset in [0, MIB, ext4_at] {
        assert_eq!(
            blkid_at(&disk, offset),
            "",
            "blkid still finds something at {offset}"
        );
    }
    let wipefs = run("wipefs", &["--no-act", "--all", disk.to_str().unwrap()]);
    assert_eq!(wipefs.trim(), "", "wipefs still finds signatures");
    // Only signatures went: data in the middle of partition 1 is intact.
    let middle = imprint_qemu::read_disk_at(&disk, 30 * MIB, 1 << 20).unwrap();
    assert!(middle.iter().all(|&b| b == 0xd7));
}

#[test]
fn zero_erase_reports_progress_and_reads_back_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("full.raw");
    imprint_qemu::create_raw_disk(&disk, 1536 * MIB).unwrap();
    imprint_qemu::fill_disk(&disk, 0, 1536 * MIB, 0x5a).unwrap();

    let vm = boot_imprint(
        "erase_zero",
        "imprint.action=erase imprint.erase=zero imprint.erase-disks=all",
        vec![Disk::new(&disk)],
    );
    let line = erase_result(&vm);
    assert!(
        line.contains(" erased=vda:zero:") && line.ends_with(":verified"),
        "{line}\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        console.contains("/dev/vda: zeroed 1.5 GiB of 1.5 GiB (100%)"),
        "no progress lines: {console}"
    );
    let data = std::fs::read(&disk).unwrap();
    assert!(data.iter().all(|&b| b == 0), "a byte was not zeroed");
}

#[test]
fn discard_erase_unmaps_the_disk_on_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("allocated.raw");
    imprint_qemu::create_raw_disk(&disk, 256 * MIB).unwrap();
    imprint_qemu::fill_disk(&disk, 0, 256 * MIB, 0x3c).unwrap();
    let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    assert!(allocated(&disk) >= 250 * MIB);

    let vm = boot_imprint(
        "erase_discard",
        "imprint.action=erase imprint.erase=discard imprint.disk=/dev/vda",
        vec![Disk::new(&disk).with_discard()],
    );
    let line = erase_result(&vm);
    // virtio-blk does not promise zeros after discard: the signatures are
    // zeroed on top, and the result says the rest was not verified.
    assert!(
        line.contains(" erased=vda:discard+metadata:") && line.ends_with(":partly-verified"),
        "{line}\n{}",
        vm.console()
    );
    // The discards reached the file: its blocks are gone but for the
    // zeroed metadata ranges.
    assert!(
        allocated(&disk) < 32 * MIB,
        "{} bytes still allocated",
        allocated(&disk)
    );
    let data = std::fs::read(&disk).unwrap();
    assert!(data.iter().all(|&b| b == 0));
}

#[test]
fn erase_then_deploy_in_one_boot() {
    let dir = tempfile::tempdir().unwrap();
    let disk = used_disk(dir.path());
    let image = test_image(8 << 20, 7);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());

    let vm = boot_imprint(
        "erase_then_deploy",
        &format!(
            "imprint.erase=metadata imprint.url={} imprint.disk=/dev/vda",
            server.guest_url("golden.raw")
        ),
        vec![Disk::new(&disk)],
    );
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(
        line.contains(&format!(
            "ok bytes={} sha256={}",
            image.len(),
            sha256_hex(&image)
        )) && line.contains(" erased=vda:metadata:"),
        "{line}\n{}",
        vm.console()
    );
    // The erase ran first: the plan precedes the write on the console.
    let console = vm.console();
    let plan = console.find("erase plan").expect("the plan is printed");
    let written = console.find("IMPRINT-RESULT").unwrap();
    assert!(plan < written);
    let data = std::fs::read(&disk).unwrap();
    assert!(data[..image.len()] == image[..]);
    // The old ext4 (past the image) is gone; the GPT backup too.
    let ext4_at = (2048 + 64 * 2048) * 512;
    assert_eq!(blkid_at(&disk, ext4_at), "");
    assert!(data[data.len() - (1 << 20)..].iter().all(|&b| b == 0));
}

/// `secure` on QEMU's NVMe controller: imprint asks the controller what it
/// can erase (Identify Controller's SANICAP, FNA; QEMU 7.2 has Format NVM
/// but no Sanitize), plans Format NVM with a Secure Erase Setting, sends it
/// through NVME_IOCTL_ADMIN_CMD, and reads the disk back.
#[test]
fn secure_erase_formats_a_qemu_nvme_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("nvme.raw");
    imprint_qemu::create_raw_disk(&disk, 256 * MIB).unwrap();
    imprint_qemu::fill_disk(&disk, 0, 256 * MIB, 0x6b).unwrap();

    let vm = boot_imprint(
        "erase_secure_nvme",
        "imprint.action=erase imprint.erase=secure imprint.disk=/dev/nvme0n1",
        vec![Disk::new(&disk).with_interface(imprint_qemu::DiskInterface::Nvme)],
    );
    let line = erase_result(&vm);
    let console = vm.console();
    assert!(
        line.contains(" erased=nvme0n1:nvme-format-"),
        "{line}\n{console}"
    );
    assert!(console.contains("secure -> NVMe Format NVM"), "{console}");
    // What the controller did reached the file: nothing of the old pattern.
    let data = std::fs::read(&disk).unwrap();
    assert!(
        !data.chunks(1 << 20).any(|c| c.contains(&0x6b)),
        "old data survived the format"
    );
}

/// `secure` on a disk with no erase command imprint can send (virtio) is a
/// named error before anything is touched, never a weaker erase.
#[test]
fn secure_erase_of_a_virtio_disk_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("virtio.raw");
    imprint_qemu::create_raw_disk(&disk, 64 * MIB).unwrap();
    imprint_qemu::fill_disk(&disk, 0, 64 * MIB, 0x42).unwrap();

    let vm = boot_imprint(
        "erase_secure_virtio",
        "imprint.action=erase imprint.erase=secure imprint.disk=/dev/vda",
        vec![Disk::new(&disk)],
    );
    let line = erase_result(&vm);
    assert!(
        line.starts_with("IMPRINT-RESULT: error: imprint.erase=secure: /dev/vda"),
        "{line}\n{}",
        vm.console()
    );
    let data = std::fs::read(&disk).unwrap();
    assert!(data.iter().all(|&b| b == 0x42), "the disk was touched");
}

/// `secure` on QEMU's AHCI disk goes through the real SG_IO path: libata
/// translates ATA PASS-THROUGH (16) IDENTIFY DEVICE for the emulated
/// drive, which has neither the Security nor the Sanitize feature set, so
/// the plan refuses it by name before anything is touched.
#[test]
fn secure_erase_of_an_ata_disk_without_security_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("ahci.raw");
    imprint_qemu::create_raw_disk(&disk, 64 * MIB).unwrap();
    imprint_qemu::fill_disk(&disk, 0, 64 * MIB, 0x42).unwrap();

    let vm = boot_imprint(
        "erase_secure_ahci",
        "imprint.action=erase imprint.erase=secure imprint.disk=/dev/sda",
        vec![Disk::new(&disk).with_interface(imprint_qemu::DiskInterface::Ahci)],
    );
    let line = erase_result(&vm);
    // The reason comes from the drive's own IDENTIFY data, read through SG_IO.
    assert!(
        line.starts_with("IMPRINT-RESULT: error: imprint.erase=secure: /dev/sda")
            && line.contains("supports neither the ATA security nor the sanitize feature set"),
        "{line}\n{}",
        vm.console()
    );
    let data = std::fs::read(&disk).unwrap();
    assert!(data.iter().all(|&b| b == 0x42), "the disk was touched");
}
