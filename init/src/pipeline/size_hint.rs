//! Image sizes read from compressed headers and trailers before decoding.
//!
//! Knowing the decoded size up front lets a deploy fail before it touches a
//! disk that is too small. Each format records it differently:
//! - zstd: each frame header may declare its Frame_Content_Size (RFC 8878
//!   §3.1.1.1.4); `zstd FILE` declares it, `zstd < pipe` and `pzstd` do not.
//!   A prefix of the stream shows only the first frames, so unless the prefix
//!   is the whole stream the sum is a lower bound.
//! - xz: the index at the end of each stream lists every block's
//!   uncompressed size (xz file format 1.2.1, §4), so the last few KiB of the
//!   file, fetched with a seek or an HTTP Range request, give the exact size.
//! - gzip: the trailer's ISIZE is the last member's size mod 2^32 (RFC 1952
//!   §2.3.1), only good for a consistency check after the fact.

use anyhow::{Context, Result, bail, ensure};

use super::zstd_split::frame_header_len_and_content_size;

/// What headers tell about the decoded size of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeHint {
    /// The decoded image is exactly this long.
    Exact(u64),
    /// The decoded image is at least this long.
    AtLeast(u64),
}

impl SizeHint {
    /// The size an image known to be too large for a disk exceeds it by.
    pub fn lower_bound(self) -> u64 {
        match self {
            SizeHint::Exact(n) | SizeHint::AtLeast(n) => n,
        }
    }

    pub fn exact(self) -> Option<u64> {
        match self {
            SizeHint::Exact(n) => Some(n),
            SizeHint::AtLeast(_) => None,
        }
    }
}

const ZSTD_SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const ZSTD_SKIPPABLE: u32 = 0x184D_2A50;

/// Sums the declared content sizes of the zstd frames that start in
/// `prefix`, the first bytes of a stream `stream_len` bytes long (when
/// known). `Exact` only when `prefix` is the whole stream and every frame
/// declares its size; `None` when the first data frame declares none
/// (`pzstd` output, `zstd` reading a pipe) or `prefix` is not zstd.
pub fn zstd_size_hint(prefix: &[u8], stream_len: Option<u64>) -> Option<SizeHint> {
    let mut pos = 0usize;
    let mut total: Option<u64> = None;
    loop {
        let rest = prefix.get(pos..).unwrap_or_default();
        if rest.is_empty() {
            let whole = stream_len == Some(pos as u64);
            return total.map(|n| {
                if whole {
                    SizeHint::Exact(n)
                } else {
                    SizeHint::AtLeast(n)
                }
            });
        }
        let Some(magic) = rest.get(..4) else {
            return total.map(SizeHint::AtLeast);
        };
        let magic = u32::from_le_bytes(magic.try_into().ok()?);
        if magic & ZSTD_SKIPPABLE_MASK == ZSTD_SKIPPABLE {
            let Some(size) = rest.get(4..8) else {
                return total.map(SizeHint::AtLeast);
            };
            let size = u32::from_le_bytes(size.try_into().ok()?);
            pos = pos
                .saturating_add(8)
                .saturating_add(usize::try_from(size).ok()?);
            continue;
        }
        let Some((header_len, content_size)) = frame_header_len_and_content_size(rest) else {
            return total.map(SizeHint::AtLeast);
        };
        let Some(size) = content_size else {
            return total.map(SizeHint::AtLeast);
        };
        let sum = total.unwrap_or(0).checked_add(size)?;
        total = Some(sum);
        match zstd_frame_len(rest, header_len) {
            Some(len) => pos += len,
            None => return Some(SizeHint::AtLeast(sum)),
        }
    }
}

/// The length of the zstd frame at the start of `frame`, if it ends there.
fn zstd_frame_len(frame: &[u8], header_len: usize) -> Option<usize> {
    let checksum = frame.get(4)? & 0x04 != 0;
    let mut pos = header_len;
    loop {
        let block = frame.get(pos..pos + 3)?;
        let block = u32::from(block[0]) | u32::from(block[1]) << 8 | u32::from(block[2]) << 16;
        let body = match (block >> 1) & 3 {
            1 => 1,
            3 => return None,
            _ => usize::try_from(block >> 3).ok()?,
        };
        pos += 3 + body;
        if block & 1 == 1 {
            let end = pos + if checksum { 4 } else { 0 };
            return (end <= frame.len()).then_some(end);
        }
    }
}

/// How many bytes from the end of an .xz file to fetch for
/// [`xz_size_hint`]: an index takes a few bytes per block, so this covers
/// about 8000 blocks, a 200 GiB image at `xz -T`'s default block size.
pub const XZ_TAIL_LEN: u64 = 64 << 10;

const XZ_HEADER_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
const XZ_FOOTER_MAGIC: [u8; 2] = *b"YZ";

/// Reads the uncompressed size of an .xz file from its end: `tail` holds
/// the last `tail.len()` bytes of a file `file_len` bytes long. Walks back
/// through concatenated streams and stream padding. `Exact` when the tail
/// reaches back to the first stream's index, `AtLeast` when it holds only
/// the last streams' indexes, `None` when it does not hold the last index
/// whole. A footer, index or stream header that does not check out is an
/// error: the file is corrupt or not xz.
pub fn xz_size_hint(tail: &[u8], file_len: u64) -> Result<Option<SizeHint>> {
    let tail_len = tail.len() as u64;
    ensure!(
        tail_len <= file_len,
        "xz tail of {tail_len} bytes is longer than the {file_len}-byte file"
    );
    let tail_start = file_len - tail_len;
    let mut end = tail.len();
    let mut total: Option<u64> = None;
    let partial = |total: Option<u64>| Ok(total.map(SizeHint::AtLeast));
    loop {
        // Stream padding: zero bytes in fours, before, between or after streams.
        while end >= 4 && tail[end - 4..end] == [0; 4] {
            end -= 4;
        }
        let at = tail_start + end as u64;
        if at == 0 {
            return match total {
                Some(n) => Ok(Some(SizeHint::Exact(n))),
                None => bail!("xz file holds no stream"),
            };
        }
        if end < 12 {
            ensure!(tail_start > 0, "xz stream truncated before byte {at}");
            return partial(total);
        }
        let footer = &tail[end - 12..end];
        let footer_at = at - 12;
        let flags = read_footer(footer)
            .with_context(|| format!("reading the xz stream footer at byte {footer_at}"))?;
        let index_len = u64::from(le32(&footer[4..8])) * 4 + 4;
        let Some(index_start) = usize::try_from(index_len)
            .ok()
            .and_then(|len| (end - 12).checked_sub(len))
        else {
            ensure!(
                index_len <= footer_at,
                "xz stream footer at byte {footer_at} claims a {index_len}-byte index"
            );
            return partial(total);
        };
        let index_at = tail_start + index_start as u64;
        let (blocks_len, size) = read_index(&tail[index_start..end - 12])
            .with_context(|| format!("reading the xz index at byte {index_at}"))?;
        let header_at = index_at
            .checked_sub(blocks_len)
            .and_then(|n| n.checked_sub(12));
        let Some(header_at) = header_at else {
            bail!("xz index at byte {index_at} lists more blocks than the file holds");
        };
        let sum = total.unwrap_or(0).checked_add(size);
        total = Some(sum.context("xz indexes add up to more than 2^64 bytes")?);
        let Some(header_start) = header_at.checked_sub(tail_start) else {
            if header_at == 0 {
                return Ok(total.map(SizeHint::Exact));
            }
            return partial(total);
        };
        let header_start = usize::try_from(header_start)?;
        read_header(&tail[header_start..header_start + 12], flags)
            .with_context(|| format!("reading the xz stream header at byte {header_at}"))?;
        end = header_start;
    }
}

/// Checks a stream footer; returns its stream flags.
fn read_footer(footer: &[u8]) -> Result<[u8; 2]> {
    ensure!(footer[10..12] == XZ_FOOTER_MAGIC, "not an xz stream footer");
    ensure!(
        crc32fast::hash(&footer[4..10]) == le32(&footer[..4]),
        "footer CRC32 mismatch"
    );
    let flags = [footer[8], footer[9]];
    ensure!(
        flags[0] == 0 && flags[1] & 0xF0 == 0,
        "unsupported stream flags"
    );
    Ok(flags)
}

fn read_header(header: &[u8], footer_flags: [u8; 2]) -> Result<()> {
    ensure!(header[..6] == XZ_HEADER_MAGIC, "not an xz stream header");
    ensure!(
        crc32fast::hash(&header[6..8]) == le32(&header[8..12]),
        "header CRC32 mismatch"
    );
    ensure!(
        header[6..8] == footer_flags,
        "stream flags differ from the footer's"
    );
    Ok(())
}

/// Parses an index (§4); returns the bytes its blocks take (padded to four
/// bytes each) and their uncompressed size.
fn read_index(index: &[u8]) -> Result<(u64, u64)> {
    let (body, crc) = index.split_at(index.len() - 4);
    ensure!(crc32fast::hash(body) == le32(crc), "index CRC32 mismatch");
    ensure!(body.first() == Some(&0), "no index indicator");
    let mut rest = &body[1..];
    let records = read_vli(&mut rest)?;
    let mut blocks_len = 0u64;
    let mut size = 0u64;
    for _ in 0..records {
        let unpadded = read_vli(&mut rest)?;
        let uncompressed = read_vli(&mut rest)?;
        // A block header alone is 5 bytes and a check at most 64 (§3).
        ensure!(unpadded >= 5, "record with a {unpadded}-byte block");
        let padded = unpadded.checked_next_multiple_of(4);
        blocks_len = padded
            .and_then(|p| blocks_len.checked_add(p))
            .context("index overflows")?;
        size = size.checked_add(uncompressed).context("index overflows")?;
    }
    let padding = (4 - (index.len() - 4 - rest.len()) % 4) % 4;
    ensure!(
        rest.len() == padding && rest.iter().all(|&b| b == 0),
        "index has {} bytes after its records",
        rest.len()
    );
    Ok((blocks_len, size))
}

/// A variable-length integer (§1.2): 7 bits a byte, at most 9 bytes.
fn read_vli(data: &mut &[u8]) -> Result<u64> {
    let mut value = 0u64;
    for i in 0..9 {
        let (&byte, rest) = data.split_first().context("index ends inside a number")?;
        *data = rest;
        value |= u64::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            ensure!(byte != 0 || i == 0, "number not in its shortest form");
            return Ok(value);
        }
    }
    bail!("number longer than 9 bytes")
}

fn le32(bytes: &[u8]) -> u32 {
    let mut le = [0u8; 4];
    le.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(le)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn cli(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{program} {args:?} failed");
        out.stdout
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 7) ^ (i >> 9)).to_le_bytes()[0])
            .collect()
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

    fn xz(args: &[&str], input: &[u8]) -> Vec<u8> {
        cli("xz", &[&["-q", "-c"], args].concat(), input)
    }

    fn tail(file: &[u8], len: usize) -> &[u8] {
        &file[file.len().saturating_sub(len)..]
    }

    fn len(file: &[u8]) -> u64 {
        file.len() as u64
    }

    #[test]
    fn zstd_single_frame_with_content_size() {
        let image = data(3_000_001);
        let file = zstd(&["--content-size"], &image);
        assert_eq!(
            zstd_size_hint(&file, Some(len(&file))),
            Some(SizeHint::Exact(3_000_001))
        );
        assert_eq!(
            zstd_size_hint(&file, None),
            Some(SizeHint::AtLeast(3_000_001))
        );
        assert_eq!(
            zstd_size_hint(&file[..100], Some(len(&file))),
            Some(SizeHint::AtLeast(3_000_001))
        );
    }

    #[test]
    fn zstd_frames_add_up() {
        let a = zstd(&["--content-size"], &data(1000));
        let b = zstd(&["--content-size", "--no-check"], &data(1));
        let empty = zstd(&["--content-size"], b"");
        let skip = [
            &0x184D_2A5Au32.to_le_bytes()[..],
            &3u32.to_le_bytes(),
            b"abc",
        ]
        .concat();
        let file = [&skip[..], &a, &empty, &skip, &b].concat();
        assert_eq!(
            zstd_size_hint(&file, Some(len(&file))),
            Some(SizeHint::Exact(1001))
        );
        let cut = skip.len() + a.len() + 2;
        assert_eq!(
            zstd_size_hint(&file[..cut], Some(len(&file))),
            Some(SizeHint::AtLeast(1000))
        );
        let unsized_tail = [&a[..], &zstd(&["--no-content-size"], &data(5))].concat();
        assert_eq!(
            zstd_size_hint(&unsized_tail, Some(len(&unsized_tail))),
            Some(SizeHint::AtLeast(1000))
        );
    }

    #[test]
    fn zstd_without_declared_size_gives_nothing() {
        let image = data(100_000);
        let piped = zstd(&["--no-content-size"], &image);
        assert_eq!(zstd_size_hint(&piped, Some(len(&piped))), None);
        // pzstd leaves the size out of its frames.
        let parallel = cli("pzstd", &["-q", "-c", "-p", "2"], &image);
        assert_eq!(zstd_size_hint(&parallel, Some(len(&parallel))), None);
        assert_eq!(zstd_size_hint(b"not zstd at all", None), None);
        assert_eq!(zstd_size_hint(b"", Some(0)), None);
    }

    #[test]
    fn zstd_prefixes_never_panic() {
        let file = [
            zstd(&["--content-size"], &data(300_000)),
            zstd(&[], &data(7)),
        ]
        .concat();
        for cut in 0..file.len() {
            if let Some(hint) = zstd_size_hint(&file[..cut], Some(len(&file))) {
                assert!(hint.lower_bound() <= 300_007);
                assert_eq!(hint.exact(), None);
            }
        }
        let mut garbled = file.clone();
        for i in 0..200 {
            garbled[i] ^= 0xA5;
            let _ = zstd_size_hint(&garbled, Some(len(&garbled)));
        }
    }

    #[test]
    fn xz_single_and_multi_block() {
        let image = data(5_000_003);
        for args in [
            &["--check=crc64"][..],
            &["-T2", "--block-size=65536"],
            &["--check=none", "-1"],
            &["--check=sha256", "-T2", "--block-size=1MiB"],
        ] {
            let file = xz(args, &image);
            // One stream: its index alone gives the exact size.
            let hint = xz_size_hint(tail(&file, 64 << 10), len(&file)).unwrap();
            assert_eq!(hint, Some(SizeHint::Exact(5_000_003)), "{args:?}");
            assert_eq!(
                xz_size_hint(&file, len(&file)).unwrap(),
                Some(SizeHint::Exact(5_000_003))
            );
        }
    }

    #[test]
    fn xz_concatenated_streams_with_padding() {
        let a = xz(&[], &data(70_000));
        let b = xz(&["-T2", "--block-size=4096"], &data(20_000));
        let empty = xz(&[], b"");
        let file = [&a[..], &[0; 8], &empty, &b, &[0; 4]].concat();
        // The real tool agrees that this is one valid file.
        assert_eq!(cli("xz", &["-d", "-c"], &file).len(), 90_000);
        assert_eq!(
            xz_size_hint(&file, len(&file)).unwrap(),
            Some(SizeHint::Exact(90_000))
        );
        let last_two = file.len() - a.len() - 4;
        assert_eq!(
            xz_size_hint(tail(&file, last_two), len(&file)).unwrap(),
            Some(SizeHint::AtLeast(20_000))
        );
        assert_eq!(xz_size_hint(tail(&file, 16), len(&file)).unwrap(), None);
    }

    #[test]
    fn xz_tail_too_short_for_the_index_is_none() {
        let file = xz(&["-T2", "--block-size=4096"], &data(400_000));
        let index_and_footer = 12 + 4 * (u64::from(le32(&file[file.len() - 8..])) + 1);
        let needed = usize::try_from(index_and_footer).unwrap();
        assert!(needed > 100, "{needed}");
        for cut in 0..needed {
            assert_eq!(
                xz_size_hint(tail(&file, cut), len(&file)).unwrap(),
                None,
                "{cut}"
            );
        }
        assert_eq!(
            xz_size_hint(tail(&file, needed), len(&file)).unwrap(),
            Some(SizeHint::Exact(400_000))
        );
    }

    #[test]
    fn xz_corruption_is_an_error_not_a_size() {
        let file = xz(&["-T2", "--block-size=4096"], &data(100_000));
        let index_len = 12 + 4 * (usize::try_from(le32(&file[file.len() - 8..])).unwrap() + 1);
        for i in file.len() - index_len..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x01;
            let result = xz_size_hint(&bad, len(&bad));
            assert!(result.is_err(), "flip at {i}: {result:?}");
        }
        let err = xz_size_hint(b"definitely not an xz file", 25).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "reading the xz stream footer at byte 13: not an xz stream footer"
        );
        let mut bad_header = file.clone();
        bad_header[0] = b'X';
        let err = xz_size_hint(&bad_header, len(&file)).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "reading the xz stream header at byte 0: not an xz stream header"
        );
        assert!(xz_size_hint(&[0; 16], 16).is_err());
        assert!(xz_size_hint(&file, 3).is_err());
    }

    #[test]
    fn xz_garbage_tails_never_panic() {
        let file = xz(&["-T2", "--block-size=4096"], &data(100_000));
        let mut state = 1u32;
        for _ in 0..2000 {
            let mut bad = file.clone();
            for _ in 0..3 {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let at = usize::try_from(state >> 8).unwrap() % 64;
                let i = bad.len() - 1 - at;
                bad[i] = state.to_le_bytes()[0];
            }
            for cut in [12, 40, 64, bad.len()] {
                let _ = xz_size_hint(tail(&bad, cut), len(&bad));
            }
        }
    }
}
