//! Decodes a zstd stream on every core, in order: the frames of a stream
//! are independent (RFC 8878 §3.1), so the splitter here cuts whole frames
//! by walking frame and block headers without decoding, and the ordered
//! engine ([`super::ordered`]) decodes them on its workers with
//! [`super::zstd_decoder`] and hands the output back in input order.
//!
//! A frame is decoded whole when its output fits the engine's rule
//! ([`OrderedConfig::fits_whole`], up to 64 MiB by default): its declared
//! Frame_Content_Size, or when undeclared the bound its block headers imply
//! (128 KiB per compressed block). Any other frame — a single-frame file
//! made by `zstd -T0`, say — streams: its compressed bytes go to one worker
//! in 1 MiB chunks as they are read, and its output comes back in 1 MiB
//! chunks, so it is never held whole.

use std::io::{self, BufReader, ErrorKind, Read};

use super::ordered::{
    Dispatcher, OrderedConfig, OrderedDecoder, STREAM_CHUNK, Split, Stop, StreamSender,
};
use super::read_full;
use super::zstd_decoder::{FrameInfo, ZstdFrameDecoder, corrupt};

const ZSTD_MAGIC: u32 = 0xFD2F_B528;
const SKIPPABLE_MAGIC_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// RFC 8878 §3.1.1.2.4: no block is larger than this, compressed or not.
const MAX_BLOCK_LEN: u32 = 128 << 10;

/// A `Read` of the decoded bytes of the zstd stream `input`.
pub fn decoder(input: impl Read + Send + 'static, config: OrderedConfig) -> OrderedDecoder {
    let splitter = ZstdSplit {
        // Block headers are 3-byte reads.
        input: BufReader::with_capacity(STREAM_CHUNK, input),
        pos: 0,
    };
    OrderedDecoder::start("zstd", splitter, ZstdFrameDecoder::new, config)
}

struct ZstdSplit<R> {
    input: BufReader<R>,
    pos: u64,
}

/// Where the bytes of the frame being cut go.
enum Sink {
    Whole,
    Stream(StreamSender),
}

impl<R: Read + Send + 'static> Split<FrameInfo> for ZstdSplit<R> {
    fn run(mut self, dispatch: &mut Dispatcher<FrameInfo>) -> Result<(), Stop> {
        loop {
            if dispatch.is_cancelled() {
                return Err(Stop::Cancelled);
            }
            let start = self.pos;
            let mut magic = [0u8; 4];
            let got = self.fill(&mut magic)?;
            if got == 0 {
                if start == 0 {
                    return Err(truncated(0, 0).into());
                }
                return Ok(());
            }
            if got < magic.len() {
                let partial = &magic[..got];
                let is_prefix = ZSTD_MAGIC.to_le_bytes().starts_with(partial)
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
                let mut sink = Sink::Whole;
                let result = self.cut_frame(start, dispatch, &mut sink);
                if let (Err(Stop::Failed(e)), Sink::Stream(sender)) = (&result, &sink) {
                    // The worker decoding this frame reports it, in order.
                    sender.fail(e);
                }
                result?;
            } else {
                return Err(not_a_frame(start).into());
            }
        }
    }
}

impl<R: Read> ZstdSplit<R> {
    /// Reads what there is, up to `buf`'s length. The source's errors
    /// pass through unchanged: they name their own source and offset.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = read_full(&mut self.input, buf)?;
        self.pos += n as u64;
        Ok(n)
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

    fn cut_frame(
        &mut self,
        start: u64,
        dispatch: &mut Dispatcher<FrameInfo>,
        sink: &mut Sink,
    ) -> Result<(), Stop> {
        let config = dispatch.config();
        let mut data = dispatch.input_buffer(64 << 10);
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
        };
        // The budget is charged for the buffer's capacity, what it holds
        // in memory, before more of the frame is read into it.
        let mut charged = data.capacity() as u64;
        dispatch.reserve(charged)?;
        if frame
            .content_size
            .is_some_and(|size| !config.fits_whole(0, size))
        {
            *sink = Sink::Stream(dispatch.stream(frame)?);
        }
        let mut output_bound: u64 = 0;
        loop {
            let block_at = self.pos;
            let mut block = [0u8; 3];
            self.fill_frame(&mut block, start)?;
            let block = u32::from(block[0]) | u32::from(block[1]) << 8 | u32::from(block[2]) << 16;
            let last = block & 1 == 1;
            let size = block >> 3;
            if size > MAX_BLOCK_LEN {
                let msg = format!("block at input byte {block_at} claims {size} bytes");
                return Err(corrupt(start, msg).into());
            }
            let (body, output) = match (block >> 1) & 3 {
                0 => (size, size),
                1 => (1, size),
                2 => (size, MAX_BLOCK_LEN),
                _ => {
                    let msg = format!("reserved block type at input byte {block_at}");
                    return Err(corrupt(start, msg).into());
                }
            };
            output_bound += u64::from(output);
            let body = usize::try_from(body).unwrap_or(usize::MAX);
            data.reserve(3 + body);
            if let Sink::Whole = sink {
                charge_growth(dispatch, &data, &mut charged)?;
            }
            data.extend_from_slice(&block.to_le_bytes()[..3]);
            let old = data.len();
            data.resize(old + body, 0);
            self.fill_frame(&mut data[old..], start)?;
            if last {
                break;
            }
            match &*sink {
                Sink::Stream(sender) if data.len() >= STREAM_CHUNK => {
                    // Room for the block that crosses the threshold.
                    let next = dispatch.input_buffer(STREAM_CHUNK + STREAM_CHUNK / 4);
                    sender.send(std::mem::replace(&mut data, next))?;
                }
                Sink::Whole
                    if !config.fits_whole(
                        data.len() as u64,
                        frame.content_size.unwrap_or(output_bound),
                    ) =>
                {
                    *sink = Sink::Stream(dispatch.stream(frame)?);
                }
                _ => {}
            }
        }
        if header.checksum {
            let mut checksum = [0u8; 4];
            self.fill_frame(&mut checksum, start)?;
            data.reserve(4);
            if let Sink::Whole = sink {
                charge_growth(dispatch, &data, &mut charged)?;
            }
            data.extend_from_slice(&checksum);
        }
        let output_limit = frame.content_size.unwrap_or(output_bound);
        match std::mem::replace(sink, Sink::Whole) {
            Sink::Whole if config.fits_whole(data.len() as u64, output_limit) => {
                dispatch.whole(frame, data, output_limit)
            }
            Sink::Whole => dispatch.stream(frame)?.send(data),
            // Dropping the sender ends the streamed frame for its worker.
            Sink::Stream(sender) => sender.send(data),
        }
    }
}

/// Charges what `data`'s capacity grew by since the last charge.
fn charge_growth(
    dispatch: &mut Dispatcher<FrameInfo>,
    data: &Vec<u8>,
    charged: &mut u64,
) -> Result<(), Stop> {
    let capacity = data.capacity() as u64;
    if capacity > *charged {
        dispatch.reserve(capacity - *charged)?;
        *charged = capacity;
    }
    Ok(())
}

/// The decode family's wording (`decode.rs`): where the input ended.
fn truncated(at: u64, _frame_start: u64) -> io::Error {
    io::Error::new(
        ErrorKind::UnexpectedEof,
        format!("zstd stream truncated at input byte {at}"),
    )
}

fn not_a_frame(at: u64) -> io::Error {
    let msg = if at == 0 {
        "corrupt zstd stream at input byte 0: no zstd frame magic".to_string()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::tests::cli;
    use crate::pipeline::ordered::{DEFAULT_MEMORY, MIN_MEMORY};
    use std::io::Cursor;

    /// Compressible but not trivially: runs of a counter and of noise.
    fn data(len: usize) -> Vec<u8> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if (i / 4096) % 3 == 0 {
                    state.to_le_bytes()[0]
                } else {
                    (i / 64).to_le_bytes()[0]
                }
            })
            .collect()
    }

    fn decode(input: Vec<u8>, config: OrderedConfig) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(Cursor::new(input), config).read_to_end(&mut out)?;
        Ok(out)
    }

    fn configs() -> [OrderedConfig; 3] {
        [
            OrderedConfig::new(1, DEFAULT_MEMORY),
            OrderedConfig::new(4, DEFAULT_MEMORY),
            OrderedConfig::new(2, MIN_MEMORY),
        ]
    }

    #[test]
    fn frames_of_every_size_decode_in_order() {
        let image = data(40 << 20);
        // 1 MiB and 8 MiB frames with content sizes (split + zstd), one
        // 40 MiB frame (whole at the default budget, streamed at the
        // minimum), and one frame without a content size (from a pipe).
        let mut split = Vec::new();
        for (i, chunk) in image.chunks(1 << 20).enumerate() {
            let level = if i % 2 == 0 { "-1" } else { "-3" };
            let size = format!("--stream-size={}", chunk.len());
            split.extend(cli("zstd", &["-q", "-c", level, &size], chunk));
        }
        let eight: Vec<u8> = image
            .chunks(8 << 20)
            .flat_map(|c| {
                cli(
                    "zstd",
                    &["-q", "-c", &format!("--stream-size={}", c.len())],
                    c,
                )
            })
            .collect();
        let one = cli(
            "zstd",
            &["-q", "-c", "-T2", &format!("--stream-size={}", image.len())],
            &image,
        );
        let unsized_frame = cli("zstd", &["-q", "-c", "--no-content-size"], &image);
        for input in [split, eight, one, unsized_frame] {
            for config in configs() {
                assert!(
                    decode(input.clone(), config).unwrap() == image,
                    "{config:?}"
                );
            }
        }
    }

    #[test]
    fn skippable_and_empty_frames_and_errors() {
        let mut skippable = 0x184D_2A5Du32.to_le_bytes().to_vec();
        skippable.extend_from_slice(&3u32.to_le_bytes());
        skippable.extend_from_slice(b"abc");
        let a = cli("zstd", &["-q", "-c"], b"hello ");
        let empty = cli("zstd", &["-q", "-c"], b"");
        let b = cli("zstd", &["-q", "-c", "--no-check"], b"world");
        let input = [&a[..], &skippable, &empty, &b].concat();
        for config in configs() {
            assert_eq!(decode(input.clone(), config).unwrap(), b"hello world");
        }
        let err = decode([&input[..], b"junk"].concat(), configs()[1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "trailing garbage after the zstd stream at input byte {}",
                input.len()
            )
        );
        let err = decode(Vec::new(), configs()[1]).unwrap_err();
        assert_eq!(err.to_string(), "zstd stream truncated at input byte 0");
        let err = decode(input[..input.len() - 2].to_vec(), configs()[1]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn a_flipped_byte_never_yields_wrong_output() {
        let first_image = data(5000);
        let second_image = data(7000);
        let first = cli("zstd", &["-q", "-c"], &first_image);
        let second = cli("zstd", &["-q", "-c"], &second_image);
        let expected = [first_image, second_image].concat();
        let offset = first.len();
        let mut failures = 0;
        for i in 6..second.len() {
            let mut bad = second.clone();
            bad[i] ^= 0x10;
            let input = [&first[..], &bad].concat();
            for config in [configs()[0], configs()[2]] {
                match decode(input.clone(), config) {
                    Ok(out) => assert!(out == expected, "flip at {i} gave wrong output"),
                    Err(e) => {
                        failures += 1;
                        let msg = e.to_string();
                        assert!(
                            msg.starts_with(&format!(
                                "corrupt zstd frame at input byte {offset}: "
                            )) || msg.contains("at input byte"),
                            "flip at {i}: {msg}"
                        );
                    }
                }
            }
        }
        assert!(failures > (second.len() - 6) * 2 * 9 / 10, "{failures}");
    }
}
