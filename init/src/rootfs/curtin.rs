//! DRP's `curtin/partitions` (curtin's storage config, version 1, as
//! image-deploy passes it to curtin: `params/curtin.partitions.yaml` and
//! `templates/curtin-config.yaml.tmpl` of provision-plugins v4.8.0; the
//! actions as curtin's `doc/topics/storage.rst` defines them, sizes as its
//! `util.human2bytes` reads them) read as an imprint [`Layout`], for
//! the part of it a layout can say: GPT disks, partitions, filesystems and
//! mounts. RAID, LVM, bcache, dm-crypt and ZFS actions are refused with a
//! message naming them.
//!
//! ```yaml
//! storage:
//!   version: 1
//!   config:
//!     - {type: disk, id: disk0, ptable: gpt, path: /dev/sda, grub_device: true}
//!     - {type: partition, id: p1, device: disk0, size: 512M, flag: boot, number: 1}
//!     - {type: partition, id: p2, device: disk0, size: 1M, flag: bios_grub, number: 2}
//!     - {type: partition, id: p3, device: disk0, size: 20G, number: 3}
//!     - {type: format, id: f1, volume: p1, fstype: fat32}
//!     - {type: format, id: f3, volume: p3, fstype: ext4, label: root}
//!     - {type: mount, id: m3, device: f3, path: /}
//!     - {type: mount, id: m1, device: f1, path: /boot/efi}
//! ```
//!
//! The first disk is the deploy's target (`image-deploy/install-disk`),
//! whatever its `path`; further disks are chosen by `path`, else
//! `serial`. Sizes are curtin's (`human2bytes`: bytes, or `K M G T` with an
//! optional `B`, binary multiples, fractions allowed), plus imprint's `%`
//! and `rest`; partitions go in `number` order, else as listed.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::layout::{DiskLayout, Filesystem, Layout, PartType, PartitionSpec, Size};

/// The layout `storage` (`curtin/partitions`'s `storage` object, or the
/// whole param with it inside) describes.
pub fn layout_from_curtin(storage: &Value) -> Result<Layout> {
    let storage = storage.get("storage").unwrap_or(storage);
    if let Some(version) = storage.get("version") {
        if version.as_u64() != Some(1) {
            bail!("curtin storage version {version}: imprint reads version 1");
        }
    }
    let Some(Value::Array(config)) = storage.get("config") else {
        bail!("curtin storage: no \"config\" list of actions");
    };
    let mut disks: Vec<(String, DiskLayout)> = Vec::new();
    // partition id -> (disk index, number, spec)
    let mut parts: BTreeMap<String, (usize, Option<u64>, usize, PartitionSpec)> = BTreeMap::new();
    let mut formats: BTreeMap<String, String> = BTreeMap::new(); // format id -> partition id
    for (n, action) in config.iter().enumerate() {
        let field = |name: &str| action.get(name).and_then(Value::as_str);
        let id = field("id").unwrap_or_default().to_owned();
        let kind = field("type").unwrap_or_default();
        let at = || format!("curtin storage config[{n}] ({kind} {id:?})");
        match kind {
            "disk" => {
                if let Some(ptable) = field("ptable") {
                    if ptable != "gpt" {
                        bail!("{}: ptable {ptable}: imprint writes GPT only", at());
                    }
                }
                let selector = if disks.is_empty() {
                    None
                } else {
                    match (field("path"), field("serial")) {
                        (Some(path), _) => Some(path.to_owned()),
                        (None, Some(serial)) => Some(format!("serial={serial}")),
                        (None, None) => bail!("{}: a second disk needs a path or a serial", at()),
                    }
                };
                disks.push((
                    id,
                    DiskLayout {
                        disk: selector,
                        partitions: Vec::new(),
                    },
                ));
            }
            "partition" => {
                let device = field("device").with_context(|| format!("{}: no device", at()))?;
                let disk = disks
                    .iter()
                    .position(|(disk_id, _)| disk_id == device)
                    .with_context(|| {
                        format!("{}: device {device:?} is no disk listed before it", at())
                    })?;
                let size = action
                    .get("size")
                    .with_context(|| format!("{}: no size", at()))
                    .and_then(|s| size(s).with_context(|| format!("{}: size {s}", at())))?;
                let kind = match field("flag").unwrap_or("linux") {
                    "boot" | "esp" => PartType::Esp,
                    "bios_grub" => PartType::BiosBoot,
                    "swap" => PartType::Swap,
                    "home" => PartType::LinuxHome,
                    "lvm" => PartType::Lvm,
                    "raid" => PartType::Raid,
                    "linux" | "" => PartType::Linux,
                    other => bail!(
                        "{}: flag {other}: imprint knows boot, bios_grub, swap, home, lvm, raid, linux",
                        at()
                    ),
                };
                let mut spec = PartitionSpec::new(size, kind);
                // What a `format` action gives it; none until then.
                spec.filesystem = Filesystem::None;
                let number = action.get("number").and_then(Value::as_u64);
                parts.insert(id, (disk, number, n, spec));
            }
            "format" => {
                let volume = field("volume").with_context(|| format!("{}: no volume", at()))?;
                let Some((_, _, _, spec)) = parts.get_mut(volume) else {
                    bail!(
                        "{}: volume {volume:?} is no partition listed before it",
                        at()
                    );
                };
                let fstype = field("fstype").with_context(|| format!("{}: no fstype", at()))?;
                spec.filesystem = match fstype {
                    "ext4" => Filesystem::Ext4,
                    "xfs" => Filesystem::Xfs,
                    "fat" | "fat32" | "vfat" => Filesystem::Vfat,
                    "swap" => Filesystem::Swap,
                    other => bail!(
                        "{}: fstype {other}: imprint makes ext4, xfs, fat32 and swap",
                        at()
                    ),
                };
                spec.label = field("label").map(str::to_owned);
                formats.insert(id, volume.to_owned());
            }
            "mount" => {
                let device = field("device").with_context(|| format!("{}: no device", at()))?;
                let partition = formats.get(device).with_context(|| {
                    format!("{}: device {device:?} is no format listed before it", at())
                })?;
                let path = field("path").with_context(|| format!("{}: no path", at()))?;
                let (_, _, _, spec) = parts.get_mut(partition).expect("formats name partitions");
                spec.mount = Some(path.to_owned());
                if let Some(options) = field("options") {
                    spec.options = options.to_owned();
                }
            }
            other => bail!(
                "{}: {other} actions are not something imprint's layouts do (GPT partitions, \
                 filesystems and mounts only); give the deploy spec a \"layout\" instead",
                at()
            ),
        }
    }
    let mut placed: Vec<(usize, Option<u64>, usize, PartitionSpec)> = parts.into_values().collect();
    placed.sort_by_key(|(disk, number, listed, _)| (*disk, number.unwrap_or(u64::MAX), *listed));
    for (disk, _, _, spec) in placed {
        disks[disk].1.partitions.push(spec);
    }
    let layout = Layout {
        disks: disks.into_iter().map(|(_, disk)| disk).collect(),
    };
    layout.check().context("curtin storage")?;
    Ok(layout)
}

/// curtin's `human2bytes`, and imprint's `%` and `rest`.
fn size(value: &Value) -> Result<Size> {
    let text = match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => bail!("is not a size"),
    };
    if let Some(size) = Size::parse(&text).filter(|s| !matches!(s, Size::Bytes(_))) {
        return Ok(size);
    }
    let number = text.strip_suffix('B').unwrap_or(&text);
    let (number, shift) = match number.char_indices().last() {
        Some((i, 'K')) => (&number[..i], 10),
        Some((i, 'M')) => (&number[..i], 20),
        Some((i, 'G')) => (&number[..i], 30),
        Some((i, 'T')) => (&number[..i], 40),
        _ => (number, 0),
    };
    let value: f64 = number
        .parse()
        .ok()
        .context("is not a size (512M, 20G, 1.5T, bytes)")?;
    let bytes = value * 2f64.powi(shift);
    if !(1.0..1.8e19).contains(&bytes) {
        bail!("is not a size a disk has");
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked above
    Ok(Size::Bytes(bytes as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_module_doc_example_is_the_default_preset_but_sized() {
        let storage = json!({"storage": {"version": 1, "config": [
            {"type": "disk", "id": "disk0", "ptable": "gpt", "path": "/dev/sda", "grub_device": true},
            {"type": "partition", "id": "p3", "device": "disk0", "size": "20G", "number": 3},
            {"type": "partition", "id": "p1", "device": "disk0", "size": "512M", "flag": "boot", "number": 1},
            {"type": "partition", "id": "p2", "device": "disk0", "size": "1MB", "flag": "bios_grub", "number": 2},
            {"type": "format", "id": "f1", "volume": "p1", "fstype": "fat32"},
            {"type": "format", "id": "f3", "volume": "p3", "fstype": "ext4", "label": "root"},
            {"type": "mount", "id": "m3", "device": "f3", "path": "/"},
            {"type": "mount", "id": "m1", "device": "f1", "path": "/boot/efi", "options": "umask=0077"},
        ]}});
        let layout = layout_from_curtin(&storage).unwrap();
        assert_eq!(layout.disks.len(), 1);
        assert_eq!(layout.disks[0].disk, None, "the first disk is the target");
        type Row<'a> = (Size, PartType, Filesystem, Option<&'a str>, Option<&'a str>);
        let parts: Vec<Row<'_>> = layout.disks[0]
            .partitions
            .iter()
            .map(|p| {
                (
                    p.size,
                    p.kind,
                    p.filesystem,
                    p.label.as_deref(),
                    p.mount.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            parts,
            [
                (
                    Size::Bytes(512 << 20),
                    PartType::Esp,
                    Filesystem::Vfat,
                    None,
                    Some("/boot/efi")
                ),
                (
                    Size::Bytes(1 << 20),
                    PartType::BiosBoot,
                    Filesystem::None,
                    None,
                    None
                ),
                (
                    Size::Bytes(20 << 30),
                    PartType::Linux,
                    Filesystem::Ext4,
                    Some("root"),
                    Some("/")
                ),
            ]
        );
        assert_eq!(layout.disks[0].partitions[0].options, "umask=0077");
    }

    #[test]
    fn a_second_disk_by_path_or_serial_and_curtin_sizes() {
        let storage = json!({"version": 1, "config": [
            {"type": "disk", "id": "a", "path": "/dev/sda"},
            {"type": "disk", "id": "b", "serial": "S3EVNX0K"},
            {"type": "partition", "id": "root", "device": "a", "size": "rest"},
            {"type": "partition", "id": "home", "device": "b", "size": "1.5G", "flag": "home"},
            {"type": "partition", "id": "swap", "device": "b", "size": 1_073_741_824_u64, "flag": "swap"},
            {"type": "format", "id": "fr", "volume": "root", "fstype": "xfs"},
            {"type": "format", "id": "fh", "volume": "home", "fstype": "ext4"},
            {"type": "format", "id": "fs", "volume": "swap", "fstype": "swap"},
            {"type": "mount", "id": "mr", "device": "fr", "path": "/"},
            {"type": "mount", "id": "mh", "device": "fh", "path": "/home"},
        ]});
        let layout = layout_from_curtin(&storage).unwrap();
        assert_eq!(layout.disks[1].disk.as_deref(), Some("serial=S3EVNX0K"));
        assert_eq!(layout.disks[0].partitions[0].size, Size::Rest);
        let second: Vec<Size> = layout.disks[1].partitions.iter().map(|p| p.size).collect();
        assert_eq!(second, [Size::Bytes(3 << 29), Size::Bytes(1 << 30)]);
        assert_eq!(layout.disks[1].partitions[1].filesystem, Filesystem::Swap);
    }

    #[test]
    fn what_a_layout_cannot_say_is_refused_by_name() {
        let refuse = |config: Value| {
            format!(
                "{:#}",
                layout_from_curtin(&json!({"config": config})).unwrap_err()
            )
        };
        let disk = json!({"type": "disk", "id": "d", "ptable": "gpt"});
        assert_eq!(
            refuse(json!([disk, {"type": "raid", "id": "md0", "raidlevel": 1}])),
            "curtin storage config[1] (raid \"md0\"): raid actions are not something imprint's \
             layouts do (GPT partitions, filesystems and mounts only); give the deploy spec a \
             \"layout\" instead"
        );
        assert_eq!(
            refuse(json!([{"type": "disk", "id": "d", "ptable": "msdos"}])),
            "curtin storage config[0] (disk \"d\"): ptable msdos: imprint writes GPT only"
        );
        assert_eq!(
            refuse(json!([disk, {"type": "partition", "id": "p", "device": "d", "size": "lots"}])),
            "curtin storage config[1] (partition \"p\"): size \"lots\": is not a size (512M, 20G, 1.5T, bytes)"
        );
        assert_eq!(
            refuse(
                json!([disk, {"type": "partition", "id": "p", "device": "d", "size": "1G"},
                {"type": "format", "id": "f", "volume": "p", "fstype": "btrfs"}])
            ),
            "curtin storage config[2] (format \"f\"): fstype btrfs: imprint makes ext4, xfs, fat32 and swap"
        );
        assert!(
            refuse(json!([disk, {"type": "partition", "id": "p", "device": "d", "size": "1G"}]))
                .starts_with("curtin storage: ")
        );
    }
}
