//! Block-device ioctls and `fallocate`: the syscalls behind
//! `pipeline::target`. rustix wraps the two block-size getters; the others
//! are spelled out with rustix's typed ioctl patterns, so the opcode, the
//! argument type and the direction sit side by side.

use std::io;
use std::os::fd::AsFd;

use rustix::fs::FallocateFlags;
use rustix::ioctl::{self, Getter, NoArg, Setter, opcode};

// <linux/fs.h>. BLKGETSIZE64 is declared `_IOR(0x12, 114, size_t)` but the
// kernel always stores a u64; the opcode encodes sizeof(size_t), as in C.
const BLKGETSIZE64: ioctl::Opcode = opcode::read::<usize>(0x12, 114);
const BLKRRPART: ioctl::Opcode = opcode::none(0x12, 95);
const BLKZEROOUT: ioctl::Opcode = opcode::none(0x12, 127);
const BLKDISCARD: ioctl::Opcode = opcode::none(0x12, 119);
const BLKSECDISCARD: ioctl::Opcode = opcode::none(0x12, 125);

/// The size in bytes of the block device behind `fd`.
pub fn size_bytes(fd: impl AsFd) -> io::Result<u64> {
    // SAFETY: BLKGETSIZE64 stores one u64 through its pointer argument, and
    // Getter hands the kernel a pointer to a u64-sized, u64-aligned slot.
    let request = unsafe { Getter::<BLKGETSIZE64, u64>::new() };
    // SAFETY: the opcode and the argument type agree (see above), and the
    // ioctl has no effect beyond writing that slot.
    Ok(unsafe { ioctl::ioctl(fd, request) }?)
}

/// The logical block size: the smallest unit the device addresses.
pub fn logical_block_size(fd: impl AsFd) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blksszget(fd)?)
}

/// The physical block size: writes smaller than this are read-modify-write
/// inside the device.
pub fn physical_block_size(fd: impl AsFd) -> io::Result<u32> {
    Ok(rustix::fs::ioctl_blkpbszget(fd)?)
}

/// Zeroes `len` bytes at `offset` (both multiples of the logical block
/// size). The kernel sends WRITE ZEROES where the device has it and writes
/// zero pages itself otherwise; it never unmaps, so the range reads back as
/// zeros on every device. It also drops the page cache for the range.
pub fn zero_out(fd: impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: BLKZEROOUT reads a `uint64_t range[2]` (start, length) through
    // its pointer argument; Setter passes a pointer to exactly that array,
    // which lives across the call.
    let request = unsafe { Setter::<BLKZEROOUT, [u64; 2]>::new([offset, len]) };
    // SAFETY: the opcode and the argument type agree (see above); the kernel
    // only reads the argument.
    Ok(unsafe { ioctl::ioctl(fd, request) }?)
}

/// Discards (unmaps) `len` bytes at `offset`, or with `secure` asks the
/// device to also erase every copy it made of them (BLKSECDISCARD; eMMC
/// and few others support it). What a discarded range reads back as is the
/// device's choice unless it guarantees zeros. The kernel drops the page
/// cache for the range.
pub fn discard(fd: impl AsFd, offset: u64, len: u64, secure: bool) -> io::Result<()> {
    if secure {
        // SAFETY: BLKSECDISCARD reads a `uint64_t range[2]` (start, length)
        // through its pointer argument; Setter passes a pointer to exactly
        // that array, which lives across the call.
        let request = unsafe { Setter::<BLKSECDISCARD, [u64; 2]>::new([offset, len]) };
        // SAFETY: the opcode and the argument type agree; the kernel only
        // reads the argument.
        Ok(unsafe { ioctl::ioctl(fd, request) }?)
    } else {
        // SAFETY: as for BLKSECDISCARD: BLKDISCARD reads the same
        // `uint64_t range[2]`, which Setter passes and keeps alive.
        let request = unsafe { Setter::<BLKDISCARD, [u64; 2]>::new([offset, len]) };
        // SAFETY: the opcode and the argument type agree; the kernel only
        // reads the argument.
        Ok(unsafe { ioctl::ioctl(fd, request) }?)
    }
}

/// Asks the kernel to read the partition table again. `EBUSY` while a
/// partition of the disk is open.
pub fn reread_partitions(fd: impl AsFd) -> io::Result<()> {
    // SAFETY: BLKRRPART takes no argument; NoArg passes a null pointer.
    let request = unsafe { NoArg::<BLKRRPART>::new() };
    // SAFETY: the opcode takes no argument, so nothing is read or written
    // through the (null) pointer.
    Ok(unsafe { ioctl::ioctl(fd, request) }?)
}

/// Deallocates `len` bytes at `offset` of a regular file without changing
/// its length; the range reads back as zeros and takes no space.
pub fn punch_hole(fd: impl AsFd, offset: u64, len: u64) -> io::Result<()> {
    Ok(rustix::fs::fallocate(
        fd,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    )?)
}

/// Whether `err` says the device or filesystem lacks an operation (as
/// opposed to the operation failing), so a fallback is in order.
pub fn is_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::ENOSYS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opcodes as the C headers compute them on x86-64.
    #[test]
    fn opcodes_match_linux_headers() {
        assert_eq!(u64::from(BLKGETSIZE64), 0x8008_1272);
        assert_eq!(u64::from(BLKRRPART), 0x125f);
        assert_eq!(u64::from(BLKZEROOUT), 0x127f);
    }

    #[test]
    fn block_ioctls_on_a_regular_file_fail_cleanly() {
        let file = tempfile::tempfile().unwrap();
        assert!(size_bytes(&file).is_err());
        assert!(logical_block_size(&file).is_err());
        let err = zero_out(&file, 0, 4096).unwrap_err();
        assert!(is_unsupported(&err), "{err:?}");
        assert!(reread_partitions(&file).is_err());
    }

    #[test]
    fn punch_hole_reads_back_as_zeros_and_keeps_the_length() {
        use std::io::{Read, Seek, Write};
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&[0xa5; 3 * 4096]).unwrap();
        match punch_hole(&file, 4096, 4096) {
            Ok(()) => {}
            // Some filesystems cannot punch holes; the caller falls back.
            Err(e) if is_unsupported(&e) => return,
            Err(e) => panic!("{e}"),
        }
        let mut back = Vec::new();
        file.rewind().unwrap();
        file.read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), 3 * 4096);
        assert!(back[..4096].iter().all(|&b| b == 0xa5));
        assert!(back[4096..8192].iter().all(|&b| b == 0));
        assert!(back[8192..].iter().all(|&b| b == 0xa5));
    }
}
