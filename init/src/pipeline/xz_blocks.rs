//! Decodes a multi-block xz stream on several threads, in order.
//!
//! The blocks of an xz stream are independent (xz file format 1.x, §3), and
//! `xz -T` and `xz --block-size` write each block's Compressed Size and
//! Uncompressed Size in its header (§3.1.3), so a splitter thread can cut
//! whole blocks without decoding them. Each block is wrapped into a
//! one-block stream (the original stream header, the block, a one-record
//! index and a footer) and decoded by lzma-rust2's `XzReader` on a worker,
//! which verifies the block's check (CRC32, CRC64 or SHA-256) and handles
//! every filter chain the sequential decoder does. [`ParallelXzDecoder`]
//! hands the output back strictly in input order. The splitter verifies
//! the real index (every record against the blocks cut, its CRC32), the
//! footer, stream padding and concatenated streams, as strictly as
//! [`decode::XzDecoder`](super::decode::XzDecoder).
//!
//! When the first block of the file has no sizes in its header (plain
//! single-threaded `xz` writes none) or is larger than `max_block_output`,
//! the whole file is decoded sequentially by `decode::XzDecoder` on the
//! splitter thread, streamed in 1 MiB chunks. A later block without sizes,
//! or too large, is an error naming it: only a concatenation of files made
//! by different encoders has one; such a file is refused with a hint to
//! recompress it in one go.
//!
//! Memory is bounded whatever the stream size: at most `threads + 2`
//! blocks are in flight (one being cut, `threads` queued or decoding, one
//! being read out), each holding its compressed bytes (at most
//! `max_block_output` plus 1/1024 plus 64 KiB) and its output (at most
//! `max_block_output`), plus each worker's dictionary (capped by
//! `XZ_MEMORY_LIMIT`, 8 MiB for `-6`). For `xz -6 -T2` (24 MiB blocks,
//! about 4 MiB compressed for this benchmark's image) and 2 threads that
//! is about 4 × 28 MiB + 16 MiB; the default limit of 32 MiB per block
//! caps it at 4 × 64 MiB + 16 MiB.
//!
//! Dropping the decoder early cancels the work: every thread stops at its
//! next channel operation or job, and none is joined, so a drop never
//! blocks on an input stuck in a read.

use std::io::{self, BufReader, ErrorKind, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use lzma_rust2::XzReader;

use super::decode::{XZ_MEMORY_LIMIT, XzDecoder};
use super::read_full;

const STREAM_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Sequential output moves through the item queue in chunks of this size.
const STREAM_CHUNK: usize = 1 << 20;

/// Blocks that decode to at most this run in parallel: `xz -T` makes blocks
/// of three dictionaries, 24 MiB for the default `-6`.
pub const DEFAULT_MAX_BLOCK_OUTPUT: usize = 32 << 20;

/// Reads the decoded bytes of an xz file whose blocks are decoded on worker
/// threads; see the module documentation for the memory bound.
pub struct ParallelXzDecoder {
    items: Option<Receiver<Item>>,
    data: Vec<u8>,
    pos: usize,
    /// Every later read repeats the first error: the stream cannot go on.
    failed: Option<(ErrorKind, String)>,
    cancelled: Arc<AtomicBool>,
    /// Spent output buffers go back to the workers.
    outputs: BufferPool,
    /// Dies when the last thread exits; lets tests prove none leaked.
    #[cfg(test)]
    alive: std::sync::Weak<()>,
}

/// Recycled buffers: musl's malloc maps and unmaps every block-sized
/// allocation, so fresh buffers would fault in every output byte again.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut pool| pool.pop());
        let mut buf = reused.unwrap_or_default();
        buf.clear();
        buf.reserve(capacity);
        buf
    }

    fn put(&self, buf: Vec<u8>) {
        if buf.capacity() > 0 {
            if let Ok(mut pool) = self.0.lock() {
                pool.push(buf);
            }
        }
    }
}

/// One entry per block (or sequential chunk), in input order.
enum Item {
    Block(Receiver<io::Result<Vec<u8>>>),
    Data(Vec<u8>),
    Failed(io::Error),
    End,
}

struct Job {
    offset: u64,
    stream: Vec<u8>,
    uncompressed: u64,
    result: SyncSender<io::Result<Vec<u8>>>,
}

impl ParallelXzDecoder {
    pub fn new(input: impl Read + Send + 'static, threads: usize) -> Self {
        Self::with_max_block_output(input, threads, DEFAULT_MAX_BLOCK_OUTPUT)
    }

    pub fn with_max_block_output(
        input: impl Read + Send + 'static,
        threads: usize,
        max_block_output: usize,
    ) -> Self {
        let threads = threads.max(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(());
        let (items_tx, items_rx) = mpsc::sync_channel(threads);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let inputs = BufferPool::default();
        let outputs = BufferPool::default();
        let mut decoder = ParallelXzDecoder {
            items: Some(items_rx),
            data: Vec::new(),
            pos: 0,
            failed: None,
            cancelled: Arc::clone(&cancelled),
            outputs: outputs.clone(),
            #[cfg(test)]
            alive: Arc::downgrade(&alive),
        };
        for n in 0..threads {
            let jobs = Arc::clone(&jobs_rx);
            let cancelled = Arc::clone(&cancelled);
            let alive = Arc::clone(&alive);
            let pools = (inputs.clone(), outputs.clone());
            let spawned = thread::Builder::new()
                .name(format!("xz-decode-{n}"))
                .spawn(move || {
                    let _alive = alive;
                    run_worker(&jobs, &cancelled, &pools.0, &pools.1);
                });
            if let Err(e) = spawned {
                decoder.fail_to_start(&e);
                return decoder;
            }
        }
        let max = u64::try_from(max_block_output.max(1)).unwrap_or(u64::MAX);
        let splitter = Splitter {
            input: BufReader::with_capacity(STREAM_CHUNK, input),
            pos: 0,
            max_block_output: max,
            buffers: inputs,
            outputs,
            items: items_tx,
            jobs: jobs_tx,
            cancelled,
        };
        let spawned = thread::Builder::new()
            .name("xz-split".into())
            .spawn(move || {
                let _alive = alive;
                splitter.run();
            });
        if let Err(e) = spawned {
            decoder.fail_to_start(&e);
        }
        decoder
    }

    fn fail_to_start(&mut self, e: &io::Error) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.items = None;
        self.failed = Some((e.kind(), format!("starting xz decoder threads: {e}")));
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let rest = self.data.get(self.pos..).unwrap_or_default();
            if !rest.is_empty() {
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                self.pos += n;
                return Ok(n);
            }
            let Some(items) = &self.items else {
                return Ok(0);
            };
            let item = items.recv().unwrap_or_else(|_| Item::Failed(thread_died()));
            self.pos = 0;
            self.outputs.put(std::mem::take(&mut self.data));
            self.data = match item {
                Item::Block(rx) => rx.recv().unwrap_or_else(|_| Err(thread_died()))?,
                Item::Data(data) => data,
                Item::Failed(e) => return Err(e),
                Item::End => {
                    self.items = None;
                    return Ok(0);
                }
            };
        }
    }
}

impl Read for ParallelXzDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_inner(buf).inspect_err(|e| {
            self.cancelled.store(true, Ordering::Relaxed);
            self.items = None;
            self.failed = Some((e.kind(), e.to_string()));
        })
    }
}

impl Drop for ParallelXzDecoder {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

fn thread_died() -> io::Error {
    io::Error::other("xz decoder thread stopped unexpectedly")
}

fn corrupt(offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("corrupt xz stream at input byte {offset}: {what}"),
    )
}

fn truncated(at: u64) -> io::Error {
    io::Error::new(
        ErrorKind::UnexpectedEof,
        format!("xz stream truncated at input byte {at}"),
    )
}

fn trailing_garbage(at: u64) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("trailing garbage after the xz stream at input byte {at}"),
    )
}

/// Why the splitter stopped early: an error to pass on, or nobody listens.
enum Stop {
    Failed(io::Error),
    Cancelled,
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Failed(e)
    }
}

/// A block header's fields the splitter needs (§3.1).
struct BlockHeader {
    compressed: u64,
    uncompressed: u64,
}

/// Parses a whole block header (size byte through CRC32); `Ok(None)` when
/// it lacks either size.
fn parse_block_header(header: &[u8]) -> Result<Option<BlockHeader>, &'static str> {
    let (body, crc) = header.split_at(header.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err("block header CRC32 mismatch");
    }
    let flags = body[1];
    if flags & 0x3C != 0 {
        return Err("reserved bits set in the block flags");
    }
    let mut fields = &body[2..];
    let compressed = if flags & 0x40 != 0 {
        Some(varint(&mut fields).ok_or("bad compressed size")?)
    } else {
        None
    };
    let uncompressed = if flags & 0x80 != 0 {
        Some(varint(&mut fields).ok_or("bad uncompressed size")?)
    } else {
        None
    };
    Ok(match (compressed, uncompressed) {
        (Some(0), _) => return Err("compressed size is zero"),
        (Some(compressed), Some(uncompressed)) => Some(BlockHeader {
            compressed,
            uncompressed,
        }),
        _ => None,
    })
}

/// A multibyte integer (§1.2): at most 9 bytes, no trailing zero byte.
fn varint(data: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let (&byte, rest) = data.split_first()?;
        *data = rest;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            if byte == 0 && i > 0 {
                return None;
            }
            return Some(value);
        }
    }
    None
}

fn encode_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(u8::try_from(value & 0x7F).unwrap_or(0) | 0x80);
        value >>= 7;
    }
    out.push(u8::try_from(value).unwrap_or(0));
}

/// Check field length for a check ID (§2.1.1.2).
fn check_len(check_id: u8) -> u64 {
    match check_id {
        0 => 0,
        1..=3 => 4,
        4..=6 => 8,
        7..=9 => 16,
        10..=12 => 32,
        _ => 64,
    }
}

fn pad4(len: u64) -> u64 {
    (4 - len % 4) % 4
}

/// Cuts the input into blocks and queues them; runs on its own thread.
struct Splitter<R> {
    input: R,
    pos: u64,
    max_block_output: u64,
    /// For the blocks' compressed bytes.
    buffers: BufferPool,
    /// For the sequential decoder's output.
    outputs: BufferPool,
    items: SyncSender<Item>,
    jobs: Sender<Job>,
    cancelled: Arc<AtomicBool>,
}

impl<R: Read> Splitter<R> {
    fn run(mut self) {
        let result = match self.split_all() {
            Ok(Some(prefix)) => self.decode_sequentially(prefix),
            Ok(None) => Ok(()),
            Err(stop) => Err(stop),
        };
        let end = match result {
            Ok(()) => Item::End,
            Err(Stop::Failed(e)) => Item::Failed(e),
            Err(Stop::Cancelled) => return,
        };
        let _ = self.items.send(end);
    }

    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_full(&mut self.input, buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading xz input at byte {}: {e}", self.pos),
            )
        })?;
        self.pos += n as u64;
        Ok(n)
    }

    fn fill_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.fill(buf)? < buf.len() {
            return Err(truncated(self.pos));
        }
        Ok(())
    }

    /// `Some(bytes read so far)` when the file must be decoded sequentially.
    fn split_all(&mut self) -> Result<Option<Vec<u8>>, Stop> {
        let mut header = [0u8; 12];
        let got = self.fill(&mut header)?;
        if got < header.len() || header[..6] != STREAM_MAGIC {
            if got < header.len() && STREAM_MAGIC.starts_with(&header[..got.min(6)]) && got > 0 {
                return Err(truncated(self.pos).into());
            }
            return Err(corrupt(0, "not an xz stream").into());
        }
        let mut first = true;
        loop {
            let stream_start = self.pos - 12;
            check_stream_header(&header, stream_start)?;
            if let Some(prefix) = self.split_stream(header, first)? {
                return Ok(Some(prefix));
            }
            first = false;
            // Stream padding: zeros in multiples of four, then another
            // stream or the end (§2.2).
            loop {
                let at = self.pos;
                let mut word = [0u8; 4];
                match self.fill(&mut word)? {
                    0 => return Ok(None),
                    4 if word == [0; 4] => {}
                    4 if word == STREAM_MAGIC[..4] => {
                        header[..4].copy_from_slice(&word);
                        if self.fill(&mut header[4..])? < 8 || header[..6] != STREAM_MAGIC {
                            return Err(trailing_garbage(at).into());
                        }
                        break;
                    }
                    _ => return Err(trailing_garbage(at).into()),
                }
            }
        }
    }

    /// Cuts one stream's blocks and checks its index and footer. Returns
    /// the bytes read so far when the file must be decoded sequentially.
    fn split_stream(
        &mut self,
        stream_header: [u8; 12],
        first: bool,
    ) -> Result<Option<Vec<u8>>, Stop> {
        let check = check_len(stream_header[7] & 0x0F);
        let mut records: Vec<(u64, u64)> = Vec::new();
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(Stop::Cancelled);
            }
            let block_at = self.pos;
            let mut size = [0u8; 1];
            self.fill_exact(&mut size)?;
            if size[0] == 0 {
                self.check_index(&records, stream_header, block_at)?;
                return Ok(None);
            }
            let header_len = (usize::from(size[0]) + 1) * 4;
            let mut block = vec![0u8; header_len];
            block[0] = size[0];
            self.fill_exact(&mut block[1..])?;
            let parsed = parse_block_header(&block).map_err(|e| corrupt(block_at, e))?;
            let limit = self.max_block_output + self.max_block_output / 1024 + (64 << 10);
            let fits = parsed
                .as_ref()
                .is_some_and(|h| h.uncompressed <= self.max_block_output && h.compressed <= limit);
            let Some(parsed) = parsed.filter(|_| fits) else {
                if first && records.is_empty() {
                    let mut prefix = stream_header.to_vec();
                    prefix.extend_from_slice(&block);
                    return Ok(Some(prefix));
                }
                let msg = "block without sizes in its header, or larger than 32 MiB, after \
                           other blocks; recompress the image in one go with `xz -T0`";
                return Err(corrupt(block_at, msg).into());
            };
            let header_len = header_len as u64;
            let unpadded = header_len + parsed.compressed + check;
            let body = parsed.compressed + pad4(parsed.compressed) + check;
            let mut stream = self
                .buffers
                .take(usize::try_from(12 + header_len + body + 64).unwrap_or(0));
            stream.extend_from_slice(&stream_header);
            stream.extend_from_slice(&block);
            let old = stream.len();
            stream.resize(old + usize::try_from(body).unwrap_or(usize::MAX), 0);
            self.fill_exact(&mut stream[old..])?;
            let index = one_record_index(unpadded, parsed.uncompressed);
            stream.extend_from_slice(&index);
            stream.extend_from_slice(&footer(&index, [stream_header[6], stream_header[7]]));
            records.push((unpadded, parsed.uncompressed));
            let (result, rx) = mpsc::sync_channel(1);
            self.items
                .send(Item::Block(rx))
                .map_err(|_| Stop::Cancelled)?;
            let job = Job {
                offset: block_at,
                stream,
                uncompressed: parsed.uncompressed,
                result,
            };
            self.jobs.send(job).map_err(|_| Stop::Cancelled)?;
        }
    }

    /// Reads the index after its indicator byte, then the footer (§4, §2.1.2).
    fn check_index(
        &mut self,
        records: &[(u64, u64)],
        stream_header: [u8; 12],
        index_at: u64,
    ) -> io::Result<()> {
        let mut index = vec![0u8];
        let bad = |what: &str| corrupt(index_at, format!("index: {what}"));
        let count = self.read_varint(&mut index)?;
        if count != records.len() as u64 {
            return Err(bad("record count differs from the blocks"));
        }
        for &(unpadded, uncompressed) in records {
            if self.read_varint(&mut index)? != unpadded
                || self.read_varint(&mut index)? != uncompressed
            {
                return Err(bad("record differs from its block"));
            }
        }
        let mut padding = vec![0u8; usize::try_from(pad4(index.len() as u64)).unwrap_or(0)];
        self.fill_exact(&mut padding)?;
        if padding.iter().any(|&b| b != 0) {
            return Err(bad("non-zero padding"));
        }
        index.extend_from_slice(&padding);
        let mut crc = [0u8; 4];
        self.fill_exact(&mut crc)?;
        if crc32fast::hash(&index).to_le_bytes() != crc {
            return Err(bad("CRC32 mismatch"));
        }
        index.extend_from_slice(&crc);
        let footer_at = self.pos;
        let mut found = [0u8; 12];
        self.fill_exact(&mut found)?;
        if found != footer(&index, [stream_header[6], stream_header[7]]) {
            return Err(corrupt(footer_at, "stream footer does not match"));
        }
        Ok(())
    }

    fn read_varint(&mut self, index: &mut Vec<u8>) -> io::Result<u64> {
        let start = index.len();
        loop {
            let mut byte = [0u8; 1];
            self.fill_exact(&mut byte)?;
            index.push(byte[0]);
            if byte[0] & 0x80 == 0 || index.len() - start >= 9 {
                break;
            }
        }
        let at = self.pos;
        varint(&mut &index[start..]).ok_or_else(|| corrupt(at, "index: bad integer"))
    }

    /// Decodes the whole file with the sequential decoder, here; its errors
    /// count input bytes from the start of the file, as the prefix holds
    /// every byte read so far.
    fn decode_sequentially(&mut self, prefix: Vec<u8>) -> Result<(), Stop> {
        let mut decoder = XzDecoder::new(io::Cursor::new(prefix).chain(&mut self.input));
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(Stop::Cancelled);
            }
            let mut chunk = self.outputs.take(STREAM_CHUNK);
            chunk.resize(STREAM_CHUNK, 0);
            let n = read_full(&mut decoder, &mut chunk)?;
            chunk.truncate(n);
            if n > 0 {
                self.items
                    .send(Item::Data(chunk))
                    .map_err(|_| Stop::Cancelled)?;
            }
            if n < STREAM_CHUNK {
                return Ok(());
            }
        }
    }
}

fn check_stream_header(header: &[u8; 12], at: u64) -> io::Result<()> {
    if crc32fast::hash(&header[6..8]).to_le_bytes() != header[8..12] {
        return Err(corrupt(at, "stream header CRC32 mismatch"));
    }
    if header[6] != 0 || header[7] & 0xF0 != 0 {
        return Err(corrupt(at, "unsupported stream flags"));
    }
    Ok(())
}

/// The index of a one-block stream: indicator, count, record, padding, CRC32.
fn one_record_index(unpadded: u64, uncompressed: u64) -> Vec<u8> {
    let mut index = vec![0u8, 1];
    encode_varint(unpadded, &mut index);
    encode_varint(uncompressed, &mut index);
    index.resize(
        index.len() + usize::try_from(pad4(index.len() as u64)).unwrap_or(0),
        0,
    );
    let crc = crc32fast::hash(&index);
    index.extend_from_slice(&crc.to_le_bytes());
    index
}

/// The stream footer that goes with `index` (which includes its CRC32).
fn footer(index: &[u8], flags: [u8; 2]) -> [u8; 12] {
    let backward = u32::try_from(index.len() / 4 - 1).unwrap_or(u32::MAX);
    let mut footer = [0u8; 12];
    footer[4..8].copy_from_slice(&backward.to_le_bytes());
    footer[8..10].copy_from_slice(&flags);
    footer[10..12].copy_from_slice(&FOOTER_MAGIC);
    let crc = crc32fast::hash(&footer[4..10]);
    footer[..4].copy_from_slice(&crc.to_le_bytes());
    footer
}

fn run_worker(
    jobs: &Mutex<Receiver<Job>>,
    cancelled: &AtomicBool,
    inputs: &BufferPool,
    outputs: &BufferPool,
) {
    loop {
        let job = {
            let Ok(jobs) = jobs.lock() else { return };
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if cancelled.load(Ordering::Relaxed) {
            continue;
        }
        let decoded = decode_block(&job, outputs.take(0));
        inputs.put(job.stream);
        let _ = job.result.send(decoded);
    }
}

fn decode_block(job: &Job, mut out: Vec<u8>) -> io::Result<Vec<u8>> {
    let len = usize::try_from(job.uncompressed).unwrap_or(usize::MAX);
    out.reserve(len);
    let mut reader = XzReader::new_mem_limit(&job.stream[..], false, XZ_MEMORY_LIMIT);
    // One byte past the declared size: a block that decodes to more is corrupt.
    (&mut reader)
        .take(job.uncompressed + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(job.offset, format!("block: {e}")))?;
    if out.len() != len {
        return Err(corrupt(
            job.offset,
            format!(
                "block decoded to {} bytes, its header says {len}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use std::process::{Command, Stdio};

    fn payload(len: usize) -> Vec<u8> {
        // Compressible but not trivially: a counter mixed into text.
        (0..len)
            .map(|i| {
                let x = u32::try_from(i).unwrap();
                u8::try_from((x.wrapping_mul(2_654_435_761) >> 27) % 16).unwrap() + b'a'
            })
            .collect()
    }

    fn xz_cli(args: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = Command::new("xz")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz on PATH");
        let mut stdin = child.stdin.take().unwrap();
        let data = data.to_vec();
        let writer = thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn blocks(data: &[u8]) -> Vec<u8> {
        xz_cli(&["-c", "-1", "-T2", "--block-size=64KiB"], data)
    }

    fn decode(input: Vec<u8>, threads: usize) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ParallelXzDecoder::new(Cursor::new(input), threads).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn multi_block_files_decode_identically_on_one_and_four_threads() {
        let data = payload(1_000_003);
        for check in ["crc32", "crc64", "sha256", "none"] {
            let arg = format!("--check={check}");
            let input = xz_cli(&["-c", "-1", "-T2", "--block-size=100KiB", &arg], &data);
            assert_eq!(decode(input.clone(), 1).unwrap(), data, "{check}");
            assert_eq!(decode(input, 4).unwrap(), data, "{check}");
        }
    }

    #[test]
    fn single_block_files_fall_back_to_sequential_decoding() {
        let data = payload(300_000);
        let input = xz_cli(&["-c", "-1", "-T1"], &data);
        assert_eq!(decode(input.clone(), 4).unwrap(), data);
        // Filters the block decoder is not asked about go through too.
        let x86 = xz_cli(&["-c", "--x86", "--lzma2=preset=1"], &data);
        assert_eq!(decode(x86, 4).unwrap(), data);
        let empty = xz_cli(&["-c", "-T2"], b"");
        assert_eq!(decode(empty, 4).unwrap(), b"");
    }

    #[test]
    fn blocks_larger_than_the_limit_decode_sequentially() {
        let data = payload(500_000);
        let input = blocks(&data);
        let mut out = Vec::new();
        ParallelXzDecoder::with_max_block_output(Cursor::new(input), 2, 1000)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn concatenated_streams_and_padding() {
        let data = payload(200_000);
        let mut input = blocks(&data[..100_000]);
        input.extend_from_slice(&[0; 8]);
        input.extend_from_slice(&blocks(&data[100_000..]));
        assert_eq!(decode(input.clone(), 3).unwrap(), data);
        let len = input.len();
        input.extend_from_slice(&[0; 3]);
        assert_eq!(
            decode(input, 3).unwrap_err().to_string(),
            format!("trailing garbage after the xz stream at input byte {len}")
        );
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        let input = blocks(&payload(200_000));
        let len = input.len();
        for garbage in [
            &b"garbage!"[..],
            b"\n",
            &[0xFD, b'7', b'z', b'X', 0, 0, 0, 0],
        ] {
            let mut bad = input.clone();
            bad.extend_from_slice(garbage);
            let err = decode(bad, 2).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidData);
            assert_eq!(
                err.to_string(),
                format!("trailing garbage after the xz stream at input byte {len}")
            );
        }
    }

    #[test]
    fn truncation_anywhere_is_an_error() {
        let data = payload(300_000);
        let input = blocks(&data);
        let step = input.len() / 97 + 1;
        for cut in (1..input.len()).step_by(step).chain([input.len() - 1]) {
            let err = decode(input[..cut].to_vec(), 2).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::InvalidData
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_is_an_error_naming_an_offset() {
        let data = payload(300_000);
        let input = blocks(&data);
        let step = input.len() / 61 + 1;
        for at in (0..input.len()).step_by(step) {
            let mut bad = input.clone();
            bad[at] ^= 0x04;
            let err = decode(bad, 2).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidData, "flip at {at}: {err}");
            assert!(err.to_string().contains("input byte"), "{err}");
        }
    }

    #[test]
    fn sequential_decoder_fixtures_decode_the_same() {
        let data = payload(400_000);
        for args in [
            &["-c", "--block-size=100KiB", "--check=crc32"][..],
            &["-c", "-0", "--check=sha256"],
            &["-c", "--delta=dist=4", "--lzma2=preset=1"],
        ] {
            let input = xz_cli(args, &data);
            let mut expected = Vec::new();
            XzDecoder::new(Cursor::new(input.clone()))
                .read_to_end(&mut expected)
                .unwrap();
            assert_eq!(decode(input, 2).unwrap(), expected, "{args:?}");
        }
    }

    #[test]
    fn not_xz_is_an_error() {
        let err = decode(b"hello world, not xz".to_vec(), 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt xz stream at input byte 0: not an xz stream"
        );
        assert_eq!(
            decode(Vec::new(), 2).unwrap_err().kind(),
            ErrorKind::InvalidData
        );
    }

    #[test]
    fn early_drop_stops_every_thread() {
        let input = blocks(&payload(2_000_000));
        let mut decoder = ParallelXzDecoder::new(Cursor::new(input), 4);
        let mut buf = [0u8; 1000];
        decoder.read_exact(&mut buf).unwrap();
        let alive = decoder.alive.clone();
        drop(decoder);
        for _ in 0..500 {
            if alive.upgrade().is_none() {
                return;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("decoder threads still running 5 s after the drop");
    }
}
