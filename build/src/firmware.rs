//! The firmware files the initramfs carries: exactly those its modules name.
//!
//! A driver declares the files it may ask for under `/lib/firmware` with
//! `MODULE_FIRMWARE()`, which lands as `firmware=NAME` strings in the
//! module's `.modinfo` ELF section (what `modinfo -F firmware` prints). This
//! module reads that section, looks each name up in an unpacked firmware
//! tree (`scripts/fetch-firmware` makes one from Debian's packages) and
//! returns the files to put at `lib/firmware/<name>`: symlinks stay
//! symlinks (with their targets carried too), names with glob characters
//! take every matching file, and `NAME.xz` stands in for `NAME` as the
//! kernel's loader accepts. Names found nowhere are listed, not fatal: most
//! drivers name firmware for chips a given machine does not have.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use imprint::modules::{ModuleEntry, glob_matches};

use crate::cpio::CpioArchive;

/// Where `scripts/fetch-firmware` unpacks Debian's firmware, relative to
/// the repository root; `scripts/build` passes it as `--firmware-root`.
pub const CACHE_FIRMWARE_ROOT: &str = "cache/firmware/root/lib/firmware";

/// Where the kernel's direct loader looks, in the initramfs.
pub const INITRAMFS_FIRMWARE_DIR: &str = "lib/firmware";

/// Symlink hops followed before a chain counts as a loop.
const MAX_SYMLINK_HOPS: usize = 8;

/// Suffixes the Debian kernel's loader tries after the plain name
/// (`CONFIG_FW_LOADER_COMPRESS_XZ`).
const COMPRESSED_SUFFIXES: [&str; 1] = [".xz"];

/// One entry under `lib/firmware`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirmwareFile {
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A symlink and its target, as written in the tree (relative).
    Symlink(String),
}

/// A firmware name a module declares that the tree does not have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingFirmware {
    pub module: String,
    pub name: String,
}

/// What to add under `lib/firmware`, and what could not be found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwarePlan {
    /// Keyed by the path relative to the firmware root, so each is added once
    /// and in a stable order.
    pub files: BTreeMap<String, FirmwareFile>,
    /// Every `(module, name)` pair the modules declare, in module order.
    pub declared: Vec<(String, String)>,
    pub missing: Vec<MissingFirmware>,
}

impl FirmwarePlan {
    /// Bytes of the regular files (what the firmware adds before compression).
    pub fn total_bytes(&self) -> usize {
        self.files
            .values()
            .map(|file| match file {
                FirmwareFile::File(bytes) => bytes.len(),
                FirmwareFile::Symlink(_) => 0,
            })
            .sum()
    }

    /// Adds every file under [`INITRAMFS_FIRMWARE_DIR`].
    pub fn add_to(&self, archive: &mut CpioArchive) -> Result<()> {
        for (path, file) in &self.files {
            let member = format!("{INITRAMFS_FIRMWARE_DIR}/{path}");
            match file {
                FirmwareFile::File(bytes) => archive.add_file(&member, 0o644, bytes.clone())?,
                FirmwareFile::Symlink(target) => archive.add_symlink(&member, target)?,
            }
        }
        Ok(())
    }
}

fn read_at<const N: usize>(elf: &[u8], offset: usize) -> Option<[u8; N]> {
    elf.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn u16_at(elf: &[u8], offset: usize) -> Option<usize> {
    read_at::<2>(elf, offset).map(|b| usize::from(u16::from_le_bytes(b)))
}

fn u32_at(elf: &[u8], offset: usize) -> Option<usize> {
    read_at::<4>(elf, offset).and_then(|b| usize::try_from(u32::from_le_bytes(b)).ok())
}

fn u64_at(elf: &[u8], offset: usize) -> Option<usize> {
    read_at::<8>(elf, offset).and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok())
}

/// The bytes of the section called `name` in a 64-bit little-endian ELF
/// file (every x86-64 kernel module), or `None` when it has none.
pub fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    ensure!(elf.starts_with(b"\x7fELF"), "not an ELF file");
    ensure!(
        elf.get(4) == Some(&2) && elf.get(5) == Some(&1),
        "not a 64-bit little-endian ELF file"
    );
    let truncated = || anyhow::anyhow!("truncated ELF section table");
    let table = u64_at(elf, 0x28).ok_or_else(truncated)?;
    let entry_size = u16_at(elf, 0x3a).ok_or_else(truncated)?;
    let count = u16_at(elf, 0x3c).ok_or_else(truncated)?;
    let names_index = u16_at(elf, 0x3e).ok_or_else(truncated)?;
    ensure!(
        entry_size >= 0x40,
        "ELF section headers of {entry_size} bytes"
    );
    let header = |index: usize| -> Result<(usize, usize, usize)> {
        let at = table
            .checked_add(index.checked_mul(entry_size).ok_or_else(truncated)?)
            .ok_or_else(truncated)?;
        let name = u32_at(elf, at).ok_or_else(truncated)?;
        let offset = u64_at(elf, at + 0x18).ok_or_else(truncated)?;
        let size = u64_at(elf, at + 0x20).ok_or_else(truncated)?;
        Ok((name, offset, size))
    };
    let section = |offset: usize, size: usize| {
        offset
            .checked_add(size)
            .and_then(|end| elf.get(offset..end))
            .ok_or_else(|| anyhow::anyhow!("ELF section at {offset} runs past the file"))
    };
    ensure!(
        names_index < count,
        "ELF section name table index out of range"
    );
    let (_, names_offset, names_size) = header(names_index)?;
    let names = section(names_offset, names_size)?;
    for index in 0..count {
        let (name_offset, offset, size) = header(index)?;
        let Some(rest) = names.get(name_offset..) else {
            continue;
        };
        let section_name = rest.split(|&b| b == 0).next().unwrap_or_default();
        if section_name == name.as_bytes() {
            return section(offset, size).map(Some);
        }
    }
    Ok(None)
}

/// The `firmware=` entries of a module's `.modinfo`, in the order the module
/// declares them (`modinfo -F firmware` prints them reversed).
pub fn module_firmware(elf: &[u8]) -> Result<Vec<String>> {
    let Some(modinfo) = elf_section(elf, ".modinfo")? else {
        return Ok(Vec::new());
    };
    Ok(modinfo
        .split(|&b| b == 0)
        .filter_map(|entry| entry.strip_prefix(b"firmware="))
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect())
}

fn has_glob(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// `a/b/../c` -> `a/c`; `None` when the path climbs out of the root.
fn normalize_relative(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Every regular file and symlink under `root`, as relative paths, sorted.
fn all_files(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        let directory = root.join(&relative);
        let entries = std::fs::read_dir(&directory)
            .with_context(|| format!("listing the firmware directory {}", directory.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", directory.display()))?;
            let path = relative.join(entry.file_name());
            let kind = entry
                .file_type()
                .with_context(|| format!("reading {}", entry.path().display()))?;
            if kind.is_dir() {
                pending.push(path);
            } else if let Some(path) = path.to_str() {
                found.push(path.to_owned());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Adds `relative` (following symlinks inside the tree) to `files`.
/// `Ok(false)` when it does not exist or a link leads out of the tree.
fn add_path(
    root: &Path,
    relative: &str,
    files: &mut BTreeMap<String, FirmwareFile>,
) -> Result<bool> {
    let mut current = relative.to_owned();
    for _hop in 0..MAX_SYMLINK_HOPS {
        let path = root.join(&current);
        let Ok(metadata) = std::fs::symlink_metadata(&path) else {
            return Ok(false);
        };
        if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .with_context(|| format!("reading the symlink {}", path.display()))?;
            let Some(target) = target.to_str() else {
                bail!("firmware symlink {} has a non-UTF-8 target", path.display());
            };
            // Absolute targets point into the host's /lib/firmware, not the tree.
            let parent = current.rsplit_once('/').map_or("", |(parent, _)| parent);
            let Some(next) = (!target.starts_with('/'))
                .then(|| normalize_relative(&format!("{parent}/{target}")))
                .flatten()
            else {
                return Ok(false);
            };
            files.insert(current, FirmwareFile::Symlink(target.to_owned()));
            current = next;
        } else if metadata.is_file() {
            let bytes = std::fs::read(&path)
                .with_context(|| format!("reading the firmware file {}", path.display()))?;
            files.insert(current, FirmwareFile::File(bytes));
            return Ok(true);
        } else {
            return Ok(false);
        }
    }
    bail!(
        "firmware symlink {} loops (more than {MAX_SYMLINK_HOPS} hops)",
        root.join(relative).display()
    )
}

/// Finds the firmware of `modules` (paths relative to `modules_dir`) in the
/// unpacked firmware tree `firmware_root`.
pub fn plan(
    modules_dir: &Path,
    modules: &[ModuleEntry],
    firmware_root: &Path,
) -> Result<FirmwarePlan> {
    let mut declared = Vec::new();
    for module in modules {
        let path = modules_dir.join(&module.path);
        let elf = std::fs::read(&path)
            .with_context(|| format!("reading module {} at {}", module.name, path.display()))?;
        let names = module_firmware(&elf).with_context(|| {
            format!(
                "reading the .modinfo of module {} at {}",
                module.name,
                path.display()
            )
        })?;
        declared.extend(names.into_iter().map(|name| (module.name.clone(), name)));
    }
    plan_declared(&declared, firmware_root)
}

/// Finds `(module, firmware name)` pairs in the unpacked firmware tree
/// `firmware_root`: what [`plan`] does once it has read the modules, and
/// what a kernel with built-in drivers needs ([`crate::builtin`]).
pub fn plan_declared(declared: &[(String, String)], firmware_root: &Path) -> Result<FirmwarePlan> {
    ensure!(
        firmware_root.is_dir(),
        "firmware root {} is not a directory (run scripts/fetch-firmware)",
        firmware_root.display()
    );
    let mut plan = FirmwarePlan::default();
    let mut listing: Option<Vec<String>> = None;
    for (module, name) in declared {
        plan.declared.push((module.clone(), name.clone()));
        let found = if has_glob(name) {
            if listing.is_none() {
                listing = Some(all_files(firmware_root)?);
            }
            let mut any = false;
            for candidate in listing.iter().flatten() {
                if glob_matches(name, candidate) {
                    any |= add_path(firmware_root, candidate, &mut plan.files)?;
                }
            }
            any
        } else {
            let Some(relative) = normalize_relative(name) else {
                bail!("module {module} names firmware {name} outside /lib/firmware");
            };
            let mut any = add_path(firmware_root, &relative, &mut plan.files)?;
            for suffix in COMPRESSED_SUFFIXES {
                if !any {
                    any = add_path(
                        firmware_root,
                        &format!("{relative}{suffix}"),
                        &mut plan.files,
                    )?;
                }
            }
            any
        };
        if !found {
            plan.missing.push(MissingFirmware {
                module: module.clone(),
                name: name.clone(),
            });
        }
    }
    Ok(plan)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal x86-64 relocatable ELF with a `.shstrtab` and a `.modinfo`
    /// holding `license=GPL` and one `firmware=` entry per name.
    pub(crate) fn fake_module(firmware: &[&str]) -> Vec<u8> {
        let names = b"\0.shstrtab\0.modinfo\0".to_vec();
        let mut modinfo = b"license=GPL\0".to_vec();
        for name in firmware {
            modinfo.extend_from_slice(format!("firmware={name}\0").as_bytes());
        }
        modinfo.extend_from_slice(b"vermagic=6.1.0 SMP mod_unload\0");
        let names_offset = 64;
        let modinfo_offset = names_offset + names.len();
        let table = modinfo_offset + modinfo.len();
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[0x28..0x30].copy_from_slice(&(table as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf.extend_from_slice(&names);
        elf.extend_from_slice(&modinfo);
        let header = |name: u32, offset: usize, size: usize| {
            let mut header = vec![0u8; 64];
            header[..4].copy_from_slice(&name.to_le_bytes());
            header[4..8].copy_from_slice(&1u32.to_le_bytes());
            header[0x18..0x20].copy_from_slice(&(offset as u64).to_le_bytes());
            header[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            header
        };
        elf.extend_from_slice(&[0u8; 64]);
        elf.extend_from_slice(&header(1, names_offset, names.len()));
        elf.extend_from_slice(&header(11, modinfo_offset, modinfo.len()));
        elf
    }

    #[test]
    fn reads_firmware_names_from_modinfo() {
        let elf = fake_module(&["bnx2x/bnx2x-e2-7.13.21.0.fw", "intel/ice/ddp/ice.pkg"]);
        assert_eq!(
            module_firmware(&elf).unwrap(),
            ["bnx2x/bnx2x-e2-7.13.21.0.fw", "intel/ice/ddp/ice.pkg"]
        );
        assert!(module_firmware(&fake_module(&[])).unwrap().is_empty());
    }

    #[test]
    fn broken_elf_is_an_error_not_a_panic() {
        let elf = fake_module(&["a.fw"]);
        assert_eq!(
            module_firmware(b"\x7fELF fake").unwrap_err().to_string(),
            "not a 64-bit little-endian ELF file"
        );
        assert_eq!(
            module_firmware(b"MZ").unwrap_err().to_string(),
            "not an ELF file"
        );
        // Every truncation errors (or finds nothing) and never panics.
        for end in 0..elf.len() {
            let _ = module_firmware(&elf[..end]);
        }
        let mut past_end = elf.clone();
        let table = past_end.len() - 64;
        past_end[table + 0x20..table + 0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(module_firmware(&past_end).is_err());
    }

    fn entry(name: &str) -> ModuleEntry {
        ModuleEntry {
            name: name.to_owned(),
            path: format!("kernel/{name}.ko"),
        }
    }

    #[test]
    fn takes_named_files_symlinks_globs_and_xz_and_lists_the_rest() {
        let modules = tempfile::tempdir().unwrap();
        let kernel = modules.path().join("kernel");
        std::fs::create_dir_all(&kernel).unwrap();
        std::fs::write(
            kernel.join("ice.ko"),
            fake_module(&["intel/ice/ddp/ice.pkg"]),
        )
        .unwrap();
        std::fs::write(
            kernel.join("r8169.ko"),
            fake_module(&["rtl_nic/rtl8168h-2.fw", "rtl_nic/rtl8125b-2.fw"]),
        )
        .unwrap();
        std::fs::write(kernel.join("qed.ko"), fake_module(&["qed/qed_init_*.bin"])).unwrap();
        std::fs::write(kernel.join("plain.ko"), fake_module(&[])).unwrap();

        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::fs::create_dir_all(root.join("intel/ice/ddp")).unwrap();
        std::fs::create_dir_all(root.join("rtl_nic")).unwrap();
        std::fs::create_dir_all(root.join("qed")).unwrap();
        std::fs::write(root.join("intel/ice/ddp/ice-1.3.30.0.pkg"), b"ddp").unwrap();
        std::os::unix::fs::symlink("ice-1.3.30.0.pkg", root.join("intel/ice/ddp/ice.pkg")).unwrap();
        std::fs::write(root.join("rtl_nic/rtl8168h-2.fw.xz"), b"xz").unwrap();
        std::fs::write(root.join("qed/qed_init_values-8.59.bin"), b"q1").unwrap();
        std::fs::write(root.join("qed/qed_init_values-8.37.bin"), b"q2").unwrap();
        std::fs::write(root.join("qed/other.bin"), b"no").unwrap();
        std::fs::write(root.join("unrelated.bin"), b"no").unwrap();

        let plan = plan(
            modules.path(),
            &[entry("ice"), entry("r8169"), entry("qed"), entry("plain")],
            root,
        )
        .unwrap();
        let paths: Vec<&str> = plan.files.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "intel/ice/ddp/ice-1.3.30.0.pkg",
                "intel/ice/ddp/ice.pkg",
                "qed/qed_init_values-8.37.bin",
                "qed/qed_init_values-8.59.bin",
                "rtl_nic/rtl8168h-2.fw.xz",
            ]
        );
        assert_eq!(
            plan.files["intel/ice/ddp/ice.pkg"],
            FirmwareFile::Symlink("ice-1.3.30.0.pkg".to_owned())
        );
        assert_eq!(
            plan.files["intel/ice/ddp/ice-1.3.30.0.pkg"],
            FirmwareFile::File(b"ddp".to_vec())
        );
        assert_eq!(
            plan.missing,
            [MissingFirmware {
                module: "r8169".to_owned(),
                name: "rtl_nic/rtl8125b-2.fw".to_owned()
            }]
        );
        assert_eq!(plan.declared.len(), 4);
        assert_eq!(plan.total_bytes(), 3 + 2 + 2 + 2);

        let mut archive = CpioArchive::new();
        plan.add_to(&mut archive).unwrap();
        let members: Vec<String> = archive.entries().map(|e| e.path.clone()).collect();
        assert!(members.contains(&"lib/firmware/intel/ice/ddp/ice.pkg".to_owned()));
        assert!(
            !members
                .iter()
                .any(|m| m.contains("unrelated") || m.contains("other"))
        );
    }

    #[test]
    fn links_out_of_the_tree_and_loops_are_not_followed() {
        let modules = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(modules.path().join("kernel")).unwrap();
        std::fs::write(
            modules.path().join("kernel/nic.ko"),
            fake_module(&["escape.fw", "absolute.fw", "loop.fw"]),
        )
        .unwrap();
        let tree = tempfile::tempdir().unwrap();
        let root = tree.path();
        std::os::unix::fs::symlink("../../etc/passwd", root.join("escape.fw")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("absolute.fw")).unwrap();
        std::os::unix::fs::symlink("loop.fw", root.join("loop.fw")).unwrap();
        let error = plan(modules.path(), &[entry("nic")], root).unwrap_err();
        assert!(error.to_string().contains("loop.fw loops"), "{error}");
        std::fs::remove_file(root.join("loop.fw")).unwrap();
        let plan = plan(modules.path(), &[entry("nic")], root).unwrap();
        assert!(plan.files.is_empty());
        assert_eq!(plan.missing.len(), 3);
    }

    #[test]
    fn missing_firmware_root_says_how_to_get_one() {
        let error = plan(Path::new("/nonexistent"), &[], Path::new("/nonexistent/fw")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "firmware root /nonexistent/fw is not a directory (run scripts/fetch-firmware)"
        );
    }

    /// The real kernel and firmware, when scripts/fetch-kernel and
    /// scripts/fetch-firmware have run: the names agree with the declared
    /// MODULE_FIRMWARE() of bnx2x, and ice's DDP package arrives via its symlink.
    #[test]
    fn real_kernel_and_firmware_when_fetched() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (Ok(kernel_root), Ok(firmware_root)) = (
            repo.join("cache/kernel/current").canonicalize(),
            repo.join(CACHE_FIRMWARE_ROOT).canonicalize(),
        ) else {
            eprintln!("skipped: no fetched kernel or firmware in cache/");
            return;
        };
        let kver = kernel_root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let modules_dir = crate::initramfs::modules_dir(&kernel_root, &kver).unwrap();
        let index = imprint::modules::ModuleIndex::load(&modules_dir).unwrap();
        let modules = index.closure(&["bnx2x", "ice"]).unwrap();
        let plan = plan(&modules_dir, &modules, &firmware_root).unwrap();
        assert!(
            plan.declared
                .iter()
                .any(|(module, name)| module == "bnx2x" && name.starts_with("bnx2x/bnx2x-e2-")),
            "{:?}",
            plan.declared
        );
        assert!(matches!(
            plan.files.get("intel/ice/ddp/ice.pkg"),
            Some(FirmwareFile::Symlink(_))
        ));
        assert!(plan.missing.is_empty(), "{:?}", plan.missing);
    }
}
