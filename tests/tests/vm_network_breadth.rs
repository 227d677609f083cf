//! Network breadth in a VM: several NICs of which one has no link must not
//! hold up the deploy, and a deploy over IPv6 alone (SLAAC from QEMU's
//! router advertisement, the image at `http://[fec0::2]:port/`) works.
//!
//! The dead port is made with the QEMU monitor: the VM starts paused, the
//! second NIC's link is set down (`set_link net1 off`), then the CPUs run,
//! so the guest never sees carrier on it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Nic, Vm};
use imprint_vm_tests::{Artifacts, DEPLOY_TIMEOUT, ResultLine, sha256_hex, test_image};

const UP_MAC: &str = "52:54:00:00:00:01";
const DOWN_MAC: &str = "52:54:00:00:00:02";

fn disk_file(dir: &Path) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    path
}

fn builder(name: &str, params: &str, disk: &Path) -> imprint_qemu::VmBuilder {
    let artifacts = Artifacts::get();
    Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&artifacts.initramfs)
        .append(format!(
            "console=ttyS0 panic=-1 imprint.on-failure=poweroff imprint.on-success=poweroff \
             imprint.disk=/dev/vda {params}"
        ))
        .memory_mib(1024)
        .console_log(artifacts.log_path(name))
        .disk(Disk::new(disk))
}

/// The deploy's result line, which must be a success writing `image`.
fn expect_deployed(vm: &Vm, image: &[u8]) {
    let line = vm.expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT).unwrap();
    let result = ResultLine::parse(&line);
    let ResultLine::Ok { sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(sha256, sha256_hex(image));
}

/// The seconds in PID 1's `<what> after 1.23 s` line.
fn seconds_until(console: &str, what: &str) -> f64 {
    let marker = format!("{what} after ");
    let line = console
        .lines()
        .find(|line| line.contains(&marker))
        .unwrap_or_else(|| panic!("no '{marker}' line:\n{console}"));
    let seconds = line
        .split(&marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok());
    seconds.unwrap_or_else(|| panic!("unreadable: {line}"))
}

#[test]
fn a_bootif_nic_without_link_does_not_hold_up_the_deploy() {
    let image = test_image(4 << 20, 21);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path());
    let monitor = dir.path().join("monitor.sock");

    // BOOTIF names the NIC without link: the worst case, since its lease
    // is the one that would be waited for.
    let vm = builder(
        "net_breadth_link_down",
        &format!(
            "imprint.url={} BOOTIF=01-{}",
            server.guest_url("golden.raw"),
            DOWN_MAC.replace(':', "-")
        ),
        &disk,
    )
    .nic(Nic::user().mac(UP_MAC))
    .nic(Nic::user().mac(DOWN_MAC))
    .monitor_socket(&monitor)
    .paused()
    .start()
    .expect("starting qemu");
    let answer = vm.monitor("set_link net1 off").unwrap();
    assert!(answer.is_empty(), "set_link said: {answer}");
    vm.monitor("cont").unwrap();

    expect_deployed(&vm, &image);
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    let console = vm.console();
    assert!(
        console.contains(&format!("net: eth1 up, mac {DOWN_MAC}")),
        "the dead NIC was brought up:\n{console}"
    );
    assert!(
        console.contains(&format!("dhcp: eth0 ({UP_MAC}) leased 10.0.2.15/24")),
        "the NIC with link was configured:\n{console}"
    );
    assert!(
        !console.contains(&format!("({DOWN_MAC}) offered")),
        "no DHCP lease can come over a NIC without link:\n{console}"
    );
    // From the NICs coming up to the address being set. Before, DHCP only
    // started after 6 s of waiting for the BOOTIF NIC's carrier; now the
    // lease from eth0 waits 2 s at most for the BOOTIF NIC's, and the dead
    // port is never waited for longer than the link timeout (5 s).
    let seconds = seconds_until(&console, "network up") - seconds_until(&console, "drivers loaded");
    assert!(
        seconds < 5.0,
        "the network took {seconds:.2} s with one dead port:\n{console}"
    );
}

#[test]
fn deploys_over_ipv6_only() {
    let image = test_image(4 << 20, 22);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image.clone());
    let url = server
        .guest_url6("golden.raw")
        .expect("the host has no [::1] for the fixture server");
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path());

    // No IPv4 at all on the guest's network: no DHCPv4 answer, no route.
    let vm = builder("net_breadth_ipv6", &format!("imprint.url={url}"), &disk)
        .nic(Nic::user().mac(UP_MAC).netdev_options("ipv4=off,ipv6=on"))
        .start()
        .expect("starting qemu");
    expect_deployed(&vm, &image);
    vm.wait_exit(Duration::from_secs(60)).unwrap();

    let console = vm.console();
    assert!(
        console.contains("net: using eth0 over IPv6: fec0::5054:ff:fe00:1/64 (slaac) via fe80::2"),
        "the SLAAC address from slirp's prefix is used:\n{console}"
    );
    assert!(
        !console.contains("leased 10."),
        "no IPv4 lease on an IPv4-less network:\n{console}"
    );
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.path == "/golden.raw"),
        "the image was fetched: {requests:?}"
    );
}
