//! NVMe admin commands for the device's own erase, and parsers for what
//! the controller answers. Pure: `sys::passthru::nvme_admin` sends them.
//!
//! Offsets and bit positions are from the NVM Express Base Specification
//! 2.0 (Identify Controller figure 275, Identify Namespace figure 97 of the
//! NVM Command Set spec, Sanitize figure 372, Format NVM figure 325,
//! Sanitize Status log figure 287). The builders are checked against what
//! nvme-cli 2.3 puts in `struct nvme_admin_cmd` (testdata/capture/nvme.txt).

use std::fmt;
use std::time::Duration;

pub use crate::sys::passthru::NvmeAdminCmd;

/// Every namespace of the controller (Format NVM where FNA says a format
/// applies to all of them, and the log pages that are not per namespace).
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

const OPC_GET_LOG_PAGE: u8 = 0x02;
const OPC_IDENTIFY: u8 = 0x06;
const OPC_FORMAT_NVM: u8 = 0x80;
const OPC_SANITIZE: u8 = 0x84;

const IDENTIFY_LEN: usize = 4096;
// The same lengths as the u32 the command carries.
const IDENTIFY_DATA_LEN: u32 = 4096;
/// The Sanitize Status log page is 512 bytes, 128 dwords.
pub const SANITIZE_LOG_LEN: usize = 512;
const SANITIZE_LOG_DWORDS: u32 = 128;
const LID_SANITIZE_STATUS: u32 = 0x81;

/// Identify Controller (CNS 01h): 4096 bytes into the data buffer.
pub fn identify_controller() -> NvmeAdminCmd {
    NvmeAdminCmd {
        opcode: OPC_IDENTIFY,
        data_len: IDENTIFY_DATA_LEN,
        cdw10: 0x01,
        ..NvmeAdminCmd::default()
    }
}

/// Identify Namespace (CNS 00h) for `nsid`: 4096 bytes.
pub fn identify_namespace(nsid: u32) -> NvmeAdminCmd {
    NvmeAdminCmd {
        opcode: OPC_IDENTIFY,
        nsid,
        data_len: IDENTIFY_DATA_LEN,
        cdw10: 0x00,
        ..NvmeAdminCmd::default()
    }
}

/// Get Log Page, Sanitize Status (81h), all 512 bytes. The log is per
/// controller, so the namespace is "all", as nvme-cli sends it.
pub fn sanitize_status_log() -> NvmeAdminCmd {
    // NUMDL (bits 31:16) counts dwords, zero-based.
    let numdl = SANITIZE_LOG_DWORDS - 1;
    NvmeAdminCmd {
        opcode: OPC_GET_LOG_PAGE,
        nsid: NSID_ALL,
        data_len: SANITIZE_LOG_DWORDS * 4,
        cdw10: LID_SANITIZE_STATUS | (numdl << 16),
        ..NvmeAdminCmd::default()
    }
}

/// SANACT, the Sanitize Action (CDW10 bits 2:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SanitizeAction {
    ExitFailureMode = 1,
    BlockErase = 2,
    Overwrite = 3,
    CryptoErase = 4,
}

/// One Sanitize command. Sanitize always acts on the whole NVM subsystem,
/// every namespace, so it carries no namespace id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sanitize {
    pub action: SanitizeAction,
    /// AUSE: after a failed sanitize, allow commands other than another
    /// sanitize (unrestricted completion mode). imprint leaves it off so a
    /// failed erase cannot be mistaken for a usable disk.
    pub allow_unrestricted_exit: bool,
    /// NDAS: do not deallocate after the sanitize (only honoured when
    /// SANICAP's NDI bit is clear).
    pub no_deallocate: bool,
    /// The overwrite pattern (CDW11), passes 1..=16 and whether to invert
    /// the pattern between passes; ignored for other actions.
    pub overwrite: OverwritePass,
}

/// The overwrite action's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverwritePass {
    pub pattern: u32,
    /// 1..=16; 16 is encoded as 0, as the spec says.
    pub passes: u8,
    /// OIPBP.
    pub invert_between_passes: bool,
}

impl Default for OverwritePass {
    fn default() -> Self {
        OverwritePass {
            pattern: 0,
            passes: 1,
            invert_between_passes: false,
        }
    }
}

impl Sanitize {
    /// A plain sanitize with `action`: restricted exit, deallocate after.
    pub fn new(action: SanitizeAction) -> Self {
        Sanitize {
            action,
            allow_unrestricted_exit: false,
            no_deallocate: false,
            overwrite: OverwritePass::default(),
        }
    }

    pub fn command(&self) -> NvmeAdminCmd {
        let mut cdw10 = self.action as u32;
        if self.allow_unrestricted_exit {
            cdw10 |= 1 << 3;
        }
        let mut cdw11 = 0;
        if self.action == SanitizeAction::Overwrite {
            let passes = u32::from(self.overwrite.passes.clamp(1, 16) & 0x0f);
            cdw10 |= passes << 4;
            if self.overwrite.invert_between_passes {
                cdw10 |= 1 << 8;
            }
            cdw11 = self.overwrite.pattern;
        }
        if self.no_deallocate {
            cdw10 |= 1 << 9;
        }
        NvmeAdminCmd {
            opcode: OPC_SANITIZE,
            cdw10,
            cdw11,
            ..NvmeAdminCmd::default()
        }
    }
}

/// SES, the Secure Erase Settings of Format NVM (CDW10 bits 11:9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecureEraseSetting {
    None = 0,
    UserData = 1,
    Crypto = 2,
}

/// Format NVM of `nsid` (or `NSID_ALL`) to LBA format `lbaf` (0..=63; the
/// current one keeps the block size), with secure erase `ses`. No
/// protection information and no metadata change: imprint erases, it does
/// not reformat.
pub fn format_nvm(nsid: u32, lbaf: u8, ses: SecureEraseSetting) -> NvmeAdminCmd {
    let lbaf = u32::from(lbaf & 0x3f);
    // LBAF's low four bits are CDW10 3:0, its upper two bits 13:12 (NVMe 2.0).
    let cdw10 = (lbaf & 0x0f) | ((lbaf >> 4) << 12) | ((ses as u32) << 9);
    NvmeAdminCmd {
        opcode: OPC_FORMAT_NVM,
        nsid,
        cdw10,
        ..NvmeAdminCmd::default()
    }
}

/// Why a buffer could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShortBuffer {
    pub what: &'static str,
    pub needed: usize,
    pub got: usize,
}

impl fmt::Display for ShortBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {} bytes, expected {}",
            self.what, self.got, self.needed
        )
    }
}

impl std::error::Error for ShortBuffer {}

fn need(buf: &[u8], needed: usize, what: &'static str) -> Result<(), ShortBuffer> {
    if buf.len() < needed {
        return Err(ShortBuffer {
            what,
            needed,
            got: buf.len(),
        });
    }
    Ok(())
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// An ASCII field padded with spaces (NVMe strings are not byte-swapped).
fn ascii(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

/// SANICAP (bytes 331:328).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sanicap {
    pub crypto_erase: bool,
    pub block_erase: bool,
    pub overwrite: bool,
    /// NDI: No-Deallocate Inhibited (NDAS would be refused).
    pub no_deallocate_inhibited: bool,
    /// NODMMAS, bits 31:30: 0 not reported, 1 media not modified by a
    /// no-deallocate sanitize's deallocation, 2 media modified.
    pub nodmmas: u8,
}

impl Sanicap {
    fn from_raw(raw: u32) -> Self {
        Sanicap {
            crypto_erase: raw & 1 != 0,
            block_erase: raw & 2 != 0,
            overwrite: raw & 4 != 0,
            no_deallocate_inhibited: raw & (1 << 29) != 0,
            nodmmas: (raw >> 30) as u8,
        }
    }

    pub fn any(&self) -> bool {
        self.crypto_erase || self.block_erase || self.overwrite
    }
}

/// FNA, Format NVM Attributes (byte 524).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fna {
    /// A format of one namespace formats them all.
    pub format_applies_to_all: bool,
    /// A secure erase of one namespace erases them all.
    pub secure_erase_applies_to_all: bool,
    /// Format NVM supports SES 2, cryptographic erase.
    pub crypto_erase_supported: bool,
}

/// What imprint reads from Identify Controller.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyController {
    pub serial: String,
    pub model: String,
    pub firmware: String,
    /// OACS (bytes 257:256).
    pub oacs: u16,
    pub sanicap: Sanicap,
    /// NN: how many namespaces the controller may have (bytes 519:516).
    pub namespaces: u32,
    /// ONCS (bytes 521:520); bit 2 is Dataset Management (deallocate).
    pub oncs: u16,
    pub fna: Fna,
}

impl IdentifyController {
    pub fn parse(b: &[u8]) -> Result<Self, ShortBuffer> {
        need(b, IDENTIFY_LEN, "Identify Controller data")?;
        let fna = b[524];
        Ok(IdentifyController {
            serial: ascii(&b[4..24]),
            model: ascii(&b[24..64]),
            firmware: ascii(&b[64..72]),
            oacs: le16(b, 256),
            sanicap: Sanicap::from_raw(le32(b, 328)),
            namespaces: le32(b, 516),
            oncs: le16(b, 520),
            fna: Fna {
                format_applies_to_all: fna & 1 != 0,
                secure_erase_applies_to_all: fna & 2 != 0,
                crypto_erase_supported: fna & 4 != 0,
            },
        })
    }

    /// OACS bit 1.
    pub fn format_nvm_supported(&self) -> bool {
        self.oacs & 2 != 0
    }

    /// ONCS bit 2: Dataset Management, through which Linux discards.
    pub fn deallocate_supported(&self) -> bool {
        self.oncs & 4 != 0
    }
}

/// One entry of the LBA format table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LbaFormat {
    pub metadata_size: u16,
    /// LBADS: the block size is 2^lbads bytes.
    pub lbads: u8,
    pub relative_performance: u8,
}

/// What imprint reads from Identify Namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyNamespace {
    /// NSZE, in logical blocks.
    pub size_blocks: u64,
    pub flbas: u8,
    pub lba_formats: Vec<LbaFormat>,
    pub dlfeat: u8,
}

impl IdentifyNamespace {
    pub fn parse(b: &[u8]) -> Result<Self, ShortBuffer> {
        need(b, IDENTIFY_LEN, "Identify Namespace data")?;
        // NLBAF is zero-based; at most 64 formats fit the table at 128.
        let count = usize::from(b[25]).min(63) + 1;
        let lba_formats = (0..count)
            .map(|i| {
                let at = 128 + 4 * i;
                LbaFormat {
                    metadata_size: le16(b, at),
                    lbads: b[at + 2],
                    relative_performance: b[at + 3] & 3,
                }
            })
            .collect();
        Ok(IdentifyNamespace {
            size_blocks: le64(b, 0),
            flbas: b[26],
            lba_formats,
            dlfeat: b[33],
        })
    }

    /// The index of the format in use: FLBAS bits 3:0, and 6:5 as the
    /// upper two bits when there are more than 16 formats.
    pub fn current_format(&self) -> u8 {
        (self.flbas & 0x0f) | ((self.flbas >> 5) & 0x03) << 4
    }

    pub fn block_size(&self) -> Option<u64> {
        let f = self.lba_formats.get(usize::from(self.current_format()))?;
        1u64.checked_shl(u32::from(f.lbads))
    }

    /// DLFEAT bits 2:0 = 001b: deallocated blocks read as zeroes.
    pub fn deallocated_reads_zeroes(&self) -> bool {
        self.dlfeat & 0x07 == 0x01
    }
}

/// SSTAT bits 2:0, the state of the most recent sanitize.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SanitizeState {
    NeverSanitized,
    Completed,
    InProgress,
    Failed,
    CompletedNoDeallocate,
    Reserved(u8),
}

/// The Sanitize Status log page (81h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SanitizeStatusLog {
    /// SPROG: progress of the sanitize in progress, in 1/65536ths.
    pub progress: u16,
    pub state: SanitizeState,
    /// Overwrite passes completed (SSTAT bits 7:3).
    pub overwrite_passes_done: u8,
    /// Global Data Erased (SSTAT bit 8): nothing written since the last
    /// sanitize or since manufacture.
    pub global_data_erased: bool,
    /// The CDW10 of the sanitize this status is about.
    pub scdw10: u32,
    pub estimate_overwrite: Option<Duration>,
    pub estimate_block_erase: Option<Duration>,
    pub estimate_crypto_erase: Option<Duration>,
    pub estimate_overwrite_no_dealloc: Option<Duration>,
    pub estimate_block_erase_no_dealloc: Option<Duration>,
    pub estimate_crypto_erase_no_dealloc: Option<Duration>,
}

fn estimate(raw: u32) -> Option<Duration> {
    // FFFFFFFFh: no time period is reported.
    (raw != u32::MAX).then(|| Duration::from_secs(u64::from(raw)))
}

impl SanitizeStatusLog {
    pub fn parse(b: &[u8]) -> Result<Self, ShortBuffer> {
        // The fields end at byte 32; a controller must send the full page,
        // but the fields are all imprint reads.
        need(b, 32, "Sanitize Status log")?;
        let sstat = le16(b, 2);
        let state = match sstat & 7 {
            0 => SanitizeState::NeverSanitized,
            1 => SanitizeState::Completed,
            2 => SanitizeState::InProgress,
            3 => SanitizeState::Failed,
            4 => SanitizeState::CompletedNoDeallocate,
            other => SanitizeState::Reserved(u8::try_from(other).unwrap_or(u8::MAX)),
        };
        Ok(SanitizeStatusLog {
            progress: le16(b, 0),
            state,
            overwrite_passes_done: ((sstat >> 3) & 0x1f) as u8,
            global_data_erased: sstat & (1 << 8) != 0,
            scdw10: le32(b, 4),
            estimate_overwrite: estimate(le32(b, 8)),
            estimate_block_erase: estimate(le32(b, 12)),
            estimate_crypto_erase: estimate(le32(b, 16)),
            estimate_overwrite_no_dealloc: estimate(le32(b, 20)),
            estimate_block_erase_no_dealloc: estimate(le32(b, 24)),
            estimate_crypto_erase_no_dealloc: estimate(le32(b, 28)),
        })
    }

    /// Progress as a fraction, while a sanitize runs.
    pub fn fraction(&self) -> f64 {
        f64::from(self.progress) / 65536.0
    }

    /// The SANACT of the sanitize this log describes.
    pub fn action(&self) -> u8 {
        (self.scdw10 & 7) as u8
    }

    /// The controller's estimate for `action` (with deallocation).
    pub fn estimate_for(&self, action: SanitizeAction) -> Option<Duration> {
        match action {
            SanitizeAction::CryptoErase => self.estimate_crypto_erase,
            SanitizeAction::BlockErase => self.estimate_block_erase,
            SanitizeAction::Overwrite => self.estimate_overwrite,
            SanitizeAction::ExitFailureMode => None,
        }
    }
}

/// The status field of an NVMe completion, as the kernel returns it from
/// the admin ioctl (the phase bit already dropped): code in bits 7:0, type
/// in 10:8, More in 13, Do Not Retry in 14.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NvmeStatus(pub u32);

impl NvmeStatus {
    pub fn code_type(self) -> u8 {
        ((self.0 >> 8) & 7) as u8
    }

    pub fn code(self) -> u8 {
        (self.0 & 0xff) as u8
    }

    pub fn do_not_retry(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    pub fn is_success(self) -> bool {
        self.0 & 0x7ff == 0
    }

    /// The name the spec gives the status, where imprint knows it.
    pub fn name(self) -> Option<&'static str> {
        Some(match (self.code_type(), self.code()) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x05) => "Commands Aborted due to Power Loss Notification",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x0B) => "Invalid Namespace or Format",
            (0, 0x0C) => "Command Sequence Error",
            (0, 0x1C) => "Sanitize Failed",
            (0, 0x1D) => "Sanitize In Progress",
            (0, 0x20) => "Namespace is Write Protected",
            (0, 0x21) => "Command Interrupted",
            (0, 0x82) => "Namespace Not Ready",
            (0, 0x84) => "Format In Progress",
            (1, 0x0A) => "Invalid Format",
            (1, 0x15) => "Namespace Insufficient Capacity",
            (1, 0x23) => "Sanitize Prohibited While Persistent Memory Region is Enabled",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x86) => "Access Denied",
            _ => return None,
        })
    }

    /// What to do about it, for the statuses a secure erase meets.
    pub fn advice(self) -> Option<&'static str> {
        Some(match (self.code_type(), self.code()) {
            (0, 0x01) | (0, 0x02) => {
                "the controller does not support this command or action; choose another erase mode"
            }
            (0, 0x1C) => {
                "the last sanitize failed and the controller only accepts another sanitize; run the erase again"
            }
            (0, 0x1D) => "a sanitize is already running; wait for it (nvme sanitize-log) and retry",
            (0, 0x84) => "a format is already running; wait for it to finish and retry",
            (0, 0x20) => "the namespace is write protected; clear the write protection first",
            (1, 0x0A) => "the controller refused the LBA format or secure erase setting",
            (1, 0x23) => "disable the Persistent Memory Region, then retry",
            _ => return None,
        })
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}")?,
            None => write!(
                f,
                "status type {}h code {:02X}h",
                self.code_type(),
                self.code()
            )?,
        }
        write!(f, " (status {:#06x}", self.0)?;
        if self.do_not_retry() {
            write!(f, ", do not retry")?;
        }
        write!(f, ")")?;
        if let Some(advice) = self.advice() {
            write!(f, ": {advice}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NvmeStatus({:#06x} {self})", self.0)
    }
}

impl std::error::Error for NvmeStatus {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The 72-byte `struct nvme_admin_cmd` nvme-cli 2.3 (libnvme 1.3,
    /// Debian bookworm) passed to NVME_IOCTL_ADMIN_CMD, captured by
    /// testdata/capture/capall.py under gdb against a loop device (see
    /// testdata/capture/README.md); the data pointer (bytes 24..32) is
    /// zeroed, as it differs per run.
    fn golden(hex: &str) -> [u8; 72] {
        let mut out = [0u8; 72];
        assert_eq!(hex.len(), 144, "{hex}");
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out[24..32].fill(0);
        out
    }

    // nvme id-ctrl /dev/loop0
    const ID_CTRL: &str = "06000000000000000000000000000000000000000000000090d2ffffff7f000000000000001000000100000000000000000000000000000000000000000000000000000000000000";
    // nvme id-ns -n 1 /dev/loop0
    const ID_NS_1: &str = "06000000010000000000000000000000000000000000000080d2ffffff7f000000000000001000000000000000000000000000000000000000000000000000000000000000000000";
    // nvme sanitize-log /dev/loop0
    const SANITIZE_LOG: &str = "02000000ffffffff00000000000000000000000000000000a0e0ffffff7f0000000000000002000081007f0000000000000000000000000000000000000000000000000000000000";
    // nvme sanitize -a 1|2|3|4
    const SANITIZE_EXIT: &str = "840000000000000000000000000000000000000000000000000000000000000000000000000000000100000000000000000000000000000000000000000000000000000000000000";
    const SANITIZE_BLOCK: &str = "840000000000000000000000000000000000000000000000000000000000000000000000000000000200000000000000000000000000000000000000000000000000000000000000";
    const SANITIZE_OVERWRITE: &str = "840000000000000000000000000000000000000000000000000000000000000000000000000000000300000000000000000000000000000000000000000000000000000000000000";
    const SANITIZE_CRYPTO: &str = "840000000000000000000000000000000000000000000000000000000000000000000000000000000400000000000000000000000000000000000000000000000000000000000000";
    // nvme sanitize -a 2 -u
    const SANITIZE_BLOCK_AUSE: &str = "840000000000000000000000000000000000000000000000000000000000000000000000000000000a00000000000000000000000000000000000000000000000000000000000000";
    // nvme sanitize -a 4 -d
    const SANITIZE_CRYPTO_NDAS: &str = "840000000000000000000000000000000000000000000000000000000000000000000000000000000402000000000000000000000000000000000000000000000000000000000000";
    // nvme sanitize -a 3 -p 0xa5a5a5a5 -n 3 -i
    const SANITIZE_OVERWRITE_3_INV: &str = "8400000000000000000000000000000000000000000000000000000000000000000000000000000033010000a5a5a5a5000000000000000000000000000000000000000000000000";
    // nvme format -s 1 -l 0 -n 1 --force (identify answered with zeroes)
    const FORMAT_NS1_SES1: &str = "800000000100000000000000000000000000000000000000000000000000000000000000000000000002000000000000000000000000000000000000000000000000000000000000";
    // nvme format -s 2 -l 0 -n 1 --force
    const FORMAT_NS1_SES2: &str = "800000000100000000000000000000000000000000000000000000000000000000000000000000000004000000000000000000000000000000000000000000000000000000000000";
    // nvme format -s 1 -l 0 --force, where the controller's FNA said "all
    // namespaces" (nvme-cli then sends NSID FFFFFFFFh)
    const FORMAT_ALL_SES1: &str = "80000000ffffffff00000000000000000000000000000000000000000000000000000000000000000002000000000000000000000000000000000000000000000000000000000000";
    const FORMAT_ALL_SES2: &str = "80000000ffffffff00000000000000000000000000000000000000000000000000000000000000000004000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn builders_match_nvme_cli_byte_for_byte() {
        use SanitizeAction::*;
        let overwrite = Sanitize {
            overwrite: OverwritePass {
                pattern: 0xa5a5_a5a5,
                passes: 3,
                invert_between_passes: true,
            },
            ..Sanitize::new(Overwrite)
        };
        let mut sixteen = Sanitize::new(Overwrite);
        sixteen.overwrite.passes = 16;
        let cases: Vec<(&str, NvmeAdminCmd, &str)> = vec![
            ("identify controller", identify_controller(), ID_CTRL),
            ("identify namespace 1", identify_namespace(1), ID_NS_1),
            ("sanitize status log", sanitize_status_log(), SANITIZE_LOG),
            (
                "sanitize exit failure",
                Sanitize::new(ExitFailureMode).command(),
                SANITIZE_EXIT,
            ),
            (
                "sanitize block",
                Sanitize::new(BlockErase).command(),
                SANITIZE_BLOCK,
            ),
            // nvme-cli's default OWPASS is 0h, which the spec reads as 16 passes.
            (
                "sanitize overwrite x16",
                sixteen.command(),
                SANITIZE_OVERWRITE,
            ),
            (
                "sanitize crypto",
                Sanitize::new(CryptoErase).command(),
                SANITIZE_CRYPTO,
            ),
            (
                "sanitize block ause",
                Sanitize {
                    allow_unrestricted_exit: true,
                    ..Sanitize::new(BlockErase)
                }
                .command(),
                SANITIZE_BLOCK_AUSE,
            ),
            (
                "sanitize crypto ndas",
                Sanitize {
                    no_deallocate: true,
                    ..Sanitize::new(CryptoErase)
                }
                .command(),
                SANITIZE_CRYPTO_NDAS,
            ),
            (
                "sanitize overwrite x3 inverted",
                overwrite.command(),
                SANITIZE_OVERWRITE_3_INV,
            ),
            (
                "format ns1 ses1",
                format_nvm(1, 0, SecureEraseSetting::UserData),
                FORMAT_NS1_SES1,
            ),
            (
                "format ns1 ses2",
                format_nvm(1, 0, SecureEraseSetting::Crypto),
                FORMAT_NS1_SES2,
            ),
            (
                "format all ses1",
                format_nvm(NSID_ALL, 0, SecureEraseSetting::UserData),
                FORMAT_ALL_SES1,
            ),
            (
                "format all ses2",
                format_nvm(NSID_ALL, 0, SecureEraseSetting::Crypto),
                FORMAT_ALL_SES2,
            ),
        ];
        for (name, cmd, hex) in cases {
            assert_eq!(cmd.to_bytes(), golden(hex), "{name}");
        }
    }

    #[test]
    fn sanitize_fields_land_in_their_bits() {
        // One pass encodes as 1; sixteen as 0 (NVMe: OWPASS 0h = 16 passes).
        let mut s = Sanitize::new(SanitizeAction::Overwrite);
        s.overwrite.passes = 16;
        assert_eq!(s.command().cdw10, 0x03);
        s.overwrite.passes = 1;
        assert_eq!(s.command().cdw10, 0x13);
        // Overwrite parameters are ignored for the other actions.
        s.action = SanitizeAction::BlockErase;
        s.overwrite.pattern = 0xdead_beef;
        assert_eq!((s.command().cdw10, s.command().cdw11), (0x02, 0));
    }

    #[test]
    fn format_splits_lba_formats_above_15() {
        // LBAF 0x21: low nibble 1 in bits 3:0, upper bits 2 in 13:12.
        let cmd = format_nvm(1, 0x21, SecureEraseSetting::None);
        assert_eq!(cmd.cdw10, 0x2001);
    }

    /// A controller's Identify data with the fields imprint reads set.
    pub(crate) fn identify_controller_bytes(sanicap: u32, oacs: u16, fna: u8) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[4..24].copy_from_slice(b"S123456789          ");
        let mut model = [b' '; 40];
        model[..16].copy_from_slice(b"Imprint NVMe SSD");
        b[24..64].copy_from_slice(&model);
        b[64..72].copy_from_slice(b"1.0     ");
        b[256..258].copy_from_slice(&oacs.to_le_bytes());
        b[328..332].copy_from_slice(&sanicap.to_le_bytes());
        b[516..520].copy_from_slice(&1u32.to_le_bytes());
        b[520..522].copy_from_slice(&0x0004u16.to_le_bytes());
        b[524] = fna;
        b
    }

    #[test]
    fn identify_controller_parses_strings_and_capabilities() {
        let b = identify_controller_bytes(0x2000_0007 | 0x8000_0000, 0x0002, 0x06);
        let id = IdentifyController::parse(&b).unwrap();
        assert_eq!(id.serial, "S123456789");
        assert_eq!(id.model, "Imprint NVMe SSD");
        assert_eq!(id.firmware, "1.0");
        assert!(id.format_nvm_supported());
        assert!(id.deallocate_supported());
        assert_eq!(
            id.sanicap,
            Sanicap {
                crypto_erase: true,
                block_erase: true,
                overwrite: true,
                no_deallocate_inhibited: true,
                nodmmas: 2,
            }
        );
        assert_eq!(
            id.fna,
            Fna {
                format_applies_to_all: false,
                secure_erase_applies_to_all: true,
                crypto_erase_supported: true,
            }
        );
        let none = IdentifyController::parse(&identify_controller_bytes(0, 0, 0)).unwrap();
        assert!(!none.sanicap.any());
        assert!(!none.format_nvm_supported());
    }

    #[test]
    fn parsers_refuse_short_buffers_without_panicking() {
        for len in [0, 1, 331, 525, 4095] {
            let b = vec![0xffu8; len];
            assert!(IdentifyController::parse(&b).is_err(), "{len}");
            assert!(IdentifyNamespace::parse(&b).is_err(), "{len}");
        }
        let err = SanitizeStatusLog::parse(&[0u8; 31]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Sanitize Status log is 31 bytes, expected 32"
        );
    }

    pub(crate) fn identify_namespace_bytes(blocks: u64, lbads: u8, dlfeat: u8) -> Vec<u8> {
        let mut b = vec![0u8; 4096];
        b[0..8].copy_from_slice(&blocks.to_le_bytes());
        b[25] = 1; // two formats
        b[26] = 0x01; // the second in use
        b[33] = dlfeat;
        b[128..132].copy_from_slice(&[0, 0, 9, 2]);
        b[132..136].copy_from_slice(&[0, 0, lbads, 0]);
        b
    }

    #[test]
    fn identify_namespace_reads_size_format_and_dlfeat() {
        let ns = IdentifyNamespace::parse(&identify_namespace_bytes(1 << 20, 12, 0x09)).unwrap();
        assert_eq!(ns.size_blocks, 1 << 20);
        assert_eq!(ns.lba_formats.len(), 2);
        assert_eq!(ns.current_format(), 1);
        assert_eq!(ns.block_size(), Some(4096));
        assert!(ns.deallocated_reads_zeroes(), "DLFEAT 09h: bits 2:0 = 001b");
        for (dlfeat, zeroes) in [(0x00, false), (0x02, false), (0x08, false), (0x01, true)] {
            let ns = IdentifyNamespace::parse(&identify_namespace_bytes(8, 9, dlfeat)).unwrap();
            assert_eq!(ns.deallocated_reads_zeroes(), zeroes, "DLFEAT {dlfeat:#x}");
        }
        // A format index past the table gives no block size instead of a panic.
        let mut b = identify_namespace_bytes(8, 9, 0);
        b[26] = 0x0f;
        assert_eq!(IdentifyNamespace::parse(&b).unwrap().block_size(), None);
    }

    pub(crate) fn sanitize_log_bytes(
        sprog: u16,
        sstat: u16,
        scdw10: u32,
        estimates: [u32; 6],
    ) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[0..2].copy_from_slice(&sprog.to_le_bytes());
        b[2..4].copy_from_slice(&sstat.to_le_bytes());
        b[4..8].copy_from_slice(&scdw10.to_le_bytes());
        for (i, e) in estimates.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&e.to_le_bytes());
        }
        b
    }

    #[test]
    fn sanitize_log_decodes_state_progress_and_estimates() {
        let b = sanitize_log_bytes(
            0x8000,
            0x0002 | (2 << 3) | 0x100,
            0x04,
            [600, 60, 5, u32::MAX, 0, 7],
        );
        let log = SanitizeStatusLog::parse(&b).unwrap();
        assert_eq!(log.state, SanitizeState::InProgress);
        assert!((log.fraction() - 0.5).abs() < 1e-9);
        assert_eq!(log.overwrite_passes_done, 2);
        assert!(log.global_data_erased);
        assert_eq!(log.action(), 4);
        assert_eq!(
            log.estimate_for(SanitizeAction::Overwrite),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            log.estimate_for(SanitizeAction::BlockErase),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            log.estimate_for(SanitizeAction::CryptoErase),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            log.estimate_overwrite_no_dealloc, None,
            "FFFFFFFFh is no estimate"
        );
        assert_eq!(log.estimate_block_erase_no_dealloc, Some(Duration::ZERO));
        assert_eq!(
            log.estimate_crypto_erase_no_dealloc,
            Some(Duration::from_secs(7))
        );
        let states = [
            (0, SanitizeState::NeverSanitized),
            (1, SanitizeState::Completed),
            (3, SanitizeState::Failed),
            (4, SanitizeState::CompletedNoDeallocate),
            (6, SanitizeState::Reserved(6)),
        ];
        for (raw, state) in states {
            let log = SanitizeStatusLog::parse(&sanitize_log_bytes(0, raw, 0, [0; 6])).unwrap();
            assert_eq!(log.state, state);
        }
    }

    #[test]
    fn statuses_have_names_and_advice() {
        let invalid_field = NvmeStatus(0x4002);
        assert!(invalid_field.do_not_retry());
        assert!(!invalid_field.is_success());
        assert_eq!(
            invalid_field.to_string(),
            "Invalid Field in Command (status 0x4002, do not retry): the controller does not support this command or action; choose another erase mode"
        );
        assert_eq!(NvmeStatus(0x001d).name(), Some("Sanitize In Progress"));
        assert_eq!(NvmeStatus(0x010a).name(), Some("Invalid Format"));
        assert_eq!(NvmeStatus(0x0001).name(), Some("Invalid Command Opcode"));
        assert_eq!(
            NvmeStatus(0x0377).to_string(),
            "status type 3h code 77h (status 0x0377)"
        );
        assert!(NvmeStatus(0).is_success());
        // More (bit 13) alone is not a failure.
        assert!(NvmeStatus(0x2000).is_success());
    }
}
