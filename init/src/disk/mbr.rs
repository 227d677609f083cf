//! The DOS partition table (MBR): four primary entries in block 0, and
//! logical partitions chained through extended boot records. Numbered as
//! Linux numbers them: primaries 1–4 by slot, logicals from 5.

use anyhow::{Context, Result, bail, ensure};

use super::partitions::{DiskWrite, ReadAt};

/// Partition types that hold a chain of logical partitions.
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// The type of the one entry a protective MBR holds in front of a GPT.
pub const PROTECTIVE_TYPE: u8 = 0xEE;
/// More logical partitions than this is a loop in a corrupt chain; Linux
/// stops at a similar bound.
const MAX_LOGICAL: u32 = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbrPartition {
    pub number: u32,
    pub bootable: bool,
    pub mbr_type: u8,
    pub first_lba: u64,
    pub sectors: u64,
}

impl MbrPartition {
    /// An extended partition: a container of logical ones, not a volume.
    pub fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.mbr_type)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mbr {
    /// Bytes 440..444, which `blkid` prints as the PTUUID and the first half
    /// of every PARTUUID (`1234abcd-01`).
    pub disk_signature: u32,
    pub partitions: Vec<MbrPartition>,
    pub problems: Vec<String>,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

struct RawEntry {
    status: u8,
    kind: u8,
    start: u32,
    sectors: u32,
}

fn entry(block: &[u8], slot: usize) -> RawEntry {
    let at = 446 + 16 * slot;
    RawEntry {
        status: block[at],
        kind: block[at + 4],
        start: le32(block, at + 8),
        sectors: le32(block, at + 12),
    }
}

/// Whether `block` (block 0) carries the 0x55AA signature.
pub fn has_signature(block: &[u8]) -> bool {
    block.len() >= 512 && block[510..512] == [0x55, 0xAA]
}

/// Whether block 0 is a protective (or hybrid) MBR: a GPT follows.
pub fn is_protective(block: &[u8]) -> bool {
    has_signature(block) && (0..4).any(|slot| entry(block, slot).kind == PROTECTIVE_TYPE)
}

/// Reads the DOS partition table of a disk of `disk_size` bytes. Block 0
/// must carry 0x55AA and boot flags of 0x00 or 0x80 only; the second check
/// is how Linux tells a partition table from the boot sector of a
/// filesystem made on the whole disk, which also ends in 0x55AA.
pub fn read_mbr(read_at: &mut ReadAt, disk_size: u64, block_size: u32) -> Result<Mbr> {
    let bs = u64::from(block_size);
    let disk_lbas = disk_size / bs;
    let mut block = vec![0u8; usize::try_from(block_size)?];
    read_at(0, &mut block).context("reading the MBR at LBA 0")?;
    ensure!(has_signature(&block), "no MBR signature (0x55AA) at LBA 0");
    ensure!(
        (0..4).all(|slot| matches!(entry(&block, slot).status, 0x00 | 0x80)),
        "LBA 0 ends in 0x55AA but its boot flags are not an MBR's (a filesystem boot sector?)"
    );
    let mut mbr = Mbr {
        disk_signature: le32(&block, 440),
        partitions: Vec::new(),
        problems: Vec::new(),
    };
    let mut extended = None;
    for (slot, number) in (0..4).zip(1u32..) {
        let e = entry(&block, slot);
        if e.kind == 0 || e.sectors == 0 {
            continue;
        }
        let p = MbrPartition {
            number,
            bootable: e.status == 0x80,
            mbr_type: e.kind,
            first_lba: u64::from(e.start),
            sectors: u64::from(e.sectors),
        };
        check_bounds(&mut mbr.problems, &p, disk_lbas);
        if p.is_extended() {
            if extended.is_some() {
                mbr.problems.push(format!(
                    "partition {number}: a second extended partition, ignored"
                ));
            } else {
                extended = Some((p.first_lba, p.sectors));
            }
        }
        mbr.partitions.push(p);
    }
    if let Some((ext_start, ext_sectors)) = extended {
        read_logicals(
            read_at,
            &mut mbr,
            ext_start,
            ext_sectors,
            disk_lbas,
            block_size,
        );
    }
    Ok(mbr)
}

fn check_bounds(problems: &mut Vec<String>, p: &MbrPartition, disk_lbas: u64) {
    if p.first_lba + p.sectors > disk_lbas {
        problems.push(format!(
            "partition {} (LBA {}, {} sectors) extends past the end of the disk ({disk_lbas} blocks)",
            p.number, p.first_lba, p.sectors
        ));
    }
}

/// Follows the chain of extended boot records. A broken link ends the
/// chain with a problem reported, keeping the logicals found so far, as
/// the kernel does.
fn read_logicals(
    read_at: &mut ReadAt,
    mbr: &mut Mbr,
    ext_start: u64,
    ext_sectors: u64,
    disk_lbas: u64,
    block_size: u32,
) {
    let mut ebr_lba = ext_start;
    // Block sizes are 512 or 4096.
    let mut block = vec![0u8; usize::try_from(block_size).unwrap_or(512)];
    for number in 5..5 + MAX_LOGICAL {
        if let Err(e) = read_at(ebr_lba * u64::from(block_size), &mut block) {
            mbr.problems.push(format!(
                "reading the extended boot record at LBA {ebr_lba}: {e}"
            ));
            return;
        }
        if !has_signature(&block) {
            mbr.problems.push(format!(
                "no extended boot record signature at LBA {ebr_lba}"
            ));
            return;
        }
        let logical = entry(&block, 0);
        if logical.kind != 0 && logical.sectors != 0 {
            let p = MbrPartition {
                number,
                bootable: logical.status == 0x80,
                mbr_type: logical.kind,
                first_lba: ebr_lba + u64::from(logical.start),
                sectors: u64::from(logical.sectors),
            };
            check_bounds(&mut mbr.problems, &p, disk_lbas);
            mbr.partitions.push(p);
        }
        let next = entry(&block, 1);
        if !EXTENDED_TYPES.contains(&next.kind) || next.start == 0 {
            return;
        }
        // Links are relative to the start of the extended partition and
        // must move forward inside it; anything else is a loop or garbage.
        let next_lba = ext_start + u64::from(next.start);
        if next_lba <= ebr_lba || next_lba >= ext_start + ext_sectors {
            mbr.problems.push(format!(
                "extended boot record at LBA {ebr_lba} links to LBA {next_lba}, outside the extended partition or backwards; chain ends"
            ));
            return;
        }
        ebr_lba = next_lba;
    }
    mbr.problems.push(format!(
        "more than {MAX_LOGICAL} logical partitions; the rest are ignored"
    ));
}

/// The outcome of [`grow_last_primary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MbrGrowth {
    pub number: u32,
    pub old_sectors: u64,
    pub new_sectors: u64,
    /// Block 0 with the grown entry; empty when nothing changes.
    pub writes: Vec<DiskWrite>,
}

/// Extends the primary partition that ends last to the end of a disk of
/// `disk_lbas` blocks (at most 2^32 − 1 sectors, the MBR's limit). Only a
/// primary is grown: growing a logical one means rewriting its EBR and the
/// extended partition too, which no image seen so far needs.
pub fn grow_last_primary(block0: &[u8], mbr: &Mbr, disk_lbas: u64) -> Result<MbrGrowth> {
    ensure!(has_signature(block0), "no MBR signature (0x55AA) at LBA 0");
    let last = mbr
        .partitions
        .iter()
        .max_by_key(|p| p.first_lba + p.sectors)
        .context("the MBR has no partition to grow")?;
    if last.number > 4 || last.is_extended() {
        bail!(
            "partition {} ends last but is {}; only a primary partition is grown",
            last.number,
            if last.is_extended() {
                "the extended partition"
            } else {
                "a logical partition"
            }
        );
    }
    let limit = disk_lbas.min(u64::from(u32::MAX));
    let new_sectors = limit.saturating_sub(last.first_lba).max(last.sectors);
    let mut growth = MbrGrowth {
        number: last.number,
        old_sectors: last.sectors,
        new_sectors,
        writes: Vec::new(),
    };
    if new_sectors != last.sectors {
        let mut block = block0.to_vec();
        let at = 446 + 16 * usize::try_from(last.number - 1)? + 12;
        block[at..at + 4].copy_from_slice(&u32::try_from(new_sectors)?.to_le_bytes());
        growth.writes.push(DiskWrite {
            offset: 0,
            what: format!("MBR with partition {} grown", last.number),
            bytes: block,
        });
    }
    Ok(growth)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(disk: &[u8]) -> Result<Mbr> {
        let mut read_at = |at: u64, buf: &mut [u8]| -> std::io::Result<()> {
            let at = usize::try_from(at).map_err(|_| std::io::ErrorKind::UnexpectedEof)?;
            let src = disk
                .get(at..at.saturating_add(buf.len()))
                .ok_or(std::io::ErrorKind::UnexpectedEof)?;
            buf.copy_from_slice(src);
            Ok(())
        };
        read_mbr(&mut read_at, disk.len() as u64, 512)
    }

    fn put(disk: &mut [u8], lba: usize, slot: usize, kind: u8, start: u32, sectors: u32) {
        let at = lba * 512 + 446 + 16 * slot;
        disk[at + 4] = kind;
        disk[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        disk[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        disk[lba * 512 + 510] = 0x55;
        disk[lba * 512 + 511] = 0xAA;
    }

    #[test]
    fn a_looping_ebr_chain_ends_with_a_problem() {
        let mut disk = vec![0u8; 64 * 512];
        put(&mut disk, 0, 0, 0x83, 1, 7);
        put(&mut disk, 0, 1, 0x05, 8, 40);
        put(&mut disk, 8, 0, 0x83, 1, 3);
        put(&mut disk, 8, 1, 0x05, 4, 8);
        // The last EBR: no link.
        put(&mut disk, 12, 0, 0x83, 1, 3);
        let m = read(&disk).unwrap();
        let numbers: Vec<u32> = m.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 5, 6]);
        assert_eq!(m.partitions[3].first_lba, 13);
        assert!(m.problems.is_empty(), "{:?}", m.problems);

        // Now it links back to LBA 8 + 2, before itself.
        put(&mut disk, 12, 1, 0x05, 2, 8);
        let m = read(&disk).unwrap();
        assert_eq!(m.partitions.len(), 4);
        assert_eq!(
            m.problems,
            [
                "extended boot record at LBA 12 links to LBA 10, outside the extended partition or backwards; chain ends"
            ]
        );
    }

    #[test]
    fn a_filesystem_boot_sector_is_not_an_mbr() {
        let mut disk = vec![0u8; 8 * 512];
        disk[510] = 0x55;
        disk[511] = 0xAA;
        disk[446] = 0x4d;
        let msg = read(&disk).unwrap_err().to_string();
        assert!(msg.contains("a filesystem boot sector?"), "{msg}");
    }

    #[test]
    fn corrupt_mbrs_never_panic() {
        let mut good = vec![0u8; 64 * 512];
        put(&mut good, 0, 0, 0x83, 1, 7);
        put(&mut good, 0, 1, 0x0F, 8, 40);
        put(&mut good, 8, 0, 0x83, 1, 3);
        put(&mut good, 8, 1, 0x05, 4, 8);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            let mut disk = good.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let lba = if seed & 1 == 0 { 0 } else { 8 };
                let at = lba * 512 + 446 + usize::try_from(seed % 66).unwrap();
                disk[at] = seed.to_le_bytes()[6];
            }
            if let Ok(m) = read(&disk) {
                let _ = grow_last_primary(&disk[..512], &m, 1 << 40);
            }
        }
    }
}
