//! efivarfs: UEFI variables as files, and the immutable flag the kernel
//! sets on them.
//!
//! Each file is `Name-guid`; its contents are the variable's 4-byte
//! little-endian attributes followed by its data, and a write must carry
//! both in one `write(2)`, which replaces the variable whole
//! (Documentation/filesystems/efivarfs.rst). The kernel marks every
//! variable it does not know to be safe to remove immutable, so that `rm -rf`
//! cannot brick a machine; changing or deleting one first clears the flag.

use std::io;
use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{self, Getter, Setter, opcode};

/// `FS_IOC_GETFLAGS` and `FS_IOC_SETFLAGS` (linux/fs.h): `_IOR('f', 1,
/// long)` and `_IOW('f', 2, long)`. The opcodes encode sizeof(long) as the
/// headers do, but the kernel reads and writes an `int` (ioctl_getflags in
/// fs/ioctl.c), so the argument slots below are `c_int`.
const FS_IOC_GETFLAGS: ioctl::Opcode = opcode::read::<libc::c_long>(b'f', 1);
const FS_IOC_SETFLAGS: ioctl::Opcode = opcode::write::<libc::c_long>(b'f', 2);
const FS_IMMUTABLE_FL: libc::c_int = 0x0000_0010;
/// linux/magic.h.
const EFIVARFS_MAGIC: u32 = 0xde5e_81e4;

/// A variable as efivarfs returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub attributes: u32,
    pub data: Vec<u8>,
}

/// The variable at `path`, or `None` when there is no such file.
pub fn read(path: &Path) -> io::Result<Option<Variable>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let [a0, a1, a2, a3, ref data @ ..] = *bytes else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} holds {} bytes, fewer than the 4 of its attributes",
                path.display(),
                bytes.len()
            ),
        ));
    };
    Ok(Some(Variable {
        attributes: u32::from_le_bytes([a0, a1, a2, a3]),
        data: data.to_vec(),
    }))
}

/// Creates or replaces the variable at `path`: attributes and data in one
/// `write(2)`, as efivarfs requires, after clearing the immutable flag of
/// an existing one.
pub fn write(path: &Path, attributes: u32, data: &[u8]) -> io::Result<()> {
    clear_immutable(path)?;
    let mut buf = Vec::with_capacity(4 + data.len());
    buf.extend_from_slice(&attributes.to_le_bytes());
    buf.extend_from_slice(data);
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::CREATE | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o644),
    )?;
    // efivarfs replaces the variable on every write and has no use for
    // O_TRUNC; any other filesystem (a tempdir in tests, a copy of the
    // variables) is truncated so that a shorter value does not leave the
    // old tail behind.
    if !is_efivarfs(&fd)? {
        rustix::fs::ftruncate(&fd, 0)?;
    }
    let written = rustix::io::write(&fd, &buf)?;
    if written != buf.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "{}: short write, {written} of {} bytes",
                path.display(),
                buf.len()
            ),
        ));
    }
    Ok(())
}

/// Removes the variable at `path`; one that does not exist is already gone.
pub fn delete(path: &Path) -> io::Result<()> {
    clear_immutable(path)?;
    match rustix::fs::unlink(path) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Clears `FS_IMMUTABLE_FL` on `path` when it is set. A missing file has no
/// flag; a filesystem without the flags ioctl (tmpfs on older kernels) has
/// none to clear.
pub fn clear_immutable(path: &Path) -> io::Result<()> {
    let fd = match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let flags = match get_flags(&fd) {
        Ok(flags) => flags,
        Err(rustix::io::Errno::NOTTY | rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::INVAL) => {
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if flags & FS_IMMUTABLE_FL == 0 {
        return Ok(());
    }
    set_flags(&fd, flags & !FS_IMMUTABLE_FL)?;
    Ok(())
}

fn get_flags(fd: impl AsFd) -> rustix::io::Result<libc::c_int> {
    // SAFETY: FS_IOC_GETFLAGS stores one int through its pointer argument
    // (fs/ioctl.c, ioctl_getflags: put_user to an int __user *), and Getter
    // hands the kernel a pointer to a c_int-sized, c_int-aligned slot.
    let request = unsafe { Getter::<FS_IOC_GETFLAGS, libc::c_int>::new() };
    // SAFETY: the opcode and the argument type agree (see above), and the
    // ioctl has no effect beyond writing that slot.
    unsafe { ioctl::ioctl(fd, request) }
}

fn set_flags(fd: impl AsFd, flags: libc::c_int) -> rustix::io::Result<()> {
    // SAFETY: FS_IOC_SETFLAGS reads one int through its pointer argument
    // (fs/ioctl.c, ioctl_setflags: get_user from an int __user *); Setter
    // passes a pointer to exactly that int, which outlives the call.
    let request = unsafe { Setter::<FS_IOC_SETFLAGS, libc::c_int>::new(flags) };
    // SAFETY: the opcode and the argument type agree (see above); the
    // kernel only changes the inode's flags.
    unsafe { ioctl::ioctl(fd, request) }
}

fn is_efivarfs(fd: impl AsFd) -> io::Result<bool> {
    let stat = rustix::fs::fstatfs(fd)?;
    // f_type is signed on some architectures and unsigned on others;
    // widening both sides compares the magic whatever the type.
    #[allow(clippy::useless_conversion)]
    let f_type = i128::from(stat.f_type);
    Ok(f_type == i128::from(EFIVARFS_MAGIC))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opcodes as the C headers compute them on 64-bit Linux
    /// (sizeof(long) = 8): 0x80086601 and 0x40086602.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn opcodes_match_linux_headers() {
        assert_eq!(FS_IOC_GETFLAGS, 0x8008_6601);
        assert_eq!(FS_IOC_SETFLAGS, 0x4008_6602);
    }

    #[test]
    fn write_read_replace_delete_on_a_plain_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir
            .path()
            .join("Boot0001-8be4df61-93ca-11d2-aa0d-00e098032b8c");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, 7, b"longer value").unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[..4], [7, 0, 0, 0]);
        write(&path, 6, b"short").unwrap();
        assert_eq!(
            read(&path).unwrap(),
            Some(Variable {
                attributes: 6,
                data: b"short".to_vec()
            })
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        // 0644 less the umask, which never adds bits.
        assert_eq!(mode & 0o7133, 0, "mode {mode:o}");
        // Clearing a flag that is not set is a no-op, not an error.
        clear_immutable(&path).unwrap();
        delete(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
        delete(&path).unwrap();
        clear_immutable(&path).unwrap();
    }

    #[test]
    fn a_file_shorter_than_its_attributes_is_invalid_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("BootOrder-x");
        std::fs::write(&path, [7, 0]).unwrap();
        let err = read(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("BootOrder-x"), "{err}");
    }
}
