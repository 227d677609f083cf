//! The disk an erase works on, behind [`EraseTarget`] so the engine is
//! tested on files and in memory; [`EraseDevice`] is the real one.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::wipe::Range;

/// What an erase needs of a disk.
pub trait EraseTarget {
    /// `/dev/sda`, for messages.
    fn describe(&self) -> String;
    fn size(&self) -> u64;
    fn logical_block_size(&self) -> u32;
    /// Makes the range read back as zeros (BLKZEROOUT: WRITE ZEROES where
    /// the device has it, else the kernel writes zero pages).
    fn zero(&mut self, range: Range) -> io::Result<()>;
    /// Unmaps the range (BLKDISCARD).
    fn discard(&mut self, range: Range) -> io::Result<()>;
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Makes the kernel forget the partitions that were erased.
    fn reread_partitions(&mut self) -> io::Result<()>;
}

/// A whole block device opened exclusively for reading and writing (a
/// mounted or otherwise busy disk is refused), or a regular file (the
/// CLI's `imprint erase` on an image file).
#[derive(Debug)]
pub struct EraseDevice {
    file: File,
    path: PathBuf,
    size: u64,
    logical_block_size: u32,
    block_device: bool,
}

impl EraseDevice {
    pub fn open(path: &Path) -> Result<EraseDevice> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
        let block_device = meta.file_type().is_block_device();
        if !block_device && !meta.is_file() {
            anyhow::bail!(
                "{} is neither a block device nor a regular file",
                path.display()
            );
        }
        let (file, size, logical_block_size) = if block_device {
            crate::pipeline::target::open_exclusive(path, true)?
        } else {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            (file, meta.len(), 512)
        };
        Ok(EraseDevice {
            file,
            path: path.to_owned(),
            size,
            logical_block_size,
            block_device,
        })
    }

    /// The open file, for the pass-through commands of a secure erase.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn is_block_device(&self) -> bool {
        self.block_device
    }
}

impl EraseTarget for EraseDevice {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn logical_block_size(&self) -> u32 {
        self.logical_block_size
    }
    fn zero(&mut self, range: Range) -> io::Result<()> {
        if self.block_device {
            crate::sys::block::zero_out(&self.file, range.start, range.len)
        } else {
            let file = &self.file;
            crate::pipeline::target::write_zeros(
                |buf, at| file.write_all_at(buf, at),
                range.start,
                range.len,
            )
        }
    }
    fn discard(&mut self, range: Range) -> io::Result<()> {
        if self.block_device {
            crate::sys::block::discard(&self.file, range.start, range.len, false)
        } else {
            crate::sys::block::punch_hole(&self.file, range.start, range.len)
        }
    }
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn reread_partitions(&mut self) -> io::Result<()> {
        if self.block_device {
            crate::sys::block::reread_partitions(&self.file)
        } else {
            Ok(())
        }
    }
}

/// A disk in memory for tests: records what was done to it.
#[cfg(test)]
pub mod memory {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Op {
        Zero(Range),
        Discard(Range),
        Sync,
        Reread,
    }

    pub struct MemoryDisk {
        pub data: Vec<u8>,
        pub block: u32,
        pub ops: Vec<Op>,
        /// What a discarded range reads back as.
        pub discard_fill: Option<u8>,
        /// `discard` fails with this errno.
        pub discard_errno: Option<i32>,
    }

    impl MemoryDisk {
        pub fn new(len: usize, fill: u8) -> MemoryDisk {
            MemoryDisk {
                data: vec![fill; len],
                block: 512,
                ops: Vec::new(),
                discard_fill: Some(0),
                discard_errno: None,
            }
        }
    }

    fn slice(data: &mut [u8], range: Range) -> io::Result<&mut [u8]> {
        let start = usize::try_from(range.start).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = usize::try_from(range.end()).map_err(|_| io::ErrorKind::InvalidInput)?;
        data.get_mut(start..end)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    impl EraseTarget for MemoryDisk {
        fn describe(&self) -> String {
            "/dev/mem0".to_owned()
        }
        fn size(&self) -> u64 {
            self.data.len() as u64
        }
        fn logical_block_size(&self) -> u32 {
            self.block
        }
        fn zero(&mut self, range: Range) -> io::Result<()> {
            slice(&mut self.data, range)?.fill(0);
            self.ops.push(Op::Zero(range));
            Ok(())
        }
        fn discard(&mut self, range: Range) -> io::Result<()> {
            if let Some(errno) = self.discard_errno {
                return Err(io::Error::from_raw_os_error(errno));
            }
            if let Some(fill) = self.discard_fill {
                slice(&mut self.data, range)?.fill(fill);
            }
            self.ops.push(Op::Discard(range));
            Ok(())
        }
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            let range = Range {
                start: offset,
                len: buf.len() as u64,
            };
            buf.copy_from_slice(slice(&mut self.data, range)?);
            Ok(())
        }
        fn sync(&mut self) -> io::Result<()> {
            self.ops.push(Op::Sync);
            Ok(())
        }
        fn reread_partitions(&mut self) -> io::Result<()> {
            self.ops.push(Op::Reread);
            Ok(())
        }
    }
}
