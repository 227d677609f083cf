//! Pass-through ioctls for device erase: NVMe admin commands, SCSI SG_IO
//! (ATA PASS-THROUGH and SANITIZE). Discards are `sys::block::discard`.
//! Every syscall and every `unsafe` block lives here; the commands
//! themselves are built and decoded by `erase::{nvme, ata, scsi}`.
//!
//! The two structs the kernel reads are declared here, next to the ioctls,
//! so their layout and the opcodes that encode their size sit together.
//! Pointers inside them are filled in here from borrowed slices, never by
//! callers, so a buffer always outlives the ioctl that uses it.

use std::ffi::c_void;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::ioctl::{self, Ioctl, IoctlOutput, Opcode, Updater, opcode};

/// `struct nvme_passthru_cmd` (alias `nvme_admin_cmd`) from
/// <linux/nvme_ioctl.h>: 72 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmeAdminCmd {
    pub opcode: u8,
    pub flags: u8,
    pub rsvd1: u16,
    pub nsid: u32,
    pub cdw2: u32,
    pub cdw3: u32,
    pub metadata: u64,
    pub addr: u64,
    pub metadata_len: u32,
    pub data_len: u32,
    pub cdw10: u32,
    pub cdw11: u32,
    pub cdw12: u32,
    pub cdw13: u32,
    pub cdw14: u32,
    pub cdw15: u32,
    pub timeout_ms: u32,
    pub result: u32,
}

const _: () = assert!(size_of::<NvmeAdminCmd>() == 72);

impl NvmeAdminCmd {
    /// The bytes the kernel reads, little-endian as on every host imprint
    /// runs on; golden tests compare these with what nvme-cli passed.
    pub fn to_bytes(&self) -> [u8; 72] {
        let mut out = [0u8; 72];
        out[0] = self.opcode;
        out[1] = self.flags;
        out[2..4].copy_from_slice(&self.rsvd1.to_le_bytes());
        let words = [
            (4, self.nsid),
            (8, self.cdw2),
            (12, self.cdw3),
            (32, self.metadata_len),
            (36, self.data_len),
            (40, self.cdw10),
            (44, self.cdw11),
            (48, self.cdw12),
            (52, self.cdw13),
            (56, self.cdw14),
            (60, self.cdw15),
            (64, self.timeout_ms),
            (68, self.result),
        ];
        for (at, word) in words {
            out[at..at + 4].copy_from_slice(&word.to_le_bytes());
        }
        out[16..24].copy_from_slice(&self.metadata.to_le_bytes());
        out[24..32].copy_from_slice(&self.addr.to_le_bytes());
        out
    }
}

/// `struct sg_io_hdr` from <scsi/sg.h>, as laid out on x86-64 and the other
/// LP64 targets: 88 bytes, with 4 bytes of padding after `pack_id`.
#[repr(C)]
#[derive(Debug)]
pub struct SgIoHdr {
    pub interface_id: i32,
    pub dxfer_direction: i32,
    pub cmd_len: u8,
    pub mx_sb_len: u8,
    pub iovec_count: u16,
    pub dxfer_len: u32,
    pub dxferp: *mut c_void,
    pub cmdp: *const u8,
    pub sbp: *mut u8,
    pub timeout: u32,
    pub flags: u32,
    pub pack_id: i32,
    pub usr_ptr: *mut c_void,
    pub status: u8,
    pub masked_status: u8,
    pub msg_status: u8,
    pub sb_len_wr: u8,
    pub host_status: u16,
    pub driver_status: u16,
    pub resid: i32,
    pub duration: u32,
    pub info: u32,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(size_of::<SgIoHdr>() == 88);

/// Which way the data of one SG_IO command moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SgDirection {
    None,
    ToDevice,
    FromDevice,
}

impl SgDirection {
    /// SG_DXFER_NONE, SG_DXFER_TO_DEV, SG_DXFER_FROM_DEV.
    fn raw(self) -> i32 {
        match self {
            SgDirection::None => -1,
            SgDirection::ToDevice => -2,
            SgDirection::FromDevice => -3,
        }
    }
}

/// What SG_IO said about a command that reached the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SgOutcome {
    /// SCSI status: 00h GOOD, 02h CHECK CONDITION, 08h BUSY, ...
    pub status: u8,
    /// How many bytes of sense the device wrote.
    pub sense_len: u8,
    /// DID_* from the host adapter: 0 when the command was delivered.
    pub host_status: u16,
    /// DRIVER_* from the mid layer: 0, or 08h DRIVER_SENSE.
    pub driver_status: u16,
    /// Bytes of `data` not transferred.
    pub resid: i32,
}

// <linux/nvme_ioctl.h>: _IO('N', 0x40) and _IOWR('N', 0x41, struct nvme_admin_cmd).
const NVME_IOCTL_ID: Opcode = opcode::none(b'N', 0x40);
const NVME_IOCTL_ADMIN_CMD: Opcode = opcode::read_write::<NvmeAdminCmd>(b'N', 0x41);
// <scsi/sg.h>: SG_IO predates _IOC encoding and is a bare number.
const SG_IO: Opcode = 0x2285;

/// Opens a whole disk for pass-through commands. Read-write because the
/// kernel's SCSI command filter lets only writers send commands that
/// change the medium; O_NONBLOCK because sg and some SATLs refuse a
/// blocking open of a device that is busy sanitizing.
pub fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// An ioctl whose non-negative return value is the answer: the NVMe status
/// of an admin command, or the namespace id. rustix's patterns drop it.
struct ReturnsInt<'a, T> {
    opcode: Opcode,
    arg: Option<&'a mut T>,
}

// SAFETY: `as_ptr` hands the kernel either null (for opcodes with no
// argument) or a pointer to a live, exclusively borrowed `T` whose type the
// caller matched to the opcode; the output is the plain return value.
unsafe impl<T> Ioctl for ReturnsInt<'_, T> {
    type Output = u32;
    const IS_MUTATING: bool = true;

    fn opcode(&self) -> Opcode {
        self.opcode
    }

    fn as_ptr(&mut self) -> *mut c_void {
        match &mut self.arg {
            Some(arg) => std::ptr::from_mut::<T>(arg).cast(),
            None => std::ptr::null_mut(),
        }
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> rustix::io::Result<u32> {
        // rustix turned negative returns into errors already.
        Ok(out.unsigned_abs())
    }
}

/// Sends one NVMe admin command with `data` as its data buffer (either
/// direction; the opcode decides). Returns the NVMe status field of the
/// completion (0 is success; bits 10:8 type, 7:0 code, 14 Do Not Retry),
/// which the kernel passes back as a positive return value. `cmd.result`
/// holds completion dword 0 afterwards.
pub fn nvme_admin(fd: impl AsFd, cmd: &mut NvmeAdminCmd, data: &mut [u8]) -> io::Result<u32> {
    cmd.addr = if data.is_empty() {
        0
    } else {
        data.as_mut_ptr() as u64
    };
    cmd.data_len = u32::try_from(data.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NVMe data buffer over 4 GiB"))?;
    let request = ReturnsInt {
        opcode: NVME_IOCTL_ADMIN_CMD,
        arg: Some(cmd),
    };
    // SAFETY: the opcode encodes the 72-byte nvme_admin_cmd that `cmd` is
    // (asserted above); `addr`/`data_len` describe `data`, which is
    // exclusively borrowed for the whole call, so the kernel's DMA into or
    // out of it cannot race or outlive it.
    let status = unsafe { ioctl::ioctl(fd, request) };
    cmd.addr = 0;
    Ok(status?)
}

/// The namespace id of an NVMe namespace block device (`/dev/nvme0n1`).
pub fn nvme_namespace_id(fd: impl AsFd) -> io::Result<u32> {
    let request = ReturnsInt::<()> {
        opcode: NVME_IOCTL_ID,
        arg: None,
    };
    // SAFETY: NVME_IOCTL_ID takes no argument and returns the id.
    Ok(unsafe { ioctl::ioctl(fd, request) }?)
}

/// Sends one SCSI command (a CDB, including ATA PASS-THROUGH) through
/// SG_IO. `data` is read or written as `direction` says; `sense` receives
/// up to its length of sense data. Errors are for commands that never
/// reached the device; a device's refusal is in the outcome and the sense.
pub fn sg_io(
    fd: impl AsFd,
    cdb: &[u8],
    direction: SgDirection,
    data: &mut [u8],
    timeout_ms: u32,
    sense: &mut [u8],
) -> io::Result<SgOutcome> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let cmd_len = u8::try_from(cdb.len()).map_err(|_| invalid("CDB over 255 bytes"))?;
    let mx_sb_len =
        u8::try_from(sense.len()).map_err(|_| invalid("sense buffer over 255 bytes"))?;
    let dxfer_len = u32::try_from(data.len()).map_err(|_| invalid("SG_IO data over 4 GiB"))?;
    if direction == SgDirection::None && !data.is_empty() {
        return Err(invalid("SG_IO data buffer given for a non-data command"));
    }
    let mut hdr = SgIoHdr {
        interface_id: i32::from(b'S'),
        dxfer_direction: direction.raw(),
        cmd_len,
        mx_sb_len,
        iovec_count: 0,
        dxfer_len,
        dxferp: data.as_mut_ptr().cast(),
        cmdp: cdb.as_ptr(),
        sbp: sense.as_mut_ptr(),
        timeout: timeout_ms,
        flags: 0,
        pack_id: 0,
        usr_ptr: std::ptr::null_mut(),
        status: 0,
        masked_status: 0,
        msg_status: 0,
        sb_len_wr: 0,
        host_status: 0,
        driver_status: 0,
        resid: 0,
        duration: 0,
        info: 0,
    };
    // SAFETY: SG_IO reads and updates one sg_io_hdr; Updater passes a
    // pointer to `hdr`, which lives across the call.
    let request = unsafe { Updater::<SG_IO, SgIoHdr>::new(&mut hdr) };
    // SAFETY: the pointers in `hdr` come from `cdb`, `data` and `sense`,
    // borrowed for the whole call, with their lengths beside them; SG_IO is
    // synchronous, so the kernel is done with them when it returns.
    unsafe { ioctl::ioctl(fd, request) }?;
    Ok(SgOutcome {
        status: hdr.status,
        sense_len: hdr.sb_len_wr,
        host_status: hdr.host_status,
        driver_status: hdr.driver_status,
        resid: hdr.resid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The opcodes as the C headers compute them on x86-64.
    #[test]
    fn opcodes_match_linux_headers() {
        assert_eq!(u64::from(NVME_IOCTL_ADMIN_CMD), 0xc048_4e41);
        assert_eq!(u64::from(NVME_IOCTL_ID), 0x4e40);
        assert_eq!(u64::from(SG_IO), 0x2285);
    }

    #[test]
    fn sg_io_hdr_offsets_match_scsi_sg_h() {
        use std::mem::offset_of;
        assert_eq!(offset_of!(SgIoHdr, dxfer_len), 12);
        assert_eq!(offset_of!(SgIoHdr, dxferp), 16);
        assert_eq!(offset_of!(SgIoHdr, timeout), 40);
        assert_eq!(offset_of!(SgIoHdr, usr_ptr), 56);
        assert_eq!(offset_of!(SgIoHdr, status), 64);
        assert_eq!(offset_of!(SgIoHdr, host_status), 68);
        assert_eq!(offset_of!(SgIoHdr, info), 80);
    }

    #[test]
    fn nvme_cmd_bytes_put_each_field_where_the_kernel_reads_it() {
        let cmd = NvmeAdminCmd {
            opcode: 0x84,
            flags: 0x01,
            rsvd1: 0x0302,
            nsid: 0x0706_0504,
            metadata: 0x1716_1514_1312_1110,
            addr: 0x1f1e_1d1c_1b1a_1918,
            data_len: 0x2726_2524,
            cdw10: 0x2b2a_2928,
            cdw15: 0x3f3e_3d3c,
            timeout_ms: 0x4342_4140,
            result: 0x4746_4544,
            ..NvmeAdminCmd::default()
        };
        let b = cmd.to_bytes();
        assert_eq!(&b[..4], &[0x84, 0x01, 0x02, 0x03]);
        assert_eq!(&b[4..8], &[4, 5, 6, 7]);
        assert_eq!(b[16], 0x10);
        assert_eq!(b[24], 0x18);
        assert_eq!(
            &b[36..44],
            &[0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b]
        );
        assert_eq!(
            &b[60..72],
            &[
                0x3c, 0x3d, 0x3e, 0x3f, 0x40, 0x41, 0x42, 0x43, 0x44, 0x45, 0x46, 0x47
            ]
        );
    }

    #[test]
    fn passthrough_on_a_regular_file_fails_cleanly() {
        let file = tempfile::tempfile().unwrap();
        let mut cmd = NvmeAdminCmd {
            opcode: 0x06,
            cdw10: 1,
            ..NvmeAdminCmd::default()
        };
        let mut data = vec![0u8; 4096];
        assert!(nvme_admin(&file, &mut cmd, &mut data).is_err());
        assert_eq!(cmd.addr, 0, "the buffer's address must not leak out");
        assert!(nvme_namespace_id(&file).is_err());
        let mut sense = [0u8; 32];
        let cdb = [0u8; 6];
        assert!(sg_io(&file, &cdb, SgDirection::None, &mut [], 1000, &mut sense).is_err());
    }

    #[test]
    fn sg_io_refuses_data_for_a_non_data_command_before_the_syscall() {
        let file = tempfile::tempfile().unwrap();
        let mut sense = [0u8; 32];
        let err = sg_io(
            &file,
            &[0u8; 6],
            SgDirection::None,
            &mut [0u8; 8],
            1000,
            &mut sense,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
