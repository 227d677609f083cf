//! One 512-byte tar header and one pax extended header, parsed into types.
//!
//! Pure functions over bytes, so every malformed field has a unit test
//! with a hand-made header. The layouts are POSIX ustar (IEEE 1003.1-2017,
//! pax "ustar Interchange Format"), GNU's (`tar.h` of GNU tar: the
//! `oldgnu_header` sparse fields, base-256 numbers) and pax records
//! (pax "Extended Header"); `archive.rs` decides how headers combine.

use crate::pipeline::format::{TAR_BLOCK, parse_octal, tar_checksum_ok};

/// One sparse region: `len` bytes of data at `offset` of the real file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub offset: u64,
    pub len: u64,
}

/// A header block as written, before extended headers are folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `name`, with the ustar `prefix` joined in front when there is one.
    pub name: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data that follow the header (for old GNU sparse files, the
    /// stored regions only).
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
    pub linkname: Vec<u8>,
    /// `devmajor`, `devminor`: read only for devices (`3`, `4`).
    pub device: Option<(u32, u32)>,
    /// Old GNU sparse file (`S`): the regions in the header, whether
    /// extension blocks follow, and the real size.
    pub old_sparse: Option<OldSparse>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldSparse {
    pub regions: Vec<Region>,
    pub extended: bool,
    pub real_size: u64,
}

/// Parses a header block. `Err` says which field is malformed.
pub fn parse_header(block: &[u8; TAR_BLOCK]) -> Result<Header, String> {
    if !tar_checksum_ok(block) {
        return Err("bad header checksum".to_owned());
    }
    let typeflag = block[156];
    let posix = &block[257..263] == b"ustar\0";
    let mut name = c_bytes(&block[..100]).to_vec();
    if posix {
        // GNU's own format keeps other fields (atime, sparse map) where
        // POSIX has the prefix, so only the POSIX magic means a prefix.
        let prefix = c_bytes(&block[345..500]);
        if !prefix.is_empty() {
            let mut joined = prefix.to_vec();
            joined.push(b'/');
            joined.extend_from_slice(&name);
            name = joined;
        }
    }
    let mode = number(&block[100..108], "mode")?;
    let mode = u32::try_from(mode & 0o7777).map_err(|_| "malformed mode field".to_owned())?;
    let uid = unsigned(&block[108..116], "uid")?;
    let gid = unsigned(&block[116..124], "gid")?;
    let size = unsigned(&block[124..136], "size")?;
    let mtime = number(&block[136..148], "mtime")?;
    let device = match typeflag {
        b'3' | b'4' => Some((
            small(&block[329..337], "devmajor")?,
            small(&block[337..345], "devminor")?,
        )),
        _ => None,
    };
    let old_sparse = if typeflag == b'S' {
        let regions = sparse_entries(&block[386..482])?;
        Some(OldSparse {
            regions,
            extended: block[482] != 0,
            real_size: unsigned(&block[483..495], "realsize")?,
        })
    } else {
        None
    };
    Ok(Header {
        name,
        mode,
        uid,
        gid,
        size,
        mtime,
        typeflag,
        linkname: c_bytes(&block[157..257]).to_vec(),
        device,
        old_sparse,
    })
}

/// The regions of an old GNU sparse extension block (21 entries, then
/// `isextended` at byte 504): the regions and whether another block follows.
pub fn parse_sparse_extension(block: &[u8; TAR_BLOCK]) -> Result<(Vec<Region>, bool), String> {
    Ok((sparse_entries(&block[..504])?, block[504] != 0))
}

/// Entries of 12-byte offset and 12-byte length; the first empty one ends
/// the list.
fn sparse_entries(bytes: &[u8]) -> Result<Vec<Region>, String> {
    let mut regions = Vec::new();
    for entry in bytes.chunks_exact(24) {
        if entry[0] == 0 {
            break;
        }
        regions.push(Region {
            offset: unsigned(&entry[..12], "sparse offset")?,
            len: unsigned(&entry[12..], "sparse length")?,
        });
    }
    Ok(regions)
}

/// The bytes of a NUL-terminated (or full-width) field.
pub fn c_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// A numeric field: octal, or GNU's base-256 (first byte 0x80 for a
/// positive number, 0xff for a negative one in two's complement).
pub fn number(field: &[u8], what: &str) -> Result<i64, String> {
    let malformed = || format!("malformed {what} field");
    match field.first() {
        Some(0x80) => {
            let value = field[1..].iter().try_fold(0u64, |acc, &b| {
                acc.checked_mul(256)?.checked_add(u64::from(b))
            });
            value
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(malformed)
        }
        Some(0xff) => field[1..]
            .iter()
            .try_fold(-1i64, |acc, &b| {
                acc.checked_mul(256)?.checked_add(i64::from(b))
            })
            .ok_or_else(malformed),
        Some(b) if b & 0x80 != 0 => Err(malformed()),
        _ => parse_octal(field)
            .and_then(|v| i64::try_from(v).ok())
            .ok_or_else(malformed),
    }
}

fn unsigned(field: &[u8], what: &str) -> Result<u64, String> {
    u64::try_from(number(field, what)?).map_err(|_| format!("negative {what} field"))
}

fn small(field: &[u8], what: &str) -> Result<u32, String> {
    u32::try_from(number(field, what)?).map_err(|_| format!("{what} field out of range"))
}

/// A time from a pax record (`1700000000.123456789`, possibly negative):
/// whole seconds and nanoseconds, the nanoseconds always forward in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

pub fn parse_pax_time(text: &[u8]) -> Option<Time> {
    let text = std::str::from_utf8(text).ok()?;
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    // Digits past nanoseconds are dropped, as GNU tar does.
    let mut nanos = 0u32;
    for i in 0..9 {
        let digit = fraction.as_bytes().get(i).map_or(0, |b| b - b'0');
        nanos = nanos * 10 + u32::from(digit);
    }
    if !negative {
        return Some(Time { secs, nanos });
    }
    if nanos == 0 {
        Some(Time {
            secs: secs.checked_neg()?,
            nanos: 0,
        })
    } else {
        Some(Time {
            secs: secs.checked_neg()?.checked_sub(1)?,
            nanos: 1_000_000_000 - nanos,
        })
    }
}

/// A pax record: keyword and value, both raw bytes.
pub type PaxRecord = (Vec<u8>, Vec<u8>);

/// The records of a pax extended header, `"<len> <key>=<value>\n"` where
/// `len` counts the whole record, in order (GNU's sparse 0.0 repeats keys).
pub fn parse_pax(mut data: &[u8]) -> Result<Vec<PaxRecord>, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        // Writers pad the last block with NULs; nothing else may follow.
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let malformed = |why: &str| format!("malformed pax record {}: {why}", records.len() + 1);
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| malformed("no length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("bad length"))?;
        let record = data
            .get(space + 1..len)
            .ok_or_else(|| malformed("length past the header"))?;
        let record = record
            .strip_suffix(b"\n")
            .ok_or_else(|| malformed("no newline at its end"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| malformed("no '='"))?;
        records.push((record[..eq].to_vec(), record[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(records)
}

/// GNU tar's xattr keyword escaping (`xattr_encode_keyword`): `%` and `=`
/// in an attribute name are written `%25` and `%3D`.
pub fn decode_xattr_name(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        match name.get(i..i + 3) {
            Some(b"%25") => {
                out.push(b'%');
                i += 3;
            }
            Some(b"%3D") => {
                out.push(b'=');
                i += 3;
            }
            _ => {
                out.push(name[i]);
                i += 1;
            }
        }
    }
    out
}

/// Parses the map at the start of a pax sparse 1.0 file's data: decimal
/// numbers, one per line (the count, then offset and length pairs).
/// `Ok(None)` while `text` does not yet hold the whole map.
pub fn parse_sparse_map_1_0(text: &[u8], limit: usize) -> Result<Option<Vec<Region>>, String> {
    let mut lines = text.split(|&b| b == b'\n');
    let mut numbers = Vec::new();
    let complete_lines = text.iter().filter(|&&b| b == b'\n').count();
    let mut count = None;
    for (i, line) in lines.by_ref().enumerate() {
        if i >= complete_lines {
            return Ok(None);
        }
        let n = decimal(line).ok_or("malformed sparse map")?;
        match count {
            None => {
                let c = usize::try_from(n).map_err(|_| "sparse map too large")?;
                if c > limit {
                    return Err(format!("sparse map of {c} regions is too large"));
                }
                count = Some(c);
            }
            Some(_) => numbers.push(n),
        }
        if count.is_some_and(|c| numbers.len() == 2 * c) {
            return Ok(Some(pairs(&numbers)));
        }
    }
    Ok(None)
}

/// `GNU.sparse.map` of pax sparse 0.1: `offset,len,offset,len...`.
pub fn parse_sparse_map_0_1(text: &[u8]) -> Result<Vec<Region>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let numbers = text
        .split(|&b| b == b',')
        .map(decimal)
        .collect::<Option<Vec<u64>>>()
        .ok_or("malformed GNU.sparse.map")?;
    if numbers.len() % 2 != 0 {
        return Err("GNU.sparse.map has an odd count of numbers".to_owned());
    }
    Ok(pairs(&numbers))
}

fn pairs(numbers: &[u64]) -> Vec<Region> {
    numbers
        .chunks_exact(2)
        .map(|p| Region {
            offset: p[0],
            len: p[1],
        })
        .collect()
}

pub fn decimal(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}
