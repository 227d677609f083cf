//! ATA commands for the device's own erase, sent as ATA PASS-THROUGH (16)
//! CDBs through SG_IO, and parsers for IDENTIFY DEVICE and the ATA status
//! the SAT layer returns. Pure.
//!
//! Word numbers are ACS-3's (IDENTIFY DEVICE, table 45; SECURITY commands
//! 7.41-7.47; SANITIZE 7.35); the CDB layout is SAT-4's (12.2.2, ATA
//! PASS-THROUGH (16)). The CDBs and data blocks are checked against what
//! hdparm 9.65 sends (testdata/capture/hdparm.txt).

use std::time::Duration;

use super::nvme::ShortBuffer;
pub use crate::sys::passthru::SgDirection;

const IDENTIFY_LEN: usize = 512;
/// Every ATA data block here (IDENTIFY, the security password) is one
/// 512-byte sector.
pub const SECTOR: usize = 512;

/// How long an erase takes by the drive's own reckoning, words 89 and 90.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EraseTime {
    #[default]
    NotReported,
    Minutes(u32),
    /// The field's maximum: "more than this many minutes".
    MoreThan(u32),
}

impl EraseTime {
    /// ACS-3 7.12.7.41: bit 15 set is the extended format (bits 14:0 × 2
    /// minutes, 7FFFh meaning more than 65532); otherwise bits 7:0 × 2
    /// minutes, FFh meaning more than 508. Zero: not reported.
    pub fn from_word(word: u16) -> Self {
        let (value, max) = if word & 0x8000 != 0 {
            (u32::from(word & 0x7fff), 0x7fff)
        } else {
            (u32::from(word & 0x00ff), 0xff)
        };
        match value {
            0 => EraseTime::NotReported,
            v if v == max => EraseTime::MoreThan(2 * (v - 1)),
            v => EraseTime::Minutes(2 * v),
        }
    }

    /// The time as a duration: the bound for "more than".
    pub fn duration(self) -> Option<Duration> {
        match self {
            EraseTime::NotReported => None,
            EraseTime::Minutes(m) | EraseTime::MoreThan(m) => {
                Some(Duration::from_secs(60 * u64::from(m)))
            }
        }
    }
}

/// The security feature set's state, word 128 (and word 82 bit 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Security {
    pub supported: bool,
    /// A user password is set.
    pub enabled: bool,
    pub locked: bool,
    /// SECURITY FREEZE LOCK was issued (usually by the BIOS) since power on.
    pub frozen: bool,
    /// Too many wrong passwords: only a power cycle resets the counter.
    pub count_expired: bool,
    pub enhanced_erase_supported: bool,
}

/// The sanitize feature set, word 59 bits 12-15.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SanitizeSupport {
    pub supported: bool,
    pub crypto_scramble: bool,
    pub overwrite: bool,
    pub block_erase: bool,
}

/// What imprint reads from IDENTIFY DEVICE.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentifyDevice {
    pub serial: String,
    pub firmware: String,
    pub model: String,
    pub sectors: u64,
    pub security: Security,
    pub erase_time_normal: EraseTime,
    pub erase_time_enhanced: EraseTime,
    pub sanitize: SanitizeSupport,
    /// Word 169 bit 0: DATA SET MANAGEMENT with TRIM.
    pub trim: bool,
    /// Word 69 bit 14: deterministic data after TRIM.
    pub drat: bool,
    /// Word 69 bit 5: trimmed sectors read as zeroes.
    pub rzat: bool,
    /// Word 217 = 0001h: a solid-state drive.
    pub non_rotating: bool,
}

fn word(b: &[u8], n: usize) -> u16 {
    u16::from_le_bytes([b[2 * n], b[2 * n + 1]])
}

/// ATA strings hold two characters per word, the first in the high byte.
fn ata_string(b: &[u8], first: usize, last: usize) -> String {
    let bytes: Vec<u8> = (first..=last)
        .flat_map(|n| word(b, n).to_be_bytes())
        .collect();
    String::from_utf8_lossy(&bytes)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

impl IdentifyDevice {
    pub fn parse(b: &[u8]) -> Result<Self, ShortBuffer> {
        if b.len() < IDENTIFY_LEN {
            return Err(ShortBuffer {
                what: "ATA IDENTIFY DEVICE data",
                needed: IDENTIFY_LEN,
                got: b.len(),
            });
        }
        let w128 = word(b, 128);
        let w59 = word(b, 59);
        let w69 = word(b, 69);
        let sectors = if word(b, 83) & (1 << 10) != 0 {
            (100..104)
                .rev()
                .fold(0u64, |acc, n| (acc << 16) | u64::from(word(b, n)))
        } else {
            (u64::from(word(b, 61)) << 16) | u64::from(word(b, 60))
        };
        Ok(IdentifyDevice {
            serial: ata_string(b, 10, 19),
            firmware: ata_string(b, 23, 26),
            model: ata_string(b, 27, 46),
            sectors,
            security: Security {
                supported: word(b, 82) & 2 != 0 || w128 & 1 != 0,
                enabled: w128 & 2 != 0,
                locked: w128 & 4 != 0,
                frozen: w128 & 8 != 0,
                count_expired: w128 & 0x10 != 0,
                enhanced_erase_supported: w128 & 0x20 != 0,
            },
            erase_time_normal: EraseTime::from_word(word(b, 89)),
            erase_time_enhanced: EraseTime::from_word(word(b, 90)),
            sanitize: SanitizeSupport {
                supported: w59 & (1 << 12) != 0,
                crypto_scramble: w59 & (1 << 13) != 0,
                overwrite: w59 & (1 << 14) != 0,
                block_erase: w59 & (1 << 15) != 0,
            },
            trim: word(b, 169) & 1 != 0,
            drat: w69 & (1 << 14) != 0,
            rzat: w69 & (1 << 5) != 0,
            non_rotating: word(b, 217) == 1,
        })
    }

    /// TRIM leaves zeroes behind, deterministically (DRAT and RZAT).
    pub fn trim_reads_zeroes(&self) -> bool {
        self.trim && self.drat && self.rzat
    }
}

/// The ATA registers of one command (48-bit layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taskfile {
    pub features: u16,
    pub count: u16,
    pub lba: u64,
    pub device: u8,
    pub command: u8,
}

/// SAT-4 PROTOCOL field values imprint uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    NonData = 3,
    PioDataIn = 4,
    PioDataOut = 5,
}

/// One ATA command ready for SG_IO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtaCommand {
    pub cdb: [u8; 16],
    pub direction: SgDirection,
    pub data_len: usize,
}

/// ATA PASS-THROUGH (16), SAT-4 12.2.2.
///
/// Data commands move one 512-byte block, described as SAT-4 asks: T_LENGTH
/// 10b (the length is in the COUNT field), BYT_BLOK 1 (in blocks), T_DIR
/// for the direction. Non-data commands set CK_COND so the SATL returns the
/// ATA registers (an ATA Status Return) even on success: SANITIZE STATUS
/// answers in them. hdparm sets the same bits (testdata/capture).
pub fn pass_through_16(tf: &Taskfile, protocol: Protocol, extend: bool) -> [u8; 16] {
    let byte2 = match protocol {
        // CK_COND
        Protocol::NonData => 0x20,
        // T_DIR (from device) | BYT_BLOK | T_LENGTH = 10b
        Protocol::PioDataIn => 0x08 | 0x04 | 0x02,
        // BYT_BLOK | T_LENGTH = 10b
        Protocol::PioDataOut => 0x04 | 0x02,
    };
    let [f1, f0] = tf.features.to_be_bytes();
    let [c1, c0] = tf.count.to_be_bytes();
    let l = tf.lba.to_le_bytes();
    [
        0x85,
        ((protocol as u8) << 1) | u8::from(extend),
        byte2,
        f1,
        f0,
        c1,
        c0,
        l[3],
        l[0],
        l[4],
        l[1],
        l[5],
        l[2],
        tf.device,
        tf.command,
        0,
    ]
}

// hdparm and the kernel's own ATA code address every command with the LBA
// bit of the device register set; it is harmless where the command has no
// LBA and required by SANITIZE.
const DEVICE_LBA: u8 = 0x40;

fn command(command: u8, protocol: Protocol) -> AtaCommand {
    let (count, direction, data_len) = match protocol {
        Protocol::NonData => (0, SgDirection::None, 0),
        Protocol::PioDataIn => (1, SgDirection::FromDevice, SECTOR),
        Protocol::PioDataOut => (1, SgDirection::ToDevice, SECTOR),
    };
    let tf = Taskfile {
        count,
        device: DEVICE_LBA,
        command,
        ..Taskfile::default()
    };
    AtaCommand {
        cdb: pass_through_16(&tf, protocol, false),
        direction,
        data_len,
    }
}

/// IDENTIFY DEVICE (ECh): 512 bytes in.
pub fn identify_device() -> AtaCommand {
    command(0xEC, Protocol::PioDataIn)
}

/// SECURITY SET PASSWORD (F1h): a `security_block` out.
pub fn security_set_password() -> AtaCommand {
    command(0xF1, Protocol::PioDataOut)
}

/// SECURITY ERASE PREPARE (F3h); ERASE UNIT must be the very next command.
pub fn security_erase_prepare() -> AtaCommand {
    command(0xF3, Protocol::NonData)
}

/// SECURITY ERASE UNIT (F4h): a `security_block` out.
pub fn security_erase_unit() -> AtaCommand {
    command(0xF4, Protocol::PioDataOut)
}

/// SECURITY DISABLE PASSWORD (F6h): a `security_block` out.
pub fn security_disable_password() -> AtaCommand {
    command(0xF6, Protocol::PioDataOut)
}

/// Which password a security command names (control word bit 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordIdentifier {
    User,
    Master,
}

/// The password imprint sets for the moment between SET PASSWORD and
/// ERASE UNIT, which clears it again. Fixed, so that a drive left locked
/// by a power cut mid-erase can be unlocked by anyone who reads this.
pub const TEMPORARY_PASSWORD: &[u8] = b"imprint";

/// The 512-byte data block of SET PASSWORD, ERASE UNIT and DISABLE
/// PASSWORD (ACS-3 tables 47, 49, 55): word 0 bit 0 the identifier, bit 1
/// enhanced erase; words 1-16 the password, its bytes in order and padded
/// with zeroes (as hdparm and the Linux BIOS tools lay it out; the drive
/// compares the 32 bytes as given). Passwords over 32 bytes are cut.
pub fn security_block(who: PasswordIdentifier, enhanced: bool, password: &[u8]) -> [u8; SECTOR] {
    let mut block = [0u8; SECTOR];
    let mut control = 0u16;
    if who == PasswordIdentifier::Master {
        control |= 1;
    }
    if enhanced {
        control |= 2;
    }
    block[0..2].copy_from_slice(&control.to_le_bytes());
    let n = password.len().min(32);
    block[2..2 + n].copy_from_slice(&password[..n]);
    block
}

/// The four SANITIZE DEVICE (B4h) subcommands imprint sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SanitizeCommand {
    CryptoScramble,
    BlockErase,
    /// Overwrite with a 32-bit pattern, 1..=16 passes.
    Overwrite {
        pattern: u32,
        passes: u8,
        invert: bool,
    },
    Status,
}

/// SANITIZE DEVICE as ACS-3 7.35 defines its subcommands: the feature
/// selects the action, the LBA carries a signature the drive checks
/// ("Cryp", "BkEr", "OW" + pattern) so a stray command cannot start one.
/// Non-data and 48-bit. FAILURE MODE (COUNT bit 4) stays 0: a failed
/// sanitize must be retried, never waved through.
pub fn sanitize(cmd: SanitizeCommand) -> AtaCommand {
    let (features, count, lba) = match cmd {
        SanitizeCommand::CryptoScramble => (0x0011, 0, 0x4372_7970),
        SanitizeCommand::BlockErase => (0x0012, 0, 0x426B_4572),
        SanitizeCommand::Overwrite {
            pattern,
            passes,
            invert,
        } => {
            // Bits 3:0 are the pass count, 0 meaning 16; bit 7 inverts.
            let mut count = u16::from(passes.clamp(1, 16) & 0x0f);
            if invert {
                count |= 0x80;
            }
            (0x0014, count, (0x4F57u64 << 32) | u64::from(pattern))
        }
        SanitizeCommand::Status => (0x0000, 0, 0),
    };
    let tf = Taskfile {
        features,
        count,
        lba,
        device: DEVICE_LBA,
        command: 0xB4,
    };
    AtaCommand {
        cdb: pass_through_16(&tf, Protocol::NonData, true),
        direction: SgDirection::None,
        data_len: 0,
    }
}

/// The ATA registers after a command, from the ATA Status Return sense
/// descriptor (SAT-4 12.2.2.6) or fixed-format sense with ASC/ASCQ 00h/1Dh
/// (12.2.2.7), which Linux's libata sends unless D_SENSE is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AtaStatusReturn {
    pub error: u8,
    pub status: u8,
    pub device: u8,
    pub count: u16,
    pub lba: u64,
    /// Fixed-format sense carries only the low byte of COUNT and LBA 23:0,
    /// with a flag saying whether the rest was non-zero.
    pub upper_bytes_known: bool,
    pub count_upper_nonzero: bool,
}

const STATUS_ERR: u8 = 0x01;
const STATUS_DF: u8 = 0x20;
const ERROR_ABRT: u8 = 0x04;

impl AtaStatusReturn {
    pub fn from_sense(sense: &[u8]) -> Option<Self> {
        match sense.first()? & 0x7f {
            0x72 | 0x73 => {
                let total = (8 + usize::from(*sense.get(7)?)).min(sense.len());
                let mut at = 8;
                while at + 2 <= total {
                    let len = 2 + usize::from(sense[at + 1]);
                    let d = sense.get(at..at + len)?;
                    if d[0] == 0x09 && d.len() >= 14 {
                        let lba = [d[7], d[9], d[11], d[6], d[8], d[10], 0, 0];
                        return Some(AtaStatusReturn {
                            error: d[3],
                            count: u16::from_be_bytes([d[4], d[5]]),
                            lba: u64::from_le_bytes(lba),
                            device: d[12],
                            status: d[13],
                            upper_bytes_known: true,
                            count_upper_nonzero: d[4] != 0,
                        });
                    }
                    at += len;
                }
                None
            }
            0x70 | 0x71 => {
                let s = sense.get(..18)?;
                // ASC/ASCQ 00h/1Dh: ATA PASS THROUGH INFORMATION AVAILABLE.
                if (s[12], s[13]) != (0x00, 0x1D) {
                    return None;
                }
                Some(AtaStatusReturn {
                    error: s[3],
                    status: s[4],
                    device: s[5],
                    count: u16::from(s[6]),
                    lba: u64::from_le_bytes([s[9], s[10], s[11], 0, 0, 0, 0, 0]),
                    upper_bytes_known: s[8] & 0x60 == 0,
                    count_upper_nonzero: s[8] & 0x40 != 0,
                })
            }
            _ => None,
        }
    }

    /// ERR or DF: the command failed.
    pub fn failed(&self) -> bool {
        self.status & (STATUS_ERR | STATUS_DF) != 0
    }

    pub fn aborted(&self) -> bool {
        self.failed() && self.error & ERROR_ABRT != 0
    }

    /// The registers in hdparm's words, for error messages.
    pub fn describe(&self) -> String {
        let mut bits = Vec::new();
        for (mask, name) in [
            (0x80, "BSY"),
            (0x40, "DRDY"),
            (0x20, "DF"),
            (0x08, "DRQ"),
            (0x01, "ERR"),
        ] {
            if self.status & mask != 0 {
                bits.push(name);
            }
        }
        let mut out = format!("status {:02X}h ({})", self.status, bits.join(" "));
        if self.status & STATUS_ERR != 0 {
            out += &format!(", error {:02X}h", self.error);
            if self.error & ERROR_ABRT != 0 {
                out += " (ABRT: command aborted)";
            }
        }
        out
    }
}

/// SANITIZE STATUS EXT's answer (ACS-3 7.35.3.2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AtaSanitizeState {
    InProgress {
        fraction: f64,
    },
    CompletedWithoutError,
    /// No sanitize running and none reported complete: never sanitized,
    /// or the drive was power cycled since.
    Idle,
    Failed,
}

impl AtaSanitizeState {
    pub fn from_return(r: &AtaStatusReturn) -> Self {
        // A sanitize that failed makes SANITIZE STATUS EXT return ABRT.
        if r.failed() {
            return AtaSanitizeState::Failed;
        }
        let progress = (r.lba & 0xffff) as u16;
        if r.upper_bytes_known {
            if r.count & 0x4000 != 0 {
                return AtaSanitizeState::InProgress {
                    fraction: f64::from(progress) / 65536.0,
                };
            }
            if r.count & 0x8000 != 0 {
                return AtaSanitizeState::CompletedWithoutError;
            }
            return AtaSanitizeState::Idle;
        }
        // Fixed-format sense drops COUNT 15:8, where the state bits are.
        // The progress indication is FFFFh when no sanitize runs, so it
        // still tells running from done; done without ERR is success.
        if r.count_upper_nonzero && progress != 0xffff {
            AtaSanitizeState::InProgress {
                fraction: f64::from(progress) / 65536.0,
            }
        } else if r.count_upper_nonzero {
            AtaSanitizeState::CompletedWithoutError
        } else {
            AtaSanitizeState::Idle
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    /// CDBs hdparm 9.65 (Debian bookworm) put in sg_io_hdr.cmdp, captured
    /// with testdata/capture/capsg.py under gdb against a loop device,
    /// the SG_IO answered as a SATL would (see testdata/capture/README.md).
    // hdparm -I
    const IDENTIFY: &str = "85080e0000000100000000000040ec00";
    // hdparm --user-master u --security-set-pass imprint
    const SET_PASS: &str = "850a060000000100000000000040f100";
    // hdparm --user-master u --security-erase imprint (second command)
    const ERASE_PREPARE: &str = "8506200000000000000000000040f300";
    // ... (third command)
    const ERASE_UNIT: &str = "850a060000000100000000000040f400";
    // hdparm --user-master u --security-disable imprint (second command;
    // hdparm sends SECURITY UNLOCK F2h first)
    const DISABLE: &str = "850a060000000100000000000040f600";
    // hdparm --sanitize-crypto-scramble / --sanitize-block-erase /
    // --sanitize-status / --sanitize-overwrite hex:a5a5a5a5 [with
    // --sanitize-overwrite-passes 3]
    const SANITIZE_CRYPTO: &str = "8507200011000043700079007240b400";
    const SANITIZE_BLOCK: &str = "8507200012000042720045006b40b400";
    const SANITIZE_STATUS: &str = "8507200000000000000000000040b400";
    const SANITIZE_OVERWRITE_16: &str = "85072000140000a5a557a54fa540b400";
    const SANITIZE_OVERWRITE_3: &str = "85072000140003a5a557a54fa540b400";
    /// The first 36 bytes of the data block hdparm sent with SET PASSWORD
    /// and ERASE UNIT for user password "imprint" (the other 476 bytes are
    /// zero in the capture); enhanced erase sets word 0 bit 1.
    const USER_BLOCK: &str = "0000696d7072696e7400000000000000000000000000000000000000000000000000";
    const USER_BLOCK_ENHANCED: &str =
        "0200696d7072696e7400000000000000000000000000000000000000000000000000";

    #[test]
    fn cdbs_match_hdparm_byte_for_byte() {
        let cases = [
            ("identify", identify_device(), IDENTIFY),
            ("set password", security_set_password(), SET_PASS),
            ("erase prepare", security_erase_prepare(), ERASE_PREPARE),
            ("erase unit", security_erase_unit(), ERASE_UNIT),
            ("disable password", security_disable_password(), DISABLE),
            (
                "sanitize crypto",
                sanitize(SanitizeCommand::CryptoScramble),
                SANITIZE_CRYPTO,
            ),
            (
                "sanitize block",
                sanitize(SanitizeCommand::BlockErase),
                SANITIZE_BLOCK,
            ),
            (
                "sanitize status",
                sanitize(SanitizeCommand::Status),
                SANITIZE_STATUS,
            ),
            (
                "sanitize overwrite x16",
                sanitize(SanitizeCommand::Overwrite {
                    pattern: 0xa5a5_a5a5,
                    passes: 16,
                    invert: false,
                }),
                SANITIZE_OVERWRITE_16,
            ),
            (
                "sanitize overwrite x3",
                sanitize(SanitizeCommand::Overwrite {
                    pattern: 0xa5a5_a5a5,
                    passes: 3,
                    invert: false,
                }),
                SANITIZE_OVERWRITE_3,
            ),
        ];
        for (name, cmd, golden) in cases {
            assert_eq!(cmd.cdb.to_vec(), hex(golden), "{name}");
        }
        assert_eq!(identify_device().direction, SgDirection::FromDevice);
        assert_eq!(security_erase_unit().direction, SgDirection::ToDevice);
        assert_eq!(security_erase_unit().data_len, 512);
        assert_eq!(security_erase_prepare().direction, SgDirection::None);
        assert_eq!(security_erase_prepare().data_len, 0);
    }

    #[test]
    fn password_blocks_match_hdparm() {
        let user = security_block(PasswordIdentifier::User, false, TEMPORARY_PASSWORD);
        assert_eq!(user[..34].to_vec(), hex(USER_BLOCK));
        assert!(user[34..].iter().all(|&b| b == 0));
        let enhanced = security_block(PasswordIdentifier::User, true, TEMPORARY_PASSWORD);
        assert_eq!(enhanced[..34].to_vec(), hex(USER_BLOCK_ENHANCED));
        let master = security_block(PasswordIdentifier::Master, true, &[0x41; 40]);
        assert_eq!(&master[..2], &[0x03, 0x00]);
        assert!(master[2..34].iter().all(|&b| b == 0x41), "cut at 32 bytes");
        assert_eq!(master[34], 0);
    }

    #[test]
    fn overwrite_count_encodes_passes_and_invert() {
        let cdb = sanitize(SanitizeCommand::Overwrite {
            pattern: 0,
            passes: 1,
            invert: true,
        })
        .cdb;
        assert_eq!((cdb[5], cdb[6]), (0x00, 0x81));
        assert_eq!((cdb[9], cdb[11]), (0x57, 0x4f), "OW signature in LBA 47:32");
    }

    #[test]
    fn erase_times_follow_both_formats() {
        let cases = [
            (0x0000, EraseTime::NotReported),
            (0x0001, EraseTime::Minutes(2)),
            (0x003c, EraseTime::Minutes(120)),
            (0x00ff, EraseTime::MoreThan(508)),
            // Bits 14:8 are reserved in the normal format.
            (0x7f05, EraseTime::Minutes(10)),
            (0x8000, EraseTime::NotReported),
            (0x8100, EraseTime::Minutes(512)),
            (0xffff, EraseTime::MoreThan(65532)),
        ];
        for (w, t) in cases {
            assert_eq!(EraseTime::from_word(w), t, "word {w:#06x}");
        }
        assert_eq!(
            EraseTime::Minutes(2).duration(),
            Some(Duration::from_secs(120))
        );
        assert_eq!(EraseTime::NotReported.duration(), None);
    }

    /// IDENTIFY DEVICE data with the words imprint reads.
    pub(crate) fn identify_bytes(words: &[(usize, u16)]) -> Vec<u8> {
        let mut w = [0u16; 256];
        let put = |w: &mut [u16; 256], first: usize, s: &[u8]| {
            for (i, pair) in s.chunks(2).enumerate() {
                w[first + i] = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&b' ')]);
            }
        };
        put(&mut w, 10, b"WD-1234567890       ");
        put(&mut w, 23, b"81.00A81");
        put(&mut w, 27, b"IMPRINT SATA SSD 512GB                  ");
        for &(n, v) in words {
            w[n] = v;
        }
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn identify_parses_strings_security_and_features() {
        let b = identify_bytes(&[
            (59, 0xb000),
            (69, 0x4020),
            (82, 0x0002),
            (83, 0x0400),
            (89, 0x0005),
            (90, 0x8100),
            (100, 0x5000),
            (101, 0x0001),
            (128, 0x0029),
            (169, 0x0001),
            (217, 0x0001),
        ]);
        let id = IdentifyDevice::parse(&b).unwrap();
        assert_eq!(id.model, "IMPRINT SATA SSD 512GB");
        assert_eq!(id.serial, "WD-1234567890");
        assert_eq!(id.firmware, "81.00A81");
        assert_eq!(id.sectors, 0x1_5000);
        assert_eq!(
            id.security,
            Security {
                supported: true,
                enabled: false,
                locked: false,
                frozen: true,
                count_expired: false,
                enhanced_erase_supported: true,
            }
        );
        assert_eq!(id.erase_time_normal, EraseTime::Minutes(10));
        assert_eq!(id.erase_time_enhanced, EraseTime::Minutes(512));
        assert_eq!(
            id.sanitize,
            SanitizeSupport {
                supported: true,
                crypto_scramble: true,
                overwrite: false,
                block_erase: true,
            }
        );
        assert!(id.trim_reads_zeroes());
        assert!(id.non_rotating);
        let drat_only = IdentifyDevice::parse(&identify_bytes(&[(69, 0x4000), (169, 1)])).unwrap();
        assert!(
            !drat_only.trim_reads_zeroes(),
            "DRAT without RZAT is not zeroes"
        );
        assert!(IdentifyDevice::parse(&b[..511]).is_err());
        assert!(IdentifyDevice::parse(&[]).is_err());
    }

    #[test]
    fn status_return_from_descriptor_sense() {
        // Descriptor sense: RECOVERED ERROR 00h/1Dh, one ATA Status Return
        // descriptor for SANITIZE STATUS EXT: in progress, half done.
        let sense = [
            0x72, 0x01, 0x00, 0x1d, 0, 0, 0, 14, 0x09, 0x0c, 0x01, 0x00, 0x40, 0x00, 0x00, 0x00,
            0x00, 0x80, 0x00, 0x00, 0x40, 0x50,
        ];
        let r = AtaStatusReturn::from_sense(&sense).unwrap();
        assert_eq!(r.count, 0x4000);
        assert_eq!(r.lba & 0xffff, 0x8000);
        assert_eq!(r.status, 0x50);
        assert!(!r.failed());
        assert_eq!(
            AtaSanitizeState::from_return(&r),
            AtaSanitizeState::InProgress { fraction: 0.5 }
        );
        let mut done = sense;
        done[12] = 0x80;
        let r = AtaStatusReturn::from_sense(&done).unwrap();
        assert_eq!(
            AtaSanitizeState::from_return(&r),
            AtaSanitizeState::CompletedWithoutError
        );
        let mut aborted = sense;
        aborted[11] = 0x04;
        aborted[21] = 0x51;
        let r = AtaStatusReturn::from_sense(&aborted).unwrap();
        assert!(r.aborted());
        assert_eq!(AtaSanitizeState::from_return(&r), AtaSanitizeState::Failed);
        assert_eq!(
            r.describe(),
            "status 51h (DRDY ERR), error 04h (ABRT: command aborted)"
        );
        // A descriptor claiming more bytes than there are: no panic, no answer.
        assert_eq!(AtaStatusReturn::from_sense(&sense[..15]), None);
    }

    #[test]
    fn status_return_from_fixed_sense() {
        // What libata sends by default: fixed format, 00h/1Dh, registers in
        // the information and command-specific fields.
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = 0x01;
        s[7] = 10;
        s[3] = 0x00; // error
        s[4] = 0x50; // status
        s[5] = 0x40; // device
        s[6] = 0x00; // count 7:0
        s[8] = 0xc0; // EXTEND, COUNT UPPER NONZERO
        s[9] = 0x00;
        s[10] = 0x40; // progress 4000h
        s[12] = 0x00;
        s[13] = 0x1d;
        let r = AtaStatusReturn::from_sense(&s).unwrap();
        assert!(!r.upper_bytes_known);
        assert_eq!(
            AtaSanitizeState::from_return(&r),
            AtaSanitizeState::InProgress { fraction: 0.25 }
        );
        s[9] = 0xff;
        s[10] = 0xff;
        let r = AtaStatusReturn::from_sense(&s).unwrap();
        assert_eq!(
            AtaSanitizeState::from_return(&r),
            AtaSanitizeState::CompletedWithoutError
        );
        s[8] = 0x80;
        let r = AtaStatusReturn::from_sense(&s).unwrap();
        assert_eq!(AtaSanitizeState::from_return(&r), AtaSanitizeState::Idle);
        // Other sense (here ILLEGAL REQUEST 20h/00h) is not an ATA return.
        s[2] = 0x05;
        s[12] = 0x20;
        s[13] = 0x00;
        assert_eq!(AtaStatusReturn::from_sense(&s), None);
        assert_eq!(AtaStatusReturn::from_sense(&s[..10]), None);
        assert_eq!(AtaStatusReturn::from_sense(&[]), None);
    }
}
