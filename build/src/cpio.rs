//! A reproducible writer for the newc ("070701") cpio format the kernel
//! unpacks as initramfs (Documentation/driver-api/early-userspace/buffer-format.rst),
//! and a small reader used to check it.
//!
//! Reproducible means: entries sorted by path (which puts parents before
//! children), one fixed mtime, uid/gid 0, inode numbers assigned in that
//! order. Nothing from the host's file metadata leaks in.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFMT: u32 = 0o170_000;

/// What an entry is, with what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File(Vec<u8>),
    Symlink(String),
    CharDevice { major: u32, minor: u32 },
}

/// One archive member. `path` is relative (`dev/console`): the kernel
/// unpacks relative to the root of rootfs, and gen_init_cpio strips the `/`
/// as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    pub path: String,
    /// Permission bits only (e.g. `0o755`); the type bits come from `kind`.
    pub permissions: u32,
    pub kind: EntryKind,
}

impl CpioEntry {
    fn type_bits(&self) -> u32 {
        match self.kind {
            EntryKind::Directory => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::Symlink(_) => S_IFLNK,
            EntryKind::CharDevice { .. } => S_IFCHR,
        }
    }

    fn data(&self) -> &[u8] {
        match &self.kind {
            EntryKind::File(contents) => contents,
            EntryKind::Symlink(target) => target.as_bytes(),
            EntryKind::Directory | EntryKind::CharDevice { .. } => &[],
        }
    }
}

/// An archive under construction. Adding a path creates its missing parent
/// directories (0755), so the archive is always complete.
#[derive(Debug, Clone, Default)]
pub struct CpioArchive {
    entries: BTreeMap<String, CpioEntry>,
}

/// `/dev/./console/` -> `dev/console`; rejects `..` and empty paths, which
/// would let an entry escape or alias another.
fn clean_path(path: &str) -> Result<String> {
    let mut components = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => bail!("cpio path {path} contains '..'"),
            component => components.push(component),
        }
    }
    ensure!(!components.is_empty(), "cpio path {path:?} names the root");
    Ok(components.join("/"))
}

impl CpioArchive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_directory(&mut self, path: &str, permissions: u32) -> Result<()> {
        self.insert(path, permissions, EntryKind::Directory)
    }

    pub fn add_file(&mut self, path: &str, permissions: u32, contents: Vec<u8>) -> Result<()> {
        self.insert(path, permissions, EntryKind::File(contents))
    }

    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, 0o777, EntryKind::Symlink(target.to_owned()))
    }

    pub fn add_char_device(
        &mut self,
        path: &str,
        permissions: u32,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        self.insert(path, permissions, EntryKind::CharDevice { major, minor })
    }

    fn insert(&mut self, path: &str, permissions: u32, kind: EntryKind) -> Result<()> {
        ensure!(
            permissions & !0o7777 == 0,
            "cpio entry {path}: permissions {permissions:o} carry more than mode bits"
        );
        let path = clean_path(path)?;
        let mut parent_end = 0;
        while let Some(offset) = path[parent_end..].find('/') {
            let parent = &path[..parent_end + offset];
            match self.entries.get(parent) {
                None => {
                    self.entries.insert(
                        parent.to_owned(),
                        CpioEntry {
                            path: parent.to_owned(),
                            permissions: 0o755,
                            kind: EntryKind::Directory,
                        },
                    );
                }
                Some(entry) if entry.kind != EntryKind::Directory => {
                    bail!("cpio entry {path}: parent {parent} is not a directory")
                }
                Some(_) => {}
            }
            parent_end += offset + 1;
        }
        let entry = CpioEntry {
            path: path.clone(),
            permissions,
            kind,
        };
        match self.entries.get(&path) {
            // Adding a directory twice (or one that a child already implied)
            // is harmless; the explicit permissions win.
            Some(existing)
                if existing.kind == EntryKind::Directory && entry.kind == EntryKind::Directory => {}
            Some(_) => bail!("cpio entry {path} added twice"),
            None => {}
        }
        self.entries.insert(path, entry);
        Ok(())
    }

    /// Entries in archive order.
    pub fn entries(&self) -> impl Iterator<Item = &CpioEntry> {
        self.entries.values()
    }

    /// The archive bytes. `mtime` is the one timestamp every entry gets
    /// (0, or `SOURCE_DATE_EPOCH`).
    pub fn to_bytes(&self, mtime: u32) -> Result<Vec<u8>> {
        let mut subdirectories: BTreeMap<&str, u32> = BTreeMap::new();
        for entry in self.entries.values() {
            if entry.kind == EntryKind::Directory
                && let Some((parent, _)) = entry.path.rsplit_once('/')
            {
                *subdirectories.entry(parent).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        for (inode, entry) in (1u32..).zip(self.entries.values()) {
            // A directory's link count is "." plus its name in the parent plus
            // each subdirectory's "..". Regular files must say 1: the kernel
            // treats nlink >= 2 as a hard link to an earlier inode.
            let nlink = match entry.kind {
                EntryKind::Directory => {
                    2 + subdirectories
                        .get(entry.path.as_str())
                        .copied()
                        .unwrap_or(0)
                }
                _ => 1,
            };
            let (rdev_major, rdev_minor) = match entry.kind {
                EntryKind::CharDevice { major, minor } => (major, minor),
                _ => (0, 0),
            };
            let header = Header {
                inode,
                mode: entry.type_bits() | entry.permissions,
                nlink,
                mtime,
                rdev_major,
                rdev_minor,
            };
            write_member(&mut out, &header, &entry.path, entry.data())?;
        }
        let trailer = Header {
            inode: 0,
            mode: 0,
            nlink: 1,
            mtime: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        write_member(&mut out, &trailer, TRAILER, &[])?;
        // Like cpio(1) and gen_init_cpio, end on a 512-byte boundary; the
        // kernel skips zero padding between concatenated archives.
        out.resize(out.len().next_multiple_of(512), 0);
        Ok(out)
    }
}

struct Header {
    inode: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    rdev_major: u32,
    rdev_minor: u32,
}

fn pad_to_four(out: &mut Vec<u8>) {
    out.resize(out.len().next_multiple_of(4), 0);
}

fn write_member(out: &mut Vec<u8>, header: &Header, name: &str, data: &[u8]) -> Result<()> {
    let file_size =
        u32::try_from(data.len()).with_context(|| format!("cpio entry {name} exceeds 4 GiB"))?;
    // The name size counts the terminating NUL.
    let name_size = u32::try_from(name.len() + 1)
        .with_context(|| format!("cpio entry name {name} is too long"))?;
    let fields = [
        header.inode,
        header.mode,
        0, // uid
        0, // gid
        header.nlink,
        header.mtime,
        file_size,
        0, // major of the device holding the file: meaningless here
        0,
        header.rdev_major,
        header.rdev_minor,
        name_size,
        0, // check: only used by the "070702" crc variant
    ];
    out.extend_from_slice(MAGIC);
    for field in fields {
        out.extend_from_slice(format!("{field:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad_to_four(out);
    out.extend_from_slice(data);
    pad_to_four(out);
    Ok(())
}

/// One member as stored, every header field kept, for tests and inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMember {
    pub inode: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub name: String,
    pub data: Vec<u8>,
}

impl StoredMember {
    /// Back to the entry the writer was given.
    pub fn to_entry(&self) -> Result<CpioEntry> {
        let kind = match self.mode & S_IFMT {
            S_IFDIR => EntryKind::Directory,
            S_IFREG => EntryKind::File(self.data.clone()),
            S_IFLNK => EntryKind::Symlink(
                String::from_utf8(self.data.clone())
                    .with_context(|| format!("symlink target of {}", self.name))?,
            ),
            S_IFCHR => EntryKind::CharDevice {
                major: self.rdev_major,
                minor: self.rdev_minor,
            },
            other => bail!("cpio member {} has unsupported type {other:o}", self.name),
        };
        Ok(CpioEntry {
            path: self.name.clone(),
            permissions: self.mode & 0o7777,
            kind,
        })
    }
}

fn read_hex_field(bytes: &[u8], at: usize, field: usize) -> Result<u32> {
    let start = at + 6 + field * 8;
    let text = std::str::from_utf8(&bytes[start..start + 8])
        .with_context(|| format!("cpio header at byte {at}: field {field} is not ASCII"))?;
    u32::from_str_radix(text, 16)
        .with_context(|| format!("cpio header at byte {at}: field {field} is not hex"))
}

/// Reads a newc archive up to its trailer (members only, trailer excluded).
pub fn read_archive(bytes: &[u8]) -> Result<Vec<StoredMember>> {
    let mut members = Vec::new();
    let mut at = 0;
    loop {
        ensure!(
            bytes.len() >= at + HEADER_LEN,
            "cpio archive ends at byte {} inside a header",
            bytes.len()
        );
        ensure!(
            &bytes[at..at + 6] == MAGIC,
            "cpio header at byte {at} has no 070701 magic"
        );
        let field = |index| read_hex_field(bytes, at, index);
        let file_size = usize::try_from(field(6)?)?;
        let name_size = usize::try_from(field(11)?)?;
        ensure!(name_size >= 1, "cpio header at byte {at} has an empty name");
        let name_start = at + HEADER_LEN;
        let data_start = (name_start + name_size).next_multiple_of(4);
        let data_end = data_start + file_size;
        ensure!(
            bytes.len() >= data_end,
            "cpio member at byte {at} runs past the end of the archive"
        );
        ensure!(
            bytes[name_start + name_size - 1] == 0,
            "cpio name at byte {name_start} is not NUL-terminated"
        );
        let name = std::str::from_utf8(&bytes[name_start..name_start + name_size - 1])
            .with_context(|| format!("cpio name at byte {name_start} is not UTF-8"))?
            .to_owned();
        if name == TRAILER {
            return Ok(members);
        }
        members.push(StoredMember {
            inode: field(0)?,
            mode: field(1)?,
            uid: field(2)?,
            gid: field(3)?,
            nlink: field(4)?,
            mtime: field(5)?,
            rdev_major: field(9)?,
            rdev_minor: field(10)?,
            name,
            data: bytes[data_start..data_end].to_vec(),
        });
        at = data_end.next_multiple_of(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CpioArchive {
        let mut archive = CpioArchive::new();
        archive
            .add_file("init", 0o755, b"#!/bin/true\n".to_vec())
            .unwrap();
        archive
            .add_char_device("/dev/console", 0o600, 5, 1)
            .unwrap();
        archive
            .add_file(
                "lib/modules/6.1.0/kernel/fs/ext4/ext4.ko",
                0o644,
                vec![0x7f, b'E', b'L', b'F', 1],
            )
            .unwrap();
        archive.add_symlink("bin/sh", "../init").unwrap();
        archive.add_directory("tmp", 0o1777).unwrap();
        archive.add_directory("lib", 0o755).unwrap();
        archive
    }

    #[test]
    fn known_entry_has_the_exact_newc_layout() {
        let mut archive = CpioArchive::new();
        archive.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        let bytes = archive.to_bytes(0).unwrap();
        // Fields: magic, ino, mode, uid, gid, nlink, mtime, filesize,
        // devmajor, devminor, rdevmajor, rdevminor, namesize, check.
        let expected_text = concat!(
            // dev: 040755, nlink 2, name "dev\0"; 110 + 4 = 114, padded to 116.
            "070701",
            "00000001",
            "000041ED",
            "00000000",
            "00000000",
            "00000002",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000004",
            "00000000",
            "dev\0",
            "\0\0",
            // dev/console: 020600, rdev 5:1, name 12 bytes; 122, padded to 124.
            "070701",
            "00000002",
            "00002180",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000005",
            "00000001",
            "0000000C",
            "00000000",
            "dev/console\0",
            "\0\0",
            // The trailer: nlink 1, name 11 bytes; 121, padded to 124.
            "070701",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000001",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "00000000",
            "0000000B",
            "00000000",
            "TRAILER!!!\0",
            "\0\0\0",
        );
        // Compared as text first so a mismatch shows which field differs.
        assert_eq!(
            String::from_utf8_lossy(&bytes[..expected_text.len()]),
            expected_text
        );
        let mut expected = expected_text.as_bytes().to_vec();
        expected.resize(512, 0);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn file_data_is_padded_to_four_bytes() {
        let mut archive = CpioArchive::new();
        archive.add_file("a", 0o644, b"hello".to_vec()).unwrap();
        let bytes = archive.to_bytes(7).unwrap();
        // Header 110 + "a\0" = 112, data 5 -> 117, padded to 120, then the trailer.
        assert_eq!(&bytes[112..117], b"hello");
        assert_eq!(&bytes[117..120], &[0, 0, 0]);
        assert_eq!(&bytes[120..126], MAGIC);
        let members = read_archive(&bytes).unwrap();
        assert_eq!(members[0].mtime, 7);
        assert_eq!(members[0].mode, 0o100_644);
    }

    #[test]
    fn round_trip_gives_the_same_entries_and_bytes() {
        let archive = sample();
        let bytes = archive.to_bytes(1_700_000_000).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        let members = read_archive(&bytes).unwrap();
        let entries: Vec<CpioEntry> = members.iter().map(|m| m.to_entry().unwrap()).collect();
        let expected: Vec<CpioEntry> = archive.entries().cloned().collect();
        assert_eq!(entries, expected);

        let mut rebuilt = CpioArchive::new();
        for entry in entries {
            rebuilt
                .insert(&entry.path, entry.permissions, entry.kind)
                .unwrap();
        }
        assert_eq!(rebuilt.to_bytes(1_700_000_000).unwrap(), bytes);
    }

    #[test]
    fn order_inodes_and_link_counts_are_fixed() {
        let members = read_archive(&sample().to_bytes(0).unwrap()).unwrap();
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/6.1.0",
                "lib/modules/6.1.0/kernel",
                "lib/modules/6.1.0/kernel/fs",
                "lib/modules/6.1.0/kernel/fs/ext4",
                "lib/modules/6.1.0/kernel/fs/ext4/ext4.ko",
                "tmp",
            ]
        );
        let inodes: Vec<u32> = members.iter().map(|m| m.inode).collect();
        assert_eq!(inodes, (1..=13).collect::<Vec<u32>>());
        let nlink = |name: &str| members.iter().find(|m| m.name == name).unwrap().nlink;
        assert_eq!(nlink("lib"), 3);
        assert_eq!(nlink("lib/modules/6.1.0/kernel/fs/ext4"), 2);
        assert_eq!(nlink("init"), 1);
        assert!(
            members
                .iter()
                .all(|m| m.uid == 0 && m.gid == 0 && m.mtime == 0)
        );
        assert_eq!(
            members.iter().find(|m| m.name == "tmp").unwrap().mode,
            0o041_777
        );
    }

    #[test]
    fn insertion_order_does_not_matter() {
        let mut reversed = CpioArchive::new();
        reversed.add_directory("lib", 0o755).unwrap();
        reversed.add_directory("tmp", 0o1777).unwrap();
        reversed.add_symlink("bin/sh", "../init").unwrap();
        reversed
            .add_file(
                "lib/modules/6.1.0/kernel/fs/ext4/ext4.ko",
                0o644,
                vec![0x7f, b'E', b'L', b'F', 1],
            )
            .unwrap();
        reversed
            .add_char_device("dev/console", 0o600, 5, 1)
            .unwrap();
        reversed
            .add_file("./init", 0o755, b"#!/bin/true\n".to_vec())
            .unwrap();
        assert_eq!(reversed.to_bytes(0).unwrap(), sample().to_bytes(0).unwrap());
    }

    #[test]
    fn bad_paths_and_duplicates_are_rejected() {
        let mut archive = CpioArchive::new();
        assert!(
            archive
                .add_file("../etc/passwd", 0o644, Vec::new())
                .is_err()
        );
        assert!(archive.add_directory("/", 0o755).is_err());
        archive.add_file("init", 0o755, Vec::new()).unwrap();
        let error = archive.add_file("init", 0o755, Vec::new()).unwrap_err();
        assert_eq!(error.to_string(), "cpio entry init added twice");
        assert!(archive.add_file("init/x", 0o644, Vec::new()).is_err());
        assert!(archive.add_file("x", 0o100_644, Vec::new()).is_err());
    }

    #[test]
    fn reader_rejects_truncated_archives() {
        let bytes = sample().to_bytes(0).unwrap();
        assert!(read_archive(&bytes[..200]).is_err());
        assert!(read_archive(&bytes[1..]).is_err());
    }
}
