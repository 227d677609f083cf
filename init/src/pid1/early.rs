//! Early boot: the directories and pseudo-filesystems PID 1 needs before
//! anything else, as a table that prints itself as it is applied (golden-init
//! shares it).

use std::path::Path;

use anyhow::Result;
use rustix::mount::MountFlags;

use crate::sys;

/// One step of early boot. The table below is the whole of it, and each
/// entry prints itself as it is applied, so the console shows exactly what
/// PID 1 did before anything could go wrong.
#[derive(Debug)]
pub enum EarlyStep {
    Dir {
        path: &'static str,
        mode: u32,
    },
    Mount {
        source: &'static str,
        target: &'static str,
        fstype: &'static str,
        flags: MountFlags,
        data: Option<&'static str>,
    },
}

impl std::fmt::Display for EarlyStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EarlyStep::Dir { path, mode } => write!(f, "mkdir {path} ({mode:o})"),
            EarlyStep::Mount {
                target,
                fstype,
                data,
                ..
            } => {
                write!(f, "mount {fstype} on {target}")?;
                data.map_or(Ok(()), |d| write!(f, " ({d})"))
            }
        }
    }
}

const NODEV_NOSUID: MountFlags = MountFlags::NODEV.union(MountFlags::NOSUID);

pub const EARLY_BOOT: &[EarlyStep] = &[
    EarlyStep::Dir {
        path: "/dev",
        mode: 0o755,
    },
    EarlyStep::Dir {
        path: "/proc",
        mode: 0o555,
    },
    EarlyStep::Dir {
        path: "/sys",
        mode: 0o555,
    },
    EarlyStep::Dir {
        path: "/run",
        mode: 0o755,
    },
    EarlyStep::Dir {
        path: "/tmp",
        mode: 0o1777,
    },
    EarlyStep::Dir {
        path: "/etc",
        mode: 0o755,
    },
    EarlyStep::Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: Some("mode=0755"),
    },
    EarlyStep::Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NODEV_NOSUID.union(MountFlags::NOEXEC),
        data: None,
    },
    EarlyStep::Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NODEV_NOSUID.union(MountFlags::NOEXEC),
        data: None,
    },
    EarlyStep::Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NODEV_NOSUID,
        data: Some("mode=0755"),
    },
    EarlyStep::Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NODEV_NOSUID,
        data: Some("mode=1777"),
    },
];

/// Applies one step of [`EARLY_BOOT`] (golden-init shares the table).
pub fn apply_early_step(step: &EarlyStep) -> Result<()> {
    match step {
        EarlyStep::Dir { path, mode } => sys::mount::mkdir_all(Path::new(path), *mode),
        EarlyStep::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys::mount::mount(source, Path::new(target), fstype, *flags, *data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_boot_prints_itself() {
        let lines: Vec<String> = EARLY_BOOT.iter().map(ToString::to_string).collect();
        assert!(lines.contains(&"mount devtmpfs on /dev (mode=0755)".to_owned()));
        assert!(lines.contains(&"mount proc on /proc".to_owned()));
        assert!(lines.contains(&"mkdir /tmp (1777)".to_owned()));
        // Directories come before the mounts that need them.
        let first_mount = lines.iter().position(|l| l.starts_with("mount")).unwrap();
        assert!(lines[first_mount..].iter().all(|l| l.starts_with("mount")));
    }
}
