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

/// Waits until PID 1 has made `runs` jobs and every one has left
/// `running` (PID 1 reports in the background), then returns them.
fn settled_jobs(lab: &DrpLab, runs: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let jobs = lab.deploy_jobs();
        assert!(jobs.len() <= runs, "one job per run: {jobs:#?}");
        let settled = jobs.len() == runs
            && jobs
                .iter()
                .all(|job| matches!(job["State"].as_str(), Some("finished" | "failed")));
        if settled || Instant::now() >= deadline {
            assert_eq!(jobs.len(), runs, "jobs: {:#?}", lab.drp.calls());
            return jobs;
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

/// Checks what PID 1 did through DRP's API, over `runs` runs of the deploy
/// (`on-failure=retry:N`) of which only the last succeeded: a job per run,
/// each for the `imprint-deploy` task, the last one created → running →
/// finished (so exactly one finished job), its log holding the result line,
/// the workflow at `complete` with BootEnv `local`, and
/// `imprint/last-deploy`. A stale job ([`DrpLab::with_stale_job`]) was
/// failed first, and the machine, not runnable after the workflow was set
/// (and after each failed run), was marked runnable before each job.
fn check_reported(lab: &DrpLab, result: &ResultLine, runs: usize) {
    let uuid = &lab.machine.uuid;
    let jobs = settled_jobs(lab, runs);
    let job = jobs.last().expect("a job");
    let id = job["Uuid"].as_str().expect("the job's Uuid");
    let finished = jobs.iter().filter(|job| job["State"] == "finished").count();
    assert_eq!(finished, 1, "exactly one finished job: {jobs:#?}");
    assert_eq!(job["State"], "finished", "{job}");
    for job in &jobs {
        assert_eq!(job["Machine"], uuid.as_str());
        assert_eq!(job["Task"], imprint_build::drp::TASK);
    }
    // After the job, PID 1 asks for the next one, which moves the workflow
    // on: nothing is left, so the machine reaches `complete`, BootEnv `local`.
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
    assert_eq!(lab.drp.machine_stage(uuid).as_deref(), Some("complete"));
    if let Some(stale) = &lab.stale_job {
        let stale_job = lab
            .drp
            .jobs()
            .into_iter()
            .find(|j| j["Uuid"] == stale.as_str());
        assert_eq!(stale_job.expect("the stale job")["State"], "failed");
    }
    let calls = lab.drp.calls();
    let unauthorized: Vec<&ApiCall> = calls
        .iter()
        .filter(|c| c.path.starts_with("/api/") && !c.authorized)
        .collect();
    assert!(unauthorized.is_empty(), "{unauthorized:#?}");
    let created: Vec<u16> = calls
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/api/v3/jobs")
        .map(|c| c.status)
        .collect();
    let mut expected = vec![201; runs];
    // The next job: nothing left.
    expected.push(204);
    assert_eq!(created, expected, "{calls:#?}");
    let marked = calls
        .iter()
        .filter(|c| c.method == "PATCH" && c.path == format!("/api/v3/machines/{uuid}"))
        .filter(|c| c.status == 200 && c.json()[1]["path"] == "/Runnable")
        .count();
    assert_eq!(marked, runs, "marked runnable before each job: {calls:#?}");
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

/// The README's DRP section, as a real endpoint would take it: the machine
/// was put in the `imprint-image-deploy` workflow (so it is not runnable),
/// had lost power in the middle of an earlier deploy (its job still
/// `running`), and DRP's API is HTTPS with its self-signed certificate.
/// imprint deploys once, its one job finishes with its log, the workflow
/// reaches `complete`, and the installed OS boots once.
#[test]
fn pxe_boot_deploys_the_golden_os_and_reports_to_drp() {
    let machine = DrpMachine {
        uuid: "3f2a1b4c-0000-4000-8000-0000000000a1".into(),
        name: "web-01.lab".into(),
        mac: "52:54:00:12:34:56".into(),
        // QEMU's user network leases its first address to the only guest.
        address: "10.0.2.15".into(),
    };
    let lab = DrpLab::start(machine.clone(), KEY, json!({})).with_stale_job();
    assert_eq!(lab.drp.machine_runnable(&machine.uuid), Some(false));
    assert!(lab.drp.url("").starts_with("https://"));
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
    check_reported(&lab, &result, 1);
    // Deployed once, booted once: no second deploy after the kexec.
    let console = vm.console();
    assert_eq!(console.matches("IMPRINT-RESULT:").count(), 1, "{console}");
    assert_eq!(console.matches("GOLDEN-OS: end").count(), 1, "{console}");
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
    check_reported(&lab, &result, 1);
    vm.kill().unwrap();
}

/// The same with `imprint/on-failure` `retry:2` and a first attempt whose
/// image download is a 404: the failed run's job fails (which leaves the
/// machine not runnable), the second run marks it runnable, gets a job for
/// the same task, finishes it, and the workflow moves on: exactly one
/// finished job, and one installed OS.
#[test]
fn pxe_boot_retries_after_a_404_with_a_job_per_run_and_advances_the_workflow() {
    let machine = DrpMachine {
        uuid: "3f2a1b4c-0000-4000-8000-0000000000a3".into(),
        name: "retry-03.lab".into(),
        mac: "52:54:00:12:34:58".into(),
        address: "10.0.2.15".into(),
    };
    let lab = DrpLab::start(
        machine.clone(),
        KEY,
        json!({"imprint/on-failure": "retry:2"}),
    )
    .with_stale_job();
    lab.drp.files().push_behaviors(
        &format!("/{IMAGE_FILE}"),
        [imprint_qemu::http::Behavior::Status(404)],
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());
    let vm = lab.pxe_boot("drp_pxe_retry", &disk, Nic::user().mac(&machine.mac));
    let failed = vm
        .expect("IMPRINT-RESULT:", PXE_DEPLOY_TIMEOUT)
        .expect("the first run's result line");
    assert!(failed.contains("IMPRINT-RESULT: error"), "{failed}");
    assert!(failed.contains("404"), "{failed}");
    // The second run, after its pause: the same wait as a first deploy.
    let line = vm
        .expect("IMPRINT-RESULT: ok", PXE_DEPLOY_TIMEOUT)
        .unwrap_or_else(|e| panic!("no second result line: {e:#}"));
    let result = ResultLine::parse(&line);
    wait_golden(&vm, GOLDEN_TIMEOUT);
    vm.wait_exit(Duration::from_secs(60))
        .expect("the golden OS powers off");
    check_reported(&lab, &result, 2);
    let first = &lab.deploy_jobs()[0];
    assert_eq!(
        (&first["State"], &first["ExitState"]),
        (&json!("failed"), &json!("failed"))
    );
    let console = vm.console();
    assert_eq!(console.matches("IMPRINT-RESULT:").count(), 2, "{console}");
    assert_eq!(console.matches("GOLDEN-OS: end").count(), 1, "{console}");
}

/// A root-filesystem image through DRP: `imprint/format` (or
/// `image-deploy/image-type`) `tgz`, the bootenv's second initrd with the
/// mkfs tools, image-deploy's `additional-tarballs` with a `drpserved`
/// URI. imprint partitions the blank disk, unpacks both tarballs and
/// reports one finished job.
#[test]
fn pxe_boot_deploys_a_tgz_root_filesystem_with_the_tools_initrd() {
    let machine = DrpMachine {
        uuid: "3f2a1b4c-0000-4000-8000-0000000000a4".into(),
        name: "rootfs-01.lab".into(),
        mac: "52:54:00:12:34:56".into(),
        address: "10.0.2.15".into(),
    };
    let dir = tempfile::tempdir().unwrap();
    let tarball = |name: &str, files: &[(&str, &str)], compress: &[&str]| -> Vec<u8> {
        let tree = dir.path().join(format!("{name}.tree"));
        for (path, contents) in files {
            let path = tree.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, contents).unwrap();
        }
        let out = dir.path().join(name);
        let status = std::process::Command::new("tar")
            .args(["--numeric-owner", "-C"])
            .arg(&tree)
            .arg("-cf")
            .arg(&out)
            .args(compress)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::read(out).unwrap()
    };
    let root = tarball(
        "root.tgz",
        &[
            ("etc/os-release", "ID=test\n"),
            ("usr/bin/true", "#!/bin/sh\n"),
        ],
        &["-z"],
    );
    let extra = tarball("extra.tar", &[("etc/motd", "from DRP\n")], &[]);
    let lab = DrpLab::start(
        machine.clone(),
        KEY,
        json!({
            "image-deploy/image-file": "files/images/root.tgz",
            "image-deploy/image-type": "tgz",
            "imprint/format": "tgz",
            "imprint/bootloader": "none",
            "imprint/on-success": "poweroff",
            "image-deploy/additional-tarballs": [
                {"drpserved": true, "format": "tar", "index": 1, "uri": "files/extra.tar"}
            ],
        }),
    );
    lab.drp
        .files()
        .add_file("/files/images/root.tgz", root.clone());
    lab.drp.files().add_file("/files/extra.tar", extra);
    let disk = dir.path().join("disk.img");
    imprint_qemu::create_raw_disk(&disk, 2 << 30).expect("creating the target disk");

    let vm = lab.pxe_boot("drp_pxe_rootfs", &disk, Nic::user().mac(&machine.mac));
    let result = expect_ok(&vm, &lab);
    let ResultLine::Ok { sha256, bytes, .. } = &result else {
        unreachable!("checked by expect_ok")
    };
    assert_eq!(
        *sha256,
        sha256_hex(&root),
        "the result names the tarball as served"
    );
    assert_eq!(*bytes, root.len() as u64);
    vm.wait_exit(Duration::from_secs(60)).expect("powers off");
    let console = vm.console();
    assert!(
        console.contains("rootfs tools: mke2fs mkfs.xfs mkfs.fat mkswap"),
        "{console}"
    );
    assert!(console.contains("format=tgz"), "{console}");
    assert!(
        console.contains("/files/extra.tar over the new root"),
        "{console}"
    );
    let jobs = settled_jobs(&lab, 1);
    assert_eq!(jobs[0]["State"], "finished", "{jobs:#?}");
}

/// DRP-style erase then deploy in one boot: the machine's `imprint/erase`
/// param reaches imprint through the rendered imprint.json; the plan and
/// each disk's result go into the job's log, and the result line (which
/// the log ends with) names the erase.
#[test]
fn pxe_boot_erases_then_deploys_and_logs_the_erase_into_the_job() {
    let machine = DrpMachine {
        uuid: "3f2a1b4c-0000-4000-8000-0000000000a5".into(),
        name: "erase-05.lab".into(),
        mac: "52:54:00:12:34:5a".into(),
        address: "10.0.2.15".into(),
    };
    let lab = DrpLab::start(
        machine.clone(),
        KEY,
        json!({"imprint/erase": "metadata", "imprint/on-success": "poweroff"}),
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = blank_disk(dir.path());
    // What a previous install left at the end of the disk (a backup GPT).
    imprint_qemu::fill_disk(&disk, DISK_SIZE - (1 << 20), 1 << 20, 0xee).unwrap();

    let vm = lab.pxe_boot("drp_pxe_erase", &disk, Nic::user().mac(&machine.mac));
    let line = vm
        .expect("IMPRINT-RESULT:", PXE_DEPLOY_TIMEOUT)
        .expect("a result line");
    vm.wait_exit(Duration::from_secs(60))
        .expect("the machine powers off");
    assert!(
        line.contains("IMPRINT-RESULT: ok ") && line.contains(" erased=sda:metadata:"),
        "{line}"
    );
    let jobs = lab.deploy_jobs();
    let id = jobs[0]["Uuid"].as_str().expect("the job's Uuid");
    let log = String::from_utf8_lossy(&lab.drp.job_log(id)).into_owned();
    for wanted in [
        "erase-plan: ",
        "erased: ",
        "\"method\":\"metadata\"",
        " erased=sda:metadata:",
    ] {
        assert!(log.contains(wanted), "{wanted} not in the job log:\n{log}");
    }
    let end = imprint_qemu::read_disk_at(&disk, DISK_SIZE - (1 << 20), 1 << 20).unwrap();
    // The deploy relocated the image's backup GPT there; nothing old is left.
    assert!(!end.contains(&0xee), "the old backup GPT survived");
}
