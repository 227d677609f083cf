//! Which files a dynamically linked executable needs to run: its loader
//! (`PT_INTERP`) and the transitive closure of its `DT_NEEDED` libraries,
//! read from the ELF headers rather than by running `ldd`, so nothing from
//! the build machine runs and a missing library is an error naming the
//! file that needs it. The optional initrds (the rootfs tools, the P2P
//! initrd's aria2c) both carry their executables this way.
//!
//! Libraries are looked for in glibc's default directories for Debian's
//! multiarch layout, in its order, with no `ld.so.cache` and no `RPATH`:
//! files land at those paths in the initrd, where the loader looks without
//! a cache. Libraries loaded with `dlopen` are not `DT_NEEDED` and are not
//! found; whoever uses this checks the result by running the executable
//! from the initrd alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

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
pub fn find_library(root: &Path, soname: &str) -> Option<String> {
    LIBRARY_DIRS.iter().find_map(|dir| {
        let path = format!("{dir}/{soname}");
        under(root, &path).is_file().then_some(path)
    })
}

/// `path` (absolute, inside the image) under `root`.
pub fn under(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

/// The loader and every library `executables` (path in the image and
/// contents) need, transitively, read under `root`: paths in the image
/// (symlinks followed, so each is a regular file) and their contents.
/// The executables themselves are not in the result.
pub fn library_closure(
    root: &Path,
    executables: &BTreeMap<String, Vec<u8>>,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut seen: BTreeSet<String> = executables.keys().cloned().collect();
    let needs_of = |path: &str, bytes: &[u8], pending: &mut Vec<(String, String)>| {
        let needs =
            elf_needs(bytes).with_context(|| format!("reading the ELF headers of {path}"))?;
        if let Some(interpreter) = needs.interpreter {
            pending.push((interpreter, path.to_owned()));
        }
        for soname in needs.needed {
            let found = find_library(root, &soname).with_context(|| {
                format!(
                    "{path} needs {soname}, which is in none of {} under {}",
                    LIBRARY_DIRS.join(", "),
                    root.display()
                )
            })?;
            pending.push((found, path.to_owned()));
        }
        anyhow::Ok(())
    };
    for (path, bytes) in executables {
        needs_of(path, bytes, &mut pending)?;
    }
    while let Some((path, wanted_by)) = pending.pop() {
        if !seen.insert(path.clone()) {
            continue;
        }
        let bytes = std::fs::read(under(root, &path)).with_context(|| {
            format!(
                "reading {path} under {} (needed by {wanted_by})",
                root.display()
            )
        })?;
        needs_of(&path, &bytes, &mut pending)?;
        files.insert(path, bytes);
    }
    Ok(files)
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
    fn the_closure_follows_libraries_of_libraries_and_names_what_is_missing() {
        let mke2fs = std::fs::read("/usr/sbin/mke2fs").unwrap();
        let executables = BTreeMap::from([("/usr/sbin/mke2fs".to_owned(), mke2fs.clone())]);
        let files = library_closure(Path::new("/"), &executables).unwrap();
        for path in [
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libext2fs.so.2",
        ] {
            assert!(files.contains_key(path), "{path} in {:?}", files.keys());
        }
        assert!(!files.contains_key("/usr/sbin/mke2fs"));
        // An empty root: the error names the soname and who needs it.
        let dir = tempfile::tempdir().unwrap();
        let err = format!(
            "{:#}",
            library_closure(dir.path(), &executables).unwrap_err()
        );
        assert!(
            err.contains("/usr/sbin/mke2fs needs lib") && err.contains("none of"),
            "{err}"
        );
    }
}
