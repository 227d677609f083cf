//! The tools initrd is complete: unpacked into an empty directory, each
//! tool runs there (chroot, so only what the initrd holds can be loaded)
//! and makes a real filesystem that the host's tools then recognise.
//! Needs root for chroot, as CI has.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::process::Command;

use imprint_build::cpio::read_archive;
use imprint_build::{initramfs, tools};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;

/// Unpacks the compressed initrd the way the kernel would into `dir`.
fn unpack(compressed: &[u8], dir: &Path) {
    let cpio = zstd::decode_all(compressed).unwrap();
    for member in read_archive(&cpio).unwrap() {
        let path = dir.join(&member.name);
        match member.mode & S_IFMT {
            S_IFDIR => std::fs::create_dir_all(&path).unwrap(),
            S_IFREG => {
                std::fs::write(&path, &member.data).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(member.mode & 0o7777),
                )
                .unwrap();
            }
            S_IFLNK => symlink(String::from_utf8(member.data).unwrap(), &path).unwrap(),
            other => panic!("unexpected member type {other:o} for {}", member.name),
        }
    }
}

fn run_in(dir: &Path, command: &[&str]) {
    let out = Command::new("chroot")
        .arg(dir)
        .args(command)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command:?} in the tools initrd: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blkid_type(image: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn every_tool_runs_from_the_initrd_alone() {
    let archive = tools::archive(Path::new("/")).unwrap();
    let compressed = initramfs::compress(&archive.to_bytes(0).unwrap()).unwrap();
    // Small enough to fetch beside the base initramfs without a second thought.
    assert!(compressed.len() < 4 << 20, "{} bytes", compressed.len());
    let dir = tempfile::tempdir().unwrap();
    unpack(&compressed, dir.path());
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    for (name, size, command, expect) in [
        (
            "ext4.img",
            64u64 << 20,
            vec!["/usr/sbin/mkfs.ext4", "-q", "-F", "/tmp/ext4.img"],
            "ext4",
        ),
        (
            "xfs.img",
            320 << 20,
            vec!["/usr/sbin/mkfs.xfs", "-q", "/tmp/xfs.img"],
            "xfs",
        ),
        (
            "fat.img",
            64 << 20,
            vec!["/usr/sbin/mkfs.vfat", "-F", "32", "/tmp/fat.img"],
            "vfat",
        ),
        (
            "swap.img",
            16 << 20,
            vec!["/usr/sbin/mkswap", "/tmp/swap.img"],
            "swap",
        ),
    ] {
        let image = dir.path().join("tmp").join(name);
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        run_in(dir.path(), &command);
        assert_eq!(blkid_type(&image), expect, "{command:?}");
    }
}
