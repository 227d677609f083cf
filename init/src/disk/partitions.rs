//! The partition table of a written disk, whichever kind it is, and the thin
//! layer that applies planned table writes and waits for the kernel's
//! partition device nodes.
//!
//! Reading is pure over a `read_at` callback ([`read_partition_table`]);
//! [`read_partition_table_at`] opens a device or image file for it.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::gpt::{self, Gpt, Guid};
use super::mbr;
use crate::pipeline::target::BlockTarget;

/// Reads exactly `buf.len()` bytes at a byte offset of the disk.
pub type ReadAt<'a> = dyn FnMut(u64, &mut [u8]) -> io::Result<()> + 'a;

/// One write of a plan: whole blocks at a block-aligned offset.
#[derive(Clone, PartialEq, Eq)]
pub struct DiskWrite {
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// For the log: `backup GPT header at LBA 131071`.
    pub what: String,
}

impl std::fmt::Debug for DiskWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DiskWrite({} bytes at {}: {})",
            self.bytes.len(),
            self.offset,
            self.what
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKind {
    Gpt {
        disk_guid: Guid,
        first_usable_lba: u64,
        last_usable_lba: u64,
    },
    Mbr {
        disk_signature: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// As the kernel numbers it: `vda<number>`.
    pub number: u32,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub size_bytes: u64,
    /// GPT only.
    pub type_guid: Option<Guid>,
    /// MBR only; an extended partition (0x05, 0x0F, 0x85) is listed too, as
    /// the kernel lists it, though it holds no filesystem.
    pub mbr_type: Option<u8>,
    /// As `blkid` prints PARTUUID: the GPT unique GUID in lowercase, or
    /// `<disk signature>-<number>` in hex for MBR (`1234abcd-01`).
    pub part_uuid: Option<String>,
    /// The GPT partition name (PARTLABEL); none when empty or on MBR.
    pub name: Option<String>,
    /// GPT attribute bits.
    pub attributes: u64,
    /// MBR boot flag.
    pub bootable: bool,
}

#[derive(Debug, Clone)]
pub struct PartitionTable {
    pub kind: TableKind,
    /// The block size the table was laid out for (LBAs count these).
    pub block_size: u32,
    pub partitions: Vec<Partition>,
    /// What was wrong but did not stop the read, for the log.
    pub problems: Vec<String>,
    /// The GPT as read, for [`relocate`](Self::plan_relocation) and growing.
    pub gpt: Option<Gpt>,
    mbr: Option<(Vec<u8>, mbr::Mbr)>,
}

/// What [`PartitionTable::plan_grow`] would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowPlan {
    pub number: u32,
    pub old_last_lba: u64,
    /// Equal to `old_last_lba` when the partition already fills the disk.
    pub new_last_lba: u64,
    pub writes: Vec<DiskWrite>,
}

/// Reads the partition table of a disk of `disk_size` bytes whose logical
/// blocks are `block_size` bytes; `None` (an image file, which has no
/// blocks) takes the size the GPT was laid out for, else 512. A protective
/// MBR, or a GPT header at LBA 1, means GPT; otherwise an MBR. A GPT laid
/// out for the other block size (512 on a 4Kn disk or the reverse) is still
/// read, with a problem saying the kernel will not see it.
pub fn read_partition_table(
    read_at: &mut ReadAt,
    disk_size: u64,
    disk_block_size: Option<u32>,
) -> Result<PartitionTable> {
    if disk_size < 512 {
        bail!("disk of {disk_size} bytes is too small for a partition table");
    }
    let mut first = vec![0u8; 8192.min(usize::try_from(disk_size).unwrap_or(8192))];
    read_at(0, &mut first).context("reading the first blocks")?;
    let gpt_at = |bs: u32| {
        usize::try_from(bs)
            .ok()
            .and_then(|at| first.get(at..))
            .is_some_and(gpt::has_signature)
    };
    let protective = mbr::is_protective(&first);
    let block_size = disk_block_size.unwrap_or(if gpt_at(4096) && !gpt_at(512) {
        4096
    } else {
        512
    });
    if protective || gpt_at(512) || gpt_at(4096) {
        let other = if block_size == 4096 { 512 } else { 4096 };
        // Where the primary's signature is tells the block size; when the
        // primary is gone, the disk's block size is the best guess.
        let sizes = if gpt_at(other) && !gpt_at(block_size) {
            [other, block_size]
        } else {
            [block_size, other]
        };
        let mut first_error = None;
        for bs in sizes {
            match gpt::read_gpt(read_at, disk_size, bs) {
                Ok(g) => {
                    let mut table = from_gpt(g);
                    if !protective {
                        table.problems.push(
                            "GPT without a protective MBR; Linux ignores such a GPT".to_owned(),
                        );
                    }
                    if disk_block_size.is_some_and(|d| d != bs) {
                        table.problems.push(format!(
                            "GPT laid out for {bs}-byte blocks on a disk with {block_size}-byte blocks; the kernel will not see its partitions"
                        ));
                    }
                    return Ok(table);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let mbr_says = if protective {
            "protective MBR present, but "
        } else {
            ""
        };
        let e = first_error.context("no GPT tried")?;
        bail!("{mbr_says}{e:#}");
    }
    let m = mbr::read_mbr(read_at, disk_size, block_size).context("no GPT, and no MBR either")?;
    let bs = u64::from(block_size);
    let partitions = m
        .partitions
        .iter()
        .map(|p| Partition {
            number: p.number,
            first_lba: p.first_lba,
            last_lba: p.first_lba + p.sectors.saturating_sub(1),
            size_bytes: p.sectors * bs,
            type_guid: None,
            mbr_type: Some(p.mbr_type),
            part_uuid: Some(format!("{:08x}-{:02x}", m.disk_signature, p.number)),
            name: None,
            attributes: 0,
            bootable: p.bootable,
        })
        .collect();
    let mut block0 = vec![0u8; usize::try_from(block_size)?];
    read_at(0, &mut block0).context("reading the MBR at LBA 0")?;
    Ok(PartitionTable {
        kind: TableKind::Mbr {
            disk_signature: m.disk_signature,
        },
        block_size,
        partitions,
        problems: m.problems.clone(),
        gpt: None,
        mbr: Some((block0, m)),
    })
}

fn from_gpt(g: Gpt) -> PartitionTable {
    let bs = u64::from(g.block_size);
    let mut problems = g.problems.clone();
    let mut partitions = Vec::new();
    for e in g.entries() {
        if e.last_lba < e.first_lba
            || e.first_lba < g.header.first_usable_lba
            || e.last_lba > g.header.last_usable_lba
        {
            problems.push(format!(
                "partition {} (LBA {}..={}) lies outside the usable LBAs {}..={}; skipped",
                e.number,
                e.first_lba,
                e.last_lba,
                g.header.first_usable_lba,
                g.header.last_usable_lba
            ));
            continue;
        }
        partitions.push(Partition {
            number: e.number,
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            size_bytes: (e.last_lba - e.first_lba + 1) * bs,
            type_guid: Some(e.type_guid),
            mbr_type: None,
            part_uuid: Some(e.unique_guid.to_string()),
            name: (!e.name.is_empty()).then_some(e.name),
            attributes: e.attributes,
            bootable: false,
        });
    }
    PartitionTable {
        kind: TableKind::Gpt {
            disk_guid: g.header.disk_guid,
            first_usable_lba: g.header.first_usable_lba,
            last_usable_lba: g.header.last_usable_lba,
        },
        block_size: g.block_size,
        partitions,
        problems,
        gpt: Some(g),
        mbr: None,
    }
}

impl PartitionTable {
    /// The writes that make the table right for a disk of `disk_size`
    /// bytes: for a GPT, the backup moved to the end of the disk (see
    /// [`gpt::relocate_backup_gpt`]), the old backup header zeroed; nothing
    /// when the GPT is already whole and at the end. An MBR has nothing at
    /// the end of the disk: no writes.
    pub fn plan_relocation(&self, disk_size: u64) -> Result<Vec<DiskWrite>> {
        let Some(g) = &self.gpt else {
            return Ok(Vec::new());
        };
        let last_lba = (disk_size / u64::from(g.block_size)).saturating_sub(1);
        let writes = gpt::relocate_backup_gpt(g, disk_size, true)?;
        if g.primary_valid && g.backup_lba == Some(last_lba) && g.header.alternate_lba == last_lba {
            // Whole and in place; only a protective MBR of the wrong size
            // (made by a tool that sized it for another disk) is fixed.
            return Ok(writes.into_iter().filter(|w| w.offset == 0).collect());
        }
        Ok(writes)
    }

    /// The writes that grow the partition ending last to the end of a disk
    /// of `disk_size` bytes (`imprint.grow=1`), including the relocation.
    /// GPT: see [`gpt::grow_last_partition`]. MBR: only a primary partition
    /// is grown, up to the MBR's 2 TiB limit at 512-byte blocks.
    pub fn plan_grow(&self, disk_size: u64) -> Result<GrowPlan> {
        if let Some(g) = &self.gpt {
            let growth = gpt::grow_last_partition(g, disk_size, true)?;
            return Ok(GrowPlan {
                number: growth.number,
                old_last_lba: growth.old_last_lba,
                new_last_lba: growth.new_last_lba,
                writes: growth.writes,
            });
        }
        let Some((block0, m)) = &self.mbr else {
            bail!("no partition table to grow");
        };
        let growth = mbr::grow_last_primary(block0, m, disk_size / u64::from(self.block_size))?;
        let first = m
            .partitions
            .iter()
            .find(|p| p.number == growth.number)
            .map_or(0, |p| p.first_lba);
        Ok(GrowPlan {
            number: growth.number,
            old_last_lba: first + growth.old_sectors - 1,
            new_last_lba: first + growth.new_sectors - 1,
            writes: growth.writes,
        })
    }
}

/// Opens a block device or image file read-only and reads its partition
/// table. A device's size and logical block size come from the kernel; an
/// image file's block size is the one its GPT was laid out for.
pub fn read_partition_table_at(path: &Path) -> Result<PartitionTable> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("inspecting {}", path.display()))?;
    let (size, block_size) = if meta.file_type().is_block_device() {
        (
            crate::sys::block::size_bytes(&file)
                .with_context(|| format!("reading the size of {}", path.display()))?,
            Some(
                crate::sys::block::logical_block_size(&file)
                    .with_context(|| format!("reading the block size of {}", path.display()))?,
            ),
        )
    } else {
        (meta.len(), None)
    };
    read_partition_table(&mut |at, buf| file.read_exact_at(buf, at), size, block_size)
        .with_context(|| format!("reading the partition table of {}", path.display()))
}

/// Applies `writes` in order through `target`, then syncs it.
pub fn apply_writes<T: BlockTarget + ?Sized>(target: &mut T, writes: &[DiskWrite]) -> Result<()> {
    for w in writes {
        log::info!("{}: writing the {}", target.describe(), w.what);
        target
            .write_at(&w.bytes, w.offset)
            .with_context(|| format!("writing the {} to {}", w.what, target.describe()))?;
    }
    target
        .sync()
        .with_context(|| format!("syncing {}", target.describe()))
}

/// Applies `writes` in order to an open file, then syncs it; `name` is for
/// messages. The tests' stand-in for a disk.
#[cfg(test)]
pub fn apply_writes_to_file(file: &File, name: &str, writes: &[DiskWrite]) -> Result<()> {
    for w in writes {
        log::info!("{name}: writing the {}", w.what);
        file.write_all_at(&w.bytes, w.offset)
            .with_context(|| format!("writing the {} to {name}", w.what))?;
    }
    file.sync_all().with_context(|| format!("syncing {name}"))
}

/// How often the device nodes are looked for.
const POLL: Duration = Duration::from_millis(50);

/// Waits up to `timeout` for the device nodes of partitions `numbers` of
/// `disk_name` (`/dev/vda2`, `/dev/nvme0n1p2`), as seen by `exists`, and
/// returns their paths in the order asked. In PID 1, devtmpfs creates them
/// as soon as the kernel has re-read the table; on a host, udev does,
/// shortly after. The error names the missing nodes and those the kernel
/// did create: `partition /dev/vda2 did not appear within 10 s (the kernel
/// saw: vda1)`.
pub fn wait_for_partition_nodes(
    disk_name: &str,
    numbers: &[u32],
    timeout: Duration,
    exists: impl Fn(&Path) -> bool,
) -> Result<Vec<PathBuf>> {
    let paths: Vec<PathBuf> = numbers
        .iter()
        .map(|&n| super::partition_path(disk_name, n))
        .collect();
    let start = Instant::now();
    loop {
        let missing: Vec<&PathBuf> = paths.iter().filter(|p| !exists(p)).collect();
        if missing.is_empty() {
            return Ok(paths);
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            // GPT numbers go up to 128 by default; a one-off scan on failure.
            let highest = numbers.iter().copied().max().unwrap_or(0).max(128);
            let seen: Vec<String> = (1..=highest)
                .map(|n| super::partition_path(disk_name, n))
                .filter(|p| exists(p))
                .filter_map(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .collect();
            let seen = if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            };
            let names: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
            let noun = if names.len() == 1 {
                "partition"
            } else {
                "partitions"
            };
            bail!(
                "{noun} {} did not appear within {} (the kernel saw: {seen})",
                names.join(", "),
                human_duration(timeout)
            );
        }
        std::thread::sleep(POLL.min(timeout - elapsed));
    }
}

fn human_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::cell::Cell;
    use std::process::Command;

    use crate::pipeline::target::FileTarget;

    const MIB: u64 = 1 << 20;

    /// Runs a partitioning tool and returns its stdout; `stdin` feeds
    /// `sfdisk` scripts.
    fn run(program: &str, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut child = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn ok(program: &str, args: &[&str], stdin: Option<&str>) -> String {
        let (success, out) = run(program, args, stdin);
        assert!(success, "{program} {args:?}: {out}");
        out
    }

    fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
        let path = dir.join(name);
        File::create(&path).unwrap().set_len(size).unwrap();
        path
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    /// A 32 MiB GPT image: an ESP, a DPS root with a fixed unique GUID, and
    /// a data partition with a non-ASCII name filling the rest.
    fn sgdisk_image(dir: &Path) -> PathBuf {
        let img = sparse(dir, "gpt.img", 32 * MIB);
        ok(
            "sgdisk",
            &[
                "-U",
                "01234567-89AB-CDEF-0123-456789ABCDEF",
                "-n",
                "1:2048:+1M",
                "-t",
                "1:ef00",
                "-c",
                "1:EFI system",
                "-n",
                "2:0:+8M",
                "-t",
                "2:8304",
                "-c",
                "2:root",
                "-u",
                "2:4F68BCE3-0000-1111-2222-333344445555",
                "-A",
                "2:set:59",
                "-n",
                "3:0:0",
                "-c",
                "3:dätä ü",
                s(&img),
            ],
            None,
        );
        img
    }

    /// `sgdisk -i N` as (first, last, unique GUID, name).
    fn sgdisk_info(img: &Path, n: u32) -> (u64, u64, String, String) {
        let out = ok("sgdisk", &["-i", &n.to_string(), s(img)], None);
        let field = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("{key} in {out}"))
                .trim()
                .to_owned()
        };
        let number = |key: &str| field(key).split(' ').next().unwrap().parse().unwrap();
        let name = field("Partition name:");
        (
            number("First sector:"),
            number("Last sector:"),
            field("Partition unique GUID:"),
            name.trim_matches('\'').to_owned(),
        )
    }

    /// Grows `img` to `size`, as writing a smaller image to a larger disk
    /// leaves it.
    fn enlarge(img: &Path, size: u64) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(img)
            .unwrap()
            .set_len(size)
            .unwrap();
    }

    fn apply(img: &Path, writes: &[DiskWrite]) {
        let file = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        apply_writes_to_file(&file, s(img), writes).unwrap();
    }

    fn patch(img: &Path, offset: u64, bytes: &[u8]) {
        let file = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        file.write_all_at(bytes, offset).unwrap();
    }

    fn assert_sgdisk_clean(img: &Path) {
        let out = ok("sgdisk", &["-v", s(img)], None);
        assert!(out.contains("No problems found"), "{out}");
    }

    #[test]
    fn gpt_from_sgdisk_matches_sgdisk_and_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let img = sgdisk_image(dir.path());
        let t = read_partition_table_at(&img).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.block_size, 512);
        let TableKind::Gpt {
            disk_guid,
            first_usable_lba,
            last_usable_lba,
        } = t.kind
        else {
            panic!("{:?}", t.kind)
        };
        let blkid = ok("blkid", &["-p", "-o", "export", s(&img)], None);
        assert!(
            blkid.contains(&format!("PTUUID={disk_guid}\n")),
            "{disk_guid} vs {blkid}"
        );
        assert_eq!(
            disk_guid.to_string(),
            "01234567-89ab-cdef-0123-456789abcdef"
        );
        let dump = ok("sfdisk", &["-d", s(&img)], None);
        assert!(
            dump.contains(&format!("first-lba: {first_usable_lba}\n")),
            "{dump}"
        );
        assert!(
            dump.contains(&format!("last-lba: {last_usable_lba}\n")),
            "{dump}"
        );

        let numbers: Vec<u32> = t.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3]);
        for p in &t.partitions {
            let (first, last, uuid, name) = sgdisk_info(&img, p.number);
            assert_eq!(
                (p.first_lba, p.last_lba),
                (first, last),
                "partition {}",
                p.number
            );
            assert_eq!(p.size_bytes, (last - first + 1) * 512);
            assert_eq!(p.part_uuid.as_deref(), Some(uuid.to_lowercase().as_str()));
            assert_eq!(p.name.as_deref(), Some(name.as_str()));
            assert_eq!(p.mbr_type, None);
        }
        assert_eq!(t.partitions[0].type_guid, Some(Guid::ESP));
        assert_eq!(t.partitions[1].type_guid, Some(Guid::ROOT_X86_64));
        assert_eq!(t.partitions[2].type_guid, Some(Guid::LINUX_DATA));
        assert_eq!(
            t.partitions[1].part_uuid.as_deref(),
            Some("4f68bce3-0000-1111-2222-333344445555")
        );
        assert_eq!(t.partitions[1].attributes, 1 << 59);
        assert_eq!(t.partitions[2].name.as_deref(), Some("dätä ü"));
    }

    #[test]
    fn mbr_from_sfdisk_matches_sfdisk_and_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse(dir.path(), "mbr.img", 64 * MIB);
        ok(
            "sfdisk",
            &["--no-reread", "--no-tell-kernel", s(&img)],
            Some(
                "label: dos\nlabel-id: 0x1234abcd\n\
                 start=2048, size=16384, type=83, bootable\n\
                 size=8MiB, type=82\n\
                 size=4MiB, type=83\n\
                 size=40MiB, type=5\n\
                 size=8MiB, type=c\n\
                 size=4MiB, type=83\n",
            ),
        );
        let t = read_partition_table_at(&img).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(
            t.kind,
            TableKind::Mbr {
                disk_signature: 0x1234_abcd
            }
        );
        let blkid = ok("blkid", &["-p", "-o", "export", s(&img)], None);
        assert!(blkid.contains("PTUUID=1234abcd\nPTTYPE=dos\n"), "{blkid}");
        // `sfdisk -d` lines: `mbr.img5 : start=…, size=…, type=83`.
        let dump = ok("sfdisk", &["-d", s(&img)], None);
        let listed: Vec<(u32, u64, u64, u8, bool)> = dump
            .lines()
            .filter_map(|l| l.split_once(" : "))
            .map(|(dev, rest)| {
                let n = dev.trim().rsplit("img").next().unwrap().parse().unwrap();
                let field = |k: &str| {
                    rest.split(',')
                        .find_map(|f| f.trim().strip_prefix(k))
                        .unwrap()
                        .trim()
                        .to_owned()
                };
                (
                    n,
                    field("start=").parse().unwrap(),
                    field("size=").parse().unwrap(),
                    u8::from_str_radix(&field("type="), 16).unwrap(),
                    rest.contains("bootable"),
                )
            })
            .collect();
        assert_eq!(listed.len(), 6, "{dump}");
        let ours: Vec<(u32, u64, u64, u8, bool)> = t
            .partitions
            .iter()
            .map(|p| {
                (
                    p.number,
                    p.first_lba,
                    p.size_bytes / 512,
                    p.mbr_type.unwrap(),
                    p.bootable,
                )
            })
            .collect();
        assert_eq!(ours, listed);
        assert_eq!(t.partitions[4].number, 5);
        assert_eq!(t.partitions[5].part_uuid.as_deref(), Some("1234abcd-06"));
        assert_eq!(t.partitions[0].part_uuid.as_deref(), Some("1234abcd-01"));
        // Nothing lives at the end of an MBR disk.
        assert!(t.plan_relocation(128 * MIB).unwrap().is_empty());
    }

    #[test]
    fn gpt_with_4096_byte_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse(dir.path(), "4kn.img", 32 * MIB);
        // sgdisk cannot set a block size on a file; fdisk can.
        ok(
            "fdisk",
            &["-b", "4096", s(&img)],
            // With one partition, the expert `n` (name) does not ask which.
            Some("g\nn\n1\n\n+8M\nx\nn\nboot\nr\nn\n2\n\n\nw\n"),
        );
        let listing = ok("fdisk", &["-b", "4096", "-l", s(&img)], None);
        let t = read_partition_table_at(&img).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.block_size, 4096);
        let [p1, p2] = &t.partitions[..] else {
            panic!("{:?}", t.partitions)
        };
        assert_eq!((p1.first_lba, p1.last_lba), (256, 2303), "{listing}");
        assert_eq!(p1.size_bytes, 8 * MIB);
        assert_eq!(p1.name.as_deref(), Some("boot"));
        assert_eq!(p2.first_lba, 2304);
        let row: Vec<&str> = listing
            .lines()
            .find(|l| l.starts_with(&format!("{}2 ", s(&img))))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(row[1..3], ["2304", &p2.last_lba.to_string()], "{listing}");
        // Read as a 4Kn disk: no complaint. Read as a 512-byte disk: found,
        // with the mismatch said.
        let bytes = std::fs::read(&img).unwrap();
        let mut read_at = |at: u64, buf: &mut [u8]| slice_read(&bytes, at, buf);
        let t4 = read_partition_table(&mut read_at, 32 * MIB, Some(4096)).unwrap();
        assert!(t4.problems.is_empty(), "{:?}", t4.problems);
        let t512 = read_partition_table(&mut read_at, 32 * MIB, Some(512)).unwrap();
        assert_eq!(t512.block_size, 4096);
        assert!(
            t512.problems[0].contains("laid out for 4096-byte blocks on a disk with 512-byte"),
            "{:?}",
            t512.problems
        );

        // Moved onto a 64 MiB disk: fdisk complains, then not.
        enlarge(&img, 64 * MIB);
        let before = ok("fdisk", &["-b", "4096", "-l", s(&img)], None);
        assert!(
            before.contains("backup GPT table is not on the end"),
            "{before}"
        );
        let t = read_partition_table_at(&img).unwrap();
        assert!(
            t.problems[0]
                .contains("backup GPT header at LBA 8191, not at the end of the disk (LBA 16383)"),
            "{:?}",
            t.problems
        );
        let plan = t.plan_grow(64 * MIB).unwrap();
        apply(&img, &plan.writes);
        let after = ok("fdisk", &["-b", "4096", "-l", s(&img)], None);
        assert!(!after.contains("GPT"), "{after}");
        let t = read_partition_table_at(&img).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(t.gpt.as_ref().unwrap().backup_lba, Some(16383));
        // 16383 − 5 array blocks − 1 = 16377 usable; aligned down to 1 MiB.
        assert_eq!(t.partitions[1].last_lba, 16383 - 256);
        assert_eq!(plan.new_last_lba, 16383 - 256);
    }

    fn slice_read(bytes: &[u8], at: u64, buf: &mut [u8]) -> io::Result<()> {
        let at = usize::try_from(at).map_err(|_| io::ErrorKind::UnexpectedEof)?;
        let src = bytes
            .get(at..at + buf.len())
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }

    #[test]
    fn corrupt_primary_falls_back_to_the_backup_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let img = sgdisk_image(dir.path());
        let good = read_partition_table_at(&img).unwrap();
        // The header's last usable LBA.
        patch(&img, 512 + 48, &[0x42]);
        let t = read_partition_table_at(&img).unwrap();
        assert_eq!(t.partitions, good.partitions);
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(
            t.problems[0].starts_with("primary GPT header CRC mismatch at LBA 1 (stored 0x"),
            "{:?}",
            t.problems
        );
        assert!(
            t.problems[0].ends_with("; using the backup GPT header at LBA 65535"),
            "{:?}",
            t.problems
        );
        // Rebuilt from the backup, the primary is whole again.
        apply(&img, &t.plan_relocation(32 * MIB).unwrap());
        assert_sgdisk_clean(&img);
        let fixed = read_partition_table_at(&img).unwrap();
        assert!(fixed.problems.is_empty(), "{:?}", fixed.problems);
        assert_eq!(fixed.gpt.unwrap().used, gpt::Which::Primary);

        // A bad primary entry array (partition 1's name) is caught by its CRC.
        patch(&img, 1024 + 56, b"X");
        let t = read_partition_table_at(&img).unwrap();
        assert_eq!(t.partitions, good.partitions);
        assert!(
            t.problems[0].starts_with("primary GPT entry array CRC mismatch at LBA 2"),
            "{:?}",
            t.problems
        );
    }

    #[test]
    fn corrupt_backup_is_reported_and_both_corrupt_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let img = sgdisk_image(dir.path());
        patch(&img, 65535 * 512 + 40, &[0x42]);
        let t = read_partition_table_at(&img).unwrap();
        assert_eq!(t.partitions.len(), 3);
        assert_eq!(t.problems.len(), 1, "{:?}", t.problems);
        assert!(
            t.problems[0].starts_with("backup GPT header CRC mismatch at LBA 65535"),
            "{:?}",
            t.problems
        );
        patch(&img, 512 + 40, &[0x42]);
        let msg = format!("{:#}", read_partition_table_at(&img).unwrap_err());
        assert!(
            msg.contains(
                "protective MBR present, but no valid GPT: primary GPT header CRC mismatch at LBA 1"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("backup GPT header CRC mismatch at LBA 65535"),
            "{msg}"
        );
        assert!(msg.starts_with("reading the partition table of "), "{msg}");
    }

    #[test]
    fn backup_moves_to_the_end_of_a_larger_disk() {
        let dir = tempfile::tempdir().unwrap();
        let img = sgdisk_image(dir.path());
        enlarge(&img, 64 * MIB);
        let (_, before) = run("sgdisk", &["-v", s(&img)], None);
        assert!(
            before.contains("doesn't reside\nat the end of the disk"),
            "{before}"
        );
        let t = read_partition_table_at(&img).unwrap();
        assert_eq!(
            t.problems,
            ["backup GPT header at LBA 65535, not at the end of the disk (LBA 131071)"]
        );
        let plan = t.plan_relocation(64 * MIB).unwrap();
        let whats: Vec<&str> = plan.iter().map(|w| w.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "backup GPT entry array at LBA 131039",
                "backup GPT header at LBA 131071",
                "primary GPT header at LBA 1",
                "old backup GPT header at LBA 65535 (zeroed)",
                "protective MBR (resized to the disk)",
            ]
        );
        // Through the deploy's own target, as the deploy applies it.
        let mut target = FileTarget::open(&img).unwrap();
        apply_writes(&mut target, &plan).unwrap();
        drop(target);

        let out = ok("sgdisk", &["-v", s(&img)], None);
        assert!(out.contains("No problems found"), "{out}");
        let dump = ok("sfdisk", &["-d", s(&img)], None);
        assert!(dump.contains("last-lba: 131038\n"), "{dump}");
        let bytes = std::fs::read(&img).unwrap();
        let old = 65535 * 512;
        assert!(bytes[old..old + 512].iter().all(|&b| b == 0));
        let t = read_partition_table_at(&img).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        // Partitions are untouched; the free space is now at the end.
        assert_eq!(t.partitions[2].last_lba, 65502);
        // Once in place, there is nothing left to do.
        assert!(t.plan_relocation(64 * MIB).unwrap().is_empty());
    }

    #[test]
    fn a_disk_smaller_than_the_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = sgdisk_image(dir.path());
        let t = read_partition_table_at(&img).unwrap();
        let msg = t.plan_relocation(16 * MIB).unwrap_err().to_string();
        assert_eq!(
            msg,
            "partition 3 ends at LBA 65502, past the last usable LBA 32734 of a 16.0 MiB disk"
        );
    }

    #[test]
    fn last_partition_grows_to_the_end_of_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let img = sgdisk_image(dir.path());
        enlarge(&img, 64 * MIB);
        let t = read_partition_table_at(&img).unwrap();
        let plan = t.plan_grow(64 * MIB).unwrap();
        assert_eq!(plan.number, 3);
        assert_eq!(plan.old_last_lba, 65502);
        // Last usable LBA 131038, aligned down to 1 MiB (2048 blocks).
        assert_eq!(plan.new_last_lba, 129_023);
        apply(&img, &plan.writes);
        assert_sgdisk_clean(&img);
        // The image's partition 3 ended unaligned; the grown one does not.
        let out = ok("sgdisk", &["-v", s(&img)], None);
        assert!(!out.contains("Caution"), "{out}");
        let (first, last, _, name) = sgdisk_info(&img, 3);
        assert_eq!((first, last), (20480, 129_023));
        assert_eq!(name, "dätä ü");
        let dump = ok("sfdisk", &["-d", s(&img)], None);
        assert!(dump.contains("last-lba: 131038\n"), "{dump}");
        let t = read_partition_table_at(&img).unwrap();
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        // Growing again changes nothing.
        let again = t.plan_grow(64 * MIB).unwrap();
        assert_eq!(again.new_last_lba, again.old_last_lba);
    }

    #[test]
    fn mbr_last_primary_grows() {
        let dir = tempfile::tempdir().unwrap();
        let img = sparse(dir.path(), "mbr.img", 32 * MIB);
        ok(
            "sfdisk",
            &["--no-reread", "--no-tell-kernel", s(&img)],
            Some("label: dos\nsize=8MiB, type=83\ntype=83\n"),
        );
        enlarge(&img, 64 * MIB);
        let t = read_partition_table_at(&img).unwrap();
        let plan = t.plan_grow(64 * MIB).unwrap();
        assert_eq!(plan.number, 2);
        assert_eq!(plan.new_last_lba, 131_071);
        apply(&img, &plan.writes);
        let dump = ok("sfdisk", &["-d", s(&img)], None);
        let p2 = dump.lines().find(|l| l.contains("mbr.img2 :")).unwrap();
        assert!(
            p2.contains(&format!("size={:>12},", 131_072 - 18432)),
            "{dump}"
        );
    }

    #[test]
    fn partition_nodes_are_waited_for() {
        let calls = Cell::new(0);
        let exists = |p: &Path| {
            calls.set(calls.get() + 1);
            p == Path::new("/dev/nvme0n1p1")
                || (p == Path::new("/dev/nvme0n1p3") && calls.get() > 4)
        };
        let paths =
            wait_for_partition_nodes("nvme0n1", &[3, 1], Duration::from_secs(5), exists).unwrap();
        assert_eq!(
            paths,
            [
                PathBuf::from("/dev/nvme0n1p3"),
                PathBuf::from("/dev/nvme0n1p1")
            ]
        );
        assert!(calls.get() > 4);
    }

    #[test]
    fn missing_partition_nodes_are_named() {
        let exists = |p: &Path| p == Path::new("/dev/vda1");
        let msg = wait_for_partition_nodes("vda", &[1, 2], Duration::from_millis(120), exists)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "partition /dev/vda2 did not appear within 120 ms (the kernel saw: vda1)"
        );
        let msg = wait_for_partition_nodes("vda", &[2, 3], Duration::ZERO, |_| false)
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "partitions /dev/vda2, /dev/vda3 did not appear within 0 s (the kernel saw: none)"
        );
    }

    #[test]
    fn no_partition_table_is_an_error() {
        let zeros = vec![0u8; 1 << 20];
        let mut read_at = |at: u64, buf: &mut [u8]| slice_read(&zeros, at, buf);
        let msg = format!(
            "{:#}",
            read_partition_table(&mut read_at, 1 << 20, None).unwrap_err()
        );
        assert_eq!(
            msg,
            "no GPT, and no MBR either: no MBR signature (0x55AA) at LBA 0"
        );
    }
}
