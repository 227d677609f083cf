//! Signed images in the real initramfs: a minisign key baked into it as
//! `imprint-build initramfs --trusted-key` does, then a signed image
//! deploys and its result line names the key, and an unsigned one is
//! refused with the disk untouched.

use std::path::{Path, PathBuf};
use std::process::Command;

use imprint_build::initramfs::{InitramfsExtras, InitramfsInputs, build_with};
use imprint_qemu::Disk;
use imprint_qemu::http::FixtureServer;
use imprint_vm_tests::{
    Artifacts, ResultLine, boot_imprint_with_initrd, finish, repo_root, sha256_hex, test_image,
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

/// An initramfs like `out/initramfs.img` with `public` baked in, as
/// `imprint-build initramfs --trusted-key FILE` makes it.
fn initramfs_with_key(dir: &Path, public: &Path) -> PathBuf {
    let current = repo_root().join("cache/kernel/current");
    let kernel_root = std::fs::canonicalize(&current)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build first", current.display()));
    let kernel_version = kernel_root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let built = build_with(
        &InitramfsInputs {
            kernel_root,
            kernel_version,
            init_binary: Artifacts::get().out_dir.join("imprint"),
            extra_modules: Vec::new(),
            mtime: 0,
            firmware_root: None,
        },
        &InitramfsExtras {
            trusted_keys: vec![public.to_owned()],
            ..InitramfsExtras::default()
        },
    )
    .unwrap();
    let path = dir.join("initramfs-with-key.img");
    std::fs::write(&path, &built.compressed).unwrap();
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
    let initrd = initramfs_with_key(dir.path(), &public);
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
        line.split(' ')
            .any(|t| t == format!("signed-by=minisign:{key_id}")),
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
