//! The proof: a tree using every feature the extractor claims (setuid,
//! sticky, file capabilities, user and trusted xattrs, access and default
//! ACLs, hard links, absolute and relative symlinks, a device, a FIFO, a
//! 64 MiB sparse file, a 200-character name, foreign owners, nanosecond
//! mtimes), archived by GNU tar, extracted by GNU tar and by imprint, and
//! the two trees compared entry by entry.
//!
//! Runs as root (as the tests do here and in CI) on a `/tmp` that keeps
//! xattrs and ACLs (ext4); where a feature is missing the test fails
//! rather than compare two trees that both lack it. Needs `tar`,
//! `setfacl`, `setfattr`, `setcap` (`scripts/setup` installs them).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read as _;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::installed::{Resolver, RootDir};
use crate::pipeline::progress::NoProgress;

const SPARSE_SIZE: u64 = 64 << 20;

/// Builds the source tree with the tools a rootfs build would use.
const BUILD: &str = r#"
set -eu
mkdir -p usr/bin usr/lib etc dev run srv/acldir sticky sgid deep
cp /etc/passwd /etc/group etc/
printf 'setuid binary' > usr/bin/su && chmod 4755 usr/bin/su
printf 'setgid binary' > usr/bin/wall && chown 0:5 usr/bin/wall && chmod 2755 usr/bin/wall
printf 'pretend ping' > usr/bin/ping && chmod 0755 usr/bin/ping
setcap cap_net_raw+ep usr/bin/ping
# Owned by someone else: chown after chmod, or after setcap, would clear these.
printf 'user setuid' > usr/bin/suid-user && chown 1234:5678 usr/bin/suid-user && chmod 6755 usr/bin/suid-user
printf 'user cap' > usr/bin/cap-user && chown 1234:5678 usr/bin/cap-user && setcap cap_net_raw+ep usr/bin/cap-user
chmod 1777 sticky
chmod 2775 sgid
printf 'notes' > etc/noted
setfattr -n user.note -v 'hello world' etc/noted
setfattr -n trusted.binary -v 0x00ff10 etc/noted
printf 'acl' > srv/aclfile && setfacl -m u:1000:rx srv/aclfile
setfacl -m u:1000:rx srv/acldir && setfacl -d -m u:1000:rx srv/acldir
printf 'shared' > usr/lib/hard1 && ln usr/lib/hard1 usr/lib/hard2 && ln usr/lib/hard1 etc/hard3
ln -s /usr/bin/ping usr/bin/abs-link
ln -s ../lib/hard1 usr/bin/rel-link
ln -s /nowhere/at/all dangling
mknod dev/null c 1 3
mknod dev/loop9 b 7 9
mkfifo run/fifo
# Never opened to set these: the symlink, device and FIFO are named.
setfattr -h -n trusted.on-link -v L usr/bin/abs-link
setfattr -n trusted.on-dev -v D dev/null
setfattr -n trusted.on-fifo -v F run/fifo
truncate -s 64M usr/lib/sparse
printf 'first region' | dd of=usr/lib/sparse bs=1 seek=1048576 conv=notrunc status=none
printf 'second region' | dd of=usr/lib/sparse bs=1 seek=41943040 conv=notrunc status=none
long=$(printf 'n%.0s' $(seq 200))
printf 'long name' > "deep/$long"
mkdir -p deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/this-path-is-well-over-one-hundred-characters
printf 'deep' > deep/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t/u/v/w/x/y/z/this-path-is-well-over-one-hundred-characters/file
printf 'big ids' > srv/bigid && chown 3000000:4000000 srv/bigid
printf 'owned' > srv/owned && chown 1234:5678 srv/owned && chmod 0640 srv/owned
chown -h 1234:5678 usr/bin/rel-link
chown 1234:5678 deep
touch -d '2001-02-03 04:05:06.123456789' srv/owned usr/bin/su etc/noted
touch -h -d '1999-12-31 23:59:59.5' usr/bin/abs-link
touch -d '2010-01-01 00:00:00.000000001' dev/null run/fifo
find . -depth -type d -exec touch -d '2020-05-06 07:08:09.987654321' {} +
touch -d '2021-01-01 12:00:00.25' deep
"#;

fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("running sh");
    assert!(
        out.status.success(),
        "{script}\nfailed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything a deployed system cares about in one entry.
#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: Option<String>,
    link: Option<PathBuf>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut list = vec![0u8; 64 * 1024];
    let n = rustix::fs::llistxattr(path, &mut list[..]).expect("listing xattrs");
    let mut map = BTreeMap::new();
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap().to_owned();
        let mut value = vec![0u8; 64 * 1024];
        let len =
            rustix::fs::lgetxattr(path, name.as_str(), &mut value[..]).expect("reading an xattr");
        value.truncate(len);
        map.insert(name, value);
    }
    map
}

fn sha256(path: &Path) -> String {
    let mut file = File::open(path).unwrap();
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Every entry under `root` (the root itself as ""), and the hard-link
/// groups: the sets of names sharing an inode.
fn walk(root: &Path) -> (BTreeMap<PathBuf, Entry>, Vec<Vec<PathBuf>>) {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = root.join(&rel);
        let m = std::fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "other"
        };
        if ft.is_dir() {
            for child in std::fs::read_dir(&path).unwrap() {
                todo.push(rel.join(child.unwrap().file_name()));
            }
        } else {
            inodes.entry(m.ino()).or_default().push(rel.clone());
        }
        entries.insert(
            rel.clone(),
            Entry {
                kind: kind.to_owned(),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                // A directory's size depends on its history, not its contents.
                size: if ft.is_dir() { 0 } else { m.size() },
                content: ft.is_file().then(|| sha256(&path)),
                link: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                rdev: m.rdev(),
                xattrs: xattrs(&path),
            },
        );
    }
    let mut groups: Vec<Vec<PathBuf>> = inodes
        .into_values()
        .filter(|names| names.len() > 1)
        .map(|mut names| {
            names.sort();
            names
        })
        .collect();
    groups.sort();
    (entries, groups)
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// The features are really there in GNU tar's extraction: else the
/// comparison would pass on two trees that both lack them.
fn assert_features(a: &BTreeMap<PathBuf, Entry>, root: &Path, pax: bool) {
    let get = |p: &str| a.get(Path::new(p)).unwrap_or_else(|| panic!("{p} missing"));
    if pax {
        let has = |p: &str, name: &str| get(p).xattrs.contains_key(name);
        assert!(has("usr/bin/ping", "security.capability"));
        assert!(has("usr/bin/cap-user", "security.capability"));
        assert_eq!(get("etc/noted").xattrs["user.note"], b"hello world");
        assert_eq!(
            get("etc/noted").xattrs["trusted.binary"],
            [0x00, 0xff, 0x10]
        );
        assert!(has("srv/aclfile", "system.posix_acl_access"));
        assert!(has("srv/acldir", "system.posix_acl_default"));
        assert_eq!(get("usr/bin/abs-link").xattrs["trusted.on-link"], b"L");
        assert_eq!(get("dev/null").xattrs["trusted.on-dev"], b"D");
        assert_eq!(get("run/fifo").xattrs["trusted.on-fifo"], b"F");
    }
    assert_eq!(
        (get("srv/bigid").uid, get("srv/bigid").gid),
        (3_000_000, 4_000_000)
    );
    assert_eq!(get("usr/bin/su").mode & 0o7777, 0o4755);
    assert_eq!(get("usr/bin/suid-user").mode & 0o7777, 0o6755);
    assert_eq!(get("usr/bin/wall").mode & 0o7777, 0o2755);
    assert_eq!(get("sticky").mode & 0o7777, 0o1777);
    assert_eq!((get("srv/owned").uid, get("srv/owned").gid), (1234, 5678));
    let nanos = if pax { 123_456_789 } else { 0 };
    assert_eq!(get("srv/owned").mtime, (981_173_106, nanos));
    assert_eq!(get("dev/null").rdev, rustix::fs::makedev(1, 3));
    assert_eq!(get("usr/lib/sparse").size, SPARSE_SIZE);
    assert!(
        allocated(&root.join("usr/lib/sparse")) < 1 << 20,
        "GNU tar kept no holes"
    );
}

fn tar(args: &[&str]) {
    let out = Command::new("tar")
        .args(args)
        .output()
        .expect("running tar");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// How one archive is made and read back.
struct Variant<'a> {
    label: &'a str,
    /// Options for `tar -c` and for GNU tar's `tar -x`.
    create: &'a [&'a str],
    extract: &'a [&'a str],
    /// Whether pax records carry xattrs, ACLs and nanoseconds (GNU tar
    /// has no other place for them: `--xattrs` turns `--format=gnu` into
    /// pax).
    pax: bool,
}

const XATTRS: [&str; 3] = ["--xattrs", "--xattrs-include=*", "--acls"];

/// Archives `src`, extracts it with GNU tar and with imprint, and
/// compares the trees; returns the archive.
fn compare(work: &Path, src: &Path, v: &Variant<'_>) -> Vec<u8> {
    let label = v.label;
    let archive = work.join(format!("{label}.tar"));
    let a = work.join(format!("{label}-gnu"));
    let b = work.join(format!("{label}-imprint"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let archive_s = archive.to_str().unwrap();
    let mut args = v.create.to_vec();
    args.extend_from_slice(&["-cpf", archive_s, "-C", src.to_str().unwrap(), "."]);
    tar(&args);
    let mut args = v.extract.to_vec();
    args.extend_from_slice(&["-xpf", archive_s, "-C", a.to_str().unwrap()]);
    tar(&args);
    let summary = super::unpack(File::open(&archive).unwrap(), &b, &mut NoProgress)
        .unwrap_or_else(|e| panic!("{label}: imprint failed: {e:#}"));
    assert!(
        summary.files > 10 && summary.hard_links == 2,
        "{label}: {summary:?}"
    );
    let (tree_a, groups_a) = walk(&a);
    let (tree_b, groups_b) = walk(&b);
    assert_features(&tree_a, &a, v.pax);
    let names_a: Vec<_> = tree_a.keys().collect();
    let names_b: Vec<_> = tree_b.keys().collect();
    assert_eq!(names_a, names_b, "{label}: different names");
    for (name, entry) in &tree_a {
        assert_eq!(Some(entry), tree_b.get(name), "{label}: {}", name.display());
    }
    assert_eq!(groups_a, groups_b, "{label}: hard links");
    assert_eq!(groups_a.len(), 1, "{label}: {groups_a:?}");
    // The userspace resolver (kernels without openat2) makes the same tree.
    let c = work.join(format!("{label}-userspace"));
    std::fs::create_dir(&c).unwrap();
    let userspace = RootDir::with_resolver(&c, Resolver::Userspace);
    super::unpack::unpack_into(File::open(&archive).unwrap(), &userspace, &mut NoProgress)
        .unwrap_or_else(|e| panic!("{label}: imprint (userspace resolver) failed: {e:#}"));
    assert!(
        walk(&c) == (tree_b, groups_b),
        "{label}: the userspace resolver differs"
    );
    let sparse = allocated(&b.join("usr/lib/sparse"));
    assert!(
        sparse < 1 << 20,
        "{label}: imprint filled the holes: {sparse} bytes allocated"
    );
    std::fs::read(&archive).unwrap()
}

/// The type flags of an archive's headers, walked by their size fields
/// (octal or base-256), to show which encodings a variant exercised.
fn typeflags(archive: &[u8]) -> Vec<u8> {
    let mut flags = Vec::new();
    let mut at = 0;
    while let Some(h) = archive.get(at..at + 512) {
        if h.iter().all(|&b| b == 0) {
            break;
        }
        flags.push(h[156]);
        let size = super::header::number(&h[124..136], "size").unwrap();
        let mut blocks = usize::try_from(size).unwrap().div_ceil(512);
        if h[156] == b'S' && h[482] != 0 {
            blocks += 1;
        }
        at += 512 * (1 + blocks);
    }
    flags
}

#[test]
fn extracts_exactly_what_gnu_tar_extracts() {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test compares ownership, devices and capabilities: run it as root"
    );
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    std::fs::create_dir(&src).unwrap();
    sh(&src, BUILD);
    assert!(
        allocated(&src.join("usr/lib/sparse")) < 1 << 20,
        "the source has no holes"
    );
    let mut pax_create = XATTRS.to_vec();
    pax_create.extend_from_slice(&["--sparse", "--numeric-owner", "--sort=name", "--format=pax"]);
    let mut extract = vec!["--numeric-owner"];
    extract.extend_from_slice(&XATTRS);
    let pax = compare(
        work.path(),
        &src,
        &Variant {
            label: "pax",
            create: &pax_create,
            extract: &extract,
            pax: true,
        },
    );
    assert!(typeflags(&pax).contains(&b'x'));
    // GNU tar's own format: long names in `L`/`K` entries, old GNU sparse
    // `S` headers, base-256 ids. It has no place for xattrs.
    let gnu = compare(
        work.path(),
        &src,
        &Variant {
            label: "gnu",
            create: &["--format=gnu", "--sparse", "--numeric-owner", "--sort=name"],
            extract: &["--numeric-owner"],
            pax: false,
        },
    );
    let flags = typeflags(&gnu);
    for flag in [b'L', b'S', b'1', b'2', b'3', b'4', b'5', b'6'] {
        assert!(
            flags.contains(&flag),
            "no {:?} entry in the gnu archive",
            char::from(flag)
        );
    }
    assert!(!flags.contains(&b'x'), "the gnu archive has pax headers");
    // ACLs as text only (`--acls` without their raw xattrs), with names
    // looked up in the archive's own etc/passwd (a copy of this one).
    let mut text_create = pax_create.clone();
    text_create.push("--xattrs-exclude=system.posix_acl_*");
    compare(
        work.path(),
        &src,
        &Variant {
            label: "acl-text",
            create: &text_create,
            extract: &extract,
            pax: true,
        },
    );
}
