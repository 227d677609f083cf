//! The ordered-parallel engine: independent units of a compressed stream
//! (zstd frames, xz blocks) decoded on every core, read back in order,
//! under one memory budget.
//!
//! A format plugs in two halves:
//!
//! - a [`Split`]ter, run on its own thread, that walks the input's headers
//!   without decoding and hands each unit to the [`Dispatcher`]: whole
//!   (its compressed bytes and a bound on its output), streamed (a unit
//!   too large for the budget: its compressed bytes follow in chunks and
//!   one worker decodes it as they come), or as decoded data (a format's
//!   sequential fallback, decoded on the splitter thread);
//! - a [`UnitDecoder`], one per worker thread, that decodes a whole unit
//!   into a buffer or a streamed unit into a writer.
//!
//! [`OrderedDecoder`] is the `Read` side: it hands the units' output back
//! strictly in input order. An error in unit k is reported, with the
//! unit's own message (naming its input offset), after the output of
//! every unit before k; every later read repeats it.
//!
//! **Memory.** Every byte a unit holds between being cut and being read
//! out is charged to one [`Budget`] of `memory` bytes ([`DEFAULT_MEMORY`],
//! 256 MiB, whatever the core count; `imprint.decode-memory=` raises it):
//! a whole unit its compressed bytes, as they are read, plus its output
//! bound; a streamed unit its chunk queues ([`STREAM_CHARGE`]); a
//! splitter's decoded chunk its length. The splitter waits for room before
//! it reads more, so in-flight data never exceeds the budget. A unit is
//! decoded whole only when its output bound is at most a quarter of the
//! budget and its compressed bytes plus output at most half (64 and 128
//! MiB by default), so at least two fit at once; larger units stream,
//! sequentially, holding their window (not charged: it is the decoder's,
//! bounded by the format's window limit) and `STREAM_CHARGE`.
//!
//! **Threads.** `threads` workers (every core by default) take jobs from
//! one queue; at most two units per worker are queued ahead of the reader,
//! and the budget caps their bytes.
//!
//! Dropping the decoder early cancels the work: every thread stops at its
//! next channel operation, budget wait or job, and none is joined, so a
//! drop never blocks on an input stuck in a read.

use std::io::{self, ErrorKind, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

/// The default memory budget for units in flight: enough for four 64 MiB
/// frames' output, or sixteen cores each decoding an 8 MiB frame with as
/// many read ahead, whatever the core count.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// The smallest budget accepted: one streamed unit and a little more.
pub const MIN_MEMORY: u64 = 16 << 20;
/// Streamed units move in chunks of this size, in both directions.
pub const STREAM_CHUNK: usize = 1 << 20;
/// Chunks queued per direction of a streamed unit.
const STREAM_QUEUE: usize = 4;
/// What a streamed unit is charged: its two chunk queues, full, plus the
/// chunk each end holds.
pub const STREAM_CHARGE: u64 = 2 * (STREAM_QUEUE as u64 + 1) * STREAM_CHUNK as u64;
/// Every unit is charged at least this much: its channels and bookkeeping,
/// and a bound on how many empty frames can be in flight.
const MIN_CHARGE: u64 = 64 << 10;

/// Parses `imprint.decode-memory=`: a whole number of bytes with an
/// optional binary unit (K, M, G), at least [`MIN_MEMORY`].
pub fn parse_memory(value: &str) -> anyhow::Result<u64> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        _ => anyhow::bail!("{value:?} is not a size: use a whole number with K, M or G (binary)"),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| {
            anyhow::anyhow!("{value:?} is not a size: use a whole number with K, M or G (binary)")
        })?;
    if bytes < MIN_MEMORY {
        anyhow::bail!(
            "{value} is less than the {} MiB the decoders need",
            MIN_MEMORY >> 20
        );
    }
    Ok(bytes)
}

/// How many workers and how much memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderedConfig {
    /// Worker threads (at least one runs).
    pub threads: usize,
    /// Bytes of units in flight; see the module doc.
    pub memory: u64,
}

impl OrderedConfig {
    pub fn new(threads: usize, memory: u64) -> Self {
        OrderedConfig {
            threads: threads.max(1),
            memory: memory.max(MIN_MEMORY),
        }
    }

    /// Every core, the default budget.
    pub fn all_cores() -> Self {
        let threads = thread::available_parallelism().map_or(1, usize::from);
        OrderedConfig::new(threads, DEFAULT_MEMORY)
    }

    /// The largest output a unit may have to be decoded whole.
    pub fn max_whole_output(&self) -> u64 {
        self.memory / 4
    }

    /// Whether a unit with this many compressed bytes and this output
    /// bound is decoded whole (else it streams).
    pub fn fits_whole(&self, compressed: u64, output: u64) -> bool {
        output <= self.max_whole_output() && compressed.saturating_add(output) <= self.memory / 2
    }
}

/// Bytes in flight, against a limit; waiters sleep until there is room.
pub struct Budget {
    limit: u64,
    state: Mutex<BudgetState>,
    room: Condvar,
}

#[derive(Default)]
struct BudgetState {
    used: u64,
    peak: u64,
}

impl Budget {
    fn new(limit: u64) -> Self {
        Budget {
            limit,
            state: Mutex::default(),
            room: Condvar::new(),
        }
    }

    /// Takes `n` bytes, waiting while they would push the total past the
    /// limit (a charge larger than the whole limit waits for an empty
    /// budget). `false` when cancelled meanwhile.
    fn acquire(&self, n: u64, cancelled: &AtomicBool) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        while state.used > 0 && state.used + n > self.limit {
            if cancelled.load(Ordering::Relaxed) {
                return false;
            }
            // The timeout only bounds how late a cancellation is seen.
            state = match self.room.wait_timeout(state, Duration::from_millis(50)) {
                Ok((state, _)) => state,
                Err(_) => return false,
            };
        }
        state.used += n;
        state.peak = state.peak.max(state.used);
        true
    }

    fn release(&self, n: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.used = state.used.saturating_sub(n);
        }
        self.room.notify_all();
    }

    /// The most bytes ever in flight at once.
    pub fn peak(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.peak)
    }
}

/// Decodes units on a worker thread; one per worker, reused across units.
pub trait UnitDecoder: Send + 'static {
    /// What the splitter learnt of a unit from its headers.
    type Unit: Send + 'static;

    /// Decodes the whole unit `data` into `out`, producing at most
    /// `output_limit` bytes, and returns how many: the output is
    /// `out[..n]`. `out` is a recycled buffer holding stale bytes of a
    /// previous unit, so that a decoder that writes into a slice can
    /// `resize` it without zeroing every byte again.
    fn decode(
        &mut self,
        unit: &Self::Unit,
        data: &[u8],
        output_limit: u64,
        out: &mut Vec<u8>,
    ) -> io::Result<usize>;

    /// Decodes a unit whose compressed bytes arrive through `input`,
    /// writing its output to `output` as it goes.
    fn stream(
        &mut self,
        unit: &Self::Unit,
        input: &mut dyn Read,
        output: &mut StreamOutput<'_>,
    ) -> io::Result<()>;
}

/// Cuts the input into units; runs on its own thread.
pub trait Split<U>: Send + 'static {
    /// Walks the whole input, handing every unit to `dispatch` in order.
    fn run(self, dispatch: &mut Dispatcher<U>) -> Result<(), Stop>;
}

/// Why a splitter stopped early: an error to report in order, or the
/// reader is gone.
#[derive(Debug)]
pub enum Stop {
    Failed(io::Error),
    Cancelled,
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Failed(e)
    }
}

/// One entry per unit, in input order, then `End` or `Failed`. Each
/// carries the budget it holds, released when it has been read out.
enum Item {
    Whole {
        result: Receiver<io::Result<Filled>>,
        charge: u64,
    },
    Streamed {
        output: Receiver<StreamOut>,
        charge: u64,
    },
    Data {
        data: Filled,
        charge: u64,
    },
    Failed(io::Error),
    End,
}

/// A buffer whose first `len` bytes are output.
struct Filled {
    buf: Vec<u8>,
    len: usize,
}

enum StreamOut {
    Data(Filled),
    End,
    Failed(io::Error),
}

enum Job<U> {
    Whole {
        unit: U,
        data: Vec<u8>,
        output_limit: u64,
        result: SyncSender<io::Result<Filled>>,
    },
    Streamed {
        unit: U,
        chunks: Receiver<io::Result<Vec<u8>>>,
        output: SyncSender<StreamOut>,
    },
}

/// The splitter's side of the engine: buffers, the budget and the queues.
pub struct Dispatcher<U> {
    config: OrderedConfig,
    budget: Arc<Budget>,
    cancelled: Arc<AtomicBool>,
    items: SyncSender<Item>,
    jobs: Sender<Job<U>>,
    inputs: BufferPool,
    outputs: BufferPool,
    /// Budget taken for the unit being cut, not yet handed on.
    held: u64,
}

impl<U: Send + 'static> Dispatcher<U> {
    pub fn config(&self) -> OrderedConfig {
        self.config
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// A recycled buffer for a unit's compressed bytes.
    pub fn input_buffer(&self, capacity: usize) -> Vec<u8> {
        self.inputs.take_empty(capacity)
    }

    /// A recycled buffer for decoded bytes (the sequential fallback's).
    pub fn output_buffer(&self, capacity: usize) -> Vec<u8> {
        self.outputs.take_empty(capacity)
    }

    /// Charges `n` more bytes to the unit being cut, waiting for room:
    /// call before reading them.
    pub fn reserve(&mut self, n: u64) -> Result<(), Stop> {
        if !self.budget.acquire(n, &self.cancelled) {
            return Err(Stop::Cancelled);
        }
        self.held += n;
        Ok(())
    }

    /// Returns what the unit being cut had reserved: it is going to stream.
    pub fn unreserve(&mut self) {
        self.budget.release(std::mem::take(&mut self.held));
    }

    /// Queues a whole unit for a worker. `data` must have been reserved;
    /// its output bound is charged here.
    pub fn whole(&mut self, unit: U, data: Vec<u8>, output_limit: u64) -> Result<(), Stop> {
        let floor = MIN_CHARGE.saturating_sub(self.held);
        self.reserve(output_limit.max(floor))?;
        let charge = std::mem::take(&mut self.held);
        let (result, rx) = mpsc::sync_channel(1);
        self.send_item(Item::Whole { result: rx, charge })?;
        let job = Job::Whole {
            unit,
            data,
            output_limit,
            result,
        };
        self.jobs.send(job).map_err(|_| Stop::Cancelled)
    }

    /// Starts a streamed unit: its compressed bytes go through the
    /// returned sender, in chunks, and dropping it ends the unit.
    pub fn stream(&mut self, unit: U) -> Result<StreamSender, Stop> {
        self.unreserve();
        self.reserve(STREAM_CHARGE)?;
        let charge = std::mem::take(&mut self.held);
        let (chunks_tx, chunks) = mpsc::sync_channel(STREAM_QUEUE);
        let (output, output_rx) = mpsc::sync_channel(STREAM_QUEUE);
        self.send_item(Item::Streamed {
            output: output_rx,
            charge,
        })?;
        let job = Job::Streamed {
            unit,
            chunks,
            output,
        };
        self.jobs.send(job).map_err(|_| Stop::Cancelled)?;
        Ok(StreamSender { tx: chunks_tx })
    }

    /// Queues bytes the splitter decoded itself (a sequential fallback).
    pub fn data(&mut self, data: Vec<u8>) -> Result<(), Stop> {
        self.reserve(data.len() as u64)?;
        let charge = std::mem::take(&mut self.held);
        let len = data.len();
        self.send_item(Item::Data {
            data: Filled { buf: data, len },
            charge,
        })
    }

    fn send_item(&mut self, item: Item) -> Result<(), Stop> {
        self.items.send(item).map_err(|_| Stop::Cancelled)
    }
}

/// The splitter's end of a streamed unit's compressed bytes.
pub struct StreamSender {
    tx: SyncSender<io::Result<Vec<u8>>>,
}

impl StreamSender {
    pub fn send(&self, chunk: Vec<u8>) -> Result<(), Stop> {
        self.tx.send(Ok(chunk)).map_err(|_| Stop::Cancelled)
    }

    /// Hands the splitter's error to the worker decoding this unit, which
    /// reports it in the unit's place (it says more than the decoder
    /// tripping over the truncation would).
    pub fn fail(&self, e: &io::Error) {
        let _ = self.tx.send(Err(io::Error::new(e.kind(), e.to_string())));
    }
}

/// Reads the decoded bytes of the units a [`Split`] cuts, in order.
pub struct OrderedDecoder {
    items: Option<Receiver<Item>>,
    current: Current,
    /// Every later read repeats the first error: the stream cannot go on.
    failed: Option<(ErrorKind, String)>,
    cancelled: Arc<AtomicBool>,
    budget: Arc<Budget>,
    outputs: BufferPool,
    /// What the thread names start with, and what a dead thread is called.
    name: &'static str,
    /// Dies when the last thread exits; lets tests prove none leaked.
    alive: std::sync::Weak<()>,
}

enum Current {
    Idle,
    Buffered {
        data: Filled,
        pos: usize,
        charge: u64,
    },
    Streamed {
        rx: Receiver<StreamOut>,
        data: Filled,
        pos: usize,
        charge: u64,
    },
    Done,
}

impl OrderedDecoder {
    /// Starts the splitter and `config.threads` workers, each with a
    /// decoder from `new_decoder`. `name` prefixes the threads' names.
    pub fn start<U, S, D>(
        name: &'static str,
        splitter: S,
        mut new_decoder: impl FnMut() -> io::Result<D>,
        config: OrderedConfig,
    ) -> Self
    where
        U: Send + 'static,
        S: Split<U>,
        D: UnitDecoder<Unit = U>,
    {
        let config = OrderedConfig::new(config.threads, config.memory);
        let cancelled = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(());
        let budget = Arc::new(Budget::new(config.memory));
        // Two units per worker queued, besides the one being read out and
        // the one being cut: enough to keep every worker busy. Reading
        // further ahead only faults in more buffers and evicts the output
        // about to be read from the cache (on 2 cores the whole budget of
        // 8 MiB frames ran ahead: 290 MiB RSS). The budget still caps bytes.
        let (items_tx, items_rx) = mpsc::sync_channel(2 * config.threads);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job<U>>();
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let inputs = BufferPool::default();
        let outputs = BufferPool::default();
        let mut reader = OrderedDecoder {
            items: Some(items_rx),
            current: Current::Idle,
            failed: None,
            cancelled: Arc::clone(&cancelled),
            budget: Arc::clone(&budget),
            outputs: outputs.clone(),
            name,
            alive: Arc::downgrade(&alive),
        };
        for n in 0..config.threads {
            let decoder = match new_decoder() {
                Ok(decoder) => decoder,
                Err(e) => {
                    reader.fail_to_start(&e);
                    return reader;
                }
            };
            let worker = Worker {
                decoder,
                jobs: Arc::clone(&jobs_rx),
                cancelled: Arc::clone(&cancelled),
                inputs: inputs.clone(),
                outputs: outputs.clone(),
            };
            let alive = Arc::clone(&alive);
            let spawned = thread::Builder::new()
                .name(format!("{name}-decode-{n}"))
                .spawn(move || {
                    let _alive = alive;
                    worker.run();
                });
            if let Err(e) = spawned {
                reader.fail_to_start(&e);
                return reader;
            }
        }
        let mut dispatch = Dispatcher {
            config,
            budget,
            cancelled,
            items: items_tx,
            jobs: jobs_tx,
            inputs,
            outputs,
            held: 0,
        };
        let spawned = thread::Builder::new()
            .name(format!("{name}-split"))
            .spawn(move || {
                let _alive = alive;
                let end = match splitter.run(&mut dispatch) {
                    Ok(()) => Item::End,
                    Err(Stop::Failed(e)) => Item::Failed(e),
                    Err(Stop::Cancelled) => return,
                };
                dispatch.unreserve();
                // A closed channel means the reader is gone.
                let _ = dispatch.items.send(end);
            });
        if let Err(e) = spawned {
            reader.fail_to_start(&e);
        }
        reader
    }

    /// The budget's high-water mark so far.
    pub fn peak_memory(&self) -> u64 {
        self.budget.peak()
    }

    /// Whether every thread of this decoder has exited.
    pub fn threads_exited(&self) -> bool {
        self.alive.strong_count() == 0
    }

    /// Tells, after the decoder is dropped, whether its threads have exited.
    pub fn exited(&self) -> impl Fn() -> bool + use<> {
        let alive = self.alive.clone();
        move || alive.strong_count() == 0
    }

    fn fail_to_start(&mut self, e: &io::Error) {
        self.cancelled.store(true, Ordering::Relaxed);
        self.items = None;
        let name = self.name;
        self.failed = Some((e.kind(), format!("starting {name} decoder threads: {e}")));
    }

    /// Moves to the next unit's output; `Ok(false)` at the end.
    fn advance(&mut self) -> io::Result<bool> {
        let Some(items) = &self.items else {
            return Ok(false);
        };
        let item = items
            .recv()
            .unwrap_or_else(|_| Item::Failed(thread_died(self.name)));
        self.current = match item {
            Item::Whole { result, charge } => {
                let data = result
                    .recv()
                    .unwrap_or_else(|_| Err(thread_died(self.name)))
                    .inspect_err(|_| self.budget.release(charge))?;
                Current::Buffered {
                    data,
                    pos: 0,
                    charge,
                }
            }
            Item::Data { data, charge } => Current::Buffered {
                data,
                pos: 0,
                charge,
            },
            Item::Streamed { output, charge } => Current::Streamed {
                rx: output,
                data: Filled {
                    buf: Vec::new(),
                    len: 0,
                },
                pos: 0,
                charge,
            },
            Item::Failed(e) => return Err(e),
            Item::End => {
                self.current = Current::Done;
                self.items = None;
                return Ok(false);
            }
        };
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
                Current::Buffered { data, pos, charge } => {
                    let n = copy_out(data, pos, buf);
                    if n > 0 {
                        return Ok(n);
                    }
                    self.budget.release(*charge);
                    self.outputs.put(std::mem::take(&mut data.buf));
                    self.current = Current::Idle;
                }
                Current::Streamed {
                    rx,
                    data,
                    pos,
                    charge,
                } => {
                    let n = copy_out(data, pos, buf);
                    if n > 0 {
                        return Ok(n);
                    }
                    let charge = *charge;
                    match rx.recv() {
                        Ok(StreamOut::Data(next)) => {
                            self.outputs.put(std::mem::replace(data, next).buf);
                            *pos = 0;
                        }
                        Ok(StreamOut::End) => {
                            self.budget.release(charge);
                            self.current = Current::Idle;
                        }
                        Ok(StreamOut::Failed(e)) => return Err(e),
                        Err(_) => return Err(thread_died(self.name)),
                    }
                }
            }
        }
    }
}

impl Read for OrderedDecoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.read_inner(buf).inspect_err(|e| {
            self.cancelled.store(true, Ordering::Relaxed);
            self.current = Current::Done;
            self.items = None;
            self.failed = Some((e.kind(), e.to_string()));
        })
    }
}

impl Drop for OrderedDecoder {
    fn drop(&mut self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

fn thread_died(name: &str) -> io::Error {
    io::Error::other(format!("{name} decoder thread stopped unexpectedly"))
}

fn copy_out(data: &Filled, pos: &mut usize, buf: &mut [u8]) -> usize {
    let rest = data.buf.get(*pos..data.len).unwrap_or_default();
    let n = rest.len().min(buf.len());
    buf[..n].copy_from_slice(&rest[..n]);
    *pos += n;
    n
}

struct Worker<D: UnitDecoder> {
    decoder: D,
    jobs: Arc<Mutex<Receiver<Job<D::Unit>>>>,
    cancelled: Arc<AtomicBool>,
    inputs: BufferPool,
    outputs: BufferPool,
}

impl<D: UnitDecoder> Worker<D> {
    fn run(mut self) {
        loop {
            let job = {
                let Ok(jobs) = self.jobs.lock() else { return };
                match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                }
            };
            if self.cancelled.load(Ordering::Relaxed) {
                // Dropping the job's channels tells whoever waits on them.
                continue;
            }
            match job {
                Job::Whole {
                    unit,
                    data,
                    output_limit,
                    result,
                } => {
                    let capacity = usize::try_from(output_limit).unwrap_or(0);
                    let mut out = self.outputs.take(capacity);
                    let decoded = self
                        .decoder
                        .decode(&unit, &data, output_limit, &mut out)
                        .map(|len| Filled {
                            len: len.min(out.len()),
                            buf: out,
                        });
                    self.inputs.put(data);
                    let _ = result.send(decoded);
                }
                Job::Streamed {
                    unit,
                    chunks,
                    output,
                } => {
                    let mut input = ChunkReader {
                        chunks,
                        buffers: self.inputs.clone(),
                        data: Vec::new(),
                        pos: 0,
                        failure: None,
                    };
                    let mut writer = StreamOutput {
                        output: &output,
                        buffers: &self.outputs,
                        chunk: Vec::new(),
                        len: 0,
                    };
                    let result = self
                        .decoder
                        .stream(&unit, &mut input, &mut writer)
                        .and_then(|()| writer.flush());
                    let message = match result {
                        Ok(()) => StreamOut::End,
                        // The splitter's own error (truncation, a bad
                        // header) says more than its consequence.
                        Err(e) => StreamOut::Failed(input.failure.take().unwrap_or(e)),
                    };
                    let _ = output.send(message);
                }
            }
        }
    }
}

/// Recycled buffers: musl's malloc maps and unmaps every allocation this
/// large, so fresh buffers would fault in every byte again. A buffer is
/// only allocated when every pooled one is in flight, so the pool never
/// holds more than the budget let through at once.
#[derive(Clone, Default)]
struct BufferPool(Arc<Mutex<Vec<Vec<u8>>>>);

impl BufferPool {
    /// A buffer with room for `capacity` bytes. A reused one keeps its
    /// length and stale bytes: see [`UnitDecoder::decode`].
    fn take(&self, capacity: usize) -> Vec<u8> {
        let reused = self.0.lock().ok().and_then(|mut pool| pool.pop());
        let mut buf = reused.unwrap_or_default();
        buf.reserve(capacity.saturating_sub(buf.len()));
        buf
    }

    /// A cleared buffer for appending to.
    fn take_empty(&self, capacity: usize) -> Vec<u8> {
        let mut buf = self.take(capacity);
        buf.clear();
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

/// The compressed bytes of a streamed unit as the splitter sends them.
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
            let rest = self.data.get(self.pos..).unwrap_or_default();
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.pos += n;
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
                // The splitter closes the channel at the unit's end.
                Err(_) => return Ok(0),
            }
        }
    }
}

/// A streamed unit's output, sent on in `STREAM_CHUNK` pieces. A decoder
/// that writes into a slice fills [`StreamOutput::space`] and calls
/// [`StreamOutput::advance`], which saves a copy; `Write` is there for the
/// others.
pub struct StreamOutput<'a> {
    output: &'a SyncSender<StreamOut>,
    buffers: &'a BufferPool,
    chunk: Vec<u8>,
    /// Output bytes at the start of `chunk`; the rest is stale.
    len: usize,
}

impl StreamOutput<'_> {
    /// Room for more output (never empty).
    pub fn space(&mut self) -> &mut [u8] {
        if self.chunk.len() < STREAM_CHUNK {
            if self.chunk.capacity() == 0 {
                self.chunk = self.buffers.take(STREAM_CHUNK);
            }
            self.chunk.resize(STREAM_CHUNK, 0);
        }
        &mut self.chunk[self.len..]
    }

    /// Marks `n` bytes of [`Self::space`] as output; sends a full chunk.
    pub fn advance(&mut self, n: usize) -> io::Result<()> {
        self.len = (self.len + n).min(self.chunk.len());
        if self.len >= STREAM_CHUNK {
            self.flush()?;
        }
        Ok(())
    }
}

impl Write for StreamOutput<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let space = self.space();
        let n = buf.len().min(space.len());
        space[..n].copy_from_slice(&buf[..n]);
        self.advance(n)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let full = Filled {
            buf: std::mem::take(&mut self.chunk),
            len: std::mem::take(&mut self.len),
        };
        self.output.send(StreamOut::Data(full)).map_err(|_| {
            io::Error::new(ErrorKind::BrokenPipe, "the decoded stream's reader is gone")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::Instant;

    /// A toy format for the engine alone: each unit is a 9-byte header
    /// (`U`, compressed length and output length, u32 LE) and a payload
    /// whose output is the payload repeated to the output length. An `E`
    /// header makes a unit that fails to decode; anything else is garbage.
    struct ToySplit<R> {
        input: R,
        pos: u64,
    }

    #[derive(Debug)]
    struct ToyUnit {
        offset: u64,
        output: u64,
        fail: bool,
    }

    fn toy_error(offset: u64, what: &str) -> io::Error {
        io::Error::new(
            ErrorKind::InvalidData,
            format!("toy unit at input byte {offset}: {what}"),
        )
    }

    impl<R: Read + Send + 'static> Split<ToyUnit> for ToySplit<R> {
        fn run(mut self, dispatch: &mut Dispatcher<ToyUnit>) -> Result<(), Stop> {
            loop {
                let offset = self.pos;
                let mut header = [0u8; 9];
                let got = super::super::read_full(&mut self.input, &mut header)?;
                self.pos += got as u64;
                if got == 0 {
                    return Ok(());
                }
                if got < 9 || !matches!(header[0], b'U' | b'E') {
                    return Err(toy_error(offset, "bad header").into());
                }
                let len = u32::from_le_bytes(header[1..5].try_into().unwrap());
                let output = u64::from(u32::from_le_bytes(header[5..9].try_into().unwrap()));
                let unit = ToyUnit {
                    offset,
                    output,
                    fail: header[0] == b'E',
                };
                if dispatch.config().fits_whole(u64::from(len), output) {
                    dispatch.reserve(u64::from(len))?;
                    let mut data = dispatch.input_buffer(len as usize);
                    data.resize(len as usize, 0);
                    let got = super::super::read_full(&mut self.input, &mut data)?;
                    self.pos += got as u64;
                    if got < data.len() {
                        return Err(toy_error(offset, "truncated").into());
                    }
                    dispatch.whole(unit, data, output)?;
                } else {
                    let sender = dispatch.stream(unit)?;
                    let mut left = len as usize;
                    while left > 0 {
                        let mut chunk = dispatch.input_buffer(STREAM_CHUNK);
                        chunk.resize(left.min(STREAM_CHUNK), 0);
                        let got = super::super::read_full(&mut self.input, &mut chunk)?;
                        self.pos += got as u64;
                        if got < chunk.len() {
                            let e = toy_error(offset, "truncated");
                            sender.fail(&e);
                            return Err(e.into());
                        }
                        left -= got;
                        sender.send(chunk)?;
                    }
                }
            }
        }
    }

    struct ToyDecoder {
        seed: u64,
    }

    impl ToyDecoder {
        /// A few milliseconds at random, so units finish out of order.
        fn dawdle(&mut self) {
            self.seed = self
                .seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            thread::sleep(Duration::from_micros(self.seed >> 52));
        }
    }

    impl UnitDecoder for ToyDecoder {
        type Unit = ToyUnit;

        fn decode(
            &mut self,
            unit: &ToyUnit,
            data: &[u8],
            limit: u64,
            out: &mut Vec<u8>,
        ) -> io::Result<usize> {
            self.dawdle();
            assert!(unit.output <= limit);
            if unit.fail {
                return Err(toy_error(unit.offset, "does not decode"));
            }
            out.clear();
            repeat_into(data, usize::try_from(unit.output).unwrap(), out);
            Ok(out.len())
        }

        fn stream(
            &mut self,
            unit: &ToyUnit,
            input: &mut dyn Read,
            output: &mut StreamOutput<'_>,
        ) -> io::Result<()> {
            let mut data = Vec::new();
            input.read_to_end(&mut data)?;
            if unit.fail {
                return Err(toy_error(unit.offset, "does not decode"));
            }
            let mut out = Vec::new();
            repeat_into(&data, usize::try_from(unit.output).unwrap(), &mut out);
            output.write_all(&out)
        }
    }

    /// `payload` repeated to `len` bytes (a memcpy per repeat: fast even
    /// unoptimised).
    fn repeat_into(payload: &[u8], len: usize, out: &mut Vec<u8>) {
        while out.len() < len {
            let n = payload.len().min(len - out.len());
            out.extend_from_slice(&payload[..n]);
        }
    }

    fn toy_unit(kind: u8, payload: &[u8], output: u32) -> (Vec<u8>, Vec<u8>) {
        let mut unit = vec![kind];
        unit.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        unit.extend_from_slice(&output.to_le_bytes());
        unit.extend_from_slice(payload);
        let mut out = Vec::new();
        repeat_into(payload, output as usize, &mut out);
        (unit, out)
    }

    fn start(input: Vec<u8>, config: OrderedConfig) -> OrderedDecoder {
        let mut seed = 1;
        OrderedDecoder::start(
            "toy",
            ToySplit {
                input: Cursor::new(input),
                pos: 0,
            },
            move || {
                seed += 7;
                Ok(ToyDecoder { seed })
            },
            config,
        )
    }

    /// Random units: (stream, expected output).
    fn random_units(count: usize, max_output: u32, seed: u64) -> (Vec<u8>, Vec<u8>) {
        let mut state = seed;
        let mut next = move |bound: u32| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            u32::try_from(state % u64::from(bound.max(1))).unwrap()
        };
        let (mut input, mut expected) = (Vec::new(), Vec::new());
        for i in 0..count {
            let payload: Vec<u8> = (0..next(3000) + 1)
                .map(|j| (i * 31 + j as usize).to_le_bytes()[0])
                .collect();
            let (unit, out) = toy_unit(b'U', &payload, next(max_output));
            input.extend_from_slice(&unit);
            expected.extend_from_slice(&out);
        }
        (input, expected)
    }

    fn wait_for_threads_to_exit(decoder: &OrderedDecoder) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !decoder.threads_exited() {
            assert!(Instant::now() < deadline, "decoder threads still running");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn output_comes_back_in_order_under_random_unit_sizes() {
        for (threads, seed) in [(1, 1), (3, 2), (8, 3)] {
            let (input, expected) = random_units(200, 3 << 20, seed);
            let mut decoder = start(input, OrderedConfig::new(threads, MIN_MEMORY));
            let mut out = Vec::new();
            decoder.read_to_end(&mut out).unwrap();
            assert!(out == expected, "threads {threads}");
            wait_for_threads_to_exit(&decoder);
        }
    }

    #[test]
    fn bytes_in_flight_stay_within_the_budget() {
        let (input, expected) = random_units(120, 4 << 20, 9);
        for threads in [2, 16] {
            let config = OrderedConfig::new(threads, MIN_MEMORY);
            let mut decoder = start(input.clone(), config);
            // A slow reader lets the splitter run as far ahead as it may.
            let mut out = Vec::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                thread::sleep(Duration::from_micros(200));
                match decoder.read(&mut buf).unwrap() {
                    0 => break,
                    n => out.extend_from_slice(&buf[..n]),
                }
            }
            assert!(out == expected);
            let peak = decoder.peak_memory();
            assert!(peak <= config.memory, "peak {peak} over {}", config.memory);
            // And the budget was used: more than one unit was in flight.
            assert!(peak > 4 << 20, "peak {peak}");
        }
    }

    #[test]
    fn an_error_in_unit_k_comes_after_the_units_before_it() {
        let (good, expected) = random_units(30, 1 << 20, 4);
        let (bad, _) = toy_unit(b'E', b"xyz", 1000);
        let (after, _) = random_units(30, 1 << 20, 5);
        let input = [&good[..], &bad, &after].concat();
        for threads in [1, 4] {
            let mut decoder = start(input.clone(), OrderedConfig::new(threads, MIN_MEMORY));
            let mut out = Vec::new();
            let err = decoder.read_to_end(&mut out).unwrap_err();
            assert!(out == expected, "threads {threads}");
            assert_eq!(
                err.to_string(),
                format!("toy unit at input byte {}: does not decode", good.len())
            );
            let again = decoder.read(&mut [0u8; 8]).unwrap_err();
            assert_eq!(again.to_string(), err.to_string());
            wait_for_threads_to_exit(&decoder);
        }
    }

    #[test]
    fn a_splitter_error_comes_in_order_too() {
        let (good, expected) = random_units(20, 1 << 20, 6);
        let input = [&good[..], b"garbage!!"].concat();
        let mut decoder = start(input, OrderedConfig::new(4, MIN_MEMORY));
        let mut out = Vec::new();
        let err = decoder.read_to_end(&mut out).unwrap_err();
        assert!(out == expected);
        assert_eq!(
            err.to_string(),
            format!("toy unit at input byte {}: bad header", good.len())
        );
    }

    #[test]
    fn a_unit_larger_than_the_budget_streams() {
        let config = OrderedConfig::new(3, MIN_MEMORY);
        let payload: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
        let big_output = u32::try_from(config.memory * 2).unwrap();
        let (small, small_out) = toy_unit(b'U', b"abc", 5 << 20);
        let (big, big_out) = toy_unit(b'U', &payload, big_output);
        let input = [&small[..], &big, &small].concat();
        let expected = [&small_out[..], &big_out, &small_out].concat();
        let mut decoder = start(input, config);
        let mut out = Vec::new();
        decoder.read_to_end(&mut out).unwrap();
        assert!(out == expected);
        assert!(decoder.peak_memory() <= config.memory);

        // Truncated inside the streamed unit: the splitter's error wins.
        let cut = small.len() + 9 + (2 << 20);
        let input = [&small[..], &big].concat()[..cut].to_vec();
        let mut decoder = start(input, config);
        let mut out = Vec::new();
        let err = decoder.read_to_end(&mut out).unwrap_err();
        assert!(out == small_out);
        assert_eq!(
            err.to_string(),
            format!("toy unit at input byte {}: truncated", small.len())
        );
    }

    #[test]
    fn dropping_early_stops_every_thread() {
        let (input, expected) = random_units(100, 2 << 20, 8);
        for read_first in [0, 1, 3 << 20] {
            let mut decoder = start(input.clone(), OrderedConfig::new(4, MIN_MEMORY));
            let mut head = vec![0u8; read_first];
            decoder.read_exact(&mut head).unwrap();
            assert!(head[..] == expected[..read_first]);
            let alive = decoder.alive.clone();
            drop(decoder);
            let deadline = Instant::now() + Duration::from_secs(20);
            while alive.strong_count() > 0 {
                assert!(Instant::now() < deadline, "decoder threads still running");
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    #[test]
    fn decode_memory_values() {
        assert_eq!(parse_memory("256M").unwrap(), 256 << 20);
        assert_eq!(parse_memory("2g").unwrap(), 2 << 30);
        assert_eq!(parse_memory("16777216").unwrap(), 16 << 20);
        for bad in ["", "1.5G", "10M", "12 M", "256MB", "99999999999G"] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_budget_decodes_64_mib_units_whole() {
        let config = OrderedConfig::new(16, DEFAULT_MEMORY);
        assert!(config.fits_whole(20 << 20, 64 << 20));
        assert!(!config.fits_whole(1 << 20, (64 << 20) + 1));
        assert!(!config.fits_whole(64 << 20, 64 << 20) || config.memory >= 256 << 20);
        assert_eq!(OrderedConfig::new(2, 1).memory, MIN_MEMORY);
    }
}
