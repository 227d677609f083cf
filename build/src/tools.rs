//! The optional second initrd for root-filesystem deploys (issue 15): the
//! real filesystem tools (`mke2fs`, `mkfs.xfs`, `mkfs.fat`, `mkswap`) with
//! every shared library they load and glibc's loader, so the base
//! initramfs (one static binary and modules) stays within its budgets and
//! only machines that deploy root-filesystem tarballs fetch these. The boot
//! loader concatenates it after the base (`initrd initramfs.img` then
//! `initrd rootfs-tools.img` in iPXE; a second entry in a DRP boot
//! environment's `Initrds`), and the kernel unpacks both into one root.
//!
//! The binaries come from the build machine's own Debian packages
//! (`scripts/setup` installs e2fsprogs, xfsprogs and dosfstools; mkswap is
//! util-linux, always there), read under `root` (`/` normally), and their
//! libraries are found by [`crate::elf::library_closure`] from each ELF
//! file's `PT_INTERP` and `DT_NEEDED` entries. Files land at their Debian
//! paths (`/usr/sbin`, `/lib/x86_64-linux-gnu`, `/lib64` for the loader),
//! where glibc's loader looks without an `ld.so.cache`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use imprint::rootfs::tools::TOOLS;

use crate::cpio::CpioArchive;
use crate::elf::{library_closure, under};

/// Configuration the tools read: mke2fs's feature defaults per filesystem
/// type (without it mke2fs falls back to a compiled-in profile).
pub const CONFIG_FILES: &[&str] = &["/etc/mke2fs.conf"];

/// Every file of the tools initrd, by its path in the image: the tools,
/// their configuration, and the closure of their libraries and loader
/// (file contents, symlinks followed). Errors name what is missing and
/// who needs it.
pub fn collect(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut tools = BTreeMap::new();
    for tool in TOOLS {
        let bytes = std::fs::read(under(root, tool.path)).with_context(|| {
            format!(
                "reading {} under {} (is its package installed? scripts/setup)",
                tool.path,
                root.display()
            )
        })?;
        tools.insert(tool.path.to_owned(), bytes);
    }
    let mut files = library_closure(root, &tools)?;
    files.extend(tools);
    for config in CONFIG_FILES {
        let bytes = std::fs::read(under(root, config))
            .with_context(|| format!("reading {config} under {}", root.display()))?;
        files.insert((*config).to_owned(), bytes);
    }
    Ok(files)
}

/// The tools initrd as a cpio archive (directories implied, 0755): the files of
/// [`collect`] (executables 0755, the rest 0644; libraries and the loader
/// are executable too), and each tool's aliases as symlinks.
pub fn archive(root: &Path) -> Result<CpioArchive> {
    let files = collect(root)?;
    let mut archive = CpioArchive::new();
    let aliases = TOOLS
        .iter()
        .flat_map(|tool| tool.aliases.iter().map(|a| (*a, tool.path)));
    for (path, bytes) in files {
        let mode = if CONFIG_FILES.contains(&path.as_str()) {
            0o644
        } else {
            0o755
        };
        archive.add_file(path.trim_start_matches('/'), mode, bytes)?;
    }
    for (alias, target) in aliases {
        let name = Path::new(target)
            .file_name()
            .and_then(|n| n.to_str())
            .context("a tool path has no file name")?;
        archive.add_symlink(alias.trim_start_matches('/'), name)?;
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_closure_holds_every_library_and_names_what_is_missing() {
        let files = collect(Path::new("/")).unwrap();
        for path in [
            "/usr/sbin/mke2fs",
            "/usr/sbin/mkfs.xfs",
            "/usr/sbin/mkfs.fat",
            "/usr/sbin/mkswap",
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libext2fs.so.2",
            "/etc/mke2fs.conf",
        ] {
            assert!(files.contains_key(path), "{path} in {:?}", files.keys());
        }
        // A root without the libraries: the error names the soname and the binary.
        let dir = tempfile::tempdir().unwrap();
        let sbin = dir.path().join("usr/sbin");
        std::fs::create_dir_all(&sbin).unwrap();
        for tool in TOOLS {
            std::fs::copy(tool.path, under(dir.path(), tool.path)).unwrap();
        }
        let err = format!("{:#}", collect(dir.path()).unwrap_err());
        assert!(
            err.contains("needs lib") && err.contains("/usr/sbin/"),
            "{err}"
        );
    }
}
