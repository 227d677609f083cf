//! Air-gapped sources in the real initramfs: an image on a second disk's
//! filesystem (ext4 found by label, vfat found by UUID), mounted read-only
//! and left unchanged, and an image embedded in the initramfs, deployed on a
//! machine with no NIC at all.

use std::path::{Path, PathBuf};
use std::process::Command;

use imprint_build::initramfs::{InitramfsExtras, InitramfsInputs, build_with};
use imprint_qemu::{Disk, Vm};
use imprint_vm_tests::{
    Artifacts, ResultLine, boot_imprint, filter, finish, gpt_ext4_image, partition_table,
    repo_root, sha256_hex, test_image,
};

const TARGET_SIZE: u64 = 128 << 20;
const SOURCE_SIZE: u64 = 64 << 20;
const VFAT_SERIAL: &str = "1A2B3C4D";
const VFAT_UUID: &str = "1A2B-3C4D";

/// A real GPT + ext4 image with incompressible content, and its zstd form.
fn golden() -> (Vec<u8>, Vec<u8>) {
    let noise = test_image(4 << 20, 41);
    let image = gpt_ext4_image(
        32 << 20,
        &[("etc/hostname", b"golden\n"), ("var/lib/noise.bin", &noise)],
    );
    let compressed = filter("zstd", &["-q", "-c", "-3"], &image);
    (image, compressed)
}

/// The target disk, full of non-zero bytes so skipped writes show.
fn target_disk(dir: &Path) -> PathBuf {
    let path = dir.join("target.raw");
    std::fs::write(&path, vec![0xa5u8; 8 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(TARGET_SIZE)
        .unwrap();
    path
}

fn run(command: &mut Command) {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?} (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A whole-disk ext4 filesystem labelled IMAGES holding `files`.
fn ext4_source_disk(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let root = dir.join("source-root");
    for (name, contents) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    let image = dir.join("source-ext4.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(SOURCE_SIZE)
        .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "IMAGES", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&image));
    image
}

/// A whole-disk FAT32 filesystem with a known serial holding `files`.
fn vfat_source_disk(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
    let image = dir.join("source-vfat.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(SOURCE_SIZE)
        .unwrap();
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "STICK", "-i", VFAT_SERIAL])
        .arg(&image));
    for (name, contents) in files {
        let file = dir.join(name);
        std::fs::write(&file, contents).unwrap();
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&image)
            .arg(&file)
            .arg(format!("::/{name}")));
    }
    image
}

fn file_sha256(path: &Path) -> String {
    sha256_hex(&std::fs::read(path).unwrap())
}

/// The deploy succeeded and the target holds `image`, with a partition table.
fn assert_deployed(vm: &Vm, result: &ResultLine, target: &Path, image: &[u8]) {
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(*bytes, image.len() as u64);
    assert_eq!(*sha256, sha256_hex(image));
    let written = std::fs::read(target).unwrap();
    // The partition table is rewritten for the larger disk (the backup GPT
    // moves to the end), so compare what lies between.
    let (from, to) = (1 << 20, image.len() - (64 << 10));
    assert!(
        written[from..to] == image[from..to],
        "the target does not hold the image"
    );
    let table = partition_table(target).expect("a partition table on the target");
    assert!(table.contains("label: gpt"), "{table}");
}

#[test]
fn deploys_from_an_ext4_filesystem_found_by_label() {
    let (image, compressed) = golden();
    let dir = tempfile::tempdir().unwrap();
    let target = target_disk(dir.path());
    let source = ext4_source_disk(dir.path(), &[("img/golden.raw.zst", &compressed)]);
    let source_before = file_sha256(&source);

    let vm = boot_imprint(
        "local_ext4_label",
        "imprint.url=file://LABEL=IMAGES/img/golden.raw.zst imprint.disk=/dev/vda",
        vec![Disk::new(&target), Disk::new(&source)],
    );
    let result = finish(&vm);
    assert_deployed(&vm, &result, &target, &image);
    assert_eq!(
        file_sha256(&source),
        source_before,
        "the source disk changed"
    );
    let console = vm.console();
    assert!(
        console.contains("source LABEL=IMAGES is /dev/vdb (ext4 LABEL=IMAGES UUID="),
        "the source is named in the log"
    );
}

#[test]
fn deploys_from_a_vfat_filesystem_found_by_uuid() {
    let (image, compressed) = golden();
    let dir = tempfile::tempdir().unwrap();
    let target = target_disk(dir.path());
    let source = vfat_source_disk(dir.path(), &[("golden.raw.zst", &compressed)]);
    let source_before = file_sha256(&source);

    let vm = boot_imprint(
        "local_vfat_uuid",
        // Lower case on purpose: blkid prints FAT serials upper case.
        &format!(
            "imprint.url=file://UUID={}/golden.raw.zst imprint.disk=/dev/vda",
            VFAT_UUID.to_ascii_lowercase()
        ),
        vec![Disk::new(&target), Disk::new(&source)],
    );
    let result = finish(&vm);
    assert_deployed(&vm, &result, &target, &image);
    assert_eq!(
        file_sha256(&source),
        source_before,
        "the source disk changed"
    );
    assert!(
        vm.console()
            .contains(&format!("vfat LABEL=STICK UUID={VFAT_UUID}")),
        "the source is named in the log"
    );
}

#[test]
fn a_missing_label_lists_the_filesystems_and_leaves_the_target_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = target_disk(dir.path());
    let target_before = file_sha256(&target);
    let source = ext4_source_disk(dir.path(), &[("golden.raw.zst", b"not used")]);

    let vm = boot_imprint(
        "local_missing_label",
        "imprint.url=file://LABEL=NOPE/golden.raw.zst imprint.disk=/dev/vda",
        vec![Disk::new(&target), Disk::new(&source)],
    );
    let result = finish(&vm);
    let ResultLine::Error(message) = &result else {
        panic!("expected an error: {result:?}");
    };
    assert!(
        message.contains(
            "no filesystem labelled NOPE; filesystems found: vdb ext4 LABEL=IMAGES UUID="
        ),
        "{message}"
    );
    assert_eq!(
        file_sha256(&target),
        target_before,
        "the target was touched"
    );
}

/// The issue: the disk holding the image source is never chosen by hints,
/// so `size>=1M` with two disks picks the other one.
#[test]
fn hints_never_choose_the_source_disk() {
    let (image, compressed) = golden();
    let dir = tempfile::tempdir().unwrap();
    let target = target_disk(dir.path());
    let source = ext4_source_disk(dir.path(), &[("golden.raw.zst", &compressed)]);
    let source_before = file_sha256(&source);

    let vm = boot_imprint(
        "local_hints_exclude_source",
        "imprint.url=file://LABEL=IMAGES/golden.raw.zst imprint.disk=size>=1M",
        vec![Disk::new(&target), Disk::new(&source)],
    );
    let result = finish(&vm);
    assert_deployed(&vm, &result, &target, &image);
    assert_eq!(
        file_sha256(&source),
        source_before,
        "the source disk changed"
    );
    assert!(
        vm.console().contains("target disk: vda"),
        "{}",
        vm.console()
    );
}

/// An initramfs like `out/initramfs.img` with `image` embedded, as
/// `imprint-build initramfs --embed-image` makes it.
fn initramfs_with_image(dir: &Path, image: &Path) -> PathBuf {
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
            embed_images: vec![image.to_owned()],
            ca_bundle: None,
            trusted_keys: Vec::new(),
            allow_unsigned: false,
        },
    )
    .unwrap();
    let path = dir.join("initramfs-embedded.img");
    std::fs::write(&path, &built.compressed).unwrap();
    path
}

#[test]
fn deploys_an_image_embedded_in_the_initramfs_without_a_network() {
    let (image, compressed) = golden();
    let dir = tempfile::tempdir().unwrap();
    let target = target_disk(dir.path());
    let embedded = dir.path().join("golden.raw.zst");
    std::fs::write(&embedded, &compressed).unwrap();
    let initramfs = initramfs_with_image(dir.path(), &embedded);

    let artifacts = Artifacts::get();
    // No NIC: the deploy must not need one.
    let vm = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&initramfs)
        .append(
            "console=ttyS0 panic=-1 imprint.on-success=poweroff imprint.on-failure=poweroff \
             imprint.url=file:///images/golden.raw.zst imprint.disk=/dev/vda",
        )
        .memory_mib(1024)
        .disk(Disk::new(&target))
        .console_log(artifacts.log_path("local_embedded"))
        .start()
        .expect("starting qemu");
    let result = finish(&vm);
    assert_deployed(&vm, &result, &target, &image);
    assert!(!vm.console().contains("dhcp"), "no network was brought up");
}
