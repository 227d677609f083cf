//! Which disks an erase reaches and how, decided before anything runs and
//! printed as the plan.

use std::fmt;
use std::time::Duration;

use anyhow::{Result, bail};

use super::method::{AutoChoice, Capabilities, SecureMethod, choose_auto, choose_secure};
use crate::disk::{DiskInfo, DiskSelector};

/// How a disk is erased (`imprint.erase=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every partition-table, filesystem, RAID and LVM signature at the
    /// start and end of the disk and of each partition.
    Metadata,
    /// The whole device unmapped (BLKDISCARD), then its metadata zeroed.
    Discard,
    /// Every block written with zeros (BLKZEROOUT).
    Zero,
    /// The device's own erase (NVMe Sanitize or Format NVM, ATA Security
    /// Erase or Sanitize, SCSI SANITIZE); a disk without one is an error.
    Secure,
    /// The fastest method that really erases: crypto erase, block erase, a
    /// discard the device promises reads back as zeros, then zeroing.
    Auto,
}

impl Mode {
    pub fn parse(v: &str) -> Result<Mode> {
        Ok(match v {
            "metadata" => Mode::Metadata,
            "discard" => Mode::Discard,
            "zero" => Mode::Zero,
            "secure" => Mode::Secure,
            "auto" => Mode::Auto,
            _ => bail!("must be metadata, discard, zero, secure or auto, not {v:?}"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Metadata => "metadata",
            Mode::Discard => "discard",
            Mode::Zero => "zero",
            Mode::Secure => "secure",
            Mode::Auto => "auto",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which disks an erase reaches (`imprint.erase-disks=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EraseDisks {
    /// The deploy's target disk (`imprint.disk=`).
    Target,
    /// Every disk that is not removable, on USB, virtual, read-only, the
    /// image's source or a boot medium.
    All,
    /// One named disk, or every disk the hints match (by the rules
    /// `imprint.disk=` hints follow, but any number of them).
    Matching(DiskSelector),
}

impl EraseDisks {
    pub fn parse(v: &str) -> Result<EraseDisks> {
        Ok(match v {
            "target" => EraseDisks::Target,
            "all" => EraseDisks::All,
            _ => EraseDisks::Matching(DiskSelector::parse(v)?),
        })
    }
}

impl fmt::Display for EraseDisks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EraseDisks::Target => f.write_str("target"),
            EraseDisks::All => f.write_str("all"),
            EraseDisks::Matching(selector) => write!(f, "{selector}"),
        }
    }
}

/// How one disk is erased, decided from what it can do before anything
/// runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Metadata,
    Zero,
    /// `zeroes`: the device promises discarded blocks read back as zeros.
    Discard {
        zeroes: bool,
    },
    /// The device's own erase.
    Device(SecureMethod),
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Method::Metadata => f.write_str("metadata (signatures at both ends)"),
            Method::Zero => f.write_str("zero (BLKZEROOUT of every block)"),
            Method::Discard { zeroes: true } => {
                f.write_str("discard (the device promises zeros after it)")
            }
            Method::Discard { zeroes: false } => f.write_str("discard, then metadata"),
            Method::Device(m) => write!(f, "{m}"),
        }
    }
}

/// One disk of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedErase {
    pub disk: DiskInfo,
    pub mode: Mode,
    pub method: Method,
    /// The device's own estimate, where it gives one.
    pub estimate: Option<Duration>,
    /// Why `auto` chose what it chose, or what else the method reaches.
    pub note: Option<String>,
}

impl fmt::Display for PlannedErase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.mode {
            // The method is the mode: said once.
            Mode::Metadata | Mode::Zero | Mode::Discard => {
                write!(f, "{}: {}", self.disk.describe(), self.method)?;
            }
            Mode::Secure | Mode::Auto => {
                write!(
                    f,
                    "{}: {} -> {}",
                    self.disk.describe(),
                    self.mode,
                    self.method
                )?;
            }
        }
        match self.estimate {
            Some(e) => write!(f, ", estimate {} s", e.as_secs())?,
            None if matches!(self.method, Method::Device(_)) => {
                f.write_str(", estimate unknown")?
            }
            None => {}
        }
        if let Some(note) = &self.note {
            write!(f, " ({note})")?;
        }
        Ok(())
    }
}

/// What `mode` does to the disk `caps` describes (what
/// [`probe`](super::secure::probe) learnt). `secure` on a disk without a
/// device erase, or with a frozen or locked one, is a named error: never a
/// silent fallback to something weaker than asked.
pub fn decide(disk: DiskInfo, mode: Mode, caps: &Capabilities) -> Result<PlannedErase> {
    let size = disk.size_bytes;
    let device = |m: SecureMethod, note: Option<String>| {
        let whole = m
            .erases_whole_controller(caps)
            .then(|| "erases every namespace of the controller".to_owned());
        (
            Method::Device(m),
            super::method::estimate(&m, caps, size),
            note.or(whole),
        )
    };
    let (method, estimate, note) = match mode {
        Mode::Metadata => (Method::Metadata, None, None),
        Mode::Zero => (Method::Zero, None, None),
        Mode::Discard => (
            Method::Discard {
                zeroes: caps.discard_zeroes,
            },
            None,
            None,
        ),
        Mode::Secure => match choose_secure(caps) {
            Ok(m) => device(m, None),
            Err(refusal) => bail!("imprint.erase=secure: {refusal}"),
        },
        Mode::Auto => match choose_auto(caps) {
            AutoChoice::Secure(m) => device(m, None),
            AutoChoice::DiscardZeroes => (Method::Discard { zeroes: true }, None, None),
            AutoChoice::Overwrite { passed_over } => (
                Method::Zero,
                None,
                Some(match passed_over {
                    Some(refusal) => format!("no device erase: {refusal}"),
                    None => "the disk has no erase command imprint can send".to_owned(),
                }),
            ),
        },
    };
    Ok(PlannedErase {
        disk,
        mode,
        method,
        estimate,
        note,
    })
}

/// The disks `which` names among `disks`. `target` is the deploy's target
/// disk, when there is one; `never` are disks no erase may touch, whatever
/// names them: the one the image is read from and boot media.
pub fn choose_disks(
    which: &EraseDisks,
    target: Option<&str>,
    disks: &[DiskInfo],
    never: &[String],
) -> Result<Vec<DiskInfo>> {
    let is_never = |disk: &DiskInfo| {
        never
            .iter()
            .any(|n| n.strip_prefix("/dev/").unwrap_or(n) == disk.name)
    };
    let chosen: Vec<DiskInfo> = match which {
        EraseDisks::Target => {
            let Some(target) = target else {
                bail!(
                    "imprint.erase-disks=target, but there is no target disk; name the disks with \
                     imprint.erase-disks=all or =HINTS, or set imprint.disk="
                );
            };
            vec![crate::disk::find_named(target, disks)?.clone()]
        }
        EraseDisks::Matching(selector @ DiskSelector::Hints { text, hints })
            if !selector.is_explicit() =>
        {
            matching(&format!("hints {text:?}"), hints, disks, never)?
        }
        EraseDisks::Matching(selector) => {
            vec![crate::disk::select_disk(selector, disks, never)?.clone()]
        }
        EraseDisks::All => matching("erase-disks=all", &[], disks, never)?,
    };
    for disk in &chosen {
        if is_never(disk) {
            bail!(
                "disk {} holds the image source or booted this machine; imprint never erases it",
                disk.describe()
            );
        }
        if disk.read_only {
            bail!("disk {} is read-only", disk.describe());
        }
    }
    Ok(chosen)
}

fn matching(
    what: &str,
    hints: &[crate::disk::Hint],
    disks: &[DiskInfo],
    never: &[String],
) -> Result<Vec<DiskInfo>> {
    let verdicts = crate::disk::hint_verdicts(hints, false, disks, never);
    let chosen: Vec<DiskInfo> = verdicts
        .iter()
        .filter(|(_, reasons)| reasons.is_empty())
        .map(|(disk, _)| (*disk).clone())
        .collect();
    if chosen.is_empty() {
        let why = verdicts
            .iter()
            .map(|(disk, reasons)| format!("{}: {})", disk.describe_open(), reasons.join(", ")))
            .collect::<Vec<_>>()
            .join("; ");
        if disks.is_empty() {
            bail!("no disk to erase for {what}: no disks present");
        }
        bail!("no disk to erase for {what}: {why}");
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::Transport;

    const GIB: u64 = 1 << 30;

    fn disk(name: &str, size: u64, transport: Transport, removable: bool) -> DiskInfo {
        DiskInfo {
            name: name.to_owned(),
            size_bytes: size,
            model: None,
            serial: None,
            removable,
            read_only: false,
            logical_block_size: 512,
            vendor: None,
            wwn: None,
            rotational: false,
            transport,
            by_id: Vec::new(),
            by_path: Vec::new(),
        }
    }

    fn server() -> Vec<DiskInfo> {
        vec![
            disk("nvme0n1", 960 * GIB, Transport::Nvme, false),
            disk("sda", 4000 * GIB, Transport::Sata, false),
            disk("sdb", 16 * GIB, Transport::Usb, true),
            disk("sdc", 480 * GIB, Transport::Sata, false),
        ]
    }

    fn names(disks: &[DiskInfo]) -> Vec<&str> {
        disks.iter().map(|d| d.name.as_str()).collect()
    }

    fn choose(which: &str, target: Option<&str>, never: &[&str]) -> Result<Vec<DiskInfo>> {
        let never: Vec<String> = never.iter().map(|n| (*n).to_owned()).collect();
        choose_disks(&EraseDisks::parse(which)?, target, &server(), &never)
    }

    #[test]
    fn target_is_the_deploy_target_and_needs_one() {
        assert_eq!(
            names(&choose("target", Some("/dev/sda"), &[]).unwrap()),
            ["sda"]
        );
        let e = format!("{:#}", choose("target", None, &[]).unwrap_err());
        assert!(
            e.contains("no target disk") && e.contains("imprint.disk="),
            "{e}"
        );
    }

    #[test]
    fn all_leaves_out_usb_removable_and_the_image_source() {
        assert_eq!(
            names(&choose("all", None, &[]).unwrap()),
            ["nvme0n1", "sda", "sdc"]
        );
        assert_eq!(
            names(&choose("all", None, &["/dev/sdc"]).unwrap()),
            ["nvme0n1", "sda"]
        );
    }

    #[test]
    fn hints_choose_every_disk_they_match() {
        assert_eq!(
            names(&choose("size<1T", None, &[]).unwrap()),
            ["nvme0n1", "sdc"]
        );
        let e = format!("{:#}", choose("size>10T", None, &[]).unwrap_err());
        assert!(
            e.contains("no disk to erase") && e.contains("sda (3.9 TiB"),
            "{e}"
        );
    }

    #[test]
    fn a_named_disk_is_chosen_even_removable_but_never_the_source() {
        assert_eq!(names(&choose("/dev/sdb", None, &[]).unwrap()), ["sdb"]);
        let e = format!("{:#}", choose("sdb", None, &["sdb"]).unwrap_err());
        assert!(e.contains("never erases it"), "{e}");
        let e = format!(
            "{:#}",
            choose("target", Some("sdb"), &["/dev/sdb"]).unwrap_err()
        );
        assert!(e.contains("never erases it"), "{e}");
    }

    #[test]
    fn modes_parse_and_name_themselves() {
        for mode in [
            Mode::Metadata,
            Mode::Discard,
            Mode::Zero,
            Mode::Secure,
            Mode::Auto,
        ] {
            assert_eq!(Mode::parse(mode.name()).unwrap(), mode);
        }
        let e = format!("{:#}", Mode::parse("shred").unwrap_err());
        assert!(e.contains("metadata, discard, zero, secure or auto"), "{e}");
    }

    fn caps(transport: crate::erase::method::Transport) -> Capabilities {
        Capabilities {
            disk: "/dev/vda".to_owned(),
            transport,
            nvme: None,
            ata: None,
            scsi: None,
            discard: true,
            discard_zeroes: false,
            rotational: false,
        }
    }

    #[test]
    fn secure_without_a_device_erase_is_refused_before_anything_runs() {
        use crate::erase::method::Transport;
        let d = disk("vda", GIB, crate::disk::Transport::Virtio, false);
        let e = format!(
            "{:#}",
            decide(d, Mode::Secure, &caps(Transport::Other)).unwrap_err()
        );
        assert!(e.starts_with("imprint.erase=secure: /dev/vda"), "{e}");
    }

    #[test]
    fn auto_falls_to_discard_with_a_zero_promise_else_to_zeroing_and_says_why() {
        use crate::erase::method::Transport;
        let d = || disk("vda", GIB, crate::disk::Transport::Virtio, false);
        let mut promising = caps(Transport::Other);
        promising.discard_zeroes = true;
        let planned = decide(d(), Mode::Auto, &promising).unwrap();
        assert_eq!(planned.method, Method::Discard { zeroes: true });
        let planned = decide(d(), Mode::Auto, &caps(Transport::Other)).unwrap();
        assert_eq!(planned.method, Method::Zero);
        let line = planned.to_string();
        assert!(
            line.starts_with("vda (1.0 GiB): auto -> zero")
                && line.contains("no erase command imprint can send"),
            "{line}"
        );
        // Discard is what was asked: the promise only decides the read-back.
        let planned = decide(d(), Mode::Discard, &caps(Transport::Other)).unwrap();
        assert_eq!(planned.method, Method::Discard { zeroes: false });
    }
}
