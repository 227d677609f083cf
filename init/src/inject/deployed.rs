//! After the image is on the disk: make its partition table whole for this
//! disk, find its root, and inject the machine's identity.
//!
//! ```text
//! read GPT/MBR -> move the backup GPT to the disk's end (and grow) -> re-read partitions
//! -> probe each partition -> discover the root -> mount it read-write (InstalledRoot)
//! -> read os-release -> plan -> log the plan -> apply -> sync
//! ```
//!
//! The root stays mounted, in the [`Injected::Root`] handed back, for kexec
//! staging; it is unmounted when that is dropped or by
//! `handoff::unmount_everything`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::disk::partitions::{self, PartitionTable, TableKind};
use crate::disk::root::RootSelector;
use crate::disk::root::{self, Candidate, NtfsImage, OsFamily, RootChoice};
use crate::inject::{self, Identity, InjectContext, OsFamilyHint};
use crate::installed::{InstalledRoot, PARTITION_MOUNTS, PartitionMounts};
use crate::pipeline::target::DeviceTarget;
use crate::source::SourceOptions;

const PARTITION_WAIT: Duration = Duration::from_secs(10);

/// What happened after the write, for the log and the result line.
#[derive(Debug)]
pub enum Injected {
    /// The identity went into `root`, still mounted: the handoff boots it.
    Root { root: InstalledRoot, ops: usize },
    /// Nothing to do, and why (no partition table, Windows image, …).
    Skipped(String),
}

/// What the deploy asks of the installed system: the parts of the
/// resolved spec injection reads.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub identity: &'a Identity,
    /// `imprint.root=`; discovered when absent.
    pub root: Option<&'a RootSelector>,
    /// `imprint.grow=1`.
    pub grow: bool,
    /// Timeouts and trust for the files injection fetches.
    pub source: &'a SourceOptions,
}

/// Whether the spec asks for anything beyond the defaults. Without a
/// request, an image with no Linux root (raw data, Windows) is not an error.
pub fn requested(spec: &Request<'_>) -> bool {
    let mut identity = spec.identity.clone();
    identity.reset_machine_id = Identity::default().reset_machine_id;
    identity != Identity::default() || spec.root.is_some() || spec.grow
}

/// [`inject_into_disk`], failing closed: on any error the first and last
/// MiB of the disk are zeroed, as for a failure during the write.
pub fn inject_or_fail_closed(
    spec: &Request<'_>,
    disk: &Path,
    boot_mac: Option<[u8; 6]>,
) -> Result<Injected> {
    inject_into_disk(spec, disk, boot_mac).map_err(|error| {
        match DeviceTarget::open(disk) {
            Ok(mut device) => {
                if let Err(e) = crate::pipeline::image_writer::fail_closed(&mut device) {
                    log::error!("{e:#}");
                }
            }
            Err(e) => log::error!("{e:#}"),
        }
        error.context("after writing the image")
    })
}

/// Fixes up the partition table of the freshly written `disk` and injects
/// the spec's identity into its root. Any error is a deploy failure; the
/// caller fails closed.
pub fn inject_into_disk(
    spec: &Request<'_>,
    disk: &Path,
    boot_mac: Option<[u8; 6]>,
) -> Result<Injected> {
    let disk_name = disk
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("the target disk has no name")?;
    let table = match partitions::read_partition_table_at(disk) {
        Ok(table) => table,
        Err(e) if !requested(spec) => {
            return Ok(Injected::Skipped(format!(
                "no partition table to inject into ({e:#})"
            )));
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("reading the partition table of {}", disk.display()));
        }
    };
    for problem in &table.problems {
        log::warn!("{}: {problem}", disk.display());
    }
    // An image laid out for 512-byte sectors on a 4Kn disk (or the reverse)
    // was written faithfully, but the kernel sees no partitions in it:
    // nothing can be fixed up or injected, and rewriting its tables would
    // make things worse.
    let mut device = DeviceTarget::open(disk)?;
    let disk_block_size = crate::pipeline::target::BlockTarget::logical_block_size(&device);
    if table.block_size != disk_block_size {
        let why = format!(
            "the image's partition table is laid out for {}-byte sectors but {} has {disk_block_size}-byte sectors",
            table.block_size,
            disk.display()
        );
        if requested(spec) {
            bail!("{why}; use an image made for this disk's sector size");
        }
        log::warn!("{why}: the installed OS will not see its partitions");
        return Ok(Injected::Skipped(why));
    }
    fix_partition_table(spec, disk, &mut device, &table)?;
    drop(device);
    let table = partitions::read_partition_table_at(disk)
        .with_context(|| format!("reading the partition table of {} again", disk.display()))?;
    let numbers: Vec<u32> = table.partitions.iter().map(|p| p.number).collect();
    let nodes =
        partitions::wait_for_partition_nodes(&disk_name, &numbers, PARTITION_WAIT, |p| p.exists())?;
    let candidates = candidates(&table, &nodes)?;

    let mut probes = PartitionMounts::new(Path::new(PARTITION_MOUNTS));
    let choice = root::discover_root(spec.root, &candidates, &mut probes);
    let choice = match choice {
        Ok(choice) => choice,
        Err(e) => {
            probes.unmount_all()?;
            if let Some(ntfs) = e.downcast_ref::<NtfsImage>() {
                return Ok(Injected::Skipped(ntfs.to_string()));
            }
            if !requested(spec) {
                return Ok(Injected::Skipped(format!("{e:#}")));
            }
            return Err(e);
        }
    };
    let RootChoice { index, reason } = choice;
    let root = InstalledRoot::mount(candidates, index, &mut probes)?;
    let os = root.os_release()?;
    log::info!(
        "root: {} ({reason}){}",
        root.describe(),
        os.as_ref()
            .map_or(String::new(), |os| format!(", {}", os.pretty_name))
    );

    let family = match os.as_ref().map(|os| os.family) {
        Some(OsFamily::Debian) => OsFamilyHint::Debian,
        Some(OsFamily::RedHat) => OsFamilyHint::RedHat,
        Some(OsFamily::Suse) => OsFamilyHint::Suse,
        Some(OsFamily::Other) | None => OsFamilyHint::Other,
    };
    let ops = plan_and_apply(spec, &root, boot_mac, family);
    rustix::fs::sync();
    Ok(Injected::Root { ops: ops?, root })
}

/// Moves a backup GPT that sits mid-disk (the image was smaller than the
/// disk) to the end, grows the last partition when asked, and has the
/// kernel re-read the table.
fn fix_partition_table(
    spec: &Request<'_>,
    disk: &Path,
    target: &mut DeviceTarget,
    table: &PartitionTable,
) -> Result<()> {
    let disk_size = crate::pipeline::target::BlockTarget::size(target);
    let writes = if spec.grow {
        let grow = table.plan_grow(disk_size)?;
        log::info!(
            "growing partition {} from LBA {} to {}",
            grow.number,
            grow.old_last_lba,
            grow.new_last_lba
        );
        grow.writes
    } else {
        table.plan_relocation(disk_size)?
    };
    if writes.is_empty() {
        return Ok(());
    }
    for write in &writes {
        log::info!("partition table: writing {}", write.what);
    }
    partitions::apply_writes(target, &writes)?;
    crate::pipeline::target::BlockTarget::reread_partitions(target)
        .with_context(|| format!("re-reading the partition table of {}", disk.display()))
}

fn candidates(table: &PartitionTable, nodes: &[PathBuf]) -> Result<Vec<Candidate>> {
    table
        .partitions
        .iter()
        .zip(nodes)
        .map(|(partition, node)| {
            Ok(Candidate {
                number: partition.number,
                dev_path: node.clone(),
                part_type_guid: match table.kind {
                    TableKind::Gpt { .. } => partition.type_guid.map(|g| g.to_string()),
                    TableKind::Mbr { .. } => None,
                },
                part_uuid: partition.part_uuid.clone(),
                part_label: partition.name.clone(),
                fs: root::probe_device(node)?,
            })
        })
        .collect()
}

fn plan_and_apply(
    spec: &Request<'_>,
    root: &InstalledRoot,
    boot_mac: Option<[u8; 6]>,
    family: OsFamilyHint,
) -> Result<usize> {
    let ctx = InjectContext {
        boot_mac,
        os_family: family,
        machine_name: None,
        instance_id: None,
        image: root.dir(),
    };
    let ops = inject::plan(spec.identity, &ctx).context("planning the injection")?;
    for op in &ops {
        log::info!("inject: {op}");
    }
    let options = spec.source.clone();
    inject::apply(&ops, root.dir(), &mut |url| {
        crate::source::fetch_bytes(url, MAX_INJECTED_FILE, "a file to inject", &options)
    })
    .context("injecting")?;
    Ok(ops.len())
}

/// The largest file the plan downloads (drpcli, a `files` entry with a URL).
const MAX_INJECTED_FILE: u64 = 512 << 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_requests_make_missing_roots_an_error() {
        let source = SourceOptions::default();
        let mut identity = Identity::default();
        let request = |identity: &Identity, grow| {
            requested(&Request {
                identity,
                root: None,
                grow,
                source: &source,
            })
        };
        assert!(!request(&identity, false));
        identity.reset_machine_id = false;
        assert!(!request(&identity, false));
        assert!(request(&Identity::default(), true));
        identity.hostname = Some("x".into());
        assert!(request(&identity, false));
    }
}
