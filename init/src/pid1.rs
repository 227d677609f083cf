//! PID 1: early boot, drivers, network, the deploy, then the machine's fate.
//!
//! PID 1 never returns and never panics into the kernel: `run()` gives a
//! `Result`, the result line is printed, then the success or failure policy
//! is followed. A panic hook does the same for bugs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::mount::MountFlags;

use crate::cmdline::KernelCmdline;
use crate::disk::DiskSelector;
use crate::drp::{DrpClient, DrpOptions, DrpReporter, LastDeploy};
use crate::hardware::{FirmwareFailure, HardwareReport};
use crate::inject::deployed::Injected;
use crate::logger::ConsoleLogger;
use crate::pipeline::progress::Progress;
use crate::report::{self, DeploySummary};
use crate::spec::{DeploySpec, FailurePolicy, SuccessPolicy};
use crate::status::{
    EventKind, HandoffHow, MachineInfo, ProgressEvents, Stage, Status, StatusOptions,
};
use crate::sys::power::{PowerAction, power};
use crate::timeline::{self, Mark, Timeline};
use crate::{deploy, disk, handoff, modules, net, sys};

/// One step of early boot. The table below is the whole of it, and each
/// entry prints itself as it is applied, so the console shows exactly what
/// PID 1 did before anything could go wrong.
#[derive(Debug)]
pub enum EarlyStep {
    Dir {
        path: &'static str,
        mode: u32,
    },
    Mount {
        source: &'static str,
        target: &'static str,
        fstype: &'static str,
        flags: MountFlags,
        data: Option<&'static str>,
    },
}

impl std::fmt::Display for EarlyStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EarlyStep::Dir { path, mode } => write!(f, "mkdir {path} ({mode:o})"),
            EarlyStep::Mount {
                target,
                fstype,
                data,
                ..
            } => {
                write!(f, "mount {fstype} on {target}")?;
                data.map_or(Ok(()), |d| write!(f, " ({d})"))
            }
        }
    }
}

const NODEV_NOSUID: MountFlags = MountFlags::NODEV.union(MountFlags::NOSUID);

pub const EARLY_BOOT: &[EarlyStep] = &[
    EarlyStep::Dir {
        path: "/dev",
        mode: 0o755,
    },
    EarlyStep::Dir {
        path: "/proc",
        mode: 0o555,
    },
    EarlyStep::Dir {
        path: "/sys",
        mode: 0o555,
    },
    EarlyStep::Dir {
        path: "/run",
        mode: 0o755,
    },
    EarlyStep::Dir {
        path: "/tmp",
        mode: 0o1777,
    },
    EarlyStep::Dir {
        path: "/etc",
        mode: 0o755,
    },
    EarlyStep::Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: Some("mode=0755"),
    },
    EarlyStep::Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NODEV_NOSUID.union(MountFlags::NOEXEC),
        data: None,
    },
    EarlyStep::Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NODEV_NOSUID.union(MountFlags::NOEXEC),
        data: None,
    },
    EarlyStep::Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NODEV_NOSUID,
        data: Some("mode=0755"),
    },
    EarlyStep::Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NODEV_NOSUID,
        data: Some("mode=1777"),
    },
];

/// Applies one step of [`EARLY_BOOT`] (golden-init shares the table).
pub fn apply_early_step(step: &EarlyStep) -> Result<()> {
    match step {
        EarlyStep::Dir { path, mode } => sys::mount::mkdir_all(Path::new(path), *mode),
        EarlyStep::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys::mount::mount(source, Path::new(target), fstype, *flags, *data),
    }
}

/// How long drivers get to make the target disk appear: disk probes
/// (NVMe namespaces, SCSI scans) finish asynchronously after the module
/// loads.
const DISK_WAIT: Duration = Duration::from_secs(15);
const DISK_SETTLE: Duration = Duration::from_secs(1);
const NET_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest pause between two runs of `on-failure=retry:N`.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(300);
/// How long the last events may take to reach the report URL before the
/// machine is handed over or powered off.
const REPORT_FLUSH: Duration = Duration::from_secs(5);

pub fn main() -> ! {
    let pid1_at = timeline::since_boot();
    std::panic::set_hook(Box::new(|info| {
        println!(
            "{}",
            report::error_line(&anyhow::anyhow!("imprint panicked: {info}"))
        );
        power(PowerAction::Poweroff)
    }));
    // The logger is not up yet: early boot reports straight to the console.
    for step in EARLY_BOOT {
        match apply_early_step(step) {
            Ok(()) => eprintln!("imprint: early: {step}"),
            Err(e) => eprintln!("imprint: early: {step} failed: {e:#}"),
        }
    }
    ConsoleLogger::install(log::LevelFilter::Info, true);
    log::info!("imprint {} starting as PID 1", env!("CARGO_PKG_VERSION"));

    let cmdline_text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cmdline = KernelCmdline::parse(&cmdline_text);
    // Reporting starts before anything can fail, from whatever parses.
    let lenient = DeploySpec::lenient_from_cmdline(&cmdline);
    let status = Status::new(&StatusOptions {
        report_url: lenient.report.clone(),
        status_port: lenient.status_port,
        source: lenient.source.clone(),
        ..StatusOptions::default()
    });
    // Every event also goes to the DRP job log of the current run, once
    // the deploy spec says where DRP is.
    let drp: DrpSlot = Arc::default();
    let job_log = Arc::clone(&drp);
    status.subscribe(Box::new(move |event| {
        if let Some(reporter) = lock(&job_log).as_ref() {
            reporter.log_line(event.log_line());
        }
    }));
    let mut machine = Machine {
        status,
        cmdline,
        started: Instant::now(),
        drivers_loaded: false,
        boot_mac: None,
        stage: Stage::Drivers,
        on_failure: lenient.on_failure,
        drp,
        image: None,
        result: None,
        timeline: Timeline::default(),
        firmware_reported: Vec::new(),
        written: None,
    };
    machine.timeline.mark_at(Mark::Pid1, pid1_at);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let run_started = Instant::now();
        machine.written = None;
        let outcome = DeploySpec::from_cmdline(&machine.cmdline).and_then(|spec| machine.run(spec));
        match outcome {
            Ok(done) => {
                let line = report::ok_line(&done.summary);
                println!("{line}");
                machine.drp_finish(&line, Some(&done.summary), None, run_started);
                machine.hand_over(&done)
            }
            Err(error) => {
                // The event first: whoever sees the console line and asks
                // /status must find the failure there.
                machine.status.emit(EventKind::Failed {
                    stage: machine.stage,
                    error: format!("{error:#}"),
                    offset: machine.written.filter(|_| machine.stage == Stage::Write),
                    attempt: Some(attempt),
                });
                let line = report::error_line(&error);
                println!("{line}");
                machine.drp_finish(&line, None, Some(format!("{error:#}")), run_started);
                if let FailurePolicy::Retry(limit) = machine.on_failure
                    && attempt <= limit
                {
                    let pause = retry_pause(attempt);
                    machine.status.emit(EventKind::Retrying {
                        attempt: attempt + 1,
                        of: limit + 1,
                        delay_seconds: pause.as_secs_f64(),
                    });
                    log::warn!(
                        "deploy failed (run {attempt} of {}); running it again in {} s",
                        limit + 1,
                        pause.as_secs()
                    );
                    // The next run is a new DRP job: this one has failed.
                    machine.drp_done();
                    std::thread::sleep(pause);
                    continue;
                }
                machine.fail(&line)
            }
        }
    }
}

/// 10 s, 20 s, 40 s, … up to five minutes between whole-deploy retries.
fn retry_pause(attempt: u32) -> Duration {
    let secs = 10u64.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    Duration::from_secs(secs).min(RETRY_PAUSE_MAX)
}

/// Keeps the machine up, repeating the result so that whoever opens the
/// console later still sees why the deploy failed.
fn halt_showing(line: &str) -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
        println!("{line}");
    }
}

/// The DRP job reporter of the current run, shared with the status listener
/// that copies events into its job log.
type DrpSlot = Arc<Mutex<Option<DrpReporter>>>;

fn lock(slot: &DrpSlot) -> MutexGuard<'_, Option<DrpReporter>> {
    slot.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits (bounded) until DRP got what was queued for it.
fn flush_drp(reporter: &DrpReporter) {
    if !reporter.flush(REPORT_FLUSH) {
        log::warn!("not everything reached DRP's job log");
    }
}

/// A progress sink that also notes when the first and the last bytes
/// reached the disk, for the timeline.
struct Stamped<P> {
    inner: P,
    first: Option<Duration>,
    last: Option<Duration>,
    /// Bytes written so far: where a failed write stopped.
    done: u64,
}

impl<P> Stamped<P> {
    fn new(inner: P) -> Self {
        Stamped {
            inner,
            first: None,
            last: None,
            done: 0,
        }
    }
}

impl<P: Progress> Progress for Stamped<P> {
    fn update(&mut self, done: u64, total: Option<u64>) {
        self.done = done;
        if done > 0 {
            let now = timeline::since_boot();
            self.first.get_or_insert(now);
            self.last = Some(now);
        }
        self.inner.update(done, total);
    }
}

/// A deploy that reached the end: the image is written, verified and injected.
struct Done {
    spec: DeploySpec,
    summary: DeploySummary,
    injected: Injected,
}

/// What PID 1 keeps across runs of the deploy (`on-failure=retry:N`):
/// drivers stay loaded and the network stays up.
struct Machine {
    status: Status,
    cmdline: KernelCmdline,
    started: Instant,
    drivers_loaded: bool,
    boot_mac: Option<[u8; 6]>,
    /// Where the current run is, for the `failed` event.
    stage: Stage,
    /// From the deploy spec once it is loaded (it may come from JSON).
    on_failure: FailurePolicy,
    drp: DrpSlot,
    /// The image URL of the current run, for DRP's `imprint/last-deploy`.
    image: Option<String>,
    /// The run's result line and DRP result, until sent.
    result: Option<(String, LastDeploy)>,
    timeline: Timeline,
    /// Firmware load failures already on the console.
    firmware_reported: Vec<FirmwareFailure>,
    /// Bytes of the image written by the current run's write stage.
    written: Option<u64>,
}

impl Machine {
    fn enter(&mut self, stage: Stage) {
        self.stage = stage;
        self.status.enter(stage);
    }

    fn run(&mut self, spec: DeploySpec) -> Result<Done> {
        self.on_failure = spec.on_failure;
        if !self.drivers_loaded {
            self.enter(Stage::Drivers);
            let kver = sys::kmod::kernel_release();
            let report =
                coldplug(&Path::new("/lib/modules").join(&kver)).context("loading drivers")?;
            self.firmware_reported = report.firmware;
            log::info!(
                "drivers loaded after {:.2} s",
                self.started.elapsed().as_secs_f64()
            );
            self.drivers_loaded = true;
            self.mark(Mark::Drivers);
            self.status.emit(EventKind::Started {
                machine: MachineInfo::gather(Path::new("/sys")),
            });
        }

        // The network comes up first when the spec itself or the image is
        // fetched over it; a JSON spec may name the image and the disk.
        let config_needs_network = spec.config.as_deref().is_some_and(needs_network);
        let url_needs_network = spec.url.as_deref().is_some_and(needs_network);
        if config_needs_network || url_needs_network {
            self.network()?;
        }
        let spec = match &spec.config {
            Some(config) => {
                self.enter(Stage::Spec);
                let text = crate::source::fetch_text(config, 1 << 20, &spec.source)
                    .with_context(|| format!("fetching the deploy spec {config}"))?;
                let merged = DeploySpec::from_json_and_cmdline(&text, &self.cmdline)
                    .with_context(|| format!("deploy spec {config}"))?;
                log::info!("deploy spec {config} loaded");
                self.on_failure = merged.on_failure;
                merged
            }
            None => spec,
        };
        // The spec may name what the command line did not.
        self.status.adopt(&StatusOptions {
            report_url: spec.report.clone(),
            status_port: spec.status_port,
            source: spec.source.clone(),
            ..StatusOptions::default()
        });
        self.drp_start(&spec);
        self.image = spec.url.clone();
        self.mark(Mark::Spec);
        let url = spec.require_url()?.to_owned();
        self.enter(Stage::Disk);
        let wanted_disk = spec.disk.as_deref().context(
            "no target disk given: set imprint.disk=/dev/NAME or hints such as imprint.disk=size>=100G,rotational=0",
        )?;
        let selector = DiskSelector::parse(wanted_disk).context("parameter imprint.disk")?;

        // A local source's disk is found (and mounted read-only) first, so that
        // target selection can leave it out.
        let source_disk = crate::source::source_disk(&url)?;
        let excluded: Vec<String> = source_disk.iter().cloned().collect();
        let target = wait_for_disk(&selector, &excluded, DISK_WAIT)?;
        if let Some(source_disk) = &source_disk
            && target == Path::new("/dev").join(source_disk)
        {
            anyhow::bail!(
                "disk {} holds the image source {url}; choose another target disk",
                target.display()
            );
        }
        if needs_network(&url) {
            self.network()?;
        }
        self.enter(Stage::Write);
        let mut progress = Stamped::new(ProgressEvents::new(self.status.clone(), Stage::Write));
        let written = deploy::deploy_to(
            &spec,
            &target,
            &deploy::DeployOptions::default(),
            &mut progress,
        );
        self.written = Some(progress.done);
        let summary = written?;
        if let (Some(first), Some(last)) = (progress.first, progress.last) {
            self.timeline.mark_at(Mark::FirstByte, first);
            self.timeline.mark_at(Mark::LastByte, last);
        }
        self.mark(Mark::Verified);
        self.status.emit(EventKind::Verified {
            sha256: report::hex(&summary.sha256),
            algorithm: summary.verified.map(str::to_owned),
            bytes: summary.bytes,
        });
        self.enter(Stage::Inject);
        let injected =
            crate::inject::deployed::inject_or_fail_closed(&spec, &target, self.boot_mac)?;
        self.mark(Mark::Injected);
        match &injected {
            Injected::Root { root, ops } => {
                let root = root.describe();
                log::info!("injected {ops} changes into {root}");
                self.status.emit(EventKind::Injected {
                    root: Some(root),
                    changes: *ops,
                    skipped: None,
                });
            }
            Injected::Skipped(why) => {
                log::info!("no injection: {why}");
                self.status.emit(EventKind::Injected {
                    root: None,
                    changes: 0,
                    skipped: Some(why.clone()),
                });
            }
        }
        Ok(Done {
            spec,
            summary,
            injected,
        })
    }

    /// Starts reporting this run as a DRP job when the spec carries DRP's
    /// API URL and machine token (DRP's `imprint.json` does).
    fn drp_start(&mut self, spec: &DeploySpec) {
        let Some(agent) = &spec.identity.drp else {
            return;
        };
        if lock(&self.drp).is_some() {
            return;
        }
        let started = DrpClient::new(
            &agent.endpoint,
            &agent.token,
            &agent.machine_id,
            &spec.source,
        )
        .and_then(|client| DrpReporter::start(client, DrpOptions::default()));
        match started {
            Ok(reporter) => {
                log::info!(
                    "reporting the deploy as a job of DRP machine {}",
                    agent.machine_id
                );
                *lock(&self.drp) = Some(reporter);
            }
            Err(e) => log::warn!("not reporting to DRP: {e:#}"),
        }
    }

    /// Keeps the run's result for its DRP job: the result line for its log,
    /// the job finished or failed, `imprint/last-deploy`. Sent by
    /// [`flush_reports`](Self::flush_reports), after the last event (the
    /// handoff), so the job log ends with it.
    fn drp_finish(
        &mut self,
        line: &str,
        summary: Option<&DeploySummary>,
        error: Option<String>,
        run_started: Instant,
    ) {
        self.result = Some((
            line.to_owned(),
            LastDeploy {
                image: self.image.clone().unwrap_or_default(),
                sha256: summary.map(|s| report::hex(&s.sha256)),
                seconds: summary
                    .map_or(run_started.elapsed(), |s| s.elapsed)
                    .as_secs_f64(),
                error,
            },
        ));
    }

    /// Sends what is left for the run's DRP job (bounded) and forgets it.
    fn drp_done(&mut self) {
        self.send_result();
        if let Some(reporter) = lock(&self.drp).take() {
            flush_drp(&reporter);
        }
    }

    fn send_result(&mut self) {
        let result = self.result.take();
        if let (Some(reporter), Some((line, last))) = (lock(&self.drp).as_ref(), result) {
            reporter.log_line(line);
            reporter.finish(last);
        }
    }

    /// Waits (bounded) for the webhook and DRP to get the last events.
    fn flush_reports(&mut self) {
        self.send_result();
        if !self.status.flush(REPORT_FLUSH) {
            log::warn!("not every status event reached the report URL");
        }
        if let Some(reporter) = lock(&self.drp).as_ref() {
            flush_drp(reporter);
        }
    }

    /// Brings the network up once; later runs reuse it.
    fn network(&mut self) -> Result<()> {
        if self.boot_mac.is_none() {
            self.enter(Stage::Network);
            let up = bring_up_network(self.started, &self.cmdline);
            report_late_firmware(&mut self.firmware_reported);
            let configured = up?;
            if let Some(at) = configured.link_up {
                self.timeline.mark_at(Mark::Link, at);
            }
            self.boot_mac = Some(configured.mac);
            self.mark(Mark::Lease);
        }
        Ok(())
    }

    /// Follows the success policy. Never returns.
    fn hand_over(&mut self, done: &Done) -> ! {
        self.enter(Stage::Handoff);
        match done.spec.on_success {
            SuccessPolicy::Kexec { required } => self.kexec(done, required),
            SuccessPolicy::Reboot => self.power(HandoffHow::Reboot, None, PowerAction::Reboot),
            SuccessPolicy::Poweroff => {
                self.power(HandoffHow::Poweroff, None, PowerAction::Poweroff)
            }
            SuccessPolicy::None => {
                self.announce_handoff(HandoffHow::None, None);
                handoff::unmount_everything();
                log::info!("on-success=none: staying up");
                halt_showing(&report::ok_line(&done.summary))
            }
        }
    }

    fn kexec(&mut self, done: &Done, required: bool) -> ! {
        let staged = match &done.injected {
            Injected::Root { root, .. } => {
                handoff::stage_kexec(root, &done.spec.kexec, &self.cmdline.init_args)
            }
            Injected::Skipped(why) => Err(anyhow::anyhow!("no installed root to boot: {why}")),
        };
        let why = match staged {
            Ok(staged) => {
                self.mark_handoff();
                self.status.emit(EventKind::Handoff {
                    how: HandoffHow::Kexec,
                    kernel: Some(staged.kernel.clone()),
                    cmdline: Some(staged.cmdline.clone()),
                    detail: Some(staged.entry.clone()),
                });
                self.flush_reports();
                handoff::unmount_everything();
                log::info!("kexec into {} ({})", staged.kernel, staged.entry);
                match sys::kexec::exec() {
                    Ok(never) => match never {},
                    Err(e) => e,
                }
            }
            Err(e) => e.context("kexec is not possible"),
        };
        if required {
            let why = why.context("imprint.on-success=kexec!");
            let line = report::error_line(&why);
            println!("{line}");
            // DRP's job ends failed, not finished, when it was not sent yet.
            if let Some((result_line, last)) = self.result.as_mut() {
                result_line.clone_from(&line);
                last.error = Some(format!("{why:#}"));
            }
            self.status.emit(EventKind::Failed {
                stage: Stage::Handoff,
                error: format!("{why:#}"),
                offset: None,
                attempt: None,
            });
            // The image on the disk is good: no retry, no wipe.
            if let FailurePolicy::Retry(_) = self.on_failure {
                self.on_failure = FailurePolicy::Halt;
            }
            self.fail(&line)
        }
        log::warn!("{why:#}; rebooting instead");
        self.power(
            HandoffHow::Reboot,
            Some(format!("{why:#}")),
            PowerAction::Reboot,
        )
    }

    /// Records the handoff and prints the timeline that led to it.
    fn mark_handoff(&mut self) {
        self.mark(Mark::Handoff);
        println!("{}", self.timeline.line());
    }

    fn mark(&mut self, mark: Mark) {
        self.timeline.mark(mark);
        self.status.set_timeline(self.timeline.to_json());
    }

    fn announce_handoff(&mut self, how: HandoffHow, detail: Option<String>) {
        self.mark_handoff();
        self.status.emit(EventKind::Handoff {
            how,
            kernel: None,
            cmdline: None,
            detail,
        });
        self.flush_reports();
    }

    fn power(&mut self, how: HandoffHow, detail: Option<String>, action: PowerAction) -> ! {
        self.announce_handoff(how, detail);
        handoff::unmount_everything();
        power(action)
    }

    /// Follows the failure policy (retries are the caller's). Never returns.
    fn fail(&mut self, line: &str) -> ! {
        println!("{}", self.timeline.line());
        self.flush_reports();
        match self.on_failure {
            FailurePolicy::Reboot => {
                handoff::unmount_everything();
                power(PowerAction::Reboot)
            }
            FailurePolicy::Poweroff => {
                handoff::unmount_everything();
                power(PowerAction::Poweroff)
            }
            FailurePolicy::Halt | FailurePolicy::Retry(_) => {
                // Someone may want to `curl` this machine's /status: give
                // it a network if the deploy failed before it had one.
                if self.status.status_address().is_some() && self.boot_mac.is_none() {
                    if let Err(e) = self.network() {
                        log::warn!("no network for the status endpoint: {e:#}");
                    }
                }
                halt_showing(line)
            }
        }
    }
}

fn bring_up_network(started: Instant, cmdline: &KernelCmdline) -> Result<net::Configured> {
    let config = net::NetConfig::from_cmdline(cmdline)?;
    let configured = net::bring_up(&config, NET_TIMEOUT).context("bringing up the network")?;
    log::info!("network up after {:.2} s", started.elapsed().as_secs_f64());
    Ok(configured)
}

fn needs_network(url: &str) -> bool {
    !url.starts_with("file:")
}

/// Waits (bounded) until the selector picks exactly one disk. Hints are
/// matched again after a quiet second: disks probe asynchronously, and a
/// second matching disk that shows up late must make the choice ambiguous
/// rather than lose the race.
fn wait_for_disk(
    selector: &DiskSelector,
    excluded: &[String],
    timeout: Duration,
) -> Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    let pick = || -> Result<disk::DiskInfo> {
        let disks = disk::list_disks(Path::new("/sys/block"))?;
        disk::select_disk(selector, &disks, excluded).cloned()
    };
    loop {
        match pick() {
            Ok(found) if selector.is_explicit() => return Ok(announce(found)),
            Ok(found) => {
                std::thread::sleep(DISK_SETTLE);
                let again = pick()?;
                if again == found {
                    return Ok(announce(found));
                }
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn announce(disk: disk::DiskInfo) -> PathBuf {
    log::info!("target disk: {}", disk.describe());
    disk.dev_path()
}

/// Every `modalias` file under `root` (normally `/sys/devices`). Symlinks are
/// not followed: sysfs is full of links back up the tree.
pub fn collect_modaliases(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file()
                && entry.file_name() == "modalias"
                && let Ok(alias) = std::fs::read_to_string(entry.path())
                && !alias.trim().is_empty()
            {
                found.push(alias.trim().to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Loads the drivers for the hardware present, repeating until no new
/// device shows up: loading a bus driver (virtio_pci) creates the devices
/// (virtio0, virtio1) whose drivers (virtio_blk, virtio_net) come next.
/// Then warns about every network or storage device left without a driver
/// and every firmware file a driver could not load ([`crate::hardware`]),
/// and returns that report.
pub fn coldplug(module_dir: &Path) -> Result<HardwareReport> {
    let index = modules::ModuleIndex::load(module_dir)?;
    let mut loaded = std::collections::BTreeSet::new();
    for _round in 0..8 {
        let aliases = collect_modaliases(Path::new("/sys/devices"));
        let plan = modules::coldplug_plan(&index, &aliases, &[]);
        for alias in &plan.unmatched_modaliases {
            log::debug!("no driver for device {alias}");
        }
        let fresh: Vec<_> = plan
            .modules
            .into_iter()
            .filter(|m| !loaded.contains(&m.name))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for module in fresh {
            match sys::kmod::load_module(&module_dir.join(&module.path)) {
                Ok(_) => log::info!("loaded {}", module.name),
                // One driver failing (hardware it dislikes) must not stop the
                // deploy; a missing disk or NIC is reported later by name.
                Err(e) => log::warn!("{e:#}"),
            }
            loaded.insert(module.name);
        }
    }
    let report = HardwareReport::gather(Path::new("/sys"), Path::new("/dev/kmsg"));
    report.log();
    Ok(report)
}

/// Firmware a driver asked for after the coldplug report (r8169 and bnx2x
/// load theirs when the link comes up), each reported once: `known` holds
/// what was reported before.
fn report_late_firmware(known: &mut Vec<FirmwareFailure>) {
    let log = crate::hardware::read_kmsg(Path::new("/dev/kmsg"));
    for failure in crate::hardware::firmware_failures(&log) {
        if !known.contains(&failure) {
            log::warn!("{failure}");
            known.push(failure);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_boot_prints_itself() {
        let lines: Vec<String> = EARLY_BOOT.iter().map(ToString::to_string).collect();
        assert!(lines.contains(&"mount devtmpfs on /dev (mode=0755)".to_owned()));
        assert!(lines.contains(&"mount proc on /proc".to_owned()));
        assert!(lines.contains(&"mkdir /tmp (1777)".to_owned()));
        // Directories come before the mounts that need them.
        let first_mount = lines.iter().position(|l| l.starts_with("mount")).unwrap();
        assert!(lines[first_mount..].iter().all(|l| l.starts_with("mount")));
    }

    #[test]
    fn collects_modaliases_without_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(dev.join("virtio0")).unwrap();
        std::fs::write(
            dev.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )
        .unwrap();
        std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::fs::write(dev.join("virtio0/other"), "x").unwrap();
        std::os::unix::fs::symlink(root.path(), dev.join("virtio0/loop")).unwrap();
        assert_eq!(
            collect_modaliases(root.path()),
            vec![
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                "virtio:d00000001v00001AF4"
            ]
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
    fn file_urls_need_no_network() {
        assert!(!needs_network("file:///x"));
        assert!(needs_network("http://x/y"));
    }
}
