//! DRP's network conventions in a VM: `BOOTIF=` picks the NIC DHCP runs on,
//! `provisioner.ip=/gw=/dns=` give a static setup without DHCP, and
//! `provisioner.vlan=/mtu=` create and configure a tagged interface.
//!
//! QEMU 7.2's `-netdev user` cannot switch its DHCP server off (libslirp's
//! `disable_dhcp` is not exposed: `dhcp=off` is refused as an invalid
//! parameter), so the static tests prove the absence of DHCP from the console
//! log and the static address by reaching PID 1's `/status` endpoint through
//! a host forward to exactly that address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Nic, Vm};
use imprint_vm_tests::{
    Artifacts, DEPLOY_TIMEOUT, ResultLine, free_port, get_status, sha256_hex, test_image,
};

const BOOT_MAC: &str = "52:54:00:00:00:02";
const OTHER_MAC: &str = "52:54:00:00:00:01";
/// Where PID 1 serves `/status` in the guest.
const STATUS_PORT: u16 = 8080;

/// Boots imprint with `nics` (not the single default NIC of `boot_imprint`).
fn boot(name: &str, params: &str, disk: &Path, nics: Vec<Nic>) -> Vm {
    let artifacts = Artifacts::get();
    let mut builder = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&artifacts.initramfs)
        .append(format!(
            "console=ttyS0 panic=-1 imprint.on-failure=poweroff {params}"
        ))
        .memory_mib(1024)
        .console_log(artifacts.log_path(name))
        .disk(Disk::new(disk));
    for nic in nics {
        builder = builder.nic(nic);
    }
    builder.start().expect("starting qemu")
}

fn disk_file(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    path
}

#[test]
fn bootif_picks_the_nic_that_dhcp_runs_on() {
    let image = test_image(4 << 20, 11);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path());

    // Both NICs have carrier and a DHCP server behind them; by name order
    // eth0 would be tried first, so the lease on the second NIC can only
    // come from BOOTIF=.
    let vm = boot(
        "net_bootif",
        &format!(
            "imprint.on-success=poweroff imprint.url={} imprint.disk=/dev/vda BOOTIF=01-{}",
            server.guest_url("golden.raw"),
            BOOT_MAC.replace(':', "-")
        ),
        &disk,
        vec![Nic::user().mac(OTHER_MAC), Nic::user().mac(BOOT_MAC)],
    );
    let line = vm.expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT).unwrap();
    let result = ResultLine::parse(&line);
    let ResultLine::Ok { sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(sha256, sha256_hex(&image));
    vm.wait_exit(Duration::from_secs(60)).unwrap();

    let console = vm.console();
    assert!(
        console.contains(&format!("net: eth0 up, mac {OTHER_MAC}"))
            && console.contains(&format!("net: eth1 up, mac {BOOT_MAC}")),
        "the BOOTIF NIC is the second by name:\n{console}"
    );
    assert!(
        console.contains(&format!("dhcp: eth1 ({BOOT_MAC}) leased 10.0.2.15/24")),
        "the BOOTIF NIC got the lease:\n{console}"
    );
    assert!(
        !console.contains(&format!("({OTHER_MAC}) leased")),
        "only the BOOTIF NIC is configured with its lease (the other may get an offer):\n{console}"
    );
}

#[test]
fn static_address_without_dhcp_serves_status_on_that_address() {
    let image = test_image(4 << 20, 12);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path());
    let host_port = free_port();

    // The forward goes to 10.0.2.50 only: an answer proves the guest holds
    // that address, not slirp's DHCP one (10.0.2.15).
    let vm = boot(
        "net_static",
        &format!(
            "imprint.on-success=none imprint.status-port={STATUS_PORT} imprint.url={} \
             imprint.disk=/dev/vda provisioner.ip=10.0.2.50/24 provisioner.gw=10.0.2.2 \
             provisioner.dns=10.0.2.3",
            server.guest_url("golden.raw")
        ),
        &disk,
        vec![
            Nic::user()
                .mac(BOOT_MAC)
                .hostfwd(format!("tcp:127.0.0.1:{host_port}-10.0.2.50:{STATUS_PORT}")),
        ],
    );
    let line = vm.expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT).unwrap();
    let result = ResultLine::parse(&line);
    let ResultLine::Ok { sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(sha256, sha256_hex(&image));

    let response = get_status(host_port, Duration::from_secs(60));
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "{response}"
    );
    let console = vm.console();
    assert!(
        console.contains("net: static 10.0.2.50/24 on eth0 via 10.0.2.2"),
        "the static setup is logged:\n{console}"
    );
    assert!(
        !console.contains("dhcp:"),
        "no DHCP ran with provisioner.ip=:\n{console}"
    );
    vm.kill().unwrap();
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "the image is on the disk"
    );
}

/// Slirp drops 802.1Q-tagged frames, so nothing can be fetched over the
/// VLAN: this checks that 8021q is loaded, `eth0.7` is created with the MTU
/// and holds the address, and that the deploy then fails on the fetch (not
/// on the network setup). Traffic over a real tagged link is not tested.
#[test]
fn vlan_interface_is_created_and_configured() {
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path());

    let vm = boot(
        "net_vlan",
        &format!(
            "imprint.url={} imprint.disk=/dev/vda provisioner.ip=10.0.2.50/24 \
             provisioner.gw=10.0.2.2 provisioner.vlan=7 provisioner.mtu=1400",
            server.guest_url("golden.raw")
        ),
        &disk,
        vec![Nic::user().mac(BOOT_MAC)],
    );
    let timeout = Duration::from_secs(120);
    vm.expect("net: eth0 mtu 1400", timeout).unwrap();
    vm.expect("loaded 8021q", timeout).unwrap();
    vm.expect("net: eth0.7 up (vlan 7 on eth0)", timeout)
        .unwrap();
    vm.expect("net: static 10.0.2.50/24 on eth0.7 via 10.0.2.2", timeout)
        .unwrap();
    vm.expect("network up after", timeout).unwrap();
    let console = vm.console();
    assert!(!console.contains("dhcp:"), "no DHCP ran:\n{console}");
    vm.kill().unwrap();
}
