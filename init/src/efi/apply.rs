//! After a deploy on a UEFI machine: the boot entry for what was written.
//!
//! ```text
//! efivarfs mounted? (BIOS: nothing to do) -> the ESP on the written disk -> mounted read-only
//!   -> its loader (find_loader) -> label from os-release -> register(): entry, BootOrder, BootNext,
//!      stale entries of this disk removed
//! ```

use std::path::Path;

use anyhow::{Context, Result, bail};
use rustix::mount::MountFlags;

use super::vars::{EFIVARS_DIR, Efivarfs};
use super::{
    Arch, BootOrderPolicy, Guid, NewEntry, Registered, efi_available, find_loader, register,
};
use crate::disk::mount;
use crate::disk::partitions::PartitionTable;

/// The EFI system partition's GPT type.
const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Present when the machine booted through UEFI.
const EFI_FIRMWARE: &str = "/sys/firmware/efi";
/// Where the ESP is mounted while its loader is looked for.
const ESP_MOUNT: &str = "/run/imprint/esp";

/// What the deploy asks about boot entries.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BootEntryRequest {
    /// `None`: leave the firmware's boot entries alone (`imprint.boot-order=off`).
    pub policy: Option<BootOrderPolicy>,
    /// Boot the new entry once, next (`imprint.boot-next=1`).
    pub boot_next: bool,
    /// The loader on the ESP, instead of the one found (`imprint.boot-loader=`).
    pub loader: Option<String>,
}

/// The partition GUIDs of a partition table, as the boot entries' HD nodes
/// name them.
pub fn partition_guids(table: &PartitionTable) -> Vec<Guid> {
    table
        .partitions
        .iter()
        .filter_map(|p| p.part_uuid.as_deref().and_then(Guid::parse))
        .collect()
}

/// The partition GUIDs `target` has before the deploy, whose boot entries
/// the deploy makes stale; read only where an entry will be written (a
/// UEFI machine, `boot-order` not `off`).
pub fn guids_before(request: &BootEntryRequest, target: &Path) -> Vec<Guid> {
    if request.policy.is_none() || !Path::new(EFI_FIRMWARE).is_dir() {
        return Vec::new();
    }
    crate::disk::partitions::read_partition_table_at(target)
        .map(|table| partition_guids(&table))
        .unwrap_or_default()
}

/// Writes the boot entry for the disk at `target`, just deployed.
/// `before` are the partition GUIDs the disk had before the deploy (their
/// entries are stale now); `label` names the installed OS. `Ok(None)` when
/// there is nothing to do: a BIOS machine, `boot-order=off`.
pub fn register_for_disk(
    request: &BootEntryRequest,
    target: &Path,
    before: &[Guid],
    label: &str,
) -> Result<Option<Registered>> {
    let Some(policy) = request.policy else {
        return Ok(None);
    };
    if !Path::new(EFI_FIRMWARE).is_dir() {
        log::info!("no UEFI firmware (a BIOS boot): no boot entry to write");
        return Ok(None);
    }
    let efivars = Path::new(EFIVARS_DIR);
    if !efi_available(efivars) {
        bail!(
            "{} is missing: the kernel has no UEFI runtime services (booted with noefi?)",
            efivars.display()
        );
    }
    // The kernel only makes the mount point; PID 1 mounts efivarfs on it.
    if !crate::sys::mount::is_mount_point(efivars) {
        mount::load_fs_modules(&mount::module_dir(), "efivarfs", &["efivarfs"])
            .context("loading efivarfs")?;
        crate::sys::mount::mount(
            "efivarfs",
            efivars,
            "efivarfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        )?;
    }
    let table = crate::disk::partitions::read_partition_table_at(target)?;
    let Some(esp) = table
        .partitions
        .iter()
        .find(|p| p.type_guid.is_some_and(|t| t.to_string() == ESP_TYPE))
    else {
        log::warn!(
            "{}: no EFI system partition on the deployed disk; no boot entry written",
            target.display()
        );
        return Ok(None);
    };
    let partuuid = esp
        .part_uuid
        .as_deref()
        .and_then(Guid::parse)
        .with_context(|| {
            format!(
                "partition {} of {} has no GPT GUID",
                esp.number,
                target.display()
            )
        })?;
    let loader = esp_loader(target, esp.number, request.loader.as_deref())?;
    let block = u64::from(table.block_size);
    let entry = NewEntry {
        label: label.to_owned(),
        partition: esp.number,
        start: esp.first_lba,
        size: esp.size_bytes / block,
        partuuid,
        loader,
    };
    let mut this_disk = before.to_vec();
    this_disk.extend(partition_guids(&table));
    let registered = register(
        &mut Efivarfs::new(efivars),
        entry,
        &this_disk,
        policy,
        request.boot_next,
    )?;
    Ok(Some(registered))
}

/// Mounts the ESP (partition `number` of `disk`) read-only, finds its
/// loader and unmounts it again.
fn esp_loader(disk: &Path, number: u32, wanted: Option<&str>) -> Result<String> {
    let name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let device = crate::disk::partition_path(&name, number);
    let plan = mount::vfat_plan();
    mount::load_fs_modules(&mount::module_dir(), plan.fstype, &plan.modules)
        .context("loading vfat for the ESP")?;
    let point = Path::new(ESP_MOUNT);
    crate::sys::mount::mkdir_all(point, 0o700)?;
    mount::mount_device(
        &device,
        point,
        plan.fstype,
        plan.data,
        mount::Access::ReadOnly,
    )
    .with_context(|| format!("mounting the ESP {}", device.display()))?;
    let found = find_loader(point, wanted, Arch::host())
        .with_context(|| format!("the ESP {}", device.display()));
    if let Err(e) = crate::sys::mount::unmount(point) {
        log::warn!("{e:#}");
    }
    found
}
