//! Finding the root filesystem the kernel command line names, the way an
//! initramfs does: `root=UUID=<filesystem uuid>` or `root=/dev/<name>`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use imprint::disk::probe::FsInfo;

/// What `root=` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// `root=UUID=…`: the filesystem UUID as `blkid` prints it.
    Uuid(String),
    /// `root=/dev/vda2`.
    Device(PathBuf),
}

impl RootSpec {
    /// Reads `root=` from the command line text (`/proc/cmdline`).
    pub fn from_cmdline(cmdline: &str) -> Result<RootSpec> {
        let cmdline = imprint::cmdline::KernelCmdline::parse(cmdline);
        let Some(value) = cmdline.value("root") else {
            bail!("no root= on the kernel command line; add root=UUID=<filesystem uuid>");
        };
        RootSpec::parse(value)
    }

    /// Parses the value of `root=`.
    pub fn parse(value: &str) -> Result<RootSpec> {
        if let Some(uuid) = value.strip_prefix("UUID=") {
            if uuid.is_empty() {
                bail!("root=UUID= names no UUID");
            }
            return Ok(RootSpec::Uuid(uuid.to_ascii_lowercase()));
        }
        if value.starts_with("/dev/") && value.len() > "/dev/".len() {
            return Ok(RootSpec::Device(PathBuf::from(value)));
        }
        bail!("root={value} is not understood; use root=UUID=<filesystem uuid> or root=/dev/<name>")
    }

    /// Whether `device`, holding `fs`, is the root this names.
    pub fn matches(&self, device: &Path, fs: Option<&FsInfo>) -> bool {
        match self {
            RootSpec::Uuid(uuid) => fs
                .and_then(|fs| fs.uuid.as_deref())
                .is_some_and(|found| found.eq_ignore_ascii_case(uuid)),
            RootSpec::Device(path) => device == path,
        }
    }
}

impl std::fmt::Display for RootSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RootSpec::Uuid(uuid) => write!(f, "root=UUID={uuid}"),
            RootSpec::Device(path) => write!(f, "root={}", path.display()),
        }
    }
}

/// The one device among `candidates` (device path, what it holds) that
/// `spec` names. Two matches are an error: a cloned disk attached twice
/// would otherwise boot whichever probed first.
pub fn pick_root<'a>(
    spec: &RootSpec,
    candidates: &'a [(PathBuf, Option<FsInfo>)],
) -> Result<Option<&'a (PathBuf, Option<FsInfo>)>> {
    let mut matching = candidates
        .iter()
        .filter(|(device, fs)| spec.matches(device, fs.as_ref()));
    let first = matching.next();
    if let Some(second) = matching.next() {
        bail!(
            "{spec} matches both {} and {}; detach one of the disks",
            first.map_or_else(String::new, |(d, _)| d.display().to_string()),
            second.0.display()
        );
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext4(uuid: &str) -> Option<FsInfo> {
        Some(FsInfo {
            fstype: "ext4",
            uuid: Some(uuid.to_owned()),
            label: None,
        })
    }

    #[test]
    fn reads_root_from_the_command_line() {
        assert_eq!(
            RootSpec::from_cmdline("BOOT_IMAGE=/vmlinuz root=UUID=AB-Cd ro quiet\n").unwrap(),
            RootSpec::Uuid("ab-cd".into())
        );
        assert_eq!(
            RootSpec::from_cmdline("root=/dev/vda1 root=/dev/vda2 ro").unwrap(),
            RootSpec::Device("/dev/vda2".into()),
            "the last root= wins, as in the kernel"
        );
        let error = RootSpec::from_cmdline("console=ttyS0 ro").unwrap_err();
        assert!(error.to_string().contains("no root="), "{error}");
        let error = RootSpec::from_cmdline("root=LABEL=x").unwrap_err();
        assert!(error.to_string().contains("root=LABEL=x"), "{error}");
        assert!(RootSpec::parse("UUID=").is_err());
        assert!(RootSpec::parse("/dev/").is_err());
    }

    #[test]
    fn picks_the_device_by_uuid_or_path() {
        let candidates = vec![
            (PathBuf::from("/dev/vda"), None),
            (
                PathBuf::from("/dev/vda1"),
                Some(FsInfo {
                    fstype: "vfat",
                    uuid: Some("1234-ABCD".into()),
                    label: None,
                }),
            ),
            (PathBuf::from("/dev/vda2"), ext4("0b8e1f3a-aaaa")),
        ];
        let by_uuid = RootSpec::parse("UUID=0B8E1F3A-AAAA").unwrap();
        assert_eq!(
            pick_root(&by_uuid, &candidates).unwrap().unwrap().0,
            PathBuf::from("/dev/vda2")
        );
        let fat = RootSpec::parse("UUID=1234-abcd").unwrap();
        assert_eq!(
            pick_root(&fat, &candidates).unwrap().unwrap().0,
            PathBuf::from("/dev/vda1")
        );
        let by_path = RootSpec::parse("/dev/vda").unwrap();
        assert_eq!(
            pick_root(&by_path, &candidates).unwrap().unwrap().0,
            PathBuf::from("/dev/vda")
        );
        let absent = RootSpec::parse("UUID=ffff").unwrap();
        assert!(pick_root(&absent, &candidates).unwrap().is_none());
    }

    #[test]
    fn two_disks_with_the_root_uuid_are_an_error() {
        let candidates = vec![
            (PathBuf::from("/dev/vda2"), ext4("u1")),
            (PathBuf::from("/dev/vdb2"), ext4("u1")),
        ];
        let error = pick_root(&RootSpec::Uuid("u1".into()), &candidates).unwrap_err();
        assert_eq!(
            error.to_string(),
            "root=UUID=u1 matches both /dev/vda2 and /dev/vdb2; detach one of the disks"
        );
    }
}
