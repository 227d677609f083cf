//! Writes that bypass the page cache (`O_DIRECT`), for the bulk of an image.
//!
//! A buffered write copies every byte into page-cache pages the kernel first
//! has to allocate, and the flusher threads then spend more CPU writing them
//! back, on the same cores the decoders need; the final `fsync` waits for
//! all of it. A direct write hands the device the bytes where they are. On
//! the 2-core test machine this took a deploy's system time from about
//! 0.8 to about 0.1 CPU-s per GiB (`BENCHMARKS.md`).
//!
//! The kernel takes a direct write only when the offset, the length and the
//! buffer's address are aligned (to the logical block size; the address to
//! the DMA alignment, which a page always satisfies). Image buffers come
//! from the decoders at arbitrary addresses, so whole blocks are copied
//! through one page-aligned bounce buffer (a user-space copy into memory
//! that stays hot, far cheaper than filling fresh page-cache pages); a
//! remainder shorter than a block, the image's last bytes, is written
//! buffered. `O_DIRECT` is switched on and off on the one descriptor with
//! `fcntl(F_SETFL)`, so a block device's `O_EXCL` claim is not needed twice.
//! Where the filesystem or device refuses direct I/O (`EINVAL` at `fcntl` or
//! at the first write) every write is buffered, as before, and the deploy
//! does not notice beyond a log line.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::OFlags;

/// The bounce buffer: as large as the image writer's batches.
const BOUNCE: usize = 4 << 20;
/// Address alignment for the bounce buffer: a page, which satisfies every
/// device's DMA alignment and every logical block size up to 4096.
const ALIGN: usize = 4096;

/// Whether direct writes are wanted at all (`imprint.direct-io=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectIo {
    /// Direct writes where the target takes them, buffered otherwise.
    #[default]
    Auto,
    /// Every write through the page cache.
    Off,
}

impl DirectIo {
    /// Parses `imprint.direct-io=`.
    pub fn parse(value: &str) -> anyhow::Result<Self> {
        match value {
            "auto" => Ok(DirectIo::Auto),
            "off" => Ok(DirectIo::Off),
            _ => anyhow::bail!("must be auto or off, not '{value}'"),
        }
    }
}

/// The direct-write state of one target's descriptor.
#[derive(Debug)]
pub struct DirectWrites {
    /// Still worth trying: not switched off, and not refused by the target.
    usable: bool,
    /// Whether `O_DIRECT` is set on the descriptor now.
    on: bool,
    /// `ALIGN + BOUNCE` bytes; the aligned window starts at `start`.
    bounce: Vec<u8>,
    start: usize,
    /// Bytes written directly, for the log and the tests.
    direct_bytes: u64,
}

impl DirectWrites {
    pub fn new(mode: DirectIo) -> Self {
        DirectWrites {
            usable: mode == DirectIo::Auto,
            on: false,
            bounce: Vec::new(),
            start: 0,
            direct_bytes: 0,
        }
    }

    /// Bytes that went to the target with `O_DIRECT` so far.
    pub fn direct_bytes(&self) -> u64 {
        self.direct_bytes
    }

    /// Writes all of `buf` at `offset`: the whole `block`s directly where
    /// the offset is block-aligned and the target takes it, the rest (and
    /// everything once the target refused) through the page cache. `what`
    /// names the target for the log line of a refusal.
    pub fn write_at(
        &mut self,
        file: &File,
        buf: &[u8],
        offset: u64,
        block: usize,
        what: &dyn Fn() -> String,
    ) -> io::Result<()> {
        let whole = if self.usable && block > 0 && block <= ALIGN && offset % block as u64 == 0 {
            buf.len() / block * block
        } else {
            0
        };
        if whole > 0 {
            match self.write_direct(file, &buf[..whole], offset) {
                Ok(()) => {}
                Err(e) if is_refusal(&e) && self.direct_bytes == 0 => {
                    // The target does not do direct I/O (a filesystem
                    // without it, an odd alignment rule): buffered it is.
                    log::info!(
                        "{}: direct writes refused ({e}); writing through the page cache",
                        what()
                    );
                    self.usable = false;
                    self.bounce = Vec::new();
                    self.set(file, false)?;
                    return file.write_all_at(buf, offset);
                }
                Err(e) => return Err(e),
            }
        }
        if whole < buf.len() {
            self.set(file, false)?;
            file.write_all_at(&buf[whole..], offset + whole as u64)?;
        }
        Ok(())
    }

    /// Writes `data` (whole blocks) with `O_DIRECT`, through the bounce
    /// buffer.
    fn write_direct(&mut self, file: &File, data: &[u8], offset: u64) -> io::Result<()> {
        if let Err(e) = self.set(file, true) {
            // fcntl refusing O_DIRECT (EINVAL on tmpfs before Linux 6.6,
            // other codes on FUSE and the like) only says the target does
            // not do it: a refusal whatever the code.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("O_DIRECT not accepted: {e}"),
            ));
        }
        if self.bounce.is_empty() {
            self.bounce = vec![0; ALIGN + BOUNCE];
            self.start = self.bounce.as_ptr().align_offset(ALIGN);
            if self.start >= ALIGN {
                // align_offset may give up; then there is no aligned window.
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
        }
        let mut done = 0;
        for chunk in data.chunks(BOUNCE) {
            let window = &mut self.bounce[self.start..self.start + chunk.len()];
            window.copy_from_slice(chunk);
            file.write_all_at(window, offset + done as u64)?;
            done += chunk.len();
            self.direct_bytes += chunk.len() as u64;
        }
        Ok(())
    }

    /// Sets or clears `O_DIRECT` on `file` when it is not already so.
    fn set(&mut self, file: &File, on: bool) -> io::Result<()> {
        if self.on == on {
            return Ok(());
        }
        let flags = rustix::fs::fcntl_getfl(file)?;
        let flags = if on {
            flags | OFlags::DIRECT
        } else {
            flags - OFlags::DIRECT
        };
        rustix::fs::fcntl_setfl(file, flags)?;
        self.on = on;
        Ok(())
    }
}

/// `EINVAL` from a write, or `fcntl` refusing the flag: the target refuses
/// direct I/O itself or this alignment; the only errors a buffered retry
/// can cure.
fn is_refusal(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::EINVAL) || err.kind() == io::ErrorKind::InvalidInput
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    fn noise(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from((i * 7 + i / 4099) % 251).unwrap())
            .collect()
    }

    /// A new file, open for reading and writing, in a fresh temporary directory (on the disk here and in CI;
    /// [`does_direct_io`] tells what a test may expect of it).
    fn scratch(name: &str) -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (dir, path, file)
    }

    /// ext4, xfs and btrfs take direct writes (the checkout is on one of
    /// them here and in CI); others may not.
    pub(crate) fn does_direct_io(file: &File) -> bool {
        const EXT4: u64 = 0xEF53;
        const XFS: u64 = 0x5846_5342;
        const BTRFS: u64 = 0x9123_683E;
        let kind = rustix::fs::fstatfs(file).unwrap().f_type;
        #[allow(clippy::cast_sign_loss, clippy::useless_conversion)]
        let kind = kind as u64;
        matches!(kind, EXT4 | XFS | BTRFS)
    }

    fn read_back(path: &std::path::Path) -> Vec<u8> {
        let mut out = Vec::new();
        File::open(path).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn unaligned_buffers_and_a_short_tail_land_byte_exact() {
        let (_dir, path, file) = scratch("direct-exact.img");
        let data = noise(9 << 20 | 1234);
        let mut direct = DirectWrites::new(DirectIo::Auto);
        // An odd start address inside the source, and pieces crossing the
        // bounce buffer's size.
        let src = &data[1..];
        let (a, b) = src.split_at(5 << 20);
        direct.write_at(&file, a, 0, 4096, &|| "t".into()).unwrap();
        direct
            .write_at(&file, b, 5 << 20, 4096, &|| "t".into())
            .unwrap();
        assert_eq!(read_back(&path), src);
        // Where the filesystem does direct I/O the whole blocks went
        // directly; elsewhere the same bytes arrived buffered.
        let whole = (src.len() / 4096 * 4096) as u64;
        let expected = if does_direct_io(&file) { whole } else { 0 };
        assert_eq!(direct.direct_bytes(), expected);
        // Buffered again afterwards: O_DIRECT is off for the tail.
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(OFlags::DIRECT));
    }

    #[test]
    fn unaligned_offsets_and_off_mode_write_buffered() {
        let (_dir, path, file) = scratch("direct-off.img");
        let data = noise(3 << 20);
        let mut off = DirectWrites::new(DirectIo::Off);
        off.write_at(&file, &data, 0, 4096, &|| "t".into()).unwrap();
        assert_eq!(off.direct_bytes(), 0);
        // A direct write, then one at an unaligned offset from the same
        // state: O_DIRECT must be off again for the second.
        let mut auto = DirectWrites::new(DirectIo::Auto);
        auto.write_at(&file, &data[4096..2 * 4096 + 4096], 1 << 20, 4096, &|| {
            "t".into()
        })
        .unwrap();
        let direct_before = auto.direct_bytes();
        auto.write_at(&file, &data[..8192], 512, 4096, &|| "t".into())
            .unwrap();
        assert_eq!(
            auto.direct_bytes(),
            direct_before,
            "offset 512 is not block-aligned"
        );
        let mut expected = data.clone();
        expected[1 << 20..(1 << 20) + 8192].copy_from_slice(&data[4096..3 * 4096]);
        expected[512..512 + 8192].copy_from_slice(&data[..8192]);
        assert_eq!(read_back(&path), expected);
    }
}
