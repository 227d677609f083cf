//! Finding the boot entry in installed trees laid out from real-world
//! samples (`init/tests/data/boot/`): Debian 12, Ubuntu 22.04, AlmaLinux 9,
//! RHEL 8, openSUSE Leap 15.5 and Fedora 39, as their tools write them.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;

const DEBIAN12_GRUB: &str = include_str!("../../tests/data/boot/debian12-grub.cfg");
const UBUNTU2204_GRUB: &str = include_str!("../../tests/data/boot/ubuntu2204-grub.cfg");
const ALMA9_GRUB: &str = include_str!("../../tests/data/boot/alma9-grub.cfg");
const ALMA9_GRUBENV: &str = include_str!("../../tests/data/boot/alma9-grubenv");
const RHEL8_GRUB: &str = include_str!("../../tests/data/boot/rhel8-grub.cfg");
const RHEL8_GRUBENV: &str = include_str!("../../tests/data/boot/rhel8-grubenv");
const LEAP155_GRUB: &str = include_str!("../../tests/data/boot/leap155-grub.cfg");
const LEAP155_GRUBENV: &str = include_str!("../../tests/data/boot/leap155-grubenv");

const DEBIAN_UUID: &str = "0d4b1b4e-3c1e-4b6a-a1b5-1c2d3e4f5a6b";
const UBUNTU_UUID: &str = "5b1f3c2e-8d4a-4f6b-9c7e-2a1d0e9f8b7c";
const ALMA_MACHINE: &str = "e0b5f4f36ff94a3ab1b4f1c2e8a5e1d7";

/// An installed system on a temp dir: `root/`, with a separate /boot
/// standing on its `boot/` as if mounted there.
struct Installed {
    dir: TempDir,
    separate_boot: bool,
}

impl Installed {
    fn new() -> Self {
        let dir = TempDir::new().unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        Installed {
            dir,
            separate_boot: false,
        }
    }

    fn with_separate_boot() -> Self {
        let mut installed = Installed::new();
        installed.separate_boot = true;
        installed
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Where a file of /boot is on this host, to change it.
    fn host_boot(&self, path_in_boot: &str) -> PathBuf {
        self.root().join("boot").join(path_in_boot)
    }

    /// Writes `path` under the host directory `base` (root or boot).
    fn write(&self, base: &Path, path: &str, content: &str) -> &Self {
        let host = base.join(path.trim_start_matches('/'));
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        fs::write(host, content).unwrap();
        self
    }

    /// Writes a file on the filesystem holding /boot, at its path there.
    fn boot_file(&self, path_in_boot: &str, content: &str) -> &Self {
        self.write(&self.root().join("boot"), path_in_boot, content)
    }

    /// Where the installed system sees a file of its /boot.
    fn boot_path(&self, path_in_boot: &str) -> PathBuf {
        Path::new("/boot").join(path_in_boot.trim_start_matches('/'))
    }

    fn link(&self, path: &str, target: &str) -> &Self {
        let host = self.root().join(path.trim_start_matches('/'));
        fs::create_dir_all(host.parent().unwrap()).unwrap();
        symlink(target, host).unwrap();
        self
    }

    fn find(&self) -> Result<BootEntry> {
        self.find_explicit(&Explicit::default())
    }

    fn find_explicit(&self, explicit: &Explicit) -> Result<BootEntry> {
        let root = RootDir::open(&self.root()).unwrap();
        find_boot_entry(
            &BootFs {
                root: &root,
                separate_boot: self.separate_boot,
            },
            explicit,
        )
    }
}

/// A grubenv as grub-editenv writes it: padded with `#` to 1024 bytes.
fn grubenv(text: &str) -> String {
    let mut block = text.to_owned();
    while block.len() < 1024 {
        block.push('#');
    }
    block
}

fn debian12() -> Installed {
    let installed = Installed::new();
    installed.boot_file("grub/grub.cfg", DEBIAN12_GRUB);
    for k in ["6.1.0-13-amd64", "6.1.0-10-amd64"] {
        installed
            .boot_file(&format!("vmlinuz-{k}"), "kernel")
            .boot_file(&format!("initrd.img-{k}"), "initrd");
    }
    installed
}

#[test]
fn debian12_boots_the_first_entry() {
    let installed = debian12();
    let entry = installed.find().unwrap();
    assert_eq!(entry.kernel, installed.boot_path("vmlinuz-6.1.0-13-amd64"));
    assert_eq!(
        entry.initrds,
        vec![installed.boot_path("initrd.img-6.1.0-13-amd64")]
    );
    assert_eq!(
        entry.options.as_deref(),
        Some(format!("root=UUID={DEBIAN_UUID} ro quiet").as_str())
    );
    assert_eq!(
        entry.origin,
        EntryOrigin::Grub {
            config: "/boot/grub/grub.cfg".into(),
            title: "Debian GNU/Linux".into()
        }
    );
    let line = entry.to_string();
    assert!(
        line.starts_with("grub entry 'Debian GNU/Linux' of /boot/grub/grub.cfg: ")
            && line.ends_with("vmlinuz-6.1.0-13-amd64 + 1 initrd"),
        "{line}"
    );
}

#[test]
fn debian12_next_entry_in_grubenv_picks_a_submenu_entry_by_id() {
    let installed = debian12();
    installed.boot_file(
        "grub/grubenv",
        &grubenv(&format!(
            "# GRUB Environment Block\nnext_entry=gnulinux-advanced-{DEBIAN_UUID}>gnulinux-6.1.0-10-amd64-advanced-{DEBIAN_UUID}\n"
        )),
    );
    let entry = installed.find().unwrap();
    assert_eq!(entry.kernel, installed.boot_path("vmlinuz-6.1.0-10-amd64"));
    assert_eq!(
        entry.origin,
        EntryOrigin::Grub {
            config: "/boot/grub/grub.cfg".into(),
            title: "Debian GNU/Linux, with Linux 6.1.0-10-amd64".into()
        }
    );
}

#[test]
fn debian12_with_separate_boot_reads_paths_relative_to_it() {
    let installed = Installed::with_separate_boot();
    // update-grub writes paths relative to the /boot filesystem then.
    let cfg = DEBIAN12_GRUB
        .replace("/boot/vmlinuz", "/vmlinuz")
        .replace("/boot/initrd", "/initrd");
    installed
        .boot_file("grub/grub.cfg", &cfg)
        .boot_file("vmlinuz-6.1.0-13-amd64", "k")
        .boot_file("initrd.img-6.1.0-13-amd64", "i");
    let entry = installed.find().unwrap();
    assert_eq!(entry.kernel, installed.boot_path("vmlinuz-6.1.0-13-amd64"));
    assert_eq!(
        entry.initrds,
        vec![installed.boot_path("initrd.img-6.1.0-13-amd64")]
    );
}

fn ubuntu2204(cfg: &str) -> Installed {
    let installed = Installed::new();
    installed.boot_file("grub/grub.cfg", cfg);
    for k in ["5.15.0-91-generic", "5.15.0-88-generic"] {
        installed
            .boot_file(&format!("vmlinuz-{k}"), "kernel")
            .boot_file(&format!("initrd.img-{k}"), "initrd");
    }
    installed
}

#[test]
fn ubuntu2204_resolves_vt_handoff_through_the_gfxmode_function() {
    let installed = ubuntu2204(UBUNTU2204_GRUB);
    let entry = installed.find().unwrap();
    assert_eq!(
        entry.kernel,
        installed.boot_path("vmlinuz-5.15.0-91-generic")
    );
    assert_eq!(
        entry.options.as_deref(),
        Some(format!("root=UUID={UBUNTU_UUID} ro quiet splash vt.handoff=7").as_str())
    );

    // After a failed boot, grubenv holds recordfail=1: text mode, no handoff.
    installed.boot_file(
        "grub/grubenv",
        &grubenv("# GRUB Environment Block\nrecordfail=1\n"),
    );
    let entry = installed.find().unwrap();
    assert_eq!(
        entry.options.as_deref(),
        Some(format!("root=UUID={UBUNTU_UUID} ro quiet splash").as_str())
    );
}

#[test]
fn ubuntu2204_default_by_submenu_title_path() {
    let installed = ubuntu2204(UBUNTU2204_GRUB);
    installed.boot_file(
        "grub/grubenv",
        &grubenv(
            "# GRUB Environment Block\nnext_entry=Advanced options for Ubuntu>Ubuntu, with Linux 5.15.0-88-generic\n",
        ),
    );
    let entry = installed.find().unwrap();
    assert_eq!(
        entry.kernel,
        installed.boot_path("vmlinuz-5.15.0-88-generic")
    );
    assert_eq!(
        entry.initrds,
        vec![installed.boot_path("initrd.img-5.15.0-88-generic")]
    );

    // A numeric submenu path: the recovery entry.
    let cfg = UBUNTU2204_GRUB.replace("set default=\"0\"", "set default=\"1>1\"");
    let entry = ubuntu2204(&cfg).find().unwrap();
    assert!(
        entry
            .options
            .as_deref()
            .unwrap()
            .ends_with("ro recovery nomodeset dis_ucode_ldr"),
        "{entry:?}"
    );
}

#[test]
fn ubuntu_on_btrfs_subvolume_prefix_is_stripped() {
    let cfg = UBUNTU2204_GRUB
        .replace("/boot/vmlinuz", "/@/boot/vmlinuz")
        .replace("/boot/initrd", "/@/boot/initrd");
    let installed = ubuntu2204(&cfg);
    let entry = installed.find().unwrap();
    assert_eq!(
        entry.kernel,
        installed.boot_path("vmlinuz-5.15.0-91-generic")
    );
}

fn alma9() -> Installed {
    let installed = Installed::with_separate_boot();
    installed
        .boot_file("grub2/grub.cfg", ALMA9_GRUB)
        .boot_file("grub2/grubenv", &grubenv(ALMA9_GRUBENV));
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot/alma9-entries");
    for file in fs::read_dir(dir).unwrap() {
        let file = file.unwrap();
        let name = file.file_name().into_string().unwrap();
        installed.boot_file(
            &format!("loader/entries/{name}"),
            &fs::read_to_string(file.path()).unwrap(),
        );
    }
    for v in [
        "5.14.0-362.8.1.el9_3.x86_64".to_string(),
        "5.14.0-427.13.1.el9_4.x86_64".to_string(),
        format!("0-rescue-{ALMA_MACHINE}"),
    ] {
        installed
            .boot_file(&format!("vmlinuz-{v}"), "k")
            .boot_file(&format!("initramfs-{v}.img"), "i");
    }
    installed
}

const ALMA_OPTIONS: &str = "root=/dev/mapper/almalinux-root ro \
    crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M resume=/dev/mapper/almalinux-swap \
    rd.lvm.lv=almalinux/root rd.lvm.lv=almalinux/swap rhgb quiet";

#[test]
fn alma9_boots_the_newest_bls_entry_with_tuned_variables_empty() {
    let installed = alma9();
    let entry = installed.find().unwrap();
    assert_eq!(
        entry.kernel,
        installed.boot_path("vmlinuz-5.14.0-427.13.1.el9_4.x86_64")
    );
    assert_eq!(
        entry.initrds,
        vec![installed.boot_path("initramfs-5.14.0-427.13.1.el9_4.x86_64.img")]
    );
    assert_eq!(entry.options.as_deref(), Some(ALMA_OPTIONS));
    let file = format!("loader/entries/{ALMA_MACHINE}-5.14.0-427.13.1.el9_4.x86_64.conf");
    assert_eq!(
        entry.to_string(),
        format!(
            "BLS entry {file} (version 5.14.0-427.13.1.el9_4.x86_64): {} + 1 initrd",
            entry.kernel.display()
        )
    );
}

#[test]
fn alma9_entry_whose_kernel_is_missing_is_skipped() {
    let installed = alma9();
    fs::remove_file(installed.host_boot("vmlinuz-5.14.0-427.13.1.el9_4.x86_64")).unwrap();
    let entry = installed.find().unwrap();
    assert_eq!(
        entry.origin,
        EntryOrigin::Bls {
            file: format!("loader/entries/{ALMA_MACHINE}-5.14.0-362.8.1.el9_3.x86_64.conf").into(),
            version: Some("5.14.0-362.8.1.el9_3.x86_64".into()),
        }
    );
}

#[test]
fn blscfg_without_usable_entries_is_a_clear_error() {
    let installed = alma9();
    fs::remove_dir_all(installed.host_boot("loader")).unwrap();
    let err = installed.find().unwrap_err().to_string();
    assert_eq!(
        err,
        "/boot/grub2/grub.cfg boots BLS entries (blscfg) but /boot/loader/entries has none \
         with an existing kernel"
    );
}

fn rhel8(with_grubenv: bool, with_grub_cfg: bool) -> Installed {
    let installed = Installed::with_separate_boot();
    if with_grub_cfg {
        installed.boot_file("grub2/grub.cfg", RHEL8_GRUB);
    }
    if with_grubenv {
        installed.boot_file("grub2/grubenv", &grubenv(RHEL8_GRUBENV));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot/rhel8-entries");
    for file in fs::read_dir(dir).unwrap() {
        let file = file.unwrap();
        let name = file.file_name().into_string().unwrap();
        installed.boot_file(
            &format!("loader/entries/{name}"),
            &fs::read_to_string(file.path()).unwrap(),
        );
    }
    installed
        .boot_file("vmlinuz-4.18.0-513.5.1.el8_9.x86_64", "k")
        .boot_file("initramfs-4.18.0-513.5.1.el8_9.x86_64.img", "i");
    installed
}

#[test]
fn rhel8_kernelopts_come_from_grubenv_before_the_grub_cfg_fallback() {
    let entry = rhel8(true, true).find().unwrap();
    // grubenv's value (with the console grubby added), not grub.cfg's.
    assert_eq!(
        entry.options.as_deref(),
        Some(
            "root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap \
             rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet console=ttyS0,115200n8"
        )
    );
    assert_eq!(entry.initrds.len(), 1);

    // Without grubenv, grub.cfg's fallback assignment applies.
    let entry = rhel8(false, true).find().unwrap();
    assert_eq!(
        entry.options.as_deref(),
        Some(
            "root=/dev/mapper/rhel-root ro crashkernel=auto resume=/dev/mapper/rhel-swap \
             rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet"
        )
    );
}

#[test]
fn rhel8_without_kernelopts_anywhere_names_the_variable() {
    let err = rhel8(false, false).find().unwrap_err().to_string();
    assert!(
        err.contains("variables $kernelopts are set neither in grubenv nor in grub.cfg"),
        "{err}"
    );
    assert!(err.contains("4.18.0-513.5.1.el8_9.x86_64.conf"), "{err}");
}

#[test]
fn leap155_default_by_saved_title_and_extra_cmdline_empty() {
    let installed = Installed::new();
    let k = "5.14.21-150500.55.39-default";
    installed
        .boot_file("grub2/grub.cfg", LEAP155_GRUB)
        .boot_file("grub2/grubenv", &grubenv(LEAP155_GRUBENV))
        .boot_file(&format!("vmlinuz-{k}"), "k")
        .boot_file(&format!("initrd-{k}"), "i");
    let entry = installed.find().unwrap();
    assert_eq!(entry.kernel, installed.boot_path(&format!("vmlinuz-{k}")));
    assert_eq!(
        entry.initrds,
        vec![installed.boot_path(&format!("initrd-{k}"))]
    );
    assert_eq!(
        entry.options.as_deref(),
        Some(
            "root=UUID=9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d splash=silent \
             resume=/dev/disk/by-uuid/1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e \
             mitigations=auto quiet security=apparmor"
        )
    );
    assert_eq!(
        entry.origin,
        EntryOrigin::Grub {
            config: "/boot/grub2/grub.cfg".into(),
            title: "openSUSE Leap 15.5".into()
        }
    );
}

#[test]
fn fedora39_entries_on_root_boot_written_without_the_boot_prefix() {
    let installed = Installed::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/boot/fedora39-entries");
    for file in fs::read_dir(dir).unwrap() {
        let file = file.unwrap();
        let name = file.file_name().into_string().unwrap();
        installed.boot_file(
            &format!("loader/entries/{name}"),
            &fs::read_to_string(file.path()).unwrap(),
        );
    }
    for v in ["6.5.6-300.fc39.x86_64", "6.7.4-200.fc39.x86_64"] {
        installed
            .boot_file(&format!("vmlinuz-{v}"), "k")
            .boot_file(&format!("initramfs-{v}.img"), "i");
    }
    let entry = installed.find().unwrap();
    assert_eq!(
        entry.kernel,
        PathBuf::from("/boot/vmlinuz-6.7.4-200.fc39.x86_64")
    );
    let options = entry.options.as_deref().unwrap();
    assert!(
        options
            .starts_with("root=UUID=2f8d6a4b-1c3e-4f5a-8b7c-9d0e1f2a3b4c ro rootflags=subvol=root")
    );
    // No grub.cfg, no grubenv: the entry needs neither.
    let cmdline = kexec_cmdline(
        Some(options),
        None,
        &[
            "console=ttyS0,115200n8".to_string(),
            "console=ttyS1".to_string(),
        ],
    )
    .unwrap();
    assert!(
        cmdline.ends_with("systemd.firstboot=off console=ttyS1"),
        "{cmdline}"
    );
}

#[test]
fn grub_entry_with_an_unknown_variable_names_it() {
    let installed = Installed::new();
    installed
        .boot_file(
            "grub/grub.cfg",
            "set default=0\nmenuentry 'Custom' {\n\tlinux /boot/vmlinuz-6.1 root=/dev/sda1 $my_opts ${other}\n\tinitrd /boot/initrd-6.1\n}\n",
        )
        .boot_file("vmlinuz-6.1", "k")
        .boot_file("initrd-6.1", "i");
    let err = installed.find().unwrap_err().to_string();
    assert_eq!(
        err,
        "/boot/grub/grub.cfg: entry 'Custom' uses variables $my_opts, $other that grub.cfg and \
         grubenv never set"
    );
}

#[test]
fn grub_entry_with_a_missing_kernel_names_it() {
    let installed = debian12();
    fs::remove_file(installed.host_boot("vmlinuz-6.1.0-13-amd64")).unwrap();
    let err = installed.find().unwrap_err().to_string();
    assert_eq!(
        err,
        "/boot/grub/grub.cfg: entry 'Debian GNU/Linux': kernel /boot/vmlinuz-6.1.0-13-amd64 \
         does not exist"
    );
}

#[test]
fn debian_symlinks_when_there_is_no_boot_loader_config() {
    let installed = Installed::new();
    installed
        .boot_file("vmlinuz-6.1.0-13-amd64", "k")
        .boot_file("initrd.img-6.1.0-13-amd64", "i")
        .link("vmlinuz", "boot/vmlinuz-6.1.0-13-amd64")
        .link("initrd.img", "boot/initrd.img-6.1.0-13-amd64");
    let entry = installed.find().unwrap();
    assert_eq!(entry.origin, EntryOrigin::Symlinks);
    assert_eq!(entry.kernel, installed.boot_path("vmlinuz-6.1.0-13-amd64"));
    assert_eq!(
        entry.initrds,
        vec![installed.boot_path("initrd.img-6.1.0-13-amd64")]
    );
    assert_eq!(entry.options, None);
}

#[test]
fn symlinks_under_boot_and_into_a_separate_boot() {
    // /boot/vmlinuz only, no initrd.
    let installed = Installed::new();
    installed.boot_file("vmlinuz-6.8.0", "k");
    installed.link("boot/vmlinuz", "vmlinuz-6.8.0");
    let entry = installed.find().unwrap();
    assert_eq!(entry.kernel, installed.boot_path("vmlinuz-6.8.0"));
    assert!(entry.initrds.is_empty());
    assert!(entry.to_string().ends_with(", no initrd"));

    // /vmlinuz -> boot/vmlinuz-x where /boot is a separate mount elsewhere.
    let installed = Installed::with_separate_boot();
    installed.boot_file("vmlinuz-6.8.0", "k");
    installed.link("vmlinuz", "boot/vmlinuz-6.8.0");
    assert_eq!(
        installed.find().unwrap().kernel,
        installed.boot_path("vmlinuz-6.8.0")
    );
}

#[test]
fn absolute_symlinks_resolve_inside_the_installed_root() {
    let installed = Installed::new();
    installed.boot_file("vmlinuz-6.1", "k");
    // Absolute: the installed system's /boot, never the host's.
    installed.link("vmlinuz", "/boot/vmlinuz-6.1");
    let entry = installed.find().unwrap();
    assert_eq!(entry.kernel, installed.boot_path("vmlinuz-6.1"));

    // `..` stops at the installed root: the host's /etc/passwd is not a
    // kernel to find, nor is anything else outside.
    let escaping = Installed::new();
    escaping.link("vmlinuz", "../../../../../../etc/passwd");
    let err = escaping.find().unwrap_err().to_string();
    assert!(err.starts_with("no kernel found"), "{err}");
    escaping.write(&escaping.root(), "etc/passwd", "inside");
    let entry = escaping.find().unwrap();
    assert_eq!(entry.kernel, PathBuf::from("/etc/passwd"));
}

#[test]
fn explicit_parameters_win_and_are_checked() {
    let installed = debian12();
    let explicit = Explicit {
        kernel: Some("/boot/vmlinuz-6.1.0-10-amd64".into()),
        initrd: Some("/boot/initrd.img-6.1.0-10-amd64".into()),
        cmdline: Some("root=LABEL=root ro".into()),
    };
    let entry = installed.find_explicit(&explicit).unwrap();
    assert_eq!(entry.kernel, installed.boot_path("vmlinuz-6.1.0-10-amd64"));
    assert_eq!(entry.options.as_deref(), Some("root=LABEL=root ro"));
    assert_eq!(entry.origin, EntryOrigin::Explicit);

    let err = installed
        .find_explicit(&Explicit {
            cmdline: Some("ro".into()),
            ..Explicit::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("without imprint.kexec-kernel="), "{err}");

    let err = installed
        .find_explicit(&Explicit {
            kernel: Some("/boot/../../etc/shadow".into()),
            ..Explicit::default()
        })
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "/boot/../../etc/shadow: '..' is not allowed in a path inside the installed system"
    );

    let err = installed
        .find_explicit(&Explicit {
            kernel: Some("/boot/grub".into()),
            ..Explicit::default()
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("/boot/grub: no such file"), "{err}");

    let err = installed
        .find_explicit(&Explicit {
            kernel: Some("/boot/vmlinuz-9.9".into()),
            ..Explicit::default()
        })
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "imprint.kexec-kernel=/boot/vmlinuz-9.9: no such file in the installed system"
    );
}

#[test]
fn grub_paths_with_dotdot_are_refused() {
    let installed = Installed::new();
    installed.boot_file(
        "grub/grub.cfg",
        "menuentry 'Evil' {\n\tlinux /boot/../../../vmlinuz root=/dev/sda1\n}\n",
    );
    let err = installed.find().unwrap_err().to_string();
    assert!(err.contains("'..' is not allowed"), "{err}");
}

#[test]
fn nothing_found_lists_what_was_looked_for() {
    let installed = Installed::new();
    let err = installed.find().unwrap_err().to_string();
    assert!(err.starts_with("no kernel found in "), "{err}");
    assert!(
        err.ends_with(
            "looked for imprint.kexec-kernel=, BLS entries in /boot/loader/entries, \
             /boot/grub/grub.cfg, /boot/grub2/grub.cfg, /vmlinuz and /boot/vmlinuz"
        ),
        "{err}"
    );
    assert!(!err.contains('\n'));
}

#[test]
fn ubuntu_entry_to_kexec_command_line() {
    let installed = ubuntu2204(UBUNTU2204_GRUB);
    let entry = installed.find().unwrap();
    let line = kexec_cmdline(
        entry.options.as_deref(),
        Some("ignored-because-root-is-set"),
        &[
            "console=tty0".to_string(),
            "console=ttyS0,115200n8".to_string(),
        ],
    )
    .unwrap();
    assert_eq!(
        line,
        format!(
            "root=UUID={UBUNTU_UUID} ro quiet splash vt.handoff=7 console=tty0 console=ttyS0,115200n8"
        )
    );
}
