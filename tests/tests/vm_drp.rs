//! The flagship: a real PXE boot of imprint from Digital Rebar content.
//! QEMU's iPXE ROM gets DHCP and TFTP from QEMU's user network, runs the
//! bootenv's rendered iPXE script, and loads imprint's kernel and initramfs
//! over HTTP from the DRP stand-in's file server. PID 1 reads the machine's
//! rendered `imprint.json`, deploys the golden OS (`dd-zst`), injects the
//! machine's identity, reports the job to DRP's API and kexecs into the
//! installed OS, which reports what it found.
//!
//! The second test gives imprint a static address through `network-data`.
//! QEMU 7.2 cannot switch its DHCP server off (`dhcp=off` is refused) and
//! its iPXE ROM needs DHCP to learn its boot file, so the firmware gets
//! `10.0.2.100` (`dhcpstart=`) while imprint must use the rendered
//! `provisioner.ip=10.0.2.50/24` without sending any DHCP: proven by a host
//! forward to exactly `10.0.2.50` reaching PID 1's `/status`, by a console
//! without DHCP lines, and by QEMU's capture of the NIC, where every DHCP
//! message carries iPXE's vendor class (in the first test imprint's DHCP,
//! which has none, shows up there).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use imprint_qemu::drp::ApiCall;
use imprint_qemu::{Nic, Vm};
use imprint_vm_tests::drp::{DrpLab, DrpMachine, IMAGE_FILE};
use imprint_vm_tests::{
    DEPLOY_TIMEOUT, ResultLine, free_port, get_status, sha256_hex, wait_golden,
};
use serde_json::{Value, json};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0wmN/Cr3JXqmLW7u+g9pTh+wyqDHpSQEIQczXkVx9q test@imprint";
/// The iPXE ROM under TCG adds DHCP, TFTP and two HTTP downloads to the boot.
const PXE_DEPLOY_TIMEOUT: Duration = Duration::from_secs(DEPLOY_TIMEOUT.as_secs() + 120);
/// kexec under TCG takes 7–11 s, the golden OS a few more; generous.
const GOLDEN_TIMEOUT: Duration = Duration::from_secs(180);
const DISK_SIZE: u64 = 256 << 20;
const STATUS_PORT: u16 = 8080;

fn blank_disk(dir: &Path) -> PathBuf {
    let path = dir.join("disk.img");
    imprint_qemu::create_raw_disk(&path, DISK_SIZE).expect("creating the target disk");
    path
}

/// The result line; the test fails on anything but `ok`, with what the
/// provisioner served (iPXE itself prints to VGA only).
fn expect_ok(vm: &Vm, lab: &DrpLab) -> ResultLine {
    let line = vm
        .expect("IMPRINT-RESULT:", PXE_DEPLOY_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "no result line: {e:#}\nprovisioner requests: {:#?}",
                summary(&lab.file_requests())
            )
        });
    let result = ResultLine::parse(&line);
    assert!(
        matches!(result, ResultLine::Ok { .. }),
        "deploy failed: {line} (console {})",
        vm.console_log_path().display()
    );
    result
}

fn summary(requests: &[imprint_qemu::http::RequestRecord]) -> Vec<String> {
    requests
        .iter()
        .map(|r| format!("{} {} {}", r.method, r.path, r.status))
        .collect()
}

/// Waits until the machine's only job has left `running` (PID 1 reports in
/// the background), then returns it.
fn settled_job(lab: &DrpLab) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = lab.drp.jobs();
        assert!(jobs.len() <= 1, "one job for one deploy: {jobs:#?}");
        let state = jobs.first().map(|job| job["State"].clone());
        if matches!(
            state.as_ref().and_then(Value::as_str),
            Some("finished" | "failed")
        ) || Instant::now() >= deadline
        {
            return jobs
                .into_iter()
                .next()
                .unwrap_or_else(|| panic!("no job was created: {:#?}", lab.drp.calls()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The `/State` moves the job PATCHes made: (tested value, new value).
fn state_moves(calls: &[ApiCall], job: &str) -> Vec<(String, String)> {
    let path = format!("/api/v3/jobs/{job}");
    calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.path == path)
        .map(|c| {
            assert!(c.authorized && c.status == 200, "{c:?}");
            let ops = c.json();
            let value = |op: &str| {
                ops.as_array()
                    .into_iter()
                    .flatten()
                    .find(|o| o["op"] == op && o["path"] == "/State")
                    .and_then(|o| o["value"].as_str())
                    .unwrap_or_else(|| panic!("PATCH without {op} /State: {ops}"))
                    .to_owned()
            };
            (value("test"), value("replace"))
        })
        .collect()
}

/// Checks what PID 1 did through DRP's API: one job, created → running →
/// finished, a log holding the result line, and `imprint/last-deploy`.
fn check_reported(lab: &DrpLab, result: &ResultLine) {
    let uuid = &lab.machine.uuid;
    let job = settled_job(lab);
    let id = job["Uuid"].as_str().expect("the job's Uuid");
    assert_eq!(job["State"], "finished", "{job}");
    assert_eq!(job["Machine"], uuid.as_str());
    // After the job, PID 1 asks for the next one, which moves the workflow
    // on: nothing is left, so the machine's BootEnv becomes `local`.
    let deadline = Instant::now() + Duration::from_secs(30);
    while lab.drp.machine_bootenv(uuid).as_deref() != Some("local") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        lab.drp.machine_bootenv(uuid).as_deref(),
        Some("local"),
        "{:#?}",
        lab.drp.calls()
    );
    let calls = lab.drp.calls();
    let unauthorized: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.path.starts_with("/api/") && !c.authorized)
        .collect();
    assert!(unauthorized.is_empty(), "{unauthorized:#?}");
    let created: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/api/v3/jobs")
        .collect();
    assert_eq!(created.len(), 2, "{calls:#?}");
    assert_eq!(created[0].status, 201);
    assert_eq!(created[1].status, 204, "the next job: nothing left");
    assert_eq!(created[0].json()["Machine"], uuid.as_str());
    assert_eq!(
        state_moves(&calls, id),
        [
            ("created".to_owned(), "running".to_owned()),
            ("running".to_owned(), "finished".to_owned())
        ]
    );
    let log_path = format!("/api/v3/jobs/{id}/log");
    assert!(
        calls
            .iter()
            .any(|c| c.method == "PUT" && c.path == log_path && c.status == 204),
        "{calls:#?}"
    );
    let log = String::from_utf8_lossy(&lab.drp.job_log(id)).into_owned();
    let ResultLine::Ok { sha256, .. } = result else {
        unreachable!("checked by expect_ok")
    };
    assert!(
        log.lines()
            .any(|l| l.contains("IMPRINT-RESULT: ok") && l.contains(sha256.as_str())),
        "the job log has the result line:\n{log}"
    );
    assert!(!log.contains(&lab.drp.token()), "no token in the log");

    let last = lab
        .drp
        .machine_param(uuid, "imprint/last-deploy")
        .unwrap_or_else(|| panic!("imprint/last-deploy is not set: {calls:#?}"));
    assert_eq!(last["result"], "ok", "{last}");
    assert_eq!(last["sha256"], lab.image_sha256.as_str(), "{last}");
    assert_eq!(
        last["image"],
        lab.drp
            .files()
            .guest_url(&format!("/{IMAGE_FILE}"))
            .as_str(),
        "{last}"
    );
}

/// What the firmware and PID 1 fetched from the provisioner: the kernel and
/// initramfs the iPXE script names, `imprint.json`, the image and drpcli.
fn check_fetched(lab: &DrpLab) {
    let requests = lab.file_requests();
    let got = |path: &str| {
        requests
            .iter()
            .any(|r| r.method == "GET" && r.path == path && matches!(r.status, 200 | 206))
    };
    let version = imprint_build::drp::version();
    for path in [
        format!("/imprint/{version}/vmlinuz"),
        format!("/imprint/{version}/initramfs.img"),
        format!("/machines/{}/imprint.json", lab.machine.uuid),
        format!("/{IMAGE_FILE}"),
        "/files/drpcli.amd64.linux".to_owned(),
    ] {
        assert!(got(&path), "no GET {path}: {:#?}", summary(&requests));
    }
}

#[test]
fn pxe_boot_deploys_the_golden_os_and_reports_to_drp() {
    let machine = DrpMachine {
        uuid: "3f2a1b4c-0000-4000-8000-0000000000a1".into(),
        name: "web-01.lab".into(),
        mac: "52:54:00:12:34:56".into(),
        // QEMU's user network leases its first address to the only guest.
        address: "10.0.2.15".into(),
    };
    let lab = DrpLab::start(machine.clone(), KEY, json!({}));
    let script = lab.ipxe_script();
    assert!(
        script.starts_with("#!ipxe\n") && script.contains(&format!("rs.uuid={}", machine.uuid)),
        "{script}"
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());

    let vm = lab.pxe_boot("drp_pxe", &disk, Nic::user().mac(&machine.mac));
    let result = expect_ok(&vm, &lab);
    let ResultLine::Ok { sha256, .. } = &result else {
        unreachable!("checked by expect_ok")
    };
    assert_eq!(*sha256, lab.image_sha256, "the golden image was written");
    let golden = wait_golden(&vm, GOLDEN_TIMEOUT);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off");

    // The identity came from the rendered imprint.json.
    assert_eq!(golden.hostname, machine.name);
    assert_eq!(golden.keys, sha256_hex(format!("{KEY}\n").as_bytes()));
    for seed in ["meta-data", "user-data"] {
        assert!(
            golden.cloud_init.split(',').any(|f| f.ends_with(seed)),
            "NoCloud {seed}: {}",
            golden.cloud_init
        );
    }
    assert_eq!(golden.drp_agent, "present");
    // kernel-console (after `--`) reaches the installed kernel; DRP's and
    // the firmware's parameters for imprint do not.
    assert!(
        golden
            .cmdline
            .split(' ')
            .any(|a| a == "console=ttyS0,115200"),
        "{}",
        golden.cmdline
    );
    for imprint_only in ["rs.uuid", "provisioner.", "BOOTIF"] {
        assert!(
            !golden.cmdline.contains(imprint_only),
            "{imprint_only} in {}",
            golden.cmdline
        );
    }

    check_fetched(&lab);
    check_reported(&lab, &result);
    // Both DHCP clients show in the capture: the firmware's and imprint's.
    // (The static test relies on telling them apart.)
    let classes = lab.dhcp_vendor_classes();
    assert!(
        classes.iter().any(|c| c.starts_with("PXEClient")) && classes.iter().any(String::is_empty),
        "{classes:?}"
    );
}

#[test]
fn pxe_boot_with_a_static_address_from_network_data() {
    let machine = DrpMachine {
        uuid: "3f2a1b4c-0000-4000-8000-0000000000a2".into(),
        name: "static-02.lab".into(),
        mac: "52:54:00:12:34:57".into(),
        // The firmware's lease (dhcpstart below), which names its loader.
        address: "10.0.2.100".into(),
    };
    let lab = DrpLab::start(
        machine.clone(),
        KEY,
        json!({
            "network-data": {
                "prov": {"address": "10.0.2.50/24", "gateway": "10.0.2.2", "dns-servers": ["10.0.2.3"]}
            },
            "imprint/status-port": STATUS_PORT,
            // Stay up after the deploy, so /status still answers.
            "imprint/on-success": "none",
        }),
    );
    assert!(
        lab.bootparams().contains(
            " provisioner.ip=10.0.2.50/24 provisioner.gw=10.0.2.2 provisioner.dns=10.0.2.3"
        ),
        "{}",
        lab.bootparams()
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());
    let host_port = free_port();
    // The forward goes to 10.0.2.50 only: an answer proves that imprint
    // holds that address, not the firmware's 10.0.2.100 or slirp's .15.
    let nic = Nic::user()
        .mac(&machine.mac)
        .netdev_options("dhcpstart=10.0.2.100")
        .hostfwd(format!("tcp:127.0.0.1:{host_port}-10.0.2.50:{STATUS_PORT}"));
    let vm = lab.pxe_boot("drp_pxe_static", &disk, nic);
    let result = expect_ok(&vm, &lab);

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
        "imprint ran no DHCP with provisioner.ip=:\n{console}"
    );
    // On the wire too: every DHCP message the machine sent was the
    // firmware's (iPXE's vendor class), none was imprint's.
    let classes = lab.dhcp_vendor_classes();
    assert!(
        !classes.is_empty() && classes.iter().all(|c| c.starts_with("PXEClient")),
        "{classes:?}"
    );
    check_fetched(&lab);
    check_reported(&lab, &result);
    vm.kill().unwrap();
}
