//! The partition layout of a root-filesystem deploy (issue 15): which
//! partitions each disk gets, how big, with which filesystem mounted where,
//! planned down to exact LBAs before anything is written.
//!
//! A tarball carries no partition table, so imprint has to make one. The
//! decision is pure, like every plan here: [`plan`] takes the [`Layout`]
//! (a preset or the deploy spec's `"layout"`), the facts of the disks
//! already selected and a seed, and returns a [`Plan`] that prints itself
//! ([`Plan`]'s `Display`) before a thin layer partitions, formats and
//! mounts. [`gpt_writes`] gives a disk plan's fresh GPT as bytes and
//! [`fstab`] the new root's `/etc/fstab`. The seed comes from outside, so
//! the same inputs give the same GUIDs and UUIDs and tests are stable; a
//! deploy (`rootfs::deploy`) seeds it with the boot NIC's MAC and the
//! clock, so every deploy gets new ones.
//!
//! The JSON form is a much smaller cousin of curtin's storage config and
//! RackN's plans: disks in order, each a list of partitions in order.
//!
//! ```json
//! "layout": {
//!   "disks": [
//!     { "partitions": [
//!         { "size": "512M", "type": "esp", "filesystem": "vfat",
//!           "mount": "/boot/efi", "options": "umask=0077" },
//!         { "size": "1M", "type": "bios-boot" },
//!         { "size": "4G", "type": "swap", "label": "swap" },
//!         { "size": "rest", "type": "linux", "filesystem": "ext4",
//!           "label": "root", "mount": "/", "options": "errors=remount-ro" }
//!     ] },
//!     { "disk": "/dev/sdb", "partitions": [
//!         { "size": "100%", "type": "linux-home", "filesystem": "xfs",
//!           "mount": "/home" }
//!     ] }
//!   ]
//! }
//! ```
//!
//! - `disk`: a selector as `imprint.disk=` takes it; only the first disk
//!   may leave it out, meaning the deploy's target disk.
//! - `size`: `512M`, `20G` (binary units K, M, G, T, or KiB…TiB; B for
//!   bytes), `25%` of the disk's usable space, or `rest`: what the others
//!   leave, at most one per disk, wherever it stands in the list.
//! - `type`: `esp`, `bios-boot`, `linux`, `swap`, `linux-home`, `lvm`,
//!   `raid`, or a raw GPT type GUID. `linux` is the generic Linux data
//!   type, not the Discoverable Partitions root type, which differs per
//!   architecture (give its GUID to get it).
//! - `filesystem`: `ext4`, `xfs`, `vfat`, `swap` or `none`; left out, it
//!   follows the type (`esp` vfat, `swap` swap, `linux` and `linux-home`
//!   ext4, the rest none).
//! - `label` (filesystem label and GPT name), `mount` (absolute; `/`
//!   exactly once in the layout), `options` (default `defaults`).
//!
//! Partitions are numbered in list order, from 1.
//!
//! `"layout": "with-swap"` names a preset instead ([`preset`]).
//!
//! Rules, and why:
//! - Every partition starts and ends on a 1 MiB boundary (or the physical
//!   block size, when larger): what parted and sgdisk do, right for 4K
//!   sectors, SSD erase blocks and RAID stripes. Fixed sizes round up to
//!   it; percentages and `rest` round down.
//! - Percentages are of the aligned usable space: from the first 1 MiB
//!   boundary after the primary GPT to the last one before the backup, so
//!   four `25%` always fit.
//! - Minimum sizes are errors, not warnings, since the mkfs would fail or
//!   make something firmware refuses: ext4 16 MiB, xfs 300 MiB (xfsprogs
//!   5.19+), vfat 32 MiB on 512-byte sectors and 260 MiB on 4Kn (FAT32
//!   needs 65525 clusters, which the UEFI spec asks of an ESP).

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Map, Value, json};

use crate::disk::gpt::Guid;
use crate::disk::partitions::DiskWrite;
use crate::text::human_size;

const MIB: u64 = 1 << 20;
/// Every tool writes 128 entries of 128 bytes; the UEFI spec asks for at
/// least 16 KiB of entry array.
const GPT_ENTRIES: u32 = 128;
const GPT_ENTRY_SIZE: u32 = 128;
const GPT_ARRAY_BYTES: u64 = 16 * 1024;

/// How big a partition is, as the layout says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Bytes(u64),
    /// Of the disk's aligned usable space, 1 to 100.
    Percent(u8),
    /// What the other partitions of the disk leave.
    Rest,
}

impl Size {
    /// `512M`, `20G`, `1T`, `64K`, `512MiB`, `4096B`, `25%`, `rest`.
    pub fn parse(text: &str) -> Option<Size> {
        if text == "rest" {
            return Some(Size::Rest);
        }
        if let Some(number) = text.strip_suffix('%') {
            if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let p: u8 = number.parse().ok()?;
            return (1..=100).contains(&p).then_some(Size::Percent(p));
        }
        let split = text.find(|c: char| !c.is_ascii_digit())?;
        let (number, unit) = text.split_at(split);
        let shift = match unit {
            "B" => 0,
            "K" | "KiB" => 10,
            "M" | "MiB" => 20,
            "G" | "GiB" => 30,
            "T" | "TiB" => 40,
            _ => return None,
        };
        if number.is_empty() {
            return None;
        }
        let n: u64 = number.parse().ok()?;
        let bytes = n.checked_mul(1 << shift)?;
        (bytes > 0).then_some(Size::Bytes(bytes))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Size::Rest => f.write_str("rest"),
            Size::Percent(p) => write!(f, "{p}%"),
            Size::Bytes(b) => {
                let (n, unit) = [(40, "T"), (30, "G"), (20, "M"), (10, "K")]
                    .into_iter()
                    .find(|(shift, _)| b % (1u64 << shift) == 0)
                    .map_or((*b, "B"), |(shift, unit)| (b >> shift, unit));
                write!(f, "{n}{unit}")
            }
        }
    }
}

/// The GPT partition type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    Esp,
    /// Where grub's i386-pc core image lives on a GPT disk.
    BiosBoot,
    Linux,
    Swap,
    LinuxHome,
    Lvm,
    Raid,
    Other(Guid),
}

const NAMED_TYPES: [(PartType, &str, Guid); 7] = [
    (
        PartType::Esp,
        "esp",
        Guid::from_text("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),
    ),
    (
        PartType::BiosBoot,
        "bios-boot",
        Guid::from_text("21686148-6449-6e6f-744e-656564454649"),
    ),
    (
        PartType::Linux,
        "linux",
        Guid::from_text("0fc63daf-8483-4772-8e79-3d69d8477de4"),
    ),
    (
        PartType::Swap,
        "swap",
        Guid::from_text("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"),
    ),
    (
        PartType::LinuxHome,
        "linux-home",
        Guid::from_text("933ac7e1-2eb4-4f13-b844-0e14e2aef915"),
    ),
    (
        PartType::Lvm,
        "lvm",
        Guid::from_text("e6d6d379-f507-44c2-a23c-238f2a3df928"),
    ),
    (
        PartType::Raid,
        "raid",
        Guid::from_text("a19d880f-05fc-4d3b-a006-743f0f84911e"),
    ),
];

impl PartType {
    pub fn parse(text: &str) -> Option<PartType> {
        NAMED_TYPES
            .iter()
            .find(|(_, name, _)| *name == text)
            .map(|(t, _, _)| *t)
            .or_else(|| Guid::parse(text).map(PartType::Other))
    }

    pub fn guid(self) -> Guid {
        match self {
            PartType::Other(g) => g,
            named => NAMED_TYPES
                .iter()
                .find(|(t, _, _)| *t == named)
                .map_or(Guid([0; 16]), |(_, _, g)| *g),
        }
    }

    /// The filesystem a partition of this type gets when the layout names
    /// none.
    fn default_filesystem(self) -> Filesystem {
        match self {
            PartType::Esp => Filesystem::Vfat,
            PartType::Swap => Filesystem::Swap,
            PartType::Linux | PartType::LinuxHome => Filesystem::Ext4,
            PartType::BiosBoot | PartType::Lvm | PartType::Raid | PartType::Other(_) => {
                Filesystem::None
            }
        }
    }
}

impl fmt::Display for PartType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PartType::Other(g) => write!(f, "{g}"),
            named => f.write_str(
                NAMED_TYPES
                    .iter()
                    .find(|(t, _, _)| t == named)
                    .map_or("?", |(_, name, _)| name),
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Ext4,
    Xfs,
    Vfat,
    Swap,
    None,
}

impl Filesystem {
    const ALL: [Filesystem; 5] = [
        Filesystem::Ext4,
        Filesystem::Xfs,
        Filesystem::Vfat,
        Filesystem::Swap,
        Filesystem::None,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
            Filesystem::Vfat => "vfat",
            Filesystem::Swap => "swap",
            Filesystem::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Filesystem> {
        Self::ALL.into_iter().find(|f| f.name() == text)
    }

    /// The longest label its mkfs takes, in bytes.
    fn max_label(self) -> usize {
        match self {
            Filesystem::Ext4 | Filesystem::Swap => 16,
            Filesystem::Xfs => 12,
            Filesystem::Vfat => 11,
            // Only the GPT name: 36 UTF-16 units.
            Filesystem::None => 36,
        }
    }

    /// The smallest partition its mkfs makes something usable of.
    fn min_size(self, logical_block_size: u32) -> u64 {
        match self {
            Filesystem::Ext4 => 16 * MIB,
            Filesystem::Xfs => 300 * MIB,
            Filesystem::Vfat if logical_block_size >= 4096 => 260 * MIB,
            Filesystem::Vfat => 32 * MIB,
            Filesystem::Swap | Filesystem::None => 0,
        }
    }
}

impl fmt::Display for Filesystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One partition as the layout asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub size: Size,
    pub kind: PartType,
    pub filesystem: Filesystem,
    pub label: Option<String>,
    pub mount: Option<String>,
    /// Mount options for fstab; `defaults` unless given.
    pub options: String,
}

impl PartitionSpec {
    /// A partition of `kind` with its default filesystem, no label, no
    /// mount point, `defaults`.
    pub fn new(size: Size, kind: PartType) -> PartitionSpec {
        PartitionSpec {
            size,
            kind,
            filesystem: kind.default_filesystem(),
            label: None,
            mount: None,
            options: "defaults".to_owned(),
        }
    }

    fn mounted(mut self, mount: &str, options: &str) -> PartitionSpec {
        self.mount = Some(mount.to_owned());
        self.options = options.to_owned();
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// A selector as `imprint.disk=` takes it; `None` only for the first
    /// disk: the deploy's target.
    pub disk: Option<String>,
    pub partitions: Vec<PartitionSpec>,
}

/// Disks in order, each with its partitions in order; all GPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disks: Vec<DiskLayout>,
}

/// The names [`preset`] knows.
pub const PRESETS: [&str; 3] = ["default", "with-swap", "xfs-root"];

/// The swap partition of `with-swap`: a fixed 4 GiB rather than a size
/// from the machine's RAM, so the plan depends only on the layout and the
/// disk (a machine with lots of RAM rarely wants that much swap, and a
/// layout can say any size).
pub const PRESET_SWAP: u64 = 4 << 30;

/// A named layout for the deploy's one target disk. `default`: an ESP
/// (vfat, 512 MiB, `/boot/efi`), a 1 MiB BIOS boot partition so grub can
/// install for both BIOS and UEFI, and an ext4 root filling the rest.
/// `with-swap` puts a [`PRESET_SWAP`] swap partition before the root;
/// `xfs-root` makes the root xfs. Options are those Debian's installer
/// writes (`umask=0077`, `errors=remount-ro`, `sw`).
pub fn preset(name: &str) -> Result<Layout> {
    let esp = PartitionSpec::new(Size::Bytes(512 * MIB), PartType::Esp)
        .mounted("/boot/efi", "umask=0077");
    let bios = PartitionSpec::new(Size::Bytes(MIB), PartType::BiosBoot);
    let ext4_root =
        PartitionSpec::new(Size::Rest, PartType::Linux).mounted("/", "errors=remount-ro");
    let partitions = match name {
        "default" => vec![esp, bios, ext4_root],
        "with-swap" => {
            let mut swap = PartitionSpec::new(Size::Bytes(PRESET_SWAP), PartType::Swap);
            swap.options = "sw".to_owned();
            vec![esp, bios, swap, ext4_root]
        }
        "xfs-root" => {
            let mut root = PartitionSpec::new(Size::Rest, PartType::Linux).mounted("/", "defaults");
            root.filesystem = Filesystem::Xfs;
            vec![esp, bios, root]
        }
        _ => bail!("no layout preset {name:?} (use {})", PRESETS.join(", ")),
    };
    Ok(Layout {
        disks: vec![DiskLayout {
            disk: None,
            partitions,
        }],
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `v` as an object with no keys but `allowed`.
fn object<'a>(v: &'a Value, path: &str, allowed: &[&str]) -> Result<&'a Map<String, Value>> {
    let Value::Object(map) = v else {
        bail!("{path}: expected an object, found {}", json_kind(v));
    };
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        bail!("{path}.{key}: unknown field (use {})", allowed.join(", "));
    }
    Ok(map)
}

/// An optional string field; `null` counts as absent, as in the spec.
fn string<'a>(map: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => bail!(
            "{path}.{key}: expected a string, found {}",
            json_kind(other)
        ),
    }
}

impl Layout {
    /// The deploy spec's `"layout"` value as JSON text.
    pub fn from_json(text: &str) -> Result<Layout> {
        let value: Value = serde_json::from_str(text).context("layout: not valid JSON")?;
        Layout::from_json_value(&value)
    }

    /// The deploy spec's `"layout"` value: a preset's name or an object.
    /// Errors name the field: `layout.disks[0].partitions[2].size: "12X"
    /// is not a size (use 512M, 20G, 25% or rest)`.
    pub fn from_json_value(value: &Value) -> Result<Layout> {
        if let Value::String(name) = value {
            return preset(name).context("layout");
        }
        let top = object(value, "layout", &["disks"])?;
        let Some(Value::Array(disks)) = top.get("disks") else {
            bail!("layout.disks: expected an array of disks, each with \"partitions\"");
        };
        let mut layout = Layout { disks: Vec::new() };
        for (d, disk) in disks.iter().enumerate() {
            let path = format!("layout.disks[{d}]");
            let map = object(disk, &path, &["disk", "partitions"])?;
            let selector = string(map, "disk", &path)?.map(str::to_owned);
            let Some(Value::Array(parts)) = map.get("partitions") else {
                bail!("{path}.partitions: expected an array of partitions");
            };
            let mut partitions = Vec::new();
            for (p, part) in parts.iter().enumerate() {
                partitions.push(partition_from_json(
                    part,
                    &format!("{path}.partitions[{p}]"),
                )?);
            }
            layout.disks.push(DiskLayout {
                disk: selector,
                partitions,
            });
        }
        layout.check()?;
        Ok(layout)
    }

    /// The JSON [`from_json_value`](Self::from_json_value) reads back to
    /// the same layout.
    pub fn to_json(&self) -> Value {
        let disks: Vec<Value> = self
            .disks
            .iter()
            .map(|disk| {
                let parts: Vec<Value> = disk
                    .partitions
                    .iter()
                    .map(|p| {
                        let mut m = Map::new();
                        m.insert("size".into(), json!(p.size.to_string()));
                        m.insert("type".into(), json!(p.kind.to_string()));
                        m.insert("filesystem".into(), json!(p.filesystem.name()));
                        if let Some(label) = &p.label {
                            m.insert("label".into(), json!(label));
                        }
                        if let Some(mount) = &p.mount {
                            m.insert("mount".into(), json!(mount));
                        }
                        m.insert("options".into(), json!(p.options));
                        Value::Object(m)
                    })
                    .collect();
                let mut m = Map::new();
                if let Some(selector) = &disk.disk {
                    m.insert("disk".into(), json!(selector));
                }
                m.insert("partitions".into(), Value::Array(parts));
                Value::Object(m)
            })
            .collect();
        json!({ "disks": disks })
    }

    /// What can be checked without the disks: counts, `rest`, types
    /// against filesystems, mount points, labels, options.
    pub fn check(&self) -> Result<()> {
        ensure!(!self.disks.is_empty(), "layout.disks: no disks");
        let mut selectors = BTreeSet::new();
        let mut mounts: BTreeSet<&str> = BTreeSet::new();
        for (d, disk) in self.disks.iter().enumerate() {
            let path = format!("layout.disks[{d}]");
            match &disk.disk {
                None if d > 0 => bail!(
                    "{path}.disk: missing (only the first disk may leave it out, meaning the deploy's target disk)"
                ),
                None => {}
                Some(s) if s.trim().is_empty() => bail!("{path}.disk: empty"),
                Some(s) => ensure!(
                    selectors.insert(s.as_str()),
                    "{path}.disk: {s:?} is named twice"
                ),
            }
            ensure!(
                !disk.partitions.is_empty(),
                "{path}.partitions: no partitions"
            );
            ensure!(
                disk.partitions.len() <= usize::try_from(GPT_ENTRIES)?,
                "{path}.partitions: {} partitions, but a GPT holds {GPT_ENTRIES}",
                disk.partitions.len()
            );
            let rests = disk
                .partitions
                .iter()
                .filter(|p| p.size == Size::Rest)
                .count();
            ensure!(
                rests <= 1,
                "{path}.partitions: {rests} partitions sized \"rest\" (at most one per disk)"
            );
            for (p, part) in disk.partitions.iter().enumerate() {
                let path = format!("{path}.partitions[{p}]");
                check_partition(part, &path)?;
                if let Some(mount) = &part.mount {
                    ensure!(
                        mounts.insert(mount),
                        "{path}.mount: {mount:?} is mounted twice (each mount point once)"
                    );
                }
            }
        }
        ensure!(
            mounts.contains("/"),
            "layout: no partition is mounted at \"/\" (exactly one must be)"
        );
        Ok(())
    }
}

fn partition_from_json(value: &Value, path: &str) -> Result<PartitionSpec> {
    let map = object(
        value,
        path,
        &["size", "type", "filesystem", "label", "mount", "options"],
    )?;
    let size_text = string(map, "size", path)?
        .with_context(|| format!("{path}.size: missing (use 512M, 20G, 25% or rest)"))?;
    let size = Size::parse(size_text).with_context(|| {
        format!("{path}.size: {size_text:?} is not a size (use 512M, 20G, 25% or rest)")
    })?;
    let valid_types = || {
        let names: Vec<&str> = NAMED_TYPES.iter().map(|(_, n, _)| *n).collect();
        format!("{} or a GPT type GUID", names.join(", "))
    };
    let type_text = string(map, "type", path)?
        .with_context(|| format!("{path}.type: missing (use {})", valid_types()))?;
    let kind = PartType::parse(type_text).with_context(|| {
        format!(
            "{path}.type: {type_text:?} is not a partition type (use {})",
            valid_types()
        )
    })?;
    let filesystem = match string(map, "filesystem", path)? {
        None => kind.default_filesystem(),
        Some(text) => Filesystem::parse(text).with_context(|| {
            let names: Vec<&str> = Filesystem::ALL.iter().map(|f| f.name()).collect();
            format!(
                "{path}.filesystem: {text:?} is not a filesystem (use {})",
                names.join(", ")
            )
        })?,
    };
    Ok(PartitionSpec {
        size,
        kind,
        filesystem,
        label: string(map, "label", path)?.map(str::to_owned),
        mount: string(map, "mount", path)?.map(str::to_owned),
        options: string(map, "options", path)?
            .unwrap_or("defaults")
            .to_owned(),
    })
}

/// Fine in fstab unescaped and on a mkfs command line: no whitespace, no
/// control characters.
fn plain(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

fn check_partition(part: &PartitionSpec, path: &str) -> Result<()> {
    let fs = part.filesystem;
    let wanted = match part.kind {
        PartType::BiosBoot | PartType::Lvm | PartType::Raid => Some(Filesystem::None),
        PartType::Esp => Some(Filesystem::Vfat),
        PartType::Swap => Some(Filesystem::Swap),
        PartType::Linux | PartType::LinuxHome | PartType::Other(_) => None,
    };
    if let Some(wanted) = wanted {
        ensure!(
            fs == wanted,
            "{path}.filesystem: type {} takes filesystem {wanted}, not {fs}",
            part.kind
        );
    }
    ensure!(
        fs != Filesystem::Swap || matches!(part.kind, PartType::Swap | PartType::Other(_)),
        "{path}.filesystem: swap belongs on a partition of type swap, not {}",
        part.kind
    );
    if let Some(mount) = &part.mount {
        ensure!(
            matches!(fs, Filesystem::Ext4 | Filesystem::Xfs | Filesystem::Vfat),
            "{path}.mount: filesystem {fs} is not mounted (leave out \"mount\")"
        );
        let components_ok = mount == "/"
            || (mount.starts_with('/')
                && !mount.ends_with('/')
                && mount[1..]
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".."));
        ensure!(
            components_ok && plain(mount),
            "{path}.mount: {mount:?} is not an absolute path such as /home (no //, ., .., spaces or trailing /)"
        );
        ensure!(
            mount != "/" || matches!(fs, Filesystem::Ext4 | Filesystem::Xfs),
            "{path}.filesystem: the root filesystem must be ext4 or xfs, not {fs}"
        );
    }
    if let Some(label) = &part.label {
        ensure!(
            plain(label) && label.len() <= fs.max_label(),
            "{path}.label: {label:?} is no label for {fs} (at most {} bytes, no spaces)",
            fs.max_label()
        );
        // mkfs.fat refuses these in a volume label (the FAT short-name
        // rules, mkfs.fat.c).
        ensure!(
            fs != Filesystem::Vfat || !label.contains(|c| "\"*+,./:;<=>?[\\]|".contains(c)),
            "{path}.label: {label:?} is no label for vfat (none of \"*+,./:;<=>?[\\]|)"
        );
    }
    ensure!(
        plain(&part.options) && !part.options.contains('#'),
        "{path}.options: {:?} is not a mount option list such as defaults,noatime",
        part.options
    );
    Ok(())
}

/// What the deploy knows of a selected disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFacts {
    /// Its device: `/dev/sda`, `/dev/nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
    /// 512 or 4096: what LBAs count.
    pub logical_block_size: u32,
    pub physical_block_size: u32,
}

/// A filesystem UUID in text byte order (as `blkid` prints it), unlike
/// `disk::gpt::Guid`, which keeps GPT's mixed-endian order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FsUuid(pub [u8; 16]);

impl fmt::Display for FsUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for FsUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FsUuid({self})")
    }
}

/// How the new filesystem is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsId {
    /// ext4, xfs and swap: `mkfs -U`, `mkswap -U`.
    Uuid(FsUuid),
    /// vfat: `mkfs.vfat -i`, shown as `XXXX-XXXX`.
    VolumeId(u32),
    None,
}

impl fmt::Display for FsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsId::Uuid(u) => write!(f, "{u}"),
            FsId::VolumeId(id) => write!(f, "{:04X}-{:04X}", id >> 16, id & 0xffff),
            FsId::None => f.write_str("-"),
        }
    }
}

/// One partition placed on its disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPartition {
    /// 1-based, the entry's index in the GPT array + 1.
    pub number: u32,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub size_bytes: u64,
    pub kind: PartType,
    pub filesystem: Filesystem,
    pub label: Option<String>,
    /// The GPT partition name: the label, else the mount point, else the
    /// type's name.
    pub gpt_name: String,
    pub mount: Option<String>,
    pub options: String,
    pub part_guid: Guid,
    pub fs_id: FsId,
}

/// One disk's plan: a fresh GPT and its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    pub name: String,
    pub size_bytes: u64,
    pub logical_block_size: u32,
    pub disk_guid: Guid,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub partitions: Vec<PlannedPartition>,
}

impl DiskPlan {
    /// The kernel's name of partition `number`: `/dev/sda1`,
    /// `/dev/nvme0n1p1`.
    pub fn partition_device(&self, number: u32) -> String {
        if self.name.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{}p{number}", self.name)
        } else {
            format!("{}{number}", self.name)
        }
    }

    fn disk_lbas(&self) -> u64 {
        self.size_bytes / u64::from(self.logical_block_size)
    }
}

/// Every disk of a layout placed, in the layout's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub disks: Vec<DiskPlan>,
}

/// SplitMix64 (Steele, Lea and Flood, 2014): a few lines, every seed fine,
/// and the same seed always the same GUIDs.
struct Ids(u64);

impl Ids {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A version 4 (random) UUID, RFC 9562 section 5.4, in text order.
    fn uuid(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_be_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_be_bytes());
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        b
    }

    /// A version 4 GUID in GPT's stored order: the version nibble sits in
    /// text byte 6, which GPT stores at byte 7.
    fn guid(&mut self) -> Guid {
        let t = self.uuid();
        Guid([
            t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13],
            t[14], t[15],
        ])
    }

    fn volume_id(&mut self) -> u32 {
        u32::try_from(self.next_u64() >> 32).unwrap_or_default()
    }
}

/// A seed from the boot NIC's MAC: stable across redeploys of one
/// machine, different between machines.
pub fn seed_from_mac(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac);
    u64::from_be_bytes(b)
}

/// Places every partition of `layout` on `disks` (the selected disks, in
/// the layout's order), drawing every GUID, UUID and volume id from
/// `seed`. Errors name the disk and partition: `layout does not fit
/// /dev/sda (8.0 GiB): partitions need 9.5 GiB of 8.0 GiB usable`.
pub fn plan(layout: &Layout, disks: &[DiskFacts], seed: u64) -> Result<Plan> {
    layout.check()?;
    ensure!(
        disks.len() == layout.disks.len(),
        "layout names {} disk(s) but {} were selected",
        layout.disks.len(),
        disks.len()
    );
    let mut ids = Ids(seed);
    let planned = layout
        .disks
        .iter()
        .zip(disks)
        .enumerate()
        .map(|(d, (spec, facts))| plan_disk(d, spec, facts, &mut ids))
        .collect::<Result<Vec<_>>>()?;
    Ok(Plan { disks: planned })
}

fn align_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

fn plan_disk(d: usize, spec: &DiskLayout, facts: &DiskFacts, ids: &mut Ids) -> Result<DiskPlan> {
    let name = &facts.name;
    let bs = facts.logical_block_size;
    let pbs = facts.physical_block_size;
    ensure!(
        bs == 512 || bs == 4096,
        "{name}: unsupported logical block size {bs} (512 or 4096)"
    );
    ensure!(
        pbs >= bs && pbs.is_power_of_two(),
        "{name}: physical block size {pbs} is not a power of two at least the logical {bs}"
    );
    let bs64 = u64::from(bs);
    let disk_lbas = facts.size_bytes / bs64;
    let array_blocks = GPT_ARRAY_BYTES / bs64;
    // Protective MBR, header, array; the backup mirrors it at the end.
    let first_usable = 2 + array_blocks;
    let last_usable = disk_lbas
        .checked_sub(2 + array_blocks)
        .filter(|&l| l >= first_usable)
        .with_context(|| {
            format!(
                "{name} ({}) is too small for a GPT",
                human_size(facts.size_bytes)
            )
        })?;
    let align = MIB.max(u64::from(pbs)) / bs64;
    let area_start = align_up(first_usable, align);
    let area_end = (last_usable + 1) / align * align;
    let usable_bytes = area_end.saturating_sub(area_start) * bs64;
    let align_bytes = align * bs64;

    let path = |p: usize| format!("layout.disks[{d}].partitions[{p}]");
    let mut sizes = Vec::with_capacity(spec.partitions.len());
    for (p, part) in spec.partitions.iter().enumerate() {
        sizes.push(match part.size {
            Size::Bytes(b) => Some(
                b.div_ceil(align_bytes)
                    .checked_mul(align_bytes)
                    .context("partition sizes overflow")?,
            ),
            Size::Percent(pc) => {
                let share = u128::from(usable_bytes) * u128::from(pc) / 100;
                let share = u64::try_from(share)? / align_bytes * align_bytes;
                ensure!(
                    share > 0,
                    "{}.size: {pc}% of {name} is less than {}",
                    path(p),
                    human_size(align_bytes)
                );
                Some(share)
            }
            Size::Rest => None,
        });
    }
    let fixed = sizes
        .iter()
        .flatten()
        .try_fold(0u64, |a, &b| a.checked_add(b))
        .context("partition sizes overflow")?;
    let has_rest = sizes.iter().any(Option::is_none);
    let need = fixed.saturating_add(if has_rest { align_bytes } else { 0 });
    ensure!(
        need <= usable_bytes,
        "layout does not fit {name} ({}): partitions need {}{} of {} usable",
        human_size(facts.size_bytes),
        human_size(need),
        if has_rest {
            format!(" (with {} for \"rest\")", human_size(align_bytes))
        } else {
            String::new()
        },
        human_size(usable_bytes)
    );
    let rest = usable_bytes - fixed;

    let disk_guid = ids.guid();
    let mut start = area_start;
    let mut partitions = Vec::with_capacity(spec.partitions.len());
    for (p, (part, size)) in spec.partitions.iter().zip(sizes).enumerate() {
        let size_bytes = size.unwrap_or(rest);
        let min = part.filesystem.min_size(bs);
        ensure!(
            size_bytes >= min,
            "{}.size: {} is too small for {} (at least {} on {name})",
            path(p),
            human_size(size_bytes),
            part.filesystem,
            human_size(min)
        );
        let blocks = size_bytes / bs64;
        let number = u32::try_from(p + 1)?;
        let gpt_name = gpt_name(part);
        let part_guid = ids.guid();
        let fs_id = match part.filesystem {
            Filesystem::Ext4 | Filesystem::Xfs | Filesystem::Swap => FsId::Uuid(FsUuid(ids.uuid())),
            Filesystem::Vfat => FsId::VolumeId(ids.volume_id()),
            Filesystem::None => FsId::None,
        };
        partitions.push(PlannedPartition {
            number,
            first_lba: start,
            last_lba: start + blocks - 1,
            size_bytes,
            kind: part.kind,
            filesystem: part.filesystem,
            label: part.label.clone(),
            gpt_name,
            mount: part.mount.clone(),
            options: part.options.clone(),
            part_guid,
            fs_id,
        });
        start += blocks;
    }
    Ok(DiskPlan {
        name: name.clone(),
        size_bytes: facts.size_bytes,
        logical_block_size: bs,
        disk_guid,
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        partitions,
    })
}

/// The label, else the mount point, else the type's name, cut to the 36
/// UTF-16 units a GPT entry holds (only a long mount point can be longer:
/// labels are checked).
fn gpt_name(part: &PartitionSpec) -> String {
    let full = part
        .label
        .clone()
        .or_else(|| part.mount.clone())
        .unwrap_or_else(|| part.kind.to_string());
    let mut units = 0;
    full.chars()
        .take_while(|c| {
            units += c.len_utf16();
            units <= 36
        })
        .collect()
}

/// The plan as printed before anything is written: a line per disk, then
/// one per partition.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for disk in &self.disks {
            writeln!(
                f,
                "{}: {}, {}-byte sectors, new GPT {} (usable LBAs {}-{})",
                disk.name,
                human_size(disk.size_bytes),
                disk.logical_block_size,
                disk.disk_guid,
                disk.first_usable_lba,
                disk.last_usable_lba
            )?;
            let bs = u64::from(disk.logical_block_size);
            for p in &disk.partitions {
                writeln!(
                    f,
                    "  {} LBA {}-{} ({} at {}) {} {}{}{}",
                    disk.partition_device(p.number),
                    p.first_lba,
                    p.last_lba,
                    human_size(p.size_bytes),
                    human_size(p.first_lba * bs),
                    p.kind,
                    p.filesystem,
                    p.label
                        .as_ref()
                        .map_or(String::new(), |l| format!(" label {l}")),
                    p.mount
                        .as_ref()
                        .map_or(String::new(), |m| format!(" on {m}")),
                )?;
            }
        }
        Ok(())
    }
}

/// The new root's `/etc/fstab`: every mounted filesystem, parents before
/// children, then every swap partition, all by `UUID=`. Options as the
/// layout gives them; dump 0; pass as Debian's installer writes it: 1 for
/// `/` and for a vfat filesystem (its `UUID=0123-4567 /boot/efi vfat
/// umask=0077 0 1`, quoted in Debian bug report "default mount point and
/// options for the ESP", debian-installer 20241227), 2 for the others, 0
/// for swap.
pub fn fstab(plan: &Plan) -> String {
    let all: Vec<&PlannedPartition> = plan.disks.iter().flat_map(|d| &d.partitions).collect();
    let mut mounted: Vec<(&PlannedPartition, &str)> = all
        .iter()
        .filter_map(|p| p.mount.as_deref().map(|m| (*p, m)))
        .collect();
    let depth = |m: &str| m.split('/').filter(|c| !c.is_empty()).count();
    mounted.sort_by(|a, b| depth(a.1).cmp(&depth(b.1)).then(a.1.cmp(b.1)));
    let mut text = String::from("# <file system> <mount point> <type> <options> <dump> <pass>\n");
    for (p, mount) in mounted {
        let pass = if mount == "/" || p.filesystem == Filesystem::Vfat {
            1
        } else {
            2
        };
        text.push_str(&format!(
            "UUID={} {mount} {} {} 0 {pass}\n",
            p.fs_id, p.filesystem, p.options
        ));
    }
    for p in all.iter().filter(|p| p.filesystem == Filesystem::Swap) {
        text.push_str(&format!("UUID={} none swap {} 0 0\n", p.fs_id, p.options));
    }
    text
}

/// A fresh GPT for `disk` (UEFI 2.10, section 5.3): the protective MBR, the
/// primary header and entry array, the backup array and header at the end.
/// The backup goes first and the MBR last, so a table cut short by a
/// failure is not taken for a GPT.
pub fn gpt_writes(disk: &DiskPlan) -> Result<Vec<DiskWrite>> {
    let bs = u64::from(disk.logical_block_size);
    let block = usize::try_from(disk.logical_block_size)?;
    let disk_lbas = disk.disk_lbas();
    let array_blocks = GPT_ARRAY_BYTES / bs;
    ensure!(
        disk.first_usable_lba == 2 + array_blocks
            && disk_lbas >= disk.last_usable_lba + 2 + array_blocks
            && disk.last_usable_lba >= disk.first_usable_lba,
        "{}: usable LBAs {}-{} do not fit a GPT on {disk_lbas} blocks",
        disk.name,
        disk.first_usable_lba,
        disk.last_usable_lba
    );
    let last_lba = disk_lbas - 1;
    let backup_array_lba = last_lba - array_blocks;

    let mut array = vec![0u8; usize::try_from(GPT_ARRAY_BYTES)?];
    let entry = usize::try_from(GPT_ENTRY_SIZE)?;
    for p in &disk.partitions {
        ensure!(
            (1..=GPT_ENTRIES).contains(&p.number)
                && disk.first_usable_lba <= p.first_lba
                && p.first_lba <= p.last_lba
                && p.last_lba <= disk.last_usable_lba,
            "{}: partition {} (LBA {}-{}) does not fit the GPT",
            disk.name,
            p.number,
            p.first_lba,
            p.last_lba
        );
        let at = usize::try_from(p.number - 1)? * entry;
        let e = &mut array[at..at + entry];
        e[..16].copy_from_slice(&p.kind.guid().0);
        e[16..32].copy_from_slice(&p.part_guid.0);
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        let units: Vec<u16> = p.gpt_name.encode_utf16().collect();
        ensure!(
            units.len() <= 36,
            "partition {} name {:?} is longer than GPT's 36 UTF-16 units",
            p.number,
            p.gpt_name
        );
        for (i, u) in units.iter().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
    }
    let array_crc = crc32fast::hash(&array);
    let header = |my_lba: u64, alternate: u64, entries_lba: u64| {
        let mut h = vec![0u8; block];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&disk.first_usable_lba.to_le_bytes());
        h[48..56].copy_from_slice(&disk.last_usable_lba.to_le_bytes());
        h[56..72].copy_from_slice(&disk.disk_guid.0);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&GPT_ENTRIES.to_le_bytes());
        h[84..88].copy_from_slice(&GPT_ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    // One partition of type 0xEE from LBA 1 over the whole disk (capped at
    // 32 bits), UEFI 2.10 section 5.2.3; CHS values as sgdisk writes them.
    let mut mbr = vec![0u8; block];
    let pte = &mut mbr[446..462];
    pte[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    pte[4] = 0xee;
    pte[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    pte[8..12].copy_from_slice(&1u32.to_le_bytes());
    let mbr_size = u32::try_from(disk_lbas - 1).unwrap_or(u32::MAX);
    pte[12..16].copy_from_slice(&mbr_size.to_le_bytes());
    mbr[510..512].copy_from_slice(&[0x55, 0xaa]);

    Ok(vec![
        DiskWrite {
            offset: backup_array_lba * bs,
            what: format!("backup GPT entry array at LBA {backup_array_lba}"),
            bytes: array.clone(),
        },
        DiskWrite {
            offset: last_lba * bs,
            what: format!("backup GPT header at LBA {last_lba}"),
            bytes: header(last_lba, 1, backup_array_lba),
        },
        DiskWrite {
            offset: 2 * bs,
            what: "primary GPT entry array at LBA 2".to_owned(),
            bytes: array,
        },
        DiskWrite {
            offset: bs,
            what: "primary GPT header at LBA 1".to_owned(),
            bytes: header(1, last_lba, 2),
        },
        DiskWrite {
            offset: 0,
            what: "protective MBR".to_owned(),
            bytes: mbr,
        },
    ])
}
