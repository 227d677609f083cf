//! L1 and L2 entries (docs/interop/qcow2.txt in QEMU, "Cluster mapping"
//! and "Extended L2 Entries"), decoded into what a guest cluster reads as.

use anyhow::{Result, bail};

use super::header::Header;

/// Bits 9..=55 of an L1 entry or standard L2 entry: a host cluster offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COMPRESSED: u64 = 1 << 62;
/// Bit 0 of a standard cluster descriptor: the cluster reads as zeros
/// (version 3 without extended L2 entries only).
const ZERO: u64 = 1;
/// Subclusters per cluster with extended L2 entries.
pub const SUBCLUSTERS: u32 = 32;

/// The host offset of the L2 table an L1 entry points to; `None` when the
/// whole range it maps is unallocated.
pub fn l1_entry(header: &Header, entry: u64, index: u64) -> Result<Option<u64>> {
    let offset = entry & OFFSET_MASK;
    if offset == 0 {
        return Ok(None);
    }
    if offset % header.cluster_size() != 0 {
        bail!("qcow2 L1 entry {index} points to {offset:#x}, not a cluster boundary");
    }
    Ok(Some(offset))
}

/// What a guest cluster reads as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Unallocated (no backing file: zeros) or the zero flag.
    Zero,
    /// A whole cluster at this host offset.
    Data(u64),
    /// Compressed bytes at `offset`, at most `len` of them (the last
    /// sector's tail may belong to the next cluster).
    Compressed { offset: u64, len: u64 },
    /// Extended L2: per subcluster, data at `offset + i * subcluster`
    /// where bit i of `allocated` is set, zeros elsewhere.
    Subclusters { offset: u64, allocated: u32 },
}

/// Decodes L2 entry `index` of `table` (one cluster of L2 entries).
pub fn l2_entry(header: &Header, table: &[u8], index: u64) -> Result<Cluster> {
    let at = usize::try_from(index * header.l2_entry_size()).expect("inside one cluster");
    let entry = u64::from_be_bytes(table[at..at + 8].try_into().expect("8 bytes"));
    if entry & COMPRESSED != 0 {
        // x = 62 - (cluster_bits - 8): bits 0..x the byte offset, bits
        // x..62 the sectors beyond the first (QEMU's `csize_shift`).
        let shift = 62 - (header.cluster_bits - 8);
        let offset = entry & ((1 << shift) - 1);
        let sectors = ((entry >> shift) & ((1 << (header.cluster_bits - 8)) - 1)) + 1;
        let len = sectors * 512 - (offset & 511);
        if offset == 0 {
            bail!("qcow2 L2 entry {index}: a compressed cluster at host offset 0");
        }
        return Ok(Cluster::Compressed { offset, len });
    }
    let offset = entry & OFFSET_MASK;
    if offset % header.cluster_size() != 0 {
        bail!("qcow2 L2 entry {index} points to {offset:#x}, not a cluster boundary");
    }
    if header.extended_l2 {
        let bitmap = u64::from_be_bytes(table[at + 8..at + 16].try_into().expect("8 bytes"));
        let allocated = u32::try_from(bitmap & 0xffff_ffff).expect("32 bits");
        let zeros = u32::try_from(bitmap >> 32).expect("32 bits");
        if allocated & zeros != 0 {
            bail!(
                "qcow2 L2 entry {index}: subclusters {:#x} are both allocated and zero",
                allocated & zeros
            );
        }
        if allocated == 0 {
            return Ok(Cluster::Zero);
        }
        if offset == 0 {
            bail!("qcow2 L2 entry {index}: allocated subclusters without a host cluster");
        }
        if allocated == u32::MAX {
            return Ok(Cluster::Data(offset));
        }
        return Ok(Cluster::Subclusters { offset, allocated });
    }
    if header.version >= 3 && entry & ZERO != 0 {
        return Ok(Cluster::Zero);
    }
    if offset == 0 {
        return Ok(Cluster::Zero);
    }
    Ok(Cluster::Data(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qcow2::header::ClusterCompression;

    fn header(version: u32, cluster_bits: u32, extended_l2: bool) -> Header {
        Header {
            version,
            cluster_bits,
            size: 1 << 30,
            l1_entries: 64,
            l1_offset: 1 << cluster_bits,
            compression: ClusterCompression::Deflate,
            extended_l2,
            dirty: false,
        }
    }

    fn decode(h: &Header, entry: u64, bitmap: Option<u64>) -> Result<Cluster> {
        let mut table = entry.to_be_bytes().to_vec();
        if let Some(bitmap) = bitmap {
            table.extend_from_slice(&bitmap.to_be_bytes());
        }
        l2_entry(h, &table, 0)
    }

    #[test]
    fn compressed_descriptors_follow_the_spec_formula() {
        // 64 KiB clusters: x = 62 - 8 = 54; 3 more sectors; the offset's
        // sector starts 0x145 = 325 bytes before it: 4 * 512 - 325.
        let h = header(3, 16, false);
        let entry = (1 << 62) | (3 << 54) | 0x12345;
        assert_eq!(
            decode(&h, entry, None).unwrap(),
            Cluster::Compressed {
                offset: 0x12345,
                len: 1723
            }
        );
        // 2 MiB clusters: x = 49; the 13-bit count at its maximum.
        let h = header(3, 21, false);
        let entry = (1 << 62) | (0x1fff << 49) | 0x200;
        assert_eq!(
            decode(&h, entry, None).unwrap(),
            Cluster::Compressed {
                offset: 0x200,
                len: 8192 * 512
            }
        );
        // Extended L2: compressed clusters ignore the bitmap.
        let h = header(3, 16, true);
        assert!(matches!(
            decode(&h, (1 << 62) | 0x10000, Some(0)).unwrap(),
            Cluster::Compressed {
                offset: 0x10000,
                ..
            }
        ));
    }

    #[test]
    fn standard_entries_zero_flags_and_unallocated() {
        let v3 = header(3, 16, false);
        let copied = 1 << 63;
        assert_eq!(
            decode(&v3, copied | 0x50000, None).unwrap(),
            Cluster::Data(0x50000)
        );
        assert_eq!(decode(&v3, copied | 0x50001, None).unwrap(), Cluster::Zero);
        assert_eq!(decode(&v3, 1, None).unwrap(), Cluster::Zero);
        assert_eq!(decode(&v3, 0, None).unwrap(), Cluster::Zero);
        // Version 2 has no zero flag: bit 0 is reserved.
        let v2 = header(2, 16, false);
        assert_eq!(decode(&v2, 0x50001, None).unwrap(), Cluster::Data(0x50000));
        let e = decode(&v3, 0x50200, None).unwrap_err().to_string();
        assert!(e.contains("0x50200, not a cluster boundary"), "{e}");
    }

    #[test]
    fn extended_entries_map_subclusters() {
        let h = header(3, 16, true);
        let data = 0x70000;
        assert_eq!(
            decode(&h, data, Some(u64::from(u32::MAX))).unwrap(),
            Cluster::Data(data)
        );
        assert_eq!(
            decode(&h, data, Some(0b1010)).unwrap(),
            Cluster::Subclusters {
                offset: data,
                allocated: 0b1010
            }
        );
        // All zero, or unallocated (no backing file: zeros too).
        assert_eq!(
            decode(&h, 0, Some(0xffff_ffff << 32)).unwrap(),
            Cluster::Zero
        );
        assert_eq!(decode(&h, data, Some(0)).unwrap(), Cluster::Zero);
        let e = decode(&h, data, Some((1 << 33) | 0b10))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both allocated and zero"), "{e}");
        let e = decode(&h, 0, Some(1)).unwrap_err().to_string();
        assert!(e.contains("without a host cluster"), "{e}");
    }

    #[test]
    fn l1_entries() {
        let h = header(3, 16, false);
        assert_eq!(l1_entry(&h, 0, 0).unwrap(), None);
        assert_eq!(l1_entry(&h, (1 << 63) | 0x40000, 0).unwrap(), Some(0x40000));
        let e = l1_entry(&h, 0x40200, 5).unwrap_err().to_string();
        assert!(e.contains("L1 entry 5"), "{e}");
    }
}
