//! SCSI commands for the device's own erase (SBC-4 SANITIZE) and the ones
//! around it, with sense data parsing. Pure; `sys::passthru::sg_io` sends
//! them. CDBs are checked against sg3_utils 1.46 (testdata/capture/sg3.txt).

use std::fmt;

pub use crate::sys::passthru::SgDirection;

/// SANITIZE service actions (SBC-4 5.30).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SanitizeAction {
    Overwrite = 0x01,
    BlockErase = 0x02,
    CryptoErase = 0x03,
    ExitFailureMode = 0x1F,
}

/// SANITIZE (48h). IMMED returns at once and leaves progress to REQUEST
/// SENSE; AUSE lets a failed sanitize be exited with a plain command (off
/// in imprint: a failed erase stays visible). `parameter_len` is the
/// overwrite parameter list's length, 0 for the other actions.
pub fn sanitize(action: SanitizeAction, immed: bool, ause: bool, parameter_len: u16) -> [u8; 10] {
    let mut byte1 = action as u8;
    if immed {
        byte1 |= 0x80;
    }
    if ause {
        byte1 |= 0x20;
    }
    let [l1, l0] = parameter_len.to_be_bytes();
    [0x48, byte1, 0, 0, 0, 0, 0, l1, l0, 0]
}

/// The OVERWRITE parameter list (SBC-4 table 116): INVERT, the pass count
/// (1..=31) and the initialization pattern.
pub fn overwrite_parameters(pattern: &[u8], passes: u8, invert: bool) -> Vec<u8> {
    let mut list = Vec::with_capacity(4 + pattern.len());
    list.push((u8::from(invert) << 7) | (passes.clamp(1, 31)));
    list.push(0);
    let len = u16::try_from(pattern.len()).unwrap_or(u16::MAX);
    list.extend_from_slice(&len.to_be_bytes());
    list.extend_from_slice(&pattern[..usize::from(len)]);
    list
}

/// REPORT SUPPORTED OPERATION CODES (A3h/0Ch) for one command with a
/// service action (REPORTING OPTIONS 010b), as `sg_opcodes -o OP -s SA`.
pub fn report_supported_operation(opcode: u8, service_action: u16, alloc_len: u32) -> [u8; 12] {
    let [s1, s0] = service_action.to_be_bytes();
    let a = alloc_len.to_be_bytes();
    [
        0xA3, 0x0C, 0x02, opcode, s1, s0, a[0], a[1], a[2], a[3], 0, 0,
    ]
}

/// The SUPPORT field of a one-command answer (SPC-4 table 283).
pub fn command_supported(answer: &[u8]) -> bool {
    // 011b: supported as the standard says; 101b: in a vendor-specific way.
    matches!(answer.get(1).map(|b| b & 0x07), Some(0x03 | 0x05))
}

pub fn test_unit_ready() -> [u8; 6] {
    [0; 6]
}

/// REQUEST SENSE (03h), descriptor format not asked for: the answer may be
/// either, and `Sense::parse` reads both.
pub fn request_sense(alloc_len: u8) -> [u8; 6] {
    [0x03, 0, 0, 0, alloc_len, 0]
}

/// INQUIRY of a vital product data page.
pub fn inquiry_vpd(page: u8, alloc_len: u16) -> [u8; 6] {
    let [a1, a0] = alloc_len.to_be_bytes();
    [0x12, 0x01, page, a1, a0, 0]
}

/// Logical Block Provisioning VPD (B2h): unmapping supported (LBPU) and
/// unmapped blocks reading as zeroes (LBPRZ, byte 5 bits 4:2 = 001b in
/// SBC-4; SBC-3 had a one-bit LBPRZ at bit 2, which reads the same).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    pub unmap: bool,
    pub unmapped_reads_zeroes: bool,
}

pub fn parse_provisioning(page: &[u8]) -> Option<Provisioning> {
    if page.get(1) != Some(&0xB2) {
        return None;
    }
    let b5 = *page.get(5)?;
    Some(Provisioning {
        unmap: b5 & 0x80 != 0,
        unmapped_reads_zeroes: (b5 >> 2) & 0x07 == 0x01,
    })
}

/// Block Device Characteristics VPD (B1h): MEDIUM ROTATION RATE 0001h
/// means solid state.
pub fn parse_non_rotating(page: &[u8]) -> Option<bool> {
    if page.get(1) != Some(&0xB1) {
        return None;
    }
    Some(u16::from_be_bytes([*page.get(4)?, *page.get(5)?]) == 1)
}

/// SCSI status byte values imprint tells apart.
pub const STATUS_GOOD: u8 = 0x00;
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

/// Sense keys (SPC-4 table 54).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SenseKey {
    NoSense,
    RecoveredError,
    NotReady,
    MediumError,
    HardwareError,
    IllegalRequest,
    UnitAttention,
    DataProtect,
    AbortedCommand,
    Other(u8),
}

impl SenseKey {
    fn from_raw(raw: u8) -> Self {
        match raw & 0x0f {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0xB => SenseKey::AbortedCommand,
            other => SenseKey::Other(other),
        }
    }
}

/// Sense data, fixed (70h/71h) or descriptor (72h/73h) format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// The sense-key-specific progress indication (SKSV set), in 1/65536ths.
    pub progress: Option<u16>,
}

impl Sense {
    pub fn parse(b: &[u8]) -> Option<Sense> {
        match b.first()? & 0x7f {
            0x70 | 0x71 => {
                let key = SenseKey::from_raw(*b.get(2)?);
                let asc = b.get(12).copied().unwrap_or(0);
                let ascq = b.get(13).copied().unwrap_or(0);
                let progress = match b.get(15..18) {
                    Some(sks) if sks[0] & 0x80 != 0 => Some(u16::from_be_bytes([sks[1], sks[2]])),
                    _ => None,
                };
                Some(Sense {
                    key,
                    asc,
                    ascq,
                    progress: progress.filter(|_| Self::progress_key(key)),
                })
            }
            0x72 | 0x73 => {
                let key = SenseKey::from_raw(*b.get(1)?);
                let asc = *b.get(2)?;
                let ascq = *b.get(3)?;
                let total = (8 + usize::from(b.get(7).copied().unwrap_or(0))).min(b.len());
                let mut progress = None;
                let mut at = 8;
                while at + 2 <= total {
                    let len = 2 + usize::from(b[at + 1]);
                    let Some(d) = b.get(at..at + len) else { break };
                    // Sense key specific descriptor (02h).
                    if d[0] == 0x02 && d.len() >= 7 && d[4] & 0x80 != 0 {
                        progress = Some(u16::from_be_bytes([d[5], d[6]]));
                    }
                    at += len;
                }
                Some(Sense {
                    key,
                    asc,
                    ascq,
                    progress: progress.filter(|_| Self::progress_key(key)),
                })
            }
            _ => None,
        }
    }

    /// Only NO SENSE and NOT READY carry progress in the SKS field.
    fn progress_key(key: SenseKey) -> bool {
        matches!(key, SenseKey::NoSense | SenseKey::NotReady)
    }

    /// NOT READY, 04h/1Bh: LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS.
    pub fn sanitize_in_progress(&self) -> bool {
        self.key == SenseKey::NotReady && (self.asc, self.ascq) == (0x04, 0x1B)
    }

    /// 31h/03h: SANITIZE COMMAND FAILED (MEDIUM ERROR, or NOT READY while
    /// the device stays in failure mode).
    pub fn sanitize_failed(&self) -> bool {
        (self.asc, self.ascq) == (0x31, 0x03)
    }

    /// Nothing to report: NO SENSE with no additional sense code.
    pub fn is_clear(&self) -> bool {
        self.key == SenseKey::NoSense && self.asc == 0 && self.ascq == 0
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.asc, self.ascq) {
            (0x04, 0x1B) => " (sanitize in progress)",
            (0x20, 0x00) => " (invalid command operation code)",
            (0x24, 0x00) => " (invalid field in CDB)",
            (0x26, 0x00) => " (invalid field in parameter list)",
            (0x31, 0x03) => " (sanitize command failed)",
            (0x29, _) => " (power on or reset occurred)",
            (0x00, 0x1D) => " (ATA pass-through information available)",
            _ => "",
        };
        write!(
            f,
            "sense key {:?}, ASC/ASCQ {:02X}h/{:02X}h{what}",
            self.key, self.asc, self.ascq
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// What sg3_utils 1.46 (Debian bookworm) put in sg_io_hdr, captured
    /// with testdata/capture/capsg.py under gdb against a loop device
    /// (testdata/capture/README.md).
    // sg_sanitize -Q --crypto / --block / --fail / --crypto --ause
    const SG_CRYPTO: &str = "48830000000000000000";
    const SG_BLOCK: &str = "48820000000000000000";
    const SG_EXIT: &str = "489f0000000000000000";
    const SG_CRYPTO_AUSE: &str = "48a30000000000000000";
    // sg_sanitize -Q --overwrite --pattern=FILE (a5 a5 a5 a5), then with
    // --count=3 --invert: CDB and the 8-byte parameter list.
    const SG_OVERWRITE: &str = "48810000000000000800";
    const SG_OVERWRITE_LIST: &str = "01000004a5a5a5a5";
    const SG_OVERWRITE_LIST_3_INV: &str = "83000004a5a5a5a5";
    // sg_opcodes -o 0x48 -s 3 / -s 1
    const SG_OPCODES_48_3: &str = "a30c02480003000020000000";
    const SG_OPCODES_48_1: &str = "a30c02480001000020000000";
    // The REQUEST SENSE sg_sanitize polls with after IMMED.
    const SG_REQUEST_SENSE: &str = "03000000fc00";

    #[test]
    fn cdbs_match_sg3_utils_byte_for_byte() {
        use SanitizeAction::*;
        assert_eq!(
            sanitize(CryptoErase, true, false, 0).to_vec(),
            hex(SG_CRYPTO)
        );
        assert_eq!(sanitize(BlockErase, true, false, 0).to_vec(), hex(SG_BLOCK));
        assert_eq!(
            sanitize(ExitFailureMode, true, false, 0).to_vec(),
            hex(SG_EXIT)
        );
        assert_eq!(
            sanitize(CryptoErase, true, true, 0).to_vec(),
            hex(SG_CRYPTO_AUSE)
        );
        let list = overwrite_parameters(&[0xa5; 4], 1, false);
        assert_eq!(list, hex(SG_OVERWRITE_LIST));
        assert_eq!(
            overwrite_parameters(&[0xa5; 4], 3, true),
            hex(SG_OVERWRITE_LIST_3_INV)
        );
        let len = u16::try_from(list.len()).unwrap();
        assert_eq!(
            sanitize(Overwrite, true, false, len).to_vec(),
            hex(SG_OVERWRITE)
        );
        assert_eq!(
            report_supported_operation(0x48, 3, 8192).to_vec(),
            hex(SG_OPCODES_48_3)
        );
        assert_eq!(
            report_supported_operation(0x48, 1, 8192).to_vec(),
            hex(SG_OPCODES_48_1)
        );
        assert_eq!(request_sense(252).to_vec(), hex(SG_REQUEST_SENSE));
        assert_eq!(inquiry_vpd(0xB2, 64), [0x12, 0x01, 0xB2, 0, 64, 0]);
    }

    #[test]
    fn one_command_support_field() {
        assert!(command_supported(&[0, 0x03, 0, 10]));
        assert!(
            command_supported(&[0, 0x85, 0, 10]),
            "CTDP bit does not matter"
        );
        assert!(!command_supported(&[0, 0x01, 0, 0]), "not supported");
        assert!(!command_supported(&[0, 0x00]), "no data about it");
        assert!(!command_supported(&[0]));
    }

    #[test]
    fn provisioning_and_rotation_pages() {
        let mut b2 = [0u8; 8];
        b2[1] = 0xB2;
        b2[5] = 0x80 | 0x04;
        assert_eq!(
            parse_provisioning(&b2),
            Some(Provisioning {
                unmap: true,
                unmapped_reads_zeroes: true,
            })
        );
        b2[5] = 0x80 | 0x08; // 010b: the provisioning pattern, not zeroes
        assert!(!parse_provisioning(&b2).unwrap().unmapped_reads_zeroes);
        assert_eq!(parse_provisioning(&b2[..5]), None);
        assert_eq!(parse_provisioning(&[0, 0xB1, 0, 0, 0, 0]), None);
        assert_eq!(parse_non_rotating(&[0, 0xB1, 0, 0x3c, 0, 1]), Some(true));
        assert_eq!(
            parse_non_rotating(&[0, 0xB1, 0, 0x3c, 0x1c, 0x20]),
            Some(false)
        );
        assert_eq!(parse_non_rotating(&[0, 0xB1, 0]), None);
    }

    #[test]
    fn fixed_sense_with_sanitize_progress() {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = 0x02;
        s[7] = 10;
        s[12] = 0x04;
        s[13] = 0x1B;
        s[15] = 0x80;
        s[16] = 0x40;
        let sense = Sense::parse(&s).unwrap();
        assert!(sense.sanitize_in_progress());
        assert_eq!(sense.progress, Some(0x4000));
        assert_eq!(
            sense.to_string(),
            "sense key NotReady, ASC/ASCQ 04h/1Bh (sanitize in progress)"
        );
        // SKSV clear: the field means nothing.
        s[15] = 0;
        assert_eq!(Sense::parse(&s).unwrap().progress, None);
        // Short fixed sense still yields the key.
        assert_eq!(
            Sense::parse(&[0x70, 0, 0x05]).unwrap().key,
            SenseKey::IllegalRequest
        );
    }

    #[test]
    fn descriptor_sense_with_progress_and_failure() {
        let s = [
            0x72, 0x02, 0x04, 0x1B, 0, 0, 0, 8, 0x02, 0x06, 0, 0, 0x80, 0xC0, 0x00, 0,
        ];
        let sense = Sense::parse(&s).unwrap();
        assert!(sense.sanitize_in_progress());
        assert_eq!(sense.progress, Some(0xC000));
        let failed = Sense::parse(&[0x72, 0x03, 0x31, 0x03, 0, 0, 0, 0]).unwrap();
        assert!(failed.sanitize_failed());
        assert_eq!(failed.key, SenseKey::MediumError);
        // A descriptor running past the end: the header still parses.
        let cut = Sense::parse(&s[..12]).unwrap();
        assert_eq!(cut.progress, None);
        assert!(
            Sense::parse(&[0x72, 0, 0, 0, 0, 0, 0, 0])
                .unwrap()
                .is_clear()
        );
        assert_eq!(Sense::parse(&[]), None);
        assert_eq!(Sense::parse(&[0x7f, 0, 0]), None);
    }
}
