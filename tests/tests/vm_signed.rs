//! Signed images in the real initramfs: a minisign key baked into it (a
//! second cpio carrying `etc/imprint/trusted-keys/`, concatenated after the
//! base initramfs as a boot loader given two initrds does; the kernel
//! unpacks both into one rootfs), then a signed image deploys and its
//! result line names the key, and an unsigned one is refused with the disk
//! untouched.

use std::path::{Path, PathBuf};
use std::process::Command;

use imprint_build::cpio::CpioArchive;
use imprint_qemu::Disk;
use imprint_qemu::http::FixtureServer;
use imprint_vm_tests::{
    Artifacts, ResultLine, boot_imprint_with_initrd, finish, sha256_hex, test_image,
};

const DISK: usize = 64 << 20;

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (scripts/setup installs it)"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minisign key pair made by `minisign -G`; the public key file and
/// minisign's own name for the key (its comment's key ID).
fn minisign_key(dir: &Path) -> (PathBuf, String) {
    let public = dir.join("release.pub");
    run(Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(dir.join("release.key")));
    let text = std::fs::read_to_string(&public).unwrap();
    let id = text
        .lines()
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    (public, id)
}

/// The base initramfs with a second, uncompressed cpio after it holding
/// `public` as a baked key. The kernel skips the zero padding between
/// archives and needs each cpio header 4-byte aligned.
fn initrd_with_key(dir: &Path, public: &Path) -> PathBuf {
    let mut bytes = std::fs::read(&Artifacts::get().initramfs).unwrap();
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let mut keys = CpioArchive::new();
    keys.add_file(
        "etc/imprint/trusted-keys/00-release.pub",
        0o644,
        std::fs::read(public).unwrap(),
    )
    .unwrap();
    bytes.extend(keys.to_bytes(0).unwrap());
    let path = dir.join("initrd-with-key.img");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn target(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("target.raw");
    let before = vec![0xa5u8; DISK];
    std::fs::write(&path, &before).unwrap();
    (path, before)
}

#[test]
fn a_baked_key_admits_the_signed_image_and_refuses_an_unsigned_one() {
    let dir = tempfile::tempdir().unwrap();
    let (public, key_id) = minisign_key(dir.path());
    let initrd = initrd_with_key(dir.path(), &public);
    let image = test_image(24 << 20, 17);
    let image_path = dir.path().join("golden.raw");
    std::fs::write(&image_path, &image).unwrap();
    run(Command::new("minisign")
        .args(["-S", "-s"])
        .arg(dir.path().join("release.key"))
        .arg("-m")
        .arg(&image_path));
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    server.add_file(
        "golden.raw.minisig",
        std::fs::read(dir.path().join("golden.raw.minisig")).unwrap(),
    );

    // Signed: written, and the result line says by which key.
    let (disk, _) = target(dir.path());
    let vm = boot_imprint_with_initrd(
        "signed_baked_key",
        &format!(
            "imprint.url={} imprint.signature={} imprint.disk=/dev/vda",
            server.guest_url("golden.raw"),
            server.guest_url("golden.raw.minisig")
        ),
        vec![Disk::new(&disk)],
        &initrd,
    );
    let result = finish(&vm);
    let ResultLine::Ok { sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(sha256, sha256_hex(&image));
    let line = vm
        .console()
        .lines()
        .find(|l| l.contains("IMPRINT-RESULT: ok"))
        .unwrap()
        .trim_end()
        .to_owned();
    assert!(
        line.ends_with(&format!(" signed-by=minisign:{key_id}")),
        "{line}"
    );
    assert!(
        vm.console()
            .contains(&format!("the image is signed by minisign key {key_id}")),
        "{}",
        vm.console()
    );
    assert!(std::fs::read(&disk).unwrap()[..image.len()] == image[..]);

    // Unsigned, same initramfs: refused before anything is written.
    let (disk, before) = target(dir.path());
    let vm = boot_imprint_with_initrd(
        "signed_baked_key_unsigned",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda",
            server.guest_url("golden.raw")
        ),
        vec![Disk::new(&disk)],
        &initrd,
    );
    let result = finish(&vm);
    let ResultLine::Error(message) = result else {
        panic!("an unsigned image was written: {result:?}");
    };
    assert!(
        message.starts_with(&format!(
            "the image is not signed, but keys are trusted (minisign:{key_id})"
        )),
        "{message}"
    );
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "the disk was touched"
    );
}
