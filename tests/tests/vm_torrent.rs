//! BitTorrent mode in the real initramfs: PID 1 booted with the P2P
//! initrd concatenated after its own (what iPXE's two `initrd` lines do)
//! finds `/usr/bin/aria2c` there and starts it for `imprint.torrent=`; with
//! the torrent's tracker down the swarm delivers nothing, every chunk comes
//! from the `imprint.url=` mirror, and the golden image it wrote boots.
//! Booted without the P2P initrd, PID 1 warns that aria2c is missing and
//! deploys over HTTP. And through DRP: QEMU's iPXE ROM runs the pack's
//! rendered iPXE template for a machine with `imprint/torrent` set, which
//! loads the P2P initrd after the others, and PID 1 starts aria2c from it.
//!
//! And with a peer: a VM with too little RAM for the pieces keeps them on
//! the tail of its disk through a loop device (the driver from the P2P
//! initrd) and takes every piece from an aria2c seeder on the host. The
//! guest reaches the host only as 10.0.2.2 (QEMU's user network), which a
//! real tracker never reports for a peer on the host, so the tracker here
//! is the HTTP server's one fixed announce answer naming the seeder at
//! 10.0.2.2 (BEP 23's compact form); opentracker itself is in the host and
//! namespace tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use imprint_qemu::http::FixtureServer;
use imprint_qemu::netlab::HostSeeder;
use imprint_qemu::{Disk, Nic, Vm};
use imprint_vm_tests::drp::{DrpLab, DrpMachine, IMAGE_FILE};
use imprint_vm_tests::{
    Artifacts, ResultLine, filter, free_port, golden_image, golden_root_uuid, sha256_hex,
    wait_golden,
};
use serde_json::json;

/// kexec under TCG takes 7–11 s, the golden OS a few more; generous.
const GOLDEN_TIMEOUT: Duration = Duration::from_secs(180);
/// The swarm's stall is seconds; the rest is an ordinary deploy.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
const DISK_SIZE: u64 = 256 << 20;

/// The golden image, zstd-compressed, on `server`; and a torrent of that
/// file (mktorrent, 4 MiB pieces, private, as `scripts/publish-image`
/// makes it) whose tracker is a host port nothing listens on. Returns the
/// image's and the torrent's guest URLs and the raw image.
fn publish_golden(server: &FixtureServer, dir: &Path) -> (String, String, Vec<u8>) {
    let image = std::fs::read(golden_image()).expect("reading the golden image");
    let compressed = filter("zstd", &["-q", "-c", "-3"], &image);
    let torrent = torrent_with_a_dead_tracker(dir, &compressed);
    server.add_file("/golden.img.zst", compressed);
    server.add_file("/golden.img.zst.torrent", torrent);
    (
        server.guest_url("/golden.img.zst"),
        server.guest_url("/golden.img.zst.torrent"),
        image,
    )
}

/// A torrent of `file` (mktorrent, 4 MiB pieces, private, as
/// `scripts/publish-image` makes it) whose tracker is a host port nothing
/// listens on.
fn torrent_with_a_dead_tracker(dir: &Path, file: &[u8]) -> Vec<u8> {
    let zst = dir.join("golden.img.zst");
    std::fs::write(&zst, file).unwrap();
    let torrent = dir.join("golden.img.zst.torrent");
    // 10.0.2.2 is the host on QEMU's user network; the port was free a
    // moment ago and nothing is started on it: connections are refused.
    let tracker = format!("http://10.0.2.2:{}/announce", free_port());
    let out = Command::new("mktorrent")
        .args(["-l", "22", "-p", "-a", &tracker, "-o"])
        .arg(&torrent)
        .arg(&zst)
        .output()
        .unwrap_or_else(|e| panic!("mktorrent (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "mktorrent: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&torrent).unwrap()
}

/// imprint's initramfs with the P2P initrd after it, as a boot loader's
/// second `initrd` line loads them.
fn initrd_with_p2p(dir: &Path) -> PathBuf {
    let artifacts = Artifacts::get();
    let p2p = artifacts.out_dir.join(imprint_build::p2p::P2P_INITRD_NAME);
    let mut bytes = std::fs::read(&artifacts.initramfs).unwrap();
    bytes.extend(
        std::fs::read(&p2p)
            .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build)", p2p.display())),
    );
    let both = dir.join("initrd-with-p2p.img");
    std::fs::write(&both, bytes).unwrap();
    both
}

fn boot(name: &str, params: &str, initrd: &Path, disk: &Path) -> Vm {
    // The pieces' scratch is RAM in PID 1: the image, the decoders'
    // budget and a margin must fit beside the unpacked initrds.
    boot_with(name, params, initrd, disk, 1536)
}

fn boot_with(name: &str, params: &str, initrd: &Path, disk: &Path, memory_mib: u32) -> Vm {
    let artifacts = Artifacts::get();
    Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(initrd)
        .append(format!("console=ttyS0 panic=-1 {params}"))
        .memory_mib(memory_mib)
        .nic(Nic::user())
        .disk(Disk::new(disk))
        .no_reboot(true)
        .console_log(artifacts.log_path(name))
        .start()
        .expect("starting qemu")
}

fn blank_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    imprint_qemu::create_raw_disk(&path, DISK_SIZE).expect("creating the target disk");
    path
}

/// Waits for the result line; panics unless the deploy succeeded.
fn expect_ok(vm: &Vm, image: &[u8]) -> String {
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    let ResultLine::Ok { bytes, sha256, .. } = ResultLine::parse(&line) else {
        panic!(
            "deploy failed: {line} (console {})",
            vm.console_log_path().display()
        );
    };
    // What was written, hashed as written (injection comes after).
    assert_eq!(bytes, image.len() as u64, "{line}");
    assert_eq!(sha256, sha256_hex(image), "{line}");
    line
}

#[test]
fn pid1_runs_aria2c_from_the_p2p_initrd_and_falls_back_to_http_when_the_tracker_is_down() {
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (url, torrent, image) = publish_golden(&server, dir.path());
    let disk = blank_disk(dir.path());
    // After `--`: the installed kernel's console, so the golden OS reports
    // on the serial port after the kexec.
    let vm = boot(
        "torrent_tracker_down",
        &format!(
            "imprint.url={url} imprint.torrent={torrent} imprint.torrent-timeout=3s \
             imprint.seed-time=2s imprint.disk=/dev/vda imprint.hostname=swarm-1 \
             -- console=ttyS0,115200"
        ),
        &initrd_with_p2p(dir.path()),
        &disk,
    );
    let line = expect_ok(&vm, &image);
    // The swarm delivered nothing: every byte came over HTTP.
    assert!(
        line.split_whitespace().any(|field| field == "swarm=0"),
        "{line}"
    );
    let golden = wait_golden(&vm, GOLDEN_TIMEOUT);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off");
    assert_eq!(golden.root_uuid, golden_root_uuid(), "{golden:?}");
    assert_eq!(golden.hostname, "swarm-1", "{golden:?}");
    let console = vm.console();
    assert!(
        console.contains("torrent: aria2c started (/usr/bin/aria2c,"),
        "aria2c from the P2P initrd did not start:\n{console}"
    );
    // Seeding, bounded by imprint.seed-time=, comes before the handoff.
    let seeding = console
        .find("torrent: seeding for 2.0 s")
        .expect("no seeding");
    let stopped = console
        .find("torrent: aria2c stopped")
        .expect("aria2c never stopped");
    let kexec = console.find("kexec into ").expect("no kexec");
    assert!(seeding < stopped && stopped < kexec, "{console}");
    assert!(
        console.contains("torrent: no progress from the swarm"),
        "{console}"
    );
    assert!(!console.contains("aria2c not found"), "{console}");
    // The torrent was fetched from the same server as the image.
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.path == "/golden.img.zst.torrent"),
        "the torrent was never fetched"
    );
}

#[test]
fn without_the_p2p_initrd_pid1_warns_and_deploys_over_http() {
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (url, torrent, image) = publish_golden(&server, dir.path());
    let disk = blank_disk(dir.path());
    let vm = boot(
        "torrent_no_p2p_initrd",
        &format!(
            "imprint.url={url} imprint.torrent={torrent} imprint.disk=/dev/vda \
             imprint.on-success=poweroff"
        ),
        &Artifacts::get().initramfs,
        &disk,
    );
    expect_ok(&vm, &image);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the VM powers off after the result");
    let console = vm.console();
    let warning = console
        .lines()
        .find(|l| l.contains("aria2c not found"))
        .unwrap_or_else(|| panic!("no warning that aria2c is missing:\n{console}"));
    assert!(
        warning.contains("imprint-p2p.img") && warning.contains("over HTTP"),
        "{warning}"
    );
    assert!(!console.contains("torrent: aria2c started"), "{console}");
}

#[test]
fn drp_pxe_boot_with_imprint_torrent_loads_the_p2p_initrd_and_starts_aria2c() {
    let machine = DrpMachine {
        uuid: "3f2a1b4c-0000-4000-8000-0000000000b1".into(),
        name: "swarm-01.lab".into(),
        mac: "52:54:00:12:34:56".into(),
        address: "10.0.2.15".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    // The lab serves the golden image as `zstd -3` makes it (the same
    // bytes here); the torrent of those bytes is on a server of its own,
    // so its URL is known before the machine's templates are rendered.
    let image = std::fs::read(golden_image()).expect("reading the golden image");
    let compressed = filter("zstd", &["-q", "-c", "-3"], &image);
    let torrents = FixtureServer::start().unwrap();
    torrents.add_file(
        "/golden.raw.zst.torrent",
        torrent_with_a_dead_tracker(dir.path(), &compressed),
    );
    let lab = DrpLab::start(
        machine.clone(),
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q test@imprint",
        json!({
            "imprint/torrent": torrents.guest_url("/golden.raw.zst.torrent"),
            "imprint/torrent-timeout": "3s",
            "imprint/seed-time": "0",
        }),
    );
    let script = lab.ipxe_script();
    let initrds: Vec<&str> = script
        .lines()
        .filter(|l| l.starts_with("initrd "))
        .collect();
    assert_eq!(initrds.len(), 3, "{script}");
    assert!(initrds[2].ends_with("/imprint-p2p.img"), "{script}");
    let disk = blank_disk(dir.path());
    let vm = lab.pxe_boot("drp_pxe_torrent", &disk, Nic::user().mac(&machine.mac));
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .unwrap_or_else(|e| panic!("no result line: {e:#}"));
    let ResultLine::Ok { sha256, .. } = ResultLine::parse(&line) else {
        panic!(
            "deploy failed: {line} (console {})",
            vm.console_log_path().display()
        );
    };
    assert_eq!(sha256, lab.image_sha256, "{line}");
    assert!(
        line.split_whitespace().any(|field| field == "swarm=0"),
        "{line}"
    );
    let console = vm.console();
    assert!(
        console.contains("torrent: aria2c started (/usr/bin/aria2c,"),
        "aria2c from the P2P initrd did not start:\n{console}"
    );
    // iPXE fetched the P2P initrd from the provisioner, after the others.
    let fetched: Vec<String> = lab
        .file_requests()
        .into_iter()
        .filter(|r| r.path.ends_with(".img"))
        .map(|r| r.path)
        .collect();
    assert!(
        fetched
            .last()
            .is_some_and(|p| p.ends_with("/imprint-p2p.img")),
        "{fetched:?}"
    );
    assert!(
        lab.file_requests()
            .iter()
            .any(|r| r.path == format!("/{IMAGE_FILE}")),
        "the image came from the provisioner"
    );
    let golden = wait_golden(&vm, GOLDEN_TIMEOUT);
    assert_eq!(golden.root_uuid, golden_root_uuid(), "{golden:?}");
}

/// A tracker's announce answer naming one peer, `ip:port`: the stand-in
/// for a tracker in the VM test. BEP 3 (Tracker responses): "Tracker
/// responses are bencoded dictionaries. ... it must have two keys:
/// interval, which maps to the number of seconds the downloader should
/// wait between regular rerequests, and peers." BEP 23: "the peers list is
/// replaced by a peers string with 6 bytes per peer. The first four bytes
/// are the host (in network byte order), the last two bytes are the port
/// (again in network byte order)." aria2 asks for that form (`compact=1`).
fn announce_naming(ip: [u8; 4], port: u16) -> Vec<u8> {
    let mut answer = b"d8:intervali60e5:peers6:".to_vec();
    answer.extend(ip);
    answer.extend(port.to_be_bytes());
    answer.push(b'e');
    answer
}

#[test]
fn with_little_ram_pid1_keeps_the_pieces_on_the_disks_tail_and_takes_them_from_a_peer() {
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image = std::fs::read(golden_image()).expect("reading the golden image");
    let compressed = filter("zstd", &["-q", "-c", "-3"], &image);
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    let zst = seed.join("golden.img.zst");
    std::fs::write(&zst, &compressed).unwrap();
    let torrent = dir.path().join("golden.img.zst.torrent");
    let made = Command::new("mktorrent")
        .args(["-l", "22", "-p", "-a", &server.guest_url("/announce"), "-o"])
        .arg(&torrent)
        .arg(&zst)
        .output()
        .unwrap_or_else(|e| panic!("mktorrent (scripts/setup installs it): {e}"));
    assert!(made.status.success(), "{made:?}");
    let peer_port = free_port();
    server.add_file("/announce", announce_naming([10, 0, 2, 2], peer_port));
    server.add_file("/golden.img.zst", compressed.clone());
    server.add_file("/golden.img.zst.torrent", std::fs::read(&torrent).unwrap());
    let _seeder = HostSeeder::start(&torrent, &seed, peer_port, &[]).unwrap();
    let disk = blank_disk(dir.path());
    // 640 MiB: less than the pieces, the decoders' 256 MiB and PID 1's
    // 256 MiB margin leave beside the kernel and the unpacked initrds.
    let vm = boot_with(
        "torrent_disk_tail",
        &format!(
            "imprint.url={} imprint.torrent={} imprint.torrent-timeout=20s \
             imprint.seed-time=2s imprint.disk=/dev/vda imprint.hostname=swarm-2 \
             -- console=ttyS0,115200",
            server.guest_url("/golden.img.zst"),
            server.guest_url("/golden.img.zst.torrent")
        ),
        &initrd_with_p2p(dir.path()),
        &disk,
        640,
    );
    let line = expect_ok(&vm, &image);
    let golden = wait_golden(&vm, GOLDEN_TIMEOUT);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off");
    assert_eq!(golden.hostname, "swarm-2", "{golden:?}");
    let console = vm.console();
    // Every byte from the peer; the mirror sent the probe's one byte and
    // the 9-byte end where a seek table would say so.
    assert!(
        line.split_whitespace()
            .any(|field| field == format!("swarm={}", compressed.len())),
        "{line}\n{console}"
    );
    let from_mirror: u64 = server
        .requests()
        .iter()
        .filter(|r| r.path == "/golden.img.zst")
        .map(|r| r.bytes_sent)
        .sum();
    assert!(
        from_mirror <= 10,
        "{from_mirror} bytes from the mirror: {line}"
    );
    // The pieces went to the disk's tail, through a loop device whose
    // driver came with the P2P initrd, and are still there after the OS
    // booted from the image before them.
    let named = console
        .lines()
        .find(|l| l.contains("the pieces go to bytes "))
        .unwrap_or_else(|| panic!("no scratch on the disk:\n{console}"));
    assert!(named.contains("of /dev/vda (/dev/loop"), "{named}");
    let range = named
        .split("the pieces go to bytes ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    let (start, end) = range.split_once("..").unwrap();
    let (start, end): (usize, usize) = (start.parse().unwrap(), end.parse().unwrap());
    assert!(
        start >= image.len() && end as u64 <= DISK_SIZE - (1 << 20),
        "{named}"
    );
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[start..start + compressed.len()] == compressed[..],
        "the pieces are not on the disk's tail"
    );
    let seeding = console
        .find("torrent: seeding for 2.0 s")
        .expect("no seeding");
    let kexec = console.find("kexec into ").expect("no kexec");
    assert!(seeding < kexec, "{console}");
}
