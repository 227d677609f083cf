//! Decodes a multi-frame zstd stream on several threads, in order.
//!
//! ruzstd decodes one frame at about a third of libzstd's speed, but the
//! frames of a stream are independent (RFC 8878 §3.1), so files made by
//! `pzstd` or `zstd -B` can be decoded on every core. A splitter thread cuts
//! the input into whole frames by walking frame and block headers without
//! decoding; a pool of worker threads decodes them; [`ParallelZstdDecoder`]
//! hands the output back strictly in input order.
//!
//! A frame is decoded in parallel when its output is known to fit in
//! `max_frame_output`: its declared Frame_Content_Size, or when undeclared
//! the bound its block headers imply (128 KiB per compressed block). Any
//! other frame — a single-frame `zstd -T2` file, say — is streamed: the
//! splitter feeds its compressed bytes to one worker in 1 MiB chunks and
//! the worker passes 1 MiB output chunks on, so it is never held whole.
//!
//! Memory is bounded whatever the stream size: at most `threads + 2`
//! frames are in flight (one being cut, `threads` queued or decoding, one
//! being read out), each holding at most its compressed bytes (≤
//! `max_frame_output` + 1/1024 + 1 KiB, past which a frame is streamed) and
//! its output (≤ `max_frame_output`). So the bound is about
//! `(threads + 2) × 2 × max_frame_output`, 128 MiB for 2 threads and the
//! default 16 MiB (pzstd's frames are a few MiB); a streamed frame adds its window (≤ ruzstd's
//! `DEFAULT_MAX_WINDOW_SIZE`) and a few MiB of chunks.
//!
//! Dropping the decoder early cancels the work: every thread stops at its
//! next channel operation or job, and none is joined, so a drop never
//! blocks on an input stuck in a read.

use std::io::{self, BufReader, ErrorKind, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread;

use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE_MAGIC_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// RFC 8878 §3.1.1.2.4: no block is larger than this, compressed or not.
const MAX_BLOCK_LEN: u32 = 128 << 10;
/// Streamed frames move through channels in chunks of this size.
const STREAM_CHUNK: usize = 1 << 20;
/// Chunks queued per direction of a streamed frame.
const STREAM_QUEUE: usize = 4;

/// Frames that decode to at most 64 MiB run in parallel by default:
/// `pzstd` and `zstd -B` frames are a few MiB, so this never binds for
/// them, and it caps memory per frame.
pub const DEFAULT_MAX_FRAME_OUTPUT: usize = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ZstdFramesConfig {
    /// Worker threads decoding frames (at least one is used).
    pub threads: usize,
    /// Largest frame output decoded in parallel; larger frames stream.
    pub max_frame_output: usize,
}

impl ZstdFramesConfig {
    pub fn new(threads: usize) -> Self {
        ZstdFramesConfig {
            threads,
            max_frame_output: DEFAULT_MAX_FRAME_OUTPUT,
        }
    }
}

/// Reads the decoded bytes of a zstd stream whose frames are decoded on
/// worker threads; see the module documentation for the memory bound.
pub struct ParallelZstdDecoder {
    items: Option<Receiver<Item>>,
    current: Current,
    /// Every later read repeats the first error: the stream cannot go on.
    failed: Option<(ErrorKind, String)>,
    cancelled: Arc<AtomicBool>,
    /// Spent output buffers go back to the workers.
    outputs: BufferPool,
    /// Dies when the last thread exits; lets tests prove none leaked.
    #[cfg(test)]
    alive: std::sync::Weak<()>,
}

enum Current {
    Idle,
    Buffered {
        data: Vec<u8>,
        pos: usize,
    },
    Streamed {
        rx: Receiver<StreamOut>,
        data: Vec<u8>,
        pos: usize,
    },
    Done,
}

/// One entry per data frame, in input order, then `End` or `Failed`.
enum Item {
    Buffered(Receiver<io::Result<Vec<u8>>>),
    Streamed(Receiver<StreamOut>),
    Failed(io::Error),
    End,
}

enum StreamOut {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

enum Job {
    Buffered {
        frame: FrameInfo,
        data: Vec<u8>,
        output_limit: u64,
        result: SyncSender<io::Result<Vec<u8>>>,
    },
    Streamed {
        frame: FrameInfo,
        chunks: Receiver<io::Result<Vec<u8>>>,
        out: SyncSender<StreamOut>,
    },
}

#[derive(Debug, Clone, Copy)]
struct FrameInfo {
    offset: u64,
    content_size: Option<u64>,
    checksum: bool,
}

impl ParallelZstdDecoder {
    pub fn new(input: impl Read + Send + 'static, threads: usize) -> Self {
        Self::with_config(input, ZstdFramesConfig::new(threads))
    }

    pub fn with_config(input: impl Read + Send + 'static, config: ZstdFramesConfig) -> Self {
        let threads = config.threads.max(1);
        let max_frame_output = config.max_frame_output.max(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(());
        // `threads` slots plus the frame the splitter holds and the one being
        // read out give the `threads + 2` frames of the module doc.
        let (items_tx, items_rx) = mpsc::sync_channel(threads);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let inputs = BufferPool::default();
        let outputs = BufferPool::default();
        let mut decoder = ParallelZstdDecoder {
            items: Some(items_rx),
            current: Current::Idle,
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
                .name(format!("zstd-decode-{n}"))
                .spawn(move || {
                    let _alive = alive;
                    run_worker(&jobs, &cancelled, &pools.0, &pools.1);
                });
            if let Err(e) = spawned {
                decoder.fail_to_start(&e);
                return decoder;
            }
        }
        let splitter = Splitter {
            // Block headers are 3-byte reads.
            input: BufReader::with_capacity(STREAM_CHUNK, input),
            buffers: inputs,
            pos: 0,
            max_frame_output: u64::try_from(max_frame_output).unwrap_or(u64::MAX),
            items: items_tx,
            jobs: jobs_tx,
            cancelled,
        };
        let spawned = thread::Builder::new()
            .name("zstd-split".into())
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
        self.failed = Some((e.kind(), format!("starting zstd decoder threads: {e}")));
    }

    fn fail(&mut self, e: &io::Error) -> io::Error {
        self.cancelled.store(true, Ordering::Relaxed);
        self.current = Current::Done;
        self.items = None;
        self.failed = Some((e.kind(), e.to_string()));
        io::Error::new(e.kind(), e.to_string())
    }

    /// Moves to the next frame's output; `Ok(false)` at the end of the stream.
    fn advance(&mut self) -> io::Result<bool> {
        let Some(items) = &self.items else {
            return Ok(false);
        };
        let item = items.recv().unwrap_or_else(|_| Item::Failed(thread_died()));
        match item {
            Item::Buffered(rx) => {
                let data = rx.recv().unwrap_or_else(|_| Err(thread_died()))?;
                self.current = Current::Buffered { data, pos: 0 };
            }
            Item::Streamed(rx) => {
                self.current = Current::Streamed {
                    rx,
                    data: Vec::new(),
                    pos: 0,
                };
            }
            Item::Failed(e) => return Err(e),
            Item::End => {
                self.current = Current::Done;
                self.items = None;
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.current {
                Current::Done => return Ok(0),
                Current::Idle => {
                    if !self.advance()? {
                        return Ok(0);
                    }
                }
                Current::Buffered { data, pos } => {
                    let n = copy_out(data, pos, buf);
                    if n > 0 {
                        return Ok(n);
                    }
                    self.outputs.put(std::mem::take(data));
                    self.current = Current::Idle;
                }
                Current::Streamed { rx, data, pos } => {
                    let n = copy_out(data, pos, buf);
                    if n > 0 {
                        return Ok(n);
                    }
                    match rx
                        .recv()
                        .unwrap_or_else(|_| StreamOut::Failed(thread_died()))
                    {
                        StreamOut::Data(next) => {
                            self.outputs.put(std::mem::replace(data, next));
                            *pos = 0;
                        }
                        StreamOut::End => self.current = Current::Idle,
                        StreamOut::Failed(e) => return Err(e),
                    }
                }
            }
        }
    }
}

fn copy_out(data: &[u8], pos: &mut usize, buf: &mut [u8]) -> usize {
    let rest = data.get(*pos..).unwrap_or_default();
    let n = rest.len().min(buf.len());
    buf[..n].copy_from_slice(&rest[..n]);
    *pos += n;
    n
}

fn thread_died() -> io::Error {
    io::Error::other("zstd decoder thread stopped unexpectedly")
}

impl Read for ParallelZstdDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_inner(buf).map_err(|e| self.fail(&e))
    }
}

impl Drop for ParallelZstdDecoder {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

fn corrupt(offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("corrupt zstd frame at input byte {offset}: {what}"),
    )
}

/// Cuts the input into frames and queues them; runs on its own thread.
struct Splitter<R> {
    input: R,
    buffers: BufferPool,
    pos: u64,
    max_frame_output: u64,
    items: SyncSender<Item>,
    jobs: Sender<Job>,
    cancelled: Arc<AtomicBool>,
}

/// Where the bytes of the frame being cut go.
enum Sink {
    Buffer,
    Stream(SyncSender<io::Result<Vec<u8>>>),
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

impl<R: Read> Splitter<R> {
    fn run(mut self) {
        let end = match self.split_all() {
            Ok(()) => Item::End,
            Err(Stop::Failed(e)) => Item::Failed(e),
            Err(Stop::Cancelled) => return,
        };
        // A closed channel means the reader is gone; nothing left to tell.
        let _ = self.items.send(end);
    }

    fn split_all(&mut self) -> Result<(), Stop> {
        loop {
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(Stop::Cancelled);
            }
            let start = self.pos;
            let mut magic = [0u8; 4];
            let got = self.fill(&mut magic)?;
            if got == 0 {
                if start == 0 {
                    return Err(Stop::Failed(io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "zstd stream is empty",
                    )));
                }
                return Ok(());
            }
            if got < magic.len() {
                let partial = &magic[..got];
                let zstd = ZSTD_MAGIC.to_le_bytes();
                let is_prefix = zstd.starts_with(partial)
                    || (partial[0] & 0xF0 == 0x50 && [0x2A, 0x4D].starts_with(&partial[1..]));
                if is_prefix {
                    return Err(truncated(self.pos, start).into());
                }
                return Err(not_a_frame(start).into());
            }
            let magic = u32::from_le_bytes(magic);
            if magic & SKIPPABLE_MAGIC_MASK == SKIPPABLE_MAGIC {
                self.skip_frame(start)?;
            } else if magic == ZSTD_MAGIC {
                self.split_frame(start)?;
            } else {
                return Err(not_a_frame(start).into());
            }
        }
    }

    /// Reads until `buf` is full or the input ends; returns the count.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.input.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("reading zstd input at byte {}: {e}", self.pos),
                    ));
                }
            }
        }
        Ok(filled)
    }

    fn fill_frame(&mut self, buf: &mut [u8], start: u64) -> io::Result<()> {
        if self.fill(buf)? < buf.len() {
            return Err(truncated(self.pos, start));
        }
        Ok(())
    }

    fn skip_frame(&mut self, start: u64) -> io::Result<()> {
        let mut size = [0u8; 4];
        self.fill_frame(&mut size, start)?;
        let mut left = u64::from(u32::from_le_bytes(size));
        let mut scratch = [0u8; 8192];
        while left > 0 {
            let n = usize::try_from(left)
                .unwrap_or(usize::MAX)
                .min(scratch.len());
            self.fill_frame(&mut scratch[..n], start)?;
            left -= n as u64;
        }
        Ok(())
    }

    fn split_frame(&mut self, start: u64) -> Result<(), Stop> {
        let mut sink = Sink::Buffer;
        let result = self.cut_frame(start, &mut sink);
        if let (Err(Stop::Failed(e)), Sink::Stream(tx)) = (&result, &sink) {
            // The worker decoding this frame reports it, in order.
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
        }
        result
    }

    fn cut_frame(&mut self, start: u64, sink: &mut Sink) -> Result<(), Stop> {
        let mut data = self.buffers.take(64 << 10);
        data.extend_from_slice(&ZSTD_MAGIC.to_le_bytes());
        let mut descriptor = [0u8; 1];
        self.fill_frame(&mut descriptor, start)?;
        data.push(descriptor[0]);
        let header = FrameHeaderLayout::parse(descriptor[0]).map_err(|e| corrupt(start, e))?;
        let mut rest = [0u8; 13];
        let rest = &mut rest[..header.rest_len()];
        self.fill_frame(rest, start)?;
        data.extend_from_slice(rest);
        let frame = FrameInfo {
            offset: start,
            content_size: header.content_size(rest),
            checksum: header.checksum,
        };

        // Past this many compressed bytes a frame is streamed: no encoder
        // makes a frame larger than its output plus 3 bytes per block.
        let buffer_limit = self.max_frame_output + self.max_frame_output / 1024 + 1024;
        if frame
            .content_size
            .is_some_and(|size| size > self.max_frame_output)
        {
            *sink = self.start_stream(frame)?;
        }
        let mut output_bound: u64 = 0;
        loop {
            let block_at = self.pos;
            let mut block = [0u8; 3];
            self.fill_frame(&mut block, start)?;
            data.extend_from_slice(&block);
            let block = u32::from(block[0]) | u32::from(block[1]) << 8 | u32::from(block[2]) << 16;
            let last = block & 1 == 1;
            let size = block >> 3;
            if size > MAX_BLOCK_LEN {
                let msg = format!("block at input byte {block_at} claims {size} bytes");
                return Err(corrupt(start, msg).into());
            }
            let body = match (block >> 1) & 3 {
                0 => size,
                1 => 1,
                2 => size,
                _ => {
                    let msg = format!("reserved block type at input byte {block_at}");
                    return Err(corrupt(start, msg).into());
                }
            };
            output_bound += if (block >> 1) & 3 == 2 {
                u64::from(MAX_BLOCK_LEN)
            } else {
                u64::from(size)
            };
            let body = usize::try_from(body).unwrap_or(usize::MAX);
            let old = data.len();
            data.resize(old + body, 0);
            self.fill_frame(&mut data[old..], start)?;
            if last {
                break;
            }
            match &*sink {
                Sink::Stream(tx) if data.len() >= STREAM_CHUNK => {
                    // Room for the block that crosses the threshold.
                    let next = self.buffers.take(STREAM_CHUNK + STREAM_CHUNK / 4);
                    send_chunk(tx, std::mem::replace(&mut data, next))?;
                }
                Sink::Buffer if data.len() as u64 > buffer_limit => {
                    *sink = self.start_stream(frame)?;
                }
                _ => {}
            }
        }
        if frame.checksum {
            let mut checksum = [0u8; 4];
            self.fill_frame(&mut checksum, start)?;
            data.extend_from_slice(&checksum);
        }

        let output_limit = frame.content_size.unwrap_or(output_bound);
        if let Sink::Buffer = sink {
            if output_limit <= self.max_frame_output {
                let (result, rx) = mpsc::sync_channel(1);
                self.queue(Item::Buffered(rx))?;
                let job = Job::Buffered {
                    frame,
                    data,
                    output_limit,
                    result,
                };
                return self.jobs.send(job).map_err(|_| Stop::Cancelled);
            }
            *sink = self.start_stream(frame)?;
        }
        if let Sink::Stream(tx) = sink {
            send_chunk(tx, data)?;
        }
        // Dropping the sender ends the streamed frame for its worker.
        *sink = Sink::Buffer;
        Ok(())
    }

    /// Turns the frame being cut into a streamed one; the bytes cut so far
    /// go out as its first chunk when the caller sends the next.
    fn start_stream(&mut self, frame: FrameInfo) -> Result<Sink, Stop> {
        let (chunks_tx, chunks) = mpsc::sync_channel(STREAM_QUEUE);
        let (out, out_rx) = mpsc::sync_channel(STREAM_QUEUE);
        self.queue(Item::Streamed(out_rx))?;
        let job = Job::Streamed { frame, chunks, out };
        self.jobs.send(job).map_err(|_| Stop::Cancelled)?;
        Ok(Sink::Stream(chunks_tx))
    }

    fn queue(&mut self, item: Item) -> Result<(), Stop> {
        self.items.send(item).map_err(|_| Stop::Cancelled)
    }
}

fn send_chunk(tx: &SyncSender<io::Result<Vec<u8>>>, chunk: Vec<u8>) -> Result<(), Stop> {
    tx.send(Ok(chunk)).map_err(|_| Stop::Cancelled)
}

fn truncated(at: u64, start: u64) -> io::Error {
    io::Error::new(
        ErrorKind::UnexpectedEof,
        format!("zstd stream truncated at input byte {at} (in the frame at input byte {start})"),
    )
}

fn not_a_frame(at: u64) -> io::Error {
    let msg = if at == 0 {
        "not a zstd stream: no frame magic at input byte 0".to_string()
    } else {
        format!("trailing garbage after the zstd stream at input byte {at}")
    };
    io::Error::new(ErrorKind::InvalidData, msg)
}

/// The field sizes of a frame header, from its descriptor byte (§3.1.1.1).
struct FrameHeaderLayout {
    single_segment: bool,
    checksum: bool,
    dict_id_len: usize,
    content_size_len: usize,
}

impl FrameHeaderLayout {
    fn parse(descriptor: u8) -> Result<Self, &'static str> {
        if descriptor & 0x08 != 0 {
            return Err("reserved bit set in the frame header");
        }
        let single_segment = descriptor & 0x20 != 0;
        let content_size_len = match descriptor >> 6 {
            0 if single_segment => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        Ok(FrameHeaderLayout {
            single_segment,
            checksum: descriptor & 0x04 != 0,
            dict_id_len: [0, 1, 2, 4][usize::from(descriptor & 3)],
            content_size_len,
        })
    }

    /// Bytes after the descriptor: window, dictionary id, content size.
    fn rest_len(&self) -> usize {
        usize::from(!self.single_segment) + self.dict_id_len + self.content_size_len
    }

    fn content_size(&self, rest: &[u8]) -> Option<u64> {
        let field = rest.get(rest.len() - self.content_size_len..)?;
        let mut le = [0u8; 8];
        le[..field.len()].copy_from_slice(field);
        let value = u64::from_le_bytes(le);
        match self.content_size_len {
            0 => None,
            // The 2-byte form is offset by 256 (§3.1.1.1.4).
            2 => Some(value + 256),
            _ => Some(value),
        }
    }
}

/// Parses the content size of the frame header at the start of `data`, if
/// the header is whole and declares one. Shared with `size_hint`.
pub(crate) fn frame_header_len_and_content_size(data: &[u8]) -> Option<(usize, Option<u64>)> {
    let magic = u32::from_le_bytes(data.get(..4)?.try_into().ok()?);
    if magic != ZSTD_MAGIC {
        return None;
    }
    let layout = FrameHeaderLayout::parse(*data.get(4)?).ok()?;
    let rest = data.get(5..5 + layout.rest_len())?;
    Some((5 + rest.len(), layout.content_size(rest)))
}

fn run_worker(
    jobs: &Mutex<Receiver<Job>>,
    cancelled: &AtomicBool,
    inputs: &BufferPool,
    outputs: &BufferPool,
) {
    // Kept across frames: a fresh decoder allocates and faults in its
    // buffers again, which costs more than a small frame's decoding.
    let mut decoder = FrameDecoder::new();
    loop {
        let job = {
            let Ok(jobs) = jobs.lock() else { return };
            match jobs.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if cancelled.load(Ordering::Relaxed) {
            // Dropping the job's channels tells whoever waits on them.
            continue;
        }
        match job {
            Job::Buffered {
                frame,
                data,
                output_limit,
                result,
            } => {
                let out = outputs.take(usize::try_from(output_limit).unwrap_or(0));
                let decoded = decode_buffered(&mut decoder, frame, &data, output_limit, out);
                inputs.put(data);
                let _ = result.send(decoded);
            }
            Job::Streamed { frame, chunks, out } => {
                let mut reader = ChunkReader {
                    chunks,
                    buffers: inputs.clone(),
                    data: Vec::new(),
                    pos: 0,
                    failure: None,
                };
                let msg = match decode_streamed(&mut decoder, frame, &mut reader, &out, outputs) {
                    Ok(()) => StreamOut::End,
                    // The splitter's own error (truncation, bad block) says
                    // more than the decoder tripping over its consequence.
                    Err(e) => StreamOut::Failed(reader.failure.take().unwrap_or(e)),
                };
                let _ = out.send(msg);
            }
        }
    }
}

fn decode_buffered(
    decoder: &mut FrameDecoder,
    frame: FrameInfo,
    data: &[u8],
    output_limit: u64,
    mut out: Vec<u8>,
) -> io::Result<Vec<u8>> {
    let mut src = data;
    decoder
        .init(&mut src)
        .map_err(|e| corrupt(frame.offset, e))?;
    loop {
        let finished = decoder
            .decode_blocks(&mut src, BlockDecodingStrategy::UptoBytes(STREAM_CHUNK))
            .map_err(|e| corrupt(frame.offset, e))?;
        decoder
            .collect_to_writer(&mut out)
            .map_err(|e| corrupt(frame.offset, e))?;
        if out.len() as u64 > output_limit {
            return Err(too_long(frame));
        }
        if finished {
            break;
        }
    }
    if !src.is_empty() {
        return Err(corrupt(
            frame.offset,
            "decoder stopped before the frame's end",
        ));
    }
    check_end(frame, decoder, out.len() as u64)?;
    Ok(out)
}

fn decode_streamed(
    decoder: &mut FrameDecoder,
    frame: FrameInfo,
    src: &mut ChunkReader,
    out: &SyncSender<StreamOut>,
    buffers: &BufferPool,
) -> io::Result<()> {
    decoder
        .init(&mut *src)
        .map_err(|e| corrupt(frame.offset, e))?;
    let mut total = 0u64;
    let mut chunk = buffers.take(STREAM_CHUNK);
    loop {
        let finished = decoder
            .decode_blocks(&mut *src, BlockDecodingStrategy::UptoBytes(STREAM_CHUNK))
            .map_err(|e| corrupt(frame.offset, e))?;
        let n = decoder
            .collect_to_writer(&mut chunk)
            .map_err(|e| corrupt(frame.offset, e))?;
        total += n as u64;
        if frame.content_size.is_some_and(|size| total > size) {
            return Err(too_long(frame));
        }
        if chunk.len() >= STREAM_CHUNK || (finished && !chunk.is_empty()) {
            let full = std::mem::replace(&mut chunk, buffers.take(STREAM_CHUNK));
            out.send(StreamOut::Data(full))
                .map_err(|_| io::Error::other("zstd output reader is gone"))?;
        }
        if finished {
            break;
        }
    }
    let mut rest = [0u8; 1];
    if src.read(&mut rest)? != 0 {
        return Err(corrupt(
            frame.offset,
            "decoder stopped before the frame's end",
        ));
    }
    check_end(frame, decoder, total)
}

fn too_long(frame: FrameInfo) -> io::Error {
    match frame.content_size {
        Some(size) => corrupt(
            frame.offset,
            format!("decodes to more than its declared {size} bytes"),
        ),
        None => corrupt(frame.offset, "decodes to more than its blocks allow"),
    }
}

fn check_end(frame: FrameInfo, decoder: &FrameDecoder, total: u64) -> io::Result<()> {
    if let Some(size) = frame.content_size {
        if total != size {
            let msg = format!("decodes to {total} bytes but declares {size}");
            return Err(corrupt(frame.offset, msg));
        }
    }
    if frame.checksum {
        let stored = decoder.get_checksum_from_data();
        let computed = decoder.get_calculated_checksum();
        if stored.is_none() || stored != computed {
            return Err(corrupt(frame.offset, "content checksum mismatch"));
        }
    }
    Ok(())
}

/// Buffers handed back for reuse, so that steady state allocates nothing:
/// a fresh multi-MiB allocation is page-faulted in and unmapped again for
/// every frame. A buffer is only allocated when the pool is empty, that is
/// when every buffer is in flight, so the pool never pushes memory past the
/// in-flight bound of the module doc.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut pool| pool.pop());
        let mut buf = reused.unwrap_or_default();
        buf.reserve(capacity);
        buf
    }

    fn put(&self, mut buf: Vec<u8>) {
        buf.clear();
        if buf.capacity() > 0 {
            if let Ok(mut pool) = self.0.lock() {
                pool.push(buf);
            }
        }
    }
}

/// The compressed bytes of a streamed frame as the splitter sends them.
struct ChunkReader {
    chunks: Receiver<io::Result<Vec<u8>>>,
    buffers: BufferPool,
    data: Vec<u8>,
    pos: usize,
    failure: Option<io::Error>,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = copy_out(&self.data, &mut self.pos, buf);
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.chunks.recv() {
                Ok(Ok(next)) => {
                    self.buffers.put(std::mem::replace(&mut self.data, next));
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    let copy = io::Error::new(e.kind(), e.to_string());
                    self.failure = Some(e);
                    return Err(copy);
                }
                // The splitter closes the channel at the frame's end.
                Err(_) => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// Runs a compression CLI over `input` and returns its stdout.
    fn cli(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{program} {args:?} failed");
        out.stdout
    }

    /// `--content-size` only takes effect for files; from a pipe the size
    /// has to be given as `--stream-size`.
    fn zstd(args: &[&str], input: &[u8]) -> Vec<u8> {
        let size = format!("--stream-size={}", input.len());
        let mut all = vec!["-q", "-c"];
        for &arg in args {
            all.push(if arg == "--content-size" { &size } else { arg });
        }
        cli("zstd", &all, input)
    }

    /// Compressible but not trivially: runs of a counter and of noise.
    fn data(len: usize) -> Vec<u8> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = state.to_le_bytes()[0];
                if (i / 4096) % 3 == 0 {
                    noise
                } else {
                    (i / 64).to_le_bytes()[0]
                }
            })
            .collect()
    }

    fn decode_with(input: Vec<u8>, config: ZstdFramesConfig) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        ParallelZstdDecoder::with_config(Cursor::new(input), config).read_to_end(&mut out)?;
        Ok(out)
    }

    fn decode(input: Vec<u8>, threads: usize) -> io::Result<Vec<u8>> {
        decode_with(input, ZstdFramesConfig::new(threads))
    }

    /// Configs covering one and several workers, and frames too big to
    /// decode whole so that they take the streamed path.
    fn configs() -> [ZstdFramesConfig; 4] {
        let small = |threads| ZstdFramesConfig {
            threads,
            max_frame_output: 500,
        };
        [
            ZstdFramesConfig::new(1),
            ZstdFramesConfig::new(3),
            small(1),
            small(2),
        ]
    }

    fn skippable(payload: &[u8]) -> Vec<u8> {
        let mut frame = 0x184D_2A5Du32.to_le_bytes().to_vec();
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    /// A frame of raw blocks: 8-byte content size when declared, no
    /// checksum, so tests can make it lie.
    fn raw_frame(content: &[u8], declared: Option<u64>, block: usize) -> Vec<u8> {
        let mut frame = ZSTD_MAGIC.to_le_bytes().to_vec();
        match declared {
            Some(size) => {
                frame.push(0xC0);
                frame.push(0x58); // window 2^(10+11) = 2 MiB
                frame.extend_from_slice(&size.to_le_bytes());
            }
            None => frame.extend_from_slice(&[0x00, 0x58]),
        }
        let mut chunks: Vec<&[u8]> = content.chunks(block).collect();
        if chunks.is_empty() {
            chunks.push(&[]);
        }
        for (i, chunk) in chunks.iter().enumerate() {
            let last = u32::from(i + 1 == chunks.len());
            let header = u32::try_from(chunk.len()).unwrap() << 3 | last;
            frame.extend_from_slice(&header.to_le_bytes()[..3]);
            frame.extend_from_slice(chunk);
        }
        frame
    }

    /// Byte offsets where each frame (data or skippable) starts, plus the end.
    fn frame_starts(parts: &[Vec<u8>]) -> Vec<usize> {
        let mut at = vec![0];
        for p in parts {
            at.push(at.last().unwrap() + p.len());
        }
        at
    }

    /// Frames of every kind the CLI makes, a skippable frame and an empty
    /// frame among them; returns the parts and the expected output.
    fn mixed_parts(scale: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let a = data(3 * scale + 1);
        let b = data(2 * scale + 7);
        let c = data(1);
        let parts = vec![
            zstd(&["--content-size"], &a),
            skippable(b"pzstd-like hint"),
            zstd(&["--no-content-size"], &b),
            zstd(&[], &[]),
            skippable(&[]),
            zstd(&["--no-check", "--content-size"], &c),
            raw_frame(&a[..scale], None, 100),
        ];
        let expected = [&a[..], &b, &c, &a[..scale]].concat();
        (parts, expected)
    }

    #[test]
    fn decodes_mixed_frames_with_every_config() {
        let (parts, expected) = mixed_parts(100_000);
        for config in configs() {
            let out = decode_with(parts.concat(), config).unwrap();
            assert!(out == expected, "{config:?}");
        }
    }

    #[test]
    fn decodes_pzstd_output_identically_on_1_and_4_threads() {
        let image = data(9 << 20);
        let compressed = cli("pzstd", &["-q", "-c", "-p", "2", "-1"], &image);
        let one = decode(compressed.clone(), 1).unwrap();
        let four = decode(compressed, 4).unwrap();
        assert!(one == image);
        assert!(four == image);
    }

    #[test]
    fn decodes_one_large_frame_streamed() {
        let image = data(5 << 20 | 3);
        for args in [&["--content-size"][..], &["--no-content-size"]] {
            let compressed = zstd(args, &image);
            for config in configs() {
                assert!(decode_with(compressed.clone(), config).unwrap() == image);
            }
        }
    }

    #[test]
    fn decodes_tiny_and_odd_sizes() {
        for len in [1, 2, 127, 4095, 131_073] {
            let image = data(len);
            let compressed = zstd(&[], &image);
            assert_eq!(decode(compressed, 2).unwrap(), image, "{len}");
        }
    }

    #[test]
    fn empty_input_is_an_error() {
        let err = decode(vec![], 2).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
        assert_eq!(err.to_string(), "zstd stream is empty");
    }

    #[test]
    fn only_skippable_frames_decode_to_nothing() {
        let input = [skippable(b"x"), skippable(b"")].concat();
        assert_eq!(decode(input, 2).unwrap(), b"");
    }

    #[test]
    fn not_zstd_is_an_error() {
        let err = decode(b"\x1f\x8b\x08\x00 gzip".to_vec(), 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "not a zstd stream: no frame magic at input byte 0"
        );
    }

    #[test]
    fn trailing_garbage_names_its_offset() {
        let (parts, _) = mixed_parts(1000);
        let good = parts.concat();
        for garbage in [&b"x"[..], b"\0\0\0", b"garbage after", &[0; 4096]] {
            let input = [&good[..], garbage].concat();
            for config in configs() {
                let err = decode_with(input.clone(), config).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidData);
                assert_eq!(
                    err.to_string(),
                    format!(
                        "trailing garbage after the zstd stream at input byte {}",
                        good.len()
                    )
                );
            }
        }
    }

    #[test]
    fn truncation_anywhere_but_a_frame_boundary_is_an_error() {
        let (parts, _) = mixed_parts(300);
        let input = parts.concat();
        let boundaries = frame_starts(&parts);
        for config in configs() {
            for cut in 1..input.len() {
                let result = decode_with(input[..cut].to_vec(), config);
                if boundaries.contains(&cut) {
                    assert!(result.is_ok(), "cut at {cut}: {result:?}");
                    continue;
                }
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "cut at {cut}: {err}");
                let frame = boundaries.iter().rev().find(|&&b| b < cut).unwrap();
                assert_eq!(
                    err.to_string(),
                    format!(
                        "zstd stream truncated at input byte {cut} \
                         (in the frame at input byte {frame})"
                    ),
                    "{config:?}"
                );
            }
        }
    }

    #[test]
    fn a_flipped_byte_never_yields_wrong_output() {
        let first_image = data(5000);
        let second_image = data(7000);
        let first = zstd(&["--content-size"], &first_image);
        let second = zstd(&["--content-size"], &second_image);
        let expected = [first_image, second_image].concat();
        let (header_len, _) = frame_header_len_and_content_size(&second).unwrap();
        let offset = first.len();
        let mut failures = 0;
        for i in header_len..second.len() {
            let mut bad = second.clone();
            bad[i] ^= 0x10;
            let input = [&first[..], &bad].concat();
            for config in [configs()[1], configs()[3]] {
                let err = match decode_with(input.clone(), config) {
                    // Some bits are never read (`zstd -d` accepts them too).
                    Ok(out) => {
                        assert!(out == expected, "flip at {i} gave wrong output");
                        continue;
                    }
                    Err(e) => e,
                };
                failures += 1;
                let msg = err.to_string();
                let corrupt = format!("corrupt zstd frame at input byte {offset}: ");
                let misframed = msg.contains("at input byte")
                    && matches!(
                        err.kind(),
                        ErrorKind::UnexpectedEof | ErrorKind::InvalidData
                    );
                assert!(msg.starts_with(&corrupt) || misframed, "flip at {i}: {msg}");
            }
        }
        assert!(
            failures > (second.len() - header_len) * 2 * 9 / 10,
            "{failures}"
        );
    }

    #[test]
    fn content_size_must_match() {
        let content = data(5000);
        for declared in [4999, 5001, 0] {
            let input = raw_frame(&content, Some(declared), 1000);
            for config in configs() {
                let err = decode_with(input.clone(), config).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidData);
                assert!(
                    err.to_string()
                        .starts_with("corrupt zstd frame at input byte 0: decodes to "),
                    "{declared}: {err}"
                );
            }
        }
        let input = raw_frame(&content, Some(5000), 1000);
        assert_eq!(decode(input, 2).unwrap(), content);
    }

    #[test]
    fn bad_block_headers_are_errors() {
        let mut reserved = raw_frame(b"abc", None, 100);
        reserved[6] |= 0b110;
        let err = decode(reserved, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt zstd frame at input byte 0: reserved block type at input byte 6"
        );
        let mut oversized = raw_frame(b"abc", None, 100);
        oversized[6..9].copy_from_slice(&(((128 << 10) + 1) << 3 | 1u32).to_le_bytes()[..3]);
        let err = decode(oversized, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt zstd frame at input byte 0: block at input byte 6 claims 131073 bytes"
        );
        let mut reserved_bit = raw_frame(b"abc", None, 100);
        reserved_bit[4] |= 0x08;
        let err = decode(reserved_bit, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "corrupt zstd frame at input byte 0: reserved bit set in the frame header"
        );
    }

    #[test]
    fn a_frame_decoding_past_its_block_bound_streams() {
        // 300 KiB of RLE-like content in raw blocks: bound is exact, so
        // with a 100 KiB limit the frame must take the streamed path.
        let content = data(300 << 10);
        let input = raw_frame(&content, None, 128 << 10);
        let config = ZstdFramesConfig {
            threads: 2,
            max_frame_output: 100 << 10,
        };
        assert!(decode_with(input, config).unwrap() == content);
    }

    /// At most 3 bytes per read and `Interrupted` every other call.
    struct Dribble<R>(R, usize);
    impl<R: Read> Read for Dribble<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1 % 2 == 0 {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn short_and_interrupted_reads_on_both_sides() {
        let (parts, expected) = mixed_parts(20_000);
        for config in configs() {
            let input = Dribble(Cursor::new(parts.concat()), 0);
            let mut decoder = ParallelZstdDecoder::with_config(input, config);
            let mut out = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = decoder.read(&mut buf[..out.len() % 7 + 1]).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert!(out == expected);
            assert_eq!(decoder.read(&mut buf).unwrap(), 0);
            assert_eq!(decoder.read(&mut []).unwrap(), 0);
        }
    }

    struct FailAfter(Cursor<Vec<u8>>);
    impl Read for FailAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::new(
                    ErrorKind::ConnectionReset,
                    "connection reset",
                )),
                n => Ok(n),
            }
        }
    }

    #[test]
    fn input_errors_keep_their_kind_and_repeat() {
        let (parts, _) = mixed_parts(20_000);
        let input = parts.concat();
        let cut = input.len() / 2;
        for config in configs() {
            let source = FailAfter(Cursor::new(input[..cut].to_vec()));
            let mut decoder = ParallelZstdDecoder::with_config(source, config);
            let err = decoder.read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::ConnectionReset);
            assert_eq!(
                err.to_string(),
                format!("reading zstd input at byte {cut}: connection reset")
            );
            let again = decoder.read(&mut [0; 10]).unwrap_err();
            assert_eq!(again.to_string(), err.to_string());
        }
    }

    fn wait_for_threads_to_exit(alive: &std::sync::Weak<()>) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while alive.strong_count() > 0 {
            assert!(Instant::now() < deadline, "decoder threads still running");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn dropping_early_stops_every_thread() {
        let image = data(6 << 20);
        let multi = cli("pzstd", &["-q", "-c", "-p", "2", "-1"], &image);
        let single = zstd(&["--no-content-size"], &image);
        for input in [multi, single] {
            for config in configs() {
                for read_first in [0, 1, 3 << 20] {
                    let mut decoder =
                        ParallelZstdDecoder::with_config(Cursor::new(input.clone()), config);
                    let mut head = vec![0u8; read_first];
                    decoder.read_exact(&mut head).unwrap();
                    assert!(head[..] == image[..read_first]);
                    let alive = decoder.alive.clone();
                    drop(decoder);
                    wait_for_threads_to_exit(&alive);
                }
            }
        }
    }

    #[test]
    fn threads_exit_after_an_error_and_after_the_end() {
        let (parts, expected) = mixed_parts(20_000);
        for config in configs() {
            let mut decoder = ParallelZstdDecoder::with_config(Cursor::new(parts.concat()), config);
            let mut out = Vec::new();
            decoder.read_to_end(&mut out).unwrap();
            assert!(out == expected);
            wait_for_threads_to_exit(&decoder.alive.clone());

            let input = [&parts.concat()[..], b"junk"].concat();
            let mut decoder = ParallelZstdDecoder::with_config(Cursor::new(input), config);
            decoder.read_to_end(&mut Vec::new()).unwrap_err();
            wait_for_threads_to_exit(&decoder.alive.clone());
        }
    }

    /// Throughput on a realistic image; prints MB/s, asserts only that the
    /// outputs agree. Run with:
    /// `cargo test --release -p imprint --lib bench_zstd -- --ignored --nocapture`
    /// (IMPRINT_BENCH_IMAGE=path reuses a raw image instead of making one).
    #[test]
    #[ignore = "benchmark: builds a 256 MiB image and takes a minute"]
    fn bench_zstd_decoders() {
        use std::fs::File;
        use std::io::BufReader;

        let dir = tempfile::tempdir().unwrap();
        let image = match std::env::var_os("IMPRINT_BENCH_IMAGE") {
            Some(path) => std::path::PathBuf::from(path),
            None => make_bench_image(dir.path()),
        };
        let raw_len = std::fs::metadata(&image).unwrap().len();
        let multi = dir.path().join("multi.zst");
        let single = dir.path().join("single.zst");
        let run = |cmd: &str, args: &[&str], out: &std::path::Path| {
            let status = Command::new(cmd)
                .args(args)
                .stdout(File::create(out).unwrap())
                .status()
                .unwrap();
            assert!(status.success(), "{cmd} {args:?}");
        };
        let image_arg = image.to_str().unwrap();
        run("pzstd", &["-q", "-c", "-p", "2", image_arg], &multi);
        run("zstd", &["-q", "-c", "-T2", image_arg], &single);

        let mb_s = |seconds: f64| raw_len as f64 / 1e6 / seconds;
        // Wall time and this process's CPU time of the best of three runs:
        // CPU/wall shows the parallelism reached even when other work on
        // the machine takes a core away.
        let best = |f: &dyn Fn() -> u64| {
            (0..3)
                .map(|_| {
                    let cpu = process_cpu_seconds();
                    let start = Instant::now();
                    assert_eq!(f(), raw_len);
                    (start.elapsed().as_secs_f64(), process_cpu_seconds() - cpu)
                })
                .fold((f64::MAX, 0.0), |a, b| if b.0 < a.0 { b } else { a })
        };
        let drain = |mut r: Box<dyn Read>| {
            let mut buf = vec![0u8; 4 << 20];
            let mut total = 0u64;
            loop {
                match r.read(&mut buf).unwrap() {
                    0 => return total,
                    n => total += n as u64,
                }
            }
        };
        let cli_time = |cmd: &str, args: &[&str], file: &std::path::Path| {
            let start = Instant::now();
            let status = Command::new(cmd)
                .args(args)
                .arg(file)
                .stdout(File::create("/dev/null").unwrap())
                .status()
                .unwrap();
            assert!(status.success());
            start.elapsed().as_secs_f64()
        };
        for (name, file) in [
            ("pzstd -p 2 (multi-frame)", &multi),
            ("zstd -T2 (one frame)", &single),
        ] {
            let size = std::fs::metadata(file).unwrap().len();
            eprintln!("{name}: {raw_len} -> {size} bytes");
            let (wall, cpu) =
                best(&|| ruzstd_sequential(BufReader::new(File::open(file).unwrap())));
            eprintln!(
                "  ruzstd sequential        {:7.0} MB/s  cpu/wall {:.2}",
                mb_s(wall),
                cpu / wall
            );
            for threads in [1, 2] {
                let (wall, cpu) = best(&|| {
                    let input = File::open(file).unwrap();
                    drain(Box::new(ParallelZstdDecoder::new(input, threads)))
                });
                let rate = mb_s(wall);
                eprintln!(
                    "  ParallelZstdDecoder x{threads}   {rate:7.0} MB/s  cpu/wall {:.2}",
                    cpu / wall
                );
            }
            let t = cli_time("zstd", &["-q", "-d", "-c"], file);
            eprintln!("  zstd -dc                 {:7.0} MB/s", mb_s(t));
            let t = cli_time("pzstd", &["-q", "-d", "-c", "-p", "2"], file);
            eprintln!("  pzstd -dc -p 2           {:7.0} MB/s", mb_s(t));
        }
    }

    /// User plus system time of this process, from /proc (clock ticks of
    /// 1/100 s, the value of USER_HZ on every Linux architecture we run on).
    fn process_cpu_seconds() -> f64 {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split(' ').collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }

    /// An ext4 filesystem holding binaries and text, plus free space.
    fn make_bench_image(dir: &std::path::Path) -> std::path::PathBuf {
        let root = dir.join("root");
        std::fs::create_dir(&root).unwrap();
        for tree in ["/usr/lib/gcc", "/usr/share/vim", "/usr/share/i18n"] {
            let status = Command::new("cp")
                .args(["-a", tree])
                .arg(&root)
                .status()
                .unwrap();
            assert!(status.success(), "copying {tree}");
        }
        let image = dir.join("image.raw");
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&root)
            .arg(&image)
            .arg("256M")
            .status()
            .unwrap();
        assert!(status.success(), "mkfs.ext4");
        image
    }

    /// One ruzstd FrameDecoder over every frame, the way a sequential
    /// decoder would run it.
    fn ruzstd_sequential(mut input: impl io::BufRead) -> u64 {
        use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
        let mut decoder = FrameDecoder::new();
        let mut buf = vec![0u8; 4 << 20];
        let mut total = 0u64;
        while !input.fill_buf().unwrap().is_empty() {
            match decoder.reset(&mut input) {
                Ok(()) => {}
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    io::copy(&mut (&mut input).take(u64::from(length)), &mut io::sink()).unwrap();
                    continue;
                }
                Err(e) => panic!("{e}"),
            }
            loop {
                decoder
                    .decode_blocks(&mut input, BlockDecodingStrategy::UptoBytes(4 << 20))
                    .unwrap();
                while decoder.can_collect() > 0 {
                    total += decoder.read(&mut buf).unwrap() as u64;
                }
                if decoder.is_finished() {
                    break;
                }
            }
        }
        total
    }
}
