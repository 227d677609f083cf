//! The `/boot` line of the installed system's `/etc/fstab`, so a separate
//! `/boot` can be mounted before looking for a kernel.

use std::path::PathBuf;

/// How fstab names the filesystem to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsSource {
    Uuid(String),
    Label(String),
    PartUuid(String),
    PartLabel(String),
    /// A device path such as `/dev/sda1` or `/dev/mapper/vg-boot`.
    Device(PathBuf),
}

/// One fstab line: what to mount, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsSpec {
    pub source: FsSource,
    /// The filesystem type as written (`ext4`, `xfs`, `auto` ...).
    pub fstype: String,
    /// The mount options as written (`defaults`, `rw,relatime` ...).
    pub options: String,
}

/// The line that mounts `/boot`, if any. `/dev/disk/by-uuid/...` and its
/// siblings are turned into the tag they stand for, since PID 1 has no udev
/// to create those links.
pub fn boot_mount_from_fstab(fstab: &str) -> Option<FsSpec> {
    fstab.lines().find_map(|line| {
        let line = line.trim();
        if line.starts_with('#') {
            return None;
        }
        let mut fields = line.split_whitespace().map(unescape);
        let (spec, target) = (fields.next()?, fields.next()?);
        if target.trim_end_matches('/') != "/boot" {
            return None;
        }
        let fstype = fields.next().unwrap_or_else(|| "auto".into());
        let options = fields.next().unwrap_or_else(|| "defaults".into());
        Some(FsSpec {
            source: source(&spec),
            fstype,
            options,
        })
    })
}

fn source(spec: &str) -> FsSource {
    let tagged = |tag: &str, dir: &str| {
        spec.strip_prefix(tag)
            .or_else(|| spec.strip_prefix(dir))
            .map(|v| v.trim_matches('"').to_owned())
    };
    if let Some(v) = tagged("UUID=", "/dev/disk/by-uuid/") {
        FsSource::Uuid(v)
    } else if let Some(v) = tagged("LABEL=", "/dev/disk/by-label/") {
        FsSource::Label(v)
    } else if let Some(v) = tagged("PARTUUID=", "/dev/disk/by-partuuid/") {
        FsSource::PartUuid(v)
    } else if let Some(v) = tagged("PARTLABEL=", "/dev/disk/by-partlabel/") {
        FsSource::PartLabel(v)
    } else {
        FsSource::Device(PathBuf::from(spec))
    }
}

/// fstab writes spaces and other blanks as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let octal = rest
            .get(at + 1..at + 4)
            .filter(|o| o.bytes().all(|b| (b'0'..=b'7').contains(&b)));
        match octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rhel_fstab_with_separate_boot() {
        let fstab = "\n#\n# /etc/fstab\n# Created by anaconda on Tue Nov 14 10:02:11 2023\n#\n\
            /dev/mapper/almalinux-root /                       xfs     defaults        0 0\n\
            UUID=6c1e2c4b-2f5e-4a0e-9d61-0e6f3f0f6a11 /boot                   xfs     defaults        0 0\n\
            UUID=7B77-95E7          /boot/efi               vfat    umask=0077,shortname=winnt 0 2\n\
            /dev/mapper/almalinux-swap none                    swap    defaults        0 0\n";
        assert_eq!(
            boot_mount_from_fstab(fstab),
            Some(FsSpec {
                source: FsSource::Uuid("6c1e2c4b-2f5e-4a0e-9d61-0e6f3f0f6a11".into()),
                fstype: "xfs".into(),
                options: "defaults".into(),
            })
        );
    }

    #[test]
    fn debian_fstab_without_boot_and_other_sources() {
        let debian = "# /etc/fstab: static file system information.\n\
            # <file system> <mount point>   <type>  <options>       <dump>  <pass>\n\
            UUID=0d4b1b4e-3c1e-4b6a-a1b5-1c2d3e4f5a6b /               ext4    errors=remount-ro 0       1\n\
            UUID=1A2B-3C4D  /boot/efi       vfat    umask=0077      0       1\n";
        assert_eq!(boot_mount_from_fstab(debian), None);

        let src = |line: &str| boot_mount_from_fstab(line).map(|s| s.source);
        assert_eq!(
            src("LABEL=my\\040boot /boot/ ext4 rw 0 2"),
            Some(FsSource::Label("my boot".into()))
        );
        assert_eq!(
            src("PARTUUID=\"a-b\" /boot ext4 rw"),
            Some(FsSource::PartUuid("a-b".into()))
        );
        assert_eq!(
            src("/dev/disk/by-partlabel/boot /boot ext4 rw"),
            Some(FsSource::PartLabel("boot".into()))
        );
        assert_eq!(
            src("/dev/disk/by-uuid/abc /boot ext4 rw"),
            Some(FsSource::Uuid("abc".into()))
        );
        assert_eq!(
            src("/dev/md0 /boot ext4 rw"),
            Some(FsSource::Device("/dev/md0".into()))
        );
        assert_eq!(src("# UUID=x /boot ext4 rw"), None);
        let bare = boot_mount_from_fstab("/dev/sda1 /boot").unwrap();
        assert_eq!(
            (bare.fstype.as_str(), bare.options.as_str()),
            ("auto", "defaults")
        );
    }
}
