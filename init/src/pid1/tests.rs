//! PID 1's phases and policies on the host, through a recording fake of the
//! machine. The deploy itself is real: a `file://` image written onto a
//! regular file standing in for the disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, bail};

use super::*;
use crate::disk::DiskSelector;
use crate::handoff::Staged;
use crate::hardware::HardwareReport;
use crate::net::{self, NetConfig};
use crate::session::Tracker;
use crate::status::MachineInfo;

/// Records what PID 1 asked of the machine; each answer is scripted.
struct Fake {
    calls: Vec<String>,
    console: Vec<String>,
    sleeps: Vec<Duration>,
    networks: Vec<NetConfig>,
    target: PathBuf,
    /// `None`: staging fails with this message.
    kexec: Option<Staged>,
    network_fails: bool,
    disk_fails: bool,
    /// Called at every pause between runs (the test repairs the world).
    on_sleep: Box<dyn FnMut()>,
}

impl Fake {
    fn new(target: &Path) -> Fake {
        Fake {
            calls: Vec::new(),
            console: Vec::new(),
            sleeps: Vec::new(),
            networks: Vec::new(),
            target: target.to_owned(),
            kexec: Some(Staged {
                entry: "bls: debian".to_owned(),
                kernel: "/boot/vmlinuz".to_owned(),
                cmdline: "root=UUID=1 ro".to_owned(),
            }),
            network_fails: false,
            disk_fails: false,
            on_sleep: Box::new(|| {}),
        }
    }

    fn called(&self, what: &str) -> bool {
        self.calls.iter().any(|c| c == what)
    }
}

impl Platform for Fake {
    fn load_drivers(&mut self) -> Result<HardwareReport> {
        self.calls.push("drivers".into());
        Ok(HardwareReport::default())
    }

    fn bring_up_network(&mut self, config: &NetConfig) -> Result<net::Configured> {
        self.calls.push("network".into());
        self.networks.push(config.clone());
        if self.network_fails {
            bail!("no NIC has link");
        }
        Ok(net::Configured {
            interface: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 1],
            lease: None,
            ipv6: None,
            link_up: None,
        })
    }

    fn firmware_failures(&mut self) -> Vec<FirmwareFailure> {
        Vec::new()
    }

    fn machine_info(&mut self) -> MachineInfo {
        MachineInfo::default()
    }

    fn wait_for_disk(&mut self, selector: &DiskSelector, _excluded: &[String]) -> Result<PathBuf> {
        self.calls.push(format!("disk {selector}"));
        if self.disk_fails {
            bail!("no disk matches {selector}");
        }
        Ok(self.target.clone())
    }

    fn stage_kexec(
        &mut self,
        _deploy: &Resolved,
        _done: &Done,
        _init_args: &[String],
    ) -> Result<Staged> {
        self.calls.push("stage-kexec".into());
        self.kexec
            .clone()
            .ok_or_else(|| anyhow::anyhow!("no kernel found in the installed root"))
    }

    fn erase(
        &mut self,
        request: &crate::spec::EraseRequest,
        target: Option<&Path>,
        source_disk: Option<&str>,
        tracker: &mut Tracker,
    ) -> Result<Vec<Erased>> {
        self.calls
            .push(format!("erase {} {}", request.mode, request.disks));
        // The target here is a file: the erase is real.
        session::erase(request, target, source_disk, tracker)
    }

    fn register_boot_entry(
        &mut self,
        _deploy: &Resolved,
        _target: &Path,
        _done: &Done,
        _before: &[crate::efi::Guid],
    ) -> Result<Option<crate::efi::Registered>> {
        self.calls.push("boot-entry".into());
        Ok(None)
    }

    fn unmount_everything(&mut self) {
        self.calls.push("unmount".into());
    }

    fn console(&mut self, line: &str) {
        self.console.push(line.to_owned());
    }

    fn sleep(&mut self, pause: Duration) {
        self.sleeps.push(pause);
        (self.on_sleep)();
    }
}

/// A 2 MiB raw image (the first MiB is held back until the end) and an
/// empty target file, in a fresh directory.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        World {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("golden.raw")
    }

    fn write_image(&self) {
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(self.image(), data).unwrap();
    }

    fn target(&self) -> PathBuf {
        let path = self.dir.path().join("disk.img");
        if !path.exists() {
            std::fs::write(&path, []).unwrap();
        }
        path
    }

    fn cmdline(&self, extra: &str) -> KernelCmdline {
        KernelCmdline::parse(&format!(
            "console=ttyS0 imprint.url=file://{} imprint.disk=/dev/vda {extra}",
            self.image().display()
        ))
    }
}

fn events(pid1: &Pid1<Fake>) -> Vec<String> {
    let document = pid1.tracker.status.document();
    document["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect()
}

fn result_lines(fake: &Fake) -> Vec<&str> {
    fake.console
        .iter()
        .filter(|l| l.starts_with(report::RESULT_PREFIX))
        .map(String::as_str)
        .collect()
}

#[test]
fn a_deploy_ends_in_kexec_after_the_result_and_the_timeline() {
    let world = World::new();
    world.write_image();
    let mut pid1 = Pid1::new(Fake::new(&world.target()), world.cmdline(""));
    let ending = pid1.run();
    assert_eq!(ending, Ending::Kexec { required: false });
    let fake = &pid1.platform;
    assert!(
        result_lines(fake)[0].starts_with("IMPRINT-RESULT: ok bytes=2097152 "),
        "{:?}",
        fake.console
    );
    assert!(fake.console[1].starts_with(timeline::TIMELINE_PREFIX));
    assert_eq!(
        events(&pid1),
        ["started", "verified", "injected", "handoff"]
    );
    // A file:// image needs no network; everything is unmounted last.
    assert!(!fake.called("network"), "{:?}", fake.calls);
    assert_eq!(fake.calls.last().map(String::as_str), Some("unmount"));
    assert_eq!(
        std::fs::read(world.target()).unwrap(),
        std::fs::read(world.image()).unwrap()
    );
}

#[test]
fn kexec_that_cannot_work_reboots_instead() {
    let world = World::new();
    world.write_image();
    let mut fake = Fake::new(&world.target());
    fake.kexec = None;
    let mut pid1 = Pid1::new(fake, world.cmdline(""));
    assert_eq!(pid1.run(), Ending::Power(PowerAction::Reboot));
    let document = pid1.tracker.status.document();
    let handoff = document["events"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(handoff["event"], "handoff");
    assert_eq!(handoff["how"], "reboot");
    assert!(
        handoff["detail"]
            .as_str()
            .unwrap()
            .contains("no kernel found"),
        "{handoff}"
    );
}

#[test]
fn kexec_bang_halts_with_the_error_and_is_not_retried() {
    let world = World::new();
    world.write_image();
    let mut fake = Fake::new(&world.target());
    fake.kexec = None;
    let mut pid1 = Pid1::new(
        fake,
        world.cmdline("imprint.on-success=kexec! imprint.on-failure=retry:2"),
    );
    let ending = pid1.run();
    let Ending::Halt(line) = &ending else {
        panic!("{ending:?}");
    };
    assert!(line.starts_with("IMPRINT-RESULT: error: imprint.on-success=kexec!: kexec is not possible: no kernel found"), "{line}");
    assert_eq!(events(&pid1), ["started", "verified", "injected", "failed"]);
    assert!(
        pid1.platform.sleeps.is_empty(),
        "the image is good: no retry"
    );
    // The good image stays on the disk.
    assert_eq!(
        std::fs::read(world.target()).unwrap(),
        std::fs::read(world.image()).unwrap()
    );
}

#[test]
fn retry_runs_the_deploy_again_after_a_pause_and_keeps_drivers_and_network() {
    let world = World::new();
    let image = world.image();
    let mut fake = Fake::new(&world.target());
    // The image shows up during the first pause.
    fake.on_sleep = Box::new(move || {
        let data: Vec<u8> = (0..2u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&image, data).unwrap();
    });
    let mut pid1 = Pid1::new(fake, world.cmdline("imprint.on-failure=retry:2"));
    assert_eq!(pid1.run(), Ending::Kexec { required: false });
    let fake = &pid1.platform;
    assert_eq!(fake.sleeps, [Duration::from_secs(10)]);
    let results = result_lines(fake);
    assert!(
        results[0].starts_with("IMPRINT-RESULT: error: "),
        "{results:?}"
    );
    assert!(results[1].starts_with("IMPRINT-RESULT: ok "), "{results:?}");
    assert_eq!(
        fake.calls.iter().filter(|c| *c == "drivers").count(),
        1,
        "drivers load once: {:?}",
        fake.calls
    );
    assert_eq!(
        events(&pid1),
        [
            "started", "failed", "retrying", "verified", "injected", "handoff"
        ]
    );
}

#[test]
fn retries_run_out_into_a_halt() {
    let world = World::new();
    let mut pid1 = Pid1::new(
        Fake::new(&world.target()),
        world.cmdline("imprint.on-failure=retry:2"),
    );
    let ending = pid1.run();
    let Ending::Halt(line) = &ending else {
        panic!("{ending:?}");
    };
    assert!(line.contains("golden.raw"), "{line}");
    assert_eq!(
        pid1.platform.sleeps,
        [Duration::from_secs(10), Duration::from_secs(20)]
    );
    assert_eq!(result_lines(&pid1.platform).len(), 3);
    assert_eq!(
        events(&pid1),
        [
            "started", "failed", "retrying", "failed", "retrying", "failed"
        ]
    );
}

#[test]
fn halt_brings_the_network_up_for_the_status_endpoint() {
    let world = World::new();
    world.write_image();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut fake = Fake::new(&world.target());
    fake.disk_fails = true;
    let mut pid1 = Pid1::new(fake, world.cmdline(&format!("imprint.status-port={port}")));
    let ending = pid1.run();
    let Ending::Halt(line) = &ending else {
        panic!("{ending:?}");
    };
    // The error names the parameter and the layer it came from.
    assert!(
        line.contains("imprint.disk= on the kernel command line: no disk matches /dev/vda"),
        "{line}"
    );
    assert!(pid1.platform.called("network"), "{:?}", pid1.platform.calls);
    let document = pid1.tracker.status.document();
    assert_eq!(document["state"], "failed", "{document}");
}

#[test]
fn failure_policies_reboot_or_power_off() {
    for (policy, action) in [
        ("reboot", PowerAction::Reboot),
        ("poweroff", PowerAction::Poweroff),
    ] {
        let world = World::new();
        let mut pid1 = Pid1::new(
            Fake::new(&world.target()),
            world.cmdline(&format!("imprint.on-failure={policy}")),
        );
        assert_eq!(pid1.run(), Ending::Power(action));
        assert!(pid1.platform.called("unmount"));
        assert!(!pid1.platform.called("network"), "halt alone wants /status");
    }
}

#[test]
fn a_bad_command_line_still_follows_the_failure_policy() {
    let world = World::new();
    let mut pid1 = Pid1::new(
        Fake::new(&world.target()),
        world.cmdline("imprint.dsik=/dev/sda imprint.on-failure=poweroff"),
    );
    assert_eq!(pid1.run(), Ending::Power(PowerAction::Poweroff));
    let results = result_lines(&pid1.platform);
    assert!(
        results[0].starts_with("IMPRINT-RESULT: error: unknown parameter imprint.dsik"),
        "{results:?}"
    );
}

#[test]
fn a_network_failure_is_the_result() {
    let world = World::new();
    let mut fake = Fake::new(&world.target());
    fake.network_fails = true;
    let cmdline =
        KernelCmdline::parse("imprint.url=http://10.0.2.2:8080/x.img imprint.disk=/dev/vda");
    let mut pid1 = Pid1::new(fake, cmdline);
    let ending = pid1.run();
    assert_eq!(
        ending,
        Ending::Halt("IMPRINT-RESULT: error: no NIC has link".to_owned())
    );
    assert!(!pid1.platform.calls.iter().any(|c| c.starts_with("disk")));
}

/// Issue 13, item 8: a DRP deploy whose network fails never loads its spec,
/// so DRP gets no job; the console says so, and what DRP shows.
#[test]
fn a_failure_before_the_spec_is_loaded_says_drp_shows_nothing() {
    let world = World::new();
    let mut fake = Fake::new(&world.target());
    fake.network_fails = true;
    let cmdline = KernelCmdline::parse(
        "imprint.config=http://10.0.2.2:8091/machines/m-1/imprint.json imprint.status-port=8080",
    );
    let mut pid1 = Pid1::new(fake, cmdline);
    pid1.run();
    let said: Vec<&String> = pid1
        .platform
        .console
        .iter()
        .filter(|line| line.contains("not reported"))
        .collect();
    assert_eq!(said.len(), 1, "{:?}", pid1.platform.console);
    assert!(
        said[0].starts_with(
            "imprint: deploy spec http://10.0.2.2:8091/machines/m-1/imprint.json not loaded: \
             this failure is not reported: DRP shows no job"
        ),
        "{said:?}"
    );
    // /status says the same, for whoever asks the halted machine.
    let document = pid1.tracker.status.document();
    assert!(
        document["unreported"]
            .as_str()
            .is_some_and(|why| why.contains("DRP shows no job")),
        "{document}"
    );
    // Without a spec to load, there is nothing to say.
    let mut fake = Fake::new(&world.target());
    fake.network_fails = true;
    let cmdline =
        KernelCmdline::parse("imprint.url=http://10.0.2.2:8080/x.img imprint.disk=/dev/vda");
    let mut pid1 = Pid1::new(fake, cmdline);
    pid1.run();
    assert!(
        !pid1
            .platform
            .console
            .iter()
            .any(|l| l.contains("not reported")),
        "{:?}",
        pid1.platform.console
    );
}

#[test]
fn a_local_deploy_spec_sets_the_network_its_image_is_fetched_over() {
    let world = World::new();
    let spec = world.dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"url": "http://127.0.0.1:9/x.img", "disk": "/dev/vda", "retries": 0, "link-timeout": "2s",
            "boot-network": {"ip": "10.0.0.5/24", "gw": "10.0.0.1"}}"#,
    )
    .unwrap();
    let cmdline = KernelCmdline::parse(&format!(
        "imprint.config=file://{} BOOTIF=01-52-54-00-12-34-56",
        spec.display()
    ));
    let mut pid1 = Pid1::new(Fake::new(&world.target()), cmdline);
    let ending = pid1.run();
    let Ending::Halt(line) = &ending else {
        panic!("{ending:?}");
    };
    assert!(
        line.contains("127.0.0.1:9"),
        "the image fetch failed: {line}"
    );
    let networks = &pid1.platform.networks;
    assert_eq!(networks.len(), 1, "{networks:?}");
    let static_ipv4 = networks[0].static_ipv4.as_ref().unwrap();
    assert_eq!(static_ipv4.address.to_string(), "10.0.0.5");
    assert_eq!(
        networks[0].boot_mac,
        Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
    );
    assert_eq!(networks[0].link_timeout, Some(Duration::from_secs(2)));
}

#[test]
fn on_success_reboot_poweroff_and_none() {
    for (policy, ending) in [
        ("reboot", Some(Ending::Power(PowerAction::Reboot))),
        ("poweroff", Some(Ending::Power(PowerAction::Poweroff))),
        ("none", None),
    ] {
        let world = World::new();
        world.write_image();
        let mut pid1 = Pid1::new(
            Fake::new(&world.target()),
            world.cmdline(&format!("imprint.on-success={policy}")),
        );
        let got = pid1.run();
        match ending {
            Some(ending) => assert_eq!(got, ending),
            None => assert!(
                matches!(&got, Ending::Halt(line) if line.starts_with("IMPRINT-RESULT: ok ")),
                "{got:?}"
            ),
        }
        assert!(!pid1.platform.called("stage-kexec"));
        assert_eq!(events(&pid1).last().map(String::as_str), Some("handoff"));
    }
}

#[test]
fn a_panic_prints_the_result_line_and_powers_off() {
    let world = World::new();
    let mut fake = Fake::new(&world.target());
    assert_eq!(
        on_panic(&mut fake, "panicked at init/src/x.rs:1:1: boom"),
        Ending::Power(PowerAction::Poweroff)
    );
    assert_eq!(
        fake.console,
        ["IMPRINT-RESULT: error: imprint panicked: panicked at init/src/x.rs:1:1: boom"]
    );
}

#[test]
fn retry_pauses_grow_and_are_capped() {
    assert_eq!(retry_pause(1), Duration::from_secs(10));
    assert_eq!(retry_pause(2), Duration::from_secs(20));
    assert_eq!(retry_pause(3), Duration::from_secs(40));
    assert_eq!(retry_pause(9), RETRY_PAUSE_MAX);
    assert_eq!(retry_pause(u32::MAX), RETRY_PAUSE_MAX);
}

#[test]
fn an_erase_before_the_deploy_runs_on_the_target_and_shows_in_the_result() {
    let world = World::new();
    world.write_image();
    // Old contents past the image's end: a zero erase must clear them.
    std::fs::write(world.target(), vec![0x5a; 8 << 20]).unwrap();
    let mut pid1 = Pid1::new(
        Fake::new(&world.target()),
        world.cmdline("imprint.erase=zero"),
    );
    assert_eq!(pid1.run(), Ending::Kexec { required: false });
    let fake = &pid1.platform;
    let line = result_lines(fake)[0];
    assert!(
        line.starts_with("IMPRINT-RESULT: ok bytes=2097152 "),
        "{line}"
    );
    assert!(line.contains("/disk.img:zero:"), "{line}");
    assert!(line.ends_with(":verified"), "{line}");
    assert!(fake.called("erase zero target"), "{:?}", fake.calls);
    assert_eq!(
        events(&pid1),
        [
            "started",
            "erase-plan",
            "erased",
            "verified",
            "injected",
            "handoff"
        ]
    );
    let disk = std::fs::read(world.target()).unwrap();
    assert_eq!(disk[..2 << 20], std::fs::read(world.image()).unwrap()[..]);
    assert!(disk[2 << 20..].iter().all(|&b| b == 0));
}

#[test]
fn an_erase_job_needs_no_image_and_reboots_after() {
    let world = World::new();
    std::fs::write(world.target(), vec![0x5a; 8 << 20]).unwrap();
    let cmdline = KernelCmdline::parse(
        "console=ttyS0 imprint.action=erase imprint.erase=metadata imprint.disk=/dev/vda",
    );
    let mut pid1 = Pid1::new(Fake::new(&world.target()), cmdline);
    assert_eq!(pid1.run(), Ending::Power(PowerAction::Reboot));
    let fake = &pid1.platform;
    let line = result_lines(fake)[0];
    assert!(
        line.starts_with("IMPRINT-RESULT: ok action=erase seconds="),
        "{line}"
    );
    assert!(line.contains("/disk.img:metadata:"), "{line}");
    assert_eq!(
        events(&pid1),
        ["started", "erase-plan", "erased", "handoff"]
    );
    let disk = std::fs::read(world.target()).unwrap();
    assert!(disk[..4 << 20].iter().all(|&b| b == 0));
    assert!(disk[7 << 20..].iter().all(|&b| b == 0));
}

#[test]
fn an_erase_job_without_a_mode_or_disks_fails_naming_the_parameter() {
    let world = World::new();
    for (extra, wanted) in [
        (
            "imprint.action=erase imprint.disk=/dev/vda",
            "needs imprint.erase= on the kernel command line",
        ),
        (
            "imprint.action=erase imprint.erase=zero",
            "set imprint.erase-disks=all",
        ),
    ] {
        let cmdline = KernelCmdline::parse(&format!("console=ttyS0 {extra}"));
        let mut pid1 = Pid1::new(Fake::new(&world.target()), cmdline);
        let ending = pid1.run();
        let Ending::Halt(line) = ending else {
            panic!("{extra}: {ending:?}")
        };
        assert!(line.contains(wanted), "{extra}: {line}");
        assert!(!pid1.platform.calls.iter().any(|c| c.starts_with("erase")));
    }
}
