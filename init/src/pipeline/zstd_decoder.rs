//! The zstd frame decoder: the one place that chooses it.
//!
//! libzstd-rs-sys, libzstd 1.5's decoder ported to Rust by the zlib-rs
//! team (the backend of zstd-sys's `rust-backend` feature), decodes at
//! libzstd's speed per core: measured single-threaded on the benchmark's
//! ext4 image it ran at 1212 MB/s against `zstd -dc`'s 1093 and ruzstd's
//! 401 (BENCHMARKS.md, "zstd decoder"). It verifies what libzstd verifies:
//! block and sequence bounds, the declared content size, the content
//! checksum, the window limit.
//!
//! Frames reach it already cut by the splitter (`zstd_split`), one frame
//! per unit, so legacy and skippable frames never do: the splitter accepts
//! only the current frame magic and skips skippable frames itself. The
//! window is capped at 2^27 (128 MiB), libzstd's and ruzstd's default,
//! what `zstd -d` accepts without `--memory`/`--long`.

use std::io::{self, ErrorKind, Read};

use super::ordered::{StreamOutput, UnitDecoder};
use crate::sys::zstd::ZstdContext;

/// `zstd -d`'s default window limit, 2^27 bytes.
pub const WINDOW_LOG_MAX: i32 = 27;
/// Compressed bytes handed to the decoder per call in a streamed frame.
const STREAM_INPUT: usize = 128 << 10;

/// What the splitter read of a frame's header.
#[derive(Debug, Clone, Copy)]
pub struct FrameInfo {
    /// The frame's first byte in the input, for error messages.
    pub offset: u64,
    pub content_size: Option<u64>,
}

/// Decodes one frame at a time, reusing its context (window, tables).
pub struct ZstdFrameDecoder {
    context: ZstdContext,
    input: Vec<u8>,
}

impl ZstdFrameDecoder {
    pub fn new() -> io::Result<Self> {
        let context = ZstdContext::new(WINDOW_LOG_MAX).map_err(io::Error::other)?;
        Ok(ZstdFrameDecoder {
            context,
            input: Vec::new(),
        })
    }
}

pub(crate) fn corrupt(offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidData,
        format!("corrupt zstd frame at input byte {offset}: {what}"),
    )
}

/// libzstd's error, named as the other decoders name theirs.
fn libzstd_error(frame: &FrameInfo, name: &str) -> io::Error {
    if name == "Restored data doesn't match checksum" {
        let at = frame.offset;
        return io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "corrupt zstd stream: content checksum mismatch in the frame at input byte {at}"
            ),
        );
    }
    corrupt(frame.offset, name)
}

fn too_long(frame: &FrameInfo) -> io::Error {
    match frame.content_size {
        Some(size) => corrupt(
            frame.offset,
            format!("decodes to more than its declared {size} bytes"),
        ),
        None => corrupt(frame.offset, "decodes to more than its blocks allow"),
    }
}

fn ends_early(frame: &FrameInfo) -> io::Error {
    corrupt(frame.offset, "the frame ends before its last block")
}

fn trailing(frame: &FrameInfo) -> io::Error {
    corrupt(frame.offset, "decoder stopped before the frame's end")
}

impl UnitDecoder for ZstdFrameDecoder {
    type Unit = FrameInfo;

    fn decode(
        &mut self,
        frame: &FrameInfo,
        data: &[u8],
        output_limit: u64,
        out: &mut Vec<u8>,
    ) -> io::Result<usize> {
        let limit = usize::try_from(output_limit).map_err(|_| too_long(frame))?;
        if out.len() < limit {
            out.resize(limit, 0);
        }
        // One pass straight into the output: no window buffer per worker
        // and no copy out of it. The splitter cut exactly one frame, so
        // libzstd's "Src size is incorrect" means the frame ends early.
        match self.context.decompress_all(data, &mut out[..limit]) {
            Ok(n) => Ok(n),
            Err(e) if e == "Destination buffer is too small" => Err(too_long(frame)),
            Err(e) if e == "Src size is incorrect" => Err(ends_early(frame)),
            Err(e) => Err(libzstd_error(frame, &e)),
        }
    }

    fn stream(
        &mut self,
        frame: &FrameInfo,
        input: &mut dyn Read,
        output: &mut StreamOutput<'_>,
    ) -> io::Result<()> {
        self.context.reset();
        self.input.resize(STREAM_INPUT, 0);
        let (mut start, mut end, mut total) = (0, 0, 0u64);
        loop {
            if start == end {
                end = read_some(input, &mut self.input)?;
                start = 0;
                if end == 0 {
                    return Err(ends_early(frame));
                }
            }
            let step = self
                .context
                .decompress(&self.input[start..end], output.space())
                .map_err(|e| libzstd_error(frame, &e))?;
            start += step.read;
            total += step.written as u64;
            output.advance(step.written)?;
            if frame.content_size.is_some_and(|size| total > size) {
                return Err(too_long(frame));
            }
            if step.frame_done {
                break;
            }
            if step.read == 0 && step.written == 0 && start < end {
                // Room on both sides and no progress: libzstd never does
                // this on valid input; refuse rather than spin.
                return Err(corrupt(frame.offset, "the decoder made no progress"));
            }
        }
        if start < end || read_some(input, &mut self.input[..1])? > 0 {
            return Err(trailing(frame));
        }
        Ok(())
    }
}

fn read_some(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
