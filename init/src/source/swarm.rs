//! BitTorrent mode (`imprint.torrent=`): the image's pieces from a swarm
//! of machines being deployed, through a real engine, `aria2c`, that
//! imprint starts and supervises; the mirrors (`imprint.url=`) stay the
//! fallback for every chunk the swarm does not deliver in time.
//!
//! **Engine.** `aria2c` is looked for on `PATH`, then at
//! `/usr/bin/aria2c`: inside the initramfs it exists only when the optional
//! P2P initrd was appended after imprint's own (the kernel unpacks both into
//! one root). It runs with JSON-RPC on `127.0.0.1` only (a random port and
//! secret), DHT and local peer discovery off (peers come from the torrent's
//! tracker and peer exchange), no disk cache (a piece aria2 reports complete
//! is in the file, hash-checked against the torrent) and no seed ratio: how
//! long it seeds is imprint's decision (`imprint.seed-time=`).
//!
//! **Scratch.** The compressed pieces land in a scratch directory: in PID 1
//! `/run/imprint/swarm` in the initramfs's own RAM, when `MemAvailable`
//! holds the image plus `imprint.decode-memory=` plus a margin; for the CLI
//! under `$TMPDIR`, when that filesystem has room. Otherwise they go to
//! **the tail of the target disk** ([`DiskTail`]), once the deploy has
//! chosen it ([`start_on_target`]): twice the image's length, ending before
//! the disk's last MiB (the backup GPT, wiped and rewritten by the deploy),
//! the pieces in the first half, bytes fetched from the mirrors instead in
//! the second. aria2 writes into a loop device over the first half
//! (`sys::loopdev`; its driver comes with the P2P initrd), which it takes
//! for a file of the image's length. The image never overwrites pieces
//! still needed: the deploy's writes go through a fence
//! (`pipeline::target::Fenced`), and an image that reaches the region
//! stops the swarm first ([`Swarm::release`]); the rest of it then comes
//! from the mirrors. Where the disk is too small for the image and the
//! pieces, or the loop driver is missing, the deploy is an ordinary HTTP
//! one, with a warning that says why.
//!
//! **Chunks.** [`super::ranged`] reads the image in chunks, in order; for
//! each one it first asks [`Swarm::wait_range`], which returns the chunk's
//! bytes from the scratch file once aria2 has every piece it spans, or
//! `None` when aria2 has made no progress for `imprint.torrent-timeout=`
//! (the tracker is down, no peer answers) or is gone: the chunk then comes
//! from the mirrors, like any range, and a chunk manifest checks swarm
//! bytes as it checks mirror bytes.
//!
//! **Fallbacks.** Anything wrong with the swarm (no `aria2c`, no room, the
//! torrent cannot be fetched, holds more than one file or another length
//! than the mirrors serve, aria2 exits) is a warning and an HTTP deploy:
//! the swarm only ever makes a deploy faster, never makes one fail.
//!
//! **Seeding.** After a successful deploy the machine seeds for
//! `imprint.seed-time=` ([`Swarm::seed`]: the CLI after its result line,
//! PID 1 before the handoff), then aria2 is stopped and the scratch
//! removed (pieces on the disk's tail stay there, as free space after the
//! last partition); a failed deploy stops it at once ([`Drop`]).

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::SourceOptions;
use super::mirrors::display;
use super::retry::SourceStats;
use crate::pipeline::image_writer::WIPE_LEN;
use crate::pipeline::ordered::DEFAULT_MEMORY;
use crate::sys::loopdev::LoopDevice;

/// The largest `.torrent` read: 4 MiB pieces of a 1 TiB image need 5 MiB
/// of SHA-1s; smaller pieces of a larger image would not be a sane torrent.
const MAX_TORRENT: u64 = 16 << 20;
/// How often aria2 is asked which pieces it has.
const POLL: Duration = Duration::from_millis(200);
/// How long aria2 may take to answer its first RPC call.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// RAM kept free beyond the pieces and the decoders' budget in PID 1.
const RAM_MARGIN: u64 = 256 << 20;
/// Where aria2 is looked for when `PATH` has none: where the P2P initrd
/// (`imprint-build p2p-initrd`) puts it.
pub const ARIA2C_DEFAULT: &str = "/usr/bin/aria2c";
/// The trust roots `imprint-build --ca` bakes in; aria2 uses them for
/// HTTPS trackers when present (it cannot use imprint's built-in roots).
const BAKED_CA: &str = "/etc/imprint/ca.pem";
/// The loop driver, where the P2P initrd puts it (the kernel tree's path
/// under `/lib/modules/<release>/`), for the scratch on the disk.
pub const LOOP_MODULE: &str = "kernel/drivers/block/loop.ko";
/// The name aria2 gives the image's file in the scratch directory
/// (`--index-out`): on the disk's tail, a link to the loop device.
const IMAGE_FILE: &str = "image";
/// Where the scratch on the disk's tail and its halves are aligned.
const TAIL_ALIGN: u64 = 1 << 20;

/// A running aria2 with the image's torrent, and what it has so far.
pub struct Swarm {
    inner: Arc<Inner>,
    length: u64,
    /// Where aria2's file is and the bytes from the mirrors are kept.
    store: Store,
    /// Which bytes were fetched from the mirrors instead.
    filled: Mutex<Filled>,
    claimed: AtomicBool,
    /// Set once the image reached the scratch on the disk: nothing more is
    /// read from it. Reads hold this shared; [`Swarm::release`] waits for
    /// them.
    released: RwLock<bool>,
    child: Mutex<Option<Child>>,
    dir: PathBuf,
    seed_time: Duration,
}

struct Inner {
    rpc: Rpc,
    piece: u64,
    timeout: Duration,
    state: Mutex<Seen>,
    changed: Condvar,
    stop: AtomicBool,
}

/// What the last poll of aria2 said.
struct Seen {
    /// Piece `p` is complete when bit `7 - p % 8` of byte `p / 8` is set.
    bitfield: Vec<u8>,
    completed: u64,
    uploaded: u64,
    /// When `completed` last grew (or aria2 started).
    progress_at: Instant,
    /// The image's file in the scratch directory, once aria2 named it.
    file: Option<PathBuf>,
    /// aria2 stopped answering or failed, and why.
    gone: Option<String>,
}

/// aria2's JSON-RPC on the loopback.
struct Rpc {
    agent: ureq::Agent,
    url: String,
    token: String,
    gid: String,
}

/// What [`Swarm::start`] needs besides the torrent.
pub struct SwarmPlan<'a> {
    pub torrent: &'a str,
    /// The image's length, as the mirrors serve it.
    pub length: u64,
    pub options: &'a SourceOptions,
}

/// Where the pieces are kept.
enum Store {
    /// aria2's file and the mirrors' bytes (this file) in the scratch
    /// directory.
    Files { filled: File },
    /// On the target's tail.
    Disk(DiskTail),
}

/// The scratch on the tail of the target: aria2's pieces in
/// `region.start..region.start + length` (through `device`), the bytes
/// fetched from the mirrors instead in the `length` bytes after them.
pub struct DiskTail {
    target: PathBuf,
    /// The target, read-write: the mirrors' bytes go straight into it.
    disk: File,
    region: Range<u64>,
    /// The loop device aria2 writes through; dropped (and so unbound) when
    /// aria2 is stopped.
    device: Mutex<Option<LoopDevice>>,
}

/// A swarm that found no room for the pieces in RAM (or `$TMPDIR`) and
/// waits for the target to put them on its tail ([`start_on_target`]).
pub struct Pending {
    torrent: String,
    length: u64,
    options: SourceOptions,
    aria2c: PathBuf,
    /// Why not in RAM, for the warning when the disk cannot take them
    /// either.
    why: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("length", &self.length)
            .field("why", &self.why)
            .finish()
    }
}

/// The region on a disk of `disk_size` bytes that the scratch for an image
/// of `length` compressed bytes takes: `2 × length` (pieces, then the
/// mirrors' bytes), MiB-aligned, ending before the last MiB, which the
/// deploy wipes and a partition table's backup uses. `None` unless the
/// image can still be `length` bytes long before it (a raw image is; a
/// compressed one grows, and is fenced off if it reaches the region).
pub fn tail_region(disk_size: u64, length: u64) -> Option<Range<u64>> {
    let end = disk_size.checked_sub(WIPE_LEN)? / TAIL_ALIGN * TAIL_ALIGN;
    let half = length.checked_next_multiple_of(TAIL_ALIGN)?;
    let start = end.checked_sub(half.checked_mul(2)?)?;
    (length > 0 && start >= length.max(TAIL_ALIGN)).then_some(start..end)
}

/// Starts the swarm a deploy to `target` was waiting for ([`Pending`]),
/// with its pieces on the target's tail; a warning and HTTP when it cannot.
/// Called once the deploy has chosen the target, before it writes.
pub fn start_on_target(stats: &SourceStats, target: &Path) {
    let pending = stats
        .swarm_pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let Some(pending) = pending else {
        return;
    };
    match Swarm::on_disk_tail(&pending, target) {
        Ok(swarm) => {
            let _ = stats.swarm.set(Arc::new(swarm));
        }
        Err(error) => log::warn!(
            "torrent: {}, and {error:#}; reading the image over HTTP from the mirrors",
            pending.why
        ),
    }
}

impl Swarm {
    /// Starts aria2 for `plan.torrent` into `stats.swarm`, or leaves it
    /// to wait for the target ([`Pending`], when RAM has no room for the
    /// pieces), or says why not (a warning, and the deploy reads over
    /// HTTP).
    pub fn start(plan: &SwarmPlan, stats: &SourceStats) {
        let Some(aria2c) = find_aria2c() else {
            log::warn!(
                "torrent: aria2c not found on PATH or at {ARIA2C_DEFAULT} (append the P2P initrd, \
                 out/imprint-p2p.img, after imprint's, or install aria2); \
                 reading the image over HTTP from the mirrors"
            );
            return;
        };
        let memory = plan.options.ranges.memory.unwrap_or(DEFAULT_MEMORY);
        if let Err(no_room) = ensure_room(&scratch_dir(), plan.length, memory) {
            log::info!(
                "torrent: {no_room:#}; the pieces go to the tail of the target disk once it is chosen"
            );
            *stats
                .swarm_pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Pending {
                torrent: plan.torrent.to_owned(),
                length: plan.length,
                options: plan.options.clone(),
                aria2c,
                why: format!("{no_room:#}"),
            });
            return;
        }
        let filled = || -> Result<Store> {
            let dir = scratch_dir();
            crate::sys::mount::mkdir_all(&dir, 0o700)?;
            let path = dir.join("from-mirrors");
            let filled = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            Ok(Store::Files { filled })
        };
        match filled().and_then(|store| Self::launch(plan, &aria2c, store)) {
            Ok(swarm) => {
                let _ = stats.swarm.set(Arc::new(swarm));
            }
            Err(error) => {
                let _ = std::fs::remove_dir_all(scratch_dir());
                log::warn!("torrent: {error:#}; reading the image over HTTP from the mirrors");
            }
        }
    }

    /// The swarm of `pending`, its pieces on `target`'s tail.
    fn on_disk_tail(pending: &Pending, target: &Path) -> Result<Swarm> {
        let meta = std::fs::metadata(target)
            .with_context(|| format!("inspecting {}", target.display()))?;
        let size = if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            // aria2 writes before the deploy claims the disk: nothing else
            // (a mounted filesystem, a partition of it) may be using it.
            let (_claim, size, _) = crate::pipeline::target::open_exclusive(target, false)?;
            size
        } else {
            meta.len()
        };
        let disk = File::options()
            .read(true)
            .write(true)
            .open(target)
            .with_context(|| format!("opening {}", target.display()))?;
        let region = tail_region(size, pending.length).with_context(|| {
            format!(
                "{} ({}) is too small for the image and its pieces ({} twice, after at least \
                 as much image)",
                target.display(),
                crate::text::human_size(size),
                crate::text::human_size(pending.length)
            )
        })?;
        let module = crate::disk::mount::module_dir().join(LOOP_MODULE);
        crate::sys::loopdev::ensure_driver(&module)?;
        // A block device ends on a whole sector; aria2 writes `length`.
        let device =
            LoopDevice::attach(&disk, region.start, pending.length.next_multiple_of(4096))?;
        let dir = scratch_dir();
        crate::sys::mount::mkdir_all(&dir, 0o700)?;
        let link = dir.join(IMAGE_FILE);
        std::os::unix::fs::symlink(device.path(), &link).with_context(|| {
            format!("linking {} to {}", link.display(), device.path().display())
        })?;
        log::info!(
            "torrent: the pieces go to bytes {}..{} of {} ({}), after the image",
            region.start,
            region.end,
            target.display(),
            device.path().display()
        );
        let store = Store::Disk(DiskTail {
            target: target.to_owned(),
            disk,
            region,
            device: Mutex::new(Some(device)),
        });
        let plan = SwarmPlan {
            torrent: &pending.torrent,
            length: pending.length,
            options: &pending.options,
        };
        Self::launch(&plan, &pending.aria2c, store).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })
    }

    /// Fetches the torrent and starts aria2 on it, with the pieces in
    /// `store`.
    fn launch(plan: &SwarmPlan, aria2c: &Path, store: Store) -> Result<Swarm> {
        let ranges = &plan.options.ranges;
        let dir = scratch_dir();
        let torrent = super::fetch_bytes(plan.torrent, MAX_TORRENT, "a torrent", plan.options)
            .with_context(|| format!("fetching {}", display(plan.torrent)))?;
        let (torrent, dropped) = without_web_seeds(&torrent)
            .with_context(|| format!("reading {}", display(plan.torrent)))?;
        if !dropped.is_empty() {
            log::info!(
                "torrent: {} lists web seeds ({}); left out: every machine would fetch from them, \
                 and the mirrors (imprint.url=) are the fallback",
                display(plan.torrent),
                dropped.join(", ")
            );
        }
        let torrent_path = dir.join("image.torrent");
        std::fs::write(&torrent_path, &torrent)
            .with_context(|| format!("writing {}", torrent_path.display()))?;
        let port = free_port()?;
        let token = random_hex(16)?;
        let gid = random_hex(8)?;
        let log_path = dir.join("aria2.log");
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let child = Command::new(aria2c)
            .args(aria2_args(&dir, port, &token, &gid))
            .arg(&torrent_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", aria2c.display()))?;
        let mut swarm = Swarm {
            length: plan.length,
            store,
            filled: Mutex::new(Filled::default()),
            claimed: AtomicBool::new(false),
            released: RwLock::new(false),
            inner: Arc::new(Inner {
                rpc: Rpc {
                    agent: rpc_agent(),
                    url: format!("http://127.0.0.1:{port}/jsonrpc"),
                    token,
                    gid,
                },
                piece: 0,
                timeout: ranges.torrent_timeout,
                state: Mutex::new(Seen {
                    bitfield: Vec::new(),
                    completed: 0,
                    uploaded: 0,
                    progress_at: Instant::now(),
                    file: None,
                    gone: None,
                }),
                changed: Condvar::new(),
                stop: AtomicBool::new(false),
            }),
            child: Mutex::new(Some(child)),
            dir,
            seed_time: ranges.seed_time,
        };
        let status = swarm.first_status(&log_path)?;
        let (total, piece) = (
            number(&status, "totalLength"),
            number(&status, "pieceLength"),
        );
        let files = status["files"].as_array().map_or(0, Vec::len);
        if files != 1 {
            bail!(
                "{} holds {files} files; an image's torrent holds one (make it with scripts/publish-image)",
                display(plan.torrent)
            );
        }
        if total != plan.length {
            bail!(
                "{} is a torrent of {total} bytes, but the mirrors serve {}; is it this image's torrent?",
                display(plan.torrent),
                plan.length
            );
        }
        if piece == 0 {
            bail!("{} has no piece length", display(plan.torrent));
        }
        Arc::get_mut(&mut swarm.inner)
            .expect("not shared yet")
            .piece = piece;
        swarm.inner.update(&status);
        let inner = Arc::clone(&swarm.inner);
        std::thread::Builder::new()
            .name("swarm-poll".into())
            .spawn(move || inner.poll_loop())
            .context("starting the swarm's poller")?;
        log::info!(
            "torrent: aria2c started ({}, pid {}): {total} bytes in pieces of {piece}, scratch {}; \
             chunks the swarm has not delivered after {} without progress come from the mirrors",
            aria2c.display(),
            swarm.pid().unwrap_or(0),
            swarm.describe_scratch(),
            crate::http::backoff::seconds(swarm.inner.timeout)
        );
        Ok(swarm)
    }

    /// aria2's first answer, waiting for its RPC to come up; a child that
    /// exits first is named with the end of its log.
    fn first_status(&self, log_path: &Path) -> Result<Value> {
        let began = Instant::now();
        loop {
            match self.inner.rpc.status() {
                Ok(status) if !status["totalLength"].is_null() => return Ok(status),
                Ok(_) | Err(_) if began.elapsed() < START_TIMEOUT => {}
                Ok(status) => bail!("aria2c answered without the torrent's length: {status}"),
                Err(error) => {
                    return Err(error.context(format!(
                        "aria2c did not answer on its RPC port within {}s",
                        START_TIMEOUT.as_secs()
                    )));
                }
            }
            if let Some(exit) = self.try_exit() {
                let log = std::fs::read_to_string(log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(3).collect();
                bail!(
                    "aria2c exited ({exit}) before it started: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> Option<u32> {
        self.lock_child().as_ref().map(Child::id)
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_exit(&self) -> Option<std::process::ExitStatus> {
        self.lock_child()
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Bytes `first..=last` of the image from the swarm, into `buffer`
    /// (cleared first): as soon as aria2 has every piece they span, or
    /// `false` when it made no progress for the timeout or is gone.
    /// `cancelled` is asked while waiting: the reader may be gone.
    pub fn wait_range(
        &self,
        first: u64,
        last: u64,
        buffer: &mut Vec<u8>,
        cancelled: &dyn Fn() -> bool,
    ) -> bool {
        let range = first..last + 1;
        loop {
            if cancelled() || self.stalled() {
                return false;
            }
            if self.have(&range) {
                return match self.read(&range, buffer) {
                    Ok(()) => true,
                    Err(error) => {
                        log::warn!("torrent: {error:#}; this chunk comes from the mirrors");
                        false
                    }
                };
            }
            self.wait(POLL);
        }
    }

    /// The swarm's timeout, for messages.
    pub fn timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// The image's length.
    pub fn length(&self) -> u64 {
        self.length
    }

    /// Whether bytes `range` can be read now: every piece they touch is
    /// complete in aria2, or that part of it was [`fill`](Self::fill)ed.
    pub fn have(&self, range: &Range<u64>) -> bool {
        if range.is_empty() {
            return true;
        }
        if *self.lock_released() {
            return false;
        }
        let state = self.inner.lock();
        let filled = self.lock_filled();
        self.segments(range)
            .all(|(piece, part)| (state.has(piece) && state.file.is_some()) || filled.covers(&part))
    }

    /// Reads bytes `range` (once [`have`](Self::have) said so) into
    /// `buffer`: each piece's part from aria2's file when aria2 has the
    /// piece, else from the bytes filled in.
    pub fn read(&self, range: &Range<u64>, buffer: &mut Vec<u8>) -> Result<()> {
        let len = usize::try_from(range.end - range.start).context("a range larger than memory")?;
        // Held across the reads: the image may not overwrite them meanwhile.
        let released = self.lock_released();
        if *released {
            bail!("the image reached the scratch on the disk; the swarm is stopped");
        }
        buffer.clear();
        buffer.resize(len, 0);
        let (file, has): (Option<PathBuf>, Vec<bool>) = {
            let state = self.inner.lock();
            let has = self.segments(range).map(|(p, _)| state.has(p)).collect();
            (state.file.clone(), has)
        };
        let aria2 = match &file {
            Some(path) if has.iter().any(|h| *h) => {
                Some(File::open(path).with_context(|| format!("opening {}", path.display()))?)
            }
            _ => None,
        };
        for ((_, part), from_aria2) in self.segments(range).zip(has) {
            // Both within `len`, which is a usize.
            let at = usize::try_from(part.start - range.start).unwrap_or(usize::MAX);
            let n = usize::try_from(part.end - part.start).unwrap_or(usize::MAX);
            let out = &mut buffer[at..at + n];
            let (fills, base) = self.store.fills();
            let (source, at, name) = match (&aria2, from_aria2) {
                (Some(file), true) => (file, part.start, "aria2's file"),
                _ => (fills, base + part.start, "the bytes from the mirrors"),
            };
            source
                .read_exact_at(out, at)
                .with_context(|| format!("reading bytes {}..{} of {name}", part.start, part.end))?;
        }
        drop(released);
        Ok(())
    }

    /// Keeps `bytes` (those of `range`, fetched from the mirrors) so that
    /// [`have`](Self::have) and [`read`](Self::read) find them: in a file
    /// of their own beside aria2's (or the half of the disk's scratch after
    /// aria2's), which aria2 never sees or seeds.
    pub fn fill(&self, range: &Range<u64>, bytes: &[u8]) -> Result<()> {
        let released = self.lock_released();
        if *released {
            bail!("the image reached the scratch on the disk; the swarm is stopped");
        }
        let (fills, base) = self.store.fills();
        fills
            .write_all_at(bytes, base + range.start)
            .with_context(|| {
                format!(
                    "keeping bytes {}..{} in the scratch",
                    range.start, range.end
                )
            })?;
        drop(released);
        self.lock_filled().insert(range.clone());
        self.inner.changed.notify_all();
        Ok(())
    }

    /// Whether the scratch can hold, besides what aria2 still has to
    /// write, a copy of every byte fetched from the mirrors instead
    /// ([`fill`](Self::fill)): aria2 may later download the same pieces.
    /// The out-of-order path fills; without this room, frames decode in
    /// order, which never fills.
    /// On the disk's tail the room was set aside when the scratch was.
    pub fn room_for_fills(&self, memory: u64) -> Result<()> {
        if let Store::Disk(_) = self.store {
            return Ok(());
        }
        let completed = self.inner.lock().completed.min(self.length);
        ensure_room(&self.dir, self.length - completed + self.length, memory)
    }

    /// The bytes of the target the scratch takes, when it is on its tail:
    /// the image must not reach them while the swarm runs.
    pub fn disk_region(&self) -> Option<Range<u64>> {
        match &self.store {
            Store::Disk(tail) => Some(tail.region.clone()),
            Store::Files { .. } => None,
        }
    }

    /// The deploy needs the scratch on the disk back (`why`: the image
    /// reaches it): aria2 is stopped and the loop device unbound, once
    /// every read of the scratch in progress has finished; chunks still to
    /// come are fetched from the mirrors, and nothing is seeded.
    pub fn release(&self, why: &str) {
        let mut released = self
            .released
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *released {
            return;
        }
        *released = true;
        log::warn!(
            "torrent: {why}; the swarm stops and the rest of the image comes from the mirrors"
        );
        self.stop();
    }

    /// `release` when the image reaches byte `at` of the scratch.
    pub fn reached(&self, at: u64) {
        self.release(&format!(
            "the image reaches the scratch on {} at byte {at} (a larger disk keeps them apart)",
            self.describe_target()
        ));
    }

    fn lock_released(&self) -> std::sync::RwLockReadGuard<'_, bool> {
        self.released.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where the pieces are, for messages.
    fn describe_scratch(&self) -> String {
        match &self.store {
            Store::Files { .. } => format!("in {}", self.dir.display()),
            Store::Disk(tail) => format!(
                "on {} (bytes {}..{})",
                tail.target.display(),
                tail.region.start,
                tail.region.end
            ),
        }
    }

    fn describe_target(&self) -> String {
        match &self.store {
            Store::Disk(tail) => tail.target.display().to_string(),
            Store::Files { .. } => "the target".to_owned(),
        }
    }

    /// Whether waiting for the swarm is pointless: no progress for
    /// `imprint.torrent-timeout=`, or aria2 is gone.
    pub fn stalled(&self) -> bool {
        // Before the state: a read holds `released` and then takes it.
        let released = *self.lock_released();
        let state = self.inner.lock();
        released
            || state.gone.is_some()
            || self.inner.stop.load(Ordering::Relaxed)
            || state.progress_at.elapsed() > self.inner.timeout
    }

    /// Returns when aria2 reports something new or `timeout` passes.
    pub fn wait(&self, timeout: Duration) {
        let state = self.inner.lock();
        let _ = self
            .inner
            .changed
            .wait_timeout(state, timeout)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Each piece `range` touches, with the part of `range` inside it.
    fn segments(&self, range: &Range<u64>) -> impl Iterator<Item = (u64, Range<u64>)> + use<> {
        let piece = self.inner.piece;
        let range = range.clone();
        (range.start / piece..range.end.div_ceil(piece)).map(move |p| {
            (
                p,
                (p * piece).max(range.start)..((p + 1) * piece).min(range.end),
            )
        })
    }

    fn lock_filled(&self) -> MutexGuard<'_, Filled> {
        self.filled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seeds for `imprint.seed-time=` (or until aria2 exits), then stops
    /// aria2 and removes the scratch. Called once the deploy is good.
    pub fn seed(&self) {
        if !self.seed_time.is_zero() && !*self.lock_released() {
            log::info!(
                "torrent: seeding for {} (uploaded {} bytes so far)",
                crate::http::backoff::seconds(self.seed_time),
                self.inner.lock().uploaded
            );
            let until = Instant::now() + self.seed_time;
            while Instant::now() < until && self.try_exit().is_none() {
                std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
            }
        }
        let uploaded = self.inner.lock().uploaded;
        self.stop();
        log::info!("torrent: aria2c stopped after uploading {uploaded} bytes");
    }

    /// Marks the swarm as taken by a deploy that reads it out of order
    /// (`pipeline::scatter`): the in-order stream, dropped half-read (a
    /// format sniff read its start), no longer stops it.
    pub fn claim(&self) {
        self.claimed.store(true, Ordering::Relaxed);
    }

    pub fn claimed(&self) -> bool {
        self.claimed.load(Ordering::Relaxed)
    }

    /// Stops aria2 and removes the scratch; chunks still waited for come
    /// from the mirrors (or nobody wants them: the reader is gone).
    pub fn stop(&self) {
        self.inner.stop.store(true, Ordering::Relaxed);
        self.inner.changed.notify_all();
        if let Some(mut child) = self.lock_child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Store::Disk(tail) = &self.store {
            // aria2 has closed it: unbound now.
            if let Some(device) = tail
                .device
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                device.detach();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("dir", &self.dir)
            .field("pid", &self.pid())
            .finish()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Store {
    /// The file the mirrors' bytes are kept in, and where image byte 0
    /// would be in it.
    fn fills(&self) -> (&File, u64) {
        match self {
            Store::Files { filled } => (filled, 0),
            Store::Disk(tail) => {
                let half = (tail.region.end - tail.region.start) / 2;
                (&tail.disk, tail.region.start + half)
            }
        }
    }
}

/// Byte ranges filled in, merged: start -> end.
#[derive(Default)]
struct Filled(std::collections::BTreeMap<u64, u64>);

impl Filled {
    fn insert(&mut self, range: Range<u64>) {
        let (mut start, mut end) = (range.start, range.end);
        if start >= end {
            return;
        }
        // Merge with every range that overlaps or touches this one.
        let touching: Vec<(u64, u64)> = self
            .0
            .range(..=end)
            .filter(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.0.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.0.insert(start, end);
    }

    fn covers(&self, range: &Range<u64>) -> bool {
        range.is_empty()
            || self
                .0
                .range(..=range.start)
                .next_back()
                .is_some_and(|(_, &end)| end >= range.end)
    }
}

impl Seen {
    fn has(&self, piece: u64) -> bool {
        let byte = usize::try_from(piece / 8).unwrap_or(usize::MAX);
        self.bitfield
            .get(byte)
            .is_some_and(|b| b & (0x80 >> (piece % 8)) != 0)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Seen> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn poll_loop(&self) {
        let mut failures = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            std::thread::sleep(POLL);
            match self.rpc.status() {
                Ok(status) => {
                    failures = 0;
                    self.update(&status);
                }
                Err(error) => {
                    failures += 1;
                    // aria2 answers in milliseconds; a few misses in a row
                    // mean it is gone.
                    if failures >= 10 && !self.stop.load(Ordering::Relaxed) {
                        log::warn!(
                            "torrent: aria2c stopped answering ({error:#}); the rest comes from the mirrors"
                        );
                        self.lock().gone = Some(format!("{error:#}"));
                        self.changed.notify_all();
                        return;
                    }
                }
            }
        }
    }

    fn update(&self, status: &Value) {
        let mut seen = self.lock();
        if let Some(hex) = status["bitfield"].as_str() {
            seen.bitfield = parse_hex(hex);
        }
        let completed = number(status, "completedLength");
        if completed > seen.completed {
            seen.completed = completed;
            seen.progress_at = Instant::now();
        }
        seen.uploaded = number(status, "uploadLength");
        if seen.file.is_none() {
            seen.file = status["files"][0]["path"]
                .as_str()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from);
        }
        if status["status"] == "error" && seen.gone.is_none() {
            let why = status["errorMessage"].as_str().unwrap_or("an error");
            log::warn!("torrent: aria2c failed ({why}); the rest comes from the mirrors");
            seen.gone = Some(why.to_owned());
        }
        drop(seen);
        self.changed.notify_all();
    }
}

impl Rpc {
    fn status(&self) -> Result<Value> {
        let request = json!({
            "jsonrpc": "2.0",
            "id": "imprint",
            "method": "aria2.tellStatus",
            "params": [
                format!("token:{}", self.token),
                self.gid,
                ["status", "totalLength", "completedLength", "uploadLength", "pieceLength",
                 "bitfield", "files", "errorMessage"],
            ],
        });
        let mut response = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(request.to_string().as_bytes())
            .context("aria2c's RPC")?;
        let text = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_string()
            .context("aria2c's RPC answer")?;
        let answer: Value = serde_json::from_str(&text).context("aria2c's RPC answer")?;
        if let Some(error) = answer.get("error") {
            bail!("aria2c's RPC: {error}");
        }
        Ok(answer["result"].clone())
    }
}

/// aria2's options (see the module doc for why each).
fn aria2_args(dir: &Path, port: u16, token: &str, gid: &str) -> Vec<String> {
    [
        "--enable-rpc=true",
        "--rpc-listen-all=false",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--seed-ratio=0.0",
        // Seeding ends when imprint stops aria2, not before.
        "--seed-time=525600",
        "--file-allocation=none",
        // One name for the image's file, whatever the torrent calls it: on
        // the disk's tail it is a link to the loop device, which aria2
        // writes into instead of refusing an existing file.
        "--allow-overwrite=true",
        "--disk-cache=0",
        "--bt-save-metadata=false",
        "--auto-save-interval=0",
        "--check-certificate=true",
        "--summary-interval=0",
        "--console-log-level=warn",
        "--quiet=false",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .chain([
        format!("--dir={}", dir.display()),
        format!("--rpc-listen-port={port}"),
        format!("--rpc-secret={token}"),
        format!("--gid={gid}"),
        format!("--index-out=1={IMAGE_FILE}"),
        // A killed imprint (no Drop runs) must not leave aria2 seeding
        // for a year.
        format!("--stop-with-process={}", std::process::id()),
    ])
    .chain(
        Path::new(BAKED_CA)
            .is_file()
            .then(|| format!("--ca-certificate={BAKED_CA}")),
    )
    .collect()
}

/// Top-level keys of a torrent that name web seeds: BEP 19's `url-list`
/// and BEP 17's `httpseeds`.
const WEB_SEED_KEYS: [&[u8]; 2] = [b"url-list", b"httpseeds"];

/// `torrent` without its web seeds, and the keys left out. aria2 fetches
/// from web seeds on every machine at once (the fleet lab measured 2.1-2.3
/// origin copies with one); the mirrors are imprint's fallback instead.
/// Only the top-level dictionary changes, so the info hash (of `info`)
/// stays the same.
fn without_web_seeds(torrent: &[u8]) -> Result<(Vec<u8>, Vec<String>)> {
    if torrent.first() != Some(&b'd') {
        bail!("not a torrent: it does not start with a bencoded dictionary");
    }
    let mut kept = vec![b'd'];
    let mut dropped = Vec::new();
    let mut at = 1;
    loop {
        match torrent.get(at) {
            Some(b'e') => break,
            Some(_) => {}
            None => bail!("not a torrent: its dictionary has no end"),
        }
        let key_end = bencode_end(torrent, at)?;
        let value_end = bencode_end(torrent, key_end)?;
        let key = bencode_string(&torrent[at..key_end])
            .context("not a torrent: a dictionary key is not a string")?;
        if WEB_SEED_KEYS.contains(&key) {
            dropped.push(String::from_utf8_lossy(key).into_owned());
        } else {
            kept.extend_from_slice(&torrent[at..value_end]);
        }
        at = value_end;
    }
    if at + 1 != torrent.len() {
        bail!("not a torrent: bytes after its dictionary");
    }
    kept.push(b'e');
    Ok((kept, dropped))
}

/// The contents of the bencoded string that is all of `encoded`.
fn bencode_string(encoded: &[u8]) -> Option<&[u8]> {
    let colon = encoded.iter().position(|&b| b == b':')?;
    encoded[..colon]
        .iter()
        .all(u8::is_ascii_digit)
        .then(|| &encoded[colon + 1..])
}

/// Where the bencoded value starting at `at` ends (one past it).
fn bencode_end(data: &[u8], at: usize) -> Result<usize> {
    let truncated = || anyhow::anyhow!("not a torrent: truncated at byte {at}");
    match *data.get(at).ok_or_else(truncated)? {
        b'i' => {
            let end = data[at..]
                .iter()
                .position(|&b| b == b'e')
                .ok_or_else(truncated)?;
            Ok(at + end + 1)
        }
        b'l' | b'd' => {
            let mut next = at + 1;
            while *data.get(next).ok_or_else(truncated)? != b'e' {
                next = bencode_end(data, next)?;
            }
            Ok(next + 1)
        }
        b'0'..=b'9' => {
            let colon = data[at..]
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(truncated)?;
            let len: usize = std::str::from_utf8(&data[at..at + colon])
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    anyhow::anyhow!("not a torrent: a bad string length at byte {at}")
                })?;
            let end = (at + colon + 1)
                .checked_add(len)
                .filter(|&end| end <= data.len())
                .ok_or_else(truncated)?;
            Ok(end)
        }
        other => bail!("not a torrent: unexpected byte {other:#04x} at byte {at}"),
    }
}

fn find_aria2c() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("aria2c"))
        .chain([PathBuf::from(ARIA2C_DEFAULT)])
        .find(|path| path.is_file())
}

/// PID 1 keeps the pieces in the initramfs's RAM; the CLI under `$TMPDIR`.
fn scratch_dir() -> PathBuf {
    if std::process::id() == 1 {
        PathBuf::from("/run/imprint/swarm")
    } else {
        std::env::temp_dir().join(format!("imprint-swarm-{}", std::process::id()))
    }
}

/// Whether the scratch can take `length` more bytes of pieces.
fn ensure_room(dir: &Path, length: u64, memory: u64) -> Result<()> {
    if std::process::id() == 1 {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let available = mem_available(&meminfo).unwrap_or(0);
        let need = length + memory + RAM_MARGIN;
        if available < need {
            bail!(
                "{} of RAM available, {} needed for the pieces ({}), the decoders and a margin",
                crate::text::human_size(available),
                crate::text::human_size(need),
                crate::text::human_size(length)
            );
        }
        return Ok(());
    }
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let free = crate::sys::mount::free_bytes(parent)
        .with_context(|| format!("asking how much room {} has", parent.display()))?;
    if free < length {
        bail!(
            "{} has {} free, the pieces need {} (set TMPDIR to a larger filesystem)",
            parent.display(),
            crate::text::human_size(free),
            crate::text::human_size(length)
        );
    }
    Ok(())
}

fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let kib = line
            .strip_prefix("MemAvailable:")?
            .trim()
            .strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|k| k * 1024)
    })
}

/// aria2 sends numbers as strings.
fn number(value: &Value, key: &str) -> u64 {
    value[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| value[key].as_u64())
        .unwrap_or(0)
}

fn parse_hex(hex: &str) -> Vec<u8> {
    hex.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 16).ok())
                .unwrap_or(0)
        })
        .collect()
}

fn free_port() -> Result<u16> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port for aria2c")?;
    Ok(listener.local_addr()?.port())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut raw = vec![0u8; bytes];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .context("reading /dev/urandom")?;
    Ok(crate::text::hex(&raw))
}

fn rpc_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .max_redirects(0)
        // The loopback only: no proxy from the environment.
        .proxy(None)
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfields_are_read_high_bit_first() {
        let seen = Seen {
            bitfield: parse_hex("a0ff"),
            completed: 0,
            uploaded: 0,
            progress_at: Instant::now(),
            file: None,
            gone: None,
        };
        let have: Vec<u64> = (0..16).filter(|&p| seen.has(p)).collect();
        assert_eq!(have, [0, 2, 8, 9, 10, 11, 12, 13, 14, 15]);
        assert!(!seen.has(16), "past the bitfield");
    }

    #[test]
    fn filled_ranges_merge_and_cover() {
        let mut filled = Filled::default();
        filled.insert(10..20);
        filled.insert(30..40);
        assert!(filled.covers(&(12..20)));
        assert!(!filled.covers(&(15..25)), "a gap at 20..30");
        filled.insert(20..30);
        assert!(filled.covers(&(10..40)));
        assert_eq!(filled.0.len(), 1, "merged: {:?}", filled.0);
        filled.insert(5..12);
        filled.insert(45..50);
        assert!(filled.covers(&(5..40)));
        assert!(!filled.covers(&(5..41)));
        assert!(filled.covers(&(46..47)));
        assert!(filled.covers(&(0..0)));
    }

    #[test]
    fn the_scratch_on_the_disk_is_twice_the_image_before_the_last_mib() {
        const MIB: u64 = 1 << 20;
        const GIB: u64 = 1 << 30;
        // 1 GiB of pieces on a 100 GiB disk: 2 GiB ending a MiB early.
        assert_eq!(
            tail_region(100 * GIB, GIB),
            Some(100 * GIB - MIB - 2 * GIB..100 * GIB - MIB)
        );
        // Halves and ends are MiB-aligned: a disk of an odd size, pieces
        // of an odd length.
        let region = tail_region(100 * GIB + 12_345, 5 * MIB + 1).unwrap();
        assert_eq!(region.end, 100 * GIB - MIB);
        assert_eq!(region.end - region.start, 12 * MIB);
        // The image itself must fit before it (a raw one is as long as
        // its pieces).
        assert_eq!(tail_region(3 * GIB + MIB, GIB), Some(GIB..3 * GIB));
        assert_eq!(tail_region(3 * GIB + MIB - 1, GIB), None);
        assert_eq!(tail_region(MIB / 2, 1), None);
        assert_eq!(tail_region(10 * GIB, 0), None);
    }

    #[test]
    fn web_seeds_are_left_out_and_the_rest_kept_byte_for_byte() {
        let text = |s: &str| format!("{}:{s}", s.len()).into_bytes();
        let announce = [text("announce"), text("http://t:6969/announce")].concat();
        let info = [
            text("info"),
            b"d".to_vec(),
            text("length"),
            b"i42e".to_vec(),
            text("name"),
            text("image"),
            text("pieces"),
            text(""),
            b"e".to_vec(),
        ]
        .concat();
        let torrent = [
            b"d".to_vec(),
            announce.clone(),
            text("url-list"),
            b"l".to_vec(),
            text("http://origin/a.raw"),
            text("http://mirror/a.raw"),
            b"e".to_vec(),
            text("httpseeds"),
            text("http://seed/x"),
            info.clone(),
            b"e".to_vec(),
        ]
        .concat();
        let (kept, dropped) = without_web_seeds(&torrent).unwrap();
        assert_eq!(dropped, ["url-list", "httpseeds"]);
        assert_eq!(
            kept,
            [b"d".to_vec(), announce, info, b"e".to_vec()].concat()
        );
        // Nothing to leave out: the same bytes.
        let (same, none) = without_web_seeds(&kept).unwrap();
        assert_eq!(same, kept);
        assert!(none.is_empty());
        // Broken ones are named, never panicked on.
        for broken in [
            b"".as_slice(),
            b"l4:spame",
            b"d8:announce",
            b"d8:announce99:x",
            b"d3:keyi1e",
            b"di1ei2ee",
            b"d3:keyi1eex",
            b"d3:keyxe",
        ] {
            let error = without_web_seeds(broken).unwrap_err().to_string();
            assert!(error.starts_with("not a torrent"), "{broken:?}: {error}");
        }
    }

    #[test]
    fn memavailable_is_read_in_bytes() {
        let meminfo = "MemTotal:  8000000 kB\nMemFree: 100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(mem_available(meminfo), Some(2 << 20));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        let value = json!({"a": "123", "b": 7, "c": "x"});
        assert_eq!(number(&value, "a"), 123);
        assert_eq!(number(&value, "b"), 7);
        assert_eq!(number(&value, "c"), 0);
    }
}
