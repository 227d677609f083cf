//! UEFI boot entries: `EFI_LOAD_OPTION`s and device paths encoded and
//! decoded in pure Rust, the boot-order policy as a plan, and the loader
//! found on the installed ESP. `sys::efivars` reads and writes the
//! variables.
//!
//! [`register`] is the one entry point after a deploy: read the variables,
//! [`plan::plan`] the change, apply it in an order that never leaves the
//! firmware without a way to the new OS, and say what was done.

pub mod apply;
pub mod device_path;
pub mod load_option;
pub mod loader;
pub mod plan;
pub mod vars;

#[cfg(test)]
mod golden;

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};

pub use crate::disk::gpt::Guid;
pub use device_path::{DevicePath, HardDrive};
pub use load_option::LoadOption;
pub use loader::{Arch, find_loader};
pub use plan::{BootOrderPolicy, BootPlan, CurrentVars};
pub use vars::{Efivarfs, MemoryVars, VarStore};

/// The boot entry for the installed OS: its label and where its loader is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub label: String,
    /// The ESP's partition number, 1-based.
    pub partition: u32,
    /// The ESP's first LBA and size in LBAs.
    pub start: u64,
    pub size: u64,
    /// The ESP's unique GUID (PARTUUID).
    pub partuuid: Guid,
    /// The loader in UEFI form, as [`find_loader`] gives it.
    pub loader: String,
}

impl NewEntry {
    pub fn load_option(&self) -> LoadOption {
        LoadOption::for_loader(
            &self.label,
            HardDrive::gpt(self.partition, self.start, self.size, self.partuuid),
            &self.loader,
        )
    }
}

/// What [`register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    pub number: u16,
    pub label: String,
    pub device_path: DevicePath,
    /// False when the entry already held exactly this option.
    pub written: bool,
    pub deleted: Vec<u16>,
    pub boot_order: Vec<u16>,
    pub boot_next: Option<u16>,
}

/// `Boot0003 "Debian GNU/Linux 12" HD(2,GPT,...)/File(\EFI\debian\shimx64.efi);
/// BootOrder 0001,0003,0000; removed Boot0004`
impl fmt::Display for Registered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:?} {}",
            vars::boot_entry_name(self.number),
            self.label,
            self.device_path
        )?;
        if !self.written {
            f.write_str(" (unchanged)")?;
        }
        let order: Vec<String> = self.boot_order.iter().map(|n| format!("{n:04X}")).collect();
        write!(f, "; BootOrder {}", order.join(","))?;
        if let Some(next) = self.boot_next {
            write!(f, "; BootNext {next:04X}")?;
        }
        if !self.deleted.is_empty() {
            let deleted: Vec<String> = self
                .deleted
                .iter()
                .map(|&n| vars::boot_entry_name(n))
                .collect();
            write!(f, "; removed {}", deleted.join(", "))?;
        }
        Ok(())
    }
}

/// Whether this machine booted through UEFI with its variables reachable:
/// the kernel creates the efivarfs mount point only then.
pub fn efi_available(efivars_dir: &Path) -> bool {
    efivars_dir.is_dir()
}

/// Creates or refreshes the boot entry for `entry`, removes the entries of
/// this disk's earlier installs, and sets `BootOrder` (and `BootNext`) by
/// `policy`. `this_disk_partuuids` are the GUIDs of the disk's partitions
/// from before the deploy and after; `entry.partuuid` counts as one even
/// when left out.
pub fn register(
    store: &mut impl VarStore,
    entry: NewEntry,
    this_disk_partuuids: &[Guid],
    policy: BootOrderPolicy,
    boot_next: bool,
) -> Result<Registered> {
    let current = read_current(store)?;
    let option = entry.load_option();
    let mut this_disk = this_disk_partuuids.to_vec();
    this_disk.push(entry.partuuid);
    let plan = plan::plan(&current, &option, &this_disk, policy, boot_next)?;
    let name = vars::boot_entry_name(plan.number);

    // The entry first, then the order that names it, then BootNext; the
    // stale entries go last. Stopped anywhere, the firmware still finds
    // either the old entries in the old order or the new one.
    if plan.write_entry {
        store
            .write(&name, &option.encode())
            .with_context(|| format!("writing boot entry {name} for {}", entry.loader))?;
    }
    if plan.write_boot_order {
        store
            .write(vars::BOOT_ORDER, &vars::encode_boot_order(&plan.boot_order))
            .context("writing BootOrder")?;
    }
    if let Some(next) = plan.boot_next {
        store
            .write(vars::BOOT_NEXT, &next.to_le_bytes())
            .context("writing BootNext")?;
    }
    for &stale in &plan.delete {
        let stale = vars::boot_entry_name(stale);
        store.delete(&stale).with_context(|| {
            format!("removing {stale}, an earlier install's boot entry on this disk")
        })?;
    }
    Ok(Registered {
        number: plan.number,
        label: entry.label,
        device_path: option.file_path,
        written: plan.write_entry,
        deleted: plan.delete,
        boot_order: plan.boot_order,
        boot_next: plan.boot_next,
    })
}

/// Every `Boot####` and `BootOrder`. An entry that does not decode is
/// logged and kept as someone else's.
fn read_current(store: &impl VarStore) -> Result<CurrentVars> {
    let mut current = CurrentVars::default();
    for number in store.list_boot_entries().context("listing boot entries")? {
        let name = vars::boot_entry_name(number);
        let Some(bytes) = store
            .read(&name)
            .with_context(|| format!("reading {name}"))?
        else {
            // Listed, then gone: another writer; it is not there to keep.
            continue;
        };
        let option = match LoadOption::decode(&bytes) {
            Ok(option) => Some(option),
            Err(e) => {
                log::warn!("{name} is left as it is: {e}");
                None
            }
        };
        current.entries.insert(number, option);
    }
    current.boot_order = store
        .read(vars::BOOT_ORDER)
        .context("reading BootOrder")?
        .map(|bytes| {
            if bytes.len() % 2 != 0 {
                log::warn!(
                    "BootOrder is {} bytes, an odd number; its last byte is ignored",
                    bytes.len()
                );
            }
            vars::decode_boot_order(&bytes)
        });
    Ok(current)
}

#[cfg(test)]
mod tests;
