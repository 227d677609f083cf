//! An HTTP(S) image fetched as chunk-aligned ranges, several at once, from
//! an ordered list of mirrors, handed on in order as one stream.
//!
//! **Why ranges.** A caching proxy (nginx's `slice` module, a CDN) turns
//! one client request into sequential fetches of fixed slices from the
//! origin, so a single streaming GET through a cold cache runs at one
//! origin connection's speed; ranges aligned to the slice size, several in
//! flight, fill the cache (and the link) in parallel. S3-compatible stores
//! serve ranges of presigned URLs as they are: SigV4 query signing covers
//! only the `host` header, so a `Range` header does not break the
//! signature, and the URL is used verbatim.
//!
//! **Start.** The first mirror is asked for chunk 0,
//! `Range: bytes=0-<chunk-1>`; its `206` gives the total length (the
//! `Content-Range`), the validators, and chunk 0 itself, which is kept. A
//! `200` means the server ignores Range: the image is then read with one
//! streaming GET ([`super::http`]), as when `imprint.parallel=1`. Every
//! other mirror is asked for `bytes=0-0`: one that answers with another
//! length, ignores Range or fails is left out with a warning that says why
//! (both lengths, for a length). A mirror whose ETag differs from the
//! first's is kept and always asked with `If-Range` of its own validator;
//! without a chunk manifest a warning says the bytes of differently tagged
//! files may be mixed (`imprint.checksum=` or a manifest catches a
//! difference; mirrors of one image commonly tag it differently).
//!
//! **Ranges.** Workers take chunks in order, `bytes=k*chunk-(k+1)*chunk-1`,
//! each from the first healthy mirror, one request per range on the
//! agent's keep-alive connections. A range fails over to the next mirror on
//! a connection error, a stall (`imprint.stall-timeout=`), a retryable
//! status ([`crate::http::classify`]), a short body, a `Content-Range`
//! other than the one asked for, a changed validator, or bytes that do not
//! match the chunk manifest. A failed mirror rests for a backoff
//! ([`crate::http::backoff`], doubling per failure in a row, reset by a
//! good range) and is then tried first again; a mirror that answers with a
//! status another try would only repeat (404, 403), ignores Range, or whose
//! file changed is left out for the rest of the deploy. One range may be
//! tried `(retries + 1) × mirrors` times within `imprint.retry-timeout=`;
//! then the deploy fails, as it does when no mirror is left.
//!
//! **Memory.** At most `window` chunks exist at once: in flight, waiting
//! to be handed on, and the one being handed on. `window` is
//! `imprint.parallel=`, lowered (with a log line) to what half of
//! `imprint.decode-memory=` holds in chunks.
//!
//! **What is reported.** Each mirror's served bytes go to
//! [`SourceStats::mirrors`] for the result line (`mirrors=HOST:BYTES,…`);
//! a switch to another mirror and the totals at the end are logged. A
//! mirror is only ever named by host or with its query as `?…`
//! ([`super::mirrors::display`]): presigned URLs carry secrets there.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::manifest::Manifest;
use super::mirrors::{display, host};
use super::retry::{RestartRequired, SourceStats};
use super::swarm::{Swarm, SwarmPlan};
use super::{Source, SourceOptions};
use crate::http::agent::{Exchange, agent};
use crate::http::backoff::{BASE_DELAY, Backoff, MAX_DELAY, RetryPolicy};
use crate::http::classify::{self, Failure};
use crate::http::retry::{Clock, Failed, Retrier, SystemClock};
use crate::pipeline::ordered::DEFAULT_MEMORY;

/// The largest manifest read: 64-byte lines for a 16 TiB image in 16 MiB
/// chunks fit many times over.
const MAX_MANIFEST: u64 = 64 << 20;

/// Whether `url` is read by this module: it is the first of several
/// mirrors, or the image with more than one range in flight.
pub(super) fn applies(url: &str, options: &SourceOptions) -> bool {
    let ranges = &options.ranges;
    ranges.mirrors.first().is_some_and(|first| first == url)
        && (ranges.mirrors.len() > 1 || ranges.parallel > 1 || ranges.torrent.is_some())
}

/// Opens the image at `options.ranges.mirrors`.
pub(super) fn open(options: &SourceOptions) -> Result<Source> {
    let ranges = &options.ranges;
    let manifest = match &ranges.manifest {
        Some(url) => {
            let text = super::fetch_text(url, MAX_MANIFEST, "a chunk manifest", options)
                .with_context(|| format!("fetching the chunk manifest {}", display(url)))?;
            Some(Manifest::parse(&text, &display(url))?)
        }
        None => None,
    };
    let chunk = match &manifest {
        Some(manifest) if manifest.chunk != ranges.chunk => {
            log::info!(
                "ranges of {} bytes, the chunk manifest's size (imprint.chunk= is {})",
                manifest.chunk,
                ranges.chunk
            );
            manifest.chunk
        }
        _ => ranges.chunk,
    };
    let budget = ranges.memory.unwrap_or(DEFAULT_MEMORY) / 2;
    let fits = usize::try_from(budget / chunk).unwrap_or(usize::MAX).max(1);
    let window = ranges.parallel.max(1).min(fits);
    if window < ranges.parallel {
        log::info!(
            "{window} ranges in flight, not {}: {} chunks of {} MiB fit half of imprint.decode-memory=",
            ranges.parallel,
            fits,
            chunk >> 20
        );
    }
    let agent = agent(options, Exchange::Download)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock::new());
    let mut retrier = Retrier::new(RetryPolicy::transfer(options), clock);
    let stats = Arc::new(SourceStats::default());
    // With a swarm, chunk 0 too should come from the swarm: the probe asks
    // for one byte, which is all a thousand machines then take from the
    // origin at once.
    let probe_len = if ranges.torrent.is_some() { 1 } else { chunk };
    let start = retrier
        .run(
            || probe(&agent, &ranges.mirrors, probe_len, options),
            |failed, retry| {
                failed.log_retry(retry);
                stats.retries.fetch_add(1, Ordering::Relaxed);
            },
        )
        .map_err(|exhausted| exhausted.error.into_error(exhausted.give_up))?;
    let Start {
        length,
        first,
        chunk0,
        mirrors,
    } = match start {
        Probed::Ranges(start) => start,
        Probed::IgnoresRange(url) => {
            log::info!(
                "GET {}: the server ignores Range requests; reading the image with one GET",
                display(&url)
            );
            return super::http::open(&url, options);
        }
    };
    if let Some(manifest) = &manifest {
        if manifest.length != length {
            bail!(
                "the chunk manifest is for {} bytes, but {} serves {length}; \
                 is it the manifest of this image?",
                manifest.length,
                display(&ranges.mirrors[first])
            );
        }
        if !manifest.matches(0, &chunk0) {
            bail!(
                "GET {} (bytes 0-{}): the bytes do not match the chunk manifest",
                display(&ranges.mirrors[first]),
                chunk0.len().saturating_sub(1)
            );
        }
    }
    if manifest.is_none() {
        let tags: Vec<&Mirror> = mirrors.iter().filter(|m| m.etag.is_some()).collect();
        if let Some(other) = tags.iter().find(|m| m.etag != tags[0].etag) {
            log::warn!(
                "{} tags the image {} and {} tags it {}: bytes of both are mixed; \
                 imprint.checksum= or a chunk manifest (imprint.manifest=) checks them",
                tags[0].shown,
                tags[0].etag.as_deref().unwrap_or_default(),
                other.shown,
                other.etag.as_deref().unwrap_or_default()
            );
        }
    }
    let count = length.div_ceil(chunk);
    let _ = stats.mirrors.set(
        mirrors
            .iter()
            .map(|m| (m.host.clone(), std::sync::atomic::AtomicU64::new(0)))
            .collect(),
    );
    if let Some(served) = stats.mirrors.get().and_then(|served| served.get(first)) {
        served.1.fetch_add(chunk0.len() as u64, Ordering::Relaxed);
    }
    log::info!(
        "{length} bytes in {count} ranges of {chunk} from {} mirror(s), {window} in flight{}",
        mirrors.iter().filter(|m| m.dropped.is_none()).count(),
        if manifest.is_some() {
            ", each checked against the chunk manifest"
        } else {
            ""
        }
    );
    let health = mirrors
        .iter()
        .map(|m| Health {
            consecutive: 0,
            resting_until: None,
            dropped: m.dropped.clone(),
        })
        .collect();
    if let Some(torrent) = &ranges.torrent {
        let _ = stats.swarm_served.set(std::sync::atomic::AtomicU64::new(0));
        Swarm::start(
            &SwarmPlan {
                torrent,
                length,
                options,
            },
            &stats,
        );
    }

    let mut ready = BTreeMap::new();
    // The probe's byte is not chunk 0 when a torrent was asked for.
    let next_fetch = if count == 0 || ranges.torrent.is_some() {
        0
    } else {
        ready.insert(0, chunk0);
        1
    };
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            next_fetch,
            consumed: 0,
            ready,
            health,
            failed: None,
            closed: false,
            last_mirror: Some(first),
            in_flight: 0,
            free: Vec::new(),
        }),
        changed: Condvar::new(),
        mirrors,
        agent,
        length,
        chunk,
        count,
        window: window as u64,
        manifest,
        options: options.clone(),
        stats: Arc::clone(&stats),
        swarm_missed: std::sync::atomic::AtomicBool::new(false),
    });
    let workers = window.min(usize::try_from(count - next_fetch).unwrap_or(usize::MAX));
    // With a swarm, nothing is asked for until the image is read: a deploy
    // that decodes frames out of order (`pipeline::scatter`) takes the
    // swarm and never reads this stream. The swarm may also still wait
    // for the target to keep its pieces.
    let lazy = stats.swarm.get().is_some()
        || stats
            .swarm_pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
    if !lazy {
        spawn_workers(&shared, workers)?;
    }
    Ok(Source {
        reader: Box::new(RangedReader {
            shared,
            workers: if lazy { workers } else { 0 },
            current: Vec::new(),
            offset: 0,
            index: 0,
            reported: false,
        }),
        length: Some(length),
        url: ranges.mirrors[0].clone(),
        stats,
        device: None,
        name: None,
        digest: None,
        // Random reads (a qcow2's tables) go to the first mirror.
        ranges: Some(super::RangeAccess {
            url: ranges.mirrors[0].clone(),
            auth: None,
            options: options.clone(),
        }),
    })
}

fn spawn_workers(shared: &Arc<Shared>, workers: usize) -> Result<()> {
    for n in 0..workers {
        let shared = Arc::clone(shared);
        std::thread::Builder::new()
            .name(format!("range-{n}"))
            .spawn(move || shared.work())
            .context("starting a range worker")?;
    }
    Ok(())
}

/// A mirror as probed.
#[derive(Debug, Clone)]
struct Mirror {
    /// Verbatim, for requests only.
    url: String,
    /// For messages ([`display`]).
    shown: String,
    host: String,
    etag: Option<String>,
    /// Its own validator for `If-Range`: a strong ETag, else Last-Modified.
    if_range: Option<String>,
    /// Why it is not used, when the probe left it out.
    dropped: Option<String>,
}

struct Start {
    length: u64,
    /// The mirror that answered first.
    first: usize,
    chunk0: Vec<u8>,
    mirrors: Vec<Mirror>,
}

enum Probed {
    Ranges(Start),
    /// The first mirror that answered ignores Range (its URL).
    IgnoresRange(String),
}

/// One range request: the same request and answer as a single GET's
/// ([`super::http::send`]), with `Range` and `If-Range`.
fn send_range(
    agent: &ureq::Agent,
    url: &str,
    first: u64,
    last: u64,
    if_range: Option<&str>,
) -> Result<(super::http::Head, super::http::Body), ureq::Error> {
    let range = format!("bytes={first}-{last}");
    super::http::send(agent, url, Some((&range, if_range)), None)
}

/// Reads past the range's bytes: a body whose Content-Length promised more
/// than the range (a lying server, a broken proxy) fails here, as a short
/// body does on a single GET, rather than passing as complete. The error is
/// `InvalidData`, which is not retried: the same server would lie again.
fn ends_cleanly(reader: &mut impl Read) -> io::Result<usize> {
    let mut extra = [0u8; 1];
    let problem = match reader.read(&mut extra) {
        Ok(0) => return Ok(0),
        Ok(_) => "the body is longer than its Content-Range".to_owned(),
        Err(error) => format!("{error} (its Content-Length promised more than its Content-Range)"),
    };
    Err(io::Error::new(io::ErrorKind::InvalidData, problem))
}

fn strong(etag: Option<&String>) -> Option<&String> {
    etag.filter(|etag| !etag.starts_with("W/"))
}

/// Asks every mirror what it serves (see the module doc). `Err` when no
/// mirror answered usably: the last mirror's failure, for the retry loop.
fn probe(
    agent: &ureq::Agent,
    urls: &[String],
    chunk: u64,
    options: &SourceOptions,
) -> Result<Probed, Failed> {
    let mut mirrors: Vec<Mirror> = urls
        .iter()
        .map(|url| Mirror {
            url: url.clone(),
            shown: display(url),
            host: host(url),
            etag: None,
            if_range: None,
            dropped: None,
        })
        .collect();
    let mut start: Option<(usize, u64, Vec<u8>)> = None;
    let mut last_failure = None;
    for (n, mirror) in mirrors.iter_mut().enumerate() {
        let last = match &start {
            None => chunk - 1,
            Some(_) => 0,
        };
        // Named as a single GET's failures are: the probe is the image's
        // first request.
        let request = format!("GET {}", mirror.shown);
        let answer = match send_range(agent, &mirror.url, 0, last, None) {
            Ok(answer) => answer,
            Err(error) => {
                let failed = Failed::request(&request, &error, options);
                log::warn!("{}; leaving this mirror out", failed.message);
                mirror.dropped = Some(failed.message.clone());
                last_failure = Some(failed);
                continue;
            }
        };
        let (head, body) = answer;
        mirror.etag = head.etag.clone();
        mirror.if_range = strong(head.etag.as_ref())
            .or(head.last_modified.as_ref())
            .cloned();
        let total = head
            .content_range
            .as_deref()
            .and_then(super::http::parse_content_range);
        let failure = match (head.status, total) {
            (206, Some((0, got_last, Some(total))))
                if start.is_some() || got_last + 1 == chunk.min(total) =>
            {
                match &start {
                    None => {
                        let want = got_last + 1;
                        let mut bytes = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
                        let mut reader = body;
                        let read = (&mut reader)
                            .take(want)
                            .read_to_end(&mut bytes)
                            .and_then(|_| ends_cleanly(&mut reader));
                        match read {
                            Ok(_) if bytes.len() as u64 == want => {
                                start = Some((n, total, bytes));
                                continue;
                            }
                            Ok(_) => Failed {
                                failure: Failure::BrokenBody,
                                message: format!(
                                    "{request}: the body ended at byte {} of {want}",
                                    bytes.len()
                                ),
                                retry_after: None,
                            },
                            Err(error) => Failed {
                                failure: classify::classify_io(&error),
                                message: format!(
                                    "reading {} at byte {}: {error}",
                                    mirror.shown,
                                    bytes.len()
                                ),
                                retry_after: None,
                            },
                        }
                    }
                    Some((first, length, _)) if total != *length => {
                        let message = format!(
                            "{} serves {total} bytes, but {} serves {length}; leaving it out",
                            mirror.shown,
                            display(&urls[*first])
                        );
                        log::warn!("{message}");
                        mirror.dropped = Some(message);
                        continue;
                    }
                    Some(_) => continue,
                }
            }
            (200, _) if start.is_none() => return Ok(Probed::IgnoresRange(mirror.url.clone())),
            (200, _) => {
                let message = format!("{request}: the mirror ignores Range requests (HTTP 200)");
                log::warn!("{message}; leaving it out");
                mirror.dropped = Some(message);
                continue;
            }
            (416, _) if start.is_none() => {
                let empty = head
                    .content_range
                    .as_deref()
                    .and_then(|v| v.trim().strip_prefix("bytes */"))
                    .is_some_and(|total| total.trim() == "0");
                if empty {
                    start = Some((n, 0, Vec::new()));
                    continue;
                }
                Failed {
                    failure: Failure::Fatal,
                    message: format!("{request}: HTTP 416 {}", head.reason),
                    retry_after: None,
                }
            }
            (206, _) => Failed {
                failure: Failure::Fatal,
                message: format!(
                    "{request}: the server answered with Content-Range {:?}",
                    head.content_range.as_deref().unwrap_or("")
                ),
                retry_after: None,
            },
            (status, _) => Failed {
                failure: Failure::Status(status),
                message: format!("{request}: HTTP {status} {}", head.reason),
                retry_after: None,
            },
        };
        if urls.len() > 1 {
            log::warn!("{}; leaving this mirror out", failure.message);
        }
        mirror.dropped = Some(failure.message.clone());
        last_failure = Some(failure);
    }
    match start {
        Some((first, length, chunk0)) => Ok(Probed::Ranges(Start {
            length,
            first,
            chunk0,
            mirrors,
        })),
        None => Err(last_failure.unwrap_or(Failed {
            failure: Failure::Fatal,
            message: "no mirror given".into(),
            retry_after: None,
        })),
    }
}

/// A mirror's state while ranges are fetched.
#[derive(Debug, Clone)]
struct Health {
    /// Failures in a row; a good range resets it.
    consecutive: u32,
    /// Not asked before this.
    resting_until: Option<Instant>,
    /// Left out for the rest of the deploy, and why.
    dropped: Option<String>,
}

struct State {
    /// The next chunk a worker takes.
    next_fetch: u64,
    /// The chunk the reader hands on (or waits for).
    consumed: u64,
    /// Fetched chunks not yet handed on.
    ready: BTreeMap<u64, Vec<u8>>,
    health: Vec<Health>,
    /// Why the transfer failed for good (and whether a restart from byte 0
    /// could help).
    failed: Option<(String, bool)>,
    /// The reader is gone: workers stop.
    closed: bool,
    /// The mirror of the latest good range, to log switches.
    last_mirror: Option<usize>,
    /// Chunks being fetched.
    in_flight: u64,
    /// Buffers of chunks already handed on, for the next ranges: the
    /// window's memory is allocated once, not once per chunk (an allocator
    /// may keep freed 16 MiB blocks, and RSS would grow past the window).
    free: Vec<Vec<u8>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    mirrors: Vec<Mirror>,
    agent: ureq::Agent,
    length: u64,
    chunk: u64,
    count: u64,
    window: u64,
    manifest: Option<Manifest>,
    options: SourceOptions,
    /// Its swarm (`stats.swarm`) is asked first for every chunk, when a
    /// torrent was asked for and aria2 runs.
    stats: Arc<SourceStats>,
    /// The swarm missed a chunk since it last delivered one (logged once).
    swarm_missed: std::sync::atomic::AtomicBool,
}

/// Why one range failed.
struct RangeFailure {
    failure: Failure,
    message: String,
    /// Another request to this mirror would only repeat it.
    drop_mirror: bool,
    /// The mirror's file changed.
    changed: bool,
    /// Bytes received and thrown away.
    wasted: u64,
}

impl RangeFailure {
    fn retry(failure: Failure, message: String) -> Self {
        RangeFailure {
            failure,
            message,
            drop_mirror: false,
            changed: false,
            wasted: 0,
        }
    }

    fn drop(message: String) -> Self {
        RangeFailure {
            failure: Failure::Fatal,
            message,
            drop_mirror: true,
            changed: false,
            wasted: 0,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One worker: takes the next chunk while the window allows.
    fn work(&self) {
        loop {
            let buffer;
            let index = {
                let mut state = self.lock();
                loop {
                    if state.closed || state.failed.is_some() || state.next_fetch >= self.count {
                        return;
                    }
                    if state.next_fetch < state.consumed + self.window {
                        break;
                    }
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                state.next_fetch += 1;
                state.in_flight += 1;
                buffer = state.free.pop().unwrap_or_default();
                debug_assert!(state.in_flight + (state.ready.len() as u64) <= self.window);
                state.next_fetch - 1
            };
            let result = self.fetch_chunk(index, buffer);
            let mut state = self.lock();
            state.in_flight -= 1;
            match result {
                Ok(bytes) => {
                    state.ready.insert(index, bytes);
                }
                Err(failed) => {
                    if state.failed.is_none() {
                        state.failed = Some(failed);
                    }
                }
            }
            self.changed.notify_all();
        }
    }

    fn bounds(&self, index: u64) -> (u64, u64) {
        let first = index * self.chunk;
        (first, (first + self.chunk).min(self.length) - 1)
    }

    /// The first mirror not resting and not left out, waiting for a
    /// resting one when that is all there is.
    fn pick_mirror(&self) -> Result<usize, (String, bool)> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return Err(("the reader is gone".into(), false));
            }
            let now = Instant::now();
            if let Some(n) = state
                .health
                .iter()
                .position(|h| h.dropped.is_none() && h.resting_until.is_none_or(|t| t <= now))
            {
                return Ok(n);
            }
            let wake = state
                .health
                .iter()
                .filter(|h| h.dropped.is_none())
                .filter_map(|h| h.resting_until)
                .min();
            let Some(wake) = wake else {
                let reasons: Vec<&str> = state
                    .health
                    .iter()
                    .filter_map(|h| h.dropped.as_deref())
                    .collect();
                let changed = reasons.iter().all(|r| r.contains("changed on the mirror"));
                return Err((
                    format!("no mirror is left: {}", reasons.join("; ")),
                    changed,
                ));
            };
            state = self
                .changed
                .wait_timeout(state, wake.saturating_duration_since(now))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn fetch_chunk(&self, index: u64, mut buffer: Vec<u8>) -> Result<Vec<u8>, (String, bool)> {
        let (first, last) = self.bounds(index);
        // A recycled buffer: what it holds belongs to another chunk.
        buffer.clear();
        if let Some(bytes) = self.swarm_chunk(index, first, last, &mut buffer) {
            return Ok(bytes);
        }
        let began = Instant::now();
        let most =
            (self.options.retries.saturating_add(1) as usize).saturating_mul(self.mirrors.len());
        let mut attempts = 0usize;
        loop {
            let n = self.pick_mirror()?;
            let mirror = &self.mirrors[n];
            match self.get_range(n, index, first, last, &mut buffer) {
                Ok(()) => {
                    let mut state = self.lock();
                    state.health[n].consecutive = 0;
                    state.health[n].resting_until = None;
                    if state.last_mirror != Some(n) {
                        if let Some(previous) = state.last_mirror {
                            self.stats.on_switch.notify(
                                &self.mirrors[previous].host,
                                &mirror.host,
                                &self.stats.mirrors_served(),
                            );
                        }
                        log::info!(
                            "bytes {first}-{last} from {}{}",
                            mirror.shown,
                            state
                                .last_mirror
                                .map(|m| format!(" (was {})", self.mirrors[m].shown))
                                .unwrap_or_default()
                        );
                        state.last_mirror = Some(n);
                    }
                    drop(state);
                    return Ok(buffer);
                }
                Err(failure) => {
                    attempts += 1;
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .refetched_bytes
                        .fetch_add(failure.wasted, Ordering::Relaxed);
                    let mut state = self.lock();
                    let health = &mut state.health[n];
                    if failure.drop_mirror || !classify::is_retryable(failure.failure) {
                        log::warn!("{}; leaving this mirror out", failure.message);
                        health.dropped = Some(failure.message.clone());
                    } else {
                        health.consecutive = health.consecutive.saturating_add(1);
                        let rest = Backoff {
                            first: BASE_DELAY,
                            cap: MAX_DELAY,
                        }
                        .delay(health.consecutive, SystemClock::new().random());
                        health.resting_until = Some(Instant::now() + rest);
                        log::warn!(
                            "{}; this mirror rests {}",
                            failure.message,
                            crate::http::backoff::seconds(rest)
                        );
                    }
                    self.changed.notify_all();
                    drop(state);
                    let out_of_time = began.elapsed() > self.options.retry_timeout;
                    if attempts >= most || out_of_time {
                        return Err((
                            format!(
                                "{} (bytes {first}-{last} failed {attempts} times{})",
                                failure.message,
                                if out_of_time {
                                    ", past imprint.retry-timeout="
                                } else {
                                    ""
                                }
                            ),
                            failure.changed,
                        ));
                    }
                }
            }
        }
    }

    /// Chunk `index` from the swarm, when it delivers it in time and it
    /// matches the chunk manifest; else `None` and the mirrors serve it.
    fn swarm_chunk(
        &self,
        index: u64,
        first: u64,
        last: u64,
        buffer: &mut Vec<u8>,
    ) -> Option<Vec<u8>> {
        let swarm = self.stats.swarm.get()?;
        if !swarm.wait_range(first, last, buffer, &|| self.lock().closed) {
            if !self.swarm_missed.swap(true, Ordering::Relaxed) {
                log::info!(
                    "torrent: no progress from the swarm for {}; bytes {first}-{last} and the \
                     chunks after them come from the mirrors until it delivers again",
                    crate::http::backoff::seconds(swarm.timeout())
                );
            }
            buffer.clear();
            return None;
        }
        if let Some(manifest) = &self.manifest {
            if !manifest.matches(index, buffer) {
                log::warn!(
                    "torrent: bytes {first}-{last} from the swarm do not match the chunk manifest; \
                     taking them from the mirrors"
                );
                buffer.clear();
                return None;
            }
        }
        if self.swarm_missed.swap(false, Ordering::Relaxed) {
            log::info!("torrent: the swarm delivers again (bytes {first}-{last})");
        }
        if let Some(served) = self.stats.swarm_served.get() {
            served.fetch_add(buffer.len() as u64, Ordering::Relaxed);
        }
        Some(std::mem::take(buffer))
    }

    /// One range from mirror `n`, checked. `bytes` may already hold the
    /// start of the range (an earlier attempt broke off): only the rest is
    /// asked for, so a mirror dying near the end of a range costs the next
    /// one only what is missing. Bytes that cannot be kept (the file
    /// changed, the manifest disagrees) are dropped and counted as wasted.
    fn get_range(
        &self,
        n: usize,
        index: u64,
        first: u64,
        last: u64,
        bytes: &mut Vec<u8>,
    ) -> Result<(), RangeFailure> {
        let mirror = &self.mirrors[n];
        let have = bytes.len() as u64;
        let start = first + have;
        let request = format!("GET {} (bytes {start}-{last})", mirror.shown);
        let discard = |bytes: &mut Vec<u8>, failure: RangeFailure| {
            let wasted = bytes.len() as u64;
            bytes.clear();
            RangeFailure { wasted, ..failure }
        };
        let (head, body) = send_range(
            &self.agent,
            &mirror.url,
            start,
            last,
            mirror.if_range.as_deref(),
        )
        .map_err(|error| {
            let failed = Failed::request(&request, &error, &self.options);
            RangeFailure::retry(failed.failure, failed.message)
        })?;
        let changed = |what: String| RangeFailure {
            changed: true,
            ..RangeFailure::drop(format!(
                "{request}: the file changed on the mirror ({what})"
            ))
        };
        match head.status {
            206 => {}
            200 if mirror.if_range.is_some() => {
                return Err(discard(
                    bytes,
                    changed("If-Range answered with the whole file".into()),
                ));
            }
            200 => {
                return Err(RangeFailure::drop(format!(
                    "{request}: the mirror ignored the Range request (HTTP 200)"
                )));
            }
            status if classify::is_retryable_status(status) => {
                return Err(RangeFailure::retry(
                    Failure::Status(status),
                    format!("{request}: HTTP {status} {}", head.reason),
                ));
            }
            status => {
                return Err(RangeFailure::drop(format!(
                    "{request}: HTTP {status} {}",
                    head.reason
                )));
            }
        }
        if let (Some(before), Some(after)) = (&mirror.etag, &head.etag) {
            if before != after {
                return Err(discard(bytes, changed(format!("ETag {before} -> {after}"))));
            }
        }
        let range = head
            .content_range
            .as_deref()
            .and_then(super::http::parse_content_range);
        if range != Some((start, last, Some(self.length))) {
            return Err(RangeFailure::drop(format!(
                "{request}: the mirror answered with Content-Range {:?}",
                head.content_range.as_deref().unwrap_or("")
            )));
        }
        let want = last - start + 1;
        bytes.reserve_exact(usize::try_from(want).unwrap_or(0));
        let mut reader = body;
        let read = (&mut reader)
            .take(want)
            .read_to_end(bytes)
            .and_then(|_| ends_cleanly(&mut reader));
        let got = bytes.len() as u64 - have;
        // Served means kept: bytes thrown away below are counted as wasted.
        let count_served = || {
            if let Some(served) = self.stats.mirrors.get().and_then(|s| s.get(n)) {
                served.1.fetch_add(got, Ordering::Relaxed);
            }
        };
        if read.as_ref().map_or(true, |_| got != want) {
            count_served();
        }
        match read {
            Ok(_) if got == want => {}
            Ok(_) => {
                return Err(RangeFailure::retry(
                    Failure::BrokenBody,
                    format!("{request}: the body ended at byte {got} of {want}"),
                ));
            }
            Err(error) => {
                let stalled = super::http::is_stall(&error);
                let failure = if stalled {
                    Failure::Timeout
                } else {
                    classify::classify_io(&error)
                };
                let message = if stalled {
                    format!(
                        "{request}: no data for {} (stall-timeout)",
                        crate::http::backoff::seconds(self.options.stall_timeout)
                    )
                } else {
                    format!("reading {} at byte {}: {error}", mirror.shown, start + got)
                };
                return Err(RangeFailure::retry(failure, message));
            }
        }
        if let Some(manifest) = &self.manifest {
            if !manifest.matches(index, bytes) {
                // A retry of the same mirror may well serve the same bad
                // bytes (a corrupt cache entry): the next mirror is asked,
                // for the whole range again.
                return Err(discard(
                    bytes,
                    RangeFailure::retry(
                        Failure::BrokenBody,
                        format!("{request}: the bytes do not match the chunk manifest"),
                    ),
                ));
            }
        }
        count_served();
        Ok(())
    }
}

/// The image in order, from the chunks the workers fetch.
struct RangedReader {
    shared: Arc<Shared>,
    /// Workers still to start at the first read (a swarm's stream).
    workers: usize,
    current: Vec<u8>,
    offset: usize,
    /// The chunk `current` is.
    index: u64,
    /// The totals were logged.
    reported: bool,
}

impl RangedReader {
    fn report(&mut self) {
        if self.reported {
            return;
        }
        self.reported = true;
        let served = self.shared.stats.mirrors_served();
        log::info!(
            "served by mirror: {}",
            served
                .iter()
                .map(|(host, bytes)| format!("{host} {bytes} bytes"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

impl Read for RangedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.workers > 0 {
            spawn_workers(&self.shared, std::mem::take(&mut self.workers))
                .map_err(|e| io::Error::other(format!("{e:#}")))?;
        }
        while self.offset >= self.current.len() {
            let shared = Arc::clone(&self.shared);
            let mut state = shared.lock();
            if self.offset > 0 || !self.current.is_empty() {
                // Done with chunk `index`: room for one more in flight.
                self.index += 1;
                state.consumed = self.index;
                state.free.push(std::mem::take(&mut self.current));
                self.offset = 0;
                shared.changed.notify_all();
            }
            if self.index >= shared.count {
                drop(state);
                self.report();
                return Ok(0);
            }
            loop {
                if let Some(bytes) = state.ready.remove(&self.index) {
                    self.current = bytes;
                    break;
                }
                if let Some((message, restart)) = &state.failed {
                    return Err(if *restart {
                        io::Error::other(RestartRequired {
                            reason: message.clone(),
                        })
                    } else {
                        io::Error::other(message.clone())
                    });
                }
                state = shared
                    .changed
                    .wait_timeout(state, Duration::from_secs(1))
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl Drop for RangedReader {
    fn drop(&mut self) {
        // Dropped before the end, having been read: the deploy failed or
        // starts again, and a swarm of its own would not be seeded. Never
        // read, the swarm went to a deploy that decodes out of order.
        let read = self.index > 0 || !self.current.is_empty();
        if read && self.index < self.shared.count {
            if let Some(swarm) = self.shared.stats.swarm.get().filter(|s| !s.claimed()) {
                swarm.stop();
            }
        }
        let mut state = self.shared.lock();
        state.closed = true;
        state.ready.clear();
        self.shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::RangeOptions;
    use imprint_qemu::http::{Behavior, FixtureServer};

    const CHUNK: u64 = 64 << 10;
    const CHUNK_BYTES: usize = 64 << 10;

    fn data(len: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    fn options(mirrors: &[String], parallel: usize) -> SourceOptions {
        SourceOptions {
            retries: 3,
            // Generous: a loaded machine must not turn a slow answer into a
            // failed probe. The stall case sets its own.
            stall_timeout: Duration::from_secs(5),
            ranges: RangeOptions {
                mirrors: mirrors.to_vec(),
                parallel,
                chunk: CHUNK,
                manifest: None,
                memory: None,
                ..RangeOptions::default()
            },
            ..SourceOptions::default()
        }
    }

    fn read_all(options: &SourceOptions) -> (Vec<u8>, Source) {
        let mut source = super::super::open(&options.ranges.mirrors[0], options).unwrap();
        let mut out = Vec::new();
        source.reader.read_to_end(&mut out).unwrap();
        (out, source)
    }

    fn served(source: &Source) -> Vec<u64> {
        source
            .stats
            .mirrors_served()
            .into_iter()
            .map(|(_, bytes)| bytes)
            .collect()
    }

    #[test]
    fn chunks_arrive_in_order_whatever_order_the_ranges_finish_in() {
        let server = FixtureServer::start().unwrap();
        let image = data(40 * CHUNK_BYTES + 1234);
        server.add_file("x.img", image.clone());
        // The probe, then every range delayed by a different pseudo-random
        // pause after its first bytes, so they finish out of order.
        let pauses =
            (0..41u64).map(|k| Behavior::StallAfter(1000, Duration::from_millis(k * 37 % 60)));
        server.push_behaviors("x.img", [Behavior::Normal].into_iter().chain(pauses));
        let opts = options(&[server.url("x.img")], 8);
        let (out, source) = read_all(&opts);
        assert!(out == image, "the bytes differ from the image");
        assert_eq!(source.length, Some(image.len() as u64));
        assert_eq!(served(&source), [image.len() as u64]);
        let mut ranges: Vec<String> = server
            .requests()
            .into_iter()
            .filter_map(|r| r.range)
            .collect();
        ranges.sort();
        let mut expected: Vec<String> = (0..41u64)
            .map(|k| {
                let last = ((k + 1) * CHUNK).min(image.len() as u64) - 1;
                format!("bytes={}-{last}", k * CHUNK)
            })
            .collect();
        expected.sort();
        assert_eq!(ranges, expected, "one aligned range per chunk");
    }

    #[test]
    fn a_failing_first_mirror_hands_its_ranges_to_the_next() {
        // Each way a range can fail on mirror 1, as its first range: a 503,
        // a reset mid-range, a stall mid-range (past a 1 s stall timeout).
        // A range that broke off is taken up where it stopped: nothing is
        // fetched twice, and the next request starts 5000 bytes into it.
        for (failure, resumed) in [
            (Behavior::Status(503), false),
            (Behavior::DropAfter(5000), true),
            (Behavior::StallAfter(5000, Duration::from_secs(4)), true),
        ] {
            let first = FixtureServer::start().unwrap();
            let second = FixtureServer::start().unwrap();
            let image = data(24 * CHUNK_BYTES);
            first.add_file("x.img", image.clone());
            second.add_file("x.img", image.clone());
            first.push_behaviors("x.img", [Behavior::Normal, failure.clone()]);
            let mut opts = options(&[first.url("x.img"), second.url("x.img")], 4);
            if matches!(failure, Behavior::StallAfter(..)) {
                opts.stall_timeout = Duration::from_secs(1);
            }
            let (out, source) = read_all(&opts);
            assert!(out == image, "{failure:?}: the bytes differ from the image");
            let served = served(&source);
            assert_eq!(served.iter().sum::<u64>(), image.len() as u64);
            assert!(served[0] >= CHUNK, "{failure:?}: {served:?}");
            // The next mirror serves at least what the first one lacked of
            // the broken range (all of it after a 503).
            assert!(
                served[1] >= CHUNK - 5000,
                "{failure:?}: {served:?} {:?} {:?}",
                source.stats.snapshot(),
                first
                    .requests()
                    .iter()
                    .map(|r| (r.range.clone(), r.status, r.bytes_sent, r.behavior.clone()))
                    .collect::<Vec<_>>()
            );
            let stats = source.stats.snapshot();
            assert_eq!(stats.retries, 1, "{failure:?}: {stats:?}");
            assert_eq!(stats.refetched_bytes, 0, "{failure:?}: {stats:?}");
            let starts: Vec<u64> = first
                .requests()
                .into_iter()
                .chain(second.requests())
                .filter_map(|r| r.range)
                .filter_map(|r| r.strip_prefix("bytes=")?.split_once('-')?.0.parse().ok())
                .collect();
            assert_eq!(
                starts.iter().any(|start| start % CHUNK == 5000),
                resumed,
                "{failure:?}: {starts:?}"
            );
        }
    }

    #[test]
    fn a_mirror_of_another_length_is_left_out() {
        let first = FixtureServer::start().unwrap();
        let second = FixtureServer::start().unwrap();
        let image = data(6 * CHUNK_BYTES);
        first.add_file("x.img", image.clone());
        second.add_file("x.img", image[..image.len() - 1].to_vec());
        first.push_behaviors("x.img", [Behavior::Normal, Behavior::Status(503)]);
        let opts = options(&[first.url("x.img"), second.url("x.img")], 2);
        let (out, source) = read_all(&opts);
        assert!(out == image, "the bytes differ from the image");
        assert_eq!(served(&source), [image.len() as u64, 0]);
        // The second mirror answered only its probe.
        assert_eq!(second.requests().len(), 1);
    }

    #[test]
    fn the_manifest_catches_a_corrupt_chunk_and_another_mirror_serves_it() {
        let corrupt = FixtureServer::start().unwrap();
        let good = FixtureServer::start().unwrap();
        let image = data(10 * CHUNK_BYTES + 77);
        let mut bad = image.clone();
        bad[5 * CHUNK_BYTES + 9] ^= 0x40;
        corrupt.add_file("x.img", bad);
        good.add_file("x.img", image.clone());
        let manifest = Manifest::compute(&image[..], CHUNK).unwrap();
        good.add_file("x.img.chunks", manifest.render().into_bytes());
        let mut opts = options(&[corrupt.url("x.img"), good.url("x.img")], 3);
        opts.ranges.manifest = Some(good.url("x.img.chunks"));
        let (out, source) = read_all(&opts);
        assert!(out == image, "the bytes differ from the image");
        let served = served(&source);
        assert_eq!(served.iter().sum::<u64>(), image.len() as u64);
        assert!(served[1] >= CHUNK, "{served:?}");
        let stats = source.stats.snapshot();
        assert!(stats.refetched_bytes >= CHUNK, "{stats:?}");
        let from_good: Vec<String> = good
            .requests()
            .into_iter()
            .filter(|r| r.path == "/x.img")
            .filter_map(|r| r.range)
            .collect();
        assert!(
            from_good.contains(&format!("bytes={}-{}", 5 * CHUNK, 6 * CHUNK - 1)),
            "{from_good:?}"
        );

        // Without the good mirror, the deploy fails naming the check.
        let mut opts = options(&[corrupt.url("x.img")], 2);
        opts.retries = 0;
        opts.ranges.manifest = Some(good.url("x.img.chunks"));
        let mut source = super::super::open(&opts.ranges.mirrors[0], &opts).unwrap();
        let msg = source
            .reader
            .read_to_end(&mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("do not match the chunk manifest"), "{msg}");
    }

    #[test]
    fn a_manifest_for_another_image_is_refused_before_any_byte() {
        let server = FixtureServer::start().unwrap();
        let image = data(3 * CHUNK_BYTES);
        server.add_file("x.img", image.clone());
        let manifest = Manifest::compute(&image[..CHUNK_BYTES], CHUNK).unwrap();
        server.add_file("x.img.chunks", manifest.render().into_bytes());
        let mut opts = options(&[server.url("x.img")], 2);
        opts.ranges.manifest = Some(server.url("x.img.chunks"));
        let msg = format!(
            "{:#}",
            super::super::open(&opts.ranges.mirrors[0], &opts).unwrap_err()
        );
        assert!(
            msg.contains("the chunk manifest is for 65536 bytes"),
            "{msg}"
        );
    }

    #[test]
    fn a_server_that_ignores_range_is_read_with_one_get() {
        let server = FixtureServer::start().unwrap();
        let image = data(5 * CHUNK_BYTES);
        server.add_file("x.img", image.clone());
        server.push_behaviors("x.img", [Behavior::IgnoreRange]);
        let opts = options(&[server.url("x.img")], 8);
        let (out, source) = read_all(&opts);
        assert!(out == image, "the bytes differ from the image");
        assert!(source.stats.mirrors_served().is_empty());
        let requests = server.requests();
        assert_eq!(requests.len(), 2, "the probe and one GET");
        assert_eq!(requests[1].range, None);
    }

    #[test]
    fn a_slow_reader_gets_every_byte_and_memory_lowers_the_window() {
        let server = FixtureServer::start().unwrap();
        let image = data(64 * CHUNK_BYTES);
        server.add_file("x.img", image.clone());
        let mut opts = options(&[server.url("x.img")], 8);
        let mut source = super::super::open(&server.url("x.img"), &opts).unwrap();
        // A slow consumer: the workers run ahead as far as they may.
        let mut out = Vec::new();
        let mut buf = vec![0u8; 16 << 10];
        loop {
            let n = source.reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.len() % (CHUNK_BYTES) == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        assert!(out == image, "the bytes differ from the image");
        drop(source);
        // Half of 16 MiB holds two chunks of 4 MiB: two ranges at a time.
        opts.ranges.memory = Some(16 << 20);
        opts.ranges.chunk = 4 << 20;
        let big = data(20 << 20);
        server.add_file("big.img", big.clone());
        opts.ranges.mirrors = vec![server.url("big.img")];
        server.clear_requests();
        let mut source = super::super::open(&server.url("big.img"), &opts).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            server.requests().len(),
            2,
            "the probe (chunk 0) and one range"
        );
        let mut out = Vec::new();
        source.reader.read_to_end(&mut out).unwrap();
        assert!(out == big, "the bytes differ from the image");
    }

    #[test]
    fn an_idle_reader_holds_no_more_than_the_window() {
        let server = FixtureServer::start().unwrap();
        let image = data(48 * CHUNK_BYTES);
        server.add_file("x.img", image.clone());
        let opts = options(&[server.url("x.img")], 6);
        let mut source = super::super::open(&server.url("x.img"), &opts).unwrap();
        // Nobody reads: the workers fill the window and stop.
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            server.requests().len(),
            6,
            "the probe (chunk 0) and 5 more ranges"
        );
        // Each chunk handed on makes room for one more.
        let mut first = vec![0u8; CHUNK_BYTES + 1];
        source.reader.read_exact(&mut first).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(server.requests().len(), 7);
        assert!(first == image[..first.len()]);
    }

    /// Records log lines, to check what a presigned URL leaves in them.
    struct Capture(Mutex<Vec<String>>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            // As the console logger does (logger.rs): ureq's protocol
            // traces, which print whole requests, never pass.
            if record.target().starts_with("ureq") && record.level() > log::Level::Info {
                return;
            }
            self.0.lock().unwrap().push(record.args().to_string());
        }
        fn flush(&self) {}
    }

    #[test]
    fn presigned_queries_never_reach_logs_errors_or_the_result() {
        static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));
        log::set_logger(&CAPTURE).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        let first = FixtureServer::start().unwrap();
        let second = FixtureServer::start().unwrap();
        let image = data(8 * CHUNK_BYTES);
        first.add_file("x.img", image.clone());
        second.add_file("x.img", image.clone());
        first.push_behaviors(
            "x.img",
            [
                Behavior::Normal,
                Behavior::Status(503),
                Behavior::DropAfter(10),
            ],
        );
        let secret = "X-Amz-Signature=deadbeefsecret";
        let urls = [
            format!("{}?X-Amz-Credential=AKIA&{secret}", first.url("x.img")),
            format!("{}?{secret}", second.url("x.img")),
        ];
        let opts = options(&urls, 3);
        let (out, source) = read_all(&opts);
        assert!(out == image, "the bytes differ from the image");
        let line = crate::report::ok_line(&crate::report::DeploySummary {
            bytes: 1,
            sha256: [0; 32],
            elapsed: Duration::ZERO,
            format: None,
            verified: None,
            transfer: source.stats.snapshot(),
            restarts: 0,
            insecure: false,
            erased: Vec::new(),
            boot_entry: None,
            signed_by: Vec::new(),
        });
        let hosts = format!(
            "mirrors={}:{},{}:{}",
            host(&urls[0]),
            served(&source)[0],
            host(&urls[1]),
            served(&source)[1]
        );
        assert!(line.ends_with(&hosts), "{line}");
        let logged = CAPTURE.0.lock().unwrap().join("\n");
        assert!(logged.contains("?…"), "{logged}");
        assert!(logged.contains("503"), "{logged}");
        assert!(
            !logged.contains("deadbeef") && !logged.contains("AKIA"),
            "{logged}"
        );
        assert!(!format!("{opts:?}").contains("deadbeef"));
        // Each mirror got the query verbatim: the signature is the server's to check.
        assert!(first.requests().iter().all(|r| r.path == "/x.img"));

        // An error names the mirror without its query too.
        let gone = FixtureServer::start().unwrap();
        let url = format!("{}?{secret}", gone.url("missing.img"));
        let msg = format!(
            "{:#}",
            super::super::open(&url, &options(std::slice::from_ref(&url), 2)).unwrap_err()
        );
        assert!(
            msg.contains("HTTP 404") && !msg.contains("deadbeef"),
            "{msg}"
        );
    }
}
