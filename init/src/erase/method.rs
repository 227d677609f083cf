//! Which of a disk's own erase commands to use (`secure`), and what `auto`
//! falls to: pure decisions over what `secure::probe` learnt.

use std::fmt;
use std::time::Duration;

use super::ata::IdentifyDevice;
use super::nvme::{IdentifyController, IdentifyNamespace, SanitizeAction, SanitizeStatusLog};

/// How the disk is reached, which decides the commands it understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Nvme,
    /// SATA (or PATA) behind libata or a SAT bridge: ATA PASS-THROUGH.
    Ata,
    Scsi,
    /// virtio, MMC, loop, ...: no device erase imprint can send.
    Other,
}

impl Transport {
    /// The commands a disk on this bus understands. A USB bridge may pass
    /// ATA commands through (SAT) or not, and a wrong guess there could
    /// reach the wrong device: USB disks get no device erase.
    pub fn of(disk: crate::disk::Transport) -> Transport {
        use crate::disk::Transport as Bus;
        match disk {
            Bus::Nvme => Transport::Nvme,
            Bus::Sata => Transport::Ata,
            Bus::Scsi => Transport::Scsi,
            Bus::Virtio | Bus::Usb | Bus::Mmc | Bus::Virtual | Bus::Unknown => Transport::Other,
        }
    }
}

/// What an NVMe namespace and its controller said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmeCaps {
    pub nsid: u32,
    pub controller: IdentifyController,
    pub namespace: IdentifyNamespace,
    /// Read when SANICAP names any action: its estimates.
    pub sanitize_log: Option<SanitizeStatusLog>,
}

/// The SANITIZE service actions a SCSI device reported as supported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScsiCaps {
    pub overwrite: bool,
    pub block_erase: bool,
    pub crypto_erase: bool,
}

/// Everything the choice depends on, gathered once per disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `/dev/sda`, for messages.
    pub disk: String,
    pub transport: Transport,
    pub nvme: Option<NvmeCaps>,
    pub ata: Option<IdentifyDevice>,
    pub scsi: Option<ScsiCaps>,
    pub discard: bool,
    /// Discarded blocks read back as zeroes, as a promise of the device
    /// (NVMe DLFEAT, ATA DRAT+RZAT, SCSI LBPRZ), not as a habit.
    pub discard_zeroes: bool,
    pub rotational: bool,
}

/// The three kinds of real erase, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EraseAction {
    /// The media encryption key is replaced: seconds.
    Crypto,
    /// Every block is erased in the flash: seconds to minutes.
    Block,
    /// Every block is written: as long as writing the disk.
    Overwrite,
}

/// What Format NVM's Secure Erase Settings ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatErase {
    UserData,
    Crypto,
}

/// One device erase command, as chosen for one disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureMethod {
    NvmeSanitize(EraseAction),
    NvmeFormat(FormatErase),
    AtaSecurityErase { enhanced: bool },
    AtaSanitize(EraseAction),
    ScsiSanitize(EraseAction),
}

impl SecureMethod {
    /// How the method erases, for ranking and for `auto`.
    pub fn action(&self, caps: &Capabilities) -> EraseAction {
        match *self {
            SecureMethod::NvmeSanitize(a)
            | SecureMethod::AtaSanitize(a)
            | SecureMethod::ScsiSanitize(a) => a,
            SecureMethod::NvmeFormat(FormatErase::Crypto) => EraseAction::Crypto,
            SecureMethod::NvmeFormat(FormatErase::UserData) => EraseAction::Block,
            // On a spinning disk SECURITY ERASE UNIT writes every sector.
            SecureMethod::AtaSecurityErase { .. } if caps.rotational => EraseAction::Overwrite,
            SecureMethod::AtaSecurityErase { .. } => EraseAction::Block,
        }
    }

    /// Whether more than this namespace is erased: NVMe Sanitize always
    /// acts on the whole subsystem, Format NVM where FNA says so. The plan
    /// prints it; the caller decides whether that is acceptable.
    pub fn erases_whole_controller(&self, caps: &Capabilities) -> bool {
        let Some(nvme) = &caps.nvme else { return false };
        match self {
            SecureMethod::NvmeSanitize(_) => true,
            SecureMethod::NvmeFormat(_) => {
                nvme.controller.fna.format_applies_to_all
                    || nvme.controller.fna.secure_erase_applies_to_all
            }
            _ => false,
        }
    }

    pub fn nvme_sanitize_action(action: EraseAction) -> SanitizeAction {
        match action {
            EraseAction::Crypto => SanitizeAction::CryptoErase,
            EraseAction::Block => SanitizeAction::BlockErase,
            EraseAction::Overwrite => SanitizeAction::Overwrite,
        }
    }
}

impl SecureMethod {
    /// One word for the result line: `nvme-format-user-data`,
    /// `ata-security-erase-enhanced`, `scsi-sanitize-crypto`, ….
    pub fn token(&self) -> String {
        let action = |a: &EraseAction| match a {
            EraseAction::Crypto => "crypto",
            EraseAction::Block => "block",
            EraseAction::Overwrite => "overwrite",
        };
        match self {
            SecureMethod::NvmeSanitize(a) => format!("nvme-sanitize-{}", action(a)),
            SecureMethod::NvmeFormat(FormatErase::Crypto) => "nvme-format-crypto".to_owned(),
            SecureMethod::NvmeFormat(FormatErase::UserData) => "nvme-format-user-data".to_owned(),
            SecureMethod::AtaSecurityErase { enhanced: true } => {
                "ata-security-erase-enhanced".to_owned()
            }
            SecureMethod::AtaSecurityErase { enhanced: false } => "ata-security-erase".to_owned(),
            SecureMethod::AtaSanitize(a) => format!("ata-sanitize-{}", action(a)),
            SecureMethod::ScsiSanitize(a) => format!("scsi-sanitize-{}", action(a)),
        }
    }
}

impl fmt::Display for SecureMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = |a: &EraseAction| match a {
            EraseAction::Crypto => "crypto erase",
            EraseAction::Block => "block erase",
            EraseAction::Overwrite => "overwrite",
        };
        match self {
            SecureMethod::NvmeSanitize(a) => write!(f, "NVMe Sanitize ({})", action(a)),
            SecureMethod::NvmeFormat(FormatErase::Crypto) => {
                write!(f, "NVMe Format NVM (cryptographic erase)")
            }
            SecureMethod::NvmeFormat(FormatErase::UserData) => {
                write!(f, "NVMe Format NVM (user data erase)")
            }
            SecureMethod::AtaSecurityErase { enhanced: true } => {
                write!(f, "ATA Security Erase Unit (enhanced)")
            }
            SecureMethod::AtaSecurityErase { enhanced: false } => {
                write!(f, "ATA Security Erase Unit")
            }
            SecureMethod::AtaSanitize(EraseAction::Crypto) => {
                write!(f, "ATA Sanitize (crypto scramble)")
            }
            SecureMethod::AtaSanitize(a) => write!(f, "ATA Sanitize ({})", action(a)),
            SecureMethod::ScsiSanitize(a) => write!(f, "SCSI SANITIZE ({})", action(a)),
        }
    }
}

/// Why a disk gets no device erase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    AtaFrozen,
    AtaLocked,
    AtaCountExpired,
    /// A user password is already set, which imprint does not know.
    AtaPasswordSet,
    AtaNoErase,
    NvmeNoErase,
    ScsiNoSanitize,
    /// The identify data needed to choose was not read.
    NotProbed,
    NoDeviceErase,
}

/// A disk for which `secure` cannot be honoured, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub disk: String,
    pub reason: RefusalReason,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.reason {
            RefusalReason::AtaFrozen => {
                "ATA security is frozen (the BIOS froze it at boot); suspend/resume the machine or hot-plug the drive, then retry"
            }
            RefusalReason::AtaLocked => {
                "ATA security is locked by a password; unlock it (hdparm --security-unlock) or erase with the master password, then retry"
            }
            RefusalReason::AtaCountExpired => {
                "ATA security's password attempt counter expired; power-cycle the drive, then retry"
            }
            RefusalReason::AtaPasswordSet => {
                "ATA security is enabled with a password imprint does not know; disable it (hdparm --security-disable) first"
            }
            RefusalReason::AtaNoErase => {
                "the drive supports neither the ATA security nor the sanitize feature set; use erase mode zero"
            }
            RefusalReason::NvmeNoErase => {
                "the controller supports neither Sanitize nor Format NVM; use erase mode zero"
            }
            RefusalReason::ScsiNoSanitize => {
                "the device reports no supported SANITIZE service action; use erase mode zero"
            }
            RefusalReason::NotProbed => {
                "the device's identify data could not be read; see the probe error"
            }
            RefusalReason::NoDeviceErase => {
                "the disk is neither NVMe, ATA nor SCSI, so it has no erase command imprint can send; use erase mode zero or discard"
            }
        };
        write!(f, "{}: {why}", self.disk)
    }
}

impl std::error::Error for Refusal {}

/// The strongest, fastest erase the device itself performs:
/// sanitize crypto > sanitize block > format crypto > format user data >
/// ATA enhanced security erase > ATA security erase > sanitize overwrite.
///
/// A locked ATA drive refuses sanitize too (ACS-3 7.35), so it is refused
/// outright; frozen security (or an expired counter) only blocks the
/// security commands, so a drive with sanitize is still erased by it.
pub fn choose_secure(caps: &Capabilities) -> Result<SecureMethod, Refusal> {
    let refuse = |reason| Refusal {
        disk: caps.disk.clone(),
        reason,
    };
    match caps.transport {
        Transport::Nvme => {
            let nvme = caps
                .nvme
                .as_ref()
                .ok_or_else(|| refuse(RefusalReason::NotProbed))?;
            let san = nvme.controller.sanicap;
            let format = nvme.controller.format_nvm_supported();
            if san.crypto_erase {
                Ok(SecureMethod::NvmeSanitize(EraseAction::Crypto))
            } else if san.block_erase {
                Ok(SecureMethod::NvmeSanitize(EraseAction::Block))
            } else if format && nvme.controller.fna.crypto_erase_supported {
                Ok(SecureMethod::NvmeFormat(FormatErase::Crypto))
            } else if format {
                Ok(SecureMethod::NvmeFormat(FormatErase::UserData))
            } else if san.overwrite {
                Ok(SecureMethod::NvmeSanitize(EraseAction::Overwrite))
            } else {
                Err(refuse(RefusalReason::NvmeNoErase))
            }
        }
        Transport::Ata => {
            let id = caps
                .ata
                .as_ref()
                .ok_or_else(|| refuse(RefusalReason::NotProbed))?;
            let sec = id.security;
            if sec.locked {
                return Err(refuse(RefusalReason::AtaLocked));
            }
            let san = id.sanitize;
            if san.supported && san.crypto_scramble {
                return Ok(SecureMethod::AtaSanitize(EraseAction::Crypto));
            }
            if san.supported && san.block_erase {
                return Ok(SecureMethod::AtaSanitize(EraseAction::Block));
            }
            let security_blocked = if !sec.supported {
                Some(RefusalReason::AtaNoErase)
            } else if sec.frozen {
                Some(RefusalReason::AtaFrozen)
            } else if sec.count_expired {
                Some(RefusalReason::AtaCountExpired)
            } else if sec.enabled {
                Some(RefusalReason::AtaPasswordSet)
            } else {
                None
            };
            match security_blocked {
                None => Ok(SecureMethod::AtaSecurityErase {
                    enhanced: sec.enhanced_erase_supported,
                }),
                Some(_) if san.supported && san.overwrite => {
                    Ok(SecureMethod::AtaSanitize(EraseAction::Overwrite))
                }
                Some(reason) => Err(refuse(reason)),
            }
        }
        Transport::Scsi => {
            let scsi = caps.scsi.ok_or_else(|| refuse(RefusalReason::NotProbed))?;
            if scsi.crypto_erase {
                Ok(SecureMethod::ScsiSanitize(EraseAction::Crypto))
            } else if scsi.block_erase {
                Ok(SecureMethod::ScsiSanitize(EraseAction::Block))
            } else if scsi.overwrite {
                Ok(SecureMethod::ScsiSanitize(EraseAction::Overwrite))
            } else {
                Err(refuse(RefusalReason::ScsiNoSanitize))
            }
        }
        Transport::Other => Err(refuse(RefusalReason::NoDeviceErase)),
    }
}

/// What `auto` does with one disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AutoChoice {
    /// The device's own erase.
    Secure(SecureMethod),
    /// Discard everything: the device promises zeroes afterwards.
    DiscardZeroes,
    /// Write zeroes over the disk from the host. `passed_over` says why
    /// no device erase was used, so the plan can print it.
    Overwrite { passed_over: Option<Refusal> },
}

/// The fastest method that really erases: crypto erase, then block
/// erase, then a discard the device promises reads back as zeroes, then
/// an overwrite — the device's own where it has one (it also reaches
/// remapped sectors the host cannot), the host's otherwise.
pub fn choose_auto(caps: &Capabilities) -> AutoChoice {
    match choose_secure(caps) {
        Ok(method) if method.action(caps) != EraseAction::Overwrite => AutoChoice::Secure(method),
        Ok(_) | Err(_) if caps.discard && caps.discard_zeroes => AutoChoice::DiscardZeroes,
        Ok(method) => AutoChoice::Secure(method),
        Err(refusal) => AutoChoice::Overwrite {
            passed_over: Some(refusal).filter(|r| r.reason != RefusalReason::NoDeviceErase),
        },
    }
}

/// How long `method` should take on this disk, where the device says:
/// ATA words 89/90, the NVMe Sanitize Status log's estimates. None where
/// the device gives no figure (the plan prints "unknown").
pub fn estimate(method: &SecureMethod, caps: &Capabilities, _size_bytes: u64) -> Option<Duration> {
    match method {
        SecureMethod::AtaSecurityErase { enhanced } => {
            let id = caps.ata.as_ref()?;
            if *enhanced {
                id.erase_time_enhanced.duration()
            } else {
                id.erase_time_normal.duration()
            }
        }
        SecureMethod::NvmeSanitize(action) => caps
            .nvme
            .as_ref()?
            .sanitize_log?
            .estimate_for(SecureMethod::nvme_sanitize_action(*action)),
        SecureMethod::NvmeFormat(_)
        | SecureMethod::AtaSanitize(_)
        | SecureMethod::ScsiSanitize(_) => None,
    }
}

/// How long to wait before calling the erase lost: twice the device's
/// estimate plus ten minutes, or, without one, long enough to write the
/// whole disk at 20 MB/s twice over (an old disk at its slowest), at
/// least an hour.
pub fn timeout(method: &SecureMethod, caps: &Capabilities, size_bytes: u64) -> Duration {
    const MARGIN: Duration = Duration::from_secs(600);
    match estimate(method, caps, size_bytes) {
        Some(e) => e.saturating_mul(2).saturating_add(MARGIN),
        None => {
            let write_all = Duration::from_secs(size_bytes / 20_000_000);
            write_all.saturating_mul(2).max(Duration::from_secs(3600))
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::erase::ata::tests::identify_bytes;
    use crate::erase::nvme::tests::{
        identify_controller_bytes, identify_namespace_bytes, sanitize_log_bytes,
    };

    pub(crate) fn nvme_caps(sanicap: u32, oacs: u16, fna: u8, dlfeat: u8) -> Capabilities {
        Capabilities {
            disk: "/dev/nvme0n1".into(),
            transport: Transport::Nvme,
            nvme: Some(NvmeCaps {
                nsid: 1,
                controller: IdentifyController::parse(&identify_controller_bytes(
                    sanicap, oacs, fna,
                ))
                .unwrap(),
                namespace: IdentifyNamespace::parse(&identify_namespace_bytes(1 << 20, 12, dlfeat))
                    .unwrap(),
                sanitize_log: Some(
                    SanitizeStatusLog::parse(&sanitize_log_bytes(
                        0,
                        0,
                        0,
                        [3600, 120, 10, 0, 0, 0],
                    ))
                    .unwrap(),
                ),
            }),
            ata: None,
            scsi: None,
            discard: true,
            discard_zeroes: dlfeat & 7 == 1,
            rotational: false,
        }
    }

    pub(crate) fn ata_caps(words: &[(usize, u16)], rotational: bool) -> Capabilities {
        let id = IdentifyDevice::parse(&identify_bytes(words)).unwrap();
        Capabilities {
            disk: "/dev/sda".into(),
            transport: Transport::Ata,
            discard: id.trim,
            discard_zeroes: id.trim_reads_zeroes(),
            ata: Some(id),
            nvme: None,
            scsi: None,
            rotational,
        }
    }

    fn scsi_caps(overwrite: bool, block_erase: bool, crypto_erase: bool) -> Capabilities {
        Capabilities {
            disk: "/dev/sdb".into(),
            transport: Transport::Scsi,
            nvme: None,
            ata: None,
            scsi: Some(ScsiCaps {
                overwrite,
                block_erase,
                crypto_erase,
            }),
            discard: false,
            discard_zeroes: false,
            rotational: true,
        }
    }

    use EraseAction::*;
    use RefusalReason::*;

    #[test]
    fn nvme_choices_follow_the_ranking() {
        type Case = (u32, u16, u8, Result<SecureMethod, RefusalReason>);
        let cases: [Case; 7] = [
            (0x7, 0x2, 0x4, Ok(SecureMethod::NvmeSanitize(Crypto))),
            (0x6, 0x2, 0x4, Ok(SecureMethod::NvmeSanitize(Block))),
            (
                0x4,
                0x2,
                0x4,
                Ok(SecureMethod::NvmeFormat(FormatErase::Crypto)),
            ),
            (
                0x4,
                0x2,
                0x0,
                Ok(SecureMethod::NvmeFormat(FormatErase::UserData)),
            ),
            (0x4, 0x0, 0x4, Ok(SecureMethod::NvmeSanitize(Overwrite))),
            (0x0, 0x0, 0x4, Err(NvmeNoErase)),
            // FNA's crypto bit without Format NVM in OACS is no format.
            (0x0, 0x0, 0x7, Err(NvmeNoErase)),
        ];
        for (sanicap, oacs, fna, want) in cases {
            let caps = nvme_caps(sanicap, oacs, fna, 0);
            let got = choose_secure(&caps).map_err(|r| r.reason);
            assert_eq!(
                got, want,
                "SANICAP {sanicap:#x} OACS {oacs:#x} FNA {fna:#x}"
            );
        }
    }

    #[test]
    fn ata_choices_and_refusals() {
        // (IDENTIFY words, expected)
        type Case = (Vec<(usize, u16)>, Result<SecureMethod, RefusalReason>);
        let sec_ok = (128, 0x0021); // supported, enhanced
        let cases: Vec<Case> = vec![
            (
                vec![(59, 0x3000), sec_ok],
                Ok(SecureMethod::AtaSanitize(Crypto)),
            ),
            (
                vec![(59, 0x9000), sec_ok],
                Ok(SecureMethod::AtaSanitize(Block)),
            ),
            (
                vec![(59, 0x5000), sec_ok],
                Ok(SecureMethod::AtaSecurityErase { enhanced: true }),
            ),
            (
                vec![(128, 0x0001)],
                Ok(SecureMethod::AtaSecurityErase { enhanced: false }),
            ),
            (vec![(128, 0x0009)], Err(AtaFrozen)),
            (vec![(128, 0x0011)], Err(AtaCountExpired)),
            (vec![(128, 0x0003)], Err(AtaPasswordSet)),
            (vec![(128, 0x0007), (59, 0x3000)], Err(AtaLocked)),
            // Frozen security, but sanitize can still overwrite.
            (
                vec![(128, 0x0009), (59, 0x5000)],
                Ok(SecureMethod::AtaSanitize(Overwrite)),
            ),
            // Frozen security does not stand in the way of crypto scramble.
            (
                vec![(128, 0x0009), (59, 0x3000)],
                Ok(SecureMethod::AtaSanitize(Crypto)),
            ),
            (vec![], Err(AtaNoErase)),
            // Word 82 bit 1 alone says security is supported.
            (
                vec![(82, 0x0002)],
                Ok(SecureMethod::AtaSecurityErase { enhanced: false }),
            ),
        ];
        for (words, want) in cases {
            let caps = ata_caps(&words, false);
            assert_eq!(
                choose_secure(&caps).map_err(|r| r.reason),
                want,
                "{words:?}"
            );
        }
    }

    #[test]
    fn refusals_name_the_disk_and_the_fix() {
        let caps = ata_caps(&[(128, 0x0009)], true);
        let refusal = choose_secure(&caps).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "/dev/sda: ATA security is frozen (the BIOS froze it at boot); suspend/resume the machine or hot-plug the drive, then retry"
        );
        let mut other = caps.clone();
        other.transport = Transport::Other;
        other.disk = "/dev/vda".into();
        assert!(
            choose_secure(&other)
                .unwrap_err()
                .to_string()
                .starts_with("/dev/vda: the disk is neither")
        );
        let mut unprobed = nvme_caps(0, 0, 0, 0);
        unprobed.nvme = None;
        assert_eq!(choose_secure(&unprobed).unwrap_err().reason, NotProbed);
    }

    #[test]
    fn scsi_choices() {
        let cases = [
            ((true, true, true), Ok(SecureMethod::ScsiSanitize(Crypto))),
            ((true, true, false), Ok(SecureMethod::ScsiSanitize(Block))),
            (
                (true, false, false),
                Ok(SecureMethod::ScsiSanitize(Overwrite)),
            ),
            ((false, false, false), Err(ScsiNoSanitize)),
        ];
        for ((o, b, c), want) in cases {
            assert_eq!(
                choose_secure(&scsi_caps(o, b, c)).map_err(|r| r.reason),
                want
            );
        }
    }

    #[test]
    fn auto_prefers_crypto_then_block_then_zeroing_discard_then_overwrite() {
        assert_eq!(
            choose_auto(&nvme_caps(1, 2, 0, 1)),
            AutoChoice::Secure(SecureMethod::NvmeSanitize(Crypto))
        );
        assert_eq!(
            choose_auto(&nvme_caps(0, 2, 0, 1)),
            AutoChoice::Secure(SecureMethod::NvmeFormat(FormatErase::UserData))
        );
        // Only sanitize overwrite, but discard reads back zeroes: discard wins.
        assert_eq!(
            choose_auto(&nvme_caps(4, 0, 0, 1)),
            AutoChoice::DiscardZeroes
        );
        // Without the zeroes promise the device's overwrite beats the host's.
        assert_eq!(
            choose_auto(&nvme_caps(4, 0, 0, 0)),
            AutoChoice::Secure(SecureMethod::NvmeSanitize(Overwrite))
        );
        // A spinning ATA disk's security erase is an overwrite by the drive.
        let hdd = ata_caps(&[(128, 0x0001)], true);
        assert_eq!(
            choose_auto(&hdd),
            AutoChoice::Secure(SecureMethod::AtaSecurityErase { enhanced: false })
        );
        // Frozen SSD with zeroing TRIM: discard, not a silent refusal.
        let frozen_ssd = ata_caps(&[(128, 0x0009), (69, 0x4020), (169, 1)], false);
        assert_eq!(choose_auto(&frozen_ssd), AutoChoice::DiscardZeroes);
        // Frozen and no zeroing TRIM: the host overwrites and says why.
        let frozen_hdd = ata_caps(&[(128, 0x0009)], true);
        match choose_auto(&frozen_hdd) {
            AutoChoice::Overwrite {
                passed_over: Some(r),
            } => assert_eq!(r.reason, AtaFrozen),
            other => panic!("{other:?}"),
        }
        let mut virtio = frozen_hdd.clone();
        virtio.transport = Transport::Other;
        assert_eq!(
            choose_auto(&virtio),
            AutoChoice::Overwrite { passed_over: None }
        );
    }

    #[test]
    fn estimates_come_from_the_device() {
        let ssd = ata_caps(&[(128, 0x0021), (89, 0x0005), (90, 0x0001)], false);
        let size = 512 << 30;
        assert_eq!(
            estimate(
                &SecureMethod::AtaSecurityErase { enhanced: false },
                &ssd,
                size
            ),
            Some(Duration::from_secs(600))
        );
        assert_eq!(
            estimate(
                &SecureMethod::AtaSecurityErase { enhanced: true },
                &ssd,
                size
            ),
            Some(Duration::from_secs(120))
        );
        let nvme = nvme_caps(7, 2, 0, 0);
        assert_eq!(
            estimate(&SecureMethod::NvmeSanitize(Crypto), &nvme, size),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            estimate(&SecureMethod::NvmeSanitize(Block), &nvme, size),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            estimate(&SecureMethod::NvmeFormat(FormatErase::Crypto), &nvme, size),
            None
        );
        assert_eq!(
            timeout(&SecureMethod::NvmeSanitize(Crypto), &nvme, size),
            Duration::from_secs(20 + 600)
        );
        // No estimate: twice a 20 MB/s write of the disk, at least an hour.
        assert_eq!(
            timeout(
                &SecureMethod::NvmeFormat(FormatErase::UserData),
                &nvme,
                10_000_000_000_000
            ),
            Duration::from_secs(1_000_000)
        );
        assert_eq!(
            timeout(
                &SecureMethod::NvmeFormat(FormatErase::UserData),
                &nvme,
                1 << 30
            ),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn scope_and_display() {
        let nvme = nvme_caps(7, 2, 0x2, 0);
        assert!(SecureMethod::NvmeSanitize(Crypto).erases_whole_controller(&nvme));
        assert!(SecureMethod::NvmeFormat(FormatErase::Crypto).erases_whole_controller(&nvme));
        let per_ns = nvme_caps(7, 2, 0x4, 0);
        assert!(!SecureMethod::NvmeFormat(FormatErase::Crypto).erases_whole_controller(&per_ns));
        assert_eq!(
            SecureMethod::AtaSanitize(Crypto).to_string(),
            "ATA Sanitize (crypto scramble)"
        );
        assert_eq!(
            SecureMethod::AtaSecurityErase { enhanced: true }.to_string(),
            "ATA Security Erase Unit (enhanced)"
        );
    }
}
