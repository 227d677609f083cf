//! Loop devices over a byte range of a disk: the BitTorrent mode's scratch
//! on the tail of the target (`source::swarm`), where aria2 writes the
//! pieces into what it takes for a file of the image's length.
//!
//! A device is taken with `LOOP_CTL_GET_FREE` and bound with
//! `LOOP_CONFIGURE` (Linux 5.8), falling back to `LOOP_SET_FD` and
//! `LOOP_SET_STATUS64` on older kernels. It is bound with
//! `LO_FLAGS_AUTOCLEAR`: the kernel unbinds it when the last descriptor
//! closes, so a killed imprint (and its aria2c) leaves no loop device
//! behind on a host.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::ioctl::{self, NoArg, Setter, opcode};

// <linux/loop.h>: the opcodes are plain numbers there, 0x4C00 + n, which
// is what `_IO('L', n)` encodes.
const LOOP_SET_STATUS64: ioctl::Opcode = opcode::none(0x4C, 0x04);
const LOOP_CONFIGURE: ioctl::Opcode = opcode::none(0x4C, 0x0A);
const LOOP_CLR_FD: ioctl::Opcode = opcode::none(0x4C, 0x01);
/// Returns the number of a free loop device (creating one if needed).
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;
/// `LOOP_SET_FD`, for `libc::ioctl` (its argument is an integer).
const LOOP_SET_FD_INT: libc::Ioctl = 0x4C00;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Where the kernel looks for the loop control device.
const CONTROL: &str = "/dev/loop-control";

/// A loop device showing `size` bytes of a file or disk from `offset`.
/// Dropping it closes the last descriptor imprint holds; the kernel
/// unbinds the device once nobody else (aria2) has it open.
#[derive(Debug)]
pub struct LoopDevice {
    file: File,
    path: PathBuf,
}

impl LoopDevice {
    /// Binds a free loop device to bytes `offset..offset + size` of
    /// `backing` (opened read-write).
    pub fn attach(backing: &File, offset: u64, size: u64) -> Result<LoopDevice> {
        let control = File::options()
            .read(true)
            .write(true)
            .open(CONTROL)
            .with_context(|| format!("opening {CONTROL} (is the loop driver loaded?)"))?;
        // Another program may take the free device between the two calls:
        // the kernel then says EBUSY and the next free one is asked for.
        for _ in 0..8 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a
            // device number or -1 with errno; `control` is an open
            // descriptor for the whole call.
            let number = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) };
            if number < 0 {
                return Err(io::Error::last_os_error())
                    .with_context(|| format!("asking {CONTROL} for a free loop device"));
            }
            let path = PathBuf::from(format!("/dev/loop{number}"));
            let file = open_node(&path)?;
            match configure(&file, backing, offset, size) {
                Ok(()) => return Ok(LoopDevice { file, path }),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "binding {} to bytes {offset}..{} of the target",
                            path.display(),
                            offset + size
                        )
                    });
                }
            }
        }
        bail!("every free loop device was taken by another program before imprint could bind it")
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes what was written through the device to the backing disk,
    /// then unbinds the device (it stays bound, autoclear, while another
    /// program has it open: the kernel then unbinds it at that close). The
    /// kernel refuses writes to a device being unbound, so without the
    /// sync dirty pages would be dropped.
    pub fn detach(self) {
        let _ = self.file.sync_all();
        clear(&self.file);
    }
}

/// The device node, which devtmpfs creates when the kernel adds the device;
/// waited for briefly.
fn open_node(path: &Path) -> Result<File> {
    let mut tries = 0;
    loop {
        match File::options().read(true).write(true).open(path) {
            Ok(file) => return Ok(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound && tries < 50 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        }
    }
}

/// `LOOP_CLR_FD`: unbinds `device` (at its last close, with autoclear).
fn clear(device: &File) {
    // SAFETY: LOOP_CLR_FD takes no argument, which is what NoArg passes.
    let request = unsafe { NoArg::<LOOP_CLR_FD>::new() };
    // SAFETY: the opcode and the (absent) argument agree; the descriptor is
    // open for the whole call.
    let _ = unsafe { ioctl::ioctl(device.as_fd(), request) };
}

fn configure(device: &File, backing: &File, offset: u64, size: u64) -> io::Result<()> {
    let info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: offset,
        lo_sizelimit: size,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    let config = LoopConfig {
        fd: u32::try_from(backing.as_raw_fd()).unwrap_or(u32::MAX),
        block_size: 0,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config` through its
    // pointer argument; LoopConfig has that layout (repr(C), the kernel's
    // field order and sizes) and Setter keeps it alive across the call.
    let request = unsafe { Setter::<LOOP_CONFIGURE, LoopConfig>::new(config) };
    // SAFETY: the opcode and the argument type agree; the kernel only reads
    // the argument and takes its own reference to `backing`.
    match unsafe { ioctl::ioctl(device.as_fd(), request) } {
        Ok(()) => Ok(()),
        // Before Linux 5.8: bind, then set the range.
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTTY) => {
            // SAFETY: LOOP_SET_FD takes the backing descriptor as its
            // integer argument (not a pointer); `backing` is open.
            unsafe {
                let number = libc::ioctl(device.as_raw_fd(), LOOP_SET_FD_INT, backing.as_raw_fd());
                if number < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // SAFETY: LOOP_SET_STATUS64 reads one `struct loop_info64`,
            // which LoopInfo64 lays out and Setter keeps alive.
            let request = unsafe { Setter::<LOOP_SET_STATUS64, LoopInfo64>::new(info) };
            // SAFETY: the opcode and the argument type agree; the kernel
            // only reads the argument.
            let status = unsafe { ioctl::ioctl(device.as_fd(), request) };
            if let Err(e) = status {
                clear(device);
                return Err(e.into());
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes loop devices available: `/dev/loop-control` exists when the
/// kernel has the driver (built in, or loaded). Otherwise the module is
/// loaded from `module`, where the P2P initrd puts it.
pub fn ensure_driver(module: &Path) -> Result<()> {
    if Path::new(CONTROL).exists() {
        return Ok(());
    }
    super::kmod::load_module(module).context(
        "the loop driver, for the scratch on the disk (the P2P initrd carries it when built \
         with imprint-build p2p-initrd --kernel-root DIR --kver VER)",
    )?;
    for _ in 0..50 {
        if Path::new(CONTROL).exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!(
        "{CONTROL} did not appear after loading {}",
        module.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_structs_have_the_kernels_sizes() {
        // <linux/loop.h>: loop_info64 is 232 bytes, loop_config 304.
        assert_eq!(size_of::<LoopInfo64>(), 232);
        assert_eq!(size_of::<LoopConfig>(), 304);
        assert_eq!(LOOP_CONFIGURE, 0x4C0A);
        assert_eq!(LOOP_SET_STATUS64, 0x4C04);
    }
}
