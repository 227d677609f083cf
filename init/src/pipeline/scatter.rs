//! Out-of-order decoding for BitTorrent mode: the frames of a seekable
//! zstd image decoded as soon as the pieces holding them are complete, in
//! whatever order the swarm delivers them, each written at its own offset.
//!
//! A swarm completes pieces rarest first, not in order; decoding only the
//! complete prefix (what [`super::super::source::ranged`] hands on) leaves
//! the cores idle until the first pieces arrive, and much of the decoding
//! for after the last. Here every frame is independent, so none waits for
//! the ones before it.
//!
//! **Where the frames are.** The zstd seekable format (zstd's
//! `contrib/seekable_format`) ends the file with a skippable frame, the
//! seek table: each frame's compressed and decompressed size. It is read
//! from the tail ([`Layout::from_seek_table`]); `scripts/publish-image` writes it.
//! Frames must cover the file from byte 0 to the table, one after another;
//! each must decode to exactly the size the table gives, or the deploy
//! fails. An image without a table is decoded in order.
//!
//! **Where the bytes come from.** [`Pieces`]: the swarm. A worker takes the
//! first frame whose bytes are all there; when there is none and the swarm
//! has stalled (`imprint.torrent-timeout=`), the first frame not yet taken
//! comes from the mirrors and is kept beside the swarm's pieces
//! ([`Pieces::fill`]).
//!
//! **What still holds.** The served checksum and a detached signature are
//! computed over the file in order, by a thread that follows the complete
//! prefix ([`hash_in_order`]); the first MiB is held back until both agree
//! ([`ImageWriter::write_at`]); the target is wiped at both ends on any
//! failure. Workers: every core, as many as the decode budget
//! (`imprint.decode-memory=`) holds with one frame's input and output each.

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::fetch::{Fetched, ServedHashers};
use super::image_writer::ImageWriter;
use super::ordered::UnitDecoder;
use super::target::BlockTarget;

/// `Skippable_Magic_Number` of the seek table's frame.
const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// `Seekable_Magic_Number`, the file's last four bytes.
const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// `Number_Of_Frames`, `Seek_Table_Descriptor`, `Seekable_Magic_Number`.
const FOOTER_LEN: usize = 9;
/// The seek table's skippable frame header.
const HEADER_LEN: usize = 8;
/// How long a worker with nothing to do waits for news.
const POLL: Duration = Duration::from_millis(100);
/// Bytes the in-order hasher reads at once.
const HASH_STEP: u64 = 1 << 20;

/// The bytes of the image, as they arrive, in any order.
pub trait Pieces: Sync {
    /// Whether bytes `range` can be read now.
    fn have(&self, range: &Range<u64>) -> bool;
    /// Reads them, once [`have`](Self::have) said so, into `buffer`.
    fn read(&self, range: &Range<u64>, buffer: &mut Vec<u8>) -> Result<()>;
    /// Keeps bytes that came from elsewhere (the mirrors), for later reads.
    fn fill(&self, range: &Range<u64>, bytes: &[u8]) -> Result<()>;
    /// Whether waiting is pointless: no progress for the timeout, or gone.
    fn stalled(&self) -> bool;
    /// Returns when something may have changed, or after `timeout`.
    fn wait(&self, timeout: Duration);
}

impl Pieces for crate::source::swarm::Swarm {
    fn have(&self, range: &Range<u64>) -> bool {
        Self::have(self, range)
    }
    fn read(&self, range: &Range<u64>, buffer: &mut Vec<u8>) -> Result<()> {
        Self::read(self, range, buffer)
    }
    fn fill(&self, range: &Range<u64>, bytes: &[u8]) -> Result<()> {
        Self::fill(self, range, bytes)
    }
    fn stalled(&self) -> bool {
        Self::stalled(self)
    }
    fn wait(&self, timeout: Duration) {
        Self::wait(self, timeout);
    }
}

/// Fetches bytes the swarm did not deliver: from the mirrors.
pub type Fetch<'a> = dyn Fn(&Range<u64>) -> Result<Vec<u8>> + Sync + 'a;

/// One frame: its bytes in the file and its output in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub input: Range<u64>,
    pub output: Range<u64>,
}

/// Where the independent units of a file are: a seekable zstd file's
/// frames (from its seek table) or a single-stream xz file's blocks (from
/// its index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub frames: Vec<Frame>,
    /// Where the units end and the table (seek table, xz index) starts.
    pub table_start: u64,
    /// The decompressed image's size.
    pub image_len: u64,
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

impl Layout {
    /// The seek table ending `tail`, the last bytes of a file of
    /// `file_len` bytes: `Ok(None)` when the file has none (its last four
    /// bytes are not the seekable magic), `Err` when it has a broken one.
    /// `name` names the file in errors.
    pub fn from_seek_table(tail: &[u8], file_len: u64, name: &str) -> Result<Option<Layout>> {
        if tail.len() < FOOTER_LEN || le32(tail, tail.len() - 4) != SEEKABLE_MAGIC {
            return Ok(None);
        }
        let footer = tail.len() - FOOTER_LEN;
        let frames = le32(tail, footer) as usize;
        let descriptor = tail[footer + 4];
        if descriptor & 0b0111_1100 != 0 {
            bail!(
                "{name}: the zstd seek table's reserved bits are set ({descriptor:#04x}); \
                 a newer seekable format than imprint reads"
            );
        }
        let entry = if descriptor & 0x80 != 0 { 12 } else { 8 };
        let frame_size = frames
            .checked_mul(entry)
            .and_then(|n| n.checked_add(FOOTER_LEN))
            .ok_or_else(|| anyhow!("{name}: the zstd seek table claims {frames} frames"))?;
        let table_len = frame_size + HEADER_LEN;
        if table_len > tail.len() {
            bail!(
                "{name}: the zstd seek table of {frames} frames ({table_len} bytes) is longer \
                 than the {} bytes read from the end of the file",
                tail.len()
            );
        }
        let header = tail.len() - table_len;
        if le32(tail, header) != SKIPPABLE_MAGIC || le32(tail, header + 4) as usize != frame_size {
            bail!(
                "{name}: the zstd seek table's frame header does not match its footer \
                 ({frames} frames of {entry} bytes)"
            );
        }
        let table_start = file_len
            .checked_sub(table_len as u64)
            .ok_or_else(|| anyhow!("{name}: the zstd seek table is longer than the file"))?;
        let (mut input, mut output) = (0u64, 0u64);
        let mut list = Vec::with_capacity(frames);
        for n in 0..frames {
            let at = header + HEADER_LEN + n * entry;
            let (compressed, decompressed) =
                (u64::from(le32(tail, at)), u64::from(le32(tail, at + 4)));
            list.push(Frame {
                input: input..input + compressed,
                output: output..output + decompressed,
            });
            input += compressed;
            output += decompressed;
        }
        if input != table_start {
            bail!(
                "{name}: the zstd seek table's frames end at byte {input}, but the table \
                 starts at byte {table_start}"
            );
        }
        Ok(Some(Layout {
            frames: list,
            table_start,
            image_len: output,
        }))
    }

    /// The blocks of an xz file as its index lists them
    /// ([`super::xz_blocks::indexed_blocks`]).
    pub(crate) fn from_xz_blocks(blocks: &[super::xz_blocks::IndexedBlock]) -> Layout {
        let mut output = 0u64;
        let frames: Vec<Frame> = blocks
            .iter()
            .map(|b| {
                let frame = Frame {
                    input: b.offset..b.offset + b.padded(),
                    output: output..output + b.uncompressed,
                };
                output += b.uncompressed;
                frame
            })
            .collect();
        Layout {
            table_start: frames.last().map_or(12, |f| f.input.end),
            frames,
            image_len: output,
        }
    }

    /// How many bytes of the file's end hold the table of a file whose
    /// last `FOOTER_LEN` bytes are `footer`: what to read to parse it.
    pub fn seek_table_len(footer: &[u8]) -> Option<u64> {
        if footer.len() < FOOTER_LEN || le32(footer, footer.len() - 4) != SEEKABLE_MAGIC {
            return None;
        }
        let at = footer.len() - FOOTER_LEN;
        let entry = if footer[at + 4] & 0x80 != 0 { 12 } else { 8 };
        Some(u64::from(le32(footer, at)) * entry + (FOOTER_LEN + HEADER_LEN) as u64)
    }
}

/// What the workers share.
struct Work {
    /// Frames not yet taken, by index.
    pending: std::collections::BTreeSet<usize>,
    /// The first failure: every worker stops.
    failed: Option<anyhow::Error>,
    /// Frame indexes in the order their output was written.
    order: Vec<usize>,
    /// Frames that came from the mirrors.
    from_mirrors: usize,
    /// Compressed bytes read from the swarm.
    swarm_bytes: u64,
}

/// What [`decode_frames`] did.
#[derive(Debug)]
pub struct Scattered {
    /// Frame indexes in the order they were written.
    pub order: Vec<usize>,
    pub from_mirrors: usize,
    pub swarm_bytes: u64,
}

/// Turns unit `n`'s bytes into what its decoder takes: the unit, and the
/// bytes to decode when they are not the unit's own (an xz block's
/// one-block stream).
pub type Prepare<'a, U> = dyn Fn(usize, &[u8]) -> Prepared<U> + Sync + 'a;

/// What [`Prepare`] gives: the unit, and the bytes to decode when they
/// are not the unit's own.
pub type Prepared<U> = io::Result<(U, Option<Vec<u8>>)>;

/// A zstd frame is decoded from its own bytes.
pub fn zstd_frame(
    table: &Layout,
) -> impl Fn(usize, &[u8]) -> Prepared<super::zstd_decoder::FrameInfo> + Sync + '_ {
    move |n, _| {
        let frame = &table.frames[n];
        Ok((
            super::zstd_decoder::FrameInfo {
                offset: frame.input.start,
                content_size: Some(frame.output.end - frame.output.start),
            },
            None,
        ))
    }
}

/// What [`decode_frames`] decodes, from where, and into what.
pub struct Units<'a, D: UnitDecoder> {
    pub table: &'a Layout,
    pub pieces: &'a dyn Pieces,
    pub fetch: &'a Fetch<'a>,
    pub new_decoder: &'a (dyn Fn() -> io::Result<D> + Sync),
    pub prepare: &'a Prepare<'a, D::Unit>,
    pub writer: &'a Mutex<ImageWriter<Box<dyn BlockTarget>>>,
    /// The output bytes written so far (for progress).
    pub written: &'a AtomicU64,
}

/// Decodes every unit of `units.table` as its bytes become available and
/// writes its output at its offset, on `threads` workers.
pub fn decode_frames<D: UnitDecoder>(units: &Units<'_, D>, threads: usize) -> Result<Scattered> {
    let frames = units.table.frames.len();
    let work = Mutex::new(Work {
        pending: (0..frames).collect(),
        failed: None,
        order: Vec::with_capacity(frames),
        from_mirrors: 0,
        swarm_bytes: 0,
    });
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                if let Err(error) = worker(units, &work) {
                    let mut work = work.lock().unwrap_or_else(PoisonError::into_inner);
                    if work.failed.is_none() {
                        work.failed = Some(error);
                    }
                }
            });
        }
    });
    let work = work.into_inner().unwrap_or_else(PoisonError::into_inner);
    if let Some(error) = work.failed {
        return Err(error);
    }
    Ok(Scattered {
        order: work.order,
        from_mirrors: work.from_mirrors,
        swarm_bytes: work.swarm_bytes,
    })
}

fn worker<D: UnitDecoder>(units: &Units<'_, D>, work: &Mutex<Work>) -> Result<()> {
    let Units {
        table,
        pieces,
        fetch,
        new_decoder,
        prepare,
        writer,
        written,
    } = *units;
    let mut decoder = new_decoder().context("starting a decoder")?;
    let (mut input, mut output) = (Vec::new(), Vec::new());
    loop {
        let (index, from_swarm) = {
            let mut work = work.lock().unwrap_or_else(PoisonError::into_inner);
            if work.failed.is_some() || work.pending.is_empty() {
                return Ok(());
            }
            let ready = work
                .pending
                .iter()
                .copied()
                .find(|&n| pieces.have(&table.frames[n].input));
            match ready {
                Some(n) => {
                    work.pending.remove(&n);
                    (n, true)
                }
                None if pieces.stalled() => {
                    let n = work.pending.pop_first().expect("not empty");
                    work.from_mirrors += 1;
                    (n, false)
                }
                None => {
                    drop(work);
                    pieces.wait(POLL);
                    continue;
                }
            }
        };
        let frame = &table.frames[index];
        if from_swarm {
            pieces.read(&frame.input, &mut input)?;
        } else {
            input = fetch(&frame.input)?;
            pieces.fill(&frame.input, &input)?;
        }
        let (unit, stream) = prepare(index, &input)?;
        let want = frame.output.end - frame.output.start;
        let n = decoder.decode(
            &unit,
            stream.as_deref().unwrap_or(&input),
            want,
            &mut output,
        )?;
        if n as u64 != want {
            bail!(
                "the unit at input byte {} (a zstd frame or an xz block) decodes to {n} bytes, \
                 but the table says {want}",
                frame.input.start
            );
        }
        writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .write_at(&output[..n], frame.output.start)?;
        written.fetch_add(want, Ordering::Relaxed);
        let mut work = work.lock().unwrap_or_else(PoisonError::into_inner);
        work.order.push(index);
        if from_swarm {
            work.swarm_bytes += frame.input.end - frame.input.start;
        }
    }
}

/// The served checksum and signature over the whole file, in order, as
/// its complete prefix grows; stops early when `cancel` is set.
pub(crate) fn hash_in_order(
    pieces: &dyn Pieces,
    len: u64,
    mut hashers: ServedHashers,
    cancel: &AtomicBool,
) -> Result<Fetched> {
    let mut buffer = Vec::new();
    let mut at = 0u64;
    while at < len {
        let range = at..(at + HASH_STEP).min(len);
        while !pieces.have(&range) {
            if cancel.load(Ordering::Relaxed) {
                bail!("stopped at byte {at}");
            }
            pieces.wait(POLL);
        }
        pieces.read(&range, &mut buffer)?;
        hashers.update(&buffer);
        at = range.end;
    }
    Ok(hashers.finish(len))
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // small test tables
mod tests {
    use super::*;

    /// A seek table as `scripts/publish-image` writes it.
    fn table(entries: &[(u32, u32)], checksums: bool) -> Vec<u8> {
        let entry = if checksums { 12 } else { 8 };
        let mut out = Vec::new();
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&((entries.len() * entry + FOOTER_LEN) as u32).to_le_bytes());
        for &(c, d) in entries {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&d.to_le_bytes());
            if checksums {
                out.extend_from_slice(&[0xAA; 4]);
            }
        }
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.push(if checksums { 0x80 } else { 0 });
        out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        out
    }

    #[test]
    fn a_seek_table_gives_each_frames_place() {
        for checksums in [false, true] {
            let bytes = table(&[(100, 4096), (50, 4096), (10, 7)], checksums);
            let file_len = 160 + bytes.len() as u64;
            let parsed = Layout::from_seek_table(&bytes, file_len, "x.zst")
                .unwrap()
                .unwrap();
            assert_eq!(
                parsed.frames,
                [
                    Frame {
                        input: 0..100,
                        output: 0..4096
                    },
                    Frame {
                        input: 100..150,
                        output: 4096..8192
                    },
                    Frame {
                        input: 150..160,
                        output: 8192..8199
                    },
                ]
            );
            assert_eq!((parsed.table_start, parsed.image_len), (160, 8199));
            assert_eq!(
                Layout::seek_table_len(&bytes[bytes.len() - 9..]),
                Some(bytes.len() as u64)
            );
        }
    }

    #[test]
    fn no_table_or_a_broken_one() {
        assert_eq!(
            Layout::from_seek_table(b"plain zstd", 10, "x.zst").unwrap(),
            None
        );
        let bytes = table(&[(100, 1)], false);
        // The frames end before the table: bytes between them.
        let error = Layout::from_seek_table(&bytes, 101 + bytes.len() as u64, "x.zst").unwrap_err();
        assert!(
            error.to_string().contains("frames end at byte 100"),
            "{error}"
        );
        // Reserved bits.
        let mut reserved = bytes.clone();
        let at = reserved.len() - 5;
        reserved[at] = 0x04;
        let error =
            Layout::from_seek_table(&reserved, 100 + bytes.len() as u64, "x.zst").unwrap_err();
        assert!(error.to_string().contains("reserved bits"), "{error}");
        // A footer claiming more frames than the frame holds.
        let mut more = bytes.clone();
        let at = more.len() - 9;
        more[at] = 2;
        let error = Layout::from_seek_table(&more, 100 + bytes.len() as u64, "x.zst").unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
        // Only part of the table read.
        let error =
            Layout::from_seek_table(&bytes[4..], 100 + bytes.len() as u64, "x.zst").unwrap_err();
        assert!(
            error.to_string().contains("longer than the 21 bytes"),
            "{error}"
        );
        // A skippable frame header that is not the table's.
        let mut header = bytes.clone();
        header[0] ^= 1;
        let error =
            Layout::from_seek_table(&header, 100 + bytes.len() as u64, "x.zst").unwrap_err();
        assert!(error.to_string().contains("frame header"), "{error}");
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test images of a few hundred KiB
mod engine_tests {
    use super::*;
    use crate::pipeline::direct::DirectIo;
    use crate::pipeline::target::open_target;
    use crate::pipeline::zstd_decoder::ZstdFrameDecoder;
    use std::process::{Command, Stdio};

    /// Pieces that appear in a scripted order, one frame per `wait`, and
    /// a fetch that counts what it was asked for.
    struct Scripted {
        file: Vec<u8>,
        /// Ranges revealed so far.
        shown: Mutex<Vec<Range<u64>>>,
        /// Ranges still to reveal, next last.
        script: Mutex<Vec<Range<u64>>>,
        stalled: bool,
    }

    impl Pieces for Scripted {
        fn have(&self, range: &Range<u64>) -> bool {
            let shown = self.shown.lock().unwrap();
            shown
                .iter()
                .any(|s| s.start <= range.start && range.end <= s.end)
        }
        fn read(&self, range: &Range<u64>, buffer: &mut Vec<u8>) -> Result<()> {
            buffer.clear();
            buffer.extend_from_slice(&self.file[range.start as usize..range.end as usize]);
            Ok(())
        }
        fn fill(&self, range: &Range<u64>, _: &[u8]) -> Result<()> {
            self.shown.lock().unwrap().push(range.clone());
            Ok(())
        }
        fn stalled(&self) -> bool {
            self.stalled
        }
        fn wait(&self, _: Duration) {
            if let Some(next) = self.script.lock().unwrap().pop() {
                self.shown.lock().unwrap().push(next);
            } else {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Four zstd frames made by the `zstd` CLI, concatenated, and the
    /// frames' places; the image they decode to.
    fn frames() -> (Vec<u8>, Layout, Vec<u8>) {
        let mut file = Vec::new();
        let mut image = Vec::new();
        let mut frames = Vec::new();
        for n in 0..4u8 {
            let part: Vec<u8> = (0..(64 << 10) + usize::from(n) * 4096)
                .map(|i| (i % 251) as u8 ^ n)
                .collect();
            let mut zstd = Command::new("zstd")
                .args(["-q", "-c", "-3"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("zstd (scripts/setup installs it)");
            use std::io::Write;
            zstd.stdin.take().unwrap().write_all(&part).unwrap();
            let out = zstd.wait_with_output().unwrap();
            frames.push(Frame {
                input: file.len() as u64..(file.len() + out.stdout.len()) as u64,
                output: image.len() as u64..(image.len() + part.len()) as u64,
            });
            file.extend_from_slice(&out.stdout);
            image.extend_from_slice(&part);
        }
        let table = Layout {
            table_start: file.len() as u64,
            image_len: image.len() as u64,
            frames,
        };
        (file, table, image)
    }

    fn run(pieces: &Scripted, table: &Layout, threads: usize) -> (Result<Scattered>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xA5; table.image_len as usize + (2 << 20)]).unwrap();
        let writer = Mutex::new(
            ImageWriter::begin(
                open_target(&path, DirectIo::default()).unwrap(),
                Some(table.image_len),
            )
            .unwrap(),
        );
        let fetched =
            |range: &Range<u64>| Ok(pieces.file[range.start as usize..range.end as usize].to_vec());
        let written = AtomicU64::new(0);
        let result = decode_frames(
            &Units {
                table,
                pieces,
                fetch: &fetched,
                new_decoder: &ZstdFrameDecoder::new,
                prepare: &zstd_frame(table),
                writer: &writer,
                written: &written,
            },
            threads,
        );
        if result.is_ok() {
            writer.into_inner().unwrap().commit().unwrap();
        } else {
            drop(writer);
        }
        (result, std::fs::read(&path).unwrap())
    }

    #[test]
    fn frames_are_written_in_the_order_their_bytes_arrive() {
        let (file, table, image) = frames();
        let pieces = Scripted {
            file,
            shown: Mutex::new(Vec::new()),
            // Revealed last frame first: 3, 2, 1, 0.
            script: Mutex::new(table.frames.iter().map(|f| f.input.clone()).collect()),
            stalled: false,
        };
        let (result, disk) = run(&pieces, &table, 1);
        let done = result.unwrap();
        assert_eq!(done.order, [3, 2, 1, 0]);
        assert_eq!(done.from_mirrors, 0);
        assert_eq!(done.swarm_bytes, table.table_start);
        assert!(
            disk[..image.len()] == image[..],
            "the image is not on the target"
        );
    }

    #[test]
    fn xz_blocks_from_the_index_are_written_in_the_order_their_bytes_arrive() {
        use crate::pipeline::xz_blocks::{
            XzBlockDecoder, block_stream, indexed_blocks, stream_header_for_blocks,
        };
        let image: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 253) as u8 ^ (i >> 12) as u8)
            .collect();
        let mut xz = Command::new("xz")
            .args(["-c", "-T1", "--block-size=64KiB", "--check=crc64"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz (scripts/setup installs it)");
        let mut stdin = xz.stdin.take().unwrap();
        let input = image.clone();
        let feeder = std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&input)
        });
        let file = xz.wait_with_output().unwrap().stdout;
        feeder.join().unwrap().unwrap();
        let (blocks, flags) = indexed_blocks(&file, file.len() as u64).unwrap().unwrap();
        assert_eq!(blocks.len(), 5, "300000 bytes in 64 KiB blocks");
        let header = stream_header_for_blocks(&file[..12], flags).unwrap();
        let table = Layout::from_xz_blocks(&blocks);
        assert_eq!(table.image_len, image.len() as u64);
        let pieces = Scripted {
            file,
            shown: Mutex::new(Vec::new()),
            script: Mutex::new(table.frames.iter().map(|f| f.input.clone()).collect()),
            stalled: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0xA5; image.len() + (2 << 20)]).unwrap();
        let writer = Mutex::new(
            ImageWriter::begin(
                open_target(&path, DirectIo::default()).unwrap(),
                Some(table.image_len),
            )
            .unwrap(),
        );
        let fetched = |_: &Range<u64>| -> Result<Vec<u8>> { unreachable!("never stalled") };
        let done = decode_frames(
            &Units {
                table: &table,
                pieces: &pieces,
                fetch: &fetched,
                new_decoder: &XzBlockDecoder::new,
                prepare: &|n, bytes| {
                    block_stream(header, &blocks[n], bytes).map(|(u, s)| (u, Some(s)))
                },
                writer: &writer,
                written: &AtomicU64::new(0),
            },
            1,
        )
        .unwrap();
        writer.into_inner().unwrap().commit().unwrap();
        assert_eq!(done.order, [4, 3, 2, 1, 0]);
        let disk = std::fs::read(&path).unwrap();
        assert!(
            disk[..image.len()] == image[..],
            "the image is not on the target"
        );
        // A block whose bytes were changed fails its check.
        let mut bad = pieces.file
            [table.frames[2].input.start as usize..table.frames[2].input.end as usize]
            .to_vec();
        let at = bad.len() / 2;
        bad[at] ^= 0x40;
        let error = block_stream(header, &blocks[2], &bad)
            .and_then(|(unit, stream)| {
                let mut out = Vec::new();
                XzBlockDecoder.decode(&unit, &stream, blocks[2].uncompressed, &mut out)
            })
            .unwrap_err();
        assert!(error.to_string().contains("corrupt xz stream"), "{error}");
    }

    #[test]
    fn a_stalled_swarm_hands_the_first_frames_to_the_mirrors() {
        let (file, table, image) = frames();
        let pieces = Scripted {
            file,
            // Only frame 2 ever comes from the swarm.
            shown: Mutex::new(vec![table.frames[2].input.clone()]),
            script: Mutex::new(Vec::new()),
            stalled: true,
        };
        let (result, disk) = run(&pieces, &table, 1);
        let done = result.unwrap();
        assert_eq!(done.order, [2, 0, 1, 3]);
        assert_eq!(done.from_mirrors, 3);
        assert!(disk[..image.len()] == image[..]);
    }

    #[test]
    fn a_frame_of_another_size_than_the_table_says_fails_and_wipes() {
        let (file, mut table, _) = frames();
        table.frames[1].output.end -= 1;
        for f in &mut table.frames[2..] {
            f.output.start -= 1;
            f.output.end -= 1;
        }
        table.image_len -= 1;
        let pieces = Scripted {
            file,
            shown: Mutex::new(table.frames.iter().map(|f| f.input.clone()).collect()),
            script: Mutex::new(Vec::new()),
            stalled: false,
        };
        let (result, disk) = run(&pieces, &table, 2);
        let error = result.unwrap_err().to_string();
        assert!(error.contains("at input byte"), "{error}");
        assert!(
            disk[..1 << 20].iter().all(|&b| b == 0),
            "the first MiB is not wiped"
        );
    }
}
