//! One deploy session, the same for PID 1 and the CLI:
//!
//! ```text
//! [fetch the JSON spec] -> write (pipeline) -> verified -> inject -> Done | error
//! ```
//!
//! The caller brings the machine to the point where a target exists (PID 1:
//! drivers, network, disk; the CLI: a path) and turns the outcome into the
//! result line ([`crate::report`]) and a handoff. What the outside sees on the
//! way (stages, timeline marks, status events) goes through a [`Tracker`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::deploy::{self, DeployOptions};
use crate::disk::DiskInfo;
use crate::erase::method::{self, Capabilities, SecureMethod};
use crate::erase::secure::{self, DevicePassthrough, Progress as SecureProgress, SystemClock};
use crate::erase::{EraseDevice, EraseDisks, EraseTarget, Erased, Mode, PlannedErase, Verified};
use crate::inject::deployed::{self, Injected};
use crate::pipeline::format::DeclaredFormat;
use crate::pipeline::progress::Progress;
use crate::report::DeploySummary;
use crate::source::url::SourceUrl;
use crate::source::{Source, SourceOptions};
use crate::spec::{EraseRequest, Resolved};
use crate::status::{EventKind, MirrorServed, ProgressEvents, Stage, Status};
use crate::timeline::{self, Mark, Timeline};

/// A JSON deploy spec larger than this is not a deploy spec.
const MAX_SPEC_LEN: u64 = 1 << 20;

/// A session that reached the end: the image is written, verified and,
/// where the disk has a root to inject into, injected.
#[derive(Debug)]
pub struct Done {
    pub summary: DeploySummary,
    pub injected: Injected,
    /// The swarm of a BitTorrent deploy, still running: [`Done::seed`].
    pub swarm: Option<std::sync::Arc<crate::source::swarm::Swarm>>,
}

impl Done {
    /// Seeds the image for `imprint.seed-time=` when it came by BitTorrent,
    /// then stops the engine: after the result is out, before a handoff.
    pub fn seed(&mut self) {
        if let Some(swarm) = self.swarm.take() {
            swarm.seed();
        }
    }
}

/// Where a run is and what it reached, told to the status sinks as it
/// changes: the stage (for the `failed` event), the timeline marks and the
/// bytes the write stage got to.
#[derive(Debug, Clone)]
pub struct Tracker {
    pub status: Status,
    pub timeline: Timeline,
    pub stage: Stage,
    /// Bytes of the image written by the current run's write stage.
    pub written: Option<u64>,
}

impl Tracker {
    pub fn new(status: Status) -> Tracker {
        Tracker {
            status,
            timeline: Timeline::default(),
            stage: Stage::Drivers,
            written: None,
        }
    }

    pub fn enter(&mut self, stage: Stage) {
        self.stage = stage;
        self.status.enter(stage);
    }

    pub fn mark(&mut self, mark: Mark) {
        self.mark_at(mark, timeline::since_boot());
    }

    pub fn mark_at(&mut self, mark: Mark, at: Duration) {
        self.timeline.mark_at(mark, at);
        self.status.set_timeline(self.timeline.to_json());
    }

    /// Opens `deploy`'s image ([`open_source`]). Its failures (a 404, an
    /// unreachable server) belong to the write stage, at byte 0.
    pub fn opening_source(&mut self, deploy: &Resolved) -> Result<Source> {
        self.enter(Stage::Write);
        self.written = Some(0);
        open_source(deploy)
    }

    /// Where a failed run stopped writing, for the `failed` event.
    pub fn failed_offset(&self) -> Option<u64> {
        self.written.filter(|_| self.stage == Stage::Write)
    }
}

/// Fetches a JSON deploy spec's text (`imprint.config=`, `--config`, DRP's
/// `imprint.json`).
pub fn fetch_spec(config: &SourceUrl, options: &SourceOptions) -> Result<String> {
    crate::source::fetch_text(config.as_str(), MAX_SPEC_LEN, "a deploy spec", options)
        .with_context(|| format!("fetching the deploy spec {config}"))
}

/// Opens `deploy`'s image, once: before the target is chosen, so a 404 or
/// an unreachable server fails with no disk touched, and so a local
/// source's disk ([`Source::device`]) can be left out of the choice.
pub fn open_source(deploy: &Resolved) -> Result<Source> {
    crate::source::open(deploy.image.as_str(), &deploy.source)
}

/// Writes `source` (`deploy`'s image, from [`open_source`]) onto `target`,
/// verifies it and injects the machine's identity. `boot_mac` is the NIC
/// PID 1 booted from (the installed network config names it); the CLI has
/// none.
pub fn run(
    deploy: &Resolved,
    source: Source,
    target: &Path,
    boot_mac: Option<[u8; 6]>,
    tracker: &mut Tracker,
) -> Result<Done> {
    tracker.enter(Stage::Write);
    tracker.written = None;
    let stats = source.stats.clone();
    let status = tracker.status.clone();
    source.stats.on_switch.set(move |from, to, served| {
        status.emit(EventKind::Mirrors {
            from: Some(from.to_owned()),
            to: Some(to.to_owned()),
            served: MirrorServed::list(served),
        });
    });
    let mut progress = Stamped::new(ProgressEvents::new(tracker.status.clone(), Stage::Write));
    // A swarm with no room in RAM keeps its pieces on the target's tail;
    // started before the first read (the sniff below), so that read comes
    // from the swarm too.
    if !matches!(deploy.format, DeclaredFormat::Rootfs(_)) {
        crate::source::swarm::start_on_target(&stats, target);
    }
    let (rootfs, source) = match &deploy.format {
        DeclaredFormat::Rootfs(declared) => (Some(declared.clone()), source),
        DeclaredFormat::Auto => {
            let (kind, source) = crate::rootfs::deploy::sniff(source)?;
            if let Some(kind) = kind {
                log::info!("format: a root-filesystem tarball ({kind})");
                // Its partitions and filesystems take the whole disk.
                if let Some(swarm) = stats.swarm.get().filter(|s| s.disk_region().is_some()) {
                    swarm.release(
                        "a root filesystem is laid out over the whole disk, scratch included",
                    );
                }
            }
            (kind.map(str::to_owned), source)
        }
        DeclaredFormat::Image { .. } | DeclaredFormat::Qcow2(_) => (None, source),
    };
    let written = match rootfs {
        Some(declared) => crate::rootfs::deploy::run(
            deploy,
            source,
            target,
            &declared,
            boot_mac,
            &mut progress,
            Some(&tracker.status),
        ),
        None => deploy::deploy_to(
            deploy,
            source,
            target,
            &DeployOptions::default(),
            &mut progress,
        ),
    };
    tracker.written = Some(progress.done);
    let summary = written?;
    if let (Some(first), Some(last)) = (progress.first, progress.last) {
        tracker.mark_at(Mark::FirstByte, first);
        tracker.mark_at(Mark::LastByte, last);
    }
    tracker.mark(Mark::Verified);
    for signer in &summary.signed_by {
        tracker.status.emit(EventKind::Signed {
            format: signer.format.name().to_owned(),
            key: signer.fingerprint.clone(),
            subkey: signer.subkey,
            covered: signer.covered.name().to_owned(),
        });
    }
    // With one mirror there is nothing to tell apart (the result line
    // still says what it served).
    if summary.transfer.mirrors.len() > 1 {
        tracker.status.emit(EventKind::Mirrors {
            from: None,
            to: None,
            served: MirrorServed::list(&summary.transfer.mirrors),
        });
    }
    tracker.status.emit(EventKind::Verified {
        sha256: crate::text::hex(&summary.sha256),
        algorithm: summary.verified.map(str::to_owned),
        bytes: summary.bytes,
        image_digest: summary.transfer.image_digest.clone(),
    });

    tracker.enter(Stage::Inject);
    let injected = inject(deploy, target, boot_mac)?;
    tracker.mark(Mark::Injected);
    let event = match &injected {
        Injected::Root { root, ops } => {
            let root = root.describe();
            log::info!("injected {ops} changes into {root}");
            EventKind::Injected {
                root: Some(root),
                changes: *ops,
                skipped: None,
            }
        }
        Injected::Skipped(why) => {
            log::info!("no injection: {why}");
            EventKind::Injected {
                root: None,
                changes: 0,
                skipped: Some(why.clone()),
            }
        }
    };
    tracker.status.emit(event);
    Ok(Done {
        summary,
        injected,
        swarm: stats.swarm.get().cloned(),
    })
}

/// Injection needs the partitions of a block device. A regular file (the
/// CLI's stand-in for a disk) has none the kernel shows, so it is skipped
/// there, unless identity was asked for.
fn inject(deploy: &Resolved, target: &Path, boot_mac: Option<[u8; 6]>) -> Result<Injected> {
    use std::os::unix::fs::FileTypeExt;
    let request = deployed::Request {
        identity: &deploy.identity,
        root: deploy.root.as_ref(),
        grow: deploy.grow,
        source: &deploy.source,
    };
    let is_block = std::fs::metadata(target).is_ok_and(|m| m.file_type().is_block_device());
    if !is_block {
        if deployed::requested(&request) {
            bail!(
                "{} is a file: identity injection needs a block device (attach it with losetup -P)",
                target.display()
            );
        }
        return Ok(Injected::Skipped(format!(
            "{} is a file, not a disk",
            target.display()
        )));
    }
    deployed::inject_or_fail_closed(&request, target, boot_mac)
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

/// How long disks may keep appearing before an erase of `all` disks or of
/// hints chooses among them.
const ERASE_DISKS_SETTLE: Duration = Duration::from_secs(2);
const ERASE_DISKS_WAIT: Duration = Duration::from_secs(30);

/// Erases the disks `request` names: the plan (each disk and how) is logged
/// and sent as an `erase-plan` event before anything is touched, then each
/// disk is erased, read back and reported (`erased`). `target` is the
/// deploy's target (a device or, on the CLI, an image file);
/// `source_disk` the disk the image is read from, which is never erased.
pub fn erase(
    request: &EraseRequest,
    target: Option<&Path>,
    source_disk: Option<&str>,
    tracker: &mut Tracker,
) -> Result<Vec<Erased>> {
    tracker.enter(Stage::Erase);
    let plan = plan_erase(request, target, source_disk)?;
    log::info!("erase plan ({} disk(s), nothing erased yet):", plan.len());
    for disk in &plan {
        log::info!("  {}", disk.planned);
    }
    tracker.status.emit(EventKind::ErasePlan {
        disks: plan.iter().map(|d| d.planned.to_string()).collect(),
    });
    let mut done = Vec::new();
    for disk in &plan {
        let path = &disk.path;
        let mut dev = EraseDevice::open(path)?;
        let partitions = crate::erase::partitions_of(&mut dev);
        let size = dev.size();
        let mut progress = ProgressEvents::new(tracker.status.clone(), Stage::Erase);
        let mut device_erase = |method: SecureMethod, progress: &mut dyn Progress| {
            let mut pass = DevicePassthrough::open(path)?;
            let mut clock = SystemClock::new();
            let mut report = |p: SecureProgress| {
                let fraction = p.fraction.unwrap_or(0.0).clamp(0.0, 1.0);
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                progress.update((fraction * size as f64) as u64, Some(size));
                let estimate = p
                    .estimate
                    .map_or_else(|| "unknown".to_owned(), |e| format!("{} s", e.as_secs()));
                log::info!(
                    "{}: {method}: {:.0}% after {} s (estimate {estimate})",
                    path.display(),
                    fraction * 100.0,
                    p.elapsed.as_secs()
                );
            };
            let outcome =
                secure::run_secure(&mut pass, &mut clock, &mut report, &disk.caps, method, size)?;
            if outcome.password_disabled_afterwards {
                log::warn!(
                    "{}: the temporary ATA password stayed set after the erase; it was disabled",
                    path.display()
                );
            }
            Ok(outcome.after)
        };
        let erased = crate::erase::erase(
            &mut dev,
            disk.planned.method,
            &partitions,
            &mut progress,
            &mut device_erase,
        )
        .with_context(|| format!("erasing {} ({})", path.display(), request.mode))?;
        log::info!("{erased}");
        tracker.status.emit(EventKind::Erased {
            disk: erased.disk.clone(),
            method: erased.method.clone(),
            seconds: erased.elapsed.as_secs_f64(),
            verified: matches!(erased.verified, Verified::Zeros { .. }),
            detail: erased.to_string(),
        });
        done.push(erased);
    }
    Ok(done)
}

/// One disk of an erase: where it is, what it can do, and the plan for it.
struct DiskToErase {
    path: PathBuf,
    caps: Capabilities,
    planned: PlannedErase,
}

/// Chooses the disks, asks each what it can do (where the mode depends on
/// it) and decides how to erase it; any refusal fails here, before
/// anything is erased.
fn plan_erase(
    request: &EraseRequest,
    target: Option<&Path>,
    source_disk: Option<&str>,
) -> Result<Vec<DiskToErase>> {
    let mode = request.mode;
    // The CLI erases an image file as it would write one: punched holes
    // read back as zeros, and there is no device to send commands to.
    if let (EraseDisks::Target, Some(file)) = (&request.disks, target)
        && let Ok(meta) = std::fs::metadata(file)
        && meta.is_file()
    {
        let mut caps = capabilities_without_probe(&file.display().to_string());
        caps.discard = true;
        caps.discard_zeroes = true;
        let disk = DiskInfo::file(file, meta.len());
        let planned = crate::erase::decide(disk, mode, &caps)?;
        return Ok(vec![DiskToErase {
            path: file.to_owned(),
            caps,
            planned,
        }]);
    }
    let sys_block = Path::new("/sys/block");
    let mut disks = crate::disk::list_disks(sys_block)?;
    if request.disks != EraseDisks::Target {
        // Disks probe asynchronously: choose among them once the list holds still.
        let deadline = std::time::Instant::now() + ERASE_DISKS_WAIT;
        loop {
            std::thread::sleep(ERASE_DISKS_SETTLE);
            let again = crate::disk::list_disks(sys_block)?;
            if again == disks || std::time::Instant::now() >= deadline {
                break;
            }
            disks = again;
        }
    }
    let mut never: Vec<String> = source_disk.into_iter().map(str::to_owned).collect();
    for disk in &disks {
        if is_boot_medium(&disk.dev_path()) {
            log::info!("{}: an iso9660 boot medium; never erased", disk.describe());
            never.push(disk.name.clone());
        }
    }
    let target = target.map(|p| p.to_string_lossy().into_owned());
    let chosen = crate::erase::choose_disks(&request.disks, target.as_deref(), &disks, &never)?;
    chosen
        .into_iter()
        .map(|disk| {
            let path = disk.dev_path();
            let caps = probe_for(mode, &disk)?;
            let planned = crate::erase::decide(disk, mode, &caps)?;
            Ok(DiskToErase {
                path,
                caps,
                planned,
            })
        })
        .collect()
}

/// What the disk can do, asked of the device where `mode` depends on it:
/// its own erase commands (`secure`, `auto`) or whether discarded blocks
/// read back as zeros (`discard`).
fn probe_for(mode: Mode, disk: &DiskInfo) -> Result<Capabilities> {
    let path = disk.dev_path();
    let name = path.display().to_string();
    let transport = method::Transport::of(disk.transport);
    if mode == Mode::Metadata || mode == Mode::Zero || transport == method::Transport::Other {
        let mut caps = capabilities_without_probe(&name);
        caps.transport = transport;
        caps.rotational = disk.rotational;
        return Ok(caps);
    }
    let probed = DevicePassthrough::open(&path)
        .and_then(|mut pass| secure::probe(&mut pass, &name, transport, disk.rotational));
    match probed {
        Ok(caps) => Ok(caps),
        // Discard is asked for whatever the answer; only its read-back depends on it.
        Err(e) if mode == Mode::Discard => {
            log::warn!("{name}: {e:#}; its discard is not read back as zeros");
            Ok(capabilities_without_probe(&name))
        }
        Err(e) => Err(e.context(format!(
            "imprint.erase={mode}: asking {name} what it can erase"
        ))),
    }
}

/// A disk nothing was asked of: no device erase, no promise after discard.
fn capabilities_without_probe(name: &str) -> Capabilities {
    Capabilities {
        disk: name.to_owned(),
        transport: method::Transport::Other,
        nvme: None,
        ata: None,
        scsi: None,
        discard: false,
        discard_zeroes: false,
        rotational: false,
    }
}

/// Whether `dev` carries an ISO 9660 filesystem (a CD, or a USB stick with
/// an installer or live image written to it): what a machine boots from,
/// never what it is reimaged onto.
fn is_boot_medium(dev: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    let mut magic = [0u8; 5];
    std::fs::File::open(dev)
        .and_then(|f| f.read_exact_at(&mut magic, 32 * 1024 + 1))
        .is_ok_and(|()| &magic == b"CD001")
}
