//! Which disks an erase reaches and how, decided before anything runs and
//! printed as the plan.

use std::fmt;

use anyhow::{Result, bail};

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
}

impl Mode {
    pub fn parse(v: &str) -> Result<Mode> {
        Ok(match v {
            "metadata" => Mode::Metadata,
            "discard" => Mode::Discard,
            "zero" => Mode::Zero,
            _ => bail!("must be metadata, discard or zero, not {v:?}"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Metadata => "metadata",
            Mode::Discard => "discard",
            Mode::Zero => "zero",
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

/// One disk of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedErase {
    pub disk: DiskInfo,
    pub mode: Mode,
}

impl fmt::Display for PlannedErase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.disk.describe(), self.mode)
    }
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
        for mode in [Mode::Metadata, Mode::Discard, Mode::Zero] {
            assert_eq!(Mode::parse(mode.name()).unwrap(), mode);
        }
        let e = format!("{:#}", Mode::parse("shred").unwrap_err());
        assert!(e.contains("metadata, discard or zero"), "{e}");
    }
}
