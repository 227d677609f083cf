//! Root-filesystem deploys (DRP's `tgz`, RackN's `tar-zst`) in a VM: PID 1
//! with the tools initrd partitions an empty disk by the default layout,
//! makes the filesystems, unpacks the tarball, writes fstab and installs
//! the image's own bootloader; then the disk boots alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, DiskInterface, Vm};
use imprint_vm_tests::{Artifacts, ResultLine, boot_imprint_with_initrd, finish, sha256_hex};

/// A blank disk of `size` bytes (sparse).
fn blank_disk(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::File::create(&path).unwrap().set_len(size).unwrap();
    path
}

/// imprint's initramfs with the tools initrd after it, as a boot loader's
/// second `initrd` line loads them.
fn initrd_with_tools(dir: &Path) -> PathBuf {
    let artifacts = Artifacts::get();
    let tools = artifacts.out_dir.join("rootfs-tools.img");
    let mut bytes = std::fs::read(&artifacts.initramfs).unwrap();
    bytes.extend(
        std::fs::read(&tools)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build)", tools.display())),
    );
    let both = dir.join("initrd-with-tools.img");
    std::fs::write(&both, bytes).unwrap();
    both
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (scripts/setup installs it)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The disk's partitions as sfdisk reads them: (start, size) in sectors,
/// type GUID, name.
fn partitions(disk: &Path) -> Vec<(u64, u64, String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&run("sfdisk", &["--json", disk.to_str().unwrap()])).unwrap();
    let table = &json["partitiontable"];
    assert_eq!(table["label"], "gpt", "{json}");
    table["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["start"].as_u64().unwrap(),
                p["size"].as_u64().unwrap(),
                p["type"].as_str().unwrap().to_ascii_lowercase(),
                p["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Copies sectors `start..start+size` of `disk` into their own file.
fn extract(disk: &Path, start: u64, size: u64, to: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut from = std::fs::File::open(disk).unwrap();
    from.seek(SeekFrom::Start(start * 512)).unwrap();
    let mut out = std::fs::File::create(to).unwrap();
    std::io::copy(&mut from.take(size * 512), &mut out).unwrap();
}

fn debugfs(fs: &Path, request: &str) -> String {
    run("debugfs", &["-R", request, fs.to_str().unwrap()])
}

const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
const LINUX: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// A small tree with what the unpacker must keep: modes, setuid, a
/// symlink, a hard link, an owner, a file under `/boot/efi` (the ESP is
/// mounted there before the unpack), and an fstab to be replaced.
fn small_tarball(dir: &Path) -> Vec<u8> {
    let tree = dir.join("tree");
    for d in ["etc", "usr/bin", "boot/efi/EFI/test", "home/user"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(
        tree.join("etc/os-release"),
        "ID=test\nPRETTY_NAME=\"Test rootfs\"\n",
    )
    .unwrap();
    std::fs::write(tree.join("etc/fstab"), "# the image's own fstab\n").unwrap();
    std::fs::write(tree.join("usr/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    std::fs::write(tree.join("usr/bin/su"), "setuid\n").unwrap();
    std::fs::write(tree.join("boot/efi/EFI/test/note.txt"), "on the ESP\n").unwrap();
    std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
    std::fs::hard_link(tree.join("usr/bin/hello"), tree.join("usr/bin/hello-again")).unwrap();
    run(
        "chmod",
        &["4755", tree.join("usr/bin/su").to_str().unwrap()],
    );
    run(
        "chmod",
        &["0755", tree.join("usr/bin/hello").to_str().unwrap()],
    );
    run(
        "chown",
        &["-R", "1000:1000", tree.join("home/user").to_str().unwrap()],
    );
    let tgz = dir.join("root.tgz");
    run(
        "tar",
        &[
            "--numeric-owner",
            "-C",
            tree.to_str().unwrap(),
            "-czf",
            tgz.to_str().unwrap(),
            ".",
        ],
    );
    std::fs::read(tgz).unwrap()
}

/// A tarball of `files` (path, contents), made by GNU tar, `args` added
/// (e.g. `-z`).
fn overlay_tarball(dir: &Path, name: &str, files: &[(&str, &str)], args: &[&str]) -> Vec<u8> {
    let tree = dir.join(format!("{name}.tree"));
    for (path, contents) in files {
        let path = tree.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }
    let out = dir.join(name);
    let mut all = vec![
        "--numeric-owner",
        "-C",
        tree.to_str().unwrap(),
        "-cf",
        out.to_str().unwrap(),
    ];
    all.extend(args);
    all.push(".");
    run("tar", &all);
    std::fs::read(out).unwrap()
}

#[test]
fn a_tgz_lands_on_the_default_layout_with_fstab_and_nothing_else_lost() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = small_tarball(dir.path());
    let server = FixtureServer::start().unwrap();
    server.add_file("root.tgz", tgz.clone());
    // Two overlays (DRP's additional-tarballs), unpacked by index: the
    // second replaces a file of the first and one of the image.
    let first = overlay_tarball(
        dir.path(),
        "first.tgz",
        &[("etc/motd", "first\n"), ("etc/first", "1\n")],
        &["-z"],
    );
    let second = overlay_tarball(
        dir.path(),
        "second.tar",
        &[("etc/motd", "second\n"), ("usr/bin/hello", "replaced\n")],
        &[],
    );
    server.add_file("first.tgz", first);
    server.add_file("second.tar", second.clone());
    let spec = serde_json::json!({
        "additional-tarballs": [
            {"uri": server.guest_url("second.tar"), "format": "tar", "index": 2,
             "checksum": format!("sha256:{}", sha256_hex(&second))},
            {"uri": server.guest_url("first.tgz"), "format": "tgz", "index": 1},
        ]
    });
    server.add_file("spec.json", spec.to_string().into_bytes());
    let disk = blank_disk(dir.path(), 2 << 30);
    let vm = boot_imprint_with_initrd(
        "rootfs_small",
        // No imprint.format=: the first member, `./`, says it is a tree.
        &format!(
            "imprint.url={} imprint.disk=/dev/vda imprint.bootloader=none \
             imprint.checksum=sha256:{} imprint.config={}",
            server.guest_url("root.tgz"),
            sha256_hex(&tgz),
            server.guest_url("spec.json")
        ),
        vec![Disk::new(&disk)],
        &initrd_with_tools(dir.path()),
    );
    let result = finish(&vm);
    let console = vm.console();
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{console}");
    };
    // The result line reports the tarball as served.
    assert_eq!(bytes, tgz.len() as u64, "{console}");
    assert_eq!(sha256, sha256_hex(&tgz));
    assert!(console.contains("format=tgz"), "{console}");
    assert!(
        console.contains("format: a root-filesystem tarball (tgz)"),
        "{console}"
    );
    // The plan was printed before the first write.
    let plan_at = console.find("layout:").expect("the plan");
    let write_at = console.find("writing a new GPT").expect("the GPT write");
    assert!(plan_at < write_at, "{console}");

    let parts = partitions(&disk);
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert_eq!(
        (parts[0].0, parts[0].1, parts[0].2.as_str()),
        (2048, 1 << 20, ESP)
    );
    assert_eq!((parts[1].1, parts[1].2.as_str()), (2048, BIOS_BOOT));
    assert_eq!(parts[2].2, LINUX);
    // The root fills the disk up to the 1 MiB alignment before the backup GPT.
    assert_eq!(parts[2].0 + parts[2].1, (2 << 30) / 512 - 2048, "{parts:?}");

    let root = dir.path().join("root.ext4");
    extract(&disk, parts[2].0, parts[2].1, &root);
    assert_eq!(debugfs(&root, "cat /usr/bin/hello"), "replaced\n");
    assert_eq!(debugfs(&root, "cat /etc/motd"), "second\n");
    assert_eq!(debugfs(&root, "cat /etc/first"), "1\n");
    let su = debugfs(&root, "stat /usr/bin/su");
    assert!(su.contains("Mode:  04755"), "{su}");
    let home = debugfs(&root, "stat /home/user");
    assert!(home.contains("User:  1000   Group:  1000"), "{home}");
    // The overlay replaced hello (a new inode); its hard link keeps the
    // image's contents.
    assert_eq!(
        debugfs(&root, "cat /usr/bin/hello-again"),
        "#!/bin/sh\necho hello\n"
    );
    assert!(debugfs(&root, "stat /bin").contains("Fast link dest: \"usr/bin\""));
    assert_eq!(
        debugfs(&root, "cat /etc/fstab.orig"),
        "# the image's own fstab\n"
    );
    let fstab = debugfs(&root, "cat /etc/fstab");
    let uuid = run(
        "blkid",
        &["-o", "value", "-s", "UUID", root.to_str().unwrap()],
    );
    assert!(
        fstab.contains(&format!(
            "UUID={} / ext4 errors=remount-ro 0 1",
            uuid.trim()
        )),
        "{fstab}"
    );
    assert!(fstab.contains(" /boot/efi vfat umask=0077 0 1"), "{fstab}");
    // /boot/efi of the tarball went onto the ESP.
    let esp = dir.path().join("esp.vfat");
    extract(&disk, parts[0].0, parts[0].1, &esp);
    assert_eq!(
        run(
            "mtype",
            &["-i", esp.to_str().unwrap(), "::/EFI/test/note.txt"]
        ),
        "on the ESP\n"
    );
}

/// Deploys `served` as `root.tgz` with `params` and expects an error
/// containing `wanted`, with the new GPT wiped at both ends afterwards.
fn fails_closed(name: &str, served: Vec<u8>, disk_size: u64, params: &str, wanted: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let server = FixtureServer::start().unwrap();
    server.add_file("root.tgz", served);
    let disk = blank_disk(dir.path(), disk_size);
    let vm = boot_imprint_with_initrd(
        name,
        &format!(
            "imprint.url={} imprint.disk=/dev/vda imprint.format=tgz {params}",
            server.guest_url("root.tgz"),
        ),
        vec![Disk::new(&disk)],
        &initrd_with_tools(dir.path()),
    );
    let result = finish(&vm);
    let ResultLine::Error(message) = result else {
        panic!("{name}: deployed: {result:?}\n{}", vm.console());
    };
    assert!(
        wanted.iter().all(|w| message.contains(w)),
        "{name}: {message}"
    );
    // It failed after the disk was partitioned: the wipe undid that.
    assert!(vm.console().contains("writing a new GPT"), "{name}");
    let bytes = std::fs::read(&disk).unwrap();
    let mib = 1 << 20;
    assert!(
        bytes[..mib].iter().all(|&b| b == 0),
        "{name}: the primary GPT is still there"
    );
    assert!(
        bytes[bytes.len() - mib..].iter().all(|&b| b == 0),
        "{name}: the backup GPT is still there"
    );
}

/// Booted without the tools initrd, a rootfs deploy fails before the
/// disk is touched, naming the missing tool and the initrd that has it.
#[test]
fn without_the_tools_initrd_the_disk_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = small_tarball(dir.path());
    let server = FixtureServer::start().unwrap();
    server.add_file("root.tgz", tgz);
    let disk = blank_disk(dir.path(), 2 << 30);
    let old_os: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &old_os).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let vm = boot_imprint_with_initrd(
        "rootfs_no_tools",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda imprint.format=tgz",
            server.guest_url("root.tgz")
        ),
        vec![Disk::new(&disk)],
        &Artifacts::get().initramfs,
    );
    let result = finish(&vm);
    let ResultLine::Error(message) = result else {
        panic!("deployed without mkfs: {result:?}\n{}", vm.console());
    };
    assert!(
        message.contains("mkfs.fat is missing") && message.contains("rootfs-tools.img"),
        "{message}"
    );
    let bytes = std::fs::read(&disk).unwrap();
    assert!(bytes[..old_os.len()] == old_os[..], "the disk was touched");
}

#[test]
fn a_checksum_mismatch_leaves_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    fails_closed(
        "rootfs_mismatch",
        small_tarball(dir.path()),
        2 << 30,
        &format!(
            "imprint.bootloader=none imprint.checksum=sha256:{}",
            "0".repeat(64)
        ),
        &["checksum mismatch"],
    );
}

/// A root filesystem too small for the tarball: the unpack hits ENOSPC,
/// and the disk is left without a partition table.
#[test]
fn a_full_filesystem_leaves_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    // 160 MiB of zeros compress to almost nothing but do not fit the
    // 86 MiB root that a 600 MiB disk leaves after the ESP.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/os-release"), "ID=test\n").unwrap();
    std::fs::File::create(tree.join("zeros"))
        .unwrap()
        .set_len(160 << 20)
        .unwrap();
    let big = dir.path().join("big.tgz");
    run(
        "tar",
        &[
            "--numeric-owner",
            "-C",
            tree.to_str().unwrap(),
            "-czf",
            big.to_str().unwrap(),
            ".",
        ],
    );
    fails_closed(
        "rootfs_full",
        std::fs::read(&big).unwrap(),
        600 << 20,
        "imprint.bootloader=none",
        &["unpacking http://", "No space left on device"],
    );
}

#[test]
fn a_truncated_tarball_leaves_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let mut tgz = small_tarball(dir.path());
    tgz.truncate(tgz.len() / 2);
    fails_closed(
        "rootfs_truncated",
        tgz,
        2 << 30,
        "imprint.bootloader=none",
        &["unpacking http://"],
    );
}

#[test]
fn a_bootloader_the_image_lacks_leaves_no_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    fails_closed(
        "rootfs_no_grub",
        small_tarball(dir.path()),
        2 << 30,
        "imprint.bootloader=grub",
        &["installing the bootloader: imprint.bootloader=grub, but the image has no grub-install"],
    );
}

/// The Debian 12 rootfs of `scripts/rootfs-image`.
fn debian_rootfs(name: &str) -> PathBuf {
    let path = Artifacts::get()
        .out_dir
        .parent()
        .unwrap()
        .join("cache/rootfs")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/rootfs-image",
        path.display()
    );
    path
}

/// How long a deploy of the Debian rootfs may take under TCG: the unpack,
/// update-initramfs and grub in the chroot.
const DEBIAN_DEPLOY: Duration = Duration::from_secs(900);
/// Firmware, GRUB, the kernel and systemd to a login prompt under TCG.
const DEBIAN_BOOT: Duration = Duration::from_secs(400);

/// Where a Debian rootfs goes and how its disk is booted afterwards.
struct DebianCase<'a> {
    file: &'a str,
    format: &'a str,
    hostname: &'a str,
    /// The target as imprint names it, and the disk QEMU attaches.
    target: &'a str,
    disk: fn(&Path) -> Disk,
    /// (name, UEFI?) of each firmware the disk is then booted with.
    firmwares: &'a [(&'a str, bool)],
    /// What the deploy's console must show (the bootloader commands).
    expect: &'a [&'a str],
    /// `imprint.on-success=kexec`: the deploy VM itself boots the installed
    /// kernel (found in the grub.cfg update-grub wrote) to a login prompt.
    kexec: bool,
}

/// Deploys a Debian rootfs tarball onto a blank disk, then boots that disk
/// alone under each firmware to a login prompt with the injected hostname.
fn debian_deploys_and_boots(case: &DebianCase<'_>) {
    let DebianCase {
        file,
        format,
        hostname,
        target,
        ..
    } = *case;
    let dir = tempfile::tempdir().unwrap();
    let tarball = std::fs::read(debian_rootfs(file)).unwrap();
    let server = FixtureServer::start().unwrap();
    server.add_file(file, tarball.clone());
    let disk = blank_disk(dir.path(), 8 << 30);
    let artifacts = Artifacts::get();
    let vm = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(initrd_with_tools(dir.path()))
        .append(format!(
            "console=ttyS0 panic=-1 imprint.on-success={} imprint.on-failure=poweroff \
             imprint.url={} imprint.disk={target} imprint.format={format} \
             imprint.hostname={hostname}",
            if case.kexec { "kexec!" } else { "poweroff" },
            server.guest_url(file)
        ))
        .memory_mib(2048)
        .cpus(2)
        .nic(imprint_qemu::Nic::user())
        .disk((case.disk)(&disk))
        .console_log(artifacts.log_path(&format!("rootfs_{hostname}")))
        .start()
        .expect("starting qemu");
    let line = vm
        .expect("IMPRINT-RESULT:", DEBIAN_DEPLOY)
        .expect("a result line");
    let ResultLine::Ok { sha256, .. } = ResultLine::parse(&line) else {
        panic!("deploy failed: {line}\n{}", vm.console());
    };
    if case.kexec {
        vm.expect(
            &format!("Debian GNU/Linux 12 {hostname} ttyS0"),
            DEBIAN_BOOT,
        )
        .unwrap_or_else(|e| panic!("after kexec: {e:#}"));
        vm.kill().unwrap();
    } else {
        vm.wait_exit(Duration::from_secs(60)).expect("powers off");
    }
    assert_eq!(sha256, sha256_hex(&tarball));
    let console = vm.console();
    assert!(
        console.contains("in the new root: update-initramfs"),
        "{console}"
    );
    for wanted in case.expect {
        assert!(console.contains(wanted), "{wanted:?} in {console}");
    }

    for &(firmware, uefi) in case.firmwares {
        let mut builder = Vm::builder()
            .memory_mib(1024)
            .disk((case.disk)(&disk))
            .console_log(artifacts.log_path(&format!("rootfs_{hostname}_{firmware}")));
        if uefi {
            builder = builder.uefi();
        }
        let booted = builder.start().expect("starting qemu");
        // getty prints /etc/issue (`Debian GNU/Linux 12 \n \l`) as a whole
        // line, then the login prompt without a newline.
        booted
            .expect(
                &format!("Debian GNU/Linux 12 {hostname} ttyS0"),
                DEBIAN_BOOT,
            )
            .unwrap_or_else(|e| panic!("{firmware}: {e:#}"));
        booted.kill().unwrap();
    }
}

/// The tgz: imprint kexecs into the installed kernel right after the
/// deploy, then the disk boots alone under SeaBIOS and OVMF.
#[test]
fn debian_12_tgz_kexecs_and_boots_under_bios_and_uefi() {
    debian_deploys_and_boots(&DebianCase {
        file: "debian-12.tar.gz",
        format: "tgz",
        hostname: "rootfs-tgz",
        target: "/dev/vda",
        disk: |path| Disk::new(path),
        firmwares: &[("bios", false), ("uefi", true)],
        kexec: true,
        expect: &[
            "in the new root: /usr/sbin/grub-install --target=i386-pc /dev/vda",
            "--target=x86_64-efi --efi-directory=/boot/efi --removable",
            "in the new root: update-grub",
        ],
    });
}

/// RackN's tar-zst onto an NVMe namespace with 4096-byte sectors: the
/// layout in 4 KiB LBAs, a FAT32 ESP of 4 KiB sectors, booted by UEFI
/// (SeaBIOS does not boot 4Kn disks).
#[test]
fn debian_12_tar_zst_on_a_4kn_nvme_disk_boots_under_uefi() {
    debian_deploys_and_boots(&DebianCase {
        file: "debian-12.tar.zst",
        format: "tar-zst",
        hostname: "rootfs-4kn",
        target: "/dev/nvme0n1",
        disk: |path| {
            Disk::new(path)
                .with_interface(DiskInterface::Nvme)
                .with_block_sizes(4096, 4096)
        },
        firmwares: &[("uefi", true)],
        kexec: false,
        expect: &["grub-install --target=x86_64-efi", "--removable"],
    });
}

/// An image with systemd-boot and no GRUB (`ROOTFS_BOOT=systemd-boot
/// scripts/rootfs-image`): bootctl installs it on the ESP, the kernel
/// hooks add the loader entry with `root=UUID=` of the new root, and OVMF
/// boots it from the removable path bootctl also fills.
#[test]
fn debian_12_with_systemd_boot_boots_under_uefi() {
    debian_deploys_and_boots(&DebianCase {
        file: "debian-12-sdboot.tar.zst",
        format: "tar-zst",
        hostname: "rootfs-sdboot",
        target: "/dev/vda",
        disk: |path| Disk::new(path),
        firmwares: &[("uefi", true)],
        kexec: false,
        expect: &[
            "bootloader: systemd-boot",
            "in the new root: bootctl install --esp-path=/boot/efi --no-variables",
            "/etc/kernel/cmdline: root=UUID=",
        ],
    });
}

/// A layout over two disks from the deploy spec: the default partitions
/// on the target, `/home` as xfs on a second disk chosen by its selector.
/// The tarball's `/home` lands on the second disk, and fstab mounts it.
#[test]
fn a_layout_over_two_disks_puts_home_on_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let tgz = small_tarball(dir.path());
    let server = FixtureServer::start().unwrap();
    server.add_file("root.tgz", tgz.clone());
    let spec = serde_json::json!({
        "layout": {"disks": [
            {"partitions": [
                {"size": "512M", "type": "esp", "filesystem": "vfat", "mount": "/boot/efi",
                 "options": "umask=0077"},
                {"size": "1M", "type": "bios-boot"},
                {"size": "rest", "type": "linux", "filesystem": "ext4", "mount": "/",
                 "options": "errors=remount-ro"}
            ]},
            {"disk": "/dev/vdb", "partitions": [
                {"size": "100%", "type": "linux-home", "filesystem": "xfs", "label": "home",
                 "mount": "/home"}
            ]}
        ]}
    });
    server.add_file("spec.json", spec.to_string().into_bytes());
    let first = blank_disk(dir.path(), 2 << 30);
    let second = dir.path().join("second.raw");
    std::fs::File::create(&second)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let vm = boot_imprint_with_initrd(
        "rootfs_two_disks",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda imprint.format=tgz imprint.bootloader=none \
             imprint.config={}",
            server.guest_url("root.tgz"),
            server.guest_url("spec.json")
        ),
        vec![Disk::new(&first), Disk::new(&second)],
        &initrd_with_tools(dir.path()),
    );
    let result = finish(&vm);
    let console = vm.console();
    assert!(
        matches!(result, ResultLine::Ok { .. }),
        "{result:?}\n{console}"
    );
    assert!(
        console.contains("/dev/vdb1"),
        "the plan names vdb1: {console}"
    );

    let parts = partitions(&second);
    assert_eq!(parts.len(), 1, "{parts:?}");
    assert_eq!(
        parts[0].2, "933ac7e1-2eb4-4f13-b844-0e14e2aef915",
        "{parts:?}"
    );
    let home = dir.path().join("home.xfs");
    extract(&second, parts[0].0, parts[0].1, &home);
    let blkid = run("blkid", &["-o", "export", home.to_str().unwrap()]);
    assert!(
        blkid.contains("TYPE=xfs") && blkid.contains("LABEL=home"),
        "{blkid}"
    );
    let uuid = blkid
        .lines()
        .find_map(|l| l.strip_prefix("UUID="))
        .unwrap()
        .to_owned();

    let root_parts = partitions(&first);
    let root = dir.path().join("root.ext4");
    extract(&first, root_parts[2].0, root_parts[2].1, &root);
    let fstab = debugfs(&root, "cat /etc/fstab");
    assert!(
        fstab.contains(&format!("UUID={uuid} /home xfs defaults 0 2")),
        "{fstab}"
    );
    // /home/user went onto the xfs filesystem: the root's /home is empty.
    let listing = debugfs(&root, "ls -l /home");
    assert!(!listing.contains("user"), "{listing}");
}
