//! Carrying out a `SecureMethod`: the command sequence for each transport,
//! sent through a `Passthrough` so the whole sequence is a host test
//! against a recording fake; `DevicePassthrough` is the real one over
//! `sys::passthru`. Time comes in through `Clock`, so tests never sleep.

use std::io;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use super::ata::{
    self, AtaCommand, AtaSanitizeState, AtaStatusReturn, IdentifyDevice, PasswordIdentifier,
};
use super::method::{
    Capabilities, EraseAction, FormatErase, NvmeCaps, ScsiCaps, SecureMethod, Transport,
};
use super::nvme::{
    self, NvmeAdminCmd, NvmeStatus, SanitizeState, SanitizeStatusLog, SecureEraseSetting,
};
use super::scsi::{self, Sense};
use crate::sys::passthru::{self as sys, SgDirection, SgOutcome};

/// The two ways to talk to a disk below the block layer.
pub trait Passthrough {
    /// One NVMe admin command; `data` is its buffer. Returns the NVMe
    /// status (0 is success).
    fn nvme_admin(&mut self, cmd: &mut NvmeAdminCmd, data: &mut [u8]) -> io::Result<u32>;
    /// The namespace id of the NVMe block device.
    fn nvme_namespace_id(&mut self) -> io::Result<u32>;
    /// One SCSI command; `sense` receives sense data.
    fn sg_io(
        &mut self,
        cdb: &[u8],
        direction: SgDirection,
        data: &mut [u8],
        timeout: Duration,
        sense: &mut [u8; 32],
    ) -> io::Result<SgOutcome>;
}

/// Monotonic time and sleeping, from outside.
pub trait Clock {
    fn now(&self) -> Duration;
    fn sleep(&mut self, duration: Duration);
}

/// The real clock.
pub struct SystemClock(std::time::Instant);

impl SystemClock {
    pub fn new() -> Self {
        SystemClock(std::time::Instant::now())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
    fn sleep(&mut self, duration: Duration) {
        std::thread::sleep(duration);
    }
}

/// A progress report while a long erase runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// The device's own figure, 0.0..1.0, where it gives one.
    pub fraction: Option<f64>,
    pub elapsed: Duration,
    pub estimate: Option<Duration>,
}

/// What the device promises the disk reads back as after the erase, which
/// decides whether the engine can verify by sampled reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterErase {
    Zeroes,
    /// Crypto erase, ATA security erase, block erase: whatever the device
    /// returns, not something to compare against.
    Unspecified,
}

/// What was done to one disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub method: SecureMethod,
    pub elapsed: Duration,
    pub after: AfterErase,
    /// ATA only: ERASE UNIT left the temporary password set and imprint
    /// cleared it with DISABLE PASSWORD.
    pub password_disabled_afterwards: bool,
}

/// How often to ask a sanitizing device how far it is.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_secs(15);
const ADMIN: Duration = Duration::from_secs(60);

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

// --- NVMe ---

fn nvme_run(
    dev: &mut dyn Passthrough,
    disk: &str,
    mut cmd: NvmeAdminCmd,
    what: &str,
) -> Result<Vec<u8>> {
    let mut data = vec![0u8; cmd.data_len as usize];
    let status = dev
        .nvme_admin(&mut cmd, &mut data)
        .with_context(|| format!("{disk}: sending NVMe {what}"))?;
    let status = NvmeStatus(status);
    if !status.is_success() {
        return Err(anyhow!(status).context(format!("{disk}: the controller rejected NVMe {what}")));
    }
    Ok(data)
}

fn sanitize_log(dev: &mut dyn Passthrough, disk: &str) -> Result<SanitizeStatusLog> {
    let data = nvme_run(
        dev,
        disk,
        nvme::sanitize_status_log(),
        "Get Log Page (Sanitize Status)",
    )?;
    SanitizeStatusLog::parse(&data)
        .with_context(|| format!("{disk}: reading the Sanitize Status log"))
}

// --- SCSI / ATA through SG_IO ---

/// What one SG_IO command came back with.
struct SgAnswer {
    outcome: SgOutcome,
    sense: [u8; 32],
}

impl SgAnswer {
    fn sense(&self) -> &[u8] {
        &self.sense[..usize::from(self.outcome.sense_len).min(32)]
    }
}

fn sg_run(
    dev: &mut dyn Passthrough,
    disk: &str,
    cdb: &[u8],
    direction: SgDirection,
    data: &mut [u8],
    timeout: Duration,
    what: &str,
) -> Result<SgAnswer> {
    let mut sense = [0u8; 32];
    let outcome = dev
        .sg_io(cdb, direction, data, timeout, &mut sense)
        .with_context(|| format!("{disk}: sending {what}"))?;
    if outcome.host_status != 0 {
        bail!(
            "{disk}: {what} did not reach the device (host status {:#x}; the adapter or its driver dropped it)",
            outcome.host_status
        );
    }
    Ok(SgAnswer { outcome, sense })
}

/// An ATA command: fails on a transport error, a SCSI refusal by the SATL
/// or ERR/DF in the ATA status.
fn ata_run(
    dev: &mut dyn Passthrough,
    disk: &str,
    cmd: AtaCommand,
    data: &mut [u8],
    timeout: Duration,
    what: &str,
) -> Result<Option<AtaStatusReturn>> {
    let answer = sg_run(dev, disk, &cmd.cdb, cmd.direction, data, timeout, what)?;
    let ret = AtaStatusReturn::from_sense(answer.sense());
    if let Some(r) = ret {
        if r.failed() {
            bail!("{disk}: the drive rejected ATA {what}: {}", r.describe());
        }
        return Ok(ret);
    }
    if answer.outcome.status != scsi::STATUS_GOOD {
        match Sense::parse(answer.sense()) {
            Some(sense) => {
                bail!("{disk}: ATA {what} failed: {sense} (the SAT layer refused the pass-through)")
            }
            None => bail!(
                "{disk}: ATA {what} failed with SCSI status {:#04x}",
                answer.outcome.status
            ),
        }
    }
    Ok(None)
}

fn ata_identify(dev: &mut dyn Passthrough, disk: &str) -> Result<IdentifyDevice> {
    let mut data = [0u8; ata::SECTOR];
    ata_run(
        dev,
        disk,
        ata::identify_device(),
        &mut data,
        SHORT,
        "IDENTIFY DEVICE",
    )?;
    IdentifyDevice::parse(&data).with_context(|| format!("{disk}: parsing IDENTIFY DEVICE"))
}

fn scsi_supports(
    dev: &mut dyn Passthrough,
    disk: &str,
    action: scsi::SanitizeAction,
) -> Result<bool> {
    let mut data = [0u8; 64];
    let cdb = scsi::report_supported_operation(0x48, action as u16, 64);
    let answer = sg_run(
        dev,
        disk,
        &cdb,
        SgDirection::FromDevice,
        &mut data,
        SHORT,
        "REPORT SUPPORTED OPERATION CODES",
    )?;
    // A device without the command answers ILLEGAL REQUEST: nothing known
    // to be supported.
    Ok(answer.outcome.status == scsi::STATUS_GOOD && scsi::command_supported(&data))
}

fn scsi_vpd(dev: &mut dyn Passthrough, disk: &str, page: u8) -> Result<Option<[u8; 64]>> {
    let mut data = [0u8; 64];
    let answer = sg_run(
        dev,
        disk,
        &scsi::inquiry_vpd(page, 64),
        SgDirection::FromDevice,
        &mut data,
        SHORT,
        "INQUIRY",
    )?;
    Ok((answer.outcome.status == scsi::STATUS_GOOD).then_some(data))
}

/// Learns what the disk can do. `transport` comes from sysfs (the engine
/// decides NVMe, ATA behind libata, or SCSI); `rotational` from
/// `queue/rotational` where the device itself does not say.
pub fn probe(
    dev: &mut dyn Passthrough,
    disk: &str,
    transport: Transport,
    rotational: bool,
) -> Result<Capabilities> {
    let mut caps = Capabilities {
        disk: disk.to_owned(),
        transport,
        nvme: None,
        ata: None,
        scsi: None,
        discard: false,
        discard_zeroes: false,
        rotational,
    };
    match transport {
        Transport::Nvme => {
            let nsid = dev
                .nvme_namespace_id()
                .with_context(|| format!("{disk}: asking the NVMe namespace id"))?;
            let data = nvme_run(
                dev,
                disk,
                nvme::identify_controller(),
                "Identify Controller",
            )?;
            let controller = nvme::IdentifyController::parse(&data)?;
            let data = nvme_run(
                dev,
                disk,
                nvme::identify_namespace(nsid),
                "Identify Namespace",
            )?;
            let namespace = nvme::IdentifyNamespace::parse(&data)?;
            // The log only matters for its estimates; a controller that
            // cannot send it still sanitizes, the plan just says "unknown".
            let sanitize_log = if controller.sanicap.any() {
                sanitize_log(dev, disk).ok()
            } else {
                None
            };
            caps.discard = controller.deallocate_supported();
            caps.discard_zeroes = caps.discard && namespace.deallocated_reads_zeroes();
            caps.rotational = false;
            caps.nvme = Some(NvmeCaps {
                nsid,
                controller,
                namespace,
                sanitize_log,
            });
        }
        Transport::Ata => {
            let id = ata_identify(dev, disk)?;
            caps.discard = id.trim;
            caps.discard_zeroes = id.trim_reads_zeroes();
            caps.rotational = rotational && !id.non_rotating;
            caps.ata = Some(id);
        }
        Transport::Scsi => {
            use scsi::SanitizeAction as A;
            caps.scsi = Some(ScsiCaps {
                overwrite: scsi_supports(dev, disk, A::Overwrite)?,
                block_erase: scsi_supports(dev, disk, A::BlockErase)?,
                crypto_erase: scsi_supports(dev, disk, A::CryptoErase)?,
            });
            if let Some(p) = scsi_vpd(dev, disk, 0xB2)?.and_then(|p| scsi::parse_provisioning(&p)) {
                caps.discard = p.unmap;
                caps.discard_zeroes = p.unmap && p.unmapped_reads_zeroes;
            }
            if let Some(non_rotating) =
                scsi_vpd(dev, disk, 0xB1)?.and_then(|p| scsi::parse_non_rotating(&p))
            {
                caps.rotational = !non_rotating;
            }
        }
        Transport::Other => {}
    }
    Ok(caps)
}

/// Runs `method` on the disk and waits for it to finish, reporting
/// progress. Every failure names the disk, the command and what the device
/// said; nothing falls back to a weaker erase.
pub fn run_secure(
    dev: &mut dyn Passthrough,
    clock: &mut dyn Clock,
    progress: &mut dyn FnMut(Progress),
    caps: &Capabilities,
    method: SecureMethod,
    size_bytes: u64,
) -> Result<Outcome> {
    let disk = caps.disk.as_str();
    let start = clock.now();
    let estimate = super::method::estimate(&method, caps, size_bytes);
    let timeout = super::method::timeout(&method, caps, size_bytes);
    let mut outcome = Outcome {
        method,
        elapsed: Duration::ZERO,
        after: AfterErase::Unspecified,
        password_disabled_afterwards: false,
    };
    let nvme_zeroes = || {
        caps.nvme
            .as_ref()
            .is_some_and(|n| n.namespace.deallocated_reads_zeroes())
    };
    match method {
        SecureMethod::NvmeSanitize(action) => {
            let sanact = SecureMethod::nvme_sanitize_action(action);
            let cmd = nvme::Sanitize::new(sanact).command();
            nvme_run(dev, disk, cmd, "Sanitize")?;
            loop {
                let elapsed = clock.now().saturating_sub(start);
                let log = sanitize_log(dev, disk)?;
                match log.state {
                    SanitizeState::InProgress | SanitizeState::NeverSanitized => {}
                    SanitizeState::Completed | SanitizeState::CompletedNoDeallocate
                        if log.action() == sanact as u8 =>
                    {
                        break;
                    }
                    // A completion of an earlier, different sanitize: ours
                    // has not registered yet.
                    SanitizeState::Completed | SanitizeState::CompletedNoDeallocate => {}
                    SanitizeState::Failed => bail!(
                        "{disk}: NVMe Sanitize ({action:?}) failed after {}s; the controller now accepts only another sanitize, run the erase again",
                        elapsed.as_secs()
                    ),
                    SanitizeState::Reserved(v) => {
                        bail!("{disk}: the Sanitize Status log reports unknown state {v}")
                    }
                }
                if elapsed > timeout {
                    bail!(
                        "{disk}: NVMe Sanitize still running after {}s (timeout {}s); check it with nvme sanitize-log",
                        elapsed.as_secs(),
                        timeout.as_secs()
                    );
                }
                progress(Progress {
                    fraction: (log.state == SanitizeState::InProgress).then(|| log.fraction()),
                    elapsed,
                    estimate,
                });
                clock.sleep(POLL_INTERVAL);
            }
            if action != EraseAction::Crypto && nvme_zeroes() {
                outcome.after = AfterErase::Zeroes;
            }
        }
        SecureMethod::NvmeFormat(erase) => {
            let nvme = caps
                .nvme
                .as_ref()
                .ok_or_else(|| anyhow!("{disk}: not probed as NVMe"))?;
            let fna = nvme.controller.fna;
            let nsid = if fna.format_applies_to_all || fna.secure_erase_applies_to_all {
                nvme::NSID_ALL
            } else {
                nvme.nsid
            };
            let ses = match erase {
                FormatErase::UserData => SecureEraseSetting::UserData,
                FormatErase::Crypto => SecureEraseSetting::Crypto,
            };
            // Keep the LBA format in use: the erase must not change the
            // block size under the engine.
            let mut cmd = nvme::format_nvm(nsid, nvme.namespace.current_format(), ses);
            // Format NVM is synchronous: the ioctl returns when it is done.
            cmd.timeout_ms = millis(timeout);
            nvme_run(dev, disk, cmd, "Format NVM")?;
            if erase == FormatErase::UserData && nvme_zeroes() {
                outcome.after = AfterErase::Zeroes;
            }
        }
        SecureMethod::AtaSecurityErase { enhanced } => {
            outcome.password_disabled_afterwards =
                ata_security_erase(dev, disk, enhanced, timeout)?;
        }
        SecureMethod::AtaSanitize(action) => {
            let cmd = match action {
                EraseAction::Crypto => ata::SanitizeCommand::CryptoScramble,
                EraseAction::Block => ata::SanitizeCommand::BlockErase,
                EraseAction::Overwrite => ata::SanitizeCommand::Overwrite {
                    pattern: 0,
                    passes: 1,
                    invert: false,
                },
            };
            ata_run(
                dev,
                disk,
                ata::sanitize(cmd),
                &mut [],
                SHORT,
                "SANITIZE DEVICE",
            )?;
            loop {
                let elapsed = clock.now().saturating_sub(start);
                let r = ata_run_status(dev, disk)?;
                match AtaSanitizeState::from_return(&r) {
                    AtaSanitizeState::CompletedWithoutError => break,
                    AtaSanitizeState::Failed => {
                        bail!(
                            "{disk}: ATA sanitize failed: {}; run the erase again",
                            r.describe()
                        )
                    }
                    AtaSanitizeState::InProgress { fraction } => progress(Progress {
                        fraction: Some(fraction),
                        elapsed,
                        estimate,
                    }),
                    AtaSanitizeState::Idle => bail!(
                        "{disk}: the drive accepted SANITIZE but reports no sanitize running or completed"
                    ),
                }
                if elapsed > timeout {
                    bail!(
                        "{disk}: ATA sanitize still running after {}s",
                        elapsed.as_secs()
                    );
                }
                clock.sleep(POLL_INTERVAL);
            }
            if action == EraseAction::Overwrite {
                outcome.after = AfterErase::Zeroes;
            }
        }
        SecureMethod::ScsiSanitize(action) => {
            scsi_sanitize(dev, clock, progress, disk, action, start, estimate, timeout)?;
            if action == EraseAction::Overwrite {
                outcome.after = AfterErase::Zeroes;
            }
        }
    }
    outcome.elapsed = clock.now().saturating_sub(start);
    Ok(outcome)
}

fn ata_run_status(dev: &mut dyn Passthrough, disk: &str) -> Result<AtaStatusReturn> {
    let cmd = ata::sanitize(ata::SanitizeCommand::Status);
    let answer = sg_run(
        dev,
        disk,
        &cmd.cdb,
        cmd.direction,
        &mut [],
        SHORT,
        "SANITIZE STATUS EXT",
    )?;
    AtaStatusReturn::from_sense(answer.sense()).ok_or_else(|| {
        anyhow!(
            "{disk}: SANITIZE STATUS EXT returned no ATA registers (the SAT layer ignored CK_COND)"
        )
    })
}

/// The ATA security erase sequence. Returns whether DISABLE PASSWORD was
/// needed afterwards.
fn ata_security_erase(
    dev: &mut dyn Passthrough,
    disk: &str,
    enhanced: bool,
    timeout: Duration,
) -> Result<bool> {
    use PasswordIdentifier::User;
    let pw = ata::TEMPORARY_PASSWORD;
    // The state may have changed since the probe (a suspend, another tool).
    let id = ata_identify(dev, disk)?;
    let sec = id.security;
    if sec.frozen || sec.locked || sec.count_expired || sec.enabled {
        let what = if sec.frozen {
            "frozen"
        } else if sec.locked {
            "locked"
        } else if sec.count_expired {
            "past its password attempt count"
        } else {
            "enabled with a password imprint does not know"
        };
        bail!("{disk}: ATA security is {what}; no erase was started");
    }
    let mut block = ata::security_block(User, false, pw);
    ata_run(
        dev,
        disk,
        ata::security_set_password(),
        &mut block,
        SHORT,
        "SECURITY SET PASSWORD",
    )?;
    let erase = (|| {
        ata_run(
            dev,
            disk,
            ata::security_erase_prepare(),
            &mut [],
            SHORT,
            "SECURITY ERASE PREPARE",
        )?;
        let mut block = ata::security_block(User, enhanced, pw);
        ata_run(
            dev,
            disk,
            ata::security_erase_unit(),
            &mut block,
            timeout,
            "SECURITY ERASE UNIT",
        )
    })();
    if let Err(e) = erase {
        // Never leave a drive behind that locks at its next power-on.
        let mut block = ata::security_block(User, false, pw);
        let undo = ata_run(
            dev,
            disk,
            ata::security_disable_password(),
            &mut block,
            SHORT,
            "SECURITY DISABLE PASSWORD",
        );
        return Err(match undo {
            Ok(_) => e.context(format!("{disk}: the temporary password was removed again")),
            Err(undo) => e.context(format!(
                "{disk}: and removing the temporary user password failed ({undo:#}); the drive will lock at power-on: unlock it with hdparm --user-master u --security-unlock imprint"
            )),
        });
    }
    // ERASE UNIT clears the user password (ACS-3 7.45.4); check it did.
    let after = ata_identify(dev, disk)?;
    if !after.security.enabled {
        return Ok(false);
    }
    let mut block = ata::security_block(User, false, pw);
    ata_run(
        dev,
        disk,
        ata::security_disable_password(),
        &mut block,
        SHORT,
        "SECURITY DISABLE PASSWORD",
    )
    .context("the erase finished but left the temporary password \"imprint\" set")?;
    Ok(true)
}

#[allow(clippy::too_many_arguments)]
fn scsi_sanitize(
    dev: &mut dyn Passthrough,
    clock: &mut dyn Clock,
    progress: &mut dyn FnMut(Progress),
    disk: &str,
    action: EraseAction,
    start: Duration,
    estimate: Option<Duration>,
    timeout: Duration,
) -> Result<()> {
    let (sa, mut params) = match action {
        EraseAction::Crypto => (scsi::SanitizeAction::CryptoErase, Vec::new()),
        EraseAction::Block => (scsi::SanitizeAction::BlockErase, Vec::new()),
        EraseAction::Overwrite => (
            scsi::SanitizeAction::Overwrite,
            scsi::overwrite_parameters(&[0; 4], 1, false),
        ),
    };
    let len = u16::try_from(params.len()).unwrap_or(0);
    let cdb = scsi::sanitize(sa, true, false, len);
    let dir = if params.is_empty() {
        SgDirection::None
    } else {
        SgDirection::ToDevice
    };
    let answer = sg_run(dev, disk, &cdb, dir, &mut params, ADMIN, "SANITIZE")?;
    if answer.outcome.status != scsi::STATUS_GOOD {
        let why = Sense::parse(answer.sense()).map_or_else(
            || format!("status {:#04x}", answer.outcome.status),
            |s| s.to_string(),
        );
        bail!("{disk}: the device rejected SANITIZE ({action:?}): {why}");
    }
    loop {
        let elapsed = clock.now().saturating_sub(start);
        let mut data = [0u8; 252];
        let cdb = scsi::request_sense(252);
        sg_run(
            dev,
            disk,
            &cdb,
            SgDirection::FromDevice,
            &mut data,
            SHORT,
            "REQUEST SENSE",
        )?;
        let sense = Sense::parse(&data);
        match sense {
            Some(s) if s.sanitize_in_progress() => progress(Progress {
                fraction: s.progress.map(|p| f64::from(p) / 65536.0),
                elapsed,
                estimate,
            }),
            Some(s) if s.sanitize_failed() => {
                bail!("{disk}: SCSI SANITIZE failed: {s}; run the erase again")
            }
            Some(s) if s.is_clear() => return Ok(()),
            None => return Ok(()),
            Some(s) => bail!("{disk}: while waiting for SANITIZE: {s}"),
        }
        if elapsed > timeout {
            bail!(
                "{disk}: SCSI SANITIZE still running after {}s",
                elapsed.as_secs()
            );
        }
        clock.sleep(POLL_INTERVAL);
    }
}

/// The real `Passthrough`: a whole-disk device opened for pass-through.
pub struct DevicePassthrough {
    file: std::fs::File,
}

impl DevicePassthrough {
    pub fn open(path: &Path) -> Result<Self> {
        let file = sys::open(path)
            .with_context(|| format!("opening {} for pass-through commands", path.display()))?;
        Ok(DevicePassthrough { file })
    }
}

impl Passthrough for DevicePassthrough {
    fn nvme_admin(&mut self, cmd: &mut NvmeAdminCmd, data: &mut [u8]) -> io::Result<u32> {
        sys::nvme_admin(&self.file, cmd, data)
    }

    fn nvme_namespace_id(&mut self) -> io::Result<u32> {
        sys::nvme_namespace_id(&self.file)
    }

    fn sg_io(
        &mut self,
        cdb: &[u8],
        direction: SgDirection,
        data: &mut [u8],
        timeout: Duration,
        sense: &mut [u8; 32],
    ) -> io::Result<SgOutcome> {
        sys::sg_io(&self.file, cdb, direction, data, millis(timeout), sense)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::erase::ata::tests::identify_bytes;
    use crate::erase::method::tests::{ata_caps, nvme_caps};
    use crate::erase::nvme::tests::{
        identify_controller_bytes, identify_namespace_bytes, sanitize_log_bytes,
    };

    /// One scripted answer: the data the device returns and its status.
    enum Reply {
        Nvme {
            status: u32,
            data: Vec<u8>,
        },
        Sg {
            status: u8,
            data: Vec<u8>,
            sense: Vec<u8>,
        },
    }

    /// Records every command and answers from a script, in order, as a
    /// device would (the shapes follow NVMe 2.0 and SAT-4; see the parsers).
    #[derive(Default)]
    struct Fake {
        script: VecDeque<Reply>,
        sent: Vec<String>,
        written: Vec<Vec<u8>>,
    }

    impl Fake {
        fn nvme(mut self, status: u32, data: Vec<u8>) -> Self {
            self.script.push_back(Reply::Nvme { status, data });
            self
        }
        fn sg(mut self, status: u8, data: Vec<u8>, sense: Vec<u8>) -> Self {
            self.script.push_back(Reply::Sg {
                status,
                data,
                sense,
            });
            self
        }
        fn ok(self) -> Self {
            self.sg(0, vec![], vec![])
        }
    }

    fn ata_good() -> Vec<u8> {
        vec![
            0x72, 0x01, 0x00, 0x1d, 0, 0, 0, 14, 0x09, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x40,
            0x50,
        ]
    }

    fn ata_sanitize_status(count_hi: u8, progress_hi: u8) -> Vec<u8> {
        let mut s = ata_good();
        s[12] = count_hi;
        s[17] = progress_hi;
        s
    }

    fn ata_abort() -> Vec<u8> {
        let mut s = ata_good();
        s[11] = 0x04;
        s[21] = 0x51;
        s
    }

    impl Passthrough for Fake {
        fn nvme_admin(&mut self, cmd: &mut NvmeAdminCmd, data: &mut [u8]) -> io::Result<u32> {
            self.sent.push(format!(
                "nvme {:02x} nsid={:x} cdw10={:x}",
                cmd.opcode, cmd.nsid, cmd.cdw10
            ));
            match self.script.pop_front() {
                Some(Reply::Nvme { status, data: d }) => {
                    let n = d.len().min(data.len());
                    data[..n].copy_from_slice(&d[..n]);
                    Ok(status)
                }
                _ => panic!("unexpected NVMe command {:?}", self.sent.last()),
            }
        }

        fn nvme_namespace_id(&mut self) -> io::Result<u32> {
            Ok(1)
        }

        fn sg_io(
            &mut self,
            cdb: &[u8],
            direction: SgDirection,
            data: &mut [u8],
            _timeout: Duration,
            sense: &mut [u8; 32],
        ) -> io::Result<SgOutcome> {
            let name = if cdb[0] == 0x85 {
                format!("ata {:02x}", cdb[14])
            } else {
                format!("scsi {:02x}", cdb[0])
            };
            self.sent.push(name);
            if direction == SgDirection::ToDevice {
                self.written.push(data.to_vec());
            }
            match self.script.pop_front() {
                Some(Reply::Sg {
                    status,
                    data: d,
                    sense: s,
                }) => {
                    let n = d.len().min(data.len());
                    data[..n].copy_from_slice(&d[..n]);
                    sense[..s.len()].copy_from_slice(&s);
                    Ok(SgOutcome {
                        status: if s.is_empty() { status } else { 2 },
                        sense_len: u8::try_from(s.len()).unwrap(),
                        ..SgOutcome::default()
                    })
                }
                _ => panic!("unexpected SG_IO {:?}", self.sent.last()),
            }
        }
    }

    /// A clock that advances only when slept on.
    struct FakeClock(Duration);
    impl Clock for FakeClock {
        fn now(&self) -> Duration {
            self.0
        }
        fn sleep(&mut self, d: Duration) {
            self.0 += d;
        }
    }

    #[test]
    fn ata_security_erase_sequence() {
        let ssd = identify_bytes(&[(128, 0x0021), (89, 1)]);
        let mut fake = Fake::default()
            .sg(0, ssd.clone(), vec![])
            .ok()
            .sg(0, vec![], ata_good())
            .ok()
            .sg(0, ssd, vec![]);
        let caps = ata_caps(&[(128, 0x0021), (89, 1)], false);
        let mut clock = FakeClock(Duration::ZERO);
        let method = SecureMethod::AtaSecurityErase { enhanced: true };
        let out = run_secure(&mut fake, &mut clock, &mut |_| {}, &caps, method, 1 << 30).unwrap();
        assert_eq!(
            fake.sent,
            ["ata ec", "ata f1", "ata f3", "ata f4", "ata ec"]
        );
        assert_eq!(
            &fake.written[0][..9],
            b"\0\0imprint",
            "SET PASSWORD: user, not enhanced"
        );
        assert_eq!(
            &fake.written[1][..2],
            &[0x02, 0x00],
            "ERASE UNIT: user, enhanced"
        );
        assert_eq!(out.after, AfterErase::Unspecified);
        assert!(!out.password_disabled_afterwards);
    }

    #[test]
    fn ata_password_left_set_is_disabled_and_reported() {
        let ssd = identify_bytes(&[(128, 0x0001)]);
        let still_set = identify_bytes(&[(128, 0x0003)]);
        let mut fake = Fake::default()
            .sg(0, ssd, vec![])
            .ok()
            .ok()
            .ok()
            .sg(0, still_set, vec![])
            .ok();
        let caps = ata_caps(&[(128, 0x0001)], true);
        let method = SecureMethod::AtaSecurityErase { enhanced: false };
        let out = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap();
        assert_eq!(fake.sent.last().unwrap(), "ata f6");
        assert!(out.password_disabled_afterwards);
    }

    #[test]
    fn ata_erase_failure_removes_the_password_and_names_the_error() {
        let ssd = identify_bytes(&[(128, 0x0001)]);
        let mut fake = Fake::default()
            .sg(0, ssd, vec![])
            .ok()
            .ok()
            .sg(0, vec![], ata_abort())
            .ok();
        let caps = ata_caps(&[(128, 0x0001)], false);
        let method = SecureMethod::AtaSecurityErase { enhanced: false };
        let err = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("temporary password was removed"), "{msg}");
        assert!(
            msg.contains("/dev/sda: the drive rejected ATA SECURITY ERASE UNIT"),
            "{msg}"
        );
        assert!(msg.contains("ABRT"), "{msg}");
        assert_eq!(
            fake.sent,
            ["ata ec", "ata f1", "ata f3", "ata f4", "ata f6"]
        );
    }

    #[test]
    fn ata_frozen_at_run_time_starts_nothing() {
        let frozen = identify_bytes(&[(128, 0x0009)]);
        let mut fake = Fake::default().sg(0, frozen, vec![]);
        let caps = ata_caps(&[(128, 0x0001)], false);
        let method = SecureMethod::AtaSecurityErase { enhanced: false };
        let err = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/sda: ATA security is frozen; no erase was started"
        );
        assert_eq!(fake.sent, ["ata ec"]);
    }

    #[test]
    fn nvme_sanitize_polls_the_log_until_complete() {
        let caps = nvme_caps(0x7, 0x2, 0, 0);
        let mut fake = Fake::default()
            .nvme(0, vec![])
            .nvme(0, sanitize_log_bytes(0x4000, 2, 4, [0; 6]))
            .nvme(0, sanitize_log_bytes(0xC000, 2, 4, [0; 6]))
            .nvme(0, sanitize_log_bytes(0, 1, 4, [0; 6]));
        let mut clock = FakeClock(Duration::from_secs(100));
        let mut seen = Vec::new();
        let method = SecureMethod::NvmeSanitize(EraseAction::Crypto);
        let out = run_secure(
            &mut fake,
            &mut clock,
            &mut |p| seen.push(p),
            &caps,
            method,
            1 << 30,
        )
        .unwrap();
        assert_eq!(
            fake.sent,
            [
                "nvme 84 nsid=0 cdw10=4",
                "nvme 02 nsid=ffffffff cdw10=7f0081",
                "nvme 02 nsid=ffffffff cdw10=7f0081",
                "nvme 02 nsid=ffffffff cdw10=7f0081"
            ]
        );
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].fraction, Some(0.25));
        assert_eq!(seen[1].fraction, Some(0.75));
        assert_eq!(seen[1].elapsed, POLL_INTERVAL);
        assert_eq!(seen[0].estimate, Some(Duration::from_secs(10)));
        assert_eq!(out.elapsed, 2 * POLL_INTERVAL);
        assert_eq!(
            out.after,
            AfterErase::Unspecified,
            "crypto erase promises nothing"
        );
    }

    #[test]
    fn nvme_sanitize_failure_and_rejection_are_named() {
        let caps = nvme_caps(0x7, 0x2, 0, 1);
        let mut fake = Fake::default()
            .nvme(0, vec![])
            .nvme(0, sanitize_log_bytes(0, 3, 2, [0; 6]));
        let method = SecureMethod::NvmeSanitize(EraseAction::Block);
        let err = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/dev/nvme0n1: NVMe Sanitize (Block) failed"),
            "{err}"
        );
        let mut fake = Fake::default().nvme(0x4002, vec![]);
        let err = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.starts_with(
                "/dev/nvme0n1: the controller rejected NVMe Sanitize: Invalid Field in Command"
            ),
            "{msg}"
        );
    }

    #[test]
    fn nvme_sanitize_times_out_instead_of_waiting_forever() {
        let caps = nvme_caps(0x7, 0x2, 0, 1);
        let mut fake = Fake::default().nvme(0, vec![]);
        // Block erase estimate 120 s: the timeout is 2 x 120 + 600 s.
        for _ in 0..200 {
            fake = fake.nvme(0, sanitize_log_bytes(0x100, 2, 2, [0; 6]));
        }
        let method = SecureMethod::NvmeSanitize(EraseAction::Block);
        let err = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("still running after 845s (timeout 840s)"),
            "{err}"
        );
    }

    #[test]
    fn nvme_format_keeps_the_lba_format_and_scope() {
        // FNA bit 1: secure erase applies to all namespaces -> NSID FFFFFFFFh.
        let caps = nvme_caps(0, 0x2, 0x2 | 0x4, 1);
        let mut fake = Fake::default().nvme(0, vec![]);
        let method = SecureMethod::NvmeFormat(FormatErase::UserData);
        let out = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap();
        // Current format index 1 (FLBAS), SES 1.
        assert_eq!(fake.sent, ["nvme 80 nsid=ffffffff cdw10=201"]);
        assert_eq!(out.after, AfterErase::Zeroes);
        let caps = nvme_caps(0, 0x2, 0x4, 0);
        let mut fake = Fake::default().nvme(0, vec![]);
        let method = SecureMethod::NvmeFormat(FormatErase::Crypto);
        let out = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap();
        assert_eq!(fake.sent, ["nvme 80 nsid=1 cdw10=401"]);
        assert_eq!(out.after, AfterErase::Unspecified);
    }

    #[test]
    fn ata_sanitize_polls_status() {
        let caps = ata_caps(&[(59, 0x3000)], false);
        let mut fake = Fake::default()
            .sg(0, vec![], ata_good())
            .sg(0, vec![], ata_sanitize_status(0x40, 0x80))
            .sg(0, vec![], ata_sanitize_status(0x80, 0));
        let mut seen = Vec::new();
        let method = SecureMethod::AtaSanitize(EraseAction::Crypto);
        run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |p| seen.push(p),
            &caps,
            method,
            1 << 30,
        )
        .unwrap();
        assert_eq!(fake.sent, ["ata b4", "ata b4", "ata b4"]);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].fraction, Some(0.5));
    }

    #[test]
    fn scsi_sanitize_immed_then_request_sense() {
        let caps = Capabilities {
            disk: "/dev/sdc".into(),
            transport: Transport::Scsi,
            nvme: None,
            ata: None,
            scsi: Some(ScsiCaps::default()),
            discard: false,
            discard_zeroes: false,
            rotational: true,
        };
        let mut in_progress = vec![0u8; 18];
        in_progress[0] = 0x70;
        in_progress[2] = 0x02;
        in_progress[12] = 0x04;
        in_progress[13] = 0x1B;
        in_progress[15] = 0x80;
        in_progress[16] = 0x20;
        let mut clear = vec![0u8; 18];
        clear[0] = 0x70;
        let mut fake = Fake::default()
            .ok()
            .sg(0, in_progress, vec![])
            .sg(0, clear, vec![]);
        let mut seen = Vec::new();
        let method = SecureMethod::ScsiSanitize(EraseAction::Overwrite);
        let out = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |p| seen.push(p),
            &caps,
            method,
            1 << 30,
        )
        .unwrap();
        assert_eq!(fake.sent, ["scsi 48", "scsi 03", "scsi 03"]);
        assert_eq!(fake.written, [vec![0x01, 0, 0, 4, 0, 0, 0, 0]]);
        assert_eq!(seen[0].fraction, Some(0.125));
        assert_eq!(out.after, AfterErase::Zeroes);
        // Rejected: ILLEGAL REQUEST, invalid field in CDB.
        let refused = vec![
            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0,
        ];
        let mut fake = Fake::default().sg(2, vec![], refused);
        let err = run_secure(
            &mut fake,
            &mut FakeClock(Duration::ZERO),
            &mut |_| {},
            &caps,
            method,
            1 << 30,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/dev/sdc: the device rejected SANITIZE (Overwrite): sense key IllegalRequest, ASC/ASCQ 24h/00h (invalid field in CDB)"
        );
    }

    #[test]
    fn probe_nvme_reads_identify_and_the_sanitize_log() {
        let mut fake = Fake::default()
            .nvme(0, identify_controller_bytes(0x3, 0x2, 0))
            .nvme(0, identify_namespace_bytes(1 << 20, 12, 1))
            .nvme(0, sanitize_log_bytes(0, 0, 0, [u32::MAX, 30, 4, 0, 0, 0]));
        let caps = probe(&mut fake, "/dev/nvme0n1", Transport::Nvme, true).unwrap();
        assert_eq!(
            fake.sent,
            [
                "nvme 06 nsid=0 cdw10=1",
                "nvme 06 nsid=1 cdw10=0",
                "nvme 02 nsid=ffffffff cdw10=7f0081"
            ]
        );
        assert!(caps.discard_zeroes);
        assert!(!caps.rotational);
        let log = caps.nvme.as_ref().unwrap().sanitize_log.unwrap();
        assert_eq!(log.estimate_crypto_erase, Some(Duration::from_secs(4)));
        assert_eq!(
            super::super::method::choose_secure(&caps).unwrap(),
            SecureMethod::NvmeSanitize(EraseAction::Crypto)
        );
    }

    #[test]
    fn probe_ata_and_scsi() {
        let mut fake = Fake::default().sg(
            0,
            identify_bytes(&[(128, 0x0021), (69, 0x4020), (169, 1), (217, 1)]),
            vec![],
        );
        let caps = probe(&mut fake, "/dev/sda", Transport::Ata, true).unwrap();
        assert!(caps.discard && caps.discard_zeroes);
        assert!(!caps.rotational, "word 217 says solid state");
        let mut b2 = vec![0u8; 8];
        b2[1] = 0xB2;
        b2[5] = 0x84;
        let b1 = vec![0, 0xB1, 0, 0x3c, 0x1c, 0x20];
        let illegal = vec![
            0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24, 0x00, 0, 0, 0, 0,
        ];
        let mut fake = Fake::default()
            .sg(0, vec![0, 0x03], vec![])
            .sg(2, vec![], illegal)
            .sg(0, vec![0, 0x01], vec![])
            .sg(0, b2, vec![])
            .sg(0, b1, vec![]);
        let caps = probe(&mut fake, "/dev/sdb", Transport::Scsi, false).unwrap();
        assert_eq!(
            caps.scsi,
            Some(ScsiCaps {
                overwrite: true,
                block_erase: false,
                crypto_erase: false,
            })
        );
        assert!(caps.discard_zeroes);
        assert!(caps.rotational, "7200 rpm");
    }
}
