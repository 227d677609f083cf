//! The last stage: decoded image bytes onto the target, fail-closed.
//!
//! - [`ImageWriter::begin`] refuses an image known to be too large before
//!   touching the target, then wipes its first and last MiB, so an
//!   interrupted deploy never leaves an old partition table (primary GPT at
//!   the start, backup at the end) next to new data.
//! - The image's first MiB (partition table, boot code) is held in memory;
//!   everything after it is written at its offset in large writes, and runs
//!   of zero blocks go through [`BlockTarget::zero_range`], never skipped.
//! - [`ImageWriter::commit`], called once the stream decoded cleanly and
//!   was verified, writes the first MiB last, syncs and re-reads the
//!   partition table. Until then the disk has no partition table at all.
//! - Any failure ends in [`fail_closed`]: [`ImageWriter::abort`], a failed
//!   commit, or dropping the writer unfinished.
//!
//! Hashing is not done here: wrap the writer in `hash::HashingWriter` (or
//! hash in another thread), so this stage stays about where bytes land.

use std::io::{self, Write};

use super::target::{BlockTarget, write_zeros};
use crate::text::human_size;

/// Bytes at the start of the image written only at commit.
pub const HOLDBACK: usize = 1 << 20;
/// Bytes zeroed at each end of the target before writing and on failure.
pub const WIPE_LEN: u64 = 1 << 20;
/// Bytes gathered before a write: a few block-layer requests each.
const WRITE_BATCH: usize = 4 << 20;
/// A write at least this large, arriving when the batch is empty, goes to
/// the target from the caller's buffer (deploy's chunks are 1 and 4 MiB).
const DIRECT_WRITE: usize = 1 << 20;
/// Shorter zero runs are written as data: a separate zeroing request costs
/// more than it saves.
const MIN_ZERO_RUN: usize = 64 << 10;

/// Writes an image onto `T`; see the module documentation for the order of
/// operations. `impl Write` accepts chunks of any size.
pub struct ImageWriter<T: BlockTarget> {
    /// `None` only once commit or abort has taken it.
    target: Option<T>,
    /// Bytes the image may not exceed; `None` for a target that grows.
    limit: Option<u64>,
    block: usize,
    batch: usize,
    min_zero_run: usize,
    held: Vec<u8>,
    /// Image bytes after the holdback not yet written, from `buf_offset`.
    buf: Vec<u8>,
    buf_offset: u64,
    /// A zero run that reached the end of the last batch, not yet written:
    /// it may continue in the next one.
    zero_run: ZeroRun,
    /// Image bytes accepted so far.
    position: u64,
    /// Set when a write to the target failed: what is on it is unknown, so
    /// nothing more is written but the fail-closed wipe.
    failed: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct ZeroRun {
    start: u64,
    len: u64,
}

/// `message: err`, keeping the error's kind.
fn context(err: &io::Error, message: impl std::fmt::Display) -> io::Error {
    io::Error::new(err.kind(), format!("{message}: {err}"))
}

fn other(message: String) -> io::Error {
    io::Error::other(message)
}

/// Fails unless an image of `image_size` bytes fits on `target`.
pub fn check_fits<T: BlockTarget + ?Sized>(target: &T, image_size: u64) -> io::Result<()> {
    let size = target.size();
    if target.grows() || image_size <= size {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::StorageFull,
        format!(
            "image is {} but {} holds {} ({image_size} > {size} bytes)",
            human_size(image_size),
            target.describe(),
            human_size(size),
        ),
    ))
}

/// Zeroes the first and the last MiB of `target` and syncs it, so no
/// partition table, old or half-written, survives. Tries every step even
/// when one fails, and returns the first error.
pub fn fail_closed<T: BlockTarget + ?Sized>(target: &mut T) -> io::Result<()> {
    let name = target.describe();
    let size = target.size();
    let head = WIPE_LEN.min(size);
    let tail = size.saturating_sub(WIPE_LEN).max(head);
    let mut result = target
        .zero_range(0, head)
        .map_err(|e| context(&e, format_args!("wiping the first MiB of {name}")));
    if tail < size {
        let wiped = target
            .zero_range(tail, size - tail)
            .map_err(|e| context(&e, format_args!("wiping the last MiB of {name}")));
        result = result.and(wiped);
    }
    let synced = target
        .sync()
        .map_err(|e| context(&e, format_args!("syncing {name}")));
    result.and(synced)
}

/// Whether `block` holds only zeros. Checked 64 bytes at a time: the OR
/// over a fixed-size chunk vectorises, an early exit per byte does not.
fn is_zero(block: &[u8]) -> bool {
    let mut chunks = block.chunks_exact(64);
    chunks.all(|c| c.iter().fold(0, |acc, &b| acc | b) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to).saturating_mul(to)
}

impl<T: BlockTarget> ImageWriter<T> {
    /// Checks `expected_size` (when already known) against the target, then
    /// wipes both ends of the target. A size error leaves the target
    /// untouched.
    pub fn begin(mut target: T, expected_size: Option<u64>) -> io::Result<Self> {
        if let Some(size) = expected_size {
            check_fits(&target, size)?;
        }
        let block = usize::try_from(target.logical_block_size()).unwrap_or(0);
        if !block.is_power_of_two() || block > HOLDBACK {
            return Err(other(format!(
                "{} reports an unusable logical block size of {block} bytes",
                target.describe()
            )));
        }
        fail_closed(&mut target)?;
        Ok(ImageWriter {
            limit: (!target.grows()).then(|| target.size()),
            target: Some(target),
            block,
            batch: round_up(WRITE_BATCH, block),
            min_zero_run: round_up(MIN_ZERO_RUN, block),
            held: Vec::with_capacity(HOLDBACK),
            buf: Vec::new(),
            buf_offset: HOLDBACK as u64,
            zero_run: ZeroRun::default(),
            position: 0,
            failed: false,
        })
    }

    /// Image bytes accepted so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Writes `data` at image offset `offset`, for images whose parts are
    /// decoded out of order (`pipeline::scatter`); not mixed with `Write`.
    /// What falls in the first MiB is held back like the streamed
    /// image's; the rest is written at once, zero runs through
    /// `zero_range`. `offset` is a multiple of the logical block size.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        if self.failed {
            return Err(self.failed_error());
        }
        let end = offset + data.len() as u64;
        if let Some(limit) = self.limit {
            if end > limit {
                let name = self.target.as_ref().map(BlockTarget::describe);
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "image is larger than {} ({limit} bytes): data up to byte {end}",
                        name.as_deref().unwrap_or("the target"),
                    ),
                ));
            }
        }
        if offset % self.block as u64 != 0 {
            return Err(other(format!(
                "image bytes at offset {offset} are not aligned to the {}-byte blocks of the target",
                self.block
            )));
        }
        let hold = HOLDBACK as u64;
        let (held, rest, rest_at) = if offset < hold {
            let n = usize::try_from(hold - offset)
                .unwrap_or(usize::MAX)
                .min(data.len());
            (&data[..n], &data[n..], hold)
        } else {
            (&data[..0], data, offset)
        };
        if !held.is_empty() {
            let at = usize::try_from(offset).unwrap_or(usize::MAX);
            if self.held.len() < at + held.len() {
                self.held.resize(at + held.len(), 0);
            }
            self.held[at..at + held.len()].copy_from_slice(held);
        }
        self.position = self.position.max(end);
        if rest.is_empty() {
            return Ok(());
        }
        let Some(target) = self.target.as_mut() else {
            return Err(other("image writer already finished".to_owned()));
        };
        let result = write_runs(
            target,
            rest,
            rest_at,
            self.block,
            self.min_zero_run as u64,
            &mut ZeroRun::default(),
            true,
        );
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Writes what is still buffered, then the held-back first MiB, syncs
    /// and re-reads the partition table. Call it only once the whole image
    /// arrived and was verified. Returns the target and the image size.
    /// On failure the target has been wiped ([`fail_closed`]).
    pub fn commit(mut self) -> io::Result<(T, u64)> {
        let result = self.finish();
        let mut target = self.take_target()?;
        match result {
            Ok(()) => Ok((target, self.position)),
            Err(e) => {
                if let Err(wipe) = fail_closed(&mut target) {
                    log::error!("{wipe}");
                }
                Err(e)
            }
        }
    }

    /// Gives up: wipes both ends of the target (logging, not returning,
    /// a failure to do so, since the caller is already reporting one).
    pub fn abort(mut self) -> Option<T> {
        let mut target = self.take_target().ok()?;
        if let Err(e) = fail_closed(&mut target) {
            log::error!("{e}");
        }
        Some(target)
    }

    fn take_target(&mut self) -> io::Result<T> {
        self.target
            .take()
            .ok_or_else(|| other("image writer already finished".to_owned()))
    }

    fn finish(&mut self) -> io::Result<()> {
        if self.failed {
            return Err(self.failed_error());
        }
        self.write_batch(true)?;
        let Some(target) = self.target.as_mut() else {
            return Err(other("image writer already finished".to_owned()));
        };
        let name = target.describe();
        if !self.held.is_empty() {
            target
                .write_at(&self.held, 0)
                .map_err(|e| context(&e, format_args!("writing {name} at byte 0")))?;
        }
        target
            .sync()
            .map_err(|e| context(&e, format_args!("syncing {name}")))?;
        target.reread_partitions()
    }

    fn failed_error(&self) -> io::Error {
        let name = self.target.as_ref().map(BlockTarget::describe);
        other(format!(
            "an earlier write to {} failed",
            name.as_deref().unwrap_or("the target")
        ))
    }

    /// Writes the buffered bytes: data as data, long zero runs through
    /// `zero_range`. Short zero runs stay in the data around them. A zero
    /// run reaching the end of the buffer is carried over, unless this is
    /// the last batch.
    fn write_batch(&mut self, last: bool) -> io::Result<()> {
        let Some(target) = self.target.as_mut() else {
            return Err(other("image writer already finished".to_owned()));
        };
        let result = write_runs(
            target,
            &self.buf,
            self.buf_offset,
            self.block,
            self.min_zero_run as u64,
            &mut self.zero_run,
            last,
        );
        self.buf_offset += self.buf.len() as u64;
        self.buf.clear();
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    /// Writes `data`, whole blocks following what was written so far, as
    /// a batch of its own (the batch buffer being empty).
    fn write_runs_from(&mut self, data: &[u8]) -> io::Result<()> {
        let Some(target) = self.target.as_mut() else {
            return Err(other("image writer already finished".to_owned()));
        };
        let result = write_runs(
            target,
            data,
            self.buf_offset,
            self.block,
            self.min_zero_run as u64,
            &mut self.zero_run,
            false,
        );
        self.buf_offset += data.len() as u64;
        if result.is_err() {
            self.failed = true;
        }
        result
    }
}

/// The heart of `write_batch`, apart so the borrows stay simple.
fn write_runs<T: BlockTarget + ?Sized>(
    target: &mut T,
    data: &[u8],
    base: u64,
    block: usize,
    min_run: u64,
    run: &mut ZeroRun,
    last: bool,
) -> io::Result<()> {
    let name = target.describe();
    let full = data.len() / block * block;
    // Start of the bytes in `data` not yet written.
    let mut pending = 0;
    let write = |target: &mut T, from: usize, to: usize| -> io::Result<()> {
        if from >= to {
            return Ok(());
        }
        let at = base + from as u64;
        target
            .write_at(&data[from..to], at)
            .map_err(|e| context(&e, format_args!("writing {name} at byte {at}")))
    };
    // Ends the current zero run, which stops at `end` (an index in `data`).
    let end_run = |target: &mut T, run: &mut ZeroRun, pending: &mut usize, end: usize| {
        if run.len >= min_run {
            // Everything before the run; empty when the run began in an
            // earlier batch.
            let run_index = usize::try_from(run.start.saturating_sub(base)).unwrap_or(0);
            write(target, *pending, run_index)?;
            target.zero_range(run.start, run.len).map_err(|e| {
                context(
                    &e,
                    format_args!(
                        "zeroing {} bytes {}..{}",
                        target.describe(),
                        run.start,
                        run.start + run.len
                    ),
                )
            })?;
            *pending = end;
        } else if run.start < base {
            // A short run carried from the previous batch: its part there
            // is written as zeros, its part here stays with the data.
            let carried = base - run.start;
            write_zeros(|z, at| target.write_at(z, at), run.start, carried).map_err(|e| {
                context(
                    &e,
                    format_args!("writing {} at byte {}", target.describe(), run.start),
                )
            })?;
        }
        *run = ZeroRun::default();
        io::Result::Ok(())
    };

    for (index, chunk) in data[..full].chunks_exact(block).enumerate() {
        let at = index * block;
        if is_zero(chunk) {
            if run.len == 0 {
                run.start = base + at as u64;
            }
            run.len += block as u64;
        } else if run.len > 0 {
            end_run(target, run, &mut pending, at)?;
        }
    }
    if last {
        if run.len > 0 {
            end_run(target, run, &mut pending, full)?;
        }
        return write(target, pending, data.len());
    }
    if run.len > 0 {
        let run_index = usize::try_from(run.start.saturating_sub(base)).unwrap_or(0);
        write(target, pending, run_index)?;
        // Only whole batches come here, so nothing follows the run.
        return Ok(());
    }
    write(target, pending, full)
}

impl<T: BlockTarget> Write for ImageWriter<T> {
    /// Takes up to the end of the held-back region or of the current batch,
    /// whichever is closer; `write_all` loops.
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.failed {
            return Err(self.failed_error());
        }
        if data.is_empty() {
            return Ok(0);
        }
        let room = match self.limit {
            Some(limit) if self.position >= limit => {
                let name = self.target.as_ref().map(BlockTarget::describe);
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    format!(
                        "image is larger than {} ({limit} bytes): more data at byte {}",
                        name.as_deref().unwrap_or("the target"),
                        self.position
                    ),
                ));
            }
            Some(limit) => usize::try_from(limit - self.position).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let data = &data[..data.len().min(room)];
        if self.held.len() < HOLDBACK {
            let n = data.len().min(HOLDBACK - self.held.len());
            self.held.extend_from_slice(&data[..n]);
            self.position += n as u64;
            return Ok(n);
        }
        if self.buf.is_empty() && data.len() >= DIRECT_WRITE {
            // Whole blocks straight from the caller's buffer: copying every
            // byte of the image into the batch first cost a memcpy per byte.
            let n = data.len() / self.block * self.block;
            self.write_runs_from(&data[..n])?;
            self.position += n as u64;
            return Ok(n);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.batch);
        }
        let n = data.len().min(self.batch - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        self.position += n as u64;
        if self.buf.len() == self.batch {
            self.write_batch(false)?;
        }
        Ok(n)
    }

    /// Nothing to do: batches are written when full, and the rest only at
    /// commit, which is the one real flush.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<T: BlockTarget> Drop for ImageWriter<T> {
    /// Dropped without commit or abort (an early `?` in the caller): the
    /// deploy failed, so fail closed.
    fn drop(&mut self) {
        if let Some(target) = self.target.as_mut() {
            log::warn!(
                "image writer for {} dropped unfinished; wiping its partition tables",
                target.describe()
            );
            if let Err(e) = fail_closed(target) {
                log::error!("{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::target::FileTarget;
    use crate::pipeline::target::testing::{MemoryTarget, Op};

    const MIB: usize = 1 << 20;

    /// Deterministic noise (xorshift), never zero in a 64-byte stretch.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0] | 1
            })
            .collect()
    }

    /// An image with data, long and short zero runs, and runs that cross
    /// batch boundaries.
    fn image_with_zero_runs(len: usize) -> Vec<u8> {
        let mut image = noise(len, 7);
        let mut zero = |from: usize, to: usize| image[from.min(len)..to.min(len)].fill(0);
        zero(0x1_0000, 0x2_0000); // inside the holdback
        zero(MIB + 4096, MIB + 4096 + 512); // a single short run
        zero(2 * MIB, 3 * MIB); // long run inside one batch
        zero(5 * MIB - 8192, 5 * MIB + 8192); // short run across a batch edge
        zero(9 * MIB - 300 * 1024, 11 * MIB); // long run across a batch edge
        zero(13 * MIB - 40 * 1024, 13 * MIB + 40 * 1024); // short halves, long whole
        zero(len - 100 * 1024, len - 10); // long run before a partial tail
        image
    }

    fn write_in_chunks<W: Write>(writer: &mut W, data: &[u8], chunk: usize) {
        for piece in data.chunks(chunk) {
            writer.write_all(piece).unwrap();
        }
    }

    fn deploy(target: &MemoryTarget, image: &[u8], chunk: usize) -> u64 {
        let mut writer = ImageWriter::begin(target.clone(), Some(image.len() as u64)).unwrap();
        write_in_chunks(&mut writer, image, chunk);
        writer.commit().unwrap().1
    }

    fn ops_after_wipe(target: &MemoryTarget) -> Vec<Op> {
        let ops = target.ops();
        let sync = ops.iter().position(|op| *op == Op::Sync).unwrap();
        ops[sync + 1..].to_vec()
    }

    #[test]
    fn begin_wipes_both_ends_and_syncs_before_any_image_byte() {
        let target = MemoryTarget::from_vec(noise(4 * MIB, 1));
        let writer = ImageWriter::begin(target.clone(), None).unwrap();
        assert_eq!(
            target.ops(),
            [
                Op::Zero {
                    offset: 0,
                    len: WIPE_LEN
                },
                Op::Zero {
                    offset: 3 * MIB as u64,
                    len: WIPE_LEN
                },
                Op::Sync
            ]
        );
        let data = target.contents();
        assert!(data[..MIB].iter().all(|&b| b == 0));
        assert!(data[MIB..3 * MIB].iter().all(|&b| b != 0));
        assert!(data[3 * MIB..].iter().all(|&b| b == 0));
        drop(writer);
    }

    #[test]
    fn small_image_is_held_back_entirely_and_written_at_commit() {
        for len in [0, 1, 1000, HOLDBACK - 1, HOLDBACK] {
            let target = MemoryTarget::from_vec(noise(3 * MIB, 2));
            let image = noise(len, 3);
            let mut writer = ImageWriter::begin(target.clone(), None).unwrap();
            writer.write_all(&image).unwrap();
            assert_eq!(ops_after_wipe(&target), [], "len {len}");
            assert_eq!(writer.commit().unwrap().1, len as u64);
            let mut expected = vec![
                Op::Write {
                    offset: 0,
                    len: len as u64,
                },
                Op::Sync,
                Op::Reread,
            ];
            if len == 0 {
                expected.remove(0);
            }
            assert_eq!(ops_after_wipe(&target), expected, "len {len}");
            let data = target.contents();
            assert_eq!(data[..len], image[..]);
            assert!(data[len..MIB].iter().all(|&b| b == 0));
        }
    }

    #[test]
    fn one_byte_past_the_holdback_is_written_before_the_first_mib() {
        let target = MemoryTarget::new(2 * MIB);
        let image = noise(HOLDBACK + 1, 4);
        assert_eq!(deploy(&target, &image, 4096), image.len() as u64);
        assert_eq!(
            ops_after_wipe(&target),
            [
                Op::Write {
                    offset: HOLDBACK as u64,
                    len: 1
                },
                Op::Write {
                    offset: 0,
                    len: HOLDBACK as u64
                },
                Op::Sync,
                Op::Reread
            ]
        );
        assert_eq!(target.contents()[..image.len()], image[..]);
    }

    #[test]
    fn large_image_over_random_bytes_ends_byte_identical() {
        let len = 15 * MIB + 777;
        let image = image_with_zero_runs(len);
        for block in [512, 4096] {
            for chunk in [MIB, 65_537, 4 * MIB + 3] {
                let target = MemoryTarget::from_vec(noise(16 * MIB, 5)).with_block_size(block);
                assert_eq!(deploy(&target, &image, chunk), len as u64);
                let data = target.contents();
                assert!(data[..len] == image[..], "block {block}, chunk {chunk}");
                // Past the image: the wiped last MiB is zero, the rest untouched.
                assert!(data[len..].iter().all(|&b| b == 0));
                let ops = ops_after_wipe(&target);
                let zeroed: Vec<(u64, u64)> = ops
                    .iter()
                    .filter_map(|op| match *op {
                        Op::Zero { offset, len } => Some((offset, len)),
                        _ => None,
                    })
                    .collect();
                let b = u64::from(block);
                let m = MIB as u64;
                let short_tail_start = (len as u64 - 100 * 1024).div_ceil(b) * b;
                let short_tail_end = (len as u64 - 10) / b * b;
                assert_eq!(
                    zeroed,
                    [
                        (2 * m, m),
                        (9 * m - 300 * 1024, 2 * m + 300 * 1024),
                        (13 * m - 40 * 1024, 80 * 1024),
                        (short_tail_start, short_tail_end - short_tail_start),
                    ],
                    "block {block}, chunk {chunk}"
                );
                for op in &ops {
                    if let Op::Write { offset, .. } | Op::Zero { offset, .. } = *op {
                        assert_eq!(offset % b, 0, "{op:?} unaligned for block {block}");
                    }
                }
                // Offset 0 is written last, then sync and re-read, once each.
                assert_eq!(
                    ops[ops.len() - 3..],
                    [
                        Op::Write {
                            offset: 0,
                            len: HOLDBACK as u64
                        },
                        Op::Sync,
                        Op::Reread
                    ]
                );
                assert_eq!(ops.iter().filter(|op| **op == Op::Reread).count(), 1);
                assert_eq!(
                    ops.iter()
                        .filter(|op| matches!(op, Op::Write { offset: 0, .. }))
                        .count(),
                    1
                );
            }
        }
    }

    #[test]
    fn writes_are_batched() {
        let len = 13 * MIB;
        let image = noise(len, 6);
        let target = MemoryTarget::new(len);
        deploy(&target, &image, 1000);
        let writes: Vec<Op> = ops_after_wipe(&target);
        assert_eq!(
            writes,
            [
                Op::Write {
                    offset: MIB as u64,
                    len: 4 * MIB as u64
                },
                Op::Write {
                    offset: 5 * MIB as u64,
                    len: 4 * MIB as u64
                },
                Op::Write {
                    offset: 9 * MIB as u64,
                    len: 4 * MIB as u64
                },
                Op::Write {
                    offset: 0,
                    len: MIB as u64
                },
                Op::Sync,
                Op::Reread,
            ]
        );
    }

    #[test]
    fn large_chunks_are_written_from_the_callers_buffer() {
        let len = 13 * MIB + 4096;
        let mut image = noise(len, 7);
        image[6 * MIB..8 * MIB].fill(0);
        let target = MemoryTarget::new(len);
        deploy(&target, &image, 3 * MIB);
        assert!(target.contents() == image);
        let writes: Vec<Op> = ops_after_wipe(&target);
        assert_eq!(
            writes[..3],
            [
                // The first chunk's rest after the held-back MiB.
                Op::Write {
                    offset: MIB as u64,
                    len: 2 * MIB as u64
                },
                // The zero run within the next chunk is a zeroing request.
                Op::Write {
                    offset: 3 * MIB as u64,
                    len: 3 * MIB as u64
                },
                Op::Zero {
                    offset: 6 * MIB as u64,
                    len: 2 * MIB as u64
                },
            ]
        );
    }

    #[test]
    fn all_zero_image_after_the_holdback_is_one_zero_range() {
        let len = 10 * MIB + 4096;
        let mut image = vec![0; len];
        image[..10].copy_from_slice(b"bootsector");
        let target = MemoryTarget::from_vec(noise(len, 8));
        deploy(&target, &image, 3 * MIB);
        assert_eq!(
            ops_after_wipe(&target),
            [
                Op::Zero {
                    offset: MIB as u64,
                    len: (len - MIB) as u64
                },
                Op::Write {
                    offset: 0,
                    len: MIB as u64
                },
                Op::Sync,
                Op::Reread,
            ]
        );
        assert!(target.contents() == image);
    }

    #[test]
    fn one_byte_writes() {
        let image = image_with_zero_runs(MIB + 200 * 1024 + 3);
        let target = MemoryTarget::from_vec(noise(2 * MIB, 9));
        deploy(&target, &image, 1);
        assert!(target.contents()[..image.len()] == image[..]);
    }

    #[test]
    fn image_exactly_the_target_size() {
        let image = image_with_zero_runs(6 * MIB);
        let target = MemoryTarget::from_vec(noise(6 * MIB, 10));
        deploy(&target, &image, 12345);
        assert!(target.contents() == image);
    }

    #[test]
    fn one_byte_more_than_the_target_fails_at_the_limit() {
        let size = 6 * MIB;
        let image = noise(size + 1, 11);
        let handle = MemoryTarget::new(size);
        let mut writer = ImageWriter::begin(handle.clone(), None).unwrap();
        let err = image
            .chunks(4096)
            .try_for_each(|c| writer.write_all(c))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert_eq!(
            err.to_string(),
            format!("image is larger than memory ({size} bytes): more data at byte {size}")
        );
        assert_eq!(writer.position(), size as u64);
        writer.abort().unwrap();
        let data = handle.contents();
        assert_eq!(data.len(), size);
        assert!(data[..MIB].iter().all(|&b| b == 0));
        assert!(data[size - MIB..].iter().all(|&b| b == 0));
        assert!(!handle.ops().contains(&Op::Reread));
    }

    #[test]
    fn known_too_large_image_leaves_the_target_untouched() {
        let old = noise(8 * MIB, 12);
        let handle = MemoryTarget::from_vec(old.clone());
        let err = ImageWriter::begin(handle.clone(), Some(9 * MIB as u64))
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "image is 9.0 MiB but memory holds 8.0 MiB (9437184 > 8388608 bytes)"
        );
        assert_eq!(handle.ops(), []);
        assert!(handle.contents() == old);
        // Exactly the size fits.
        ImageWriter::begin(handle.clone(), Some(8 * MIB as u64))
            .unwrap()
            .abort();
    }

    #[test]
    fn write_failure_mid_stream_then_abort_wipes_both_ends() {
        let size = 16 * MIB;
        let image = noise(12 * MIB, 13);
        // Call 0 writes the first batch; call 1, the second, fails.
        let handle = MemoryTarget::from_vec(noise(size, 14)).fail_write_call(1);
        let mut writer = ImageWriter::begin(handle.clone(), None).unwrap();
        // Chunks below DIRECT_WRITE, so that they are batched.
        let err = image
            .chunks(MIB / 2)
            .try_for_each(|c| writer.write_all(c))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "writing memory at byte {}: {}",
                5 * MIB,
                io::Error::from_raw_os_error(libc::EIO)
            )
        );
        // Poisoned: no more writes reach the target.
        let ops = handle.ops().len();
        assert!(writer.write_all(b"more").is_err());
        assert_eq!(handle.ops().len(), ops);
        writer.abort().unwrap();
        let data = handle.contents();
        assert!(data[..MIB].iter().all(|&b| b == 0));
        assert!(data[MIB..5 * MIB] == image[MIB..5 * MIB]);
        assert!(data[size - MIB..].iter().all(|&b| b == 0));
        assert_eq!(handle.ops().last(), Some(&Op::Sync));
        assert!(!handle.ops().contains(&Op::Write {
            offset: 0,
            len: MIB as u64
        }));
    }

    #[test]
    fn dropping_an_unfinished_writer_fails_closed() {
        let size = 4 * MIB;
        let handle = MemoryTarget::from_vec(noise(size, 15));
        let mut writer = ImageWriter::begin(handle.clone(), None).unwrap();
        write_in_chunks(&mut writer, &noise(4 * MIB, 16), MIB);
        let before = handle.ops().len();
        drop(writer);
        let ops = handle.ops();
        assert_eq!(
            ops[before..],
            [
                Op::Zero {
                    offset: 0,
                    len: WIPE_LEN
                },
                Op::Zero {
                    offset: 3 * MIB as u64,
                    len: WIPE_LEN
                },
                Op::Sync
            ]
        );
        assert!(!ops.contains(&Op::Reread));
    }

    #[test]
    fn failed_commit_wipes_and_reports_the_sync() {
        let handle = MemoryTarget::from_vec(noise(3 * MIB, 17));
        let mut writer = ImageWriter::begin(handle.clone(), None).unwrap();
        // Only now fail syncs, so begin's wipe succeeds.
        let handle = handle.fail_sync();
        writer.write_all(&noise(2 * MIB, 18)).unwrap();
        let err = writer.commit().err().unwrap();
        assert!(err.to_string().starts_with("syncing memory: "), "{err}");
        let data = handle.contents();
        assert!(data[..MIB].iter().all(|&b| b == 0));
        assert!(data[2 * MIB..].iter().all(|&b| b == 0));
        assert!(!handle.ops().contains(&Op::Reread));
    }

    #[test]
    fn failed_zeroing_is_reported_with_the_range() {
        let handle = MemoryTarget::new(8 * MIB);
        let mut writer = ImageWriter::begin(handle.clone(), None).unwrap();
        let handle = handle.fail_zero();
        writer.write_all(&vec![0; 6 * MIB]).unwrap();
        let err = writer.commit().err().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "zeroing memory bytes {}..{}: {}",
                MIB,
                6 * MIB,
                io::Error::from_raw_os_error(libc::EIO)
            )
        );
        drop(handle);
    }

    #[test]
    fn unusable_block_size_is_refused_before_any_write() {
        for block in [0, 3, 2 << 20] {
            let handle = MemoryTarget::new(4 * MIB).with_block_size(block);
            let err = ImageWriter::begin(handle.clone(), None).err().unwrap();
            assert!(
                err.to_string().contains("unusable logical block size"),
                "{err}"
            );
            assert_eq!(handle.ops(), []);
        }
    }

    #[test]
    fn zero_check_sees_a_single_set_bit_anywhere() {
        let mut block = vec![0u8; 4096 + 17];
        assert!(is_zero(&block));
        for i in [0, 63, 64, 4095, 4096, 4112] {
            block[i] = 0x80;
            assert!(!is_zero(&block), "byte {i}");
            block[i] = 0;
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn file_targets_new_and_existing() {
        let dir = tempfile::tempdir().unwrap();
        let image = image_with_zero_runs(11 * MIB + 5);

        // A new file grows to the image.
        let path = dir.path().join("new.img");
        let target = FileTarget::open(&path).unwrap();
        let mut writer = ImageWriter::begin(target, Some(image.len() as u64)).unwrap();
        write_in_chunks(&mut writer, &image, 100_000);
        assert_eq!(writer.commit().unwrap().1, image.len() as u64);
        assert!(std::fs::read(&path).unwrap() == image);

        // An existing file full of old bytes behaves as a disk.
        let path = dir.path().join("disk.img");
        std::fs::write(&path, noise(12 * MIB, 19)).unwrap();
        let target = FileTarget::open(&path).unwrap();
        let mut writer = ImageWriter::begin(target, None).unwrap();
        write_in_chunks(&mut writer, &image, 3 * MIB);
        let (target, _) = writer.commit().unwrap();
        // The bulk bypassed the page cache where the filesystem allows it;
        // the bytes are the same either way.
        let file = std::fs::File::open(&path).unwrap();
        if crate::pipeline::direct::tests::does_direct_io(&file) {
            assert!(
                target.direct_bytes() >= 4 * MIB as u64,
                "{}",
                target.direct_bytes()
            );
        }
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 12 * MIB);
        assert!(back[..image.len()] == image[..]);
        assert!(back[image.len()..].iter().all(|&b| b == 0));

        // Too large for it: refused before anything changes.
        let before = std::fs::read(&path).unwrap();
        let target = FileTarget::open(&path).unwrap();
        let err = ImageWriter::begin(target, Some(12 * MIB as u64 + 1))
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("image is 12.0 MiB but "),
            "{err}"
        );
        assert!(std::fs::read(&path).unwrap() == before);
    }

    #[test]
    fn aborted_file_target_has_no_partition_table_at_either_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, noise(8 * MIB, 20)).unwrap();
        let target = FileTarget::open(&path).unwrap();
        let mut writer = ImageWriter::begin(target, None).unwrap();
        write_in_chunks(&mut writer, &noise(8 * MIB, 21), MIB);
        writer.abort().unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(back.len(), 8 * MIB);
        assert!(back[..MIB].iter().all(|&b| b == 0));
        assert!(back[7 * MIB..].iter().all(|&b| b == 0));
    }
}
