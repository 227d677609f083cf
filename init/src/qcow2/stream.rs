//! The guest image of a qcow2 file, produced in guest order from one
//! sequential read of the file: a [`Split`] for the ordered-parallel
//! engine (raw and zero clusters pass through as data, compressed clusters
//! are decoded on every core) and the [`UnitDecoder`] for deflate and zstd
//! clusters. The order of reads is the module doc's ([`super`]).

use std::collections::BTreeMap;
use std::io::{self, ErrorKind, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::header::{ClusterCompression, Header};
use super::table::{self, Cluster, SUBCLUSTERS};
use crate::pipeline::ordered::{
    Dispatcher, OrderedConfig, OrderedDecoder, Split, Stop, StreamOutput, UnitDecoder,
};
use crate::sys::zstd::ZstdContext;

/// Random access to the served file, for what the stream has already
/// passed or is too far ahead: HTTP Range requests, or seeks in a file.
pub trait RangeSource: Send + 'static {
    fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>>;
}

/// Output handed on per unit of raw and zero clusters.
const OUTPUT_CHUNK: usize = 4 << 20;
/// Stream bytes kept behind the read position: compressed clusters share
/// their last sector with the next one, which starts before the position.
const RECENT: usize = 4 << 10;
/// An L2 table further ahead than this is read by Range (and checked
/// against the stream when it passes), so that a file with its tables at
/// the end does not make every data cluster a Range request.
const L2_LOOKAHEAD: u64 = 16 << 20;
/// Stream bytes read per step when skipping.
const SKIP_CHUNK: usize = 1 << 20;
/// Clusters of the current L2 table that the stream passes before their
/// turn in guest order (`qemu-img convert -c` writes a few out of order)
/// are kept as they pass, up to this many bytes; beyond it they are read
/// again by Range.
const STASH_BUDGET: u64 = 32 << 20;
/// The last stream bytes skipped (passed without being used: metadata,
/// clusters not yet known to be needed) are kept, up to this many in at
/// most [`SKIPPED_PIECES`] pieces: `qemu-img convert -c` writes the first
/// clusters of an L2 table's range a little before the table itself.
const SKIPPED_KEEP: u64 = 8 << 20;
const SKIPPED_PIECES: usize = 4096;

/// What the splitter counted, for the log and the result line.
#[derive(Debug, Default)]
pub struct Qcow2Stats {
    /// Compressed clusters decoded.
    pub compressed: AtomicU64,
    /// Bytes read again by Range because the stream had passed them.
    pub refetched: AtomicU64,
    /// Metadata ranges read by Range and found equal in the stream.
    pub checked: AtomicU64,
}

/// A compressed cluster: where it is (for messages) and how much of its
/// output belongs to the image (the last cluster may pass the virtual size).
#[derive(Debug, Clone, Copy)]
pub struct CompressedCluster {
    pub host_offset: u64,
    pub guest_offset: u64,
    pub keep: usize,
}

/// Starts producing the guest image of `header`'s file. `stream` is the
/// file from byte 0; `l1` the L1 table's needed entries, read by Range,
/// whose bytes are checked against the stream when it passes them.
pub fn guest_image(
    header: Header,
    l1_bytes: Vec<u8>,
    file_len: Option<u64>,
    stream: Box<dyn Read + Send>,
    ranges: Box<dyn RangeSource>,
    config: OrderedConfig,
) -> (OrderedDecoder, Arc<Qcow2Stats>) {
    let stats = Arc::new(Qcow2Stats::default());
    let mut splitter = Qcow2Split {
        cluster_size: header.cluster_size(),
        header,
        l1: l1_bytes
            .chunks_exact(8)
            .map(|e| u64::from_be_bytes(e.try_into().expect("8 bytes")))
            .collect(),
        file_len,
        stream,
        pos: 0,
        recent: Vec::new(),
        ranges,
        pending: BTreeMap::new(),
        active: None,
        out: Vec::new(),
        emitted: 0,
        stats: Arc::clone(&stats),
        warned_refetch: false,
        scratch: Vec::new(),
        wanted: BTreeMap::new(),
        stash: BTreeMap::new(),
        stash_bytes: 0,
        skipped: std::collections::VecDeque::new(),
        skipped_bytes: 0,
        keep_skipped: true,
    };
    splitter.expect_in_stream(splitter.header.l1_offset, &l1_bytes);
    let compression = splitter.header.compression;
    let cluster_size = splitter.cluster_size;
    let decoder = OrderedDecoder::start(
        "imprint-qcow2",
        splitter,
        move || ClusterDecoder::new(compression, cluster_size),
        config,
    );
    (decoder, stats)
}

/// A metadata range read by Range, to be found equal in the stream.
struct Expected {
    len: u64,
    digest: [u8; 32],
}

struct Active {
    start: u64,
    len: u64,
    digest: [u8; 32],
    hasher: Sha256,
}

struct Qcow2Split {
    header: Header,
    cluster_size: u64,
    l1: Vec<u64>,
    file_len: Option<u64>,
    stream: Box<dyn Read + Send>,
    /// The file offset of the stream's next byte.
    pos: u64,
    /// The last stream bytes before `pos`, at most [`RECENT`].
    recent: Vec<u8>,
    ranges: Box<dyn RangeSource>,
    pending: BTreeMap<u64, Expected>,
    active: Option<Active>,
    /// Guest bytes not yet handed on.
    out: Vec<u8>,
    /// Guest bytes handed on or in `out`.
    emitted: u64,
    stats: Arc<Qcow2Stats>,
    warned_refetch: bool,
    /// Where skipped stream bytes land.
    scratch: Vec<u8>,
    /// Host ranges of the current L2 table the stream will pass before
    /// their turn: start -> length.
    wanted: BTreeMap<u64, u64>,
    /// Their bytes, as the stream passes them.
    stash: BTreeMap<u64, Vec<u8>>,
    stash_bytes: u64,
    /// The last bytes skipped, oldest first: (file offset, bytes).
    skipped: std::collections::VecDeque<(u64, Vec<u8>)>,
    skipped_bytes: u64,
    /// Off for the drain after the last cluster.
    keep_skipped: bool,
}

/// A length bounded by a cluster or an output chunk, as an index.
fn small(n: u64) -> usize {
    usize::try_from(n).expect("bounded by a cluster or an output chunk")
}

fn invalid(message: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, message)
}

impl Split<CompressedCluster> for Qcow2Split {
    fn run(mut self, dispatch: &mut Dispatcher<CompressedCluster>) -> Result<(), Stop> {
        let l2_entries = self.header.l2_entries();
        let clusters = self.header.guest_clusters();
        let mut table = Vec::new();
        for l1_index in 0..self.header.l1_entries_needed() {
            let first = l1_index * l2_entries;
            let here = l2_entries.min(clusters - first);
            let entry = self.l1[usize::try_from(l1_index).expect("bounded by the L1 limit")];
            let l2 = table::l1_entry(&self.header, entry, l1_index)
                .map_err(|e| invalid(format!("{e:#}")))?;
            let Some(l2_offset) = l2 else {
                self.zeros(here * self.cluster_size, dispatch)?;
                continue;
            };
            self.read_l2(l2_offset, &mut table)?;
            self.plan_stash(&table, first, here)
                .map_err(|e| invalid(format!("{e:#} (the L2 table at host offset {l2_offset})")))?;
            for index in 0..here {
                let cluster = table::l2_entry(&self.header, &table, index).map_err(|e| {
                    invalid(format!("{e:#} (the L2 table at host offset {l2_offset})"))
                })?;
                self.cluster(
                    cluster,
                    (first + index) << self.header.cluster_bits,
                    dispatch,
                )?;
            }
            if dispatch.is_cancelled() {
                return Err(Stop::Cancelled);
            }
        }
        self.flush(dispatch)?;
        // The rest of the file (refcounts, snapshots, padding) is read too:
        // the served checksum covers every byte, and metadata read by Range
        // must be found in it.
        self.keep_skipped = false;
        self.skip_to(u64::MAX)?;
        if let Some(len) = self.file_len
            && self.pos != len
        {
            return Err(invalid(format!(
                "the qcow2 file ended at byte {} of the {len} announced",
                self.pos
            ))
            .into());
        }
        if let Some((start, _)) = self.pending.iter().next() {
            return Err(invalid(format!(
                "the qcow2 file ended at byte {} before the metadata read at byte {start}",
                self.pos
            ))
            .into());
        }
        Ok(())
    }
}

impl Qcow2Split {
    fn cluster(
        &mut self,
        cluster: Cluster,
        guest: u64,
        dispatch: &mut Dispatcher<CompressedCluster>,
    ) -> Result<(), Stop> {
        let keep = self.cluster_size.min(self.header.size - guest);
        match cluster {
            Cluster::Zero => self.zeros(keep, dispatch),
            Cluster::Data(host) => {
                let start = self.out.len();
                self.host_bytes(host, keep)?;
                debug_assert_eq!(self.out.len() as u64, start as u64 + keep);
                self.emitted += keep;
                self.flush_if_full(dispatch)
            }
            Cluster::Subclusters { offset, allocated } => {
                let sub = self.cluster_size / u64::from(SUBCLUSTERS);
                for i in 0..u64::from(SUBCLUSTERS) {
                    let at = i * sub;
                    if at >= keep {
                        break;
                    }
                    let len = sub.min(keep - at);
                    if allocated & (1 << i) != 0 {
                        self.host_bytes(offset + at, len)?;
                    } else {
                        self.out.resize(self.out.len() + small(len), 0);
                    }
                }
                self.emitted += keep;
                self.flush_if_full(dispatch)
            }
            Cluster::Compressed { offset, len } => {
                self.flush(dispatch)?;
                let len = match self.file_len {
                    Some(file_len) if offset >= file_len => {
                        return Err(invalid(format!(
                            "the compressed cluster at guest byte {guest} is at host offset \
                             {offset}, past the file's end ({file_len})"
                        ))
                        .into());
                    }
                    // The last sector counted may pass the end of the file.
                    Some(file_len) => len.min(file_len - offset),
                    None => len,
                };
                dispatch.reserve(len)?;
                let mut data = dispatch.input_buffer(usize::try_from(len).expect("small"));
                let got = self.host_into(offset, len, &mut data, true)?;
                data.truncate(got);
                self.emitted += keep;
                self.stats.compressed.fetch_add(1, Ordering::Relaxed);
                let unit = CompressedCluster {
                    host_offset: offset,
                    guest_offset: guest,
                    keep: usize::try_from(keep).expect("a cluster"),
                };
                dispatch.whole(unit, data, self.cluster_size)
            }
        }
    }

    fn zeros(
        &mut self,
        mut len: u64,
        dispatch: &mut Dispatcher<CompressedCluster>,
    ) -> Result<(), Stop> {
        len = len.min(self.header.size - self.emitted);
        while len > 0 {
            let room = (OUTPUT_CHUNK - self.out.len()) as u64;
            let n = room.min(len);
            self.out.resize(self.out.len() + small(n), 0);
            self.emitted += n;
            len -= n;
            self.flush_if_full(dispatch)?;
        }
        Ok(())
    }

    fn flush_if_full(&mut self, dispatch: &mut Dispatcher<CompressedCluster>) -> Result<(), Stop> {
        if self.out.len() >= OUTPUT_CHUNK - small(self.cluster_size) {
            self.flush(dispatch)?;
        }
        Ok(())
    }

    fn flush(&mut self, dispatch: &mut Dispatcher<CompressedCluster>) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut next = dispatch.output_buffer(OUTPUT_CHUNK);
        std::mem::swap(&mut next, &mut self.out);
        dispatch.data(next)
    }

    /// Appends `len` bytes at host offset `host` to the output.
    fn host_bytes(&mut self, host: u64, len: u64) -> io::Result<()> {
        let mut out = std::mem::take(&mut self.out);
        let got = self.host_into(host, len, &mut out, false);
        self.out = out;
        got.map(|_| ())
    }

    /// Appends the `len` file bytes at `host` to `into`: from the stream
    /// when they are ahead of it (skipping to them), from the bytes just
    /// passed, or else by Range. `short_ok`: the file may end first (a
    /// compressed cluster's last sector); returns how many were appended.
    fn host_into(
        &mut self,
        host: u64,
        len: u64,
        into: &mut Vec<u8>,
        short_ok: bool,
    ) -> io::Result<usize> {
        let start = into.len();
        if let Some(bytes) = self.stash.remove(&host) {
            self.stash_bytes -= bytes.len() as u64;
            let at_end = self.file_len.is_some_and(|end| self.pos >= end);
            if bytes.len() as u64 == len || (short_ok && at_end && !bytes.is_empty()) {
                into.extend_from_slice(&bytes);
                return Ok(bytes.len());
            }
        }
        let recent_start = self.pos - self.recent.len() as u64;
        if host < recent_start && self.copy_skipped(host, len, into) {
            return Ok(small(len));
        }
        if host < recent_start {
            let bytes = self.ranges.read_at(host, len)?;
            self.note_refetch(host, bytes.len() as u64);
            if bytes.len() as u64 != len && !short_ok {
                return Err(self.cut_short(host, len));
            }
            into.extend_from_slice(&bytes);
            return Ok(bytes.len());
        }
        let mut host = host;
        let mut len = len;
        if host < self.pos {
            let from = usize::try_from(host - recent_start).expect("within RECENT");
            let n = (self.recent.len() - from).min(small(len));
            into.extend_from_slice(&self.recent[from..from + n]);
            host += n as u64;
            len -= n as u64;
        }
        if len > 0 {
            self.skip_to(host)?;
            if self.pos < host {
                if short_ok {
                    return Ok(into.len() - start);
                }
                return Err(self.cut_short(host, len));
            }
            let at = into.len();
            into.resize(at + small(len), 0);
            let got = self.read_stream(&mut into[at..])?;
            into.truncate(at + got);
            if got as u64 != len && !short_ok {
                return Err(self.cut_short(host, len));
            }
        }
        Ok(into.len() - start)
    }

    fn cut_short(&self, host: u64, len: u64) -> io::Error {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            format!(
                "the qcow2 file ends at byte {} inside the {len} bytes at host offset {host}: \
                 is it truncated?",
                self.pos
            ),
        )
    }

    fn note_refetch(&mut self, host: u64, len: u64) {
        self.stats.refetched.fetch_add(len, Ordering::Relaxed);
        if !self.warned_refetch {
            self.warned_refetch = true;
            log::warn!(
                "qcow2: the cluster at host offset {host} comes before the stream's position \
                 {}: the file is not in guest order, such clusters are read again by Range",
                self.pos
            );
        }
    }

    /// Reads the L2 table at `offset` into `table`: from the stream when it
    /// is at most [`L2_LOOKAHEAD`] ahead, else by Range, then checked
    /// against the stream if the stream has yet to pass it.
    fn read_l2(&mut self, offset: u64, table: &mut Vec<u8>) -> io::Result<()> {
        table.clear();
        let len = self.cluster_size;
        if offset >= self.pos && offset - self.pos <= L2_LOOKAHEAD {
            self.keep_recent();
            let got = self.host_into(offset, len, table, false)?;
            debug_assert_eq!(got as u64, len);
            return Ok(());
        }
        let bytes = self.ranges.read_at(offset, len)?;
        if bytes.len() as u64 != len {
            return Err(invalid(format!(
                "the qcow2 L2 table at host offset {offset} is cut short: {} of {len} bytes",
                bytes.len()
            )));
        }
        if offset >= self.pos {
            self.expect_in_stream(offset, &bytes);
        }
        table.extend_from_slice(&bytes);
        Ok(())
    }

    fn expect_in_stream(&mut self, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.pending.insert(
            offset,
            Expected {
                len: bytes.len() as u64,
                digest: Sha256::digest(bytes).into(),
            },
        );
    }

    /// Keeps the bytes just behind the stream among the skipped ones before
    /// a skip or a table read moves `recent` on: the next L2 table's first
    /// compressed cluster may share the last sector of the previous one.
    fn keep_recent(&mut self) {
        let recent = std::mem::take(&mut self.recent);
        self.keep_skipped_bytes(self.pos - recent.len() as u64, &recent);
        self.recent = recent;
    }

    /// Keeps skipped stream bytes `bytes` at `at`, dropping the oldest
    /// beyond [`SKIPPED_KEEP`].
    fn keep_skipped_bytes(&mut self, at: u64, bytes: &[u8]) {
        if !self.keep_skipped {
            return;
        }
        self.skipped.push_back((at, bytes.to_vec()));
        self.skipped_bytes += bytes.len() as u64;
        while self.skipped_bytes > SKIPPED_KEEP || self.skipped.len() > SKIPPED_PIECES {
            let (_, oldest) = self.skipped.pop_front().expect("not empty");
            self.skipped_bytes -= oldest.len() as u64;
        }
    }

    /// Appends the file bytes `[host, host + len)` to `into` when the kept
    /// skipped bytes hold all of them.
    fn copy_skipped(&self, host: u64, len: u64, into: &mut Vec<u8>) -> bool {
        let end = host + len;
        let mut cursor = host;
        let start = into.len();
        for (at, bytes) in &self.skipped {
            let piece_end = at + bytes.len() as u64;
            if piece_end <= cursor || *at > cursor {
                if *at > cursor && cursor > host {
                    break;
                }
                continue;
            }
            let upto = end.min(piece_end);
            into.extend_from_slice(&bytes[small(cursor - at)..small(upto - at)]);
            cursor = upto;
            if cursor == end {
                return true;
            }
        }
        into.truncate(start);
        false
    }

    /// Reads the stream up to `to` (or its end), discarding.
    fn skip_to(&mut self, to: u64) -> io::Result<()> {
        if self.pos >= to {
            return Ok(());
        }
        self.keep_recent();
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(SKIP_CHUNK, 0);
        let mut result = Ok(());
        while self.pos < to {
            let n = small((to - self.pos).min(SKIP_CHUNK as u64));
            let at = self.pos;
            match self.read_stream(&mut scratch[..n]) {
                Ok(0) => break,
                Ok(got) => self.keep_skipped_bytes(at, &scratch[..got]),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.scratch = scratch;
        result
    }

    /// Fills `buf` from the stream (fewer bytes only at its end), checking
    /// the bytes against pending metadata and keeping the last ones.
    fn read_stream(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let got = &buf[..filled];
        self.check_passed(self.pos, got)?;
        self.stash_passed(got);
        if got.len() >= RECENT {
            self.recent.clear();
            self.recent.extend_from_slice(&got[got.len() - RECENT..]);
        } else {
            let excess = (self.recent.len() + got.len()).saturating_sub(RECENT);
            self.recent.drain(..excess);
            self.recent.extend_from_slice(got);
        }
        self.pos += filled as u64;
        Ok(filled)
    }

    /// Finds the host ranges of the L2 table for guest clusters `first..`
    /// `first + here` that the stream will have passed when their turn
    /// comes (a cluster further on in guest order lies beyond them), so
    /// that [`Self::stash_passed`] keeps them. Those within [`RECENT`] of
    /// the furthest point are left to `recent`.
    fn plan_stash(&mut self, table: &[u8], first: u64, here: u64) -> anyhow::Result<()> {
        self.wanted.clear();
        self.stash.clear();
        self.stash_bytes = 0;
        let mut reach = self.pos;
        // Ranges past the budget would be read by Range anyway: not noted,
        // so the plan stays as bounded as the stash.
        let mut planned = 0u64;
        let mut want = |host: u64, len: u64, wanted: &mut BTreeMap<u64, u64>| {
            if host >= self.pos
                && host.saturating_add(RECENT as u64) < reach
                && planned + len <= STASH_BUDGET
            {
                wanted.insert(host, len);
                planned += len;
            }
            reach = reach.max(host + len);
        };
        for index in 0..here {
            let guest = (first + index) << self.header.cluster_bits;
            let keep = self.cluster_size.min(self.header.size - guest);
            match table::l2_entry(&self.header, table, index)? {
                Cluster::Zero => {}
                Cluster::Data(host) => want(host, keep, &mut self.wanted),
                Cluster::Compressed { offset, len } => want(offset, len, &mut self.wanted),
                Cluster::Subclusters { offset, allocated } => {
                    let sub = self.cluster_size / u64::from(SUBCLUSTERS);
                    for i in 0..u64::from(SUBCLUSTERS) {
                        if allocated & (1 << i) != 0 && i * sub < keep {
                            want(offset + i * sub, sub.min(keep - i * sub), &mut self.wanted);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Keeps the wanted ranges among stream bytes `bytes`, which end at
    /// `self.pos` (not yet advanced), while the budget allows.
    fn stash_passed(&mut self, bytes: &[u8]) {
        if self.wanted.is_empty() || bytes.is_empty() {
            return;
        }
        let at = self.pos;
        let end = at + bytes.len() as u64;
        let longest = self.cluster_size + 512;
        let candidates: Vec<(u64, u64)> = self
            .wanted
            .range(at.saturating_sub(longest)..end)
            .map(|(&start, &len)| (start, len))
            .filter(|&(start, len)| start + len > at)
            .collect();
        for (start, len) in candidates {
            let from = start.max(at);
            let to = (start + len).min(end);
            let kept = self.stash.get(&start).map_or(0, |b| b.len() as u64);
            // Bytes arrive in order; a range is kept whole or not at all.
            if from != start + kept {
                continue;
            }
            if kept == 0 {
                if self.stash_bytes + len > STASH_BUDGET {
                    continue;
                }
                self.stash_bytes += len;
                self.stash.insert(start, Vec::with_capacity(small(len)));
            }
            let buf = self.stash.get_mut(&start).expect("inserted above");
            buf.extend_from_slice(&bytes[small(from - at)..small(to - at)]);
            if to == start + len {
                self.wanted.remove(&start);
            }
        }
    }

    /// Hashes stream bytes `[at, at + bytes.len())` into the pending
    /// metadata ranges they cover, comparing each as it completes.
    fn check_passed(&mut self, at: u64, bytes: &[u8]) -> io::Result<()> {
        let end = at + bytes.len() as u64;
        let mut cursor = at;
        while cursor < end {
            if self.active.is_none() {
                let Some((&start, _)) = self.pending.range(cursor..end).next() else {
                    break;
                };
                let expected = self.pending.remove(&start).expect("just found");
                self.active = Some(Active {
                    start,
                    len: expected.len,
                    digest: expected.digest,
                    hasher: Sha256::new(),
                });
                cursor = start;
            }
            let active = self.active.as_mut().expect("set above");
            let active_end = active.start + active.len;
            let upto = end.min(active_end);
            let from = usize::try_from(cursor - at).expect("within bytes");
            let to = usize::try_from(upto - at).expect("within bytes");
            active.hasher.update(&bytes[from..to]);
            cursor = upto;
            if cursor == active_end {
                let active = self.active.take().expect("set above");
                let digest: [u8; 32] = active.hasher.finalize().into();
                if digest != active.digest {
                    return Err(invalid(format!(
                        "the qcow2 metadata at bytes {}..{active_end} read by Range differs \
                         from the same bytes in the stream: the file changed while being read",
                        active.start
                    )));
                }
                self.stats.checked.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Decodes compressed clusters: raw deflate or one zstd frame, each to
/// exactly one cluster.
pub struct ClusterDecoder {
    compression: ClusterCompression,
    cluster_size: u64,
    zstd: Option<ZstdContext>,
    deflate: flate2::Decompress,
}

impl ClusterDecoder {
    pub fn new(compression: ClusterCompression, cluster_size: u64) -> io::Result<Self> {
        let zstd = match compression {
            ClusterCompression::Zstd => Some(
                ZstdContext::new(crate::pipeline::zstd_decoder::WINDOW_LOG_MAX)
                    .map_err(io::Error::other)?,
            ),
            ClusterCompression::Deflate => None,
        };
        Ok(ClusterDecoder {
            compression,
            cluster_size,
            zstd,
            deflate: flate2::Decompress::new(false),
        })
    }

    fn corrupt(&self, unit: &CompressedCluster, what: impl std::fmt::Display) -> io::Error {
        invalid(format!(
            "corrupt {} cluster at host offset {} (guest byte {}): {what}",
            self.compression.name(),
            unit.host_offset,
            unit.guest_offset
        ))
    }

    /// Decodes `data` into `out[..cluster_size]`. Like QEMU, decoding stops
    /// once a whole cluster is out: the bytes after the compressed data
    /// belong to the next cluster or are padding.
    fn decode_cluster(
        &mut self,
        unit: &CompressedCluster,
        data: &[u8],
        out: &mut [u8],
    ) -> io::Result<()> {
        match self.compression {
            ClusterCompression::Deflate => {
                self.deflate.reset(false);
                let status = self
                    .deflate
                    .decompress(data, out, flate2::FlushDecompress::Finish)
                    .map_err(|e| self.corrupt(unit, e))?;
                let produced = self.deflate.total_out();
                if produced != out.len() as u64 {
                    return Err(self.corrupt(
                        unit,
                        format!(
                            "{produced} bytes decoded, a cluster is {} ({status:?})",
                            out.len()
                        ),
                    ));
                }
            }
            ClusterCompression::Zstd => {
                let context = self.zstd.as_mut().expect("made for zstd");
                context.reset();
                let (mut read, mut written) = (0, 0);
                while written < out.len() {
                    let step = context
                        .decompress(&data[read..], &mut out[written..])
                        .map_err(|e| {
                            invalid(format!(
                                "corrupt zstd cluster at host offset {} (guest byte {}): {e}",
                                unit.host_offset, unit.guest_offset
                            ))
                        })?;
                    read += step.read;
                    written += step.written;
                    if step.frame_done && written < out.len() || step.read == 0 && step.written == 0
                    {
                        return Err(invalid(format!(
                            "corrupt zstd cluster at host offset {} (guest byte {}): {written} \
                             bytes decoded, a cluster is {}",
                            unit.host_offset,
                            unit.guest_offset,
                            out.len()
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

impl UnitDecoder for ClusterDecoder {
    type Unit = CompressedCluster;

    fn decode(
        &mut self,
        unit: &CompressedCluster,
        data: &[u8],
        _output_limit: u64,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        let size = usize::try_from(self.cluster_size).expect("at most 2 MiB");
        if out.len() < size {
            out.resize(size, 0);
        }
        self.decode_cluster(unit, data, &mut out[..size])?;
        Ok(unit.keep)
    }

    /// Never used: a cluster (at most 2 MiB) always fits the budget whole;
    /// decoded whole here all the same.
    fn stream(
        &mut self,
        unit: &CompressedCluster,
        input: &mut dyn Read,
        output: &mut StreamOutput<'_>,
    ) -> io::Result<()> {
        use std::io::Write;
        let mut data = Vec::new();
        input.read_to_end(&mut data)?;
        let mut out = vec![0; usize::try_from(self.cluster_size).expect("at most 2 MiB")];
        self.decode_cluster(unit, &data, &mut out)?;
        output.write_all(&out[..unit.keep])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    struct Memory(Arc<Vec<u8>>);
    impl RangeSource for Memory {
        fn read_at(&mut self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            let start = small(offset).min(self.0.len());
            let end = small(offset + len).min(self.0.len());
            Ok(self.0[start..end].to_vec())
        }
    }

    /// A 64 KiB-cluster image whose first two guest clusters hold 0x11 and
    /// 0x22, made by `qemu-io`, and its L2 table's offset.
    fn two_clusters() -> (Vec<u8>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("two.qcow2");
        let img = img.to_str().unwrap();
        for args in [
            &["qemu-img", "create", "-q", "-f", "qcow2", img, "1M"][..],
            &[
                "qemu-io",
                "-f",
                "qcow2",
                "-c",
                "write -P 0x11 0 64k",
                "-c",
                "write -P 0x22 64k 64k",
                img,
            ],
        ] {
            let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let bytes = std::fs::read(img).unwrap();
        let header = Header::parse(&bytes).unwrap();
        let l1 = small(header.l1_offset);
        let l2 = u64::from_be_bytes(bytes[l1..l1 + 8].try_into().unwrap()) & 0x00ff_ffff_ffff_fe00;
        (bytes, l2)
    }

    fn guest(file: Vec<u8>, stream: Vec<u8>) -> (io::Result<Vec<u8>>, Arc<Qcow2Stats>) {
        let header = Header::parse(&file).unwrap();
        let l1 = small(header.l1_offset);
        let l1_bytes = file[l1..l1 + small(header.l1_bytes())].to_vec();
        let len = file.len() as u64;
        let (mut image, stats) = guest_image(
            header,
            l1_bytes,
            Some(len),
            Box::new(Cursor::new(stream)),
            Box::new(Memory(Arc::new(file))),
            OrderedConfig::new(2, 64 << 20),
        );
        let mut out = Vec::new();
        let result = image.read_to_end(&mut out).map(|_| out);
        (result, stats)
    }

    fn expected() -> Vec<u8> {
        let mut want = vec![0x11; 64 << 10];
        want.resize(128 << 10, 0x22);
        want.resize(1 << 20, 0);
        want
    }

    #[test]
    fn clusters_passed_before_their_turn_are_kept_as_the_stream_passes() {
        let (mut file, l2) = two_clusters();
        let l2 = small(l2);
        let entry = |f: &[u8], i: usize| {
            u64::from_be_bytes(f[l2 + 8 * i..l2 + 8 * i + 8].try_into().unwrap())
        };
        let (a, b) = (entry(&file, 0), entry(&file, 1));
        let (ha, hb) = (small(a & 0xffff_ffff_fe00), small(b & 0xffff_ffff_fe00));
        assert!(ha < hb);
        // Swap the two data clusters and their L2 entries: guest cluster 1
        // now lies before guest cluster 0 in the file.
        let first = file[ha..ha + (64 << 10)].to_vec();
        let second = file[hb..hb + (64 << 10)].to_vec();
        file[ha..ha + (64 << 10)].copy_from_slice(&second);
        file[hb..hb + (64 << 10)].copy_from_slice(&first);
        file[l2..l2 + 8].copy_from_slice(&b.to_be_bytes());
        file[l2 + 8..l2 + 16].copy_from_slice(&a.to_be_bytes());
        let (result, stats) = guest(file.clone(), file);
        assert!(result.unwrap() == expected());
        assert_eq!(stats.refetched.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn clusters_passed_before_their_table_is_known_are_read_again_by_range() {
        let (mut file, l2) = two_clusters();
        let header = Header::parse(&file).unwrap();
        let (l1, l2) = (small(header.l1_offset), small(l2));
        // Move the L2 table past 10 MiB of padding at the end of the file:
        // the stream passes both data clusters (further back than the
        // skipped bytes it keeps) before the table says they are needed.
        let cluster = 64 << 10;
        let table = file[l2..l2 + cluster].to_vec();
        file.resize(file.len().next_multiple_of(cluster) + (10 << 20), 0);
        let moved = file.len();
        file.extend_from_slice(&table);
        let l1_entry = u64::from_be_bytes(file[l1..l1 + 8].try_into().unwrap());
        let l1_flags = l1_entry & !0xffff_ffff_fe00;
        file[l1..l1 + 8].copy_from_slice(&(l1_flags | moved as u64).to_be_bytes());
        let (result, stats) = guest(file.clone(), file);
        assert!(result.unwrap() == expected());
        assert_eq!(stats.refetched.load(Ordering::Relaxed), 128 << 10);
    }

    #[test]
    fn bytes_skipped_on_the_way_to_the_table_are_kept() {
        let (mut file, l2) = two_clusters();
        let header = Header::parse(&file).unwrap();
        let (l1, l2) = (small(header.l1_offset), small(l2));
        let entry0 = u64::from_be_bytes(file[l2..l2 + 8].try_into().unwrap());
        let data0 = small(entry0 & 0xffff_ffff_fe00);
        assert!(l2 < data0);
        // Swap the L2 table with guest cluster 0's data: the stream passes
        // the data on its way to the table, before the table is known, and
        // keeps it among the bytes it skipped.
        let cluster = 64 << 10;
        let table = file[l2..l2 + cluster].to_vec();
        let data = file[data0..data0 + cluster].to_vec();
        file[l2..l2 + cluster].copy_from_slice(&data);
        file[data0..data0 + cluster].copy_from_slice(&table);
        let flags = entry0 & !0xffff_ffff_fe00;
        file[data0..data0 + 8].copy_from_slice(&(flags | l2 as u64).to_be_bytes());
        let l1_entry = u64::from_be_bytes(file[l1..l1 + 8].try_into().unwrap());
        let l1_flags = l1_entry & !0xffff_ffff_fe00;
        file[l1..l1 + 8].copy_from_slice(&(l1_flags | data0 as u64).to_be_bytes());
        let (result, stats) = guest(file.clone(), file);
        assert!(result.unwrap() == expected());
        assert_eq!(stats.refetched.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_file_in_guest_order_is_one_pass_and_its_l1_is_checked() {
        let (file, _) = two_clusters();
        let (result, stats) = guest(file.clone(), file);
        assert!(result.unwrap() == expected());
        assert_eq!(stats.refetched.load(Ordering::Relaxed), 0);
        assert_eq!(stats.checked.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn metadata_that_differs_in_the_stream_fails_the_image() {
        let (file, _) = two_clusters();
        let header = Header::parse(&file).unwrap();
        let mut changed = file.clone();
        // The L1 entry's COPIED bit (63): the image is the same, the file
        // is not.
        changed[small(header.l1_offset)] ^= 0x80;
        let (result, _) = guest(file, changed);
        let Err(e) = result else {
            panic!("the changed file was not noticed")
        };
        let e = e.to_string();
        assert!(e.contains("the file changed while being read"), "{e}");
    }
}
