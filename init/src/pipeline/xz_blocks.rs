//! Decodes a multi-block xz stream on several threads, in order.
//!
//! The blocks of an xz stream are independent (xz file format 1.x, §3), and
//! `xz -T` and `xz --block-size` write each block's Compressed Size and
//! Uncompressed Size in its header (§3.1.3), so a splitter thread can cut
//! whole blocks without decoding them. Each block is wrapped into a
//! one-block stream (the original stream header, the block, a one-record
//! index and a footer) and decoded by lzma-rust2's `XzReader` on a worker,
//! which verifies the block's check (CRC32, CRC64 or SHA-256) and handles
//! every filter chain the sequential decoder does. [`decoder`]
//! hands the output back strictly in input order. The splitter verifies
//! the real index (every record against the blocks cut, its CRC32), the
//! footer, stream padding and concatenated streams, as strictly as
//! [`decode::XzDecoder`](super::decode::XzDecoder).
//!
//! The blocks are decoded by the ordered engine ([`super::ordered`]) on
//! every core, under its memory budget: a block whose output fits the
//! engine's rule ([`OrderedConfig::fits_whole`], up to 64 MiB of output by
//! default) is decoded whole; a larger one streams through one worker, its
//! one-block stream sent in 1 MiB chunks.
//!
//! When the first block of the file has no sizes in its header (plain
//! single-threaded `xz` writes none), the whole file is decoded
//! sequentially by `decode::XzDecoder` on the splitter thread, streamed in
//! 1 MiB chunks. A later block without sizes is an error naming it: only a
//! concatenation of files made by different encoders has one; such a file
//! is refused with a hint to recompress it in one go.
//!
//! Dropping the decoder early cancels the work (see the engine).

use std::io::{self, BufReader, ErrorKind, Read};

use lzma_rust2::XzReader;

use super::decode::{XZ_MEMORY_LIMIT, XzDecoder};
use super::ordered::{
    Dispatcher, OrderedConfig, OrderedDecoder, STREAM_CHUNK, Split, Stop, StreamOutput, UnitDecoder,
};
use super::read_full;

const STREAM_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];

/// A `Read` of the decoded bytes of the xz file `input`, its blocks decoded
/// on `config.threads` workers.
pub fn decoder(input: impl Read + Send + 'static, config: OrderedConfig) -> OrderedDecoder {
    let splitter = Splitter {
        input: BufReader::with_capacity(STREAM_CHUNK, input),
        pos: 0,
    };
    OrderedDecoder::start("xz", splitter, || Ok(XzBlockDecoder), config)
}

/// What the splitter knows of a block: where it starts and its size.
#[derive(Debug)]
pub struct XzBlock {
    offset: u64,
    uncompressed: u64,
    /// The block's CRC32 or CRC64 as stored, when the worker checks it
    /// itself (see [`OwnCheck`]); `None` when lzma-rust2 does.
    check: Option<OwnCheck>,
}

/// A block's check verified by imprint instead of lzma-rust2, whose CRC32
/// and CRC64 run one byte at a time through a table: about 2.2 CPU-s per
/// GiB of output for CRC64 on the 2-core machine, a fifth of the whole
/// decode (`BENCHMARKS.md`). A whole block is handed to lzma-rust2 as a
/// one-block stream whose check type is None, and its output is checked
/// here with crc32fast (SIMD) or `crc`'s slice-by-16 CRC-64/XZ. SHA-256
/// checks stay with lzma-rust2 (sha2 either way), as do streamed blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnCheck {
    Crc32(u32),
    Crc64(u64),
}

/// CRC-64/XZ (ECMA-182, reflected), the xz format's CRC64 (§6).
const CRC64_XZ: crc::Crc<u64, crc::Table<16>> =
    crc::Crc::<u64, crc::Table<16>>::new(&crc::CRC_64_XZ);

impl OwnCheck {
    /// The check ID of a stream header's flags that imprint verifies
    /// itself, with the stored check bytes.
    fn parse(check_id: u8, stored: &[u8]) -> Option<OwnCheck> {
        match check_id {
            0x01 => Some(OwnCheck::Crc32(u32::from_le_bytes(stored.try_into().ok()?))),
            0x04 => Some(OwnCheck::Crc64(u64::from_le_bytes(stored.try_into().ok()?))),
            _ => None,
        }
    }

    fn is_own(check_id: u8) -> bool {
        matches!(check_id, 0x01 | 0x04)
    }

    /// Whether `output` matches; the error names the check.
    fn verify(self, output: &[u8]) -> Result<(), &'static str> {
        let ok = match self {
            OwnCheck::Crc32(stored) => crc32fast::hash(output) == stored,
            OwnCheck::Crc64(stored) => CRC64_XZ.checksum(output) == stored,
        };
        if ok {
            Ok(())
        } else {
            Err(match self {
                OwnCheck::Crc32(_) => "block: CRC32 of the decoded data does not match",
                OwnCheck::Crc64(_) => "block: CRC64 of the decoded data does not match",
            })
        }
    }
}

/// `stream_header` with its check type set to None (flags and CRC32 redone).
fn without_check(stream_header: [u8; 12]) -> [u8; 12] {
    let mut header = stream_header;
    header[6..8].copy_from_slice(&[0, 0]);
    let crc = crc32fast::hash(&header[6..8]);
    header[8..12].copy_from_slice(&crc.to_le_bytes());
    header
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

/// A block header's fields the splitter needs (§3.1).
#[derive(Debug, PartialEq, Eq)]
struct BlockHeader {
    compressed: Option<u64>,
    uncompressed: Option<u64>,
    /// Filters before LZMA2 (delta, BCJ): lzma-rust2's sans-I/O decoder
    /// handles at most one.
    pre_filters: usize,
}

/// Why a block header was refused: the bytes are wrong, or they use a
/// feature this decoder does not know (liblzma's `LZMA_DATA_ERROR` and
/// `LZMA_OPTIONS_ERROR`).
#[derive(Debug, PartialEq, Eq)]
enum HeaderError {
    Corrupt(String),
    Unsupported(String),
}

impl HeaderError {
    fn into_io(self, offset: u64) -> io::Error {
        match self {
            HeaderError::Corrupt(what) => corrupt(offset, format!("block header: {what}")),
            HeaderError::Unsupported(what) => io::Error::new(
                ErrorKind::Unsupported,
                format!("xz block header at input byte {offset}: {what} is not supported"),
            ),
        }
    }
}

/// The largest Unpadded Size of a block (§3.1.3: the whole block stays
/// below 2^63; liblzma's `UNPADDED_SIZE_MAX`).
const UNPADDED_SIZE_MAX: u64 = ((1 << 63) - 1) & !3;
/// The largest LZMA2 dictionary size byte (§5.3.1: 4 GiB - 1).
const LZMA2_MAX_DICT_BYTE: u8 = 40;

/// The filters `xz -dc` decodes by default (§5.3 and liblzma's filter
/// table): their IDs and names, for errors.
fn filter_name(id: u64) -> Option<&'static str> {
    Some(match id {
        0x03 => "delta",
        0x04 => "x86 BCJ",
        0x05 => "PowerPC BCJ",
        0x06 => "IA-64 BCJ",
        0x07 => "ARM BCJ",
        0x08 => "ARM-Thumb BCJ",
        0x09 => "SPARC BCJ",
        0x0A => "ARM64 BCJ",
        0x0B => "RISC-V BCJ",
        0x21 => "LZMA2",
        _ => return None,
    })
}

/// Parses and checks a whole block header (size byte through CRC32) the
/// way liblzma does, so a header that `xz -dc` refuses is refused here
/// before any of its block is decoded. `check` is the stream's check size.
fn parse_block_header(header: &[u8], check: u64) -> Result<BlockHeader, HeaderError> {
    let bad = |what: &str| HeaderError::Corrupt(what.to_owned());
    let (body, crc) = header.split_at(header.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return Err(bad("CRC32 mismatch"));
    }
    let flags = body[1];
    if flags & 0x3C != 0 {
        return Err(HeaderError::Unsupported("a reserved block flag".to_owned()));
    }
    let mut fields = &body[2..];
    let compressed = if flags & 0x40 != 0 {
        let size = varint(&mut fields).ok_or_else(|| bad("bad compressed size"))?;
        let limit = UNPADDED_SIZE_MAX - header.len() as u64 - check;
        if size == 0 || size > limit {
            return Err(HeaderError::Corrupt(format!(
                "compressed size {size} is outside 1..={limit}"
            )));
        }
        Some(size)
    } else {
        None
    };
    let uncompressed = if flags & 0x80 != 0 {
        Some(varint(&mut fields).ok_or_else(|| bad("bad uncompressed size"))?)
    } else {
        None
    };
    let count = usize::from(flags & 0x03) + 1;
    for i in 0..count {
        let id = varint(&mut fields).ok_or_else(|| bad("filter flags end early"))?;
        let props = varint(&mut fields).ok_or_else(|| bad("filter flags end early"))?;
        let props = usize::try_from(props)
            .ok()
            .filter(|&p| p <= fields.len())
            .ok_or_else(|| bad("filter properties end early"))?;
        let (properties, rest) = fields.split_at(props);
        fields = rest;
        let Some(name) = filter_name(id) else {
            return Err(HeaderError::Unsupported(format!("filter ID {id:#x}")));
        };
        let last = i + 1 == count;
        if (id == 0x21) != last {
            return Err(HeaderError::Unsupported(format!(
                "a filter chain with {name} {} (only LZMA2, and only last)",
                if last {
                    "last"
                } else {
                    "before the last filter"
                }
            )));
        }
        let props_ok = match id {
            0x03 => props == 1,
            0x21 => props == 1 && properties[0] <= LZMA2_MAX_DICT_BYTE,
            _ => props == 0 || props == 4,
        };
        if !props_ok {
            return Err(HeaderError::Unsupported(format!(
                "{name} filter properties {properties:02x?}"
            )));
        }
    }
    if fields.iter().any(|&b| b != 0) {
        return Err(HeaderError::Unsupported(
            "non-zero header padding (a newer header field)".to_owned(),
        ));
    }
    Ok(BlockHeader {
        compressed,
        uncompressed,
        pre_filters: count - 1,
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
}

impl<R: Read + Send + 'static> Split<XzBlock> for Splitter<R> {
    fn run(mut self, dispatch: &mut Dispatcher<XzBlock>) -> Result<(), Stop> {
        match self.split_all(dispatch)? {
            Some(sequential) => self.decode_sequentially(sequential, dispatch),
            None => Ok(()),
        }
    }
}

impl<R: Read> Splitter<R> {
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
    fn split_all(
        &mut self,
        dispatch: &mut Dispatcher<XzBlock>,
    ) -> Result<Option<Sequential>, Stop> {
        let mut header = [0u8; 12];
        let got = self.fill(&mut header)?;
        if got < header.len() || header[..6] != STREAM_MAGIC {
            if got < header.len() && STREAM_MAGIC.starts_with(&header[..got.min(6)]) {
                return Err(truncated(self.pos).into());
            }
            return Err(corrupt(0, "not an xz stream").into());
        }
        let mut first = true;
        loop {
            let stream_start = self.pos - 12;
            check_stream_header(&header, stream_start)?;
            if let Some(sequential) = self.split_stream(header, first, dispatch)? {
                return Ok(Some(sequential));
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
        dispatch: &mut Dispatcher<XzBlock>,
    ) -> Result<Option<Sequential>, Stop> {
        let check = check_len(stream_header[7] & 0x0F);
        let mut records: Vec<(u64, u64)> = Vec::new();
        loop {
            if dispatch.is_cancelled() {
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
            let parsed = parse_block_header(&block, check).map_err(|e| e.into_io(block_at))?;
            let sizes = match parsed {
                BlockHeader {
                    compressed: Some(compressed),
                    uncompressed: Some(uncompressed),
                    ..
                } => Some((compressed, uncompressed)),
                _ => None,
            };
            let Some((compressed, uncompressed)) = sizes else {
                if first && records.is_empty() {
                    let mut prefix = stream_header.to_vec();
                    prefix.extend_from_slice(&block);
                    return Ok(Some(Sequential {
                        prefix,
                        pre_filters: parsed.pre_filters,
                    }));
                }
                let msg = "block without sizes in its header after other blocks; \
                           recompress the image in one go with `xz -T0`";
                return Err(corrupt(block_at, msg).into());
            };
            let header_len = header_len as u64;
            let unpadded = header_len + compressed + check;
            let body = compressed + pad4(compressed) + check;
            let index = one_record_index(unpadded, uncompressed);
            let tail = footer(&index, [stream_header[6], stream_header[7]]);
            records.push((unpadded, uncompressed));
            let mut unit = XzBlock {
                offset: block_at,
                uncompressed,
                check: None,
            };
            // The block as a one-block stream of its own: the stream
            // header, the block, a one-record index and a footer.
            let whole_len = 12 + header_len + body + index.len() as u64 + 12;
            if dispatch.config().fits_whole(whole_len, uncompressed) {
                let OneBlock {
                    header,
                    own,
                    kept,
                    index,
                    tail,
                } = OneBlock::new(stream_header, header_len, compressed, uncompressed);
                let packed = compressed + pad4(compressed) + kept;
                let whole_len = 12 + header_len + packed + index.len() as u64 + 12;
                let capacity = usize::try_from(whole_len).unwrap_or(usize::MAX);
                let mut stream = dispatch.input_buffer(capacity);
                dispatch.reserve(stream.capacity() as u64)?;
                stream.extend_from_slice(&header);
                stream.extend_from_slice(&block);
                let old = stream.len();
                stream.resize(old + usize::try_from(packed).unwrap_or(usize::MAX), 0);
                self.fill_exact(&mut stream[old..])?;
                if own {
                    let mut stored = [0u8; 8];
                    let stored = &mut stored[..usize::try_from(check).unwrap_or(0)];
                    self.fill_exact(stored)?;
                    unit.check = OwnCheck::parse(stream_header[7] & 0x0F, stored);
                }
                stream.extend_from_slice(&index);
                stream.extend_from_slice(&tail);
                dispatch.whole(unit, stream, uncompressed)?;
                continue;
            }
            let sender = dispatch.stream(unit)?;
            let mut chunk = dispatch.input_buffer(STREAM_CHUNK);
            chunk.extend_from_slice(&stream_header);
            chunk.extend_from_slice(&block);
            let mut left = body;
            while left > 0 {
                let old = chunk.len();
                let n = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(STREAM_CHUNK - old.min(STREAM_CHUNK - 1));
                chunk.resize(old + n, 0);
                if let Err(e) = self.fill_exact(&mut chunk[old..]) {
                    sender.fail(&e);
                    return Err(e.into());
                }
                left -= n as u64;
                if chunk.len() >= STREAM_CHUNK {
                    let next = dispatch.input_buffer(STREAM_CHUNK);
                    sender.send(std::mem::replace(&mut chunk, next))?;
                }
            }
            chunk.extend_from_slice(&index);
            chunk.extend_from_slice(&tail);
            sender.send(chunk)?;
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

    /// Decodes the whole file with a sequential decoder, here; its errors
    /// count input bytes from the start of the file, as the prefix holds
    /// every byte read so far. lzma-rust2's sans-I/O decoder (which checks
    /// the index against the blocks) takes at most one filter before LZMA2;
    /// a longer chain (`xz --delta --delta --lzma2`) goes to its `XzReader`.
    fn decode_sequentially(
        &mut self,
        sequential: Sequential,
        dispatch: &mut Dispatcher<XzBlock>,
    ) -> Result<(), Stop> {
        let input = StructureGuard::new(io::Cursor::new(sequential.prefix).chain(&mut self.input));
        if sequential.pre_filters > 1 {
            let reader = XzReader::new_mem_limit(input, true, XZ_MEMORY_LIMIT);
            let reader = ErrorContext {
                inner: reader,
                context: "corrupt xz stream",
            };
            return stream_chunks(reader, dispatch);
        }
        let decoder = XzDecoder::new(input);
        stream_chunks(decoder, dispatch)
    }
}

/// A file the splitter cannot cut: the bytes read so far, and what its
/// first block header said.
struct Sequential {
    prefix: Vec<u8>,
    pre_filters: usize,
}

/// Prefixes a reader's errors, so lzma-rust2's bare messages say what failed.
struct ErrorContext<R> {
    inner: R,
    context: &'static str,
}

impl<R: Read> Read for ErrorContext<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", self.context)))
    }
}

/// Queues what `decoder` produces in `STREAM_CHUNK` pieces.
fn stream_chunks(mut decoder: impl Read, dispatch: &mut Dispatcher<XzBlock>) -> Result<(), Stop> {
    loop {
        if dispatch.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let mut chunk = dispatch.output_buffer(STREAM_CHUNK);
        chunk.resize(STREAM_CHUNK, 0);
        let n = read_full(&mut decoder, &mut chunk)?;
        chunk.truncate(n);
        if n > 0 {
            dispatch.data(chunk)?;
        }
        if n < STREAM_CHUNK {
            return Ok(());
        }
    }
}

/// Walks the xz container as its bytes pass to the sequential decoder, which
/// (lzma-rust2's sans-I/O `XzStream`) decodes blocks without looking at
/// their headers' sizes or padding, nor at the footer's Backward Size. The
/// walk needs no decoding: LZMA2 chunk headers give each chunk's packed
/// and unpacked size (xz file format §5.3.1, and XZ Utils'
/// `lzma2_decoder.c`), so every block header is checked with
/// [`parse_block_header`], its sizes against the block, and each footer
/// against its index. Anything it cannot follow (garbage after a stream,
/// a malformed index) it leaves to the decoder, which reports it.
struct StructureGuard<R> {
    inner: R,
    /// Input offset of the next byte walked.
    pos: u64,
    walk: Walk,
    /// Bytes of the header being collected.
    acc: Vec<u8>,
    check: u64,
    block: BlockWalk,
    /// Bytes of the index so far, and the value of its first integer.
    index_len: u64,
    varint: Vec<u8>,
    failed: Option<(ErrorKind, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    StreamHeader,
    BlockStart,
    BlockHeader(usize),
    Control,
    ChunkHeader(usize),
    Data(u64),
    BlockTail(u64),
    IndexCount,
    IndexRecords(u64),
    IndexPadding,
    IndexCrc(u64),
    Footer,
    AfterStream,
    Passive,
}

#[derive(Debug, Default)]
struct BlockWalk {
    at: u64,
    header_len: u64,
    compressed: Option<u64>,
    uncompressed: Option<u64>,
    /// Compressed and uncompressed bytes of the block so far.
    packed: u64,
    unpacked: u64,
}

impl<R: Read> StructureGuard<R> {
    /// `inner` starts at the first byte of an xz file.
    fn new(inner: R) -> Self {
        StructureGuard {
            inner,
            pos: 0,
            walk: Walk::StreamHeader,
            acc: Vec::new(),
            check: 0,
            block: BlockWalk::default(),
            index_len: 0,
            varint: Vec::new(),
            failed: None,
        }
    }

    /// Walks some of `bytes`; returns how many (at least one).
    fn step(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let collect = |acc: &mut Vec<u8>, need: usize| {
            let take = (need - acc.len()).min(bytes.len());
            acc.extend_from_slice(&bytes[..take]);
            (take, acc.len() == need)
        };
        let byte = bytes[0];
        match self.walk {
            Walk::Passive => return Ok(bytes.len()),
            Walk::Data(n) | Walk::BlockTail(n) => {
                let take = usize::try_from(n).map_or(bytes.len(), |n| n.min(bytes.len()));
                let left = n - take as u64;
                self.walk = match (self.walk, left) {
                    (Walk::Data(_), 0) => Walk::Control,
                    (Walk::Data(_), _) => Walk::Data(left),
                    (_, 0) => Walk::BlockStart,
                    _ => Walk::BlockTail(left),
                };
                return Ok(take);
            }
            Walk::StreamHeader | Walk::Footer => {
                let (take, done) = collect(&mut self.acc, 12);
                if done {
                    self.walk = if self.walk == Walk::StreamHeader {
                        self.stream_header()
                    } else {
                        self.footer()?
                    };
                    self.acc.clear();
                }
                return Ok(take);
            }
            Walk::BlockHeader(need) | Walk::ChunkHeader(need) => {
                let (take, done) = collect(&mut self.acc, need);
                if done {
                    if matches!(self.walk, Walk::BlockHeader(_)) {
                        self.block_header()?;
                    } else {
                        self.chunk_header()?;
                    }
                    self.acc.clear();
                }
                return Ok(take);
            }
            Walk::BlockStart => {
                self.block = BlockWalk {
                    at: self.pos,
                    ..BlockWalk::default()
                };
                if byte == 0 {
                    self.index_len = 1;
                    self.varint.clear();
                    self.walk = Walk::IndexCount;
                } else {
                    self.acc.clear();
                    self.acc.push(byte);
                    self.walk = Walk::BlockHeader((usize::from(byte) + 1) * 4);
                }
            }
            Walk::Control => {
                self.block.packed += 1;
                match byte {
                    0x00 => self.end_of_block()?,
                    0x01 | 0x02 => {
                        self.acc = vec![byte];
                        self.walk = Walk::ChunkHeader(3);
                    }
                    0x80..=0xFF => {
                        self.acc = vec![byte];
                        self.walk = Walk::ChunkHeader(if byte >= 0xC0 { 6 } else { 5 });
                    }
                    _ => {
                        return Err(
                            self.corrupt(format!("reserved LZMA2 control byte {byte:#04x}"))
                        );
                    }
                }
            }
            Walk::IndexCount | Walk::IndexRecords(_) => {
                self.index_len += 1;
                self.varint.push(byte);
                if byte & 0x80 == 0 || self.varint.len() >= 9 {
                    let value = varint(&mut &self.varint[..]);
                    self.varint.clear();
                    let left = match (self.walk, value) {
                        (Walk::IndexCount, Some(count)) => count.saturating_mul(2),
                        (Walk::IndexRecords(left), Some(_)) => left - 1,
                        _ => {
                            self.walk = Walk::Passive;
                            return Ok(1);
                        }
                    };
                    self.walk = if left == 0 {
                        Walk::IndexPadding
                    } else {
                        Walk::IndexRecords(left)
                    };
                }
            }
            Walk::IndexPadding => {
                if self.index_len % 4 == 0 {
                    self.walk = Walk::IndexCrc(4);
                    return Ok(0);
                }
                self.index_len += 1;
            }
            Walk::IndexCrc(left) => {
                self.index_len += 1;
                self.walk = if left == 1 {
                    Walk::Footer
                } else {
                    Walk::IndexCrc(left - 1)
                };
            }
            Walk::AfterStream => {
                let (take, done) = collect(&mut self.acc, 4);
                if done {
                    if self.acc == STREAM_MAGIC[..4] {
                        self.walk = Walk::StreamHeader;
                        return Ok(take);
                    }
                    self.walk = if self.acc == [0; 4] {
                        Walk::AfterStream
                    } else {
                        Walk::Passive
                    };
                    self.acc.clear();
                }
                return Ok(take);
            }
        }
        Ok(1)
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> io::Error {
        corrupt(self.block.at, what)
    }

    fn stream_header(&mut self) -> Walk {
        if self.acc[..6] != STREAM_MAGIC {
            return Walk::Passive;
        }
        self.check = check_len(self.acc[7] & 0x0F);
        Walk::BlockStart
    }

    fn block_header(&mut self) -> io::Result<()> {
        let header =
            parse_block_header(&self.acc, self.check).map_err(|e| e.into_io(self.block.at))?;
        self.block.header_len = self.acc.len() as u64;
        self.block.compressed = header.compressed;
        self.block.uncompressed = header.uncompressed;
        self.walk = Walk::Control;
        Ok(())
    }

    /// An LZMA2 chunk header, control byte included (§5.3.1; `lzma2_decoder.c`).
    fn chunk_header(&mut self) -> io::Result<()> {
        let h = &self.acc;
        let (unpacked, packed) = if h[0] < 0x80 {
            let size = u64::from(u16::from_be_bytes([h[1], h[2]])) + 1;
            (size, size)
        } else {
            let high = u64::from(h[0] & 0x1F) << 16;
            let unpacked = high + u64::from(u16::from_be_bytes([h[1], h[2]])) + 1;
            (unpacked, u64::from(u16::from_be_bytes([h[3], h[4]])) + 1)
        };
        self.block.packed += h.len() as u64 - 1 + packed;
        self.block.unpacked += unpacked;
        if let Some(declared) = self.block.compressed {
            if self.block.packed > declared {
                return Err(self.corrupt(format!(
                    "LZMA2 data runs past the compressed size of {declared} bytes in the block header"
                )));
            }
        }
        self.walk = Walk::Data(packed);
        Ok(())
    }

    fn end_of_block(&mut self) -> io::Result<()> {
        let block = &self.block;
        if block.compressed.is_some_and(|c| c != block.packed) {
            return Err(self.corrupt(format!(
                "block holds {} compressed bytes, its header says {}",
                block.packed,
                block.compressed.unwrap_or(0)
            )));
        }
        if block.uncompressed.is_some_and(|u| u != block.unpacked) {
            return Err(self.corrupt(format!(
                "block holds {} uncompressed bytes, its header says {}",
                block.unpacked,
                block.uncompressed.unwrap_or(0)
            )));
        }
        self.walk = Walk::BlockTail(pad4(block.packed) + self.check);
        Ok(())
    }

    fn footer(&mut self) -> io::Result<Walk> {
        let backward = u32::from_le_bytes([self.acc[4], self.acc[5], self.acc[6], self.acc[7]]);
        let said = (u64::from(backward) + 1) * 4;
        if said != self.index_len {
            return Err(self.corrupt(format!(
                "stream footer: Backward Size says the index is {said} bytes, it is {}",
                self.index_len
            )));
        }
        Ok(Walk::AfterStream)
    }
}

impl<R: Read> Read for StructureGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, message)) = &self.failed {
            return Err(io::Error::new(*kind, message.clone()));
        }
        let n = self.inner.read(buf)?;
        let mut walked = 0;
        while walked < n {
            match self.step(&buf[walked..n]) {
                Ok(step) => {
                    walked += step;
                    self.pos += step as u64;
                }
                Err(e) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
            }
        }
        Ok(n)
    }
}

fn check_stream_header(header: &[u8; 12], at: u64) -> io::Result<()> {
    if crc32fast::hash(&header[6..8]).to_le_bytes() != header[8..12] {
        return Err(corrupt(at, "stream header CRC32 mismatch"));
    }
    if header[6] != 0 || header[7] & 0xF0 != 0 {
        return Err(corrupt(at, "unsupported stream flags"));
    }
    // None, CRC32, CRC64, SHA-256 (§2.1.1.2); the other IDs are reserved.
    // `xz -dc` decodes such a file without verifying it and exits 2; an
    // image that cannot be verified is not written.
    let check = header[7] & 0x0F;
    if !matches!(check, 0x00 | 0x01 | 0x04 | 0x0A) {
        return Err(io::Error::new(
            ErrorKind::Unsupported,
            format!("xz stream at input byte {at}: check type {check:#x} is not supported"),
        ));
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

/// What wraps a whole block into a one-block stream of its own: the
/// stream header, the check bytes it keeps after the block's data, and the
/// one-record index and footer after them. Where the worker checks the
/// block itself (`own`), the stream says check None and keeps none.
struct OneBlock {
    header: [u8; 12],
    own: bool,
    kept: u64,
    index: Vec<u8>,
    tail: [u8; 12],
}

impl OneBlock {
    fn new(stream_header: [u8; 12], header_len: u64, compressed: u64, uncompressed: u64) -> Self {
        let check_id = stream_header[7] & 0x0F;
        let own = OwnCheck::is_own(check_id);
        let (header, kept) = if own {
            (without_check(stream_header), 0)
        } else {
            (stream_header, check_len(check_id))
        };
        let index = one_record_index(header_len + compressed + kept, uncompressed);
        let tail = footer(&index, [header[6], header[7]]);
        OneBlock {
            header,
            own,
            kept,
            index,
            tail,
        }
    }
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

/// Decodes one block's one-block stream with lzma-rust2's `XzReader`,
/// which verifies the block's check and handles every filter chain.
pub(crate) struct XzBlockDecoder;

impl XzBlockDecoder {
    /// A decoder for [`block_stream`]'s units (`pipeline::scatter`).
    pub(crate) fn new() -> io::Result<Self> {
        Ok(XzBlockDecoder)
    }
}

/// One block of a single-stream xz file where its index places it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexedBlock {
    /// The block header's first byte in the file.
    pub offset: u64,
    /// Header, compressed data and check (the index's Unpadded Size).
    pub unpadded: u64,
    pub uncompressed: u64,
}

impl IndexedBlock {
    /// The bytes it takes in the file: padded to four.
    pub(crate) fn padded(&self) -> u64 {
        self.unpadded + pad4(self.unpadded)
    }
}

/// The blocks of a single-stream xz file, from its index (§4) in `tail`,
/// the file's last bytes, and the stream flags of its footer: what lets
/// blocks be decoded out of order (`pipeline::scatter`). `Ok(None)` when
/// that does not apply and the file decodes in order: stream padding or
/// several streams, or an index that does not fit in `tail`. `Err` for an
/// index that contradicts itself or the file's length.
pub(crate) fn indexed_blocks(
    tail: &[u8],
    file_len: u64,
) -> io::Result<Option<(Vec<IndexedBlock>, [u8; 2])>> {
    if tail.len() < 12 || tail.len() as u64 > file_len || tail[tail.len() - 4..] == [0; 4] {
        return Ok(None);
    }
    let footer = &tail[tail.len() - 12..];
    let footer_at = file_len - 12;
    if footer[10..12] != FOOTER_MAGIC
        || crc32fast::hash(&footer[4..10]).to_le_bytes() != footer[..4]
    {
        return Err(corrupt(footer_at, "stream footer: bad magic or CRC32"));
    }
    let flags = [footer[8], footer[9]];
    let backward = u64::from(u32::from_le_bytes(
        footer[4..8].try_into().expect("4 bytes"),
    ));
    let index_len = (backward + 1) * 4;
    let Some(index_start) = usize::try_from(index_len)
        .ok()
        .and_then(|len| (tail.len() - 12).checked_sub(len))
    else {
        return Ok(None);
    };
    let index_at = footer_at - index_len;
    let index = &tail[index_start..tail.len() - 12];
    let (body, crc) = index.split_at(index.len() - 4);
    if crc32fast::hash(body).to_le_bytes() != crc || body.first() != Some(&0) {
        return Err(corrupt(index_at, "index: no indicator or a bad CRC32"));
    }
    let mut fields = &body[1..];
    let bad = || corrupt(index_at, "index: a record is cut short");
    let count = varint(&mut fields).ok_or_else(bad)?;
    let mut blocks = Vec::new();
    let mut offset = 12u64;
    for _ in 0..count {
        let unpadded = varint(&mut fields).ok_or_else(bad)?;
        let uncompressed = varint(&mut fields).ok_or_else(bad)?;
        if !(5..=UNPADDED_SIZE_MAX).contains(&unpadded) {
            return Err(corrupt(index_at, format!("index: a {unpadded}-byte block")));
        }
        let block = IndexedBlock {
            offset,
            unpadded,
            uncompressed,
        };
        offset = offset
            .checked_add(block.padded())
            .ok_or_else(|| corrupt(index_at, "index: blocks past 2^64 bytes"))?;
        blocks.push(block);
    }
    if fields.len() > 3 || fields.iter().any(|&b| b != 0) {
        return Err(corrupt(index_at, "index: bytes after its records"));
    }
    // One stream: its blocks fill the file from its header to its index.
    if offset != index_at {
        return Ok(None);
    }
    Ok(Some((blocks, flags)))
}

/// Block `block`'s bytes (`bytes`, header to check, padded) as the
/// one-block stream [`XzBlockDecoder`] decodes, with the unit that says
/// what it must decode to: the same stream the splitter builds for a
/// whole block, its header's sizes checked against the index.
pub(crate) fn block_stream(
    stream_header: [u8; 12],
    block: &IndexedBlock,
    bytes: &[u8],
) -> io::Result<(XzBlock, Vec<u8>)> {
    let at = block.offset;
    if bytes.len() as u64 != block.padded() || bytes.is_empty() || bytes[0] == 0 {
        return Err(corrupt(at, "no block header where the index puts a block"));
    }
    let check_id = stream_header[7] & 0x0F;
    let check = check_len(check_id);
    let header_len = (usize::from(bytes[0]) + 1) * 4;
    let compressed = block
        .unpadded
        .checked_sub(header_len as u64 + check)
        .filter(|&c| c > 0 && header_len <= bytes.len())
        .ok_or_else(|| corrupt(at, "the index's block size is smaller than its header"))?;
    let parsed = parse_block_header(&bytes[..header_len], check).map_err(|e| e.into_io(at))?;
    if parsed.compressed.is_some_and(|c| c != compressed)
        || parsed.uncompressed.is_some_and(|u| u != block.uncompressed)
    {
        return Err(corrupt(at, "block header: sizes differ from the index's"));
    }
    let data = &bytes[header_len..];
    let packed_len = usize::try_from(compressed + pad4(compressed)).unwrap_or(usize::MAX);
    let stored = &data[packed_len..packed_len + usize::try_from(check).unwrap_or(0)];
    let OneBlock {
        header,
        own,
        index,
        tail,
        ..
    } = OneBlock::new(
        stream_header,
        header_len as u64,
        compressed,
        block.uncompressed,
    );
    let mut stream = Vec::with_capacity(12 + bytes.len() + index.len() + 12);
    stream.extend_from_slice(&header);
    stream.extend_from_slice(&bytes[..header_len]);
    stream.extend_from_slice(&data[..packed_len]);
    if !own {
        stream.extend_from_slice(stored);
    }
    stream.extend_from_slice(&index);
    stream.extend_from_slice(&tail);
    let unit = XzBlock {
        offset: at,
        uncompressed: block.uncompressed,
        check: if own {
            OwnCheck::parse(check_id, stored)
        } else {
            None
        },
    };
    Ok((unit, stream))
}

/// The file's stream header (§2.1.1), checked as the splitter checks it
/// and against the footer's flags, for [`block_stream`].
pub(crate) fn stream_header_for_blocks(header: &[u8], flags: [u8; 2]) -> io::Result<[u8; 12]> {
    let header: [u8; 12] = header
        .try_into()
        .map_err(|_| corrupt(0, "stream header cut short"))?;
    if header[..6] != STREAM_MAGIC {
        return Err(corrupt(0, "no xz stream header"));
    }
    check_stream_header(&header, 0)?;
    if header[6..8] != flags {
        return Err(corrupt(0, "stream header: flags other than the footer's"));
    }
    Ok(header)
}

impl XzBlockDecoder {
    fn reader(stream: impl Read, block: &XzBlock) -> impl Read {
        // One byte past the declared size: a block that decodes to more is corrupt.
        XzReader::new_mem_limit(stream, false, XZ_MEMORY_LIMIT).take(block.uncompressed + 1)
    }

    fn check(block: &XzBlock, result: io::Result<u64>) -> io::Result<()> {
        let decoded = result.map_err(|e| corrupt(block.offset, format!("block: {e}")))?;
        if decoded != block.uncompressed {
            return Err(corrupt(
                block.offset,
                format!(
                    "block decoded to {decoded} bytes, its header says {}",
                    block.uncompressed
                ),
            ));
        }
        Ok(())
    }
}

impl UnitDecoder for XzBlockDecoder {
    type Unit = XzBlock;

    fn decode(
        &mut self,
        block: &XzBlock,
        data: &[u8],
        _output_limit: u64,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        out.clear();
        out.reserve(usize::try_from(block.uncompressed).unwrap_or(0));
        let result = Self::reader(data, block).read_to_end(out);
        Self::check(block, result.map(|n| n as u64))?;
        if let Some(check) = block.check {
            check
                .verify(out)
                .map_err(|what| corrupt(block.offset, what))?;
        }
        Ok(out.len())
    }

    fn stream(
        &mut self,
        block: &XzBlock,
        input: &mut dyn Read,
        output: &mut StreamOutput<'_>,
    ) -> io::Result<()> {
        let mut reader = Self::reader(input, block);
        let mut total = 0u64;
        let result = loop {
            match reader.read(output.space()) {
                Ok(0) => break Ok(total),
                Ok(n) => {
                    total += n as u64;
                    output.advance(n)?;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        Self::check(block, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ordered::{DEFAULT_MEMORY, MIN_MEMORY};
    use std::io::{Cursor, Write};
    use std::process::{Command, Stdio};
    use std::thread;

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
        let config = OrderedConfig::new(threads, DEFAULT_MEMORY);
        decoder(Cursor::new(input), config).read_to_end(&mut out)?;
        Ok(out)
    }

    /// A file of xz's own test suite (tests/conformance/xz, see its README).
    fn corpus(name: &str) -> Vec<u8> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance/xz/");
        std::fs::read(format!("{dir}{name}")).unwrap()
    }

    /// Both ways the pipeline decodes xz: one worker and several.
    fn decode_both(name: &str) -> [io::Result<Vec<u8>>; 2] {
        [decode(corpus(name), 1), decode(corpus(name), 4)]
    }

    #[test]
    fn a_compressed_size_past_2_pow_63_is_refused_before_decoding() {
        // Accepted before: the header was not checked when the file fell
        // back to the sequential decoder, which ignores the sizes.
        for result in decode_both("bad-1-block_header-4.xz") {
            let err = result.unwrap_err().to_string();
            assert_eq!(
                err,
                "corrupt xz stream at input byte 12: block header: compressed size \
                 9223372036854775807 is outside 1..=9223372036854775780"
            );
        }
        for name in [
            "bad-1-block_header-5.xz",
            "bad-1-vli-1.xz",
            "bad-1-vli-2.xz",
            "bad-0-backward_size.xz",
        ] {
            for result in decode_both(name) {
                assert!(result.is_err(), "{name}");
            }
        }
    }

    #[test]
    fn every_filter_chain_xz_decodes_by_default_decodes() {
        // Three delta filters failed before: "multiple non-LZMA2 filters
        // not supported yet for stream API".
        let hello = b"Hello\nWorld!\n";
        for result in decode_both("good-1-3delta-lzma2.xz") {
            assert_eq!(result.unwrap().len(), 457);
        }
        for name in ["good-1-arm64-lzma2-1.xz", "good-1-arm64-lzma2-2.xz"] {
            for result in decode_both(name) {
                assert_eq!(result.unwrap().len(), 8576, "{name}");
            }
        }
        for result in decode_both("good-1-empty-bcj-lzma2.xz") {
            assert_eq!(result.unwrap(), b"");
        }
        for result in decode_both("good-1-block_header-1.xz") {
            assert_eq!(result.unwrap(), hello);
        }
    }

    #[test]
    fn unsupported_headers_say_what_is_unsupported() {
        let table = [
            (
                "unsupported-block_header.xz",
                "xz block header at input byte 12: non-zero header padding (a newer header \
                 field) is not supported",
            ),
            (
                "unsupported-filter_flags-1.xz",
                "xz block header at input byte 12: filter ID 0x7f is not supported",
            ),
            (
                "unsupported-filter_flags-2.xz",
                "xz block header at input byte 12: a filter chain with delta last (only \
                 LZMA2, and only last) is not supported",
            ),
            (
                "unsupported-check.xz",
                "xz stream at input byte 0: check type 0x2 is not supported",
            ),
        ];
        for (name, want) in table {
            for result in decode_both(name) {
                let err = result.unwrap_err();
                assert_eq!(err.kind(), ErrorKind::Unsupported, "{name}");
                assert_eq!(err.to_string(), want, "{name}");
            }
        }
    }

    /// The sequential path (a first block without sizes, as plain `xz`
    /// writes) checked only the first block header of the file, and never
    /// a footer's Backward Size: these were accepted before.
    #[test]
    fn the_sequential_path_checks_every_header_and_footer() {
        let mut concatenated = corpus("good-1-check-crc32.xz");
        concatenated.extend(corpus("bad-1-block_header-4.xz"));
        for threads in [1, 4] {
            let err = decode(concatenated.clone(), threads)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("block header: compressed size 9223372036854775807"),
                "{err}"
            );
        }
        let data = payload(300_000);
        let mut single = xz_cli(&["-c", "-1", "-T1"], &data);
        for threads in [1, 4] {
            assert_eq!(decode(single.clone(), threads).unwrap(), data);
        }
        // Backward Size one word too large, with the footer's CRC32 redone.
        let footer = single.len() - 12;
        let backward = u32::from_le_bytes(single[footer + 4..footer + 8].try_into().unwrap());
        single[footer + 4..footer + 8].copy_from_slice(&(backward + 1).to_le_bytes());
        let crc = crc32fast::hash(&single[footer + 4..footer + 10]);
        single[footer..footer + 4].copy_from_slice(&crc.to_le_bytes());
        for threads in [1, 4] {
            let err = decode(single.clone(), threads).unwrap_err().to_string();
            assert!(err.contains("Backward Size"), "{err}");
        }
    }

    #[test]
    fn block_header_parser_checks_every_field() {
        fn header(body: &[u8]) -> Vec<u8> {
            let mut h = body.to_vec();
            h.resize((h.len() + 4).div_ceil(4) * 4 - 4, 0);
            h[0] = u8::try_from((h.len() + 4) / 4 - 1).unwrap();
            let crc = crc32fast::hash(&h);
            h.extend_from_slice(&crc.to_le_bytes());
            h
        }
        // Sizes 100 and 200, then LZMA2 with an 8 MiB dictionary.
        let good = header(&[0, 0xC0, 100, 0xC8, 0x01, 0x21, 1, 22]);
        assert_eq!(
            parse_block_header(&good, 4),
            Ok(BlockHeader {
                compressed: Some(100),
                uncompressed: Some(200),
                pre_filters: 0
            })
        );
        let delta_x86 = header(&[0, 0x02, 0x03, 1, 0, 0x04, 0, 0x21, 1, 22]);
        assert_eq!(parse_block_header(&delta_x86, 4).unwrap().pre_filters, 2);
        let corrupt = |body: &[u8]| {
            matches!(
                parse_block_header(&header(body), 4),
                Err(HeaderError::Corrupt(_))
            )
        };
        let unsupported = |body: &[u8]| {
            matches!(
                parse_block_header(&header(body), 4),
                Err(HeaderError::Unsupported(_))
            )
        };
        assert!(corrupt(&[0, 0x40, 0, 0x21, 1, 22]), "compressed size 0");
        assert!(
            corrupt(&[0, 0x80, 0x80, 0x00, 0x21, 1, 22]),
            "overlong integer"
        );
        assert!(
            corrupt(&[0, 0x03, 0x03, 1, 0, 0x03, 1, 0]),
            "four filters, two present"
        );
        assert!(corrupt(&[0, 0x00, 0x21, 9]), "properties past the end");
        assert!(unsupported(&[0, 0x04, 0x21, 1, 22]), "reserved flag");
        assert!(
            unsupported(&[0, 0x00, 0x21, 1, 41]),
            "dictionary over 4 GiB"
        );
        assert!(
            unsupported(&[0, 0x01, 0x03, 2, 0, 0, 0x21, 1, 22]),
            "delta with 2 property bytes"
        );
        assert!(
            unsupported(&[0, 0x00, 0x21, 1, 22, 0, 7]),
            "non-zero padding"
        );
        let mut bad_crc = good.clone();
        bad_crc[2] ^= 1;
        assert!(matches!(
            parse_block_header(&bad_crc, 4),
            Err(HeaderError::Corrupt(_))
        ));
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

    /// A wrong check in a block is caught on the parallel path for every
    /// check type, whoever verifies it (imprint for CRC32 and CRC64,
    /// lzma-rust2 for SHA-256), and names the block.
    #[test]
    fn a_wrong_block_check_is_an_error_naming_the_block() {
        let data = payload(1_000_003);
        for (check, len, says) in [
            ("crc32", 4, "CRC32 of the decoded data does not match"),
            ("crc64", 8, "CRC64 of the decoded data does not match"),
            ("sha256", 32, "invalid block checksum"),
        ] {
            let arg = format!("--check={check}");
            let input = xz_cli(&["-c", "-1", "-T2", "--block-size=100KiB", &arg], &data);
            let header_len = (usize::from(input[12]) + 1) * 4;
            let header = parse_block_header(&input[12..12 + header_len], len).unwrap();
            let compressed = header.compressed.unwrap();
            let at = 12 + header_len as u64 + compressed + pad4(compressed);
            for byte in [0, len - 1] {
                let mut bad = input.clone();
                bad[usize::try_from(at + byte).unwrap()] ^= 0x10;
                for threads in [1, 4] {
                    let err = decode(bad.clone(), threads).unwrap_err();
                    assert_eq!(err.kind(), ErrorKind::InvalidData, "{check}: {err}");
                    let msg = err.to_string();
                    assert!(msg.contains(says), "{check}: {msg}");
                    assert!(msg.contains("at input byte 12:"), "{check}: {msg}");
                }
            }
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
    fn blocks_larger_than_a_quarter_of_the_budget_stream() {
        // 6 MiB blocks against the smallest budget (16 MiB, so 4 MiB whole).
        let data = payload(13 << 20);
        let input = xz_cli(&["-c", "-0", "-T2", "--block-size=6MiB"], &data);
        for threads in [1, 3] {
            let mut out = Vec::new();
            decoder(
                Cursor::new(input.clone()),
                OrderedConfig::new(threads, MIN_MEMORY),
            )
            .read_to_end(&mut out)
            .unwrap();
            assert!(out == data);
        }
        // Truncated inside a streamed block: the splitter says where.
        let cut = input.len() / 2;
        let mut out = Vec::new();
        let err = decoder(
            Cursor::new(input[..cut].to_vec()),
            OrderedConfig::new(2, MIN_MEMORY),
        )
        .read_to_end(&mut out)
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("xz stream truncated at input byte {cut}")
        );
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
        // Empty input is a truncated stream, as in the sequential decoder.
        assert_eq!(
            decode(Vec::new(), 2).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn early_drop_stops_every_thread() {
        let input = blocks(&payload(2_000_000));
        let mut decoder = decoder(Cursor::new(input), OrderedConfig::new(4, DEFAULT_MEMORY));
        let mut buf = [0u8; 1000];
        decoder.read_exact(&mut buf).unwrap();
        let exited = decoder.exited();
        drop(decoder);
        for _ in 0..500 {
            if exited() {
                return;
            }
            thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("decoder threads still running 5 s after the drop");
    }
}
