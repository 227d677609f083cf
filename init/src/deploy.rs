//! One deploy, from spec to summary: shared by PID 1 and the CLI.
//!
//! Three stages run concurrently, joined by bounded queues of large buffers,
//! so memory stays bounded whatever the image size:
//!
//! ```text
//! fetch thread:  source -> count + checksum of the bytes as served -> [queue]
//! decode thread: [queue] -> sniff -> decode (zstd frames, xz blocks on every core) -> tar unwrap -> [queue]
//! this thread:   [queue] -> size limit -> hold back the first MiB -> disk -> [queue]
//! hash thread:   [queue] -> sha256 of the bytes written -> spent buffers back to their pool
//! after EOF:     verify checksum -> write the first MiB -> sync -> re-read partitions
//! on failure after the first write: zero the first and last MiB of the disk
//! ```
//!
//! Buffers are recycled, not freed: musl's malloc maps and unmaps every
//! buffer this large, which faulted in fresh pages for every byte of the
//! image (17% of the CPU of a raw deploy). A stage takes a buffer from a
//! pool and allocates only when the pool is empty, so the buffers alive at
//! once never outnumber those the bounded queues and the stages can hold:
//! served buffers (1 MiB) at most `QUEUE_DEPTH` queued + one being filled +
//! one being read, decoded buffers (4 MiB) `QUEUE_DEPTH` queued + one being
//! filled + one being written + `HASH_QUEUE_DEPTH` queued + one being
//! hashed: 6 MiB + 36 MiB. A raw image's served buffers go to the writer
//! as they are (no copy into decoded buffers), and then count among the
//! latter's slots.
//!
//! Everything that can be found out before the first write (the source
//! answers, the format agrees with the declared one, the image fits) is
//! checked first, and a failure there leaves the disk untouched.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest, Sha256};

use crate::http::tls;
use crate::pipeline::checksum::{Checksum, find_in_sums, url_file_name};
use crate::pipeline::fetch::{
    FETCH_CHUNK, FetchError, Pool, QUEUE_DEPTH, QueueReader, ServedHashers, fetch_stage, join,
    spawn,
};
use crate::pipeline::format::{self, Compression, DeclaredFormat, ImageFormat};
use crate::pipeline::image_writer::ImageWriter;
use crate::pipeline::ordered::{DEFAULT_MEMORY, OrderedConfig};
use crate::pipeline::peek::PeekReader;
use crate::pipeline::progress::Progress;
use crate::pipeline::scatter::{self, Layout};
use crate::pipeline::size_hint::{self, SizeHint};
use crate::pipeline::tar::SingleFileTar;
use crate::pipeline::target::{self, BlockTarget};
use crate::pipeline::{decode, read_full};
use crate::report::DeploySummary;
use crate::source::retry::restart_required_in;
use crate::source::{self, Source, SourceOptions};
use crate::spec::{Expected, Resolved};
use crate::text::human_size;

/// Decoded buffers handed to the writer: large sequential writes.
const WRITE_CHUNK: usize = 4 << 20;
/// Written buffers waiting for the hash thread: enough to ride out a slow
/// write without holding more memory than one decoded queue's half.
const HASH_QUEUE_DEPTH: usize = 2;
/// How much of the end of an xz file to fetch for its index.
const XZ_TAIL: u64 = 256 << 10;
/// A checksum list larger than this is not a checksum list.
const MAX_SUMS_LEN: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Decoder threads for zstd frames and xz blocks: every core. Memory,
    /// not a thread count, bounds what they hold (`imprint.decode-memory=`).
    pub threads: usize,
}

impl Default for DeployOptions {
    fn default() -> Self {
        DeployOptions {
            threads: thread::available_parallelism().map_or(1, usize::from),
        }
    }
}

/// Streams `source` (the spec's image, opened by the caller) onto the disk
/// or file at `target_path`.
///
/// When a broken transfer cannot be resumed safely (the server ignored the
/// Range request, or the file changed under us), the attempt fails closed
/// and the whole deploy starts again from byte 0, once: the held-back first
/// MiB guarantees nothing bootable was written by the first attempt.
pub fn deploy_to(
    spec: &Resolved,
    source: Source,
    target_path: &Path,
    options: &DeployOptions,
    progress: &mut dyn Progress,
) -> Result<DeploySummary> {
    // A tag resolved to a digest is reopened by that digest: the tag may
    // have moved since.
    let reopen = source
        .stats
        .image_digest
        .get()
        .cloned()
        .unwrap_or_else(|| spec.image.as_str().to_owned());
    match deploy_attempt(spec, source, target_path, options, progress) {
        Err(error) => {
            let Some(restart) = restart_required_in(&error) else {
                return Err(error);
            };
            log::warn!("{restart}; starting the deploy again from byte 0 (once)");
            // The only second open of the source: the first one's bytes
            // cannot be trusted any more.
            let source =
                source::open(&reopen, &spec.source).context("after restarting from byte 0 once")?;
            let mut summary = deploy_attempt(spec, source, target_path, options, progress)
                .context("after restarting from byte 0 once")?;
            summary.restarts = 1;
            Ok(summary)
        }
        ok => ok,
    }
}

fn deploy_attempt(
    spec: &Resolved,
    source: Source,
    target_path: &Path,
    options: &DeployOptions,
    progress: &mut dyn Progress,
) -> Result<DeploySummary> {
    let started = Instant::now();
    let url = spec.image.as_str().to_owned();
    let declared = spec.format.clone();
    if let DeclaredFormat::Rootfs(_) = declared {
        format::reconcile(&declared, ImageFormat::new(Compression::None, false))?;
    }
    // The name that declares the format and is looked up in a checksum
    // list: the URL's, or the source's own (an OCI layer's title).
    let named = source.name.clone().unwrap_or_else(|| url.clone());
    // A swarm with no room in RAM keeps its pieces on this target's tail.
    source::swarm::start_on_target(&source.stats, target_path);
    if let Some(plan) = scatter_plan(spec, &source, &named) {
        let stats = source.stats.clone();
        drop(source);
        let scattered = Scattered {
            swarm: &plan.swarm,
            table: &plan.layout,
            stats: &stats,
            xz: plan.xz.as_ref(),
        };
        return deploy_scattered(spec, &scattered, target_path, options, progress);
    }
    let signing = crate::sign::deploy::plan(spec)?;
    let (expected, list_signer) =
        expected_checksum_signed(spec.expected.as_ref(), &named, &spec.source, &signing)?;
    let expected = agree_with_source(expected, source.digest.as_ref(), &url)?;
    let stats = source.stats.clone();
    let target = open_fenced(target_path, spec, &stats)?;
    log::info!(
        "deploying {} ({}) to {}",
        // A presigned URL's query is a secret.
        source::mirrors::display(&url),
        source
            .length
            .map_or_else(|| "size not given".to_owned(), human_size),
        target.describe()
    );

    let pools = Pools::default();
    let (served_tx, served_rx) = sync_channel(QUEUE_DEPTH);
    let (image_tx, image_rx) = sync_channel(QUEUE_DEPTH);
    let (hash_tx, hash_rx) = sync_channel(HASH_QUEUE_DEPTH);
    let fetch = spawn("imprint-fetch", {
        let url = url.clone();
        let hashers = ServedHashers {
            expected: expected.as_ref().map(Checksum::hasher),
            sha256: None,
            signature: signing.image_check()?,
        };
        let pool = pools.served.clone();
        move || fetch_stage(source.reader, &url, hashers, &served_tx, &pool)
    })?;
    let decode = spawn("imprint-decode", {
        let url = url.clone();
        let decoders = OrderedConfig::new(
            options.threads,
            spec.decode_memory.unwrap_or(DEFAULT_MEMORY),
        );
        let source_options = spec.source.clone();
        let length = source.length;
        let ranges = source.ranges.clone();
        let pools = pools.clone();
        move || {
            let input = DecodeInput {
                served: served_rx,
                url: &url,
                named: &named,
                served_length: length,
                declared: &declared,
                decoders,
                source_options: &source_options,
                ranges,
            };
            decode_stage(input, &pools, &image_tx)
        }
    })?;
    let hash = spawn("imprint-hash", {
        let pools = pools.clone();
        move || hash_stage(&hash_rx, &pools)
    })?;

    let written = write_stage(target, &image_rx, hash_tx, progress);
    drop(image_rx);
    let decoded = join(decode, "decoder");
    let fetched = join(fetch, "fetcher");
    let sha256 = hash.join().map_err(|_| anyhow!("the hash thread panicked"));
    // The root cause wins: a failed read from the network explains the
    // decoder's failure, and a failed decode explains the writer's short
    // stream. A disk error is its own cause.
    let (written, format, served_bytes, served_digest, signed) = match (written, decoded, fetched) {
        (Ok(Some(w)), Ok(format), Ok(fetched)) => {
            (w, format, fetched.bytes, fetched.digest, fetched.signed)
        }
        (Err(e), _, _) => return Err(e),
        (w, decoded, fetched) => {
            if let Ok(Some(w)) = w {
                w.fail_closed();
            }
            return Err(match (fetched, decoded) {
                (Err(FetchError::Read(e)), _) => e,
                (_, Err(e)) => e,
                _ => anyhow!("the image decoded to nothing"),
            });
        }
    };
    if let Err(e) = check_served(
        expected.as_ref(),
        served_digest.as_ref(),
        &url,
        served_bytes,
    ) {
        written.fail_closed();
        return Err(e);
    }
    let signed_by = match crate::sign::deploy::signers(list_signer, signed) {
        Ok(signers) => signers,
        Err(e) => {
            written.fail_closed();
            return Err(e);
        }
    };
    let Written { writer } = written;
    let sha256 = match sha256 {
        Ok(sha256) => sha256,
        Err(e) => {
            Written { writer }.fail_closed();
            return Err(e);
        }
    };
    let (_, bytes) = writer
        .commit()
        .with_context(|| format!("committing the image to {}", target_path.display()))?;
    Ok(summary(
        spec,
        Deployed {
            bytes,
            served: served_bytes,
            sha256,
            started,
            format,
            expected,
            signed_by,
        },
        &stats,
    ))
}

/// The served bytes' digest against the one expected (when one is):
/// the one mismatch message of both kinds of deploy.
fn check_served(
    expected: Option<&Checksum>,
    actual: Option<&Checksum>,
    url: &str,
    served: u64,
) -> Result<()> {
    if let (Some(expected), Some(actual)) = (expected, actual) {
        if expected != actual {
            bail!(
                "checksum mismatch for {url} ({served} bytes): expected {expected}, got {actual}"
            );
        }
        log::info!("verified {actual}");
    }
    Ok(())
}

/// What a deploy wrote and checked, for [`summary`].
struct Deployed {
    bytes: u64,
    /// Bytes served (compressed), for the closing log line.
    served: u64,
    sha256: [u8; 32],
    started: Instant,
    format: String,
    expected: Option<Checksum>,
    signed_by: Vec<crate::sign::Signer>,
}

/// The summary both kinds of deploy end with, logged; what only PID 1 or
/// the CLI knows (erased disks, a boot entry, a restart) is filled in by
/// them.
fn summary(
    spec: &Resolved,
    written: Deployed,
    stats: &source::retry::SourceStats,
) -> DeploySummary {
    let elapsed = written.started.elapsed();
    log::info!(
        "{}",
        progress_summary(written.bytes, written.served, elapsed)
    );
    DeploySummary {
        bytes: written.bytes,
        sha256: written.sha256,
        elapsed,
        format: Some(written.format),
        verified: written.expected.map(|c| c.algorithm()),
        transfer: stats.snapshot(),
        restarts: 0,
        insecure: tls::insecure_in_effect(&spec.source),
        erased: Vec::new(),
        boot_entry: None,
        signed_by: written.signed_by,
    }
}

/// Whether `source` is decoded out of order ([`crate::pipeline::scatter`]):
/// it comes from a running swarm, is zstd or xz (declared or by name, not
/// in a tar), and its file ends with a table of its units, read here from
/// the mirrors' tail: a zstd seek table, or a single xz stream's index.
/// Anything else (no table, a broken one, a mirror that ignores Range, no
/// room for mirror-filled units) decodes in order, with a log line saying
/// why.
fn scatter_plan(spec: &Resolved, source: &Source, named: &str) -> Option<ScatterPlan> {
    let swarm = source.stats.swarm.get()?.clone();
    let compression = match &spec.format {
        DeclaredFormat::Image { format, .. } if !format.tar => format.compression,
        DeclaredFormat::Auto => match format::url_suffix(named) {
            Some(format::UrlSuffix::Image {
                compression,
                tar: false,
                ..
            }) => compression,
            _ => return None,
        },
        _ => return None,
    };
    let what = match compression {
        Compression::Zstd => "frames",
        Compression::Xz => "blocks",
        _ => return None,
    };
    if let Err(e) = swarm.room_for_fills(spec.decode_memory.unwrap_or(DEFAULT_MEMORY)) {
        log::info!(
            "torrent: {e:#} for {what} the mirrors may have to fill in; {what} decode in order"
        );
        return None;
    }
    let found = match compression {
        Compression::Zstd => zstd_layout(spec, swarm.length()),
        _ => xz_layout(spec, swarm.length()),
    };
    let (layout, known, xz) = match found {
        Ok(Some(found)) => found,
        Ok(None) => {
            log::info!(
                "torrent: no table of {what} at the end of the image; {what} decode in order"
            );
            return None;
        }
        Err(e) => {
            log::warn!("torrent: {e:#}; {what} decode in order");
            return None;
        }
    };
    if let Some(region) = swarm.disk_region().filter(|r| layout.image_len > r.start) {
        log::info!(
            "torrent: the image ({} bytes) would reach the pieces on the disk at byte {}; \
             {what} decode in order",
            layout.image_len,
            region.start
        );
        return None;
    }
    // Units are written where they start; a disk takes whole blocks of up
    // to 4 KiB (`--block-size=1000000` xz blocks decode in order).
    if let Some(odd) = layout.frames.iter().find(|f| f.output.start % 4096 != 0) {
        log::info!(
            "torrent: a unit's output starts at byte {}, not on a 4 KiB boundary; {what} decode in order",
            odd.output.start
        );
        return None;
    }
    // The hasher reads these bytes like any others.
    for (range, bytes) in &known {
        if let Err(e) = swarm.fill(range, bytes) {
            log::warn!("torrent: {e:#}; {what} decode in order");
            return None;
        }
    }
    swarm.claim();
    Some(ScatterPlan { swarm, layout, xz })
}

/// The target at `path`, fenced off from the pieces of a swarm that keeps
/// them on its tail: an image that reaches them stops the swarm first
/// ([`source::swarm::Swarm::reached`]).
fn open_fenced(
    path: &Path,
    spec: &Resolved,
    stats: &source::retry::SourceStats,
) -> Result<Box<dyn BlockTarget>> {
    let target = target::open_target(path, spec.direct_io)?;
    let swarm = stats.swarm.get();
    let Some((swarm, region)) = swarm.and_then(|s| Some((s.clone(), s.disk_region()?))) else {
        return Ok(target);
    };
    Ok(Box::new(target::Fenced::new(
        target,
        region,
        Box::new(move |at| swarm.reached(at)),
    )))
}

/// An xz file's stream header, which every block's one-block stream
/// starts with, and its blocks as the index lists them.
type XzBlocks = ([u8; 12], Vec<crate::pipeline::xz_blocks::IndexedBlock>);

/// What [`scatter_plan`] found: the units and, for xz, the blocks.
struct ScatterPlan {
    swarm: std::sync::Arc<source::swarm::Swarm>,
    layout: Layout,
    xz: Option<XzBlocks>,
}

/// Byte ranges read from the mirrors while planning, and their bytes.
type Known = Vec<(std::ops::Range<u64>, Vec<u8>)>;

fn zstd_layout(spec: &Resolved, len: u64) -> Result<Option<(Layout, Known, Option<XzBlocks>)>> {
    let url = spec.image.as_str();
    let Some(footer) = source::fetch_tail(url, 9, &spec.source)? else {
        return Ok(None);
    };
    let Some(table_len) = Layout::seek_table_len(&footer) else {
        return Ok(None);
    };
    if table_len > len.min(MAX_SEEK_TABLE) {
        bail!("a seek table of {table_len} bytes");
    }
    let Some(tail) = source::fetch_tail(url, table_len, &spec.source)? else {
        return Ok(None);
    };
    let Some(layout) = Layout::from_seek_table(&tail, len, &source::mirrors::display(url))? else {
        return Ok(None);
    };
    Ok(Some((
        layout,
        vec![(len - tail.len() as u64..len, tail)],
        None,
    )))
}

fn xz_layout(spec: &Resolved, len: u64) -> Result<Option<(Layout, Known, Option<XzBlocks>)>> {
    use crate::pipeline::xz_blocks::{indexed_blocks, stream_header_for_blocks};
    let url = spec.image.as_str();
    let Some(tail) = source::fetch_tail(url, XZ_TAIL.min(len), &spec.source)? else {
        return Ok(None);
    };
    let Some((blocks, flags)) = indexed_blocks(&tail, len)? else {
        return Ok(None);
    };
    let header = source::fetch_range(url, 0, 12, &spec.source)?;
    let header = stream_header_for_blocks(&header, flags)?;
    let layout = Layout::from_xz_blocks(&blocks);
    let known = vec![
        (0..12, header.to_vec()),
        (len - tail.len() as u64..len, tail),
    ];
    Ok(Some((layout, known, Some((header, blocks)))))
}

/// The largest seek table read: 12-byte entries of a 1 TiB image in 1 MiB
/// frames.
const MAX_SEEK_TABLE: u64 = 16 << 20;

/// A deploy whose zstd frames are decoded as the swarm completes them, in
/// any order ([`crate::pipeline::scatter`]); the same checks as
/// [`deploy_attempt`] in the same order: the checksum and signature over
/// the served bytes before the first MiB, which is written last.
fn deploy_scattered(
    spec: &Resolved,
    scattered: &Scattered<'_>,
    target_path: &Path,
    options: &DeployOptions,
    progress: &mut dyn Progress,
) -> Result<DeploySummary> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let Scattered {
        swarm,
        table,
        stats,
        xz,
    } = *scattered;
    let what = if xz.is_some() { "blocks" } else { "frames" };
    let started = Instant::now();
    let url = spec.image.as_str().to_owned();
    let signing = crate::sign::deploy::plan(spec)?;
    let (expected, list_signer) =
        expected_checksum_signed(spec.expected.as_ref(), &url, &spec.source, &signing)?;
    let hashers = ServedHashers {
        expected: expected.as_ref().map(Checksum::hasher),
        sha256: None,
        signature: signing.image_check()?,
    };
    let target = open_fenced(target_path, spec, stats)?;
    let largest = table
        .frames
        .iter()
        .map(|f| (f.input.end - f.input.start) + (f.output.end - f.output.start))
        .max()
        .unwrap_or(0)
        .max(1);
    let memory = spec.decode_memory.unwrap_or(DEFAULT_MEMORY);
    let threads = options
        .threads
        .min(usize::try_from(memory / largest).unwrap_or(usize::MAX))
        .max(1);
    log::info!(
        "deploying {} ({} {what}, {} of image) to {}: {what} decoded as the swarm completes them, \
         {threads} at once",
        source::mirrors::display(&url),
        table.frames.len(),
        human_size(table.image_len),
        target.describe()
    );
    let writer = std::sync::Mutex::new(ImageWriter::begin(target, Some(table.image_len))?);
    let mirrors = spec.source.ranges.mirrors.clone();
    let fetch = |range: &std::ops::Range<u64>| -> Result<Vec<u8>> {
        let mut last = None;
        for (n, mirror) in mirrors.iter().enumerate() {
            match source::fetch_range(mirror, range.start, range.end - range.start, &spec.source) {
                Ok(bytes) if bytes.len() as u64 == range.end - range.start => {
                    if let Some((_, served)) = stats.mirrors.get().and_then(|m| m.get(n)) {
                        served.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    }
                    return Ok(bytes);
                }
                Ok(bytes) => {
                    last = Some(anyhow!(
                        "{}: {} bytes at byte {}, {} expected",
                        source::mirrors::display(mirror),
                        bytes.len(),
                        range.start,
                        range.end - range.start
                    ));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no mirror to fetch bytes {range:?} from")))
    };
    let written = AtomicU64::new(0);
    let cancel = AtomicBool::new(false);
    let (scattered, hashed) = thread::scope(|scope| {
        let hasher =
            scope.spawn(|| scatter::hash_in_order(swarm, swarm.length(), hashers, &cancel));
        let decoders = scope.spawn(|| {
            let done = match xz {
                None => scatter::decode_frames(
                    &scatter::Units {
                        table,
                        pieces: swarm,
                        fetch: &fetch,
                        new_decoder: &crate::pipeline::zstd_decoder::ZstdFrameDecoder::new,
                        prepare: &scatter::zstd_frame(table),
                        writer: &writer,
                        written: &written,
                    },
                    threads,
                ),
                Some((header, blocks)) => scatter::decode_frames(
                    &scatter::Units {
                        table,
                        pieces: swarm,
                        fetch: &fetch,
                        new_decoder: &crate::pipeline::xz_blocks::XzBlockDecoder::new,
                        prepare: &|n, bytes| {
                            crate::pipeline::xz_blocks::block_stream(*header, &blocks[n], bytes)
                                .map(|(unit, stream)| (unit, Some(stream)))
                        },
                        writer: &writer,
                        written: &written,
                    },
                    threads,
                ),
            };
            if done.is_err() {
                cancel.store(true, Ordering::Relaxed);
            }
            done
        });
        while !decoders.is_finished() {
            progress.update(written.load(Ordering::Relaxed), Some(table.image_len));
            thread::sleep(std::time::Duration::from_millis(200));
        }
        let scattered = decoders
            .join()
            .unwrap_or_else(|_| Err(anyhow!("a frame decoder panicked")));
        (
            scattered,
            hasher
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the hasher panicked"))),
        )
    });
    let writer = writer
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Dropping the writer unfinished wipes both ends of the target.
    let done = scattered?;
    let fetched = hashed.context("hashing the served bytes in order")?;
    progress.update(table.image_len, Some(table.image_len));
    // On a mismatch the writer is dropped unfinished: both ends wiped.
    check_served(
        expected.as_ref(),
        fetched.digest.as_ref(),
        &url,
        fetched.bytes,
    )?;
    let signed_by = crate::sign::deploy::signers(list_signer, fetched.signed)?;
    let early = done.order.windows(2).filter(|w| w[0] > w[1]).count();
    log::info!(
        "torrent: {} {what} written in the order their pieces arrived ({early} after one \
         behind them), {} from the mirrors",
        done.order.len(),
        done.from_mirrors
    );
    // Frames from the swarm; what a format sniff read through the
    // in-order stream before (the same bytes) is not counted twice.
    if let Some(served) = stats.swarm_served.get() {
        served.store(done.swarm_bytes, Ordering::Relaxed);
    }
    let (_, bytes) = writer
        .commit()
        .with_context(|| format!("committing the image to {}", target_path.display()))?;
    // The frames were written out of order: the image's SHA-256 is read
    // back from the target, in order.
    let sha256 = read_back_sha256(target_path, bytes)?;
    let compression = if xz.is_some() {
        Compression::Xz
    } else {
        Compression::Zstd
    };
    let format = ImageFormat::new(compression, false).name();
    Ok(summary(
        spec,
        Deployed {
            bytes,
            served: fetched.bytes,
            sha256,
            started,
            format,
            expected,
            signed_by,
        },
        stats,
    ))
}

/// What [`deploy_scattered`] deploys: the swarm, the frames, and the
/// source's counters for the result line.
#[derive(Clone, Copy)]
struct Scattered<'a> {
    swarm: &'a source::swarm::Swarm,
    table: &'a Layout,
    stats: &'a source::retry::SourceStats,
    xz: Option<&'a XzBlocks>,
}

/// The SHA-256 of the first `len` bytes of `path`.
fn read_back_sha256(path: &Path, len: u64) -> Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("opening {} to hash what was written", path.display()))?;
    let mut hasher = Sha256::new();
    let copied = io::copy(&mut (&mut file).take(len), &mut HashWriter(&mut hasher))
        .with_context(|| format!("reading back {}", path.display()))?;
    if copied != len {
        bail!(
            "{} ends at byte {copied}, {len} were written",
            path.display()
        );
    }
    Ok(hasher.finalize().into())
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The last progress line: `wrote 1.0 GiB (312.4 MiB served) in 4.2 s, 255.7 MB/s`.
fn progress_summary(bytes: u64, served: u64, elapsed: std::time::Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    #[allow(clippy::cast_precision_loss)] // a rate for humans
    let rate = bytes as f64 / secs / 1e6;
    format!(
        "wrote {} ({} served) in {secs:.1} s, {rate:.1} MB/s",
        human_size(bytes),
        human_size(served)
    )
}

/// The digest `expected` names: given, or looked up in a checksum list
/// by the image's file name, the list's signature (when `signing` has one)
/// checked over its exact bytes before any digest is read from it.
pub(crate) fn expected_checksum_signed(
    expected: Option<&Expected>,
    url: &str,
    options: &SourceOptions,
    signing: &crate::sign::trust::Plan,
) -> Result<(Option<Checksum>, Option<crate::sign::Signer>)> {
    let sums_url = match expected {
        None => return Ok((None, None)),
        Some(Expected::Digest(checksum)) => return Ok((Some(checksum.clone()), None)),
        Some(Expected::List(sums_url)) => sums_url.as_str(),
    };
    let sums = source::fetch_text(sums_url, MAX_SUMS_LEN, "a checksum list", options)
        .context("fetching the checksum list")?;
    let signer = signing.verify_list(sums.as_bytes())?;
    let name = url_file_name(url);
    let checksum =
        find_in_sums(&sums, name).with_context(|| format!("checksum list {sums_url}"))?;
    Ok((Some(checksum), signer))
}

/// The checksum to verify: the user's, the one the source vouches for (an
/// OCI layer's digest), or both when they agree.
pub(crate) fn agree_with_source(
    expected: Option<Checksum>,
    vouched: Option<&Checksum>,
    url: &str,
) -> Result<Option<Checksum>> {
    match (expected, vouched) {
        (Some(given), Some(vouched)) if given != *vouched => bail!(
            "{url}: the checksum given is {given}, but the registry's layer digest is {vouched}; \
             drop imprint.checksum= or pin the image by digest"
        ),
        (Some(given), _) => Ok(Some(given)),
        (None, vouched) => Ok(vouched.cloned()),
    }
}

/// What the decoder hands the writer.
enum Decoded {
    /// First, before any data: the image size when known up front.
    Start {
        size: Option<u64>,
    },
    Data(Vec<u8>),
}

/// The decode stage's input: the served chunks and what is known of them.
struct DecodeInput<'a> {
    served: Receiver<io::Result<Vec<u8>>>,
    url: &'a str,
    /// The file name that declares the format (the URL's, or the source's).
    named: &'a str,
    served_length: Option<u64>,
    declared: &'a DeclaredFormat,
    decoders: OrderedConfig,
    source_options: &'a SourceOptions,
    /// Random reads of the same bytes, where the URL alone cannot make them.
    ranges: Option<source::RangeAccess>,
}

/// Returns the format's name for the result line.
fn decode_stage(
    input: DecodeInput<'_>,
    pools: &Pools,
    queue: &SyncSender<Decoded>,
) -> Result<String> {
    let DecodeInput {
        served,
        url,
        named,
        served_length,
        declared,
        decoders,
        source_options,
        ranges,
    } = input;
    let mut input = PeekReader::new(QueueReader::new(served, pools.served.clone()));
    let prefix = input
        .peek(512)
        .context("reading the start of the image")?
        .to_vec();
    if prefix.is_empty() {
        bail!("{url} is empty");
    }
    if crate::qcow2::is_qcow2(&prefix) {
        format::check_declared_qcow2(declared, url)?;
        let ranges = crate::qcow2::UrlRanges {
            url: url.to_owned(),
            options: source_options.clone(),
            access: ranges,
        };
        let opened = crate::qcow2::open(
            &prefix,
            Box::new(input),
            served_length,
            Box::new(ranges),
            decoders,
        )
        .with_context(|| url.to_owned())?;
        log::info!("format: {}", opened.header.describe());
        let size = opened.header.size;
        let mut image = opened.image;
        send_image(&mut image, Some(size), "qcow2 image", pools, queue)?;
        drop(image);
        let stats = &opened.stats;
        let refetched = stats.refetched.load(std::sync::atomic::Ordering::Relaxed);
        if refetched > 0 {
            log::warn!(
                "qcow2: {} read again by Range (clusters out of guest order; not covered by \
                 the served checksum)",
                human_size(refetched)
            );
        }
        return Ok(crate::qcow2::Opened::name_of(&opened.header, stats));
    }
    let compression = format::sniff_compression(&prefix);
    // Lower bounds are enough to refuse an image that cannot fit before
    // anything is written; the exact limit is enforced while writing.
    let mut size = match compression {
        Compression::None => served_length,
        Compression::Zstd => {
            size_hint::zstd_size_hint(&prefix, served_length).map(SizeHint::lower_bound)
        }
        Compression::Xz => served_length.and_then(|len| xz_size(url, len, source_options)),
        Compression::Gzip | Compression::Bzip2 => None,
    };
    if compression == Compression::None && !format::looks_like_tar(&prefix) {
        let format = format::check_declared(declared, named, &prefix, ImageFormat::RAW)?;
        format::check_image_size(format, &prefix)?;
        log::info!(
            "format: {format}{}",
            size.map_or(String::new(), |s| format!(", image {}", human_size(s)))
        );
        forward_raw(input, size, queue)?;
        return Ok(format.name());
    }
    let mut decoded = PeekReader::new(decode::decoder_with(compression, input, decoders));
    let start = decoded
        .peek(512)
        .with_context(|| format!("decoding the {compression} stream"))?;
    if crate::qcow2::is_qcow2(start) {
        bail!(
            "the {compression} stream holds a qcow2 image, which needs random access: \
             decompress it and serve the .qcow2 file itself"
        );
    }
    let sniffed = ImageFormat::new(compression, format::looks_like_tar(start));
    let format = format::check_declared(declared, named, &prefix, sniffed)?;
    format::check_image_size(format, start)?;
    let mut image: Box<dyn Read + Send> = if format.tar {
        let tar = SingleFileTar::new(decoded).context("reading the tar archive")?;
        log::info!(
            "tar member {:?}, {}",
            tar.member_name(),
            human_size(tar.member_size())
        );
        size = Some(tar.member_size());
        Box::new(tar)
    } else {
        Box::new(decoded)
    };
    log::info!(
        "format: {format}{}",
        size.map_or(String::new(), |s| format!(", image {}", human_size(s)))
    );
    send_image(&mut image, size, &format.to_string(), pools, queue)?;
    Ok(format.name())
}

/// Sends the decoded image to the writer: its size first, then its bytes
/// in write-sized buffers. `what` names it in errors. Stops quietly when
/// the writer has gone (its error says why).
fn send_image(
    image: &mut dyn Read,
    size: Option<u64>,
    what: &str,
    pools: &Pools,
    queue: &SyncSender<Decoded>,
) -> Result<()> {
    if queue.send(Decoded::Start { size }).is_err() {
        return Ok(());
    }
    let mut offset = 0u64;
    loop {
        let mut buf = pools.decoded.take();
        buf.resize(WRITE_CHUNK, 0);
        let filled = read_full(image, &mut buf)
            .with_context(|| format!("decoding the {what} at output byte {offset}"))?;
        buf.truncate(filled);
        offset += filled as u64;
        if filled > 0 && queue.send(Decoded::Data(buf)).is_err() {
            return Ok(());
        }
        if filled < WRITE_CHUNK {
            return Ok(());
        }
    }
}

/// Passes a raw image's served chunks on as they are.
fn forward_raw(
    input: PeekReader<QueueReader>,
    size: Option<u64>,
    queue: &SyncSender<Decoded>,
) -> Result<()> {
    if queue.send(Decoded::Start { size }).is_err() {
        return Ok(());
    }
    let (peeked, reader) = input.into_parts();
    let mut offset = 0u64;
    let chunks = (!peeked.is_empty())
        .then_some(Ok(peeked))
        .into_iter()
        .chain(reader.into_chunks());
    for chunk in chunks {
        let chunk = chunk.with_context(|| format!("reading the image at byte {offset}"))?;
        offset += chunk.len() as u64;
        if queue.send(Decoded::Data(chunk)).is_err() {
            break;
        }
    }
    Ok(())
}

fn xz_size(url: &str, file_len: u64, options: &SourceOptions) -> Option<u64> {
    match source::fetch_tail(url, XZ_TAIL, options).and_then(|tail| match tail {
        Some(tail) => size_hint::xz_size_hint(&tail, file_len),
        None => Ok(None),
    }) {
        Ok(size) => size.map(SizeHint::lower_bound),
        Err(e) => {
            log::warn!("xz index of {url} not read, image size unknown until the end: {e:#}");
            None
        }
    }
}

/// Writes what the decoder sends. `Ok(None)`: the decoder stopped before
/// sending anything (its error says why); nothing was written.
/// Written chunks go on to the hash thread, in order.
fn write_stage(
    target: Box<dyn BlockTarget>,
    queue: &Receiver<Decoded>,
    hash: SyncSender<Vec<u8>>,
    progress: &mut dyn Progress,
) -> Result<Option<Written>> {
    let Ok(Decoded::Start { size }) = queue.recv() else {
        return Ok(None);
    };
    let mut writer = ImageWriter::begin(target, size)?;
    let mut offset = 0u64;
    while let Ok(Decoded::Data(chunk)) = queue.recv() {
        // Dropping the writer on this error path wipes both ends of the disk.
        writer.write_all(&chunk)?;
        offset += chunk.len() as u64;
        progress.update(offset, size);
        if hash.send(chunk).is_err() {
            bail!("the hash thread stopped");
        }
    }
    Ok(Some(Written { writer }))
}

/// The sha256 of the bytes written, in the order written: the result line's.
fn hash_stage(queue: &Receiver<Vec<u8>>, pools: &Pools) -> [u8; 32] {
    let mut sha256 = Sha256::new();
    for chunk in queue {
        sha256.update(&chunk);
        pools.recycle(chunk);
    }
    sha256.finalize().into()
}

/// The image is on the disk but for its first MiB.
struct Written {
    writer: ImageWriter<Box<dyn BlockTarget>>,
}

#[derive(Clone)]
struct Pools {
    served: Pool,
    decoded: Pool,
}

impl Default for Pools {
    fn default() -> Self {
        Pools {
            served: Pool::new(FETCH_CHUNK),
            decoded: Pool::new(WRITE_CHUNK),
        }
    }
}

impl Pools {
    /// A written buffer goes back to the stage that filled it: raw images
    /// hand the served buffers on as they are.
    fn recycle(&self, buf: Vec<u8>) {
        if buf.capacity() >= WRITE_CHUNK {
            self.decoded.put(buf);
        } else {
            self.served.put(buf);
        }
    }
}

impl Written {
    fn fail_closed(self) {
        let _ = self.writer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn summary_line() {
        assert_eq!(
            progress_summary(1 << 30, 300 << 20, Duration::from_secs(4)),
            "wrote 1.0 GiB (300.0 MiB served) in 4.0 s, 268.4 MB/s"
        );
    }

    #[test]
    fn a_vouched_digest_is_the_checksum_unless_the_user_disagrees() {
        let a = Checksum::Sha256([1; 32]);
        let b = Checksum::Sha256([2; 32]);
        let url = "oci://reg/os/golden:v1";
        assert_eq!(
            agree_with_source(None, Some(&a), url).unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            agree_with_source(Some(a.clone()), Some(&a), url).unwrap(),
            Some(a.clone())
        );
        assert_eq!(
            agree_with_source(Some(b.clone()), None, url).unwrap(),
            Some(b.clone())
        );
        assert_eq!(agree_with_source(None, None, url).unwrap(), None);
        let msg = format!(
            "{:#}",
            agree_with_source(Some(b), Some(&a), url).unwrap_err()
        );
        assert!(msg.starts_with(url), "{msg}");
        assert!(
            msg.contains("the registry's layer digest is sha256:0101"),
            "{msg}"
        );
    }

    /// The bound of every deploy on a fast machine: the result line's
    /// sha256 of the written bytes is one stream, on one core. Prints its
    /// speed here (BENCHMARKS.md, "What bounds each number"):
    /// `cargo test --release -p imprint --lib sha256_speed -- --ignored --nocapture`
    #[test]
    #[ignore = "benchmark: hashes 1.5 GiB"]
    fn sha256_speed() {
        let chunk: Vec<u8> = (0..WRITE_CHUNK)
            .map(|i| (i % 251).to_le_bytes()[0])
            .collect();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            let mut sha256 = Sha256::new();
            for _ in 0..(512 << 20) / WRITE_CHUNK {
                sha256.update(&chunk);
            }
            std::hint::black_box(sha256.finalize());
            best = best.min(start.elapsed().as_secs_f64());
        }
        eprintln!("sha256: {:.0} MB/s", f64::from(512u32 << 20) / best / 1e6);
    }
}
