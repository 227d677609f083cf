//! Which loader on the ESP the boot entry starts: shim where a distribution
//! installed one (it chains to grub and keeps Secure Boot working), else
//! grub, else systemd-boot, else the removable-media path every firmware
//! tries (UEFI 2.10 section 3.5.1.1).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The architecture suffix of loader file names (UEFI 2.10 table 3-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X64,
    Aa64,
}

impl Arch {
    /// The architecture this binary was built for; the machine it runs on
    /// boots the same.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aa64
        } else {
            Arch::X64
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Arch::X64 => "x64",
            Arch::Aa64 => "aa64",
        }
    }
}

/// The loader path in UEFI form (`\EFI\debian\shimx64.efi`), spelled as on
/// the ESP. `esp` is where the ESP is mounted; `override_path` a path the
/// deploy named, in either slash form, which must exist.
pub fn find_loader(esp: &Path, override_path: Option<&str>, arch: Arch) -> Result<String> {
    if let Some(wanted) = override_path {
        let parts: Vec<&str> = wanted
            .split(['\\', '/'])
            .filter(|p| !p.is_empty())
            .collect();
        if parts.is_empty() || parts.iter().any(|p| *p == "." || *p == "..") {
            bail!(
                "boot loader path {wanted:?} names no file on the ESP; \
                 give one like \\EFI\\vendor\\grubx64.efi"
            );
        }
        return match resolve(esp, &parts)? {
            Some(found) => Ok(found),
            None => bail!(
                "boot loader {wanted} is not on the ESP mounted at {}; \
                 check the path or leave it out to let imprint look for shim, grub or systemd-boot",
                esp.display()
            ),
        };
    }

    let arch = arch.suffix();
    let shim = format!("shim{arch}.efi");
    let grub = format!("grub{arch}.efi");
    let systemd_boot = format!("systemd-boot{arch}.efi");
    let removable = format!("BOOT{}.EFI", arch.to_ascii_uppercase());

    let vendors = vendor_dirs(esp)?;
    for file in [&shim, &grub] {
        let found: Vec<String> = vendors
            .iter()
            .filter(|v| !v.eq_ignore_ascii_case("BOOT"))
            .filter_map(|v| resolve(esp, &["EFI", v, file]).transpose())
            .collect::<Result<_>>()?;
        if let Some(first) = found.first() {
            if found.len() > 1 {
                log::info!(
                    "ESP at {} holds {} in {} vendor directories ({}); using {first}, the first by name",
                    esp.display(),
                    file,
                    found.len(),
                    found.join(", ")
                );
            }
            return Ok(first.clone());
        }
    }
    for candidate in [
        ["EFI", "systemd", systemd_boot.as_str()],
        ["EFI", "BOOT", removable.as_str()],
    ] {
        if let Some(found) = resolve(esp, &candidate)? {
            return Ok(found);
        }
    }
    bail!(
        "no boot loader on the ESP mounted at {}: looked for \\EFI\\<vendor>\\{shim}, \
         \\EFI\\<vendor>\\{grub}, \\EFI\\systemd\\{systemd_boot} and \\EFI\\BOOT\\{removable}; \
         install the image's boot loader or name one",
        esp.display()
    )
}

/// The directories under `\EFI`, as spelled on disk, sorted by name without
/// case so the choice among several vendors does not depend on readdir.
fn vendor_dirs(esp: &Path) -> Result<Vec<String>> {
    let Some(efi) = find_child(esp, "EFI")? else {
        return Ok(Vec::new());
    };
    let dir = esp.join(&efi);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let is_dir = entry
            .file_type()
            .with_context(|| format!("reading {}", entry.path().display()))?
            .is_dir();
        if let (true, Some(name)) = (is_dir, entry.file_name().to_str()) {
            names.push(name.to_owned());
        }
    }
    names.sort_by_key(|n| (n.to_ascii_lowercase(), n.clone()));
    Ok(names)
}

/// Walks `parts` down from `esp` matching each name without case, as FAT
/// does; the last must be a regular file. The path comes back in UEFI form
/// as spelled on disk.
fn resolve(esp: &Path, parts: &[&str]) -> Result<Option<String>> {
    let mut dir = esp.to_path_buf();
    let mut uefi = String::new();
    for part in parts {
        let Some(name) = find_child(&dir, part)? else {
            return Ok(None);
        };
        dir.push(&name);
        uefi.push('\\');
        uefi.push_str(&name);
    }
    Ok(dir.is_file().then_some(uefi))
}

/// The entry of `dir` whose name equals `name` without regard to ASCII
/// case; an exact match wins over a folded one.
fn find_child(dir: &Path, name: &str) -> Result<Option<String>> {
    if dir.join(name).exists() {
        return Ok(Some(name.to_owned()));
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut matches: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if let Some(n) = entry.file_name().to_str()
            && n.eq_ignore_ascii_case(name)
        {
            matches.push(n.to_owned());
        }
    }
    matches.sort();
    Ok(matches.into_iter().next())
}

/// The ESP-relative host path of a UEFI path, for callers that copy or
/// check the file.
pub fn host_path(esp: &Path, uefi: &str) -> PathBuf {
    let mut path = esp.to_path_buf();
    path.extend(uefi.split('\\').filter(|p| !p.is_empty()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esp(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let path = dir.path().join(f);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"MZ").unwrap();
        }
        dir
    }

    #[test]
    fn shim_before_grub_before_systemd_boot_before_removable() {
        let mut files = vec!["EFI/BOOT/BOOTX64.EFI"];
        let dir = esp(&files);
        assert_eq!(
            find_loader(dir.path(), None, Arch::X64).unwrap(),
            "\\EFI\\BOOT\\BOOTX64.EFI"
        );
        files.push("EFI/systemd/systemd-bootx64.efi");
        let dir = esp(&files);
        assert_eq!(
            find_loader(dir.path(), None, Arch::X64).unwrap(),
            "\\EFI\\systemd\\systemd-bootx64.efi"
        );
        files.push("EFI/debian/grubx64.efi");
        let dir = esp(&files);
        assert_eq!(
            find_loader(dir.path(), None, Arch::X64).unwrap(),
            "\\EFI\\debian\\grubx64.efi"
        );
        files.push("EFI/debian/shimx64.efi");
        let dir = esp(&files);
        assert_eq!(
            find_loader(dir.path(), None, Arch::X64).unwrap(),
            "\\EFI\\debian\\shimx64.efi"
        );
    }

    #[test]
    fn names_match_without_case_and_come_back_as_spelled() {
        let dir = esp(&["efi/Ubuntu/SHIMX64.EFI", "efi/boot/bootx64.efi"]);
        assert_eq!(
            find_loader(dir.path(), None, Arch::X64).unwrap(),
            "\\efi\\Ubuntu\\SHIMX64.EFI"
        );
        // The removable path's shim copy and grub are not a vendor's.
        let dir = esp(&[
            "EFI/boot/shimx64.efi",
            "EFI/boot/grubx64.efi",
            "EFI/boot/bootx64.efi",
        ]);
        assert_eq!(
            find_loader(dir.path(), None, Arch::X64).unwrap(),
            "\\EFI\\boot\\bootx64.efi"
        );
    }

    #[test]
    fn several_vendors_pick_the_first_by_name() {
        let dir = esp(&[
            "EFI/ubuntu/grubx64.efi",
            "EFI/Centos/grubx64.efi",
            "EFI/debian/grubx64.efi",
        ]);
        assert_eq!(
            find_loader(dir.path(), None, Arch::X64).unwrap(),
            "\\EFI\\Centos\\grubx64.efi"
        );
    }

    #[test]
    fn the_architecture_picks_the_suffix() {
        let dir = esp(&["EFI/debian/grubx64.efi", "EFI/debian/grubaa64.efi"]);
        assert_eq!(
            find_loader(dir.path(), None, Arch::Aa64).unwrap(),
            "\\EFI\\debian\\grubaa64.efi"
        );
        let dir = esp(&["EFI/BOOT/BOOTAA64.EFI"]);
        assert!(find_loader(dir.path(), None, Arch::X64).is_err());
        assert_eq!(
            find_loader(dir.path(), None, Arch::Aa64).unwrap(),
            "\\EFI\\BOOT\\BOOTAA64.EFI"
        );
    }

    #[test]
    fn an_override_is_checked_and_spelled_as_on_disk() {
        let dir = esp(&["EFI/Golden/GRUBX64.EFI", "EFI/debian/shimx64.efi"]);
        for wanted in [
            "\\EFI\\golden\\grubx64.efi",
            "/EFI/golden/grubx64.efi",
            "EFI/golden//grubx64.efi",
        ] {
            assert_eq!(
                find_loader(dir.path(), Some(wanted), Arch::X64).unwrap(),
                "\\EFI\\Golden\\GRUBX64.EFI",
                "{wanted}"
            );
        }
        let err = format!(
            "{:#}",
            find_loader(dir.path(), Some("\\EFI\\x\\y.efi"), Arch::X64).unwrap_err()
        );
        assert!(
            err.contains("\\EFI\\x\\y.efi") && err.contains("is not on the ESP"),
            "{err}"
        );
        assert!(find_loader(dir.path(), Some("\\EFI\\..\\x"), Arch::X64).is_err());
        assert!(find_loader(dir.path(), Some("/"), Arch::X64).is_err());
        // A directory is not a loader.
        assert!(find_loader(dir.path(), Some("\\EFI\\debian"), Arch::X64).is_err());
    }

    #[test]
    fn nothing_found_names_the_esp_and_the_candidates() {
        let dir = esp(&["EFI/debian/vmlinuz"]);
        let err = format!(
            "{:#}",
            find_loader(dir.path(), None, Arch::X64).unwrap_err()
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        for wanted in [
            "shimx64.efi",
            "grubx64.efi",
            "systemd-bootx64.efi",
            "BOOTX64.EFI",
        ] {
            assert!(err.contains(wanted), "{err}");
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(find_loader(empty.path(), None, Arch::X64).is_err());
    }

    #[test]
    fn host_path_joins_the_uefi_parts() {
        assert_eq!(
            host_path(Path::new("/mnt/esp"), "\\EFI\\debian\\shimx64.efi"),
            Path::new("/mnt/esp/EFI/debian/shimx64.efi")
        );
    }
}
