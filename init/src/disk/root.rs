//! Which partition of the freshly written image holds the OS root, and which
//! OS it is: what injection needs before it can write anything.
//!
//! # Finding the root
//!
//! The first rule that picks a partition wins:
//!
//! 1. **`imprint.root=`**, when given: `N` (the partition number), `LABEL=`,
//!    `UUID=` (the filesystem's, as `blkid` prints it), `PARTLABEL=`,
//!    `PARTUUID=` (the GPT entry's). UUIDs match without regard to case. It
//!    must name exactly one partition, and that partition must hold a
//!    filesystem imprint can mount; no other rule is tried.
//! 2. **The Discoverable Partitions Specification** root type GUID for
//!    x86-64, [`ROOT_X86_64`] (what `systemd-repart` and `mkosi` images carry).
//! 3. **The classic image-deploy rule**: the first partition holding
//!    `/curtin` (DRP and MAAS images keep their cloud-init seed there).
//! 4. The first partition whose filesystem holds `/etc/os-release`.
//!
//! "First" is by partition number. Rules 2–4 consider only filesystems the
//! kernel can mount here: ext2/3/4, xfs, btrfs, vfat. Rules 3 and 4 mount
//! each candidate read-only to look (`installed::PartitionMounts`); a mount that
//! fails stops discovery rather than skipping a partition that may be the
//! root (`imprint.root=` names it and skips the looking).
//!
//! # Windows images
//!
//! When no Linux root is found but a partition holds NTFS (or
//! `imprint.root=` names one), the error is an [`NtfsImage`]: "injection
//! not supported for NTFS (partition N); the image must carry its own
//! config". The caller finds it with `error.downcast_ref::<NtfsImage>()` and
//! may report it and hand over without injection; left alone it fails the
//! deploy like any other error.
//!
//! # The OS family
//!
//! [`os_family`] reads `os-release(5)` text; [`read_os_release`] finds it on
//! the root (`/etc/os-release`, else `/usr/lib/os-release`).
//!
//! Mounting and reading inside the partitions is `installed`'s: this module
//! decides, through the [`Inspect`] seam.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::disk::probe::{self, FsInfo, PROBE_LEN};

/// The Discoverable Partitions Specification's "Root Partition (x86-64)".
pub const ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";

/// What the kernel here mounts for a root: the types [`FsInfo::mount_type`]
/// gives for ext2/3/4, xfs, btrfs and vfat.
const ROOT_MOUNT_TYPES: [&str; 4] = ["ext4", "xfs", "btrfs", "vfat"];

/// `imprint.root=`: which partition is the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSelector {
    /// The partition number, from 1.
    Number(u32),
    /// The filesystem label.
    Label(String),
    /// The filesystem UUID, as blkid prints it.
    Uuid(String),
    /// The GPT partition name.
    PartLabel(String),
    /// The GPT partition GUID (or the MBR `xxxxxxxx-NN` form).
    PartUuid(String),
}

impl RootSelector {
    pub fn parse(value: &str) -> Result<RootSelector> {
        const FORMS: &str = "N, LABEL=, UUID=, PARTLABEL= or PARTUUID=";
        if value.is_empty() {
            bail!("imprint.root= is empty; use {FORMS}");
        }
        if value.bytes().all(|b| b.is_ascii_digit()) {
            let number: u32 = value
                .parse()
                .with_context(|| format!("imprint.root={value}: partition number too large"))?;
            if number == 0 {
                bail!("imprint.root=0: partitions are numbered from 1");
            }
            return Ok(RootSelector::Number(number));
        }
        let Some((key, name)) = value.split_once('=') else {
            if value.starts_with("/dev/") {
                bail!(
                    "imprint.root={value}: name the partition by number (e.g. 2), not by \
                     device: the device names of the target are not known beforehand"
                );
            }
            bail!("imprint.root={value}: use {FORMS}");
        };
        if name.is_empty() {
            bail!("imprint.root={value}: {key}= needs a value");
        }
        let name = name.to_owned();
        Ok(match key.to_ascii_uppercase().as_str() {
            "LABEL" => RootSelector::Label(name),
            "UUID" => RootSelector::Uuid(name),
            "PARTLABEL" => RootSelector::PartLabel(name),
            "PARTUUID" => RootSelector::PartUuid(name),
            _ => bail!("imprint.root={value}: unknown selector {key}=; use {FORMS}"),
        })
    }

    /// Whether `candidate` is the partition this names (UUIDs compared
    /// without regard to case).
    pub fn matches(&self, candidate: &Candidate) -> bool {
        let fs = candidate.fs.as_ref();
        match self {
            RootSelector::Number(number) => candidate.number == *number,
            RootSelector::Label(label) => {
                fs.and_then(|fs| fs.label.as_deref()) == Some(label.as_str())
            }
            RootSelector::Uuid(uuid) => fs
                .and_then(|fs| fs.uuid.as_deref())
                .is_some_and(|have| have.eq_ignore_ascii_case(uuid)),
            RootSelector::PartLabel(label) => candidate.part_label.as_deref() == Some(label),
            RootSelector::PartUuid(uuid) => candidate
                .part_uuid
                .as_deref()
                .is_some_and(|have| have.eq_ignore_ascii_case(uuid)),
        }
    }
}

impl fmt::Display for RootSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootSelector::Number(number) => write!(f, "{number}"),
            RootSelector::Label(label) => write!(f, "LABEL={label}"),
            RootSelector::Uuid(uuid) => write!(f, "UUID={uuid}"),
            RootSelector::PartLabel(label) => write!(f, "PARTLABEL={label}"),
            RootSelector::PartUuid(uuid) => write!(f, "PARTUUID={uuid}"),
        }
    }
}

/// A partition of the written image, as the partition table and a probe of
/// its first bytes describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// From 1, as in the device name (`vda2` is 2).
    pub number: u32,
    pub dev_path: PathBuf,
    /// The GPT type GUID, lower-case text; none on MBR.
    pub part_type_guid: Option<String>,
    pub part_uuid: Option<String>,
    pub part_label: Option<String>,
    pub fs: Option<FsInfo>,
}

impl Candidate {
    /// `partition 2 (/dev/vda2, ext4 LABEL=root UUID=…, PARTLABEL=root)`.
    pub fn describe(&self) -> String {
        let mut text = format!("partition {} ({}, ", self.number, self.dev_path.display());
        match &self.fs {
            Some(fs) => text += &fs.describe(),
            None => text += "no filesystem recognised",
        }
        if let Some(label) = &self.part_label {
            text += &format!(", PARTLABEL={label}");
        }
        text + ")"
    }

    /// Whether it holds a filesystem that can be the root here.
    pub fn mountable(&self) -> bool {
        self.fs
            .as_ref()
            .is_some_and(|fs| ROOT_MOUNT_TYPES.contains(&fs.mount_type()))
    }

    fn is_ntfs(&self) -> bool {
        self.fs.as_ref().is_some_and(|fs| fs.fstype == "ntfs")
    }

    /// Why rules 2–4 cannot look inside it, if they cannot.
    fn unmountable_reason(&self) -> Option<String> {
        match &self.fs {
            None => Some("no filesystem recognised".to_owned()),
            Some(fs) if !self.mountable() => Some(format!("{} cannot hold the root", fs.fstype)),
            Some(_) => None,
        }
    }
}

/// The filesystem on `path` (a partition, or a plain file standing in for
/// one), from its first bytes.
pub fn probe_device(path: &Path) -> Result<Option<FsInfo>> {
    let mut bytes = Vec::with_capacity(PROBE_LEN);
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(u64::try_from(PROBE_LEN).unwrap_or(u64::MAX))
                .read_to_end(&mut bytes)
        })
        .with_context(|| format!("reading the start of {}", path.display()))?;
    Ok(probe::probe(&bytes))
}

/// Looking inside a candidate's filesystem. Paths are absolute within that
/// filesystem; symbolic links resolve inside it, as they would once it is
/// the running system's root.
pub trait Inspect {
    /// Whether `path` exists (a dangling symbolic link counts: `/etc/os-release`
    /// may point into a `/usr` on another partition).
    fn has_path(&mut self, candidate: &Candidate, path: &str) -> Result<bool>;
    /// The contents of the file at `path`; none when it does not exist.
    fn read_file(&mut self, candidate: &Candidate, path: &str) -> Result<Option<String>>;
}

/// Which rule picked the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootReason {
    Explicit,
    DiscoverableRootGuid,
    Curtin,
    OsRelease,
}

impl fmt::Display for RootReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RootReason::Explicit => "named by imprint.root=",
            RootReason::DiscoverableRootGuid => "it has the x86-64 root partition type",
            RootReason::Curtin => "it holds /curtin",
            RootReason::OsRelease => "it holds /etc/os-release",
        })
    }
}

/// The root: `candidates[index]`, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootChoice {
    pub index: usize,
    pub reason: RootReason,
}

/// The image is Windows (or at least its only candidate root is NTFS):
/// nothing can be injected, which the caller may report as such instead of
/// failing. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtfsImage {
    pub partition: u32,
}

impl fmt::Display for NtfsImage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "injection not supported for NTFS (partition {}); the image must carry its own config",
            self.partition
        )
    }
}

impl std::error::Error for NtfsImage {}

/// Picks the root among `candidates` by the rules in the module
/// documentation. `inspect` is asked only for candidates with a mountable
/// filesystem, and only when rules 1 and 2 did not decide.
pub fn discover_root(
    selector: Option<&RootSelector>,
    candidates: &[Candidate],
    inspect: &mut dyn Inspect,
) -> Result<RootChoice> {
    if let Some(selector) = selector {
        return explicit_root(selector, candidates);
    }
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by_key(|&i| candidates[i].number);
    // Why each candidate was passed over, for the error.
    let mut rejected: Vec<Option<String>> = candidates
        .iter()
        .map(Candidate::unmountable_reason)
        .collect();

    for &index in &order {
        let candidate = &candidates[index];
        let is_root_type = candidate
            .part_type_guid
            .as_deref()
            .is_some_and(|guid| guid.eq_ignore_ascii_case(ROOT_X86_64));
        if !is_root_type {
            continue;
        }
        if candidate.mountable() {
            return Ok(RootChoice {
                index,
                reason: RootReason::DiscoverableRootGuid,
            });
        }
        if let Some(why) = &mut rejected[index] {
            *why = format!("root partition type, but {why}");
        }
    }

    for (path, reason) in [
        ("/curtin", RootReason::Curtin),
        ("/etc/os-release", RootReason::OsRelease),
    ] {
        for &index in &order {
            let candidate = &candidates[index];
            if !candidate.mountable() {
                continue;
            }
            let found = inspect.has_path(candidate, path).with_context(|| {
                format!(
                    "looking for {path} on {} (imprint.root= skips this)",
                    candidate.describe()
                )
            })?;
            if found {
                return Ok(RootChoice { index, reason });
            }
        }
    }

    if let Some(ntfs) = order.iter().map(|&i| &candidates[i]).find(|c| c.is_ntfs()) {
        return Err(NtfsImage {
            partition: ntfs.number,
        }
        .into());
    }
    if candidates.is_empty() {
        bail!("no root filesystem: the image has no partitions");
    }
    let listing: Vec<String> = order
        .iter()
        .map(|&i| {
            let why = rejected[i]
                .clone()
                .unwrap_or_else(|| "no /curtin or /etc/os-release".to_owned());
            format!("{}: {why}", candidates[i].describe())
        })
        .collect();
    bail!(
        "no root filesystem (by root partition type, /curtin or /etc/os-release) among {}; \
         name it with imprint.root=",
        listing.join("; ")
    )
}

fn explicit_root(selector: &RootSelector, candidates: &[Candidate]) -> Result<RootChoice> {
    let matching: Vec<usize> = (0..candidates.len())
        .filter(|&i| selector.matches(&candidates[i]))
        .collect();
    let describe_all = |indices: &mut dyn Iterator<Item = usize>| {
        let list: Vec<String> = indices.map(|i| describe_fully(&candidates[i])).collect();
        if list.is_empty() {
            "none".to_owned()
        } else {
            list.join(", ")
        }
    };
    let index = match matching.as_slice() {
        [index] => *index,
        [] => bail!(
            "imprint.root={selector}: no partition matches; partitions: {}",
            describe_all(&mut (0..candidates.len()))
        ),
        several => bail!(
            "imprint.root={selector}: {} partitions match: {}; name one by number or PARTUUID=",
            several.len(),
            describe_all(&mut several.iter().copied())
        ),
    };
    let candidate = &candidates[index];
    if candidate.is_ntfs() {
        return Err(NtfsImage {
            partition: candidate.number,
        }
        .into());
    }
    if let Some(why) = candidate.unmountable_reason() {
        bail!(
            "imprint.root={selector} is {}: {why} (ext4, xfs, btrfs and vfat can)",
            candidate.describe()
        );
    }
    Ok(RootChoice {
        index,
        reason: RootReason::Explicit,
    })
}

/// [`Candidate::describe`] plus the partition GUID, for choosing a selector.
fn describe_fully(candidate: &Candidate) -> String {
    let text = candidate.describe();
    match &candidate.part_uuid {
        Some(uuid) => format!("{} PARTUUID={uuid})", text.trim_end_matches(')')),
        None => text,
    }
}

/// The root's `os-release(5)`: `/etc/os-release`, else
/// `/usr/lib/os-release`, read by `read` (absolute paths inside the root;
/// none when missing).
pub fn read_os_release(
    read: &mut dyn FnMut(&str) -> Result<Option<String>>,
) -> Result<Option<OsInfo>> {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = read(path)? {
            return Ok(Some(os_family(&text)));
        }
    }
    Ok(None)
}

/// Which network-configuration flavour an OS uses, roughly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsFamily {
    /// Debian, Ubuntu and their derivatives.
    Debian,
    /// RHEL, CentOS, Rocky, AlmaLinux, Fedora and their derivatives.
    RedHat,
    /// SLES and openSUSE.
    Suse,
    Other,
}

/// What `os-release(5)` says about an OS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsInfo {
    /// `ID`; `linux` when unset, as the specification says.
    pub id: String,
    /// `ID_LIKE`, closest relative first.
    pub id_like: Vec<String>,
    pub version_id: Option<String>,
    /// `PRETTY_NAME`; `Linux` when unset, as the specification says.
    pub pretty_name: String,
    pub family: OsFamily,
}

/// Parses `os-release(5)` text and classifies the OS by `ID`, then by each
/// `ID_LIKE` entry in turn (Linux Mint's `ubuntu debian` is Debian, Rocky's
/// `rhel centos fedora` is RedHat). Never fails: unknown lines are skipped.
pub fn os_family(os_release: &str) -> OsInfo {
    let mut id = None;
    let mut id_like = Vec::new();
    let mut version_id = None;
    let mut pretty_name = None;
    for line in os_release.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let value = shell_value(raw);
        let value = (!value.is_empty()).then_some(value);
        // Later assignments win, as when a shell sources the file.
        match key.trim() {
            "ID" => id = value,
            "ID_LIKE" => {
                id_like = value
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
            }
            "VERSION_ID" => version_id = value,
            "PRETTY_NAME" => pretty_name = value,
            _ => {}
        }
    }
    let id = id.unwrap_or_else(|| "linux".to_owned());
    let family = std::iter::once(&id)
        .chain(&id_like)
        .find_map(|name| family_of(name))
        .unwrap_or(OsFamily::Other);
    OsInfo {
        id,
        id_like,
        version_id,
        pretty_name: pretty_name.unwrap_or_else(|| "Linux".to_owned()),
        family,
    }
}

fn family_of(id: &str) -> Option<OsFamily> {
    match id {
        "debian" | "ubuntu" => Some(OsFamily::Debian),
        "rhel" | "centos" | "rocky" | "almalinux" | "fedora" => Some(OsFamily::RedHat),
        "sles" | "sled" | "suse" | "opensuse" => Some(OsFamily::Suse),
        // opensuse-leap, opensuse-tumbleweed, opensuse-microos.
        _ if id.starts_with("opensuse-") => Some(OsFamily::Suse),
        _ => None,
    }
}

/// A value as the shell would read it (os-release(5) is shell-compatible):
/// double quotes with `\"`, `\\`, `\$`, `` \` `` escapes, single quotes
/// literal, a backslash outside quotes escaping the next character. An
/// unquoted space ends the value.
fn shell_value(raw: &str) -> String {
    let mut value = String::new();
    let mut quote = None;
    let mut chars = raw.trim().chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(open), _) if c == open => quote = None,
            (Some('"'), '\\') => match chars.next() {
                Some(next @ ('"' | '\\' | '$' | '`')) => value.push(next),
                Some(next) => {
                    value.push('\\');
                    value.push(next);
                }
                None => value.push('\\'),
            },
            (None, '\\') => value.extend(chars.next()),
            (None, _) if c.is_whitespace() => break,
            _ => value.push(c),
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn fs(fstype: &'static str, label: Option<&str>, uuid: Option<&str>) -> Option<FsInfo> {
        Some(FsInfo {
            fstype,
            uuid: uuid.map(str::to_owned),
            label: label.map(str::to_owned),
        })
    }

    fn part(number: u32, fs: Option<FsInfo>) -> Candidate {
        Candidate {
            number,
            dev_path: PathBuf::from(format!("/dev/vda{number}")),
            part_type_guid: None,
            part_uuid: None,
            part_label: None,
            fs,
        }
    }

    const ESP_GUID: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    const LINUX_DATA_GUID: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

    /// Partitions by device path and the paths each holds; records what
    /// was asked, so tests see what discovery looked at.
    #[derive(Default)]
    struct FakeInspect {
        files: BTreeMap<PathBuf, BTreeMap<&'static str, &'static str>>,
        failing: BTreeSet<PathBuf>,
        asked: Vec<(u32, String)>,
    }

    impl FakeInspect {
        fn with(entries: &[(u32, &'static str)]) -> FakeInspect {
            let mut fake = FakeInspect::default();
            for (number, path) in entries {
                fake.files
                    .entry(PathBuf::from(format!("/dev/vda{number}")))
                    .or_default()
                    .insert(path, "ID=debian\n");
            }
            fake
        }
    }

    impl Inspect for FakeInspect {
        fn has_path(&mut self, candidate: &Candidate, path: &str) -> Result<bool> {
            self.asked.push((candidate.number, path.to_owned()));
            if self.failing.contains(&candidate.dev_path) {
                bail!("EINVAL");
            }
            Ok(self
                .files
                .get(&candidate.dev_path)
                .is_some_and(|files| files.contains_key(path)))
        }
        fn read_file(&mut self, candidate: &Candidate, path: &str) -> Result<Option<String>> {
            Ok(self
                .files
                .get(&candidate.dev_path)
                .and_then(|files| files.get(path))
                .map(|text| (*text).to_owned()))
        }
    }

    fn discover(
        selector: Option<&str>,
        candidates: &[Candidate],
        inspect: &mut FakeInspect,
    ) -> Result<(u32, RootReason)> {
        let selector = selector.map(|s| RootSelector::parse(s).unwrap());
        let choice = discover_root(selector.as_ref(), candidates, inspect)?;
        Ok((candidates[choice.index].number, choice.reason))
    }

    #[test]
    fn selectors_parse_and_print_back() {
        for (text, parsed) in [
            ("2", RootSelector::Number(2)),
            (
                "LABEL=cloudimg-rootfs",
                RootSelector::Label("cloudimg-rootfs".into()),
            ),
            ("label=root", RootSelector::Label("root".into())),
            (
                "UUID=0b8e7a4e-3c1d",
                RootSelector::Uuid("0b8e7a4e-3c1d".into()),
            ),
            (
                "PARTLABEL=root-x86-64",
                RootSelector::PartLabel("root-x86-64".into()),
            ),
            ("PARTUUID=6b2a-1", RootSelector::PartUuid("6b2a-1".into())),
            ("LABEL=a=b", RootSelector::Label("a=b".into())),
        ] {
            assert_eq!(RootSelector::parse(text).unwrap(), parsed, "{text}");
        }
        assert_eq!(RootSelector::Number(3).to_string(), "3");
        assert_eq!(
            RootSelector::parse("partuuid=AB-02").unwrap().to_string(),
            "PARTUUID=AB-02"
        );
    }

    #[test]
    fn bad_selectors_say_what_is_wrong() {
        let error = |text: &str| format!("{:#}", RootSelector::parse(text).unwrap_err());
        assert_eq!(
            error(""),
            "imprint.root= is empty; use N, LABEL=, UUID=, PARTLABEL= or PARTUUID="
        );
        assert_eq!(error("0"), "imprint.root=0: partitions are numbered from 1");
        assert!(error("99999999999").contains("partition number too large"));
        assert_eq!(error("LABEL="), "imprint.root=LABEL=: LABEL= needs a value");
        assert_eq!(
            error("DEV=vda2"),
            "imprint.root=DEV=vda2: unknown selector DEV=; \
             use N, LABEL=, UUID=, PARTLABEL= or PARTUUID="
        );
        assert!(error("/dev/vda2").contains("by number (e.g. 2), not by device"));
        assert!(error("root").starts_with("imprint.root=root: use N, LABEL="));
        assert!(error("-1").starts_with("imprint.root=-1: use N"));
    }

    /// A typical cloud image: BIOS boot, ESP, root.
    fn cloud_image() -> Vec<Candidate> {
        let mut esp = part(15, fs("vfat", Some("UEFI"), Some("1A2B-3C4D")));
        esp.part_type_guid = Some(ESP_GUID.into());
        let mut root = part(1, fs("ext4", Some("cloudimg-rootfs"), Some("AB-CD")));
        root.part_type_guid = Some(LINUX_DATA_GUID.into());
        root.part_uuid = Some("6B2A0E0C-0001".into());
        root.part_label = Some("root".into());
        vec![esp, part(14, None), root]
    }

    #[test]
    fn explicit_selector_wins_without_looking() {
        let parts = cloud_image();
        let mut inspect = FakeInspect::with(&[(15, "/etc/os-release")]);
        for selector in [
            "1",
            "LABEL=cloudimg-rootfs",
            "UUID=ab-cd",
            "PARTLABEL=root",
            "PARTUUID=6b2a0e0c-0001",
        ] {
            assert_eq!(
                discover(Some(selector), &parts, &mut inspect).unwrap(),
                (1, RootReason::Explicit),
                "{selector}"
            );
        }
        assert_eq!(
            discover(Some("15"), &parts, &mut inspect).unwrap(),
            (15, RootReason::Explicit)
        );
        assert!(inspect.asked.is_empty());
    }

    #[test]
    fn explicit_selector_errors_list_the_partitions() {
        let parts = cloud_image();
        let mut inspect = FakeInspect::default();
        assert_eq!(
            format!(
                "{:#}",
                discover(Some("LABEL=root"), &parts, &mut inspect).unwrap_err()
            ),
            "imprint.root=LABEL=root: no partition matches; partitions: \
             partition 15 (/dev/vda15, vfat LABEL=UEFI UUID=1A2B-3C4D), \
             partition 14 (/dev/vda14, no filesystem recognised), \
             partition 1 (/dev/vda1, ext4 LABEL=cloudimg-rootfs UUID=AB-CD, PARTLABEL=root \
             PARTUUID=6B2A0E0C-0001)"
        );
        assert_eq!(
            format!(
                "{:#}",
                discover(Some("14"), &parts, &mut inspect).unwrap_err()
            ),
            "imprint.root=14 is partition 14 (/dev/vda14, no filesystem recognised): \
             no filesystem recognised (ext4, xfs, btrfs and vfat can)"
        );
        let twins = [
            part(2, fs("ext4", Some("root"), None)),
            part(3, fs("xfs", Some("root"), None)),
        ];
        assert_eq!(
            format!(
                "{:#}",
                discover(Some("LABEL=root"), &twins, &mut inspect).unwrap_err()
            ),
            "imprint.root=LABEL=root: 2 partitions match: \
             partition 2 (/dev/vda2, ext4 LABEL=root), partition 3 (/dev/vda3, xfs LABEL=root); \
             name one by number or PARTUUID="
        );
        let iso = [part(1, fs("iso9660", None, None))];
        assert!(
            format!("{:#}", discover(Some("1"), &iso, &mut inspect).unwrap_err())
                .ends_with(": iso9660 cannot hold the root (ext4, xfs, btrfs and vfat can)")
        );
    }

    #[test]
    fn root_type_guid_beats_curtin_and_os_release() {
        let mut parts = cloud_image();
        let mut dps = part(3, fs("xfs", None, None));
        dps.part_type_guid = Some(ROOT_X86_64.to_uppercase());
        parts.push(dps);
        let mut second = part(4, fs("ext4", None, None));
        second.part_type_guid = Some(ROOT_X86_64.into());
        parts.push(second);
        let mut inspect = FakeInspect::with(&[(1, "/curtin"), (1, "/etc/os-release")]);
        assert_eq!(
            discover(None, &parts, &mut inspect).unwrap(),
            (3, RootReason::DiscoverableRootGuid)
        );
        assert!(inspect.asked.is_empty(), "the type alone decides");
    }

    #[test]
    fn a_root_type_without_a_mountable_filesystem_is_passed_over() {
        // An encrypted root: the type says root, but there is nothing to mount.
        let mut luks = part(2, None);
        luks.part_type_guid = Some(ROOT_X86_64.into());
        let parts = [part(1, fs("vfat", None, None)), luks];
        let mut inspect = FakeInspect::default();
        assert_eq!(
            format!("{:#}", discover(None, &parts, &mut inspect).unwrap_err()),
            "no root filesystem (by root partition type, /curtin or /etc/os-release) among \
             partition 1 (/dev/vda1, vfat): no /curtin or /etc/os-release; \
             partition 2 (/dev/vda2, no filesystem recognised): \
             root partition type, but no filesystem recognised; name it with imprint.root="
        );
    }

    #[test]
    fn curtin_beats_os_release_even_on_a_later_partition() {
        let parts = [
            part(1, fs("ext4", None, None)),
            part(2, fs("ext4", None, None)),
        ];
        let mut inspect = FakeInspect::with(&[(1, "/etc/os-release"), (2, "/curtin")]);
        assert_eq!(
            discover(None, &parts, &mut inspect).unwrap(),
            (2, RootReason::Curtin)
        );
        assert_eq!(
            inspect.asked,
            [(1, "/curtin".to_owned()), (2, "/curtin".to_owned())]
        );
    }

    #[test]
    fn os_release_on_the_first_partition_by_number_and_only_mountable_ones_are_asked() {
        // Listed out of order; both hold os-release; the lower number wins.
        let parts = [
            part(3, fs("btrfs", None, None)),
            part(2, fs("xfs", None, None)),
            part(1, fs("iso9660", None, None)),
            part(4, None),
            part(5, fs("ext2", None, None)),
        ];
        let mut inspect = FakeInspect::with(&[
            (1, "/etc/os-release"),
            (2, "/etc/os-release"),
            (3, "/etc/os-release"),
        ]);
        let (number, reason) = discover(None, &parts, &mut inspect).unwrap();
        assert_eq!((number, reason), (2, RootReason::OsRelease));
        assert!(
            !inspect.asked.iter().any(|(n, _)| [1, 4].contains(n)),
            "{:?}",
            inspect.asked
        );
        assert_eq!(
            inspect.asked[..3],
            [
                (2, "/curtin".to_owned()),
                (3, "/curtin".to_owned()),
                (5, "/curtin".to_owned())
            ]
        );
    }

    #[test]
    fn an_ext3_partition_counts_as_mountable() {
        let parts = [part(1, fs("ext3", None, None))];
        let mut inspect = FakeInspect::with(&[(1, "/etc/os-release")]);
        assert_eq!(
            discover(None, &parts, &mut inspect).unwrap(),
            (1, RootReason::OsRelease)
        );
    }

    #[test]
    fn a_failed_look_stops_discovery_and_names_the_partition() {
        let parts = [
            part(1, fs("vfat", Some("EFI"), None)),
            part(2, fs("ext4", None, None)),
        ];
        let mut inspect = FakeInspect::with(&[(2, "/etc/os-release")]);
        inspect.failing.insert(PathBuf::from("/dev/vda1"));
        assert_eq!(
            format!("{:#}", discover(None, &parts, &mut inspect).unwrap_err()),
            "looking for /curtin on partition 1 (/dev/vda1, vfat LABEL=EFI) \
             (imprint.root= skips this): EINVAL"
        );
    }

    fn ntfs_error(result: Result<(u32, RootReason)>) -> NtfsImage {
        let error = result.unwrap_err();
        error
            .downcast_ref::<NtfsImage>()
            .unwrap_or_else(|| panic!("not an NtfsImage: {error:#}"))
            .clone()
    }

    #[test]
    fn windows_images_are_a_distinct_error() {
        // Windows: recovery (NTFS), ESP, MSR, C: (NTFS).
        let mut parts = vec![
            part(1, fs("ntfs", None, Some("AAAA"))),
            part(2, fs("vfat", None, None)),
            part(3, None),
            part(4, fs("ntfs", None, Some("BBBB"))),
        ];
        let mut inspect = FakeInspect::default();
        let ntfs = ntfs_error(discover(None, &parts, &mut inspect));
        assert_eq!(ntfs, NtfsImage { partition: 1 });
        assert_eq!(
            ntfs.to_string(),
            "injection not supported for NTFS (partition 1); the image must carry its own config"
        );
        assert_eq!(inspect.asked.len(), 2, "the ESP was looked at");
        assert_eq!(
            ntfs_error(discover(Some("4"), &parts, &mut inspect)),
            NtfsImage { partition: 4 }
        );
        // A Linux root next to NTFS (dual boot) is still found.
        parts.push(part(5, fs("ext4", None, None)));
        let mut inspect = FakeInspect::with(&[(5, "/etc/os-release")]);
        assert_eq!(
            discover(None, &parts, &mut inspect).unwrap(),
            (5, RootReason::OsRelease)
        );
    }

    #[test]
    fn no_root_lists_every_partition_and_why() {
        let mut inspect = FakeInspect::with(&[(2, "/etc/hostname")]);
        let parts = [
            part(2, fs("ext4", Some("data"), None)),
            part(1, fs("vfat", Some("EFI"), Some("1A2B-3C4D"))),
            part(3, fs("iso9660", Some("cidata"), None)),
            part(4, None),
        ];
        assert_eq!(
            format!("{:#}", discover(None, &parts, &mut inspect).unwrap_err()),
            "no root filesystem (by root partition type, /curtin or /etc/os-release) among \
             partition 1 (/dev/vda1, vfat LABEL=EFI UUID=1A2B-3C4D): no /curtin or /etc/os-release; \
             partition 2 (/dev/vda2, ext4 LABEL=data): no /curtin or /etc/os-release; \
             partition 3 (/dev/vda3, iso9660 LABEL=cidata): iso9660 cannot hold the root; \
             partition 4 (/dev/vda4, no filesystem recognised): no filesystem recognised; \
             name it with imprint.root="
        );
        assert_eq!(
            format!("{:#}", discover(None, &[], &mut inspect).unwrap_err()),
            "no root filesystem: the image has no partitions"
        );
    }

    // os-release files as the distributions ship them.
    const DEBIAN_12: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
SUPPORT_URL="https://www.debian.org/support"
BUG_REPORT_URL="https://bugs.debian.org/"
"#;
    const UBUNTU_2404: &str = r#"PRETTY_NAME="Ubuntu 24.04 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
SUPPORT_URL="https://help.ubuntu.com/"
BUG_REPORT_URL="https://bugs.launchpad.net/ubuntu/"
PRIVACY_POLICY_URL="https://www.ubuntu.com/legal/terms-and-policies/privacy-policy"
UBUNTU_CODENAME=noble
LOGO=ubuntu-logo
"#;
    const RHEL_9: &str = r#"NAME="Red Hat Enterprise Linux"
VERSION="9.4 (Plow)"
ID="rhel"
ID_LIKE="fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Red Hat Enterprise Linux 9.4 (Plow)"
ANSI_COLOR="0;31"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:redhat:enterprise_linux:9::baseos"
HOME_URL="https://www.redhat.com/"
DOCUMENTATION_URL="https://access.redhat.com/documentation/en-us/red_hat_enterprise_linux/9"
BUG_REPORT_URL="https://issues.redhat.com/"

REDHAT_BUGZILLA_PRODUCT="Red Hat Enterprise Linux 9"
REDHAT_BUGZILLA_PRODUCT_VERSION=9.4
REDHAT_SUPPORT_PRODUCT="Red Hat Enterprise Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
"#;
    const ROCKY_9: &str = r#"NAME="Rocky Linux"
VERSION="9.3 (Blue Onyx)"
ID="rocky"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.3"
PLATFORM_ID="platform:el9"
PRETTY_NAME="Rocky Linux 9.3 (Blue Onyx)"
ANSI_COLOR="0;32"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:rocky:rocky:9::baseos"
HOME_URL="https://rockylinux.org/"
BUG_REPORT_URL="https://bugs.rockylinux.org/"
SUPPORT_END="2032-05-31"
ROCKY_SUPPORT_PRODUCT="Rocky-Linux-9"
ROCKY_SUPPORT_PRODUCT_VERSION="9.3"
REDHAT_SUPPORT_PRODUCT="Rocky Linux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.3"
"#;
    const ALMA_9: &str = r#"NAME="AlmaLinux"
VERSION="9.4 (Seafoam Ocelot)"
ID="almalinux"
ID_LIKE="rhel centos fedora"
VERSION_ID="9.4"
PLATFORM_ID="platform:el9"
PRETTY_NAME="AlmaLinux 9.4 (Seafoam Ocelot)"
ANSI_COLOR="0;34"
LOGO="fedora-logo-icon"
CPE_NAME="cpe:/o:almalinux:almalinux:9::baseos"
HOME_URL="https://almalinux.org/"
DOCUMENTATION_URL="https://wiki.almalinux.org/"
BUG_REPORT_URL="https://bugs.almalinux.org/"

ALMALINUX_MANTISBT_PROJECT="AlmaLinux-9"
ALMALINUX_MANTISBT_PROJECT_VERSION="9.4"
REDHAT_SUPPORT_PRODUCT="AlmaLinux"
REDHAT_SUPPORT_PRODUCT_VERSION="9.4"
SUPPORT_END=2032-06-01
"#;
    const FEDORA_40: &str = r#"NAME="Fedora Linux"
VERSION="40 (Server Edition)"
ID=fedora
VERSION_ID=40
VERSION_CODENAME=""
PLATFORM_ID="platform:f40"
PRETTY_NAME="Fedora Linux 40 (Server Edition)"
ANSI_COLOR="0;38;2;60;110;180"
LOGO=fedora-logo-icon
CPE_NAME="cpe:/o:fedoraproject:fedora:40"
HOME_URL="https://fedoraproject.org/"
SUPPORT_END=2025-05-13
VARIANT="Server Edition"
VARIANT_ID=server
"#;
    const SLES_15: &str = r#"NAME="SLES"
VERSION="15-SP5"
VERSION_ID="15.5"
PRETTY_NAME="SUSE Linux Enterprise Server 15 SP5"
ID="sles"
ID_LIKE="suse"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:suse:sles:15:sp5"
DOCUMENTATION_URL="https://documentation.suse.com/"
"#;
    const LEAP_15: &str = r#"NAME="openSUSE Leap"
VERSION="15.5"
ID="opensuse-leap"
ID_LIKE="suse opensuse"
VERSION_ID="15.5"
PRETTY_NAME="openSUSE Leap 15.5"
ANSI_COLOR="0;32"
CPE_NAME="cpe:/o:opensuse:leap:15.5"
BUG_REPORT_URL="https://bugs.opensuse.org"
HOME_URL="https://www.opensuse.org/"
DOCUMENTATION_URL="https://en.opensuse.org/Portal:Leap"
LOGO="distributor-logo-Leap"
"#;
    const ALPINE_319: &str = r#"NAME="Alpine Linux"
ID=alpine
VERSION_ID=3.19.1
PRETTY_NAME="Alpine Linux v3.19"
HOME_URL="https://alpinelinux.org/"
BUG_REPORT_URL="https://gitlab.alpinelinux.org/alpine/aports/-/issues"
"#;
    const ARCH: &str = r#"NAME="Arch Linux"
PRETTY_NAME="Arch Linux"
ID=arch
BUILD_ID=rolling
ANSI_COLOR="38;2;23;147;209"
HOME_URL="https://archlinux.org/"
DOCUMENTATION_URL="https://wiki.archlinux.org/"
SUPPORT_URL="https://bbs.archlinux.org/"
BUG_REPORT_URL="https://gitlab.archlinux.org/groups/archlinux/-/issues"
PRIVACY_POLICY_URL="https://terms.archlinux.org/docs/privacy-policy/"
LOGO=archlinux-logo
"#;

    #[test]
    fn os_release_of_real_distributions() {
        use OsFamily::*;
        for (text, id, like, version, pretty, family) in [
            (
                DEBIAN_12,
                "debian",
                "",
                Some("12"),
                "Debian GNU/Linux 12 (bookworm)",
                Debian,
            ),
            (
                UBUNTU_2404,
                "ubuntu",
                "debian",
                Some("24.04"),
                "Ubuntu 24.04 LTS",
                Debian,
            ),
            (
                RHEL_9,
                "rhel",
                "fedora",
                Some("9.4"),
                "Red Hat Enterprise Linux 9.4 (Plow)",
                RedHat,
            ),
            (
                ROCKY_9,
                "rocky",
                "rhel centos fedora",
                Some("9.3"),
                "Rocky Linux 9.3 (Blue Onyx)",
                RedHat,
            ),
            (
                ALMA_9,
                "almalinux",
                "rhel centos fedora",
                Some("9.4"),
                "AlmaLinux 9.4 (Seafoam Ocelot)",
                RedHat,
            ),
            (
                FEDORA_40,
                "fedora",
                "",
                Some("40"),
                "Fedora Linux 40 (Server Edition)",
                RedHat,
            ),
            (
                SLES_15,
                "sles",
                "suse",
                Some("15.5"),
                "SUSE Linux Enterprise Server 15 SP5",
                Suse,
            ),
            (
                LEAP_15,
                "opensuse-leap",
                "suse opensuse",
                Some("15.5"),
                "openSUSE Leap 15.5",
                Suse,
            ),
            (
                ALPINE_319,
                "alpine",
                "",
                Some("3.19.1"),
                "Alpine Linux v3.19",
                Other,
            ),
            (ARCH, "arch", "", None, "Arch Linux", Other),
        ] {
            let info = os_family(text);
            assert_eq!(
                info,
                OsInfo {
                    id: id.to_owned(),
                    id_like: like.split_whitespace().map(str::to_owned).collect(),
                    version_id: version.map(str::to_owned),
                    pretty_name: pretty.to_owned(),
                    family,
                },
                "{id}"
            );
        }
    }

    #[test]
    fn os_release_family_through_id_like_and_defaults() {
        let mint = os_family("ID=linuxmint\nID_LIKE=\"ubuntu debian\"\n");
        assert_eq!(mint.family, OsFamily::Debian);
        let amazon = os_family("ID=\"amzn\"\nID_LIKE=\"centos rhel fedora\"\n");
        assert_eq!(amazon.family, OsFamily::RedHat);
        let tumbleweed = os_family("ID=\"opensuse-tumbleweed\"\n");
        assert_eq!(tumbleweed.family, OsFamily::Suse);
        let empty = os_family("");
        assert_eq!(
            (empty.id.as_str(), empty.pretty_name.as_str(), empty.family),
            ("linux", "Linux", OsFamily::Other)
        );
        // A derivative that knows no relative we know.
        assert_eq!(os_family("ID=nixos\n").family, OsFamily::Other);
    }

    #[test]
    fn os_release_quoting_as_the_shell_reads_it() {
        let info = os_family(
            "# comment\n\
             \n\
             PRETTY_NAME=\"My \\\"Linux\\\" \\$5 \\`x\\` \\\\ \\n\"\n\
             ID='de bian'\n\
             VERSION_ID=1\\ 2\n\
             ID_LIKE=\"  ubuntu\tdebian  \"\n\
             garbage line\n\
             ID_LIKE=\n",
        );
        assert_eq!(info.pretty_name, "My \"Linux\" $5 `x` \\ \\n");
        assert_eq!(info.id, "de bian");
        assert_eq!(info.version_id.as_deref(), Some("1 2"));
        assert!(info.id_like.is_empty(), "a later assignment wins");
        assert_eq!(os_family("ID=debian # trailing\n").id, "debian");
        assert_eq!(os_family("ID=\"unterminated\n").id, "unterminated");
        assert_eq!(os_family("PRETTY_NAME=\"a\\").pretty_name, "a\\");
    }
}
