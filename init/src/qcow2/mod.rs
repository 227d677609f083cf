//! qcow2 images streamed to the disk without staging the file.
//!
//! Cloud images are published as qcow2 (Ubuntu's `.img` files are qcow2
//! too). imprint reads one straight onto the disk, in this order:
//!
//! 1. **Header**, from the first bytes of the one sequential `GET` of the
//!    file (the same bytes the served checksum covers): version 2 or 3,
//!    the cluster size, the virtual size (the image size for the fit
//!    check, before anything is written), the compression type, extended
//!    L2 entries. A backing file, encryption, an external data file, a
//!    corrupt flag or an unknown incompatible feature is refused by name
//!    ([`header`]), before anything is written.
//! 2. **L1 table**, by one Range request (`source::fetch_range`), also
//!    before anything is written: a server that ignores Range is refused
//!    here. Its bytes are compared with the same offsets of the stream
//!    when the stream passes them: a file that changed between the two
//!    reads fails the deploy (fail closed).
//! 3. **Guest clusters in guest order**, from the stream ([`stream`]):
//!    each L2 table (one cluster, the only table held at a time) is read
//!    from the stream when it lies ahead (within 16 MiB; else by Range,
//!    checked against the stream later); each data cluster is read when
//!    the stream reaches it, skipping what lies between. `qemu-img
//!    convert` lays the file out as L2 table, then the data it maps, in
//!    guest order, so this is one pass over the file with bounded memory.
//!    Clusters of the current table's range that the stream passes before
//!    their turn (`qemu-img convert -c` writes a few out of order) are kept
//!    as they pass, up to 32 MiB, and the last 8 MiB the stream skipped are
//!    kept too. A cluster the stream passed further back, before its table
//!    was known, is read again by Range, never buffered; such bytes are not
//!    covered by the served checksum (a warning says so). Unallocated and zero
//!    clusters are zeros to the writer, whose zero-run handling skips them
//!    on a file or zeroes them on a disk, so the target reads back as
//!    `qemu-img convert -O raw` would write it. Compressed clusters
//!    (deflate, or zstd with `compression_type=1`) are decoded on every
//!    core by the ordered-parallel engine, in order, under its budget.
//! 4. **The rest of the file** (refcounts, snapshot tables) is read to its
//!    end, so the served checksum covers every byte; the checksum is then
//!    checked, as for every image, before the first MiB is written.

pub mod header;
pub mod stream;
pub mod table;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};

pub use header::{ClusterCompression, Header, MAGIC};
use stream::{Qcow2Stats, RangeSource};

use crate::pipeline::ordered::{OrderedConfig, OrderedDecoder};
use crate::source::{self, SourceOptions};

/// Whether the served bytes start with the qcow2 magic.
pub fn is_qcow2(prefix: &[u8]) -> bool {
    prefix.starts_with(&MAGIC)
}

/// A qcow2 file opened for streaming: its header and the guest image.
pub struct Opened {
    pub header: Header,
    /// The guest image, `header.size` bytes, in order.
    pub image: OrderedDecoder,
    pub stats: Arc<Qcow2Stats>,
}

impl Opened {
    /// The result line's `format=`: `qcow2`, or `qcow2+zlib` / `qcow2+zstd`
    /// when compressed clusters were decoded. Read after the image.
    pub fn name_of(header: &Header, stats: &Qcow2Stats) -> String {
        if stats.compressed.load(Ordering::Relaxed) > 0 {
            format!("qcow2+{}", header.compression.name())
        } else {
            "qcow2".to_owned()
        }
    }
}

/// Parses the header from `prefix` (the stream's first bytes, which
/// `stream` still yields from byte 0), reads the L1 table through `ranges`
/// and starts the guest image. Everything refused is refused here, before
/// the caller writes anything.
pub fn open(
    prefix: &[u8],
    stream: Box<dyn Read + Send>,
    file_len: Option<u64>,
    mut ranges: Box<dyn RangeSource>,
    config: OrderedConfig,
) -> Result<Opened> {
    let header = Header::parse(prefix)?;
    if header.size == 0 {
        bail!("the qcow2 image's virtual size is 0: nothing to write");
    }
    let l1_len = header.l1_bytes();
    if let Some(file_len) = file_len
        && header.l1_offset.saturating_add(l1_len) > file_len
    {
        bail!(
            "the qcow2 L1 table (bytes {}..{}) lies past the end of the {file_len}-byte file: \
             is it truncated?",
            header.l1_offset,
            header.l1_offset + l1_len
        );
    }
    let l1 = ranges
        .read_at(header.l1_offset, l1_len)
        .context("reading the qcow2 L1 table")?;
    if l1.len() as u64 != l1_len {
        bail!(
            "the qcow2 L1 table at byte {} is cut short: {} of {l1_len} bytes; is the file \
             truncated?",
            header.l1_offset,
            l1.len()
        );
    }
    for (index, entry) in l1.chunks_exact(8).enumerate() {
        let entry = u64::from_be_bytes(entry.try_into().expect("8 bytes"));
        table::l1_entry(&header, entry, index as u64)?;
    }
    let (image, stats) = stream::guest_image(header.clone(), l1, file_len, stream, ranges, config);
    Ok(Opened {
        header,
        image,
        stats,
    })
}

/// Random access to an image URL: HTTP Range requests or file seeks, or
/// the opened source's own [`source::RangeAccess`] (an `oci://` blob, read
/// where it streams from and with the registry's token).
pub struct UrlRanges {
    pub url: String,
    pub options: SourceOptions,
    pub access: Option<source::RangeAccess>,
}

impl RangeSource for UrlRanges {
    fn read_at(&mut self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        match &self.access {
            Some(access) => access.read_at(offset, len),
            None => source::fetch_range(&self.url, offset, len, &self.options),
        }
        .map_err(|e| std::io::Error::other(format!("{e:#}")))
    }
}
