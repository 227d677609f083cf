//! The walking skeleton end to end: the real initramfs boots under QEMU,
//! loads its drivers, gets DHCP from QEMU's user network, fetches an image
//! from the host and writes it onto a virtio disk.

use std::path::{Path, PathBuf};

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Vm};
use imprint_vm_tests::{ResultLine, boot_imprint, finish, sha256_hex, test_image};

fn boot(name: &str, params: &str, disk: &Path) -> Vm {
    boot_imprint(name, params, vec![Disk::new(disk)])
}

fn disk_file(dir: &Path, size: u64, prefill: &[u8]) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::write(&path, prefill).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size)
        .unwrap();
    path
}

#[test]
fn deploys_raw_image_over_http_to_virtio_disk() {
    let image = test_image(64 << 20, 1);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    // The disk starts full of non-zero bytes, so a skipped write would show.
    let disk = disk_file(dir.path(), 256 << 20, &vec![0xa5; 80 << 20]);

    let vm = boot(
        "raw_virtio",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda",
            server.guest_url("golden.raw")
        ),
        &disk,
    );
    let result = finish(&vm);

    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(bytes, image.len() as u64);
    assert_eq!(sha256, sha256_hex(&image), "reported sha256 is the image's");
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "disk prefix differs from the image"
    );
    assert!(
        written[image.len()..80 << 20].iter().all(|b| *b == 0xa5),
        "bytes past the image were touched"
    );
    assert_eq!(written.len(), 256 << 20);
    let console = vm.console();
    assert!(
        console.contains("imprint: loaded virtio_blk"),
        "coldplug loaded the disk driver"
    );
    assert!(console.contains("dhcp"), "the lease is logged");
    assert!(
        !console.contains("rootfs tools:"),
        "the base initramfs has no mkfs tools"
    );
}

/// The tools initrd of root-filesystem deploys, concatenated after the
/// base as iPXE's second `initrd` line does: the kernel unpacks both into
/// one root, PID 1 names the tools it finds, and a deploy still works.
#[test]
fn the_tools_initrd_after_the_base_gives_pid1_the_mkfs_tools() {
    let artifacts = imprint_vm_tests::Artifacts::get();
    let tools = artifacts.out_dir.join("rootfs-tools.img");
    assert!(
        tools.exists(),
        "{} is missing: run scripts/build",
        tools.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let both = dir.path().join("initrd.img");
    let mut bytes = std::fs::read(&artifacts.initramfs).unwrap();
    bytes.extend(std::fs::read(&tools).unwrap());
    std::fs::write(&both, bytes).unwrap();

    let image = test_image(8 << 20, 3);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let disk = disk_file(dir.path(), 64 << 20, &[]);
    let vm = imprint_vm_tests::boot_imprint_with_initrd(
        "tools_initrd",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda",
            server.guest_url("golden.raw")
        ),
        vec![Disk::new(&disk)],
        &both,
    );
    let result = finish(&vm);
    let ResultLine::Ok { sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(sha256, sha256_hex(&image));
    assert!(
        vm.console()
            .contains("rootfs tools: mke2fs mkfs.xfs mkfs.fat mkswap"),
        "{}",
        vm.console()
    );
}

#[test]
fn http_404_names_url_and_status_and_leaves_disk_untouched() {
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let before = test_image(1 << 20, 2);
    let disk = disk_file(dir.path(), 256 << 20, &before);
    let url = server.guest_url("missing.raw");

    let vm = boot(
        "http_404",
        &format!("imprint.url={url} imprint.disk=/dev/vda"),
        &disk,
    );
    let result = finish(&vm);

    assert_eq!(
        result,
        ResultLine::Error(format!("GET {url}: HTTP 404 Not Found"))
    );
    let after = std::fs::read(&disk).unwrap();
    assert!(after[..before.len()] == before[..], "the disk was written");
    assert!(after[before.len()..].iter().all(|b| *b == 0));
}

#[test]
fn missing_disk_lists_the_disks_that_exist() {
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", vec![1; 4096]);
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path(), 256 << 20, &[]);

    let vm = boot(
        "missing_disk",
        &format!(
            "imprint.url={} imprint.disk=/dev/vdz",
            server.guest_url("golden.raw")
        ),
        &disk,
    );
    let result = finish(&vm);

    let ResultLine::Error(message) = &result else {
        panic!("expected an error, got {result:?}")
    };
    assert!(
        message.starts_with(
            "imprint.disk= on the kernel command line: disk /dev/vdz not found; disks present: vda (256.0 MiB"
        ),
        "{message}"
    );
    assert!(
        std::fs::read(&disk).unwrap().iter().all(|b| *b == 0),
        "no disk was written"
    );
}

#[test]
fn unknown_parameter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path(), 16 << 20, &[]);
    let vm = boot(
        "unknown_param",
        "imprint.url=http://10.0.2.2:1/x imprint.dsik=/dev/vda",
        &disk,
    );
    let result = finish(&vm);
    let ResultLine::Error(message) = &result else {
        panic!("expected an error, got {result:?}")
    };
    assert!(
        message.starts_with("unknown parameter imprint.dsik; known parameters: url, disk"),
        "{message}"
    );
}

/// DRP's templates put `kernel-console` after `--`, where the kernel does
/// not read it: the kernel's console is then the screen (`tty0`), and only
/// PID 1 can put the deploy on the serial line an operator watches.
#[test]
fn console_named_after_the_dashes_gets_the_deploy() {
    let image = test_image(4 << 20, 3);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path(), 64 << 20, &[]);
    let artifacts = imprint_vm_tests::Artifacts::get();
    // The kernel's own messages go to a second serial port (ttyS1) through
    // its early console, kept after boot: not a `console=`, so the kernel's
    // console is still the screen, and a boot that never reaches PID 1 can
    // still be read afterwards.
    let kernel_log = artifacts.log_path("console_after_dashes-kernel");
    let _ = std::fs::remove_file(&kernel_log);
    let vm = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&artifacts.initramfs)
        .append(format!(
            "panic=-1 earlyprintk=serial,ttyS1,115200 keep_bootcon \
             imprint.on-success=poweroff imprint.on-failure=poweroff \
             imprint.url={} imprint.disk=/dev/vda -- console=ttyS0,115200",
            server.guest_url("golden.raw")
        ))
        .args([
            "-serial".to_owned(),
            format!("file:{}", kernel_log.display()),
        ])
        .memory_mib(1024)
        .nic(imprint_qemu::Nic::user())
        .disk(Disk::new(&disk))
        .console_log(artifacts.log_path("console_after_dashes"))
        .start()
        .expect("starting qemu");
    let line = vm
        .expect("IMPRINT-RESULT:", imprint_vm_tests::DEPLOY_TIMEOUT)
        .unwrap_or_else(|e| {
            let kernel = std::fs::read_to_string(&kernel_log).unwrap_or_default();
            let tail: Vec<&str> = kernel.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "no result line on ttyS0: {e:#}\nthe kernel's last lines ({}):\n{}",
                kernel_log.display(),
                tail.join("\n")
            );
        });
    vm.wait_exit(std::time::Duration::from_secs(60))
        .expect("the VM powers off after the result");
    let result = ResultLine::parse(&line);
    assert!(
        matches!(result, ResultLine::Ok { .. }),
        "{result:?}\n{}",
        vm.console()
    );
    let console = vm.console();
    assert!(
        console.contains("imprint: also writing to console ttyS0"),
        "{console}"
    );
    assert!(console.contains("IMPRINT-TIMELINE:"), "{console}");
    // The kernel itself stayed on the screen: its boot messages are not on
    // the serial line, so everything there came from PID 1.
    assert!(!console.contains("Linux version"), "{console}");
}
