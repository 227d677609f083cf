//! The GUID Partition Table (UEFI 2.10, section 5.3): reading it with both
//! headers and both CRCs checked, and planning the writes that move the
//! backup to the end of a disk larger than the image (`sgdisk -e`) and grow
//! the last partition into the new space.
//!
//! Everything here is pure: reads go through a `read_at` callback and
//! changes come back as [`DiskWrite`]s for a thin layer to apply.

use std::fmt;

use anyhow::{Context, Result, bail, ensure};

use super::partitions::{DiskWrite, ReadAt};

/// A GUID in the byte order GPT stores it: the first three fields little
/// endian, the last two as bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Guid(pub [u8; 16]);

// The well-known type GUIDs serve the tests; discovery compares the stored
// bytes.
#[cfg(test)]
impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);
    /// EFI System Partition.
    pub const ESP: Guid = Guid::from_text("c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    /// Linux filesystem data.
    pub const LINUX_DATA: Guid = Guid::from_text("0fc63daf-8483-4772-8e79-3d69d8477de4");
    /// Root partition for x86-64, from the Discoverable Partitions
    /// Specification.
    pub const ROOT_X86_64: Guid = Guid::from_text("4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
}

// Parsing from text: the tests, and the partition-layout planner
// (`rootfs::layout`), whose type names and raw type GUIDs are text.
impl Guid {
    /// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (either case), as
    /// `blkid`, `sgdisk` and the DPS print GUIDs.
    pub fn parse(text: &str) -> Option<Guid> {
        Self::parse_const(text.as_bytes())
    }

    const fn parse_const(t: &[u8]) -> Option<Guid> {
        if t.len() != 36 {
            return None;
        }
        let mut hex = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                if t[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            // Digits come in pairs between the dashes, so `i + 1` is a digit
            // position below 36 and `n` stays below 16.
            let (Some(hi), Some(lo)) = (hex_digit(t[i]), hex_digit(t[i + 1])) else {
                return None;
            };
            hex[n] = hi << 4 | lo;
            n += 1;
            i += 2;
        }
        Some(Guid(text_order_to_stored(hex)))
    }

    /// [`parse`](Self::parse) for constants; a bad literal fails the build.
    pub(crate) const fn from_text(text: &str) -> Guid {
        match Self::parse_const(text.as_bytes()) {
            Some(g) => g,
            None => panic!("bad GUID literal"),
        }
    }
}

impl Guid {
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

const fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Swaps the first three fields between text order (big endian) and the
/// mixed-endian order GPT stores; the swap is its own inverse.
const fn text_order_to_stored(b: [u8; 16]) -> [u8; 16] {
    [
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15],
    ]
}

/// Lowercase, as `blkid` prints PARTUUID; `{:X}`-style uppercase (as `sgdisk`
/// prints) is `to_string().to_uppercase()`.
impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = text_order_to_stored(self.0);
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// The fixed part of a GPT header; a header may be longer (`header_size`),
/// and the extra bytes are kept because the CRC covers them.
const HEADER_MIN: usize = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Larger entry arrays than this are refused rather than allocated: the
/// usual one is 16 KiB, and a corrupt header must not make PID 1 allocate
/// gigabytes.
const MAX_ENTRY_ARRAY: u64 = 4 << 20;

/// A GPT header that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptHeader {
    /// The header's `header_size` bytes as stored.
    raw: Vec<u8>,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub disk_guid: Guid,
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc32: u32,
}

impl GptHeader {
    fn entry_array_len(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// The header as a whole block: the stored bytes with `my_lba`,
    /// `alternate_lba`, `last_usable_lba`, `entries_lba` and the entry-array
    /// CRC replaced, the header CRC recomputed, zeros after `header_size`.
    fn to_block(
        &self,
        block_size: usize,
        my_lba: u64,
        alternate_lba: u64,
        last_usable_lba: u64,
        entries_lba: u64,
        entries_crc32: u32,
    ) -> Vec<u8> {
        let mut block = vec![0u8; block_size];
        let raw = &mut block[..self.raw.len()];
        raw.copy_from_slice(&self.raw);
        raw[24..32].copy_from_slice(&my_lba.to_le_bytes());
        raw[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        raw[48..56].copy_from_slice(&last_usable_lba.to_le_bytes());
        raw[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        raw[88..92].copy_from_slice(&entries_crc32.to_le_bytes());
        raw[16..20].fill(0);
        let crc = crc32fast::hash(raw);
        raw[16..20].copy_from_slice(&crc.to_le_bytes());
        block
    }
}

/// Which header a [`Gpt`] was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Primary,
    Backup,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Primary => "primary",
            Which::Backup => "backup",
        })
    }
}

/// A GPT as read from a disk: the header trusted (the primary when it is
/// valid), its entry array, and what was wrong with the rest.
#[derive(Debug, Clone)]
pub struct Gpt {
    pub block_size: u32,
    pub header: GptHeader,
    pub used: Which,
    pub primary_valid: bool,
    /// Where a valid backup header was found.
    pub backup_lba: Option<u64>,
    /// The entry array as stored, `num_entries * entry_size` bytes.
    entries: Vec<u8>,
    /// Block 0, kept so the protective MBR can be fixed up with the rest.
    mbr_block: Vec<u8>,
    /// Problems that did not stop the read, for the log.
    pub problems: Vec<String>,
}

/// One used entry of the array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptEntry {
    /// 1-based, as the kernel numbers partitions: the index in the array + 1.
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    Guid(g)
}

/// Whether `block` starts with the GPT signature.
pub fn has_signature(block: &[u8]) -> bool {
    block.starts_with(SIGNATURE)
}

/// Checks the header in `block` (read from `lba`) on its own: signature,
/// size, CRC, `my_lba`, and that everything it points at lies on a disk of
/// `disk_lbas` blocks. The message names the header: `backup GPT header CRC
/// mismatch at LBA 204799`.
pub fn parse_header(block: &[u8], which: Which, lba: u64, disk_lbas: u64) -> Result<GptHeader> {
    ensure!(
        block.len() >= HEADER_MIN && has_signature(block),
        "no {which} GPT header at LBA {lba} (no \"EFI PART\" signature)"
    );
    let header_size = le32(block, 12);
    let size = usize::try_from(header_size).unwrap_or(usize::MAX);
    ensure!(
        (HEADER_MIN..=block.len()).contains(&size),
        "{which} GPT header at LBA {lba} has a bad size {header_size}"
    );
    let mut raw = block[..size].to_vec();
    let stored_crc = le32(&raw, 16);
    raw[16..20].fill(0);
    let crc = crc32fast::hash(&raw);
    ensure!(
        crc == stored_crc,
        "{which} GPT header CRC mismatch at LBA {lba} (stored {stored_crc:#010x}, computed {crc:#010x})"
    );
    raw[16..20].copy_from_slice(&stored_crc.to_le_bytes());
    let h = GptHeader {
        my_lba: le64(&raw, 24),
        alternate_lba: le64(&raw, 32),
        first_usable_lba: le64(&raw, 40),
        last_usable_lba: le64(&raw, 48),
        disk_guid: guid_at(&raw, 56),
        entries_lba: le64(&raw, 72),
        num_entries: le32(&raw, 80),
        entry_size: le32(&raw, 84),
        entries_crc32: le32(&raw, 88),
        raw,
    };
    ensure!(
        h.my_lba == lba,
        "{which} GPT header at LBA {lba} says it is at LBA {}",
        h.my_lba
    );
    ensure!(
        h.entry_size >= 128 && h.entry_size % 8 == 0 && h.num_entries > 0,
        "{which} GPT header at LBA {lba}: bad entry array shape ({} entries of {} bytes)",
        h.num_entries,
        h.entry_size
    );
    ensure!(
        h.entry_array_len() <= MAX_ENTRY_ARRAY,
        "{which} GPT header at LBA {lba}: entry array of {} bytes is too large",
        h.entry_array_len()
    );
    ensure!(
        h.first_usable_lba <= h.last_usable_lba && h.last_usable_lba < disk_lbas,
        "{which} GPT header at LBA {lba}: usable LBAs {}..={} do not fit a disk of {disk_lbas} blocks",
        h.first_usable_lba,
        h.last_usable_lba
    );
    Ok(h)
}

/// Reads and checks the entry array `h` points at.
fn read_entries(
    read_at: &mut ReadAt,
    h: &GptHeader,
    which: Which,
    block_size: u32,
    disk_lbas: u64,
) -> Result<Vec<u8>> {
    let len = h.entry_array_len();
    let blocks = len.div_ceil(u64::from(block_size));
    let last = h.entries_lba.checked_add(blocks);
    ensure!(
        h.entries_lba >= 1 && last.is_some_and(|l| l <= disk_lbas),
        "{which} GPT entry array at LBA {} ({blocks} blocks) lies outside the disk",
        h.entries_lba
    );
    let mut entries = vec![0u8; usize::try_from(len)?];
    read_at(h.entries_lba * u64::from(block_size), &mut entries).with_context(|| {
        format!(
            "reading the {which} GPT entry array at LBA {}",
            h.entries_lba
        )
    })?;
    let crc = crc32fast::hash(&entries);
    ensure!(
        crc == h.entries_crc32,
        "{which} GPT entry array CRC mismatch at LBA {} (stored {:#010x}, computed {crc:#010x})",
        h.entries_lba,
        h.entries_crc32
    );
    Ok(entries)
}

fn read_block(read_at: &mut ReadAt, lba: u64, block_size: u32, what: &str) -> Result<Vec<u8>> {
    let mut block = vec![0u8; usize::try_from(block_size)?];
    let offset = lba
        .checked_mul(u64::from(block_size))
        .context("LBA out of range")?;
    read_at(offset, &mut block).with_context(|| format!("reading {what} at LBA {lba}"))?;
    Ok(block)
}

/// Reads one header and its entry array; a failure is a message for the
/// caller to report, since the other copy may still be good.
fn read_copy(
    read_at: &mut ReadAt,
    which: Which,
    lba: u64,
    block_size: u32,
    disk_lbas: u64,
) -> Result<(GptHeader, Vec<u8>)> {
    let block = read_block(read_at, lba, block_size, &format!("the {which} GPT header"))?;
    let header = parse_header(&block, which, lba, disk_lbas)?;
    let entries = read_entries(read_at, &header, which, block_size, disk_lbas)?;
    Ok((header, entries))
}

/// Reads the GPT of a disk of `disk_size` bytes with `block_size`-byte
/// blocks. The primary header (LBA 1) is used when it and its entry array
/// check out; otherwise the backup, looked for where the primary's
/// `alternate_lba` points and at the last LBA. A bad copy is reported in
/// [`Gpt::problems`]; both bad is an error naming what was wrong with each.
pub fn read_gpt(read_at: &mut ReadAt, disk_size: u64, block_size: u32) -> Result<Gpt> {
    ensure!(
        block_size == 512 || block_size == 4096,
        "unsupported logical block size {block_size}"
    );
    let disk_lbas = disk_size / u64::from(block_size);
    ensure!(
        disk_lbas >= 4,
        "disk of {disk_size} bytes is too small for a GPT"
    );
    let last_lba = disk_lbas - 1;
    let mbr_block = read_block(read_at, 0, block_size, "the protective MBR")?;
    let mut problems = Vec::new();

    let primary = read_copy(read_at, Which::Primary, 1, block_size, disk_lbas);
    // The primary's pointer is where `sgdisk` and the kernel look; the last
    // LBA is where the backup belongs, and the only place to look when the
    // primary cannot be trusted.
    let mut candidates = Vec::new();
    if let Ok((h, _)) = &primary {
        if h.alternate_lba < disk_lbas && h.alternate_lba != 1 {
            candidates.push(h.alternate_lba);
        } else {
            problems.push(format!(
                "primary GPT header points to a backup at LBA {}, outside a disk of {disk_lbas} blocks",
                h.alternate_lba
            ));
        }
    }
    if !candidates.contains(&last_lba) {
        candidates.push(last_lba);
    }
    let mut backup = None;
    let mut backup_errors = Vec::new();
    for lba in candidates {
        match read_copy(read_at, Which::Backup, lba, block_size, disk_lbas) {
            Ok(copy) => {
                backup = Some(copy);
                break;
            }
            Err(e) => backup_errors.push(format!("{e:#}")),
        }
    }
    let backup_error = backup_errors.join("; ");

    let (header, entries, used, primary_valid) = match (primary, &backup) {
        (Ok((h, e)), _) => (h, e, Which::Primary, true),
        (Err(pe), Some((bh, be))) => {
            problems.push(format!(
                "{pe:#}; using the backup GPT header at LBA {}",
                bh.my_lba
            ));
            (bh.clone(), be.clone(), Which::Backup, false)
        }
        (Err(pe), None) => bail!("no valid GPT: {pe:#}; {backup_error}"),
    };
    let backup_lba = backup.as_ref().map(|(bh, _)| bh.my_lba);
    match &backup {
        None => problems.push(backup_error),
        Some((bh, be)) => {
            if bh.my_lba != last_lba {
                problems.push(format!(
                    "backup GPT header at LBA {}, not at the end of the disk (LBA {last_lba})",
                    bh.my_lba
                ));
            }
            if used == Which::Primary && (bh.disk_guid != header.disk_guid || *be != entries) {
                problems.push(format!(
                    "primary and backup GPT (LBA {}) disagree; using the primary",
                    bh.my_lba
                ));
            }
        }
    }
    Ok(Gpt {
        block_size,
        header,
        used,
        primary_valid,
        backup_lba,
        entries,
        mbr_block,
        problems,
    })
}

impl Gpt {
    /// The used entries (type GUID not zero), in array order.
    pub fn entries(&self) -> Vec<GptEntry> {
        let size = usize::try_from(self.header.entry_size).unwrap_or(usize::MAX);
        self.entries
            .chunks_exact(size)
            .zip(1u32..)
            .filter_map(|(e, number)| {
                let type_guid = guid_at(e, 0);
                if type_guid.is_zero() {
                    return None;
                }
                let units: Vec<u16> = (56..128)
                    .step_by(2)
                    .map(|at| le16(e, at))
                    .take_while(|&u| u != 0)
                    .collect();
                Some(GptEntry {
                    number,
                    type_guid,
                    unique_guid: guid_at(e, 16),
                    first_lba: le64(e, 32),
                    last_lba: le64(e, 40),
                    attributes: le64(e, 48),
                    name: String::from_utf16_lossy(&units),
                })
            })
            .collect()
    }
}

/// The writes that make `gpt` valid on a disk of `disk_size` bytes, with
/// `entries` as the entry array: the backup entry array and header at the
/// end of the disk, then the primary's, then (optionally) the old backup
/// header zeroed and the protective MBR resized. The backup goes first so
/// that, if the writes stop halfway, the primary still describes the old
/// layout and the new backup the new one: both valid.
fn plan_writes(
    gpt: &Gpt,
    entries: &[u8],
    disk_size: u64,
    zero_old_backup: bool,
) -> Result<(Vec<DiskWrite>, u64)> {
    let h = &gpt.header;
    let bs = u64::from(gpt.block_size);
    let block_size = usize::try_from(gpt.block_size)?;
    let disk_lbas = disk_size / bs;
    let array_blocks = h.entry_array_len().div_ceil(bs);
    let primary_entries_lba = if gpt.used == Which::Primary {
        h.entries_lba
    } else {
        // The primary header is unreadable; LBA 2 is where every tool puts
        // the primary array.
        2
    };
    ensure!(
        primary_entries_lba + array_blocks <= h.first_usable_lba,
        "the primary GPT entry array at LBA {primary_entries_lba} would overlap the first usable LBA {}",
        h.first_usable_lba
    );
    let last_lba = disk_lbas.saturating_sub(1);
    let backup_entries_lba = last_lba.saturating_sub(array_blocks);
    let last_usable = backup_entries_lba.saturating_sub(1);
    ensure!(
        last_usable >= h.first_usable_lba,
        "a disk of {} is too small for this GPT",
        crate::text::human_size(disk_size)
    );
    let size = usize::try_from(h.entry_size)?;
    for (e, number) in entries.chunks_exact(size).zip(1u32..) {
        let last = le64(e, 40);
        ensure!(
            guid_at(e, 0).is_zero() || last <= last_usable,
            "partition {number} ends at LBA {last}, past the last usable LBA {last_usable} of a {} disk",
            crate::text::human_size(disk_size)
        );
    }

    let mut array = entries.to_vec();
    array.resize(usize::try_from(array_blocks * bs)?, 0);
    let entries_crc = crc32fast::hash(entries);
    let backup = h.to_block(
        block_size,
        last_lba,
        1,
        last_usable,
        backup_entries_lba,
        entries_crc,
    );
    let primary = h.to_block(
        block_size,
        1,
        last_lba,
        last_usable,
        primary_entries_lba,
        entries_crc,
    );
    let mut writes = vec![
        DiskWrite {
            offset: backup_entries_lba * bs,
            what: format!("backup GPT entry array at LBA {backup_entries_lba}"),
            bytes: array.clone(),
        },
        DiskWrite {
            offset: last_lba * bs,
            what: format!("backup GPT header at LBA {last_lba}"),
            bytes: backup,
        },
    ];
    if !gpt.primary_valid || entries != gpt.entries.as_slice() {
        writes.push(DiskWrite {
            offset: primary_entries_lba * bs,
            what: format!("primary GPT entry array at LBA {primary_entries_lba}"),
            bytes: array,
        });
    }
    writes.push(DiskWrite {
        offset: bs,
        what: "primary GPT header at LBA 1".to_owned(),
        bytes: primary,
    });
    // Only a header that was read and checked is zeroed: it lies past the
    // old last usable LBA, so outside every partition, and before the new
    // backup array.
    if let Some(old) = gpt.backup_lba
        && zero_old_backup
        && old != last_lba
        && old > h.last_usable_lba
        && old < backup_entries_lba
    {
        writes.push(DiskWrite {
            offset: old * bs,
            what: format!("old backup GPT header at LBA {old} (zeroed)"),
            bytes: vec![0; block_size],
        });
    }
    if let Some(mbr) = resized_protective_mbr(&gpt.mbr_block, disk_lbas) {
        writes.push(DiskWrite {
            offset: 0,
            what: "protective MBR (resized to the disk)".to_owned(),
            bytes: mbr,
        });
    }
    Ok((writes, last_usable))
}

/// Block 0 with its protective partition covering the whole disk, when it is
/// a plain protective MBR (one entry, type 0xEE, from LBA 1) whose size is
/// not already right. A hybrid MBR is left alone: its other entries are
/// someone's deliberate choice.
fn resized_protective_mbr(block: &[u8], disk_lbas: u64) -> Option<Vec<u8>> {
    if block.len() < 512 || block[510..512] != [0x55, 0xAA] {
        return None;
    }
    let used: Vec<usize> = (0..4)
        .map(|i| 446 + 16 * i)
        .filter(|&at| block[at + 4] != 0)
        .collect();
    let [at] = used[..] else { return None };
    if block[at + 4] != 0xEE || le32(block, at + 8) != 1 {
        return None;
    }
    let want = u32::try_from(disk_lbas - 1).unwrap_or(u32::MAX);
    if le32(block, at + 12) == want {
        return None;
    }
    let mut new = block.to_vec();
    new[at + 12..at + 16].copy_from_slice(&want.to_le_bytes());
    Some(new)
}

/// Plans what `sgdisk -e` does on a disk of `disk_size` bytes: the backup
/// entry array and header at the end of the disk, the primary header's
/// `alternate_lba` and `last_usable_lba` updated, CRCs recomputed, the
/// protective MBR resized, and, with `zero_old_backup`, the old backup
/// header (in the middle of the disk when the image was smaller) zeroed so
/// no tool finds a stale copy. A GPT read from its backup gets its primary
/// rewritten too. Fails when a partition would end past the new last
/// usable LBA (the disk is smaller than the image).
pub fn relocate_backup_gpt(
    gpt: &Gpt,
    disk_size: u64,
    zero_old_backup: bool,
) -> Result<Vec<DiskWrite>> {
    plan_writes(gpt, &gpt.entries, disk_size, zero_old_backup).map(|(writes, _)| writes)
}

/// The outcome of [`grow_last_partition`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Growth {
    pub number: u32,
    pub old_last_lba: u64,
    /// Equal to `old_last_lba` when the partition already filled the disk.
    pub new_last_lba: u64,
    /// The relocation writes, with the grown entry in both arrays.
    pub writes: Vec<DiskWrite>,
}

/// [`relocate_backup_gpt`], plus the partition that ends last extended
/// towards the new last usable LBA, as cloud-init's growpart does. Its end
/// is aligned down to a 1 MiB boundary (giving up less than 1 MiB): that is
/// the alignment partitioning tools use, and `sgdisk -v` warns about an
/// unaligned end because disk encryption tools may trip over it. A
/// partition is never shrunk.
pub fn grow_last_partition(gpt: &Gpt, disk_size: u64, zero_old_backup: bool) -> Result<Growth> {
    let last = gpt
        .entries()
        .into_iter()
        .max_by_key(|e| e.last_lba)
        .context("the GPT has no partition to grow")?;
    let (_, last_usable) = plan_writes(gpt, &gpt.entries, disk_size, zero_old_backup)?;
    let align = (1 << 20) / u64::from(gpt.block_size);
    let new_last = ((last_usable + 1) / align * align)
        .saturating_sub(1)
        .max(last.last_lba);
    let mut entries = gpt.entries.clone();
    let at = usize::try_from(last.number - 1)? * usize::try_from(gpt.header.entry_size)? + 40;
    entries[at..at + 8].copy_from_slice(&new_last.to_le_bytes());
    let (writes, _) = plan_writes(gpt, &entries, disk_size, zero_old_backup)?;
    Ok(Growth {
        number: last.number,
        old_last_lba: last.last_lba,
        new_last_lba: new_last,
        writes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_is_mixed_endian_as_stored() {
        // The ESP type as the bytes sit on disk.
        let stored = [
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
            0xc9, 0x3b,
        ];
        assert_eq!(Guid::ESP, Guid(stored));
        assert_eq!(
            Guid::ESP.to_string(),
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
        );
        assert_eq!(
            Guid::parse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            Some(Guid::ESP)
        );
        assert_eq!(
            format!("{:?}", Guid::ZERO),
            "Guid(00000000-0000-0000-0000-000000000000)"
        );
    }

    #[test]
    fn bad_guid_text_is_refused_without_panicking() {
        for bad in [
            "",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93bb",
            "c12a7328f-81f-11d2-ba4b-00a0c93ec93b",
            "-c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec9-b",
            "g12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec9ä",
            "c12a7328 f81f 11d2 ba4b 00a0c93ec93b",
        ] {
            assert_eq!(Guid::parse(bad), None, "{bad:?}");
        }
    }

    /// A minimal valid GPT on a disk of `lbas` 512-byte blocks: one
    /// partition, four entries, so the array fits one block.
    fn tiny_gpt(lbas: u64) -> Vec<u8> {
        let mut disk = vec![0u8; usize::try_from(lbas * 512).unwrap()];
        let mut entries = vec![0u8; 4 * 128];
        entries[..16].copy_from_slice(&Guid::LINUX_DATA.0);
        entries[16] = 7;
        entries[32..40].copy_from_slice(&4u64.to_le_bytes());
        entries[40..48].copy_from_slice(&(lbas - 4).to_le_bytes());
        entries[56..60].copy_from_slice(&[b'a', 0, b'b', 0]);
        let mut raw = vec![0u8; 92];
        raw[..8].copy_from_slice(SIGNATURE);
        raw[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        raw[12..16].copy_from_slice(&92u32.to_le_bytes());
        raw[40..48].copy_from_slice(&3u64.to_le_bytes());
        raw[80..84].copy_from_slice(&4u32.to_le_bytes());
        raw[84..88].copy_from_slice(&128u32.to_le_bytes());
        let h = GptHeader {
            raw,
            my_lba: 0,
            alternate_lba: 0,
            first_usable_lba: 3,
            last_usable_lba: 0,
            disk_guid: Guid::ZERO,
            entries_lba: 0,
            num_entries: 4,
            entry_size: 128,
            entries_crc32: 0,
        };
        let crc = crc32fast::hash(&entries);
        let last = lbas - 1;
        let primary = h.to_block(512, 1, last, lbas - 3, 2, crc);
        let backup = h.to_block(512, last, 1, lbas - 3, last - 1, crc);
        let at = |lba: u64| usize::try_from(lba * 512).unwrap();
        disk[at(1)..at(2)].copy_from_slice(&primary);
        disk[at(2)..at(2) + 512].copy_from_slice(&entries);
        disk[at(last - 1)..at(last - 1) + 512].copy_from_slice(&entries);
        disk[at(last)..at(last) + 512].copy_from_slice(&backup);
        disk
    }

    fn read(disk: &[u8]) -> Result<Gpt> {
        let mut read_at = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
            let at = usize::try_from(at).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
            let src = disk
                .get(at..at.saturating_add(buf.len()))
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        };
        read_gpt(&mut read_at, disk.len() as u64, 512)
    }

    #[test]
    fn tiny_gpt_reads_back() {
        let g = read(&tiny_gpt(16)).unwrap();
        assert!(g.problems.is_empty(), "{:?}", g.problems);
        let [e] = &g.entries()[..] else {
            panic!("{:?}", g.entries())
        };
        assert_eq!((e.number, e.first_lba, e.last_lba), (1, 4, 12));
        assert_eq!(e.name, "ab");
        assert_eq!(e.unique_guid.0[0], 7);
    }

    /// Every single-byte corruption of the headers and arrays, and random
    /// ones, must come back as a result, never a panic; a corrupt header
    /// must never be trusted.
    #[test]
    fn corrupt_tables_never_panic() {
        let good = tiny_gpt(16);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for at in (512..3 * 512).chain(14 * 512..16 * 512) {
            for value in [0x00, 0xff, 0x80] {
                let mut disk = good.clone();
                disk[at] = value;
                if let Ok(g) = read(&disk) {
                    let _ = g.entries();
                    let _ = relocate_backup_gpt(&g, 32 * 512, true);
                    let _ = grow_last_partition(&g, 32 * 512, true);
                }
            }
        }
        for _ in 0..2000 {
            let mut disk = good.clone();
            for _ in 0..4 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = usize::try_from(seed % (disk.len() as u64)).unwrap();
                disk[at] = seed.to_le_bytes()[7];
            }
            // Sizes that cut the disk short, too.
            let len = disk.len() - usize::try_from(seed % 3).unwrap() * 512;
            if let Ok(g) = read(&disk[..len]) {
                let _ = grow_last_partition(&g, 8 * 512, false);
            }
        }
    }

    #[test]
    fn a_header_pointing_outside_the_disk_is_refused() {
        let mut disk = tiny_gpt(16);
        // Entry count huge: array past the disk end; the CRC is fixed up so
        // only the shape check can catch it.
        let block = &mut disk[512..1024];
        block[80..84].copy_from_slice(&30_000u32.to_le_bytes());
        block[16..20].fill(0);
        let crc = crc32fast::hash(&block[..92]);
        block[16..20].copy_from_slice(&crc.to_le_bytes());
        let g = read(&disk).unwrap();
        assert_eq!(g.used, Which::Backup);
        assert_eq!(
            g.problems,
            [
                "primary GPT entry array at LBA 2 (7500 blocks) lies outside the disk; using the backup GPT header at LBA 15"
            ]
        );
    }
}
