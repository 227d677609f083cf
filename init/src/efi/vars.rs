//! The boot-manager variables (UEFI 2.10 section 3.3): `Boot####`,
//! `BootOrder`, `BootNext`, `BootCurrent`, all under the EFI global
//! variable GUID, and where they live: efivarfs on a real machine, a map in
//! tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::disk::gpt::Guid;
use crate::sys::efivars;

/// `EFI_GLOBAL_VARIABLE`, the vendor GUID of every variable here.
pub const EFI_GLOBAL_VARIABLE: Guid = Guid::from_text("8be4df61-93ca-11d2-aa0d-00e098032b8c");

pub const BOOT_ORDER: &str = "BootOrder";
pub const BOOT_NEXT: &str = "BootNext";
pub const BOOT_CURRENT: &str = "BootCurrent";

/// Non-volatile, boot-service and runtime access: what the spec requires of
/// `Boot####`, `BootOrder` and `BootNext` (section 3.3, table 3-1).
pub const NV_BS_RT: u32 = 0x0000_0007;

/// Where the kernel mounts efivarfs.
pub const EFIVARS_DIR: &str = "/sys/firmware/efi/efivars";

/// `Boot0003`: four uppercase hex digits, as section 3.1.1 spells them
/// (firmware compares names exactly, so `Boot000a` is another variable).
pub fn boot_entry_name(number: u16) -> String {
    format!("Boot{number:04X}")
}

/// The number of a `Boot####` name; `None` for `BootOrder`, lowercase hex,
/// and anything else.
pub fn parse_boot_entry_name(name: &str) -> Option<u16> {
    let hex = name.strip_prefix("Boot")?;
    let upper_hex = |c: char| c.is_ascii_digit() || ('A'..='F').contains(&c);
    if hex.len() != 4 || !hex.chars().all(upper_hex) {
        return None;
    }
    u16::from_str_radix(hex, 16).ok()
}

/// efivarfs names each file `Name-guid`, the GUID in lowercase text.
pub fn efivarfs_file_name(name: &str, vendor: Guid) -> String {
    format!("{name}-{vendor}")
}

/// A `BootOrder` value: u16 entry numbers, little endian. A trailing odd
/// byte is left out; the caller rewrites the variable whole anyway.
pub fn decode_boot_order(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect()
}

pub fn encode_boot_order(order: &[u16]) -> Vec<u8> {
    order.iter().flat_map(|n| n.to_le_bytes()).collect()
}

/// The global variables the boot entry layer reads and writes. Every
/// variable is in `EFI_GLOBAL_VARIABLE` and written `NV_BS_RT`.
pub trait VarStore {
    /// The numbers of the `Boot####` variables that exist, ascending.
    fn list_boot_entries(&self) -> Result<Vec<u16>>;
    /// The variable's data, `None` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// Creates or replaces the variable.
    fn write(&mut self, name: &str, data: &[u8]) -> Result<()>;
    /// Removes the variable; removing one that does not exist is not an
    /// error, so a retried run gets past a half-finished cleanup.
    fn delete(&mut self, name: &str) -> Result<()>;
}

/// The variables as efivarfs shows them (`/sys/firmware/efi/efivars`).
#[derive(Debug, Clone)]
pub struct Efivarfs {
    dir: PathBuf,
}

impl Efivarfs {
    pub fn new(dir: impl Into<PathBuf>) -> Efivarfs {
        Efivarfs { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(efivarfs_file_name(name, EFI_GLOBAL_VARIABLE))
    }
}

impl Default for Efivarfs {
    fn default() -> Efivarfs {
        Efivarfs::new(EFIVARS_DIR)
    }
}

impl VarStore for Efivarfs {
    fn list_boot_entries(&self) -> Result<Vec<u16>> {
        let suffix = format!("-{EFI_GLOBAL_VARIABLE}");
        let entries = std::fs::read_dir(&self.dir).with_context(|| {
            format!(
                "listing {}; is efivarfs mounted (mount -t efivarfs efivarfs {})?",
                self.dir.display(),
                self.dir.display()
            )
        })?;
        let mut numbers = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", self.dir.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(number) = name.strip_suffix(&suffix).and_then(parse_boot_entry_name) {
                numbers.push(number);
            }
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        let var = efivars::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(var.map(|v| v.data))
    }

    fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let path = self.path(name);
        efivars::write(&path, NV_BS_RT, data).with_context(|| {
            format!(
                "writing {} ({} bytes); the firmware may be out of variable space \
                 (dmesg says so) or the path read-only",
                path.display(),
                data.len()
            )
        })
    }

    fn delete(&mut self, name: &str) -> Result<()> {
        let path = self.path(name);
        efivars::delete(&path).with_context(|| format!("deleting {}", path.display()))
    }
}

/// One change [`MemoryVars`] recorded, in order, so tests can assert the
/// order the writes reach the firmware in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VarOp {
    Write(String),
    Delete(String),
}

/// Variables in memory: the fake the orchestration is tested against, and
/// a way for callers' tests to see what would be written. It behaves as
/// efivarfs does for the calls of [`VarStore`]; `fail_on` makes one
/// operation fail, as a firmware out of variable space does.
#[derive(Debug, Clone, Default)]
pub struct MemoryVars {
    pub vars: BTreeMap<String, Vec<u8>>,
    pub ops: Vec<VarOp>,
    pub fail_on: Option<VarOp>,
}

impl MemoryVars {
    fn check(&mut self, op: VarOp) -> Result<()> {
        if self.fail_on.as_ref() == Some(&op) {
            anyhow::bail!("{op:?}: no space left on device (injected)");
        }
        self.ops.push(op);
        Ok(())
    }
}

impl VarStore for MemoryVars {
    fn list_boot_entries(&self) -> Result<Vec<u16>> {
        Ok(self
            .vars
            .keys()
            .filter_map(|n| parse_boot_entry_name(n))
            .collect())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.vars.get(name).cloned())
    }

    fn write(&mut self, name: &str, data: &[u8]) -> Result<()> {
        self.check(VarOp::Write(name.to_owned()))?;
        self.vars.insert(name.to_owned(), data.to_vec());
        Ok(())
    }

    fn delete(&mut self, name: &str) -> Result<()> {
        self.check(VarOp::Delete(name.to_owned()))?;
        self.vars.remove(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_entry_names_are_four_uppercase_hex_digits() {
        assert_eq!(boot_entry_name(3), "Boot0003");
        assert_eq!(boot_entry_name(0xabcd), "BootABCD");
        assert_eq!(parse_boot_entry_name("Boot000A"), Some(10));
        assert_eq!(parse_boot_entry_name("BootFFFF"), Some(0xffff));
        for not in [
            "Boot000a",
            "BootOrder",
            "BootNext",
            "Boot00001",
            "Boot001",
            "Boot+001",
            "Driver0001",
        ] {
            assert_eq!(parse_boot_entry_name(not), None, "{not}");
        }
    }

    #[test]
    fn efivarfs_names_and_boot_order_bytes() {
        assert_eq!(
            efivarfs_file_name(BOOT_ORDER, EFI_GLOBAL_VARIABLE),
            "BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"
        );
        // The GUID is stored mixed-endian, as in GPT.
        assert_eq!(EFI_GLOBAL_VARIABLE.0[..4], [0x61, 0xdf, 0xe4, 0x8b]);
        assert_eq!(encode_boot_order(&[1, 0x0203]), [1, 0, 3, 2]);
        assert_eq!(decode_boot_order(&[1, 0, 3, 2, 9]), [1, 0x0203]);
        assert_eq!(decode_boot_order(&[]), Vec::<u16>::new());
    }

    #[test]
    fn efivarfs_store_over_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Efivarfs::new(dir.path());
        assert_eq!(store.dir(), dir.path());
        store.write("Boot0002", b"two").unwrap();
        store.write("Boot000A", b"ten").unwrap();
        store.write(BOOT_ORDER, &[2, 0, 10, 0]).unwrap();
        // Another vendor's variable with a Boot-like name is not ours.
        std::fs::write(
            dir.path()
                .join("Boot0005-00000000-0000-0000-0000-000000000000"),
            [7, 0, 0, 0],
        )
        .unwrap();
        assert_eq!(store.list_boot_entries().unwrap(), [2, 10]);
        assert_eq!(
            store.read("Boot000A").unwrap().as_deref(),
            Some(&b"ten"[..])
        );
        let raw = std::fs::read(
            dir.path()
                .join("BootOrder-8be4df61-93ca-11d2-aa0d-00e098032b8c"),
        )
        .unwrap();
        assert_eq!(raw, [7, 0, 0, 0, 2, 0, 10, 0]);
        // A shorter value replaces a longer one whole.
        store.write("Boot0002", b"2").unwrap();
        assert_eq!(store.read("Boot0002").unwrap().as_deref(), Some(&b"2"[..]));
        store.delete("Boot0002").unwrap();
        store.delete("Boot0002").unwrap();
        assert_eq!(store.read("Boot0002").unwrap(), None);
        assert_eq!(store.list_boot_entries().unwrap(), [10]);
    }

    #[test]
    fn listing_a_missing_efivarfs_names_the_mount() {
        let store = Efivarfs::new("/nonexistent/efivars");
        let err = format!("{:#}", store.list_boot_entries().unwrap_err());
        assert!(err.contains("mount -t efivarfs"), "{err}");
    }
}
