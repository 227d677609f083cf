//! Just enough of the `.xz` container to unpack a Linux kernel payload.
//!
//! lzma-rs decodes LZMA2 but its xz reader knows no BCJ filter and rejects bytes after
//! the stream; the kernel's payload uses the x86 BCJ filter (`scripts/xz_wrap.sh`) and
//! is followed by the 4-byte uncompressed size. So the container is walked here, LZMA2
//! is handed to lzma-rs and the BCJ filter is undone here. Specification:
//! <https://tukaani.org/xz/xz-file-format.txt>.

use anyhow::{Context, Result, bail, ensure};

pub(crate) const XZ_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];

const FILTER_X86_BCJ: u64 = 0x04;
const FILTER_LZMA2: u64 = 0x21;
const CHECK_NONE: u8 = 0x00;
const CHECK_CRC32: u8 = 0x01;

/// Decodes the first xz stream in `input`, ignoring whatever follows it.
pub(crate) fn decode_first_stream(input: &[u8]) -> Result<Vec<u8>> {
    let mut reader = SliceReader::new(input);
    let check_id = read_stream_header(&mut reader)?;
    let mut output = Vec::new();
    loop {
        let block_start = reader.position;
        let header_size_byte = reader.byte().context("reading block header")?;
        if header_size_byte == 0 {
            // The index follows the last block; its records only repeat sizes the
            // blocks already proved, and the caller verifies the decoded ELF.
            break;
        }
        let block = read_block_header(&mut reader, block_start, header_size_byte)
            .with_context(|| format!("reading xz block header at byte {block_start}"))?;
        let data_start = reader.position;
        let mut remaining = reader.rest();
        let mut decoded = Vec::new();
        lzma_rs::lzma2_decompress(&mut remaining, &mut decoded)
            .map_err(|error| anyhow::anyhow!("{error:?}"))
            .with_context(|| format!("decoding lzma2 data at byte {data_start}"))?;
        let compressed_size = reader.rest().len() - remaining.len();
        reader.skip(compressed_size)?;
        if let Some(declared) = block.compressed_size {
            ensure!(
                u64::try_from(compressed_size)? == declared,
                "xz block at byte {block_start} declares {declared} compressed bytes but holds {compressed_size}"
            );
        }
        if let Some(declared) = block.uncompressed_size {
            ensure!(
                u64::try_from(decoded.len())? == declared,
                "xz block at byte {block_start} declares {declared} bytes but decodes to {}",
                decoded.len()
            );
        }
        // Block padding brings the block to a multiple of four bytes.
        let unpadded = reader.position - block_start;
        reader.skip((4 - unpadded % 4) % 4)?;
        let check = reader.take(check_size(check_id))?;
        if let Some(start_offset) = block.x86_bcj_start_offset {
            x86_bcj(&mut decoded, start_offset, false);
        }
        if check_id == CHECK_CRC32 {
            let expected = u32::from_le_bytes(check.try_into()?);
            let actual = crc32(&decoded);
            ensure!(
                expected == actual,
                "xz block at byte {block_start}: crc32 is {actual:08x}, expected {expected:08x}"
            );
        }
        output.extend_from_slice(&decoded);
    }
    Ok(output)
}

fn read_stream_header(reader: &mut SliceReader) -> Result<u8> {
    let magic = reader.take(6).context("reading xz stream header")?;
    ensure!(magic == XZ_MAGIC, "no xz magic at the start of the stream");
    let flags = reader.take(2).context("reading xz stream flags")?;
    let stored_crc = u32::from_le_bytes(reader.take(4)?.try_into()?);
    ensure!(
        crc32(flags) == stored_crc,
        "xz stream header crc32 mismatch"
    );
    ensure!(
        flags[0] == 0 && flags[1] & 0xF0 == 0,
        "unsupported xz stream flags {flags:02x?}"
    );
    Ok(flags[1])
}

struct BlockHeader {
    compressed_size: Option<u64>,
    uncompressed_size: Option<u64>,
    x86_bcj_start_offset: Option<u32>,
}

fn read_block_header(
    reader: &mut SliceReader,
    block_start: usize,
    header_size_byte: u8,
) -> Result<BlockHeader> {
    let header_size = (usize::from(header_size_byte) + 1) * 4;
    let header = reader
        .input
        .get(block_start..block_start + header_size)
        .context("truncated")?;
    let (covered, stored_crc) = header.split_at(header_size - 4);
    ensure!(
        crc32(covered) == u32::from_le_bytes(stored_crc.try_into()?),
        "block header crc32 mismatch"
    );
    let mut fields = SliceReader::new(&covered[1..]);
    let flags = fields.byte()?;
    ensure!(flags & 0x3C == 0, "reserved block flags set: {flags:02x}");
    let filter_count = usize::from(flags & 0x03) + 1;
    let compressed_size = if flags & 0x40 != 0 {
        Some(fields.multibyte()?)
    } else {
        None
    };
    let uncompressed_size = if flags & 0x80 != 0 {
        Some(fields.multibyte()?)
    } else {
        None
    };
    let mut filter_ids = Vec::new();
    let mut x86_bcj_start_offset = None;
    for _ in 0..filter_count {
        let id = fields.multibyte()?;
        let properties_size = usize::try_from(fields.multibyte()?)?;
        let properties = fields.take(properties_size)?;
        if id == FILTER_X86_BCJ {
            x86_bcj_start_offset = Some(match properties.len() {
                0 => 0,
                4 => u32::from_le_bytes(properties.try_into()?),
                _ => bail!("x86 bcj filter with {} property bytes", properties.len()),
            });
        }
        filter_ids.push(id);
    }
    let supported = filter_ids == [FILTER_LZMA2] || filter_ids == [FILTER_X86_BCJ, FILTER_LZMA2];
    ensure!(
        supported,
        "unsupported xz filter chain {filter_ids:#x?} (only [x86 bcj,] lzma2)"
    );
    reader.skip(header_size - 1)?;
    Ok(BlockHeader {
        compressed_size,
        uncompressed_size,
        x86_bcj_start_offset,
    })
}

fn check_size(check_id: u8) -> usize {
    match check_id {
        CHECK_NONE => 0,
        0x01..=0x03 => 4,
        0x04..=0x06 => 8,
        0x07..=0x09 => 16,
        0x0A..=0x0C => 32,
        _ => 64,
    }
}

/// Undoes (or, with `encode`, applies) the x86 branch-call-jump filter over a whole
/// buffer: relative CALL/JMP targets (E8/E9) were turned into absolute ones so they
/// compress better. Port of liblzma's `simple/x86.c`, which encoder and decoder share.
pub(crate) fn x86_bcj(buffer: &mut [u8], start_offset: u32, encode: bool) {
    const MASK_TO_ALLOWED: [bool; 8] = [true, true, true, false, true, false, false, false];
    const MASK_TO_BIT_NUMBER: [u32; 8] = [0, 1, 2, 2, 3, 3, 3, 3];
    fn is_sign_byte(byte: u32) -> bool {
        byte == 0x00 || byte == 0xFF
    }
    if buffer.len() < 5 {
        return;
    }
    let limit = buffer.len() - 5;
    let mut prev_mask: u32 = 0;
    let mut prev_position = start_offset.wrapping_sub(5);
    let mut index = 0;
    while index <= limit {
        if buffer[index] & 0xFE != 0xE8 {
            index += 1;
            continue;
        }
        // Positions are 32-bit and wrap, exactly as in the reference.
        let position = start_offset.wrapping_add(u32::try_from(index).unwrap_or(u32::MAX));
        let distance = position.wrapping_sub(prev_position);
        prev_position = position;
        if distance > 5 {
            prev_mask = 0;
        } else {
            for _ in 0..distance {
                prev_mask = (prev_mask & 0x77) << 1;
            }
        }
        let last = u32::from(buffer[index + 4]);
        let state = usize::try_from(prev_mask >> 1).unwrap_or(usize::MAX);
        if is_sign_byte(last) && state < 0x10 && MASK_TO_ALLOWED[state & 7] {
            let operand = [
                buffer[index + 1],
                buffer[index + 2],
                buffer[index + 3],
                buffer[index + 4],
            ];
            let mut source = u32::from_le_bytes(operand);
            let next = position.wrapping_add(5);
            let mut destination;
            loop {
                destination = if encode {
                    source.wrapping_add(next)
                } else {
                    source.wrapping_sub(next)
                };
                if prev_mask == 0 {
                    break;
                }
                let shift = MASK_TO_BIT_NUMBER[state & 7] * 8;
                if !is_sign_byte((destination >> (24 - shift)) & 0xFF) {
                    break;
                }
                source = destination ^ ((1u32 << (32 - shift)) - 1);
            }
            // The top byte becomes the sign extension of bit 24.
            let top = if destination & 0x0100_0000 != 0 {
                0xFF
            } else {
                0x00
            };
            let low = destination.to_le_bytes();
            buffer[index + 1..index + 5].copy_from_slice(&[low[0], low[1], low[2], top]);
            index += 5;
            prev_mask = 0;
        } else {
            index += 1;
            prev_mask |= 1;
            if is_sign_byte(last) {
                prev_mask |= 0x10;
            }
        }
    }
}

/// CRC-32 (IEEE, reflected), as xz uses for headers and block checks.
pub(crate) fn crc32(data: &[u8]) -> u32 {
    // Byte-at-a-time with a table: tests run this over ~60 MiB of kernel unoptimised.
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut index: u32 = 0;
        while index < 256 {
            let mut crc = index;
            let mut bit = 0;
            while bit < 8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
                bit += 1;
            }
            table[index as usize] = crc;
            index += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &byte in data {
        crc = TABLE[usize::from(crc.to_le_bytes()[0] ^ byte)] ^ (crc >> 8);
    }
    !crc
}

struct SliceReader<'a> {
    input: &'a [u8],
    position: usize,
}

impl<'a> SliceReader<'a> {
    fn new(input: &'a [u8]) -> Self {
        Self { input, position: 0 }
    }

    fn rest(&self) -> &'a [u8] {
        &self.input[self.position..]
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8]> {
        let bytes = self
            .input
            .get(self.position..self.position.saturating_add(count))
            .with_context(|| format!("xz data truncated at byte {}", self.position))?;
        self.position += count;
        Ok(bytes)
    }

    fn skip(&mut self, count: usize) -> Result<()> {
        self.take(count).map(|_| ())
    }

    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    /// xz's variable-length integer: 7 bits per byte, little-endian, at most 9 bytes.
    fn multibyte(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for index in 0..9 {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7F) << (7 * index);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("xz integer longer than 9 bytes at byte {}", self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn x86_bcj_round_trips_and_changes_calls() {
        let mut original = Vec::new();
        for index in 0u32..4000 {
            // A CALL with a small positive or negative displacement every few bytes,
            // mixed with bytes that look like opcodes but are not followed by one.
            original.extend_from_slice(&[0xE8]);
            let displacement: i32 = if index % 2 == 0 { 0x1234 } else { -0x4321 };
            original.extend_from_slice(&displacement.to_le_bytes());
            original.extend_from_slice(&[0x90, 0xE9, 0x12, u8::try_from(index % 251).unwrap()]);
        }
        let mut filtered = original.clone();
        x86_bcj(&mut filtered, 0, true);
        assert_ne!(filtered, original, "the encoder must rewrite call targets");
        x86_bcj(&mut filtered, 0, false);
        assert_eq!(filtered, original);
    }

    #[test]
    fn x86_bcj_leaves_short_buffers_alone() {
        let mut buffer = vec![0xE8, 0, 0, 0];
        x86_bcj(&mut buffer, 0, false);
        assert_eq!(buffer, [0xE8, 0, 0, 0]);
    }

    #[test]
    fn decodes_lzma_rs_output_and_ignores_trailing_bytes() {
        let payload = b"hello kernel ".repeat(1000);
        let mut stream = Vec::new();
        lzma_rs::xz_compress(&mut &payload[..], &mut stream).unwrap();
        stream.extend_from_slice(&[0xAA; 13]);
        assert_eq!(decode_first_stream(&stream).unwrap(), payload);
    }

    #[test]
    fn rejects_a_corrupt_block_header() {
        let mut stream = Vec::new();
        lzma_rs::xz_compress(&mut &b"data"[..], &mut stream).unwrap();
        stream[13] ^= 0xFF;
        let error = decode_first_stream(&stream).unwrap_err();
        assert!(format!("{error:#}").contains("crc32"), "{error:#}");
    }
}
