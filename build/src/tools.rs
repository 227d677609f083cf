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
//! libraries are found by reading each ELF file's `PT_INTERP` and
//! `DT_NEEDED` entries, not by running `ldd`, so nothing from the build
//! machine runs and a missing library is an error naming the binary that
//! needs it. Files land at their Debian paths (`/usr/sbin`,
//! `/lib/x86_64-linux-gnu`, `/lib64` for the loader), where glibc's loader
//! looks without an `ld.so.cache`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use imprint::rootfs::tools::TOOLS;

use crate::cpio::CpioArchive;

/// Configuration the tools read: mke2fs's feature defaults per filesystem
/// type (without it mke2fs falls back to a compiled-in profile).
pub const CONFIG_FILES: &[&str] = &["/etc/mke2fs.conf"];

/// Where shared libraries are looked for under `root`, in glibc's order for
/// Debian's multiarch layout.
const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// What an ELF file asks the dynamic loader for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfNeeds {
    /// `PT_INTERP`: the loader's path (`/lib64/ld-linux-x86-64.so.2`).
    pub interpreter: Option<String>,
    /// `DT_NEEDED`: library sonames, in file order.
    pub needed: Vec<String>,
}

fn field<const N: usize>(bytes: &[u8], at: usize, what: &str) -> Result<[u8; N]> {
    bytes
        .get(at..at + N)
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("ELF file too short for its {what} at byte {at}"))
}

fn u16_at(bytes: &[u8], at: usize, what: &str) -> Result<u16> {
    Ok(u16::from_le_bytes(field(bytes, at, what)?))
}

fn u64_at(bytes: &[u8], at: usize, what: &str) -> Result<u64> {
    Ok(u64::from_le_bytes(field(bytes, at, what)?))
}

fn index(value: u64, what: &str) -> Result<usize> {
    usize::try_from(value).with_context(|| format!("ELF {what} {value} is out of range"))
}

/// A NUL-terminated string at `at`.
fn c_string(bytes: &[u8], at: usize, what: &str) -> Result<String> {
    let rest = bytes
        .get(at..)
        .with_context(|| format!("ELF {what} at byte {at} lies past the end of the file"))?;
    let end = rest
        .iter()
        .position(|&b| b == 0)
        .with_context(|| format!("ELF {what} at byte {at} is not terminated"))?;
    String::from_utf8(rest[..end].to_vec()).with_context(|| format!("ELF {what} is not UTF-8"))
}

/// Reads the loader and the needed libraries of a 64-bit little-endian ELF
/// file from its program headers (`PT_INTERP`, `PT_DYNAMIC`, and the
/// `PT_LOAD` that maps `DT_STRTAB`). A static binary needs nothing.
pub fn elf_needs(bytes: &[u8]) -> Result<ElfNeeds> {
    if bytes.get(..4) != Some(b"\x7fELF") {
        bail!("not an ELF file");
    }
    if bytes.get(4) != Some(&2) || bytes.get(5) != Some(&1) {
        bail!("not a 64-bit little-endian ELF file");
    }
    let phoff = index(
        u64_at(bytes, 0x20, "program header offset")?,
        "program header offset",
    )?;
    let phentsize = usize::from(u16_at(bytes, 0x36, "program header size")?);
    let phnum = usize::from(u16_at(bytes, 0x38, "program header count")?);
    if phentsize < 56 {
        bail!("ELF program headers of {phentsize} bytes are too small");
    }
    let mut needs = ElfNeeds::default();
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let kind = u32::from_le_bytes(field(bytes, at, "program header")?);
        let offset = u64_at(bytes, at + 8, "segment offset")?;
        let vaddr = u64_at(bytes, at + 16, "segment address")?;
        let filesz = u64_at(bytes, at + 32, "segment size")?;
        match kind {
            1 => loads.push((vaddr, offset, filesz)),
            2 => {
                dynamic = Some((
                    index(offset, "dynamic offset")?,
                    index(filesz, "dynamic size")?,
                ))
            }
            3 => {
                needs.interpreter = Some(c_string(
                    bytes,
                    index(offset, "interpreter offset")?,
                    "interpreter",
                )?)
            }
            _ => {}
        }
    }
    let Some((dyn_at, dyn_len)) = dynamic else {
        return Ok(needs);
    };
    let (mut strtab, mut needed_offsets) = (None, Vec::new());
    for entry in (dyn_at..dyn_at + dyn_len).step_by(16) {
        let tag = u64_at(bytes, entry, "dynamic entry")?;
        let value = u64_at(bytes, entry + 8, "dynamic entry")?;
        match tag {
            0 => break,
            1 => needed_offsets.push(value),
            5 => strtab = Some(value),
            _ => {}
        }
    }
    if needed_offsets.is_empty() {
        return Ok(needs);
    }
    let strtab = strtab.context("ELF file names libraries but has no DT_STRTAB")?;
    // DT_STRTAB is an address: the loadable segment holding it says where
    // it is in the file.
    let &(vaddr, offset, _) = loads
        .iter()
        .find(|&&(vaddr, _, size)| strtab >= vaddr && strtab < vaddr + size)
        .context("ELF DT_STRTAB lies in no loadable segment")?;
    let strtab_at = strtab - vaddr + offset;
    for name in needed_offsets {
        needs.needed.push(c_string(
            bytes,
            index(strtab_at + name, "library name")?,
            "library name",
        )?);
    }
    Ok(needs)
}

/// Finds `soname` in the library directories under `root`.
fn find_library(root: &Path, soname: &str) -> Option<String> {
    LIBRARY_DIRS.iter().find_map(|dir| {
        let path = format!("{dir}/{soname}");
        under(root, &path).is_file().then_some(path)
    })
}

/// `path` (absolute, inside the image) under `root`.
fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// Every file of the tools initrd, by its path in the image: the tools,
/// their configuration, and the closure of their libraries and loader
/// (file contents, symlinks followed). Errors name what is missing and
/// who needs it.
pub fn collect(root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending: Vec<(String, String)> = TOOLS
        .iter()
        .map(|tool| (tool.path.to_owned(), "the tools initrd".to_owned()))
        .collect();
    let mut seen = BTreeSet::new();
    while let Some((path, wanted_by)) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let bytes = std::fs::read(under(root, &path)).with_context(|| {
            format!(
                "reading {path} under {} (needed by {wanted_by}; is its package installed? scripts/setup)",
                root.display()
            )
        })?;
        let needs =
            elf_needs(&bytes).with_context(|| format!("reading the ELF headers of {path}"))?;
        if let Some(interpreter) = needs.interpreter {
            pending.push((interpreter, path.clone()));
        }
        for soname in needs.needed {
            let found = find_library(root, &soname).with_context(|| {
                format!(
                    "{path} needs {soname}, which is in none of {}",
                    LIBRARY_DIRS.join(", ")
                )
            })?;
            pending.push((found, path.clone()));
        }
        files.insert(path, bytes);
    }
    for config in CONFIG_FILES {
        let bytes = std::fs::read(under(root, config))
            .with_context(|| format!("reading {config} under {}", root.display()))?;
        files.insert((*config).to_owned(), bytes);
    }
    Ok(files)
}

/// The tools initrd as a cpio archive: the directories, the files of
/// [`collect`] (executables 0755, the rest 0644; libraries and the loader
/// are executable too), and each tool's aliases as symlinks.
pub fn archive(root: &Path) -> Result<CpioArchive> {
    let files = collect(root)?;
    let mut archive = CpioArchive::new();
    let mut dirs = BTreeSet::new();
    let aliases = TOOLS
        .iter()
        .flat_map(|tool| tool.aliases.iter().map(|a| (*a, tool.path)));
    for path in files
        .keys()
        .map(String::as_str)
        .chain(aliases.clone().map(|(a, _)| a))
    {
        let mut dir = Path::new(path).parent();
        while let Some(d) = dir.filter(|d| *d != Path::new("/")) {
            dirs.insert(d.to_string_lossy().trim_start_matches('/').to_owned());
            dir = d.parent();
        }
    }
    for dir in &dirs {
        archive.add_directory(dir, 0o755)?;
    }
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
    fn reads_the_loader_and_libraries_of_a_real_binary() {
        let bytes = std::fs::read("/usr/sbin/mke2fs").unwrap();
        let needs = elf_needs(&bytes).unwrap();
        assert_eq!(
            needs.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        for lib in ["libext2fs.so.2", "libcom_err.so.2", "libc.so.6"] {
            assert!(
                needs.needed.iter().any(|n| n == lib),
                "{lib} in {:?}",
                needs.needed
            );
        }
        // A plain library names no loader, only its own libraries.
        let lib = std::fs::read("/lib/x86_64-linux-gnu/libext2fs.so.2").unwrap();
        let needs = elf_needs(&lib).unwrap();
        assert_eq!(needs.interpreter, None);
        assert!(
            needs.needed.iter().any(|n| n == "libc.so.6"),
            "{:?}",
            needs.needed
        );
    }

    #[test]
    fn bad_elf_files_are_errors_not_panics() {
        let real = std::fs::read("/usr/sbin/mkswap").unwrap();
        assert!(elf_needs(b"#!/bin/sh\n").is_err());
        assert!(elf_needs(&real[..40]).is_err());
        for cut in [64, 200, 1000, 4096] {
            // Whatever a truncated file says, it says it without panicking.
            let _ = elf_needs(&real[..cut.min(real.len())]);
        }
        let mut big_endian = real.clone();
        big_endian[5] = 2;
        assert!(elf_needs(&big_endian).is_err());
    }

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
