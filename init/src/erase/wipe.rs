//! Where signatures live: the ranges a `metadata` erase zeroes, as a pure
//! function of the disk's size and its partitions.
//!
//! `wipefs -a` erases the magic strings libblkid knows and `sgdisk
//! --zap-all` both GPT headers and the MBR; zeroing the first and the last
//! MiB of the disk and of every partition covers all of them and more:
//! MBR and both GPTs; ext2/3/4 (1 KiB), xfs (0), btrfs's first superblock
//! (64 KiB), LVM2 labels (sectors 0–3), LUKS1/2 headers (0, and LUKS2's
//! second binary header at 16 KiB … 4 MiB, see below), md superblocks 1.1
//! (0) and 1.2 (4 KiB) at the start and 0.90 and 1.0 at the end (within
//! the last 128 KiB), ZFS's four labels (two in the first and two in the
//! last 512 KiB), swap (the first page), bcache (4 KiB), iso9660 (32 KiB)
//! and vfat. btrfs keeps mirror superblocks at 64 MiB and 256 GiB, which
//! blkid also reads: those blocks are zeroed too. LUKS2's secondary header
//! may sit anywhere up to 4 MiB, so the first 4 MiB of every partition go.

/// Bytes zeroed at the start of the disk and of each partition.
pub const HEAD: u64 = 4 << 20;
/// Bytes zeroed at the end of the disk and of each partition.
pub const TAIL: u64 = 1 << 20;
/// btrfs mirror superblocks (`btrfs_sb_offset(1)`, `(2)`), 4 KiB each.
const BTRFS_MIRRORS: [u64; 2] = [64 << 20, 256 << 30];
const BTRFS_SUPER: u64 = 4096;

/// A byte range of the device: `start`, `len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub len: u64,
}

impl Range {
    pub fn end(self) -> u64 {
        self.start + self.len
    }
}

/// The ranges a metadata erase zeroes on a device of `size` bytes with
/// logical blocks of `block` bytes and partitions at `partitions` (byte
/// ranges, as read from its partition table), sorted, merged and aligned
/// outwards to whole blocks, never past the end.
pub fn metadata_ranges(size: u64, block: u32, partitions: &[Range]) -> Vec<Range> {
    let mut ranges = Vec::new();
    let areas = std::iter::once(Range {
        start: 0,
        len: size,
    })
    .chain(partitions.iter().copied());
    for area in areas {
        let end = area.end().min(size);
        if area.start >= end {
            continue;
        }
        let len = end - area.start;
        ranges.push(Range {
            start: area.start,
            len: HEAD.min(len),
        });
        ranges.push(Range {
            start: end - TAIL.min(len),
            len: TAIL.min(len),
        });
        for mirror in BTRFS_MIRRORS {
            if mirror + BTRFS_SUPER <= len {
                ranges.push(Range {
                    start: area.start + mirror,
                    len: BTRFS_SUPER,
                });
            }
        }
    }
    merge_aligned(ranges, u64::from(block.max(1)), size)
}

/// Sorts, aligns each range outwards to `block` (clamped to `size`) and
/// merges overlapping or touching ranges.
fn merge_aligned(mut ranges: Vec<Range>, block: u64, size: u64) -> Vec<Range> {
    for r in &mut ranges {
        let start = r.start / block * block;
        let end = r.end().div_ceil(block).saturating_mul(block).min(size);
        *r = Range {
            start,
            len: end.saturating_sub(start),
        };
    }
    ranges.retain(|r| r.len > 0);
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end() => {
                last.len = last.end().max(r.end()) - last.start;
            }
            _ => merged.push(r),
        }
    }
    merged
}

/// Splits `0..size` into pieces of at most `chunk` bytes (a multiple of
/// the block size), for erase operations that report progress between them.
pub fn chunks(size: u64, chunk: u64) -> impl Iterator<Item = Range> {
    let chunk = chunk.max(1);
    (0..size.div_ceil(chunk)).map(move |i| {
        let start = i * chunk;
        Range {
            start,
            len: chunk.min(size - start),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn r(start: u64, len: u64) -> Range {
        Range { start, len }
    }

    #[test]
    fn a_bare_disk_loses_its_head_its_tail_and_the_btrfs_mirror() {
        assert_eq!(
            metadata_ranges(GIB, 512, &[]),
            [r(0, 4 * MIB), r(64 * MIB, 4096), r(GIB - MIB, MIB)]
        );
    }

    #[test]
    fn every_partition_loses_its_own_head_and_tail() {
        // A GPT disk: ESP at 1 MiB (512 MiB), root after it to the backup GPT.
        let disk = 10 * GIB;
        let esp = r(MIB, 512 * MIB);
        let root = r(513 * MIB, disk - 513 * MIB - MIB);
        let ranges = metadata_ranges(disk, 512, &[esp, root]);
        // The disk's head and the ESP's head merge (0 .. 5 MiB).
        assert_eq!(ranges[0], r(0, 5 * MIB));
        // The ESP's btrfs mirror (65 MiB), the disk's (64 MiB) beside it.
        assert!(ranges.contains(&r(64 * MIB, 4096)));
        assert!(ranges.contains(&r(65 * MIB, 4096)));
        // The ESP's tail and the root's head merge.
        assert!(ranges.contains(&r(512 * MIB, 5 * MIB)));
        assert!(ranges.contains(&r(513 * MIB + 64 * MIB, 4096)));
        // The root's tail ends where the disk's tail begins: one range.
        assert_eq!(*ranges.last().unwrap(), r(disk - 2 * MIB, 2 * MIB));
        // Sorted, disjoint, inside the disk.
        for pair in ranges.windows(2) {
            assert!(pair[0].end() < pair[1].start, "{ranges:?}");
        }
    }

    #[test]
    fn md_superblocks_at_the_end_fall_in_the_tail() {
        // md 0.90: the last 64 KiB-aligned 64 KiB block; 1.0: 8 KiB from the end.
        let size = 3 * GIB + 12345 * 512;
        let md090 = (size & !(64 * 1024 - 1)) - 64 * 1024;
        let md10 = (size - 8 * 1024) & !(4096 - 1);
        let ranges = metadata_ranges(size, 512, &[]);
        let covered = |at: u64| ranges.iter().any(|r| r.start <= at && at + 4096 <= r.end());
        assert!(covered(md090) && covered(md10), "{ranges:?}");
        assert!(covered(4096) && covered(0) && covered(32 * 1024));
    }

    #[test]
    fn the_256_gib_mirror_only_on_areas_that_hold_it() {
        let small = metadata_ranges(200 * GIB, 512, &[]);
        assert!(!small.iter().any(|r| r.start == 256 * GIB));
        let big = metadata_ranges(300 * GIB, 512, &[]);
        assert!(big.contains(&r(256 * GIB, 4096)));
    }

    #[test]
    fn tiny_areas_are_zeroed_whole_and_nothing_goes_past_the_end() {
        assert_eq!(metadata_ranges(3 * MIB, 512, &[]), [r(0, 3 * MIB)]);
        // A partition entry pointing past the end is clipped, not followed.
        let ranges = metadata_ranges(8 * MIB, 512, &[r(7 * MIB, 5 * MIB), r(9 * MIB, MIB)]);
        assert_eq!(ranges, [r(0, 4 * MIB), r(7 * MIB, MIB)]);
        assert_eq!(metadata_ranges(0, 512, &[]), []);
    }

    #[test]
    fn ranges_are_aligned_to_4k_blocks_outwards() {
        // A partition starting at an odd 512-byte sector on a 4Kn disk.
        let ranges = metadata_ranges(GIB, 4096, &[r(100 * MIB + 512, 10 * MIB)]);
        for range in &ranges {
            assert_eq!(range.start % 4096, 0);
            assert_eq!(range.len % 4096, 0);
        }
        assert!(ranges.contains(&r(100 * MIB, 4 * MIB + 4096)));
    }

    #[test]
    fn chunks_cover_the_device_exactly() {
        let pieces: Vec<Range> = chunks(10, 4).collect();
        assert_eq!(pieces, [r(0, 4), r(4, 4), r(8, 2)]);
        assert_eq!(chunks(0, 4).count(), 0);
        assert_eq!(chunks(8, 4).count(), 2);
    }
}
