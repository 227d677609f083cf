//! The qcow2 header (docs/interop/qcow2.txt in QEMU, "Header"): what a
//! deploy needs of it, and the refusals of what it cannot deploy.

use anyhow::{Result, bail};

/// `QFI\xfb`, the first four bytes of every qcow2 file.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// The bytes the header needs: version 3's fields up to compression_type.
pub const HEADER_PREFIX: usize = 112;
/// The largest cluster QEMU opens (2 MiB), and the smallest (512 bytes).
pub const MAX_CLUSTER_BITS: u32 = 21;
pub const MIN_CLUSTER_BITS: u32 = 9;
/// QEMU's limit on the active L1 table (`QCOW_MAX_L1_SIZE`): 32 MiB.
pub const MAX_L1_BYTES: u64 = 32 << 20;

/// Incompatible feature bits (header bytes 72..80).
const DIRTY: u64 = 1 << 0;
const CORRUPT: u64 = 1 << 1;
const EXTERNAL_DATA_FILE: u64 = 1 << 2;
const COMPRESSION_TYPE: u64 = 1 << 3;
const EXTENDED_L2: u64 = 1 << 4;
const KNOWN_INCOMPATIBLE: u64 =
    DIRTY | CORRUPT | EXTERNAL_DATA_FILE | COMPRESSION_TYPE | EXTENDED_L2;

/// How compressed clusters are compressed (header byte 104).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterCompression {
    /// Raw deflate (QEMU's `inflateInit2(-12)`), type 0.
    Deflate,
    /// One zstd frame per cluster, type 1.
    Zstd,
}

impl ClusterCompression {
    pub fn name(self) -> &'static str {
        match self {
            ClusterCompression::Deflate => "zlib",
            ClusterCompression::Zstd => "zstd",
        }
    }
}

/// The header fields a deploy reads; the rest (refcounts, snapshots,
/// bitmaps) concern writers of the file, not readers of its active image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// The virtual disk size: what the target receives.
    pub size: u64,
    pub l1_entries: u32,
    pub l1_offset: u64,
    pub compression: ClusterCompression,
    pub extended_l2: bool,
    /// Set by QEMU while the image is open for writing; only refcounts may
    /// be stale, and a reader never uses them.
    pub dirty: bool,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The fix for every image that needs more than itself to be read.
const FLATTEN: &str = "make a self-contained image with `qemu-img convert -O qcow2 IN OUT` \
                       (or `-O raw`) and deploy that";

impl Header {
    /// Parses the start of the file (at least [`HEADER_PREFIX`] bytes, or
    /// the whole file when shorter). Refuses, naming the field, what a
    /// streamed deploy cannot reproduce: a backing file, encryption, an
    /// external data file, a corrupt image, unknown incompatible features.
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        if !bytes.starts_with(&MAGIC) {
            bail!("not a qcow2 image: no QFI\\xfb magic");
        }
        if bytes.len() < 72 {
            bail!(
                "the qcow2 header is cut short: {} bytes, version 2's is 72",
                bytes.len()
            );
        }
        let version = be32(bytes, 4);
        if version != 2 && version != 3 {
            bail!("qcow2 version {version} is not supported (only 2 and 3 exist)");
        }
        let backing_file_offset = be64(bytes, 8);
        let cluster_bits = be32(bytes, 20);
        let size = be64(bytes, 24);
        let crypt_method = be32(bytes, 32);
        let l1_entries = be32(bytes, 36);
        let l1_offset = be64(bytes, 40);
        let (mut incompatible, mut compression_type) = (0, 0u8);
        if version == 3 {
            if bytes.len() < 104 {
                bail!(
                    "the qcow2 header is cut short: {} bytes, version 3's is at least 104",
                    bytes.len()
                );
            }
            incompatible = be64(bytes, 72);
            let header_length = be32(bytes, 100);
            if header_length < 104 {
                bail!("qcow2 header_length {header_length} is less than version 3's 104 bytes");
            }
            if header_length > 104 {
                compression_type = *bytes.get(104).ok_or_else(|| {
                    anyhow::anyhow!("the qcow2 header is cut short before compression_type")
                })?;
            }
        }
        if backing_file_offset != 0 {
            bail!(
                "the qcow2 image has a backing file (backing_file_offset={backing_file_offset}): \
                 it holds only the changes to another image; {FLATTEN}"
            );
        }
        if crypt_method != 0 {
            let how = match crypt_method {
                1 => "AES",
                2 => "LUKS",
                _ => "an unknown method",
            };
            bail!(
                "the qcow2 image is encrypted (crypt_method={crypt_method}, {how}): imprint has \
                 no key for it; decrypt it with `qemu-img convert --object secret,... \
                 --image-opts ... -O qcow2 OUT`"
            );
        }
        if incompatible & EXTERNAL_DATA_FILE != 0 {
            bail!(
                "the qcow2 image keeps its data in an external data file (incompatible feature \
                 bit 2): the file served holds only metadata; {FLATTEN}"
            );
        }
        if incompatible & CORRUPT != 0 {
            bail!(
                "the qcow2 image is marked corrupt (incompatible feature bit 1); check it with \
                 `qemu-img check -r all` and convert it again"
            );
        }
        let unknown = incompatible & !KNOWN_INCOMPATIBLE;
        if unknown != 0 {
            let bits: Vec<String> = (0..64)
                .filter(|bit| unknown & (1 << bit) != 0)
                .map(|bit| bit.to_string())
                .collect();
            bail!(
                "the qcow2 image uses incompatible features imprint does not know (bits {}); \
                 convert it with `qemu-img convert -O qcow2 -o compat=1.1 IN OUT`",
                bits.join(", ")
            );
        }
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            bail!(
                "qcow2 cluster_bits {cluster_bits} is outside {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS} \
                 (512 bytes to 2 MiB clusters)"
            );
        }
        let extended_l2 = incompatible & EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < 14 {
            bail!(
                "qcow2 extended L2 entries need clusters of at least 16 KiB, not {}",
                1u64 << cluster_bits
            );
        }
        let compression = match (incompatible & COMPRESSION_TYPE != 0, compression_type) {
            (false, 0) => ClusterCompression::Deflate,
            (true, 1) => ClusterCompression::Zstd,
            (false, t) => {
                bail!("qcow2 compression_type {t} without the compression type feature bit (3)")
            }
            (true, t) => bail!(
                "qcow2 compression_type {t} is not supported (0 zlib, 1 zstd); recompress it with \
                 `qemu-img convert -c -O qcow2 -o compression_type=zstd IN OUT`"
            ),
        };
        let header = Header {
            version,
            cluster_bits,
            size,
            l1_entries,
            l1_offset,
            compression,
            extended_l2,
            dirty: incompatible & DIRTY != 0,
        };
        let needed = header.l1_entries_needed();
        if u64::from(l1_entries) < needed {
            bail!(
                "qcow2 l1_size {l1_entries} maps less than the virtual size {size} \
                 ({needed} entries needed)"
            );
        }
        if u64::from(l1_entries) * 8 > MAX_L1_BYTES {
            bail!("qcow2 l1_size {l1_entries} is beyond QEMU's 32 MiB L1 table limit");
        }
        if l1_offset % header.cluster_size() != 0 || (needed > 0 && l1_offset == 0) {
            bail!("qcow2 l1_table_offset {l1_offset} is not a cluster boundary past the header");
        }
        Ok(header)
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Bytes per L2 entry: 8, or 16 with extended L2 entries.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2 { 16 } else { 8 }
    }

    /// Entries in one L2 table (one cluster).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Guest bytes one L2 table maps.
    pub fn l2_span(&self) -> u64 {
        self.l2_entries() << self.cluster_bits
    }

    /// Guest clusters in the virtual disk.
    pub fn guest_clusters(&self) -> u64 {
        self.size.div_ceil(self.cluster_size())
    }

    /// L1 entries the virtual size needs.
    pub fn l1_entries_needed(&self) -> u64 {
        self.guest_clusters().div_ceil(self.l2_entries())
    }

    /// The byte range of the L1 entries the virtual size needs.
    pub fn l1_bytes(&self) -> u64 {
        self.l1_entries_needed() * 8
    }

    /// For the log's `format:` line.
    pub fn describe(&self) -> String {
        format!(
            "qcow2 v{}, {} clusters{}, virtual size {}",
            self.version,
            crate::text::human_size(self.cluster_size()),
            if self.extended_l2 {
                ", extended L2"
            } else {
                ""
            },
            crate::text::human_size(self.size)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first 112 bytes of `qemu-img create -f qcow2 -o
    /// compression_type=zstd,extended_l2=on h.qcow2 1G` (QEMU 7.2), by `xxd`.
    const V3_ZSTD_EXTL2: &str = "5146 49fb 0000 0003 0000 0000 0000 0000
        0000 0000 0000 0010 0000 0000 4000 0000
        0000 0000 0000 0004 0000 0000 0003 0000
        0000 0000 0001 0000 0000 0001 0000 0000
        0000 0000 0000 0000 0000 0000 0000 0018
        0000 0000 0000 0000 0000 0000 0000 0000
        0000 0004 0000 0070 0100 0000 0000 0000";
    /// The first 72 bytes of `qemu-img create -f qcow2 -o compat=0.10
    /// v2.qcow2 100M`.
    const V2: &str = "5146 49fb 0000 0002 0000 0000 0000 0000
        0000 0000 0000 0010 0000 0000 0640 0000
        0000 0000 0000 0001 0000 0000 0003 0000
        0000 0000 0001 0000 0000 0001 0000 0000
        0000 0000 0000 0000";

    fn bytes(hex: &str) -> Vec<u8> {
        let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    fn error(bytes: &[u8]) -> String {
        format!("{:#}", Header::parse(bytes).unwrap_err())
    }

    #[test]
    fn a_version_3_header_from_qemu_img() {
        let header = Header::parse(&bytes(V3_ZSTD_EXTL2)).unwrap();
        assert_eq!(
            header,
            Header {
                version: 3,
                cluster_bits: 16,
                size: 1 << 30,
                l1_entries: 4,
                l1_offset: 0x30000,
                compression: ClusterCompression::Zstd,
                extended_l2: true,
                dirty: false,
            }
        );
        // 16-byte entries: 4096 per table, 256 MiB each, 4 for 1 GiB.
        assert_eq!(header.l2_entries(), 4096);
        assert_eq!(header.l2_span(), 256 << 20);
        assert_eq!(header.l1_entries_needed(), 4);
        assert_eq!(header.l1_bytes(), 32);
    }

    #[test]
    fn a_version_2_header_from_qemu_img() {
        let v2 = bytes(V2);
        assert_eq!(v2.len(), 72);
        let header = Header::parse(&v2).unwrap();
        assert_eq!(header.version, 2);
        assert_eq!(header.size, 100 << 20);
        assert_eq!(header.l1_entries, 1);
        assert_eq!(header.compression, ClusterCompression::Deflate);
        assert!(!header.extended_l2);
        assert_eq!(header.l2_entries(), 8192);
    }

    #[test]
    fn refusals_name_the_field_and_the_fix() {
        let good = bytes(V3_ZSTD_EXTL2);
        let with = |at: usize, value: &[u8]| {
            let mut b = good.clone();
            b[at..at + value.len()].copy_from_slice(value);
            b
        };
        let e = error(&with(8, &[0, 0, 0, 0, 0, 0, 1, 0x20]));
        assert!(e.contains("backing file (backing_file_offset=288)"), "{e}");
        assert!(e.contains("qemu-img convert -O qcow2 IN OUT"), "{e}");
        let e = error(&with(32, &[0, 0, 0, 2]));
        assert!(e.contains("encrypted (crypt_method=2, LUKS)"), "{e}");
        let e = error(&with(32, &[0, 0, 0, 1]));
        assert!(e.contains("crypt_method=1, AES"), "{e}");
        let e = error(&with(79, &[0x1c]));
        assert!(
            e.contains("external data file (incompatible feature bit 2)"),
            "{e}"
        );
        let e = error(&with(79, &[0x1a]));
        assert!(e.contains("marked corrupt"), "{e}");
        let e = error(&with(78, &[0x81]));
        assert!(e.contains("(bits 8, 15)"), "{e}");
        let e = error(&with(20, &[0, 0, 0, 22]));
        assert!(e.contains("cluster_bits 22"), "{e}");
        let e = error(&with(104, &[2]));
        assert!(e.contains("compression_type 2 is not supported"), "{e}");
        let e = error(&with(79, &[0x10]));
        assert!(e.contains("compression_type 1 without"), "{e}");
        let e = error(&with(4, &[0, 0, 0, 4]));
        assert!(e.contains("version 4"), "{e}");
        let e = error(&with(36, &[0, 0, 0, 3]));
        assert!(e.contains("l1_size 3 maps less"), "{e}");
        let e = error(&with(44, &[0, 3, 2, 0]));
        assert!(e.contains("not a cluster boundary"), "{e}");
        assert!(error(&good[..100]).contains("cut short"));
        assert!(error(b"QFI").contains("no QFI"));
        // Dirty (bit 0): only refcounts may be stale; the image reads fine.
        assert!(Header::parse(&with(79, &[0x19])).unwrap().dirty);
    }
}
