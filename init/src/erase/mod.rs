//! Erasing disks before a machine changes hands: signatures (`metadata`),
//! `discard`, `zero`, and the device's own erase (`secure`: NVMe Sanitize or
//! Format NVM, ATA Security Erase, SCSI SANITIZE), chosen per disk by a pure
//! plan and verified by sampled reads.
//!
//! ```text
//! plan (which disks, which mode; printed before anything runs)
//!   -> per disk: read its partitions -> erase -> sync -> re-read -> verify by reading back
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pipeline::progress::Progress;

pub mod ata;
pub mod device;
pub mod method;
pub mod nvme;
pub mod plan;
pub mod scsi;
pub mod secure;
pub mod wipe;

pub use device::{EraseDevice, EraseTarget};
use method::SecureMethod;
pub use plan::{EraseDisks, Method, Mode, PlannedErase, choose_disks, decide};
use secure::AfterErase;
use wipe::Range;

/// Zero and discard go in pieces of this size, with progress between.
const CHUNK: u64 = 256 << 20;
/// How often a long erase logs how far it is.
const LOG_EVERY: Duration = Duration::from_secs(2);
/// How many pieces of the device a zero erase reads back, besides its
/// first and last MiB.
const SAMPLES: u64 = 64;
/// The size of each sampled read.
const SAMPLE_LEN: u64 = 64 << 10;

/// What the read-back found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// These bytes (the whole metadata ranges, or samples spread over the
    /// device) read back as zeros.
    Zeros { bytes: u64, places: usize },
    /// Nothing promises what the rest reads back as: why, and what was
    /// checked instead.
    Partly { why: String, bytes: u64 },
}

/// One disk, erased.
#[derive(Debug, Clone, PartialEq)]
pub struct Erased {
    pub disk: String,
    pub method: String,
    pub elapsed: Duration,
    pub verified: Verified,
}

impl Erased {
    /// `vda:zero:12.30s:verified`, for the result line.
    pub fn token(&self) -> String {
        let verified = match self.verified {
            Verified::Zeros { .. } => "verified",
            Verified::Partly { .. } => "partly-verified",
        };
        format!(
            "{}:{}:{:.2}s:{verified}",
            self.disk.trim_start_matches("/dev/"),
            self.method,
            self.elapsed.as_secs_f64()
        )
    }
}

impl fmt::Display for Erased {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} erased ({}) in {:.1} s; ",
            self.disk,
            self.method,
            self.elapsed.as_secs_f64()
        )?;
        match &self.verified {
            Verified::Zeros { bytes, places } => write!(
                f,
                "verified: {} at {places} places read back as zeros",
                crate::text::human_size(*bytes)
            ),
            Verified::Partly { why, bytes } => write!(
                f,
                "{} of signatures read back as zeros; {why}",
                crate::text::human_size(*bytes)
            ),
        }
    }
}

/// The device's own erase of one disk, run by the caller (over
/// [`secure::run_secure`] for a real disk): reports progress, says what the
/// disk reads back as afterwards.
pub type DeviceErase<'a> = dyn FnMut(SecureMethod, &mut dyn Progress) -> Result<AfterErase> + 'a;

/// Erases one disk by `method`, reporting bytes done through `progress`.
/// `partitions` are the byte ranges of its partitions (read by
/// [`partitions_of`] before anything is erased); `device_erase` runs a
/// [`Method::Device`] erase.
pub fn erase(
    dev: &mut dyn EraseTarget,
    method: Method,
    partitions: &[Range],
    progress: &mut dyn Progress,
    device_erase: &mut DeviceErase<'_>,
) -> Result<Erased> {
    let name = dev.describe();
    let started = Instant::now();
    let size = dev.size();
    let block = dev.logical_block_size();
    let metadata = wipe::metadata_ranges(size, block, partitions);
    // Where nothing promises what the disk reads back as, the signatures
    // are zeroed on top: old blocks (or a crypto erase's noise) must not
    // look like a filesystem to the next OS.
    let signatures_on_top = |dev: &mut dyn EraseTarget, why: &str| -> Result<Verified> {
        zero_ranges(dev, &metadata)?;
        finish(dev)?;
        Ok(Verified::Partly {
            why: why.to_owned(),
            bytes: check_zeros(dev, &metadata)?,
        })
    };
    let (token, verified) = match method {
        Method::Metadata => {
            zero_ranges(dev, &metadata)?;
            progress.update(size, Some(size));
            finish(dev)?;
            ("metadata".to_owned(), zeros_verified(dev, &metadata)?)
        }
        Method::Zero => {
            each_chunk(dev, "zeroed", progress, |dev, r| dev.zero(r))
                .with_context(|| format!("zeroing {name}"))?;
            finish(dev)?;
            (
                "zero".to_owned(),
                zeros_verified(dev, &samples(size, block))?,
            )
        }
        Method::Discard { zeroes } => {
            each_chunk(dev, "discarded", progress, |dev, r| dev.discard(r)).map_err(|e| {
                if crate::sys::block::is_unsupported(&e) {
                    anyhow::anyhow!(
                        "{name} does not support discard ({e}); use imprint.erase=zero or metadata"
                    )
                } else {
                    anyhow::Error::new(e).context(format!("discarding {name}"))
                }
            })?;
            if zeroes {
                finish(dev)?;
                (
                    "discard".to_owned(),
                    zeros_verified(dev, &samples(size, block))?,
                )
            } else {
                let why = "the device does not promise that discarded blocks read back as zeros";
                ("discard+metadata".to_owned(), signatures_on_top(dev, why)?)
            }
        }
        Method::Device(m) => {
            let after = device_erase(m, progress).with_context(|| format!("{m} of {name}"))?;
            let verified = match after {
                AfterErase::Zeroes => {
                    finish(dev)?;
                    zeros_verified(dev, &samples(size, block))?
                }
                AfterErase::Unspecified => signatures_on_top(
                    dev,
                    "the device's erase promises no pattern to read back; signatures zeroed on top",
                )?,
            };
            (m.token(), verified)
        }
    };
    Ok(Erased {
        disk: name,
        method: token,
        elapsed: started.elapsed(),
        verified,
    })
}

fn zero_ranges(dev: &mut dyn EraseTarget, ranges: &[Range]) -> Result<()> {
    for r in ranges {
        dev.zero(*r).with_context(|| {
            format!(
                "zeroing {} bytes at {} of {}",
                r.len,
                r.start,
                dev.describe()
            )
        })?;
    }
    Ok(())
}

/// Runs `op` over the whole device in [`CHUNK`]s, reporting progress after
/// each and logging `vda: zeroed 1.0 GiB of 4.0 GiB (25%) in 3 s` every
/// [`LOG_EVERY`].
fn each_chunk(
    dev: &mut dyn EraseTarget,
    verb: &str,
    progress: &mut dyn Progress,
    mut op: impl FnMut(&mut dyn EraseTarget, Range) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let size = dev.size();
    let name = dev.describe();
    let started = Instant::now();
    let mut logged = started;
    progress.update(0, Some(size));
    for r in wipe::chunks(size, CHUNK) {
        op(dev, r)?;
        progress.update(r.end(), Some(size));
        if logged.elapsed() >= LOG_EVERY || r.end() == size {
            logged = Instant::now();
            log::info!(
                "{name}: {verb} {} of {} ({}%) in {} s",
                crate::text::human_size(r.end()),
                crate::text::human_size(size),
                r.end().saturating_mul(100) / size.max(1),
                started.elapsed().as_secs()
            );
        }
    }
    Ok(())
}

/// Flushes, then makes the kernel drop the partitions that were erased.
fn finish(dev: &mut dyn EraseTarget) -> Result<()> {
    let name = dev.describe();
    dev.sync().with_context(|| format!("syncing {name}"))?;
    if let Err(e) = dev.reread_partitions() {
        log::warn!("{name}: re-reading the partition table: {e}");
    }
    Ok(())
}

/// The first and last MiB and [`SAMPLES`] reads spread evenly between.
fn samples(size: u64, block: u32) -> Vec<Range> {
    let block = u64::from(block.max(1));
    let mut ranges = vec![
        Range {
            start: 0,
            len: (1 << 20).min(size),
        },
        Range {
            start: size.saturating_sub(1 << 20),
            len: (1 << 20).min(size),
        },
    ];
    if size > SAMPLE_LEN {
        let span = size - SAMPLE_LEN;
        for i in 1..=SAMPLES {
            let at = span / (SAMPLES + 1) * i / block * block;
            ranges.push(Range {
                start: at,
                len: SAMPLE_LEN,
            });
        }
    }
    ranges.sort_by_key(|r| r.start);
    ranges.dedup();
    ranges
}

/// [`check_zeros`], as what the read-back verified.
fn zeros_verified(dev: &mut dyn EraseTarget, ranges: &[Range]) -> Result<Verified> {
    Ok(Verified::Zeros {
        bytes: check_zeros(dev, ranges)?,
        places: ranges.len(),
    })
}

/// Reads `ranges` back; every byte must be zero. Gives the bytes read.
fn check_zeros(dev: &mut dyn EraseTarget, ranges: &[Range]) -> Result<u64> {
    let name = dev.describe();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0;
    for r in ranges {
        let mut at = r.start;
        while at < r.end() {
            let n = usize::try_from(r.end() - at).map_or(buf.len(), |left| left.min(buf.len()));
            dev.read_at(&mut buf[..n], at)
                .with_context(|| format!("reading back {n} bytes at {at} of {name}"))?;
            if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                bail!(
                    "{name}: byte {} reads back as {:#04x} after the erase; the device did not \
                     erase it",
                    at + i as u64,
                    buf[i]
                );
            }
            at += n as u64;
            bytes += n as u64;
        }
    }
    Ok(bytes)
}

/// The byte ranges of the partitions on `dev`, from its GPT or MBR; none
/// when it has no table (or one too broken to read, which is logged).
pub fn partitions_of(dev: &mut dyn EraseTarget) -> Vec<Range> {
    let size = dev.size();
    let block = dev.logical_block_size();
    let mut read_at = |at: u64, buf: &mut [u8]| dev.read_at(buf, at);
    match crate::disk::partitions::read_partition_table(&mut read_at, size, Some(block)) {
        Ok(table) => table
            .partitions
            .iter()
            .map(|p| Range {
                start: p.first_lba * u64::from(table.block_size),
                len: p.size_bytes,
            })
            .collect(),
        Err(e) => {
            log::info!("no partition table read: {e:#}");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::device::memory::{MemoryDisk, Op};
    use super::*;
    use crate::pipeline::progress::NoProgress;

    const MIB: usize = 1 << 20;

    fn no_device(m: SecureMethod, _: &mut dyn Progress) -> Result<AfterErase> {
        panic!("no device erase was planned, yet {m} ran")
    }

    #[derive(Default)]
    struct Seen(Vec<(u64, Option<u64>)>);
    impl Progress for Seen {
        fn update(&mut self, done: u64, total: Option<u64>) {
            self.0.push((done, total));
        }
    }

    #[test]
    fn metadata_zeroes_heads_and_tails_and_leaves_the_middle() {
        let mut disk = MemoryDisk::new(64 * MIB, 0xa5);
        let part = Range {
            start: 8 << 20,
            len: 32 << 20,
        };
        let done = erase(
            &mut disk,
            Method::Metadata,
            &[part],
            &mut NoProgress,
            &mut no_device,
        )
        .unwrap();
        assert_eq!(done.method, "metadata");
        assert!(disk.data[..4 * MIB].iter().all(|&b| b == 0));
        assert!(disk.data[8 * MIB..12 * MIB].iter().all(|&b| b == 0));
        assert!(disk.data[39 * MIB..40 * MIB].iter().all(|&b| b == 0));
        assert!(disk.data[63 * MIB..].iter().all(|&b| b == 0));
        assert!(disk.data[20 * MIB..30 * MIB].iter().all(|&b| b == 0xa5));
        assert!(
            matches!(done.verified, Verified::Zeros { places: 4, .. }),
            "{done}"
        );
        // Synced and re-read after the last zeroing, before the read-back.
        let tail: Vec<&Op> = disk.ops.iter().rev().take(2).collect();
        assert_eq!(tail, [&Op::Reread, &Op::Sync]);
    }

    #[test]
    fn zero_covers_everything_with_progress_to_the_end() {
        let mut disk = MemoryDisk::new(3 * MIB + 4096, 0xff);
        let mut seen = Seen::default();
        let done = erase(&mut disk, Method::Zero, &[], &mut seen, &mut no_device).unwrap();
        assert!(disk.data.iter().all(|&b| b == 0));
        let size = disk.data.len() as u64;
        assert_eq!(seen.0.first(), Some(&(0, Some(size))));
        assert_eq!(seen.0.last(), Some(&(size, Some(size))));
        assert!(done.token().starts_with("mem0:zero:"), "{}", done.token());
        assert!(done.token().ends_with(":verified"));
    }

    /// A device whose zeroing silently skips a block is caught by the read-back.
    struct Lying(MemoryDisk);
    impl EraseTarget for Lying {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn logical_block_size(&self) -> u32 {
            512
        }
        fn zero(&mut self, range: Range) -> std::io::Result<()> {
            self.0.zero(range)?;
            // The block at 1 MiB keeps its old contents.
            if range.start <= 1 << 20 && range.end() > 1 << 20 {
                self.0.data[MIB] = 0x42;
            }
            Ok(())
        }
        fn discard(&mut self, range: Range) -> std::io::Result<()> {
            self.0.discard(range)
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            self.0.read_at(buf, offset)
        }
        fn sync(&mut self) -> std::io::Result<()> {
            self.0.sync()
        }
        fn reread_partitions(&mut self) -> std::io::Result<()> {
            self.0.reread_partitions()
        }
    }

    #[test]
    fn a_block_that_was_not_erased_is_a_named_error() {
        for mode in [Method::Metadata, Method::Zero] {
            let mut disk = Lying(MemoryDisk::new(16 * MIB, 0x11));
            let e = format!(
                "{:#}",
                erase(&mut disk, mode, &[], &mut NoProgress, &mut no_device).unwrap_err()
            );
            assert!(
                e.contains("/dev/mem0: byte 1048576 reads back as 0x42"),
                "{mode}: {e}"
            );
        }
    }

    #[test]
    fn discard_without_a_zero_promise_still_zeroes_the_signatures() {
        let mut disk = MemoryDisk::new(16 * MIB, 0x33);
        // Discarded blocks keep their old contents on this device.
        disk.discard_fill = None;
        let done = erase(
            &mut disk,
            Method::Discard { zeroes: false },
            &[],
            &mut NoProgress,
            &mut no_device,
        )
        .unwrap();
        assert_eq!(done.method, "discard+metadata");
        assert!(matches!(done.verified, Verified::Partly { .. }));
        assert!(disk.data[..4 * MIB].iter().all(|&b| b == 0));
        assert!(disk.data[15 * MIB..].iter().all(|&b| b == 0));
        assert!(disk.data[8 * MIB] == 0x33);
        assert!(disk.ops.contains(&Op::Discard(Range {
            start: 0,
            len: 16 << 20
        })));
    }

    #[test]
    fn discard_with_a_zero_promise_is_checked_by_samples() {
        let mut disk = MemoryDisk::new(16 * MIB, 0x33);
        let done = erase(
            &mut disk,
            Method::Discard { zeroes: true },
            &[],
            &mut NoProgress,
            &mut no_device,
        )
        .unwrap();
        assert_eq!(done.method, "discard");
        assert!(matches!(done.verified, Verified::Zeros { places, .. } if places > 60));
        // A device that promised but did not deliver is caught.
        let mut liar = MemoryDisk::new(16 * MIB, 0x33);
        liar.discard_fill = None;
        let e = erase(
            &mut liar,
            Method::Discard { zeroes: true },
            &[],
            &mut NoProgress,
            &mut no_device,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("reads back as 0x33"), "{e:#}");
    }

    #[test]
    fn a_device_without_discard_gets_a_hint() {
        let mut disk = MemoryDisk::new(4 * MIB, 0);
        disk.discard_errno = Some(libc::EOPNOTSUPP);
        let e = format!(
            "{:#}",
            erase(
                &mut disk,
                Method::Discard { zeroes: false },
                &[],
                &mut NoProgress,
                &mut no_device
            )
            .unwrap_err()
        );
        assert!(
            e.contains("/dev/mem0 does not support discard") && e.contains("imprint.erase=zero"),
            "{e}"
        );
    }

    #[test]
    fn a_device_erase_is_read_back_only_where_it_promises_zeros() {
        use crate::erase::method::{EraseAction, FormatErase};
        // Format NVM (user data erase) promises zeros: sampled.
        let mut disk = MemoryDisk::new(16 * MIB, 0x77);
        let mut ran = Vec::new();
        let mut format = |m: SecureMethod, p: &mut dyn Progress| {
            ran.push(m);
            p.update(1, Some(2));
            Ok(AfterErase::Zeroes)
        };
        // The fake device does not erase: the read-back must catch it.
        let method = Method::Device(SecureMethod::NvmeFormat(FormatErase::UserData));
        let e = erase(&mut disk, method, &[], &mut NoProgress, &mut format).unwrap_err();
        assert!(format!("{e:#}").contains("reads back as 0x77"), "{e:#}");
        disk.data.fill(0);
        let done = erase(&mut disk, method, &[], &mut NoProgress, &mut format).unwrap();
        assert_eq!(done.method, "nvme-format-user-data");
        assert!(matches!(done.verified, Verified::Zeros { .. }));
        assert_eq!(ran.len(), 2);
        // A crypto erase promises nothing: signatures zeroed on top, the
        // rest left as the device made it.
        let mut disk = MemoryDisk::new(16 * MIB, 0x77);
        let mut crypto = |_: SecureMethod, _: &mut dyn Progress| Ok(AfterErase::Unspecified);
        let method = Method::Device(SecureMethod::NvmeSanitize(EraseAction::Crypto));
        let done = erase(&mut disk, method, &[], &mut NoProgress, &mut crypto).unwrap();
        assert_eq!(done.method, "nvme-sanitize-crypto");
        assert!(matches!(done.verified, Verified::Partly { .. }));
        assert!(done.token().ends_with(":partly-verified"));
        assert!(disk.data[..4 * MIB].iter().all(|&b| b == 0));
        assert_eq!(disk.data[8 * MIB], 0x77);
        // A device erase that fails names the method and the disk.
        let mut failing = |_: SecureMethod, _: &mut dyn Progress| -> Result<AfterErase> {
            bail!("Invalid Field")
        };
        let e = erase(&mut disk, method, &[], &mut NoProgress, &mut failing).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "NVMe Sanitize (crypto erase) of /dev/mem0: Invalid Field"
        );
    }

    #[test]
    fn samples_spread_over_the_device_aligned() {
        let size = 10u64 << 30;
        let s = samples(size, 4096);
        assert_eq!(s.len(), 66);
        assert_eq!(s[0].start, 0);
        assert_eq!(s.last().unwrap().end(), size);
        for r in &s {
            assert_eq!(r.start % 4096, 0);
            assert!(r.end() <= size);
        }
        // Small devices: no sample reads past the end.
        assert!(samples(4096, 512).iter().all(|r| r.end() <= 4096));
    }

    #[test]
    fn partitions_are_read_from_the_gpt() {
        // A GPT made by the layout code: ESP, BIOS boot and root on 1 GiB.
        use crate::rootfs::layout::{self, DiskFacts};
        let facts = DiskFacts {
            name: "/dev/mem0".to_owned(),
            size_bytes: 1 << 30,
            logical_block_size: 512,
            physical_block_size: 512,
        };
        let plan = layout::plan(&layout::preset("default").unwrap(), &[facts], 1).unwrap();
        let planned = &plan.disks[0];
        let mut disk = MemoryDisk::new(1024 * MIB, 0);
        for w in layout::gpt_writes(planned).unwrap() {
            let at = usize::try_from(w.offset).unwrap();
            disk.data[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
        }
        let parts = partitions_of(&mut disk);
        assert_eq!(parts.len(), planned.partitions.len());
        assert_eq!(parts[0].start, planned.partitions[0].first_lba * 512);
    }
}
