//! What the image writer writes to: a block device, a regular file standing
//! in for one, or (in tests) memory. The writer's logic sits behind
//! [`BlockTarget`], so every decision it makes is tested on the host against
//! [`testing::MemoryTarget`], which records each operation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::pipeline::direct::{DirectIo, DirectWrites};
use crate::sys::block;

/// A disk, or something standing in for one.
pub trait BlockTarget: Send {
    /// `/dev/vda` or the file's path, for messages.
    fn describe(&self) -> String;
    /// Bytes the target holds. For a target that [`grows`](Self::grows),
    /// its current length rather than a limit.
    fn size(&self) -> u64;
    /// 512 or 4096 on real disks; writes and zeroed ranges are aligned to it.
    fn logical_block_size(&self) -> u32;
    /// Whether writing past [`size`](Self::size) extends the target (a new
    /// image file) instead of failing.
    fn grows(&self) -> bool {
        false
    }
    /// Writes all of `buf` at `offset`, retrying short writes and `EINTR`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read back as zeros. Never a no-op: a
    /// disk is never assumed to be blank.
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Returns once everything written so far is on stable storage.
    fn sync(&mut self) -> io::Result<()>;
    /// Makes the kernel read the new partition table; a no-op for files.
    fn reread_partitions(&mut self) -> io::Result<()>;
}

impl<T: BlockTarget + ?Sized> BlockTarget for Box<T> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn logical_block_size(&self) -> u32 {
        (**self).logical_block_size()
    }
    fn grows(&self) -> bool {
        (**self).grows()
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        (**self).zero_range(offset, len)
    }
    fn sync(&mut self) -> io::Result<()> {
        (**self).sync()
    }
    fn reread_partitions(&mut self) -> io::Result<()> {
        (**self).reread_partitions()
    }
}

/// A target with a region the image must not reach while something else
/// still uses it (the BitTorrent mode's scratch on the disk's tail,
/// `source::swarm`): `on_reach` runs once, before the first write or
/// zeroing that touches `region`, and lets the user go; then the write
/// proceeds.
pub struct Fenced<T: BlockTarget> {
    inner: T,
    region: std::ops::Range<u64>,
    on_reach: Option<Box<dyn FnOnce(u64) + Send>>,
}

impl<T: BlockTarget> Fenced<T> {
    pub fn new(
        inner: T,
        region: std::ops::Range<u64>,
        on_reach: Box<dyn FnOnce(u64) + Send>,
    ) -> Self {
        Fenced {
            inner,
            region,
            on_reach: Some(on_reach),
        }
    }

    fn before(&mut self, offset: u64, len: u64) {
        if offset < self.region.end && offset.saturating_add(len) > self.region.start {
            if let Some(on_reach) = self.on_reach.take() {
                on_reach(offset.max(self.region.start));
            }
        }
    }
}

impl<T: BlockTarget> BlockTarget for Fenced<T> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn grows(&self) -> bool {
        self.inner.grows()
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.before(offset, buf.len() as u64);
        self.inner.write_at(buf, offset)
    }
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.before(offset, len);
        self.inner.zero_range(offset, len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn reread_partitions(&mut self) -> io::Result<()> {
        self.inner.reread_partitions()
    }
}

/// Opens `path` as a deploy target without truncating it. A block device is
/// opened with `O_EXCL`, which the kernel refuses while the device or one of
/// its partitions is mounted or otherwise claimed: imprint never writes under
/// a live filesystem. A missing path becomes a new, growing image file.
/// `direct` says whether the bulk of the image may bypass the page cache
/// ([`DirectIo`]).
pub fn open_target(path: &Path, direct: DirectIo) -> Result<Box<dyn BlockTarget>> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_block_device() => {
            Ok(Box::new(DeviceTarget::open(path)?.with_direct_io(direct)))
        }
        Ok(meta) if meta.is_file() => Ok(Box::new(FileTarget::open(path)?.with_direct_io(direct))),
        Ok(_) => bail!(
            "target {} is neither a block device nor a regular file",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Box::new(FileTarget::open(path)?.with_direct_io(direct)))
        }
        Err(e) => Err(e).with_context(|| format!("inspecting target {}", path.display())),
    }
}

/// Zeros for writing zero ranges where no cheaper way exists. Allocated on
/// first use (the kernel maps zero pages lazily), not baked into the binary.
fn zeros() -> &'static [u8] {
    static ZEROS: OnceLock<Vec<u8>> = OnceLock::new();
    ZEROS.get_or_init(|| vec![0; 1 << 20])
}

/// Writes `len` zero bytes at `offset` through `write_at`, in buffer-sized
/// pieces.
pub fn write_zeros(
    mut write_at: impl FnMut(&[u8], u64) -> io::Result<()>,
    offset: u64,
    len: u64,
) -> io::Result<()> {
    let zeros = zeros();
    let mut done = 0;
    while done < len {
        let n = usize::try_from(len - done).map_or(zeros.len(), |left| left.min(zeros.len()));
        write_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// A whole block device, opened exclusively.
#[derive(Debug)]
pub struct DeviceTarget {
    file: File,
    path: PathBuf,
    size: u64,
    logical_block_size: u32,
    /// Cleared when BLKZEROOUT says the device cannot do it, so the
    /// fallback does not pay for a failing ioctl on every zero run.
    zeroout: bool,
    direct: DirectWrites,
}

/// Opens the block device at `path` exclusively (`O_EXCL`: the kernel
/// refuses while it is mounted or a partition of it is), for writing and,
/// with `read`, reading; gives its size and logical block size.
pub fn open_exclusive(path: &Path, read: bool) -> Result<(File, u64, u32)> {
    let file = OpenOptions::new()
        .read(read)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| {
            format!(
                "opening {} exclusively (is it mounted or in use?)",
                path.display()
            )
        })?;
    let size = block::size_bytes(&file)
        .with_context(|| format!("reading the size of {}", path.display()))?;
    let logical_block_size = block::logical_block_size(&file)
        .with_context(|| format!("reading the logical block size of {}", path.display()))?;
    Ok((file, size, logical_block_size))
}

impl DeviceTarget {
    pub fn open(path: &Path) -> Result<Self> {
        let (file, size, logical_block_size) = open_exclusive(path, false)?;
        Ok(DeviceTarget {
            file,
            path: path.to_owned(),
            size,
            logical_block_size,
            zeroout: true,
            direct: DirectWrites::new(DirectIo::default()),
        })
    }

    /// Sets whether the image's bulk may bypass the page cache.
    #[must_use]
    pub fn with_direct_io(mut self, direct: DirectIo) -> Self {
        self.direct = DirectWrites::new(direct);
        self
    }

    /// Bytes written past the page cache so far.
    pub fn direct_bytes(&self) -> u64 {
        self.direct.direct_bytes()
    }
}

impl BlockTarget for DeviceTarget {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.size
    }

    fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let block = self.logical_block_size as usize;
        let path = &self.path;
        self.direct.write_at(&self.file, buf, offset, block, &|| {
            path.display().to_string()
        })
    }

    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        if self.zeroout {
            match block::zero_out(&self.file, offset, len) {
                Ok(()) => return Ok(()),
                Err(e) if block::is_unsupported(&e) => {
                    log::info!(
                        "{}: BLKZEROOUT unsupported ({e}); writing zeros instead",
                        self.path.display()
                    );
                    self.zeroout = false;
                }
                // A range the ioctl rejects (unaligned) is still zeroed.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        // Through the direct-write state, which knows whether O_DIRECT is
        // set on the descriptor (an unaligned buffer would get EINVAL).
        let (file, path, block) = (&self.file, &self.path, self.logical_block_size as usize);
        let direct = &mut self.direct;
        write_zeros(
            |buf, at| direct.write_at(file, buf, at, block, &|| path.display().to_string()),
            offset,
            len,
        )
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn reread_partitions(&mut self) -> io::Result<()> {
        let file = &self.file;
        match retry_while_busy(|| block::reread_partitions(file), std::thread::sleep) {
            // The kernel keeps no partitions for this device (a loop device
            // without partscan): there is nothing to re-read, and the image
            // on it is complete.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                log::warn!(
                    "{} does not support partitions; not re-reading its table",
                    self.path.display()
                );
                Ok(())
            }
            result => result,
        }
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "re-reading the partition table of {}: {e}",
                    self.path.display()
                ),
            )
        })
    }
}

/// How long to wait before each retry of an operation that failed with
/// `EBUSY`: udev or a partition scanner in another process usually lets go
/// within a second or two. About 5 s in all.
const BUSY_BACKOFF_MS: [u64; 9] = [50, 100, 200, 400, 800, 800, 800, 800, 800];

/// Runs `op`, retrying while it fails with `EBUSY`, sleeping through `sleep`
/// between attempts (injected so tests do not wait).
pub fn retry_while_busy(
    mut op: impl FnMut() -> io::Result<()>,
    mut sleep: impl FnMut(Duration),
) -> io::Result<()> {
    let mut backoff = BUSY_BACKOFF_MS.iter();
    loop {
        match op() {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => match backoff.next() {
                Some(&ms) => sleep(Duration::from_millis(ms)),
                None => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e} (still busy after {} tries)", BUSY_BACKOFF_MS.len() + 1),
                    ));
                }
            },
            other => return other,
        }
    }
}

/// A regular file standing in for a disk (the CLI on a host, host tests).
///
/// An existing non-empty file is a disk image: its length is its size, and
/// writing past the end fails as it would on a disk. A new or empty file
/// has no size yet: it grows to whatever the image needs.
#[derive(Debug)]
pub struct FileTarget {
    file: File,
    path: PathBuf,
    len: u64,
    grows: bool,
    punch: bool,
    direct: DirectWrites,
}

impl FileTarget {
    /// Opens (creating when missing, never truncating) `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("inspecting {}", path.display()))?
            .len();
        Ok(FileTarget {
            file,
            path: path.to_owned(),
            len,
            grows: len == 0,
            punch: true,
            direct: DirectWrites::new(DirectIo::default()),
        })
    }

    /// Sets whether the image's bulk may bypass the page cache.
    #[must_use]
    pub fn with_direct_io(mut self, direct: DirectIo) -> Self {
        self.direct = DirectWrites::new(direct);
        self
    }

    /// Bytes written past the page cache so far.
    pub fn direct_bytes(&self) -> u64 {
        self.direct.direct_bytes()
    }

    fn check_end(&self, offset: u64, len: u64) -> io::Result<u64> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        if !self.grows && end > self.len {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "bytes {offset}..{end} lie past the end of {} ({} bytes)",
                    self.path.display(),
                    self.len
                ),
            ));
        }
        Ok(end)
    }
}

impl BlockTarget for FileTarget {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn size(&self) -> u64 {
        self.len
    }

    /// Files have no sectors; 4096 keeps zero runs at page granularity,
    /// which is also what a hole can be punched in.
    fn logical_block_size(&self) -> u32 {
        4096
    }

    fn grows(&self) -> bool {
        self.grows
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let end = self.check_end(offset, buf.len() as u64)?;
        let path = &self.path;
        self.direct.write_at(&self.file, buf, offset, 4096, &|| {
            path.display().to_string()
        })?;
        self.len = self.len.max(end);
        Ok(())
    }

    /// Punches a hole, so an image file stays sparse; where the filesystem
    /// cannot, writes zeros.
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let end = self.check_end(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.punch {
            match block::punch_hole(&self.file, offset, len) {
                Ok(()) => {
                    if end > self.len {
                        // The hole kept the old length; extending reads as zeros.
                        self.file.set_len(end)?;
                        self.len = end;
                    }
                    return Ok(());
                }
                Err(e) if block::is_unsupported(&e) => self.punch = false,
                Err(e) => return Err(e),
            }
        }
        let (file, path) = (&self.file, &self.path);
        let direct = &mut self.direct;
        write_zeros(
            |buf, at| direct.write_at(file, buf, at, 4096, &|| path.display().to_string()),
            offset,
            len,
        )?;
        self.len = self.len.max(end);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }

    fn reread_partitions(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A recording, failure-injecting target for tests of anything that writes
/// through [`BlockTarget`]. Public (not `cfg(test)`) so integration tests
/// can use it too; it costs nothing in a binary that does not.
pub mod testing {
    use std::io;
    use std::sync::{Arc, Mutex, MutexGuard};

    use super::BlockTarget;

    /// One operation that reached the target and succeeded.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Write { offset: u64, len: u64 },
        Zero { offset: u64, len: u64 },
        Sync,
        Reread,
    }

    #[derive(Debug, Default)]
    struct State {
        data: Vec<u8>,
        ops: Vec<Op>,
        write_calls: usize,
        fail_write_call: Option<usize>,
        fail_sync: bool,
        fail_zero: bool,
    }

    /// A fixed-size disk in memory. Clones share the same disk, so a test
    /// keeps a handle to inspect what a consumer that took ownership wrote.
    #[derive(Debug, Clone)]
    pub struct MemoryTarget {
        state: Arc<Mutex<State>>,
        block_size: u32,
    }

    impl MemoryTarget {
        /// A zero-filled disk of `size` bytes with 512-byte blocks.
        pub fn new(size: usize) -> Self {
            Self::from_vec(vec![0; size])
        }

        /// A disk holding `data` (e.g. random bytes standing in for an old
        /// install).
        pub fn from_vec(data: Vec<u8>) -> Self {
            MemoryTarget {
                state: Arc::new(Mutex::new(State {
                    data,
                    ..State::default()
                })),
                block_size: 512,
            }
        }

        #[must_use]
        pub fn with_block_size(mut self, block_size: u32) -> Self {
            self.block_size = block_size;
            self
        }

        /// The `n`th call to `write_at` (counting from 0) fails with EIO;
        /// later ones succeed again.
        #[must_use]
        pub fn fail_write_call(self, n: usize) -> Self {
            self.state().fail_write_call = Some(n);
            self
        }

        /// Every `sync` fails with EIO.
        #[must_use]
        pub fn fail_sync(self) -> Self {
            self.state().fail_sync = true;
            self
        }

        /// Every `zero_range` fails with EIO.
        #[must_use]
        pub fn fail_zero(self) -> Self {
            self.state().fail_zero = true;
            self
        }

        pub fn contents(&self) -> Vec<u8> {
            self.state().data.clone()
        }

        pub fn ops(&self) -> Vec<Op> {
            self.state().ops.clone()
        }

        fn state(&self) -> MutexGuard<'_, State> {
            // A test that panicked while holding the lock fails anyway.
            self.state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }
    }

    fn range(data: &mut [u8], offset: u64, len: u64) -> io::Result<&mut [u8]> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let len = usize::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
        start
            .checked_add(len)
            .and_then(|end| data.get_mut(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::StorageFull, "past the end of memory"))
    }

    fn eio() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }

    impl BlockTarget for MemoryTarget {
        fn describe(&self) -> String {
            "memory".to_owned()
        }

        fn size(&self) -> u64 {
            self.state().data.len() as u64
        }

        fn logical_block_size(&self) -> u32 {
            self.block_size
        }

        fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut state = self.state();
            let call = state.write_calls;
            state.write_calls += 1;
            if state.fail_write_call == Some(call) {
                return Err(eio());
            }
            range(&mut state.data, offset, buf.len() as u64)?.copy_from_slice(buf);
            state.ops.push(Op::Write {
                offset,
                len: buf.len() as u64,
            });
            Ok(())
        }

        fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
            let mut state = self.state();
            if state.fail_zero {
                return Err(eio());
            }
            range(&mut state.data, offset, len)?.fill(0);
            state.ops.push(Op::Zero { offset, len });
            Ok(())
        }

        fn sync(&mut self) -> io::Result<()> {
            let mut state = self.state();
            if state.fail_sync {
                return Err(eio());
            }
            state.ops.push(Op::Sync);
            Ok(())
        }

        fn reread_partitions(&mut self) -> io::Result<()> {
            self.state().ops.push(Op::Reread);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn busy() -> io::Error {
        io::Error::from_raw_os_error(libc::EBUSY)
    }

    #[test]
    fn a_fence_lets_its_user_go_once_before_the_image_reaches_its_region() {
        use crate::pipeline::image_writer::ImageWriter;
        use std::io::Write as _;
        use std::sync::{Arc, Mutex};
        const MIB: usize = 1 << 20;
        let disk = testing::MemoryTarget::new(16 * MIB);
        let reached = Arc::new(Mutex::new(Vec::new()));
        let fenced = {
            let reached = Arc::clone(&reached);
            Fenced::new(
                disk.clone(),
                (10 * MIB as u64)..(14 * MIB as u64),
                Box::new(move |at| reached.lock().unwrap().push(at)),
            )
        };
        // Wiping both ends (the last MiB lies after the region) and an
        // image up to the region's start leave it alone.
        let mut writer = ImageWriter::begin(fenced, None).unwrap();
        writer.write_all(&vec![7u8; 10 * MIB]).unwrap();
        writer.flush().unwrap();
        assert!(reached.lock().unwrap().is_empty());
        // The first byte inside it lets the user go, once.
        writer.write_all(&vec![9u8; 2 * MIB]).unwrap();
        writer.flush().unwrap();
        let (_, len) = writer.commit().unwrap();
        assert_eq!(len, 12 * MIB as u64);
        assert_eq!(*reached.lock().unwrap(), vec![10 * MIB as u64]);
        assert_eq!(disk.contents()[11 * MIB], 9);
    }

    #[test]
    fn retry_while_busy_until_it_succeeds() {
        let calls = Cell::new(0);
        let mut slept = Vec::new();
        retry_while_busy(
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 4 { Err(busy()) } else { Ok(()) }
            },
            |d| slept.push(d),
        )
        .unwrap();
        assert_eq!(calls.get(), 4);
        assert_eq!(slept.len(), 3);
    }

    #[test]
    fn retry_while_busy_gives_up_after_about_five_seconds() {
        let calls = Cell::new(0);
        let mut slept = Duration::ZERO;
        let err = retry_while_busy(
            || {
                calls.set(calls.get() + 1);
                Err(busy())
            },
            |d| slept += d,
        )
        .unwrap_err();
        assert_eq!(calls.get(), 10);
        assert!(slept >= Duration::from_secs(4) && slept <= Duration::from_secs(6));
        assert!(
            err.to_string().ends_with("(still busy after 10 tries)"),
            "{err}"
        );
    }

    #[test]
    fn retry_while_busy_does_not_retry_other_errors() {
        let calls = Cell::new(0);
        let err = retry_while_busy(
            || {
                calls.set(calls.get() + 1);
                Err(io::Error::from_raw_os_error(libc::EINVAL))
            },
            |_| panic!("slept"),
        )
        .unwrap_err();
        assert_eq!(calls.get(), 1);
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }

    #[test]
    fn new_file_grows_and_existing_file_has_a_fixed_size() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = dir.path().join("new.img");
        let mut target = open_target(&fresh, DirectIo::Auto).unwrap();
        assert!(target.grows());
        assert_eq!(target.size(), 0);
        target.write_at(b"abc", 10).unwrap();
        target.zero_range(8192, 8192).unwrap();
        assert_eq!(target.size(), 16384);
        target.sync().unwrap();
        target.reread_partitions().unwrap();
        let back = std::fs::read(&fresh).unwrap();
        assert_eq!(back.len(), 16384);
        assert_eq!(&back[10..13], b"abc");
        assert!(back[13..].iter().all(|&b| b == 0));

        let image = dir.path().join("disk.img");
        std::fs::write(&image, [0xffu8; 8192]).unwrap();
        let mut target = open_target(&image, DirectIo::Auto).unwrap();
        assert!(!target.grows());
        assert_eq!(target.size(), 8192);
        assert_eq!(target.describe(), image.display().to_string());
        target.zero_range(4096, 4096).unwrap();
        target.write_at(b"x", 8191).unwrap();
        let err = target.write_at(b"xy", 8191).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("past the end of"), "{err}");
        assert!(target.zero_range(8000, 200).is_err());
        let back = std::fs::read(&image).unwrap();
        assert_eq!(back.len(), 8192);
        assert!(back[..4096].iter().all(|&b| b == 0xff));
        assert!(back[4096..8191].iter().all(|&b| b == 0));
        assert_eq!(back[8191], b'x');
    }

    #[test]
    fn open_target_never_truncates_and_refuses_directories() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        std::fs::write(&path, b"0123456789").unwrap();
        let target = open_target(&path, DirectIo::Auto).unwrap();
        assert_eq!(target.size(), 10);
        drop(target);
        assert_eq!(std::fs::read(&path).unwrap(), b"0123456789");
        let msg = format!(
            "{:#}",
            open_target(dir.path(), DirectIo::Auto).err().unwrap()
        );
        assert!(
            msg.contains("neither a block device nor a regular file"),
            "{msg}"
        );
        let msg = format!(
            "{:#}",
            open_target(&dir.path().join("no/such/dir/x"), DirectIo::Auto)
                .err()
                .unwrap()
        );
        assert!(msg.starts_with("opening "), "{msg}");
    }

    #[test]
    fn write_zeros_covers_ranges_larger_than_the_buffer() {
        let mut seen = Vec::new();
        write_zeros(
            |buf, at| {
                assert!(buf.iter().all(|&b| b == 0));
                seen.push((at, buf.len()));
                Ok(())
            },
            7,
            (2 << 20) + 5,
        )
        .unwrap();
        assert_eq!(
            seen,
            [(7, 1 << 20), (7 + (1 << 20), 1 << 20), (7 + (2 << 20), 5)]
        );
    }

    #[test]
    fn memory_target_records_and_injects() {
        use testing::{MemoryTarget, Op};
        let handle = MemoryTarget::new(1024).fail_write_call(1);
        let mut target = handle.clone();
        target.write_at(b"ab", 0).unwrap();
        assert!(target.write_at(b"cd", 2).is_err());
        target.write_at(b"ef", 2).unwrap();
        target.zero_range(0, 1).unwrap();
        assert!(target.write_at(b"x", 1024).is_err());
        target.sync().unwrap();
        assert_eq!(
            handle.ops(),
            [
                Op::Write { offset: 0, len: 2 },
                Op::Write { offset: 2, len: 2 },
                Op::Zero { offset: 0, len: 1 },
                Op::Sync
            ]
        );
        assert_eq!(&handle.contents()[..4], b"\0bef");
    }

    /// A loop device over a temporary file of `len` bytes of 0xa5, with
    /// partition scanning on; detached on drop.
    struct LoopDevice {
        dev: PathBuf,
        backing: PathBuf,
        _dir: tempfile::TempDir,
    }

    impl LoopDevice {
        fn new(len: usize) -> Self {
            Self::with_args(len, &["--find", "--show", "--partscan"])
        }

        fn with_args(len: usize, args: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let backing = dir.path().join("backing.img");
            std::fs::write(&backing, vec![0xa5u8; len]).unwrap();
            let out = std::process::Command::new("losetup")
                .args(args)
                .arg(&backing)
                .output()
                .unwrap();
            assert!(out.status.success(), "losetup: {out:?}");
            let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
            LoopDevice {
                dev,
                backing,
                _dir: dir,
            }
        }

        fn partition(&self, n: u32) -> PathBuf {
            let name = self.dev.file_name().unwrap().to_string_lossy();
            PathBuf::from(format!("/sys/class/block/{name}p{n}"))
        }
    }

    impl Drop for LoopDevice {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(&self.dev)
                .status();
        }
    }

    /// Needs root and a free loop device:
    /// `cargo test -p imprint --lib loop_device -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs root and losetup"]
    fn device_target_on_a_loop_device() {
        let lo = LoopDevice::new(8 << 20);
        let dev = &lo.dev;
        let mut target = DeviceTarget::open(dev).unwrap();
        assert_eq!(target.size(), 8 << 20);
        assert_eq!(target.logical_block_size(), 512);
        // O_EXCL: a second exclusive open must fail and name the device.
        let msg = format!("{:#}", DeviceTarget::open(dev).unwrap_err());
        assert!(msg.contains("exclusively"), "{msg}");

        match block::zero_out(&target.file, 1 << 20, 1 << 20) {
            Ok(()) => eprintln!("BLKZEROOUT worked on {}", dev.display()),
            Err(e) => eprintln!("BLKZEROOUT failed on {}: {e}", dev.display()),
        }
        target.zero_range(2 << 20, 1 << 20).unwrap();
        target.write_at(b"hello", 4 << 20).unwrap();
        assert_eq!(target.direct_bytes(), 0, "5 bytes are not a whole block");
        // Whole blocks bypass the page cache, and the device holds them.
        target.write_at(&[7u8; 64 << 10], 5 << 20).unwrap();
        assert_eq!(target.direct_bytes(), 64 << 10);
        target.sync().unwrap();
        target.reread_partitions().unwrap();
        drop(target);

        // Without partscan the kernel answers BLKRRPART with EINVAL: the
        // device has no partitions to re-read, which is not a failure.
        let plain = LoopDevice::with_args(1 << 20, &["--find", "--show"]);
        let mut plain_target = DeviceTarget::open(&plain.dev).unwrap();
        assert_eq!(
            block::reread_partitions(&plain_target.file)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );
        plain_target.reread_partitions().unwrap();

        let back = std::fs::read(&lo.backing).unwrap();
        assert!(back[..1 << 20].iter().all(|&b| b == 0xa5));
        assert!(back[1 << 20..3 << 20].iter().all(|&b| b == 0));
        assert_eq!(&back[4 << 20..(4 << 20) + 5], b"hello");
        assert!(back[(4 << 20) + 5..5 << 20].iter().all(|&b| b == 0xa5));
        assert!(
            back[5 << 20..(5 << 20) + (64 << 10)]
                .iter()
                .all(|&b| b == 7)
        );
        assert!(back[(5 << 20) + (64 << 10)..].iter().all(|&b| b == 0xa5));
    }

    /// Whether the running kernel parses MBR partition tables. Sandbox
    /// kernels may be built without (`# CONFIG_MSDOS_PARTITION is not set`);
    /// without `/proc/config.gz` assume a distribution kernel, which does.
    fn kernel_reads_mbr() -> bool {
        let out = std::process::Command::new("zcat")
            .arg("/proc/config.gz")
            .output();
        match out {
            Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == "CONFIG_MSDOS_PARTITION=y"),
            _ => true,
        }
    }

    /// The whole writer on a real block device: the kernel sees the new
    /// partition only after commit, and an aborted deploy leaves no table.
    #[test]
    #[ignore = "needs root and losetup"]
    fn image_writer_on_a_loop_device() {
        use crate::pipeline::image_writer::ImageWriter;
        use std::io::Write;
        let lo = LoopDevice::new(8 << 20);
        // An MBR with one Linux partition at sector 2048, 4096 sectors long.
        let mut image = vec![0u8; 6 << 20];
        image[446 + 4] = 0x83;
        image[446 + 8..446 + 12].copy_from_slice(&2048u32.to_le_bytes());
        image[446 + 12..446 + 16].copy_from_slice(&4096u32.to_le_bytes());
        image[510..512].copy_from_slice(&[0x55, 0xaa]);
        image[(2 << 20) + 7] = 0x42;

        let parses = kernel_reads_mbr();
        if !parses {
            eprintln!("this kernel parses no MBR: partition checks skipped");
        }
        let target = open_target(&lo.dev, DirectIo::Auto).unwrap();
        let mut writer = ImageWriter::begin(target, Some(image.len() as u64)).unwrap();
        writer.write_all(&image).unwrap();
        assert!(!lo.partition(1).exists(), "partition visible before commit");
        writer.commit().unwrap();
        assert_eq!(lo.partition(1).exists(), parses, "partition after commit");
        let back = std::fs::read(&lo.backing).unwrap();
        assert!(back[..image.len()] == image[..]);
        assert!(back[image.len()..7 << 20].iter().all(|&b| b == 0xa5));
        assert!(back[7 << 20..].iter().all(|&b| b == 0));

        let target = open_target(&lo.dev, DirectIo::Auto).unwrap();
        let mut writer = ImageWriter::begin(target, None).unwrap();
        writer.write_all(&image[..3 << 20]).unwrap();
        let mut target = writer.abort().unwrap();
        target.reread_partitions().unwrap();
        assert!(!lo.partition(1).exists(), "partition survived an abort");
        let back = std::fs::read(&lo.backing).unwrap();
        assert!(back[..1 << 20].iter().all(|&b| b == 0));
        assert!(back[7 << 20..].iter().all(|&b| b == 0));
    }
}
