//! Strict streaming decoders: gzip, xz, zstd, bzip2, all pure Rust.
//!
//! Each accepts what its reference tool accepts (concatenated gzip members,
//! xz streams with stream padding, every zstd frame including skippable
//! ones, concatenated bzip2 streams) and nothing more: bytes after the last
//! stream, a truncated stream or a corrupt one are errors, never a clean EOF,
//! because a short or padded image written to a disk looks like success.
//!
//! Errors carry the input offset. The decoders consume input exactly (a
//! `BufRead` or slice interface), so the offset is where the decoder stood
//! when it noticed; the damage is at or before it.

use std::io::{self, BufRead, ErrorKind, Read};

use flate2::bufread::GzDecoder;
use lzma_rust2::{Action, Status, XzStream};

use super::format::Compression;
use super::ordered::{DEFAULT_MEMORY, OrderedConfig};

/// Large enough that a network or pipe source is read in few syscalls.
const INPUT_BUFFER: usize = 256 << 10;

/// xz's dictionary is the decoder's memory; `xz -9` needs 64 MiB. A larger
/// claim is refused rather than allocated inside PID 1.
pub const XZ_MEMORY_LIMIT: u32 = 256 << 10; // KiB

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";

/// Wraps `input` in the decoder for `compression`; `None` passes it through.
/// xz and zstd go through their splitters with one worker: the splitters
/// check every block and frame header, index and footer themselves, more
/// strictly than a decoder alone.
pub fn decoder(compression: Compression, input: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    decoder_with(compression, input, one_worker())
}

/// [`decoder`], with xz blocks and zstd frames decoded under `config`
/// (every core, a memory budget).
pub fn decoder_with(
    compression: Compression,
    input: impl Read + Send + 'static,
    config: OrderedConfig,
) -> Box<dyn Read + Send> {
    match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(GzipDecoder::new(Box::new(input))),
        Compression::Xz => Box::new(super::xz_blocks::decoder(input, config)),
        Compression::Zstd => Box::new(super::zstd_split::decoder(input, config)),
        Compression::Bzip2 => Box::new(Bzip2Decoder::new(Box::new(input))),
    }
}

fn one_worker() -> OrderedConfig {
    OrderedConfig::new(1, DEFAULT_MEMORY)
}

/// The buffered input under a decoder: counts what the decoder consumed and
/// remembers why input stopped, so errors can be told apart.
struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Bytes handed to the decoder: the input offset of its next byte.
    consumed: u64,
    eof: bool,
    /// The decoder asked for bytes after the end of input.
    starved: bool,
    /// An error from `inner`, kept so it reaches the caller unchanged
    /// instead of being relabelled as corruption by a decoder.
    source_error: Option<io::Error>,
}

impl<R: Read> Input<R> {
    fn new(inner: R) -> Self {
        Input {
            inner,
            buf: vec![0u8; INPUT_BUFFER].into_boxed_slice(),
            pos: 0,
            end: 0,
            consumed: 0,
            eof: false,
            starved: false,
            source_error: None,
        }
    }

    /// Reads once more into the buffer, retrying `Interrupted`, so the
    /// decoders above never see it (some do not retry it).
    fn refill(&mut self) -> io::Result<()> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n.min(self.buf.len() - self.end);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.source_failed(e)),
            }
        }
    }

    fn source_failed(&mut self, e: io::Error) -> io::Error {
        let copy = io::Error::new(e.kind(), e.to_string());
        self.source_error = Some(e);
        copy
    }

    /// Up to `n` (at most the buffer size) contiguous bytes without
    /// consuming them; fewer only at the end of input.
    fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        let n = n.min(self.buf.len());
        while self.end - self.pos < n && !self.eof {
            if self.buf.len() - self.pos < n {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            }
            self.refill()?;
        }
        let end = self.end.min(self.pos + n);
        Ok(&self.buf[self.pos..end])
    }
}

impl<R: Read> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.end && !self.eof {
            self.refill()?;
        }
        if self.pos == self.end {
            self.starved = true;
        }
        Ok(&self.buf[self.pos..self.end])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.end - self.pos);
        self.pos += amt;
        self.consumed += amt as u64;
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pos == self.end && !self.eof && out.len() >= self.buf.len() {
            // Large reads skip the copy through the buffer.
            loop {
                match self.inner.read(out) {
                    Ok(0) => {
                        self.eof = true;
                        self.starved = true;
                        return Ok(0);
                    }
                    Ok(n) => {
                        self.consumed += n as u64;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.source_failed(e)),
                }
            }
        }
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// How a stream failed; kept so every later read repeats it.
#[derive(Debug, Clone)]
struct Failure {
    kind: ErrorKind,
    message: String,
}

impl Failure {
    fn to_error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

/// Names a decoder error: an error of the source itself passes through,
/// running out of input is truncation, anything else is corruption.
fn classify<R>(format: &str, input: &mut Input<R>, offset: u64, e: &io::Error) -> Failure {
    if let Some(source) = input.source_error.take() {
        return Failure {
            kind: source.kind(),
            message: source.to_string(),
        };
    }
    if e.kind() == ErrorKind::UnexpectedEof || input.starved {
        return Failure {
            kind: ErrorKind::UnexpectedEof,
            message: format!("{format} stream truncated at input byte {offset}"),
        };
    }
    corrupt(format, offset, e)
}

fn corrupt(format: &str, offset: u64, detail: impl std::fmt::Display) -> Failure {
    Failure {
        kind: ErrorKind::InvalidData,
        message: format!("corrupt {format} stream at or before input byte {offset}: {detail}"),
    }
}

fn trailing_garbage(format: &str, offset: u64) -> Failure {
    Failure {
        kind: ErrorKind::InvalidData,
        message: format!("trailing garbage after the {format} stream at input byte {offset}"),
    }
}

fn truncated(format: &str, offset: u64) -> Failure {
    Failure {
        kind: ErrorKind::UnexpectedEof,
        message: format!("{format} stream truncated at input byte {offset}"),
    }
}

/// What follows a finished stream.
enum Next {
    End,
    Stream,
    Garbage,
}

/// Classifies the bytes after a stream by the format's magic. A lone prefix
/// of the magic at the end of input counts as a stream, so it is reported
/// as truncated rather than as garbage.
fn next_stream<R: Read>(input: &mut Input<R>, magic: &[u8]) -> io::Result<Next> {
    let head = input.peek(magic.len())?;
    Ok(if head.is_empty() {
        Next::End
    } else if magic.starts_with(head) {
        Next::Stream
    } else {
        Next::Garbage
    })
}

/// gzip, including several members concatenated (`gzip -d` semantics).
pub struct GzipDecoder<R: Read> {
    state: GzipState<R>,
    members: u64,
}

enum GzipState<R: Read> {
    Member(Box<GzDecoder<Input<R>>>),
    Between(Input<R>),
    Done(Input<R>),
    Failed(Input<R>, Failure),
    /// Only seen while a state transition is in progress.
    Moving,
}

impl<R: Read> GzipDecoder<R> {
    pub fn new(inner: R) -> Self {
        GzipDecoder {
            state: GzipState::Between(Input::new(inner)),
            members: 0,
        }
    }

    /// Compressed bytes consumed so far.
    pub fn input_bytes(&self) -> u64 {
        match &self.state {
            GzipState::Member(d) => d.get_ref().consumed,
            GzipState::Between(i) | GzipState::Done(i) | GzipState::Failed(i, _) => i.consumed,
            GzipState::Moving => 0,
        }
    }

    fn step(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Failure> {
        match std::mem::replace(&mut self.state, GzipState::Moving) {
            GzipState::Member(mut member) => match member.read(buf) {
                Ok(0) => {
                    self.members += 1;
                    self.state = GzipState::Between(member.into_inner());
                    Ok(None)
                }
                Ok(n) => {
                    self.state = GzipState::Member(member);
                    Ok(Some(n))
                }
                Err(e) => {
                    let input = member.get_mut();
                    let offset = input.consumed;
                    let failure = classify("gzip", input, offset, &e);
                    self.state = GzipState::Failed(member.into_inner(), failure.clone());
                    Err(failure)
                }
            },
            GzipState::Between(mut input) => {
                let next = next_stream(&mut input, GZIP_MAGIC);
                let offset = input.consumed;
                let failure = match next {
                    Ok(Next::Stream) => {
                        input.starved = false;
                        self.state = GzipState::Member(Box::new(GzDecoder::new(input)));
                        return Ok(None);
                    }
                    Ok(Next::End) if self.members > 0 => {
                        self.state = GzipState::Done(input);
                        return Ok(Some(0));
                    }
                    Ok(Next::End) => truncated("gzip", offset),
                    Ok(Next::Garbage) if self.members > 0 => trailing_garbage("gzip", offset),
                    Ok(Next::Garbage) => corrupt("gzip", offset, "not a gzip header"),
                    Err(e) => classify("gzip", &mut input, offset, &e),
                };
                self.state = GzipState::Failed(input, failure.clone());
                Err(failure)
            }
            GzipState::Done(input) => {
                self.state = GzipState::Done(input);
                Ok(Some(0))
            }
            GzipState::Failed(input, failure) => {
                self.state = GzipState::Failed(input, failure.clone());
                Err(failure)
            }
            GzipState::Moving => Err(Failure {
                kind: ErrorKind::Other,
                message: "gzip decoder used after a panic".to_owned(),
            }),
        }
    }
}

impl<R: Read> Read for GzipDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.step(buf) {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {}
                Err(failure) => return Err(failure.to_error()),
            }
        }
    }
}

/// bzip2, including several streams concatenated (`bzip2 -d` semantics;
/// parallel compressors such as pbzip2 write one stream per block).
pub struct Bzip2Decoder<R: Read> {
    state: Bzip2State<R>,
    streams: u64,
}

enum Bzip2State<R: Read> {
    Stream(Box<bzip2::bufread::BzDecoder<Input<R>>>),
    Between(Input<R>),
    Done(Input<R>),
    Failed(Input<R>, Failure),
    Moving,
}

impl<R: Read> Bzip2Decoder<R> {
    pub fn new(inner: R) -> Self {
        Bzip2Decoder {
            state: Bzip2State::Between(Input::new(inner)),
            streams: 0,
        }
    }

    /// Compressed bytes consumed so far.
    pub fn input_bytes(&self) -> u64 {
        match &self.state {
            Bzip2State::Stream(d) => d.get_ref().consumed,
            Bzip2State::Between(i) | Bzip2State::Done(i) | Bzip2State::Failed(i, _) => i.consumed,
            Bzip2State::Moving => 0,
        }
    }

    fn step(&mut self, buf: &mut [u8]) -> Result<Option<usize>, Failure> {
        match std::mem::replace(&mut self.state, Bzip2State::Moving) {
            Bzip2State::Stream(mut stream) => match stream.read(buf) {
                Ok(0) => {
                    self.streams += 1;
                    self.state = Bzip2State::Between(stream.into_inner());
                    Ok(None)
                }
                Ok(n) => {
                    self.state = Bzip2State::Stream(stream);
                    Ok(Some(n))
                }
                Err(e) => {
                    let input = stream.get_mut();
                    let offset = input.consumed;
                    let failure = classify("bzip2", input, offset, &e);
                    self.state = Bzip2State::Failed(stream.into_inner(), failure.clone());
                    Err(failure)
                }
            },
            Bzip2State::Between(mut input) => {
                let next = next_stream(&mut input, BZIP2_MAGIC);
                let offset = input.consumed;
                let failure = match next {
                    Ok(Next::Stream) => {
                        input.starved = false;
                        self.state =
                            Bzip2State::Stream(Box::new(bzip2::bufread::BzDecoder::new(input)));
                        return Ok(None);
                    }
                    Ok(Next::End) if self.streams > 0 => {
                        self.state = Bzip2State::Done(input);
                        return Ok(Some(0));
                    }
                    Ok(Next::End) => truncated("bzip2", offset),
                    Ok(Next::Garbage) if self.streams > 0 => trailing_garbage("bzip2", offset),
                    Ok(Next::Garbage) => corrupt("bzip2", offset, "not a bzip2 header"),
                    Err(e) => classify("bzip2", &mut input, offset, &e),
                };
                self.state = Bzip2State::Failed(input, failure.clone());
                Err(failure)
            }
            Bzip2State::Done(input) => {
                self.state = Bzip2State::Done(input);
                Ok(Some(0))
            }
            Bzip2State::Failed(input, failure) => {
                self.state = Bzip2State::Failed(input, failure.clone());
                Err(failure)
            }
            Bzip2State::Moving => Err(Failure {
                kind: ErrorKind::Other,
                message: "bzip2 decoder used after a panic".to_owned(),
            }),
        }
    }
}

impl<R: Read> Read for Bzip2Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match self.step(buf) {
                Ok(Some(n)) => return Ok(n),
                Ok(None) => {}
                Err(failure) => return Err(failure.to_error()),
            }
        }
    }
}

/// xz, including concatenated streams and stream padding (xz file format
/// 1.x, section 2.2). Uses lzma-rust2's sans-I/O `XzStream`: its memory is
/// the dictionary (grown as data arrives, capped by `XZ_MEMORY_LIMIT`) plus
/// one LZMA2 chunk, never a whole block.
pub struct XzDecoder<R: Read> {
    input: Input<R>,
    stream: Option<Box<XzStream>>,
    /// Input offset where the current stream began.
    stream_start: u64,
    streams: u64,
    failure: Option<Failure>,
}

impl<R: Read> XzDecoder<R> {
    pub fn new(inner: R) -> Self {
        XzDecoder {
            input: Input::new(inner),
            stream: None,
            stream_start: 0,
            streams: 0,
            failure: None,
        }
    }

    /// Compressed bytes consumed so far.
    pub fn input_bytes(&self) -> u64 {
        self.input.consumed
    }

    pub fn into_inner(self) -> R {
        self.input.inner
    }

    fn fail(&mut self, failure: Failure) -> io::Error {
        let e = failure.to_error();
        self.failure = Some(failure);
        e
    }

    fn decode(&mut self, buf: &mut [u8]) -> Result<usize, Failure> {
        let mut idle = 0;
        loop {
            let Some(stream) = self.stream.as_mut() else {
                if !self.next_stream()? {
                    return Ok(0);
                }
                continue;
            };
            let chunk = match self.input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) => {
                    let offset = self.input.consumed;
                    return Err(classify("xz", &mut self.input, offset, &e));
                }
            };
            let action = if chunk.is_empty() {
                Action::Finish
            } else {
                Action::Run
            };
            let result = match stream.process(chunk, buf, action) {
                Ok(result) => result,
                Err(e) => {
                    let offset = self.stream_start + stream.total_in();
                    if e.kind() == ErrorKind::OutOfMemory {
                        return Err(corrupt(
                            "xz",
                            offset,
                            format_args!(
                                "a block needs more than the {} MiB memory limit",
                                XZ_MEMORY_LIMIT >> 10
                            ),
                        ));
                    }
                    return Err(classify("xz", &mut self.input, offset, &e));
                }
            };
            self.input.consume(result.bytes_consumed);
            if result.status == Status::StreamEnd {
                self.stream = None;
                self.streams += 1;
            }
            if result.bytes_produced > 0 {
                return Ok(result.bytes_produced);
            }
            if result.bytes_consumed == 0 && result.status != Status::StreamEnd {
                // Guards against a decoder that neither moves nor fails.
                idle += 1;
                if action == Action::Finish || idle > 2 {
                    return Err(truncated("xz", self.input.consumed));
                }
            } else {
                idle = 0;
            }
        }
    }

    /// Skips stream padding (groups of four zero bytes) and starts the next
    /// stream; false at the clean end of input.
    fn next_stream(&mut self) -> Result<bool, Failure> {
        loop {
            let offset = self.input.consumed;
            let head = match self.input.peek(XZ_MAGIC.len()) {
                Ok(head) => head,
                Err(e) => return Err(classify("xz", &mut self.input, offset, &e)),
            };
            if head.is_empty() {
                if self.streams == 0 {
                    return Err(truncated("xz", offset));
                }
                return Ok(false);
            }
            if self.streams > 0 && head.len() >= 4 && head[..4] == [0, 0, 0, 0] {
                self.input.consume(4);
                continue;
            }
            // A lone prefix of the magic at the end is a truncated stream.
            if XZ_MAGIC.starts_with(head) {
                self.stream = Some(Box::new(XzStream::new_mem_limit(false, XZ_MEMORY_LIMIT)));
                self.stream_start = offset;
                self.input.starved = false;
                return Ok(true);
            }
            if self.streams == 0 {
                return Err(corrupt("xz", offset, "not an xz stream"));
            }
            return Err(trailing_garbage("xz", offset));
        }
    }
}

impl<R: Read> Read for XzDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failure {
            return Err(failure.to_error());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        self.decode(buf).map_err(|failure| self.fail(failure))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Cursor, Write};
    use std::process::{Command, Stdio};

    const ALL: [Compression; 4] = [
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
    ];

    /// Compressible but not trivially so, with zero runs like a disk image,
    /// so a flipped byte lands in entropy-coded data.
    fn payload(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if state % 61 == 0 {
                out.resize((out.len() + 3000).min(len), 0);
            } else {
                out.push(b"abcdefghijklmnop"[usize::try_from(state % 16).unwrap()]);
            }
        }
        out
    }

    /// Pipes `input` through a compressor CLI.
    pub(crate) fn cli(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {program}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn bzip2_level(data: &[u8], level: u32) -> Vec<u8> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::new(level));
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc =
            lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(6)).unwrap();
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        cli("zstd", &["-q", "-c", "-3"], data)
    }

    fn compress(compression: Compression, data: &[u8]) -> Vec<u8> {
        match compression {
            Compression::None => data.to_vec(),
            Compression::Gzip => gzip(data),
            Compression::Xz => xz(data),
            Compression::Zstd => zstd(data),
            Compression::Bzip2 => bzip2_level(data, 9),
        }
    }

    fn decode_all(compression: Compression, input: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(compression, Box::new(Cursor::new(input))).read_to_end(&mut out)?;
        Ok(out)
    }

    fn assert_decodes(compression: Compression, input: Vec<u8>, want: &[u8]) {
        match decode_all(compression, input) {
            Ok(out) => assert!(out == want, "{compression}: output differs"),
            Err(e) => panic!("{compression}: {e}"),
        }
    }

    /// At most 5 bytes per read and `Interrupted` on every other call.
    struct Dribble<R>(R, usize);
    impl<R: Read> Read for Dribble<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1 % 2 == 0 {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(5);
            self.0.read(&mut buf[..n])
        }
    }

    #[test]
    fn empty_one_byte_and_odd_sized_payloads() {
        for compression in ALL {
            for len in [0, 1, 1_000_003] {
                let data = payload(len);
                assert_decodes(compression, compress(compression, &data), &data);
            }
        }
    }

    #[test]
    fn none_passes_through() {
        let data = payload(1000);
        assert_decodes(Compression::None, data.clone(), &data);
        assert_decodes(Compression::None, Vec::new(), b"");
    }

    #[test]
    fn short_reads_and_interrupts_from_the_source() {
        let data = payload(200_001);
        for compression in ALL {
            let input = compress(compression, &data);
            let mut dec = decoder(compression, Box::new(Dribble(Cursor::new(input), 0)));
            let mut out = Vec::new();
            dec.read_to_end(&mut out).unwrap();
            assert!(out == data, "{compression}");
        }
    }

    #[test]
    fn gzip_members_concatenated() {
        let (a, b) = (payload(100_000), payload(3));
        let mut input = gzip(&a);
        input.extend(gzip(&b));
        input.extend(gzip(b""));
        assert_decodes(Compression::Gzip, input, &[a, b].concat());
        // And as the gzip CLI writes them.
        let mut input = cli("gzip", &["-c"], b"first ");
        input.extend(cli("gzip", &["-c", "-1"], b"second"));
        assert_decodes(Compression::Gzip, input, b"first second");
    }

    #[test]
    fn bzip2_multi_block_and_multi_stream() {
        // Level 1 makes 100 kB blocks, so this is ten blocks.
        let data = payload(1_000_003);
        assert_decodes(Compression::Bzip2, bzip2_level(&data, 1), &data);
        let mut input = bzip2_level(&data[..10], 9);
        input.extend(bzip2_level(&data[10..], 1));
        assert_decodes(Compression::Bzip2, input, &data);
    }

    #[test]
    fn xz_multi_block_multi_stream_and_padding() {
        let data = payload(1_000_003);
        let blocks = cli("xz", &["-c", "--block-size=100KiB", "--check=crc32"], &data);
        assert_decodes(Compression::Xz, blocks.clone(), &data);
        let sha = cli("xz", &["-c", "-0", "--check=sha256"], &data);
        assert_decodes(Compression::Xz, sha, &data);
        let none = cli("xz", &["-c", "--check=none"], &data);
        assert_decodes(Compression::Xz, none, &data);
        // Two streams with stream padding between and after them.
        let mut input = xz(&data[..7]);
        input.extend([0u8; 8]);
        input.extend(blocks);
        input.extend([0u8; 4]);
        assert_decodes(
            Compression::Xz,
            input,
            &data[..7].iter().chain(&data).copied().collect::<Vec<_>>(),
        );
        // BCJ and delta filters in front of LZMA2.
        let x86 = cli("xz", &["-c", "--x86", "--lzma2=preset=1"], &data);
        assert_decodes(Compression::Xz, x86, &data);
        let delta = cli("xz", &["-c", "--delta=dist=4", "--lzma2=preset=1"], &data);
        assert_decodes(Compression::Xz, delta, &data);
    }

    #[test]
    fn xz_padding_that_is_not_a_multiple_of_four_is_an_error() {
        let mut input = xz(b"image");
        let len = input.len() as u64;
        input.extend([0u8; 3]);
        let err = decode_all(Compression::Xz, input).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("trailing garbage after the xz stream at input byte {len}")
        );
    }

    #[test]
    fn zstd_every_frame_and_skippable_frames() {
        let data = payload(1_000_003);
        let skippable = |len: u32| {
            let mut frame = vec![0x5a, 0x2a, 0x4d, 0x18];
            frame.extend(len.to_le_bytes());
            frame.extend(std::iter::repeat_n(0xee, usize::try_from(len).unwrap()));
            frame
        };
        let mut input = skippable(0);
        input.extend(zstd(&data[..500_000]));
        input.extend(skippable(17));
        // Frames as written from a pipe carry no content size.
        input.extend(cli("zstd", &["-q", "-c", "--no-check"], &data[500_000..]));
        input.extend(zstd(b""));
        input.extend(skippable(5));
        assert_decodes(Compression::Zstd, input, &data);
        // Only skippable frames: a valid zstd file that decodes to nothing.
        assert_decodes(Compression::Zstd, skippable(3), b"");
        // Large windows, as `--long` and `--ultra -22` write them.
        let long = cli("zstd", &["-q", "-c", "--long=27"], &data);
        assert_decodes(Compression::Zstd, long, &data);
    }

    #[test]
    fn zstd_checksum_mismatch_is_an_error() {
        let mut input = zstd(&payload(50_000));
        let last = input.len() - 1;
        input[last] ^= 0x01;
        let err = decode_all(Compression::Zstd, input).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("content checksum mismatch in the frame at input byte 0"),
            "{err}"
        );
    }

    #[test]
    fn zstd_content_size_mismatch_is_an_error() {
        // Single-segment frame declaring 5 bytes, holding one raw block of 3.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x20, 5];
        frame.extend([0x19, 0x00, 0x00]); // last block, raw, 3 bytes
        frame.extend(b"abc");
        let err = decode_all(Compression::Zstd, frame.clone()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
        // The same frame declaring the right size decodes.
        frame[5] = 3;
        assert_decodes(Compression::Zstd, frame, b"abc");
    }

    #[test]
    fn truncation_is_never_a_clean_eof() {
        let data = payload(300_007);
        for compression in ALL {
            let input = compress(compression, &data);
            for cut in [0, 1, input.len() / 2, input.len() - 1] {
                let err = decode_all(compression, input[..cut].to_vec())
                    .expect_err(&format!("{compression} cut at {cut}"));
                assert_eq!(
                    err.kind(),
                    ErrorKind::UnexpectedEof,
                    "{compression} cut at {cut}: {err}"
                );
                assert_eq!(
                    err.to_string(),
                    format!("{compression} stream truncated at input byte {cut}"),
                );
            }
        }
    }

    #[test]
    fn truncation_between_multi_frame_parts_is_caught_too() {
        let data = payload(100_000);
        let first = cli("zstd", &["-q", "-c"], &data);
        let mut input = first.clone();
        input.extend(&first[..5]);
        let err = decode_all(Compression::Zstd, input).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
        let mut input = gzip(&data);
        input.push(0x1f);
        assert_eq!(
            decode_all(Compression::Gzip, input).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
        let mut input = xz(&data);
        input.extend(&XZ_MAGIC[..3]);
        assert_eq!(
            decode_all(Compression::Xz, input).unwrap_err().kind(),
            ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn one_flipped_byte_is_an_error() {
        let data = payload(300_007);
        for compression in ALL {
            let input = compress(compression, &data);
            for at in [input.len() / 3, input.len() / 2, input.len() * 2 / 3] {
                let mut bad = input.clone();
                bad[at] ^= 0x10;
                match decode_all(compression, bad) {
                    Err(e) => assert!(
                        e.kind() == ErrorKind::InvalidData || e.kind() == ErrorKind::UnexpectedEof,
                        "{compression} flip at {at}: {e}"
                    ),
                    Ok(out) => panic!(
                        "{compression}: flip at {at} decoded cleanly ({} bytes, {})",
                        out.len(),
                        if out == data { "same" } else { "different" }
                    ),
                }
            }
        }
    }

    #[test]
    fn corruption_names_format_and_offset() {
        let input = gzip(&payload(300_007));
        let mut bad = input.clone();
        bad[input.len() / 2] ^= 0x10;
        let err = decode_all(Compression::Gzip, bad).unwrap_err().to_string();
        assert!(
            err.starts_with("corrupt gzip stream at or before input byte "),
            "{err}"
        );
        let offset: u64 = err["corrupt gzip stream at or before input byte ".len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(offset >= input.len() as u64 / 2, "{err}");
    }

    #[test]
    fn trailing_garbage_is_an_error() {
        for compression in ALL {
            let input = compress(compression, &payload(10_000));
            let len = input.len();
            for garbage in [&b"garbage!"[..], &[0u8; 512][..], b"\n"] {
                let mut bad = input.clone();
                bad.extend_from_slice(garbage);
                if compression == Compression::Xz && garbage.len() % 4 == 0 && garbage[0] == 0 {
                    // Four zero bytes at a time are xz stream padding.
                    assert_decodes(compression, bad, &payload(10_000));
                    continue;
                }
                let err = decode_all(compression, bad).unwrap_err();
                assert_eq!(err.kind(), ErrorKind::InvalidData);
                assert_eq!(
                    err.to_string(),
                    format!("trailing garbage after the {compression} stream at input byte {len}")
                );
            }
        }
    }

    #[test]
    fn wrong_format_at_byte_zero_is_corrupt_not_garbage() {
        for compression in ALL {
            let err = decode_all(compression, payload(100)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidData, "{compression}: {err}");
            // "at input byte 0" from the xz splitter, which reads headers
            // itself; "at or before" from the streaming decoders.
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("corrupt {compression} stream at"))
                    && message.contains("input byte 0"),
                "{err}"
            );
        }
    }

    #[test]
    fn source_errors_pass_through_unchanged() {
        struct ResetAfter(Cursor<Vec<u8>>);
        impl Read for ResetAfter {
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
        let data = payload(300_007);
        for compression in ALL {
            let input = compress(compression, &data);
            let half = input[..input.len() / 2].to_vec();
            let mut dec = decoder(compression, Box::new(ResetAfter(Cursor::new(half))));
            let err = dec.read_to_end(&mut Vec::new()).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::ConnectionReset,
                "{compression}: {err}"
            );
            assert_eq!(err.to_string(), "connection reset");
        }
    }

    #[test]
    fn a_failed_stream_stays_failed() {
        for compression in ALL {
            let mut input = compress(compression, &payload(1000));
            input.extend(b"garbage");
            let mut dec = decoder(compression, Box::new(Cursor::new(input)));
            let first = dec.read_to_end(&mut Vec::new()).unwrap_err().to_string();
            let mut buf = [0u8; 100];
            for _ in 0..3 {
                assert_eq!(dec.read(&mut buf).unwrap_err().to_string(), first);
            }
        }
    }

    #[test]
    fn xz_dictionary_beyond_the_memory_limit_is_refused() {
        // Rewrite the first block header's LZMA2 dictionary byte to 4 GiB
        // and fix the header CRC, as a hostile or exotic encoder would.
        let mut input = xz(&payload(1000));
        let header_len = (usize::from(input[12]) + 1) * 4;
        let header = &mut input[12..12 + header_len];
        assert_eq!(&header[2..4], &[0x21, 0x01], "expected a lone LZMA2 filter");
        header[4] = 40;
        let mut crc = flate2::Crc::new();
        crc.update(&header[..header_len - 4]);
        header[header_len - 4..].copy_from_slice(&crc.sum().to_le_bytes());
        let err = decode_all(Compression::Xz, input).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(
            err.to_string()
                .contains("needs more than the 256 MiB memory limit"),
            "{err}"
        );
    }

    #[test]
    fn input_bytes_counts_the_whole_stream() {
        let data = payload(100_000);
        let input = xz(&data);
        let mut dec = XzDecoder::new(Cursor::new(input.clone()));
        dec.read_to_end(&mut Vec::new()).unwrap();
        assert_eq!(dec.input_bytes(), input.len() as u64);
        let input = gzip(&data);
        let mut dec = GzipDecoder::new(Cursor::new(input.clone()));
        dec.read_to_end(&mut Vec::new()).unwrap();
        assert_eq!(dec.input_bytes(), input.len() as u64);
        let input = bzip2_level(&data, 9);
        let mut dec = Bzip2Decoder::new(Cursor::new(input.clone()));
        dec.read_to_end(&mut Vec::new()).unwrap();
        assert_eq!(dec.input_bytes(), input.len() as u64);
    }

    /// Single-threaded decode throughput on a real image. Set
    /// `IMPRINT_DECODE_BENCH` to a raw image whose `.gz`, `.xz`, `.zst` and
    /// `.bz2` siblings exist; run in release with `--ignored --nocapture`.
    /// Output is checked against the raw image outside the timed reads.
    #[test]
    #[ignore = "measurement, not a check: needs IMPRINT_DECODE_BENCH"]
    fn measure_decode_throughput() {
        let Ok(raw) = std::env::var("IMPRINT_DECODE_BENCH") else {
            eprintln!("IMPRINT_DECODE_BENCH is not set; nothing to measure");
            return;
        };
        let formats = [
            (Compression::Gzip, "gz"),
            (Compression::Xz, "xz"),
            (Compression::Zstd, "zst"),
            (Compression::Bzip2, "bz2"),
        ];
        for (compression, ext) in formats {
            let path = format!("{raw}.{ext}");
            let Ok(file) = std::fs::File::open(&path) else {
                eprintln!("{path}: missing, skipped");
                continue;
            };
            let mut expected = std::fs::File::open(&raw).unwrap();
            let mut dec = decoder(compression, Box::new(file));
            let mut buf = vec![0u8; 4 << 20];
            let mut want = vec![0u8; 4 << 20];
            let (mut total, mut busy) = (0u64, std::time::Duration::ZERO);
            loop {
                let start = std::time::Instant::now();
                let n = dec.read(&mut buf).unwrap();
                busy += start.elapsed();
                if n == 0 {
                    break;
                }
                expected.read_exact(&mut want[..n]).unwrap();
                assert!(
                    buf[..n] == want[..n],
                    "{path}: output differs near byte {total}"
                );
                total += n as u64;
            }
            assert_eq!(
                expected.read(&mut want).unwrap(),
                0,
                "{path}: output too short"
            );
            #[allow(clippy::cast_precision_loss)]
            let rate = total as f64 / busy.as_secs_f64() / 1e6;
            eprintln!(
                "{compression}: {total} bytes in {:.2} s = {rate:.0} MB/s",
                busy.as_secs_f64()
            );
        }
    }
}
