//! The purpose-built kernel (`kernel-config/`, `scripts/build-kernel`): the
//! size budget of its initramfs without modules, and a real deploy booting
//! it. The kernel build is slow and not part of CI, so the deploy is
//! `#[ignore]`d; the budget is checked on every run, against an initramfs
//! built here when `out/custom/` does not exist.

use std::path::{Path, PathBuf};

use imprint::modules::ModuleIndex;
use imprint_build::builtin::modinfo_for_modules;
use imprint_build::drivers::boot_driver_names;
use imprint_build::firmware::CACHE_FIRMWARE_ROOT;
use imprint_build::initramfs::{self, BuiltinInputs, InitramfsExtras};
use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, DiskInterface, Nic, Vm};
use imprint_vm_tests::{ResultLine, finish, repo_root, sha256_hex, test_image};

/// The compressed initramfs of the purpose-built kernel (imprint and the
/// firmware of the built-in drivers, no modules) must stay under this.
/// It was 5 MiB; signed images (rPGP brings every OpenPGP algorithm: 0.95
/// MB compressed), the OCI, qcow2 and parallel-range sources took it to
/// 5.9 MiB, so the budget is 6.5 MiB until OpenPGP is made optional.
const CUSTOM_INITRAMFS_BUDGET: u64 = 13 << 19;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

fn existing(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {how}", path.display());
    path
}

/// The initramfs `scripts/build --kernel custom` would make, without the
/// kernel build: the firmware set comes from what the distribution kernel's
/// modules of `build/src/drivers.rs` declare (the fragment builds in the
/// same drivers), put through the same `--builtin-modinfo` path.
fn predicted_custom_initramfs() -> initramfs::Initramfs {
    let root = repo_root();
    let init = existing(root.join("out/imprint"), "run scripts/build first");
    let kernel_root = existing(
        root.join("cache/kernel/current"),
        "run scripts/fetch-kernel",
    )
    .canonicalize()
    .unwrap();
    let firmware_root = existing(root.join(CACHE_FIRMWARE_ROOT), "run scripts/fetch-firmware");
    let kver = kernel_root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let modules_dir = initramfs::modules_dir(&kernel_root, &kver).unwrap();
    let index = ModuleIndex::load(&modules_dir).unwrap();
    let closure = index.resolve(&boot_driver_names()).unwrap();
    let mut modinfo = modinfo_for_modules(&modules_dir, &closure.modules).unwrap();
    // Debian already builds these in (af_packet): built in here too.
    for name in &closure.builtin {
        modinfo.extend_from_slice(format!("{name}.file=builtin/{name}\0").as_bytes());
    }
    let dir = tempfile::tempdir().unwrap();
    let modinfo_path = dir.path().join("modules.builtin.modinfo");
    std::fs::write(&modinfo_path, modinfo).unwrap();
    initramfs::build_builtin(
        &BuiltinInputs {
            builtin_modinfo: modinfo_path,
            kernel_version: "predicted".to_owned(),
            init_binary: init,
            mtime: 0,
            firmware_root: Some(firmware_root),
        },
        &InitramfsExtras::default(),
    )
    .unwrap()
}

#[test]
fn custom_initramfs_fits_its_size_budget() {
    let predicted = predicted_custom_initramfs();
    let plan = predicted.firmware.as_ref().unwrap();
    // Not vacuous: the firmware of bnx2x, ice, qed, cxgb4... is in there.
    assert!(
        plan.files.keys().any(|path| path.starts_with("bnx2x/"))
            && plan.files.contains_key("intel/ice/ddp/ice.pkg"),
        "the predicted initramfs lacks the NIC firmware: {:?}",
        plan.files.keys().collect::<Vec<_>>()
    );
    assert!(predicted.modules.is_empty());
    let size = predicted.compressed.len() as u64;
    eprintln!(
        "predicted custom initramfs: {size} bytes ({:.2} MiB), firmware {} files, {} bytes",
        mib(size),
        plan.files.len(),
        plan.total_bytes()
    );
    assert!(
        size <= CUSTOM_INITRAMFS_BUDGET,
        "the initramfs for the purpose-built kernel would be {size} bytes ({:.1} MiB), over its \
         budget of {:.1} MiB: drop firmware or drivers from build/src/drivers.rs, or raise the \
         budget with a reason",
        mib(size),
        mib(CUSTOM_INITRAMFS_BUDGET)
    );

    // The real one too, when scripts/build --kernel custom has made it.
    let built = repo_root().join("out/custom/initramfs.img");
    if let Ok(metadata) = std::fs::metadata(&built) {
        assert!(
            metadata.len() <= CUSTOM_INITRAMFS_BUDGET,
            "{} is {} bytes ({:.1} MiB), over its budget of {:.1} MiB: drop firmware or drivers, \
             or raise the budget with a reason",
            built.display(),
            metadata.len(),
            mib(metadata.len()),
            mib(CUSTOM_INITRAMFS_BUDGET)
        );
    }
}

fn disk_file(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::write(&path, vec![0xa5; 80 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size)
        .unwrap();
    path
}

/// Boots `bzimage` (as a PVH vmlinux) with `initrd`, deploys a 64 MiB raw
/// image over HTTP onto an NVMe disk, checks the disk and returns the
/// console and the `IMPRINT-TIMELINE:` line.
fn deploy_to_nvme(name: &str, bzimage: &Path, initrd: &Path) -> (String, String) {
    let root = repo_root();
    let kernel = imprint_qemu::fast_boot_kernel(bzimage, &root.join("target/vm-cache"))
        .unwrap_or_else(|e| panic!("no PVH vmlinux in {}: {e:#}", bzimage.display()));
    let image = test_image(64 << 20, 8);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path(), 256 << 20);
    let logs = root.join("target/vm-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let vm = Vm::builder()
        .kernel(&kernel)
        .initrd(initrd)
        .append(format!(
            "console=ttyS0 panic=-1 imprint.on-success=poweroff imprint.on-failure=poweroff \
             imprint.url={} imprint.disk=/dev/nvme0n1",
            server.guest_url("golden.raw")
        ))
        .memory_mib(1024)
        .nic(Nic::user())
        .disk(Disk::new(&disk).with_interface(DiskInterface::Nvme))
        .console_log(logs.join(format!("{name}.log")))
        .start()
        .expect("starting qemu");
    let result = finish(&vm);
    let console = vm.console();
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{console}");
    };
    assert_eq!(bytes, image.len() as u64);
    assert_eq!(sha256, sha256_hex(&image));
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "disk differs from the image"
    );
    let timeline = console
        .lines()
        .find_map(|line| {
            line.split_once("IMPRINT-TIMELINE:")
                .map(|(_, rest)| rest.trim())
        })
        .unwrap_or_else(|| panic!("no IMPRINT-TIMELINE line:\n{console}"))
        .to_owned();
    eprintln!(
        "{name}: initramfs {} bytes; IMPRINT-TIMELINE: {timeline}",
        std::fs::metadata(initrd).unwrap().len()
    );
    (console, timeline)
}

/// A raw image over HTTP onto an NVMe disk, booting out/custom/ (run
/// scripts/build-kernel and scripts/build --kernel custom first; then
/// `cargo test -p imprint-vm-tests --test custom_kernel -- --ignored
/// --nocapture` prints the boot timeline).
#[test]
#[ignore = "needs scripts/build-kernel (slow, not part of CI)"]
fn custom_kernel_deploys_with_no_modules() {
    let root = repo_root();
    let how = "run scripts/build-kernel and scripts/build --kernel custom first";
    let bzimage = existing(root.join("out/custom/vmlinuz"), how);
    let initrd = existing(root.join("out/custom/initramfs.img"), how);
    let (console, _) = deploy_to_nvme("custom_kernel", &bzimage, &initrd);
    assert!(
        !console.contains("imprint: loaded "),
        "a module was loaded:\n{console}"
    );
}

/// The same deploy with the distribution kernel and its initramfs
/// (`out/vmlinuz`, `out/initramfs.img`), for comparing the timelines on the
/// same machine in the same minutes.
#[test]
#[ignore = "the comparison for custom_kernel_deploys_with_no_modules"]
fn distribution_kernel_same_deploy() {
    let root = repo_root();
    let bzimage = existing(root.join("out/vmlinuz"), "run scripts/build first");
    let initrd = existing(root.join("out/initramfs.img"), "run scripts/build first");
    let (console, _) = deploy_to_nvme("distribution_kernel", &bzimage, &initrd);
    assert!(console.contains("imprint: loaded nvme"), "{console}");
}
