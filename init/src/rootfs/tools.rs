//! The filesystem tools a root-filesystem deploy runs, shipped in the
//! optional second initrd (`imprint-build tools-initrd`), not in the base
//! initramfs: one list, for the builder that packs them and for PID 1,
//! which says at boot which of them it has.

use std::path::Path;

/// A tool: its path in the initrd, and the names it is also called by
/// (symlinks to it).
pub struct Tool {
    pub path: &'static str,
    pub aliases: &'static [&'static str],
}

/// What a rootfs deploy runs to make filesystems.
pub const TOOLS: &[Tool] = &[
    Tool {
        path: "/usr/sbin/mke2fs",
        aliases: &[
            "/usr/sbin/mkfs.ext4",
            "/usr/sbin/mkfs.ext3",
            "/usr/sbin/mkfs.ext2",
        ],
    },
    Tool {
        path: "/usr/sbin/mkfs.xfs",
        aliases: &[],
    },
    Tool {
        path: "/usr/sbin/mkfs.fat",
        aliases: &["/usr/sbin/mkfs.vfat"],
    },
    Tool {
        path: "/usr/sbin/mkswap",
        aliases: &[],
    },
];

/// The tools present under `root` (`/` in PID 1), by file name.
pub fn present(root: &Path) -> Vec<&'static str> {
    TOOLS
        .iter()
        .filter(|tool| root.join(tool.path.trim_start_matches('/')).is_file())
        .filter_map(|tool| tool.path.rsplit('/').next())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_names_the_tools_found_under_the_root() {
        let dir = tempfile::tempdir().unwrap();
        assert!(present(dir.path()).is_empty());
        std::fs::create_dir_all(dir.path().join("usr/sbin")).unwrap();
        std::fs::write(dir.path().join("usr/sbin/mke2fs"), b"").unwrap();
        std::fs::write(dir.path().join("usr/sbin/mkswap"), b"").unwrap();
        assert_eq!(present(dir.path()), ["mke2fs", "mkswap"]);
    }
}
