//! PID 1: early boot, then a loop over the phases of a deploy, then the
//! machine's fate.
//!
//! ```text
//! drivers -> network (when something is fetched) -> spec -> disk -> write -> inject -> handoff
//!             on failure: failed event, result line, then halt | reboot | poweroff | retry:N
//! ```
//!
//! Every phase goes through a [`Platform`], so the policies (`retry:N`, the
//! `kexec!` refusal, the reboot fallback, halt with `/status`, a panic) are
//! host tests with a recording fake. PID 1 never returns and never panics
//! into the kernel: [`Pid1::run`] gives an [`Ending`], the result line is
//! already printed, and [`finish`] carries the ending out. A panic hook
//! prints the result line and powers off.

use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cmdline::KernelCmdline;
use crate::erase::Erased;
use crate::hardware::FirmwareFailure;
use crate::logger::ConsoleLogger;
use crate::net::NetConfig;
use crate::report;
use crate::session::{self, Done, Tracker};
use crate::source::Source;
use crate::source::url::SourceUrl;
use crate::spec::{Action, DeploySpec, EraseJob, FailurePolicy, Origin, Resolved, SuccessPolicy};
use crate::status::{EventKind, HandoffHow, LastDeploy, RunResult, Stage, Status};
use crate::sys::power::{PowerAction, power};
use crate::timeline::{self, Mark};

mod early;
mod platform;
#[cfg(test)]
mod tests;

pub use early::{EARLY_BOOT, EarlyStep, apply_early_step};
pub use platform::{Machine, Platform};

/// The longest pause between two runs of `on-failure=retry:N`.
const RETRY_PAUSE_MAX: Duration = Duration::from_secs(300);
/// How long the last events may take to reach the report URL before the
/// machine is handed over or powered off.
const REPORT_FLUSH: Duration = Duration::from_secs(5);

/// How PID 1's life ends, once the result line is out and the reports are
/// flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Jump into the kernel staged for kexec. `required` (`kexec!`): if the
    /// jump itself fails, stay up with the error instead of rebooting.
    Kexec {
        required: bool,
    },
    Power(PowerAction),
    /// Stay up, repeating this line on the console.
    Halt(String),
}

pub fn main() -> ! {
    let pid1_at = timeline::since_boot();
    std::panic::set_hook(Box::new(|info| {
        finish(on_panic(&mut Machine::new(), &info.to_string()))
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
    match crate::console::open_extra(&cmdline) {
        Ok(opened) if !opened.is_empty() => {
            log::info!("also writing to console {}", opened.join(", "));
        }
        Ok(_) => {}
        Err(e) => log::warn!("{e:#}"),
    }
    let mut pid1 = Pid1::new(Machine::new(), cmdline);
    pid1.tracker.mark_at(Mark::Pid1, pid1_at);
    finish(pid1.run())
}

/// What a panic leaves: the result line, then the machine powers off.
pub fn on_panic(platform: &mut dyn Platform, info: &str) -> Ending {
    let line = report::error_line(&anyhow::anyhow!("imprint panicked: {info}"));
    platform.console(&line);
    Ending::Power(PowerAction::Poweroff)
}

/// Carries out an [`Ending`]. Never returns.
pub fn finish(ending: Ending) -> ! {
    match ending {
        Ending::Power(action) => power(action),
        Ending::Halt(line) => halt_showing(&line),
        Ending::Kexec { required } => {
            let Err(error) = crate::sys::kexec::exec();
            let error = error.context("kexec is not possible");
            if required {
                let line = report::error_line(&error.context("imprint.on-success=kexec!"));
                crate::console::print_line(&line);
                halt_showing(&line)
            }
            log::warn!("{error:#}; rebooting instead");
            power(PowerAction::Reboot)
        }
    }
}

/// Keeps the machine up, repeating the result so that whoever opens the
/// console later still sees why the deploy failed.
fn halt_showing(line: &str) -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(60));
        crate::console::print_line(line);
    }
}

/// What the spec asks of this run.
enum Job {
    Deploy(Box<Resolved>),
    Erase(EraseJob),
}

/// What a run did.
enum Outcome {
    /// The image is written, verified and injected (after an erase, when
    /// one was asked).
    Deployed(Box<Resolved>, Box<Done>),
    /// An erase-only job erased these disks.
    Erased(EraseJob, Vec<Erased>),
}

/// 10 s, 20 s, 40 s, … up to five minutes between whole-deploy retries.
fn retry_pause(attempt: u32) -> Duration {
    let secs = 10u64.saturating_mul(1 << attempt.saturating_sub(1).min(16));
    Duration::from_secs(secs).min(RETRY_PAUSE_MAX)
}

/// PID 1's state across runs of the deploy (`on-failure=retry:N`):
/// drivers stay loaded and the network stays up.
pub struct Pid1<P: Platform> {
    platform: P,
    cmdline: KernelCmdline,
    tracker: Tracker,
    drivers_loaded: bool,
    /// The NIC the network came up on, once it is up.
    boot_mac: Option<[u8; 6]>,
    /// From the deploy spec once it is loaded (it may come from JSON).
    on_failure: FailurePolicy,
    /// The image of the current run, for DRP's `imprint/last-deploy`.
    image: Option<String>,
    /// Firmware load failures already on the console.
    firmware_reported: Vec<FirmwareFailure>,
}

impl<P: Platform> Pid1<P> {
    /// Starts reporting from whatever parses of the command line: when it
    /// is bad, PID 1 must still honour what the operator asked for on
    /// failure, and still report and serve `/status`.
    pub fn new(platform: P, cmdline: KernelCmdline) -> Pid1<P> {
        let lenient = DeploySpec::lenient_from_cmdline(&cmdline);
        let status = Status::new(&lenient.status_options());
        Pid1 {
            platform,
            cmdline,
            tracker: Tracker::new(status),
            drivers_loaded: false,
            boot_mac: None,
            on_failure: lenient.on_failure,
            image: None,
            firmware_reported: Vec::new(),
        }
    }

    /// Runs the deploy, again on failure as `on-failure=retry:N` says, and
    /// hands the machine over. The result line is printed before this
    /// returns.
    pub fn run(&mut self) -> Ending {
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let run_started = Instant::now();
            match self.attempt() {
                Ok(Outcome::Deployed(deploy, mut done)) => {
                    let line = report::ok_line(&done.summary);
                    self.platform.console(&line);
                    self.record_result(&line, Some(&done), None, run_started);
                    done.seed();
                    return self.hand_over(&deploy, &done);
                }
                Ok(Outcome::Erased(job, erased)) => {
                    let line = report::erased_line(&erased, run_started.elapsed());
                    self.platform.console(&line);
                    self.record_result(&line, None, None, run_started);
                    return self.hand_over_erased(&job, &line);
                }
                Err(error) => {
                    // The event first: whoever sees the console line and
                    // asks /status must find the failure there.
                    self.tracker.status.emit(EventKind::Failed {
                        stage: self.tracker.stage,
                        error: format!("{error:#}"),
                        offset: self.tracker.failed_offset(),
                        attempt: Some(attempt),
                    });
                    let line = report::error_line(&error);
                    self.say_if_unreported();
                    self.platform.console(&line);
                    self.record_result(&line, None, Some(format!("{error:#}")), run_started);
                    if let FailurePolicy::Retry(limit) = self.on_failure
                        && attempt <= limit
                    {
                        let pause = retry_pause(attempt);
                        self.tracker.status.emit(EventKind::Retrying {
                            attempt: attempt + 1,
                            of: limit + 1,
                            delay_seconds: pause.as_secs_f64(),
                        });
                        log::warn!(
                            "deploy failed (run {attempt} of {}); running it again in {} s",
                            limit + 1,
                            pause.as_secs()
                        );
                        // The next run is a new DRP job: this one's result
                        // goes out before the pause.
                        self.flush_reports();
                        self.platform.sleep(pause);
                        continue;
                    }
                    return self.fail(&line);
                }
            }
        }
    }

    /// One run: the phases up to an injected disk (or, for an erase job,
    /// erased disks).
    fn attempt(&mut self) -> Result<Outcome> {
        self.drivers()?;
        let deploy = match self.spec()? {
            Job::Deploy(deploy) => deploy,
            Job::Erase(job) => return self.erase_only(job),
        };
        let (source, target) = self.disk(&deploy)?;
        let erased = match &deploy.erase {
            Some(request) => self.platform.erase(
                request,
                Some(&target),
                source.device.as_deref(),
                &mut self.tracker,
            )?,
            None => Vec::new(),
        };
        // Boot entries naming the disk's old partitions are stale after the write.
        let before = crate::efi::apply::guids_before(&deploy.boot_entry, &target);
        let mut done = session::run(&deploy, source, &target, self.boot_mac, &mut self.tracker)?;
        done.summary.erased = erased.iter().map(Erased::token).collect();
        match self
            .platform
            .register_boot_entry(&deploy, &target, &done, &before)
        {
            Ok(Some(registered)) => {
                log::info!("UEFI boot entry: {registered}");
                done.summary.boot_entry =
                    Some(crate::efi::vars::boot_entry_name(registered.number));
                self.tracker.status.emit(EventKind::BootEntry {
                    entry: registered.to_string(),
                });
            }
            Ok(None) => {}
            // The image is good; the firmware may still boot it by its
            // removable path or an entry it already has.
            Err(e) => log::warn!("no UEFI boot entry written: {e:#}"),
        }
        Ok(Outcome::Deployed(deploy, Box::new(done)))
    }

    /// Phase erase of an erase-only job: the target disk when one is
    /// named, then the erase.
    fn erase_only(&mut self, job: EraseJob) -> Result<Outcome> {
        self.tracker.enter(Stage::Disk);
        let target = match &job.target {
            Some(selector) => Some(
                self.platform
                    .wait_for_disk(selector, &[])
                    .map_err(|e| e.context("imprint.disk="))?,
            ),
            None => None,
        };
        let erased =
            self.platform
                .erase(&job.request, target.as_deref(), None, &mut self.tracker)?;
        Ok(Outcome::Erased(job, erased))
    }

    /// Phase drivers: once per boot.
    fn drivers(&mut self) -> Result<()> {
        if self.drivers_loaded {
            return Ok(());
        }
        self.tracker.enter(Stage::Drivers);
        let report = self.platform.load_drivers()?;
        self.firmware_reported = report.firmware;
        self.drivers_loaded = true;
        self.tracker.mark(Mark::Drivers);
        let machine = self.platform.machine_info();
        self.tracker.status.emit(EventKind::Started { machine });
        Ok(())
    }

    /// Phase spec: the command line, and the JSON spec it points at (over
    /// the network, which comes up first when the spec or the image is
    /// fetched over it).
    fn spec(&mut self) -> Result<Job> {
        let spec = DeploySpec::from_cmdline(&self.cmdline)?;
        self.on_failure = spec.on_failure;
        // A spec read from a local file may still set up the network.
        let fetched = match &spec.config {
            Some(config) => config.needs_network(),
            None => spec.url.as_ref().is_some_and(SourceUrl::needs_network),
        };
        if fetched {
            self.network(&spec)?;
        }
        let spec = match &spec.config {
            Some(config) => {
                self.tracker.enter(Stage::Spec);
                let text = session::fetch_spec(config, &spec.source)?;
                let merged = DeploySpec::from_json_and_cmdline(&text, &self.cmdline)
                    .map_err(|e| e.context(format!("deploy spec {config}")))?;
                log::info!("deploy spec {config} loaded");
                self.on_failure = merged.on_failure;
                merged
            }
            None => spec,
        };
        // The spec may name what the command line did not.
        self.tracker.status.adopt(&spec.status_options());
        // DRP's imprint.json carries the API URL and the machine's token:
        // the run is reported as a job of the machine.
        if let Some(agent) = &spec.identity.drp {
            crate::drp::report_to(&self.tracker.status, agent, &spec.source);
        }
        self.image = spec.url.as_ref().map(ToString::to_string);
        self.tracker.mark(Mark::Spec);
        if spec.boot_network.is_some() && self.boot_mac.is_some() {
            log::warn!(
                "the deploy spec's boot-network is not used: the network was up to fetch the spec"
            );
        }
        if spec.action == Action::Erase {
            return Ok(Job::Erase(spec.resolve_erase(Origin::Cmdline)?));
        }
        let deploy = spec.clone().resolve(Origin::Cmdline)?;
        if deploy.image.needs_network() {
            self.network(&spec)?;
        }
        Ok(Job::Deploy(Box::new(deploy)))
    }

    /// Phase disk: the image is opened (once; a local source's filesystem is
    /// found and mounted read-only), then the target chosen, never the disk
    /// the image is read from.
    fn disk(&mut self, deploy: &Resolved) -> Result<(Source, std::path::PathBuf)> {
        let source = self.tracker.opening_source(deploy)?;
        self.tracker.enter(Stage::Disk);
        let source_disk = source.device.clone();
        let excluded: Vec<String> = source_disk.iter().cloned().collect();
        let target = self
            .platform
            .wait_for_disk(&deploy.disk, &excluded)
            .map_err(|e| e.context(deploy.spelling("disk")))?;
        if let Some(source_disk) = &source_disk
            && target == std::path::Path::new("/dev").join(source_disk)
        {
            anyhow::bail!(
                "disk {} holds the image source {}; choose another target disk",
                target.display(),
                deploy.image
            );
        }
        Ok((source, target))
    }

    /// Phase network: once per boot; later runs reuse it.
    fn network(&mut self, spec: &DeploySpec) -> Result<()> {
        if self.boot_mac.is_some() {
            return Ok(());
        }
        self.tracker.enter(Stage::Network);
        let mut config = NetConfig::from_cmdline(&self.cmdline)?;
        if let Some(from_spec) = &spec.boot_network {
            config = from_spec.clone().over(config);
        }
        if let Some(timeout) = spec.link_timeout {
            config.link_timeout = Some(timeout);
        }
        let up = self.platform.bring_up_network(&config);
        self.report_late_firmware();
        let configured = up?;
        if let Some(at) = configured.link_up {
            self.tracker.mark_at(Mark::Link, at);
        }
        self.boot_mac = Some(configured.mac);
        self.tracker.mark(Mark::Lease);
        Ok(())
    }

    /// Firmware a driver asked for after the coldplug report (r8169 and
    /// bnx2x load theirs when the link comes up), each reported once.
    fn report_late_firmware(&mut self) {
        for failure in self.platform.firmware_failures() {
            if !self.firmware_reported.contains(&failure) {
                log::warn!("{failure}");
                self.firmware_reported.push(failure);
            }
        }
    }

    /// Phase handoff: follows the success policy.
    fn hand_over(&mut self, deploy: &Resolved, done: &Done) -> Ending {
        self.tracker.enter(Stage::Handoff);
        match deploy.on_success {
            SuccessPolicy::Kexec { required } => self.kexec(deploy, done, required),
            SuccessPolicy::Reboot => self.power(HandoffHow::Reboot, None, PowerAction::Reboot),
            SuccessPolicy::Poweroff => {
                self.power(HandoffHow::Poweroff, None, PowerAction::Poweroff)
            }
            SuccessPolicy::None => {
                self.announce_handoff(HandoffHow::None, None);
                self.platform.unmount_everything();
                log::info!("on-success=none: staying up");
                Ending::Halt(report::ok_line(&done.summary))
            }
        }
    }

    /// Phase handoff of an erase job: nothing was installed, so `kexec`
    /// reboots (into whatever the firmware or the provisioning server
    /// boots next).
    fn hand_over_erased(&mut self, job: &EraseJob, line: &str) -> Ending {
        self.tracker.enter(Stage::Handoff);
        match job.on_success {
            SuccessPolicy::Kexec { .. } | SuccessPolicy::Reboot => self.power(
                HandoffHow::Reboot,
                Some("erase job: nothing to kexec".to_owned()),
                PowerAction::Reboot,
            ),
            SuccessPolicy::Poweroff => {
                self.power(HandoffHow::Poweroff, None, PowerAction::Poweroff)
            }
            SuccessPolicy::None => {
                self.announce_handoff(HandoffHow::None, None);
                self.platform.unmount_everything();
                log::info!("on-success=none: staying up");
                Ending::Halt(line.to_owned())
            }
        }
    }

    fn kexec(&mut self, deploy: &Resolved, done: &Done, required: bool) -> Ending {
        let why = match self
            .platform
            .stage_kexec(deploy, done, &self.cmdline.init_args)
        {
            Ok(staged) => {
                self.mark_handoff();
                self.tracker.status.emit(EventKind::Handoff {
                    how: HandoffHow::Kexec,
                    kernel: Some(staged.kernel.clone()),
                    cmdline: Some(staged.cmdline.clone()),
                    detail: Some(staged.entry.clone()),
                });
                self.flush_reports();
                self.platform.unmount_everything();
                log::info!("kexec into {} ({})", staged.kernel, staged.entry);
                return Ending::Kexec { required };
            }
            Err(e) => e.context("kexec is not possible"),
        };
        if required {
            let why = why.context("imprint.on-success=kexec!");
            let line = report::error_line(&why);
            self.platform.console(&line);
            // DRP's job ends failed, not finished, when it was not sent yet.
            self.tracker.status.amend_result(|result| {
                result.line.clone_from(&line);
                result.deploy.error = Some(format!("{why:#}"));
            });
            self.tracker.status.emit(EventKind::Failed {
                stage: Stage::Handoff,
                error: format!("{why:#}"),
                offset: None,
                attempt: None,
            });
            // The image on the disk is good: no retry, no wipe.
            if let FailurePolicy::Retry(_) = self.on_failure {
                self.on_failure = FailurePolicy::Halt;
            }
            return self.fail(&line);
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
        self.tracker.mark(Mark::Handoff);
        let line = self.tracker.timeline.line();
        self.platform.console(&line);
    }

    fn announce_handoff(&mut self, how: HandoffHow, detail: Option<String>) {
        self.mark_handoff();
        self.tracker.status.emit(EventKind::Handoff {
            how,
            kernel: None,
            cmdline: None,
            detail,
        });
        self.flush_reports();
    }

    fn power(&mut self, how: HandoffHow, detail: Option<String>, action: PowerAction) -> Ending {
        self.announce_handoff(how, detail);
        self.platform.unmount_everything();
        Ending::Power(action)
    }

    /// A failure before the deploy spec named where to report (DRP's job,
    /// a report URL) reaches nobody but this console and `/status`: says
    /// so, and what DRP shows meanwhile (README, "When DRP shows nothing").
    fn say_if_unreported(&mut self) {
        let config = DeploySpec::lenient_from_cmdline(&self.cmdline).config;
        if let Some(config) = config
            && !crate::drp::is_reporting(&self.tracker.status)
        {
            let why = format!(
                "deploy spec {config} not loaded: {}",
                crate::drp::UNREPORTED_FAILURE
            );
            self.platform.console(&format!("imprint: {why}"));
            self.tracker.status.set_unreported(why);
        }
    }

    /// Follows the failure policy (retries are the caller's).
    fn fail(&mut self, line: &str) -> Ending {
        let timeline = self.tracker.timeline.line();
        self.platform.console(&timeline);
        self.flush_reports();
        match self.on_failure {
            FailurePolicy::Reboot => {
                self.platform.unmount_everything();
                Ending::Power(PowerAction::Reboot)
            }
            FailurePolicy::Poweroff => {
                self.platform.unmount_everything();
                Ending::Power(PowerAction::Poweroff)
            }
            FailurePolicy::Halt | FailurePolicy::Retry(_) => {
                // Someone may want to `curl` this machine's /status: give
                // it a network if the deploy failed before it had one.
                if self.tracker.status.status_address().is_some() && self.boot_mac.is_none() {
                    let spec = DeploySpec::lenient_from_cmdline(&self.cmdline);
                    if let Err(e) = self.network(&spec) {
                        log::warn!("no network for the status endpoint: {e:#}");
                    }
                }
                Ending::Halt(line.to_owned())
            }
        }
    }

    /// Tells the status sinks how the run ended: DRP's job gets the result
    /// line for its log, ends finished or failed, and `imprint/last-deploy`
    /// is set. Sent by [`flush_reports`](Self::flush_reports), after the
    /// last event (the handoff), so the job log ends with it.
    fn record_result(
        &mut self,
        line: &str,
        done: Option<&Done>,
        error: Option<String>,
        run_started: Instant,
    ) {
        self.tracker.status.set_result(RunResult {
            line: line.to_owned(),
            deploy: LastDeploy {
                image: self.image.clone().unwrap_or_default(),
                sha256: done.map(|d| crate::text::hex(&d.summary.sha256)),
                seconds: done
                    .map_or(run_started.elapsed(), |d| d.summary.elapsed)
                    .as_secs_f64(),
                error,
            },
        });
    }

    /// Waits (bounded) for the webhook and DRP to get the last events and
    /// the run's result.
    fn flush_reports(&mut self) {
        if !self.tracker.status.flush(REPORT_FLUSH) {
            log::warn!("not every status event reached the report URL or DRP's job log");
        }
    }
}
