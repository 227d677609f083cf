//! UEFI boot entries under OVMF with a variable store that outlives the
//! VM, as NVRAM does: the golden image carries its loader only at a vendor
//! path (`\EFI\golden\grubx64.efi`, no `\EFI\BOOT\BOOTX64.EFI`), so only
//! the entry imprint writes can boot it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Nic, OVMF_VARS, Vm};
use imprint_vm_tests::{Artifacts, DEPLOY_TIMEOUT, golden_image, wait_golden};

/// The golden image with its UKI moved from the removable path to a
/// vendor directory, as an installed distribution keeps its loader.
fn vendor_path_image(dir: &Path) -> PathBuf {
    let image = dir.join("golden-vendor.img");
    std::fs::copy(golden_image(), &image).unwrap();
    // The ESP starts at 1 MiB (scripts/golden-os); mtools reads it in place.
    let esp = format!("{}@@1M", image.display());
    for args in [
        vec!["mmd", "-i", &esp, "::/EFI/golden"],
        vec![
            "mmove",
            "-i",
            &esp,
            "::/EFI/BOOT/BOOTX64.EFI",
            "::/EFI/golden/grubx64.efi",
        ],
    ] {
        let status = Command::new(args[0])
            .args(&args[1..])
            .env("MTOOLS_SKIP_CHECK", "1")
            .status()
            .unwrap_or_else(|e| panic!("running {} (mtools): {e}", args[0]));
        assert!(status.success(), "{args:?}");
    }
    image
}

/// Boots imprint under OVMF with the variable store `vars`, deploying the
/// image at `url` onto `disk`; returns the console after the result line.
fn deploy(name: &str, vars: &Path, url: &str, disk: &Path) -> (String, String) {
    let artifacts = Artifacts::get();
    // The bzImage: OVMF loads QEMU's -kernel as an EFI program (the PVH
    // vmlinux the other tests boot faster is no EFI program, and OVMF goes
    // on to its boot options).
    let vm = Vm::builder()
        .uefi_with_vars(vars)
        .kernel(&artifacts.bzimage)
        .initrd(&artifacts.initramfs)
        .append(format!(
            "console=ttyS0 panic=-1 imprint.on-success=poweroff imprint.on-failure=poweroff \
             imprint.url={url} imprint.disk=/dev/vda imprint.boot-order=network-first"
        ))
        .memory_mib(1024)
        .nic(Nic::user())
        .disk(Disk::new(disk))
        .console_log(artifacts.log_path(name))
        .start()
        .expect("starting qemu");
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    (line, vm.console())
}

/// The `UEFI boot entry: …` line imprint logged.
fn entry_line(console: &str) -> String {
    console
        .lines()
        .find_map(|l| {
            l.split_once("UEFI boot entry: ")
                .map(|(_, e)| e.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no boot entry logged:\n{console}"))
}

/// `BootOrder 0003,0009,…` of an entry line, as numbers.
fn boot_order(entry: &str) -> Vec<String> {
    let (_, order) = entry.split_once("BootOrder ").expect("the order is logged");
    order
        .split([';', ' '])
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_firmware_boots_the_deployed_disk_through_the_entry_imprint_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("OVMF_VARS.fd");
    std::fs::copy(OVMF_VARS, &vars).unwrap();
    let image = vendor_path_image(dir.path());
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.img", std::fs::read(&image).unwrap());
    let url = server.guest_url("golden.img");
    let disk = dir.path().join("disk.raw");
    imprint_qemu::create_raw_disk(&disk, 256 << 20).unwrap();

    let (line, console) = deploy("boot_entry_first", &vars, &url, &disk);
    assert!(line.contains("IMPRINT-RESULT: ok "), "{line}\n{console}");
    let entry = entry_line(&console);
    // FAT is case-insensitive; the name is as mtools stored it (8.3, upper case).
    assert!(
        entry
            .to_ascii_lowercase()
            .contains("/file(\\efi\\golden\\grubx64.efi)")
            && entry.contains("HD(1,GPT,c3a0e1f2-1b2c-4d3e-8f4a-5b6c7d8e9f02,"),
        "{entry}"
    );
    let number = entry.split(' ').next().unwrap().to_owned();
    assert!(line.contains(&format!(" boot-entry={number}")), "{line}");
    // OVMF writes its own entries on its first boot from disk or network,
    // not before a -kernel boot: here ours is the only one (the order of
    // network entries is checked against OVMF's real ones in efi::golden).
    let order = boot_order(&entry);
    assert!(
        order.iter().any(|n| format!("Boot{n}") == number),
        "{entry}"
    );

    // The firmware alone, no kernel given and no NIC to PXE from: the only
    // way to the golden OS is the entry.
    let artifacts = Artifacts::get();
    let vm = Vm::builder()
        .uefi_with_vars(&vars)
        .disk(Disk::new(&disk))
        .console_log(artifacts.log_path("boot_entry_firmware"))
        .start()
        .expect("starting qemu");
    let report = wait_golden(&vm, Duration::from_secs(240));
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert_eq!(report.hostname, "golden", "{report:?}");
    // OVMF's boot manager says which entry it started.
    let firmware = vm.console();
    assert!(
        firmware.contains(&format!("BdsDxe: starting {number} \"Debian GNU/Linux 12")),
        "{firmware}"
    );

    // A second deploy to the same disk leaves exactly one entry for it.
    let (line, console) = deploy("boot_entry_second", &vars, &url, &disk);
    assert!(line.contains("IMPRINT-RESULT: ok "), "{line}\n{console}");
    let again = entry_line(&console);
    assert!(
        again.starts_with(&format!("{number} ")),
        "{again}\nfirst: {entry}"
    );
    let ours = boot_order(&again)
        .iter()
        .filter(|n| format!("Boot{n}") == number)
        .count();
    assert_eq!(ours, 1, "{again}");
}
