//! Identity injection in the real initramfs: a GPT image with an ESP and a
//! Linux root is deployed to a larger disk; afterwards the GPT is valid for
//! the whole disk (`sgdisk -v`), and every injected file is checked on the
//! host for content, mode and owner without booting it (debugfs for ext4,
//! a read-only loop mount for xfs).

use std::path::Path;
use std::process::Command;

use imprint_qemu::Disk;
use imprint_qemu::http::FixtureServer;
use imprint_vm_tests::{
    ESP_TYPE, Fs, LINUX_DATA, LINUX_ROOT_X86_64, Part, ResultLine, boot_imprint, filter, finish,
    gpt_image,
};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q test@imprint";
const OPS_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 ops@drp";
const TOKEN: &str = "tok-3f9c-very-secret";

fn root_files() -> Vec<(&'static str, &'static [u8])> {
    vec![
        (
            "etc/os-release",
            b"PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n",
        ),
        ("etc/hostname", b"golden\n"),
        (
            "etc/hosts",
            b"127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n::1\tlocalhost ip6-localhost\n",
        ),
        (
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/bash\ndebian:x:1000:1000:Debian:/home/debian:/bin/bash\n",
        ),
        ("etc/group", b"root:x:0:\ndebian:x:1000:\n"),
        ("etc/machine-id", b"0123456789abcdef0123456789abcdef\n"),
        ("etc/netplan/00-installer.yaml", b"network:\n  version: 2\n"),
        ("etc/cloud/cloud.cfg", b"datasource_list: [ None ]\n"),
        ("home/debian/.profile", b"# profile\n"),
    ]
}

/// Runs a debugfs request against an ext4 filesystem image.
fn debugfs(fs: &Path, request: &str) -> String {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(fs)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `(mode, uid, gid)` of a file inside an ext4 image, from `debugfs stat`.
fn stat(fs: &Path, path: &str) -> (u32, u32, u32) {
    let text = debugfs(fs, &format!("stat {path}"));
    let field = |name: &str| -> u32 {
        let rest = text
            .split(name)
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} for {path}: {text}"));
        let value = rest.split_whitespace().next().unwrap();
        if name == "Mode:" {
            u32::from_str_radix(value, 8).unwrap()
        } else {
            value.parse().unwrap()
        }
    };
    (field("Mode:") & 0o7777, field("User:"), field("Group:"))
}

fn sgdisk_verify(disk: &Path) {
    let out = Command::new("sgdisk").arg("-v").arg(disk).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "sgdisk -v: {text}");
}

fn extract(disk: &Path, offset_mib: u64, size_mib: u64, to: &Path) {
    let data = std::fs::read(disk).unwrap();
    let (from, len) = (
        usize::try_from(offset_mib << 20).unwrap(),
        usize::try_from(size_mib << 20).unwrap(),
    );
    std::fs::write(to, &data[from..from + len]).unwrap();
}

#[test]
fn ext4_root_with_esp_gets_every_identity_piece() {
    let files = root_files();
    let image = gpt_image(&[
        Part {
            name: "esp",
            type_guid: ESP_TYPE,
            size_mib: 8,
            fs: Fs::Vfat,
            label: "ESP",
            files: &[("EFI/BOOT/README", b"esp\n")],
        },
        Part {
            name: "root",
            type_guid: LINUX_ROOT_X86_64,
            size_mib: 40,
            fs: Fs::Ext4,
            label: "root",
            files: &files,
        },
    ]);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw.zst", filter("zstd", &["-c", "-q"], &image));
    server.add_file(
        "files/drpcli.amd64.linux",
        b"#!/bin/sh\necho drpcli\n".to_vec(),
    );
    let web = server.guest_url("").trim_end_matches('/').to_owned();
    let config = format!(
        r##"{{"ssh-keys": ["{KEY}"], "access-keys": {{"ops": "{OPS_KEY}"}}, "ssh-user": "debian",
            "network": {{"interfaces": []}},
            "cloud-init": {{"user-data": "#cloud-config\npackages: [htop]\n"}},
            "drp": {{"endpoint": "https://drp.example:8092", "token": "{TOKEN}", "machine-id": "m-0001", "provisioner-web": "{web}"}},
            "files": [{{"path": "/etc/motd", "content": "deployed by imprint\n", "mode": "0640", "owner": "debian"}}]}}"##
    );
    server.add_file("spec.json", config.into_bytes());
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();

    let vm = boot_imprint(
        "inject_ext4",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda imprint.config={} imprint.hostname=web-01",
            server.guest_url("golden.raw.zst"),
            server.guest_url("spec.json")
        ),
        vec![Disk::new(&disk)],
    );
    let result = finish(&vm);
    assert!(matches!(result, ResultLine::Ok { .. }), "{result:?}");
    let console = vm.console();
    assert!(
        console.contains("root: partition 2"),
        "the root was discovered"
    );
    assert!(
        console.contains("inject: write /etc/hostname"),
        "the plan is logged"
    );
    assert!(
        !console.contains(TOKEN),
        "the DRP token leaked into the console"
    );

    sgdisk_verify(&disk);
    let root = dir.path().join("root.img");
    extract(&disk, 9, 40, &root);
    assert_eq!(debugfs(&root, "cat /etc/hostname"), "web-01\n");
    assert!(
        debugfs(&root, "cat /etc/hosts").contains("127.0.1.1\tweb-01")
            || debugfs(&root, "cat /etc/hosts").contains("127.0.1.1 web-01")
    );
    let keys = debugfs(&root, "cat /root/.ssh/authorized_keys");
    assert!(keys.contains(KEY) && keys.contains(OPS_KEY), "{keys}");
    assert_eq!(stat(&root, "/root/.ssh/authorized_keys"), (0o600, 0, 0));
    assert_eq!(stat(&root, "/root/.ssh"), (0o700, 0, 0));
    assert!(debugfs(&root, "cat /home/debian/.ssh/authorized_keys").contains(KEY));
    assert_eq!(
        stat(&root, "/home/debian/.ssh/authorized_keys"),
        (0o600, 1000, 1000)
    );
    assert_eq!(
        debugfs(&root, "cat /etc/machine-id"),
        "",
        "machine-id emptied"
    );
    let netplan = debugfs(&root, "cat /etc/netplan/50-imprint.yaml");
    assert!(
        netplan.contains("52:54:00:12:34:56"),
        "the boot NIC matched by MAC: {netplan}"
    );
    assert!(debugfs(&root, "cat /curtin/meta-data").contains("local-hostname"));
    assert!(debugfs(&root, "cat /curtin/user-data").contains("packages: [htop]"));
    assert!(debugfs(&root, "cat /etc/cloud/cloud.cfg.d/95_datasource.cfg").contains("NoCloud"));
    assert!(debugfs(&root, "cat /var/lib/drp-agent/agent-cfg.yml").contains(TOKEN));
    assert_eq!(stat(&root, "/var/lib/drp-agent/agent-cfg.yml").0, 0o600);
    assert_eq!(
        debugfs(&root, "cat /usr/local/bin/drpcli"),
        "#!/bin/sh\necho drpcli\n"
    );
    assert_eq!(stat(&root, "/usr/local/bin/drpcli").0, 0o755);
    assert!(
        debugfs(&root, "cat /etc/systemd/system/drp-agent.service")
            .contains("ExecStart=/usr/local/bin/drpcli agent")
    );
    assert!(
        debugfs(
            &root,
            "stat /etc/systemd/system/multi-user.target.wants/drp-agent.service"
        )
        .contains("Type: symlink")
    );
    assert_eq!(debugfs(&root, "cat /etc/motd"), "deployed by imprint\n");
    assert_eq!(stat(&root, "/etc/motd"), (0o640, 1000, 1000));

    // The ESP was left as it was.
    let esp = dir.path().join("esp.img");
    extract(&disk, 1, 8, &esp);
    let out = Command::new("mtype")
        .args(["-i"])
        .arg(&esp)
        .arg("::/EFI/BOOT/README")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "esp\n");
}

/// An xfs root found by its /etc/os-release on a plain Linux data
/// partition, on a disk larger than the image, grown to fill it.
#[test]
fn xfs_root_found_by_os_release_and_grown() {
    let files = root_files();
    let image = gpt_image(&[Part {
        name: "root",
        type_guid: LINUX_DATA,
        size_mib: 300,
        fs: Fs::Xfs,
        label: "xroot",
        files: &files,
    }]);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw.zst", filter("zstd", &["-c", "-q"], &image));
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();

    let vm = boot_imprint(
        "inject_xfs",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda imprint.hostname=xfs-01 imprint.grow=1 \"imprint.ssh-key={KEY}\"",
            server.guest_url("golden.raw.zst")
        ),
        vec![Disk::new(&disk)],
    );
    let result = finish(&vm);
    assert!(matches!(result, ResultLine::Ok { .. }), "{result:?}");
    sgdisk_verify(&disk);
    let table = imprint_vm_tests::partition_table(&disk).unwrap();
    // Grown to the last usable 1 MiB boundary of the 512 MiB disk.
    assert!(
        table.contains("size=     1044480") || table.contains("size=1044480"),
        "{table}"
    );

    // Read the result through the host kernel's xfs (tests run as root).
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let status = Command::new("mount")
        .args([
            "-t",
            "xfs",
            "-o",
            "ro,norecovery,loop,offset=1048576,sizelimit=314572800",
        ])
        .arg(&disk)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting the deployed xfs root on the host"
    );
    let hostname = std::fs::read_to_string(mnt.join("etc/hostname"));
    let keys = std::fs::read_to_string(mnt.join("root/.ssh/authorized_keys"));
    let meta = std::fs::metadata(mnt.join("root/.ssh/authorized_keys"));
    let machine_id = std::fs::read(mnt.join("etc/machine-id"));
    let _ = Command::new("umount").arg(&mnt).status();
    assert_eq!(hostname.unwrap(), "xfs-01\n");
    assert!(keys.unwrap().contains(KEY));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = meta.unwrap();
    assert_eq!((meta.permissions().mode() & 0o7777, meta.uid()), (0o600, 0));
    assert!(machine_id.unwrap().is_empty());
}
