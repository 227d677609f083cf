//! The handover, end to end with a real installed OS (the golden image of
//! `scripts/golden-os`): imprint deploys it, injects an identity, and then
//! kexecs into it, or reboots so that the firmware boots it; a failed deploy
//! halts and keeps answering `/status`; `retry:N` runs the deploy again; the
//! report webhook receives the events in order.

use std::path::Path;
use std::time::Duration;

use imprint_qemu::http::{Behavior, FixtureServer, RequestRecord};
use imprint_qemu::{Disk, Nic, Vm};
use imprint_vm_tests::{
    Artifacts, DEPLOY_TIMEOUT, GoldenReport, ResultLine, filter, free_port, get_status,
    golden_image, golden_root_uuid, sha256_hex, wait_golden,
};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q test@imprint";
/// kexec under TCG takes 7–11 s, the golden OS a few more; generous.
const GOLDEN_TIMEOUT: Duration = Duration::from_secs(180);
const DISK_SIZE: u64 = 256 << 20;

/// Serves the golden image zstd-compressed, as a deploy server would.
fn serve_golden(server: &FixtureServer) -> String {
    let image = std::fs::read(golden_image()).expect("reading the golden image");
    let compressed = filter("zstd", &["-q", "-c", "-3"], &image);
    server.add_file("/golden.img.zst", compressed);
    server.guest_url("/golden.img.zst")
}

fn blank_disk(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    imprint_qemu::create_raw_disk(&path, DISK_SIZE).expect("creating the target disk");
    path
}

/// Boots imprint with `params` as the only imprint settings (unlike
/// `boot_imprint`, no success policy is forced).
fn boot(name: &str, params: &str, disk: &Path, nic: Nic, no_reboot: bool) -> Vm {
    let artifacts = Artifacts::get();
    Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&artifacts.initramfs)
        .append(format!("console=ttyS0 panic=-1 {params}"))
        .memory_mib(1024)
        .nic(nic)
        .disk(Disk::new(disk))
        .no_reboot(no_reboot)
        .console_log(artifacts.log_path(name))
        .start()
        .expect("starting qemu")
}

fn expect_ok(vm: &Vm) -> ResultLine {
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    let result = ResultLine::parse(&line);
    assert!(
        matches!(result, ResultLine::Ok { .. }),
        "deploy failed: {line} (console {})",
        vm.console_log_path().display()
    );
    result
}

/// The JSON bodies POSTed to `path`, in the order they arrived.
fn posted(requests: &[RequestRecord], path: &str) -> Vec<serde_json::Value> {
    requests
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .map(|r| serde_json::from_slice(&r.body).expect("a JSON event"))
        .collect()
}

#[test]
fn deploy_inject_and_kexec_into_the_installed_os() {
    let server = FixtureServer::start().unwrap();
    let url = serve_golden(&server);
    let events_url = server.guest_url("/events");
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());
    // Console arguments after `--` are DRP's kernel-console: they must
    // reach the installed kernel, and imprint's own must not.
    let vm = boot(
        "handoff_kexec",
        &format!(
            "imprint.url={url} imprint.disk=/dev/vda imprint.hostname=kexec-1 \
             \"imprint.ssh-key={KEY}\" imprint.report={events_url} \
             -- console=ttyS0,115200"
        ),
        &disk,
        Nic::user(),
        true,
    );
    expect_ok(&vm);
    let golden = wait_golden(&vm, GOLDEN_TIMEOUT);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off");
    let console = vm.console();
    assert!(console.contains("kexec into /boot/vmlinuz-"), "{console}");
    let timeline = timeline(&console);
    let names: Vec<&str> = timeline.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kernel",
            "pid1",
            "drivers",
            "link",
            "lease",
            "spec",
            "first-byte",
            "last-byte",
            "verified",
            "injected",
            "handoff"
        ]
    );
    assert!(
        timeline.windows(2).all(|w| w[0].1 <= w[1].1),
        "the stages come in order: {timeline:?}"
    );

    let uuid = golden_root_uuid();
    // The BLS entry wins over grub.cfg and the symlinks; its options are
    // kept, root= is not doubled, and the `--` console argument is added.
    assert_eq!(
        golden.cmdline,
        format!("root=UUID={uuid} ro golden.entry=bls console=ttyS0,115200")
    );
    assert_eq!(golden.root_uuid, uuid);
    assert_eq!(golden.hostname, "kexec-1");
    assert_eq!(golden.keys, sha256_hex(format!("{KEY}\n").as_bytes()));
    assert_eq!(golden.machine_id, "empty");

    // The webhook got every event, in order, ending with the handoff.
    let requests = server.requests_at_least(1, Duration::from_secs(5));
    let events = posted(&requests, "/events");
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .filter(|name| *name != "progress")
        .collect();
    assert_eq!(
        names,
        ["started", "verified", "injected", "handoff"],
        "{events:#?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order: {seqs:?}");
    let started = &events[0]["machine"];
    assert!(
        started["nics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["mac"] == "52:54:00:12:34:56"),
        "{started}"
    );
    assert!(
        started["disks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "vda" && d["size_bytes"] == DISK_SIZE),
        "{started}"
    );
    let handoff = events.last().unwrap();
    assert_eq!(handoff["how"], "kexec");
    assert!(
        handoff["timeline"]["handoff"].as_f64().unwrap() >= timeline[1].1,
        "{handoff}"
    );
    assert_eq!(handoff["cmdline"], golden.cmdline.as_str());
    let injected = events.iter().find(|e| e["event"] == "injected").unwrap();
    assert!(injected["changes"].as_u64().unwrap() >= 2, "{injected}");
    for event in &events {
        assert!(
            !event.to_string().contains("AAAAC3NzaC1lZDI1NTE5"),
            "no key material in events: {event}"
        );
    }
}

/// The `IMPRINT-TIMELINE:` line's marks, in the order printed.
fn timeline(console: &str) -> Vec<(String, f64)> {
    let line = console
        .lines()
        .find_map(|l| l.split_once("IMPRINT-TIMELINE: ").map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no IMPRINT-TIMELINE line: {console}"));
    line.split_whitespace()
        .map(|field| {
            let (name, value) = field.split_once('=').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[test]
fn reboot_then_the_firmware_boots_the_deployed_disk() {
    let server = FixtureServer::start().unwrap();
    let url = serve_golden(&server);
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());
    // -no-reboot: QEMU exits where real firmware would POST again.
    let vm = boot(
        "handoff_reboot",
        &format!(
            "imprint.url={url} imprint.disk=/dev/vda imprint.hostname=rebooted-2 \
             imprint.on-success=reboot"
        ),
        &disk,
        Nic::user(),
        true,
    );
    expect_ok(&vm);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the machine reboots after the deploy");
    let console = vm.console();
    assert!(!console.contains("kexec into"), "{console}");

    // The same disk, now booted by UEFI firmware alone (no -kernel): the
    // ESP's UKI starts the installed OS, which holds the injected identity.
    let artifacts = Artifacts::get();
    let firmware = Vm::builder()
        .uefi()
        .disk(Disk::new(&disk))
        .console_log(artifacts.log_path("handoff_reboot_uefi"))
        .start()
        .expect("starting qemu with OVMF");
    let golden: GoldenReport = wait_golden(&firmware, GOLDEN_TIMEOUT);
    firmware
        .wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off");
    assert!(
        golden.cmdline.contains("golden.entry=uki"),
        "{}",
        golden.cmdline
    );
    assert_eq!(golden.hostname, "rebooted-2");
    assert_eq!(golden.machine_id, "empty");
}

/// The status document, once the endpoint answers 200.
fn status_document(port: u16) -> serde_json::Value {
    let response = get_status(port, Duration::from_secs(60));
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    serde_json::from_str(body).expect("the status document is JSON")
}

#[test]
fn a_failed_deploy_halts_and_keeps_answering_status() {
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());
    let port = free_port();
    let missing = server.guest_url("/missing.img");
    let vm = boot(
        "handoff_halt_status",
        &format!(
            "imprint.url={missing} imprint.disk=/dev/vda imprint.status-port=8080 \
             imprint.on-failure=halt"
        ),
        &disk,
        Nic::user().hostfwd(format!("tcp:127.0.0.1:{port}-:8080")),
        true,
    );
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    assert!(line.contains("error") && line.contains("404"), "{line}");

    // Halted, not powered off: the status endpoint keeps answering, through
    // QEMU's port forwarding, with the error.
    let document = status_document(port);
    assert_eq!(document["state"], "failed", "{document:#}");
    let error = document["error"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("404") && error.contains("/missing.img"),
        "{document:#}"
    );
    assert_eq!(document["error"]["stage"], "write", "{document:#}");
    // Nothing was written before the 404: the failure is at byte 0.
    assert_eq!(document["error"]["offset"], 0, "{document:#}");
    assert!(
        document["timeline"]["lease"].as_f64().is_some(),
        "{document:#}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(!vm.has_exited(), "on-failure=halt keeps the machine up");
    assert_eq!(status_document(port)["state"], "failed", "still answering");
    vm.kill().unwrap();
}

#[test]
fn retry_runs_the_whole_deploy_again() {
    let server = FixtureServer::start().unwrap();
    let url = serve_golden(&server);
    // The first run is refused outright (404 is not retried by the
    // transfer itself); the second gets the image.
    server.push_behaviors("/golden.img.zst", [Behavior::Status(404)]);
    let events_url = server.guest_url("/events");
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());
    let vm = boot(
        "handoff_retry",
        &format!(
            "imprint.url={url} imprint.disk=/dev/vda imprint.on-failure=retry:2 \
             imprint.on-success=poweroff imprint.report={events_url}"
        ),
        &disk,
        Nic::user(),
        true,
    );
    let first = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("the first run's result");
    assert!(first.contains("error") && first.contains("404"), "{first}");
    vm.expect("running it again in 10 s", Duration::from_secs(10))
        .expect("the retry is announced");
    let console_before = vm.console().matches("IMPRINT-RESULT:").count();
    assert_eq!(console_before, 1);
    vm.expect("IMPRINT-RESULT: ok", DEPLOY_TIMEOUT)
        .expect("the second run succeeds");
    vm.wait_exit(Duration::from_secs(60))
        .expect("powers off after success");

    let events = posted(&server.requests(), "/events");
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .filter(|name| *name != "progress")
        .collect();
    assert_eq!(
        names,
        [
            "started", "failed", "retrying", "verified", "injected", "handoff"
        ],
        "{events:#?}"
    );
    let retrying = events.iter().find(|e| e["event"] == "retrying").unwrap();
    assert_eq!(retrying["attempt"], 2);
    assert_eq!(retrying["of"], 3);
    assert_eq!(events.last().unwrap()["how"], "poweroff");
}
