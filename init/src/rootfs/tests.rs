//! Hand-made headers and archives: parsing (including malformed input)
//! and the safety rules of extraction. The comparison against GNU tar
//! itself is in `gnu_tar_tests.rs`.

use std::io::Cursor;
use std::path::Path;

use super::archive::{Archive, Kind, Member};
use super::header::{Region, Time, number, parse_header, parse_pax, parse_pax_time};
use super::unpack::{member_path, unpack_into};
use crate::installed::{Resolver, RootDir};
use crate::pipeline::format::TAR_BLOCK;
use crate::pipeline::progress::NoProgress;

/// A header block: ustar magic (POSIX) unless `gnu`, checksum filled in.
#[derive(Clone)]
pub(super) struct Block {
    pub name: Vec<u8>,
    pub typeflag: u8,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub link: Vec<u8>,
    pub gnu: bool,
}

impl Block {
    pub fn new(name: &str, typeflag: u8, size: u64) -> Block {
        Block {
            name: name.as_bytes().to_vec(),
            typeflag,
            size,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_700_000_000,
            link: Vec::new(),
            gnu: false,
        }
    }

    pub fn link(mut self, target: &str) -> Block {
        self.link = target.as_bytes().to_vec();
        self
    }

    pub fn bytes(&self) -> [u8; TAR_BLOCK] {
        let mut b = [0u8; TAR_BLOCK];
        b[..self.name.len()].copy_from_slice(&self.name);
        octal(&mut b[100..108], u64::from(self.mode));
        octal(&mut b[108..116], u64::from(self.uid));
        octal(&mut b[116..124], u64::from(self.gid));
        octal(&mut b[124..136], self.size);
        octal(&mut b[136..148], self.mtime);
        b[156] = self.typeflag;
        b[157..157 + self.link.len()].copy_from_slice(&self.link);
        if self.gnu {
            b[257..265].copy_from_slice(b"ustar  \0");
        } else {
            b[257..265].copy_from_slice(b"ustar\x0000");
        }
        octal(&mut b[329..337], 0);
        octal(&mut b[337..345], 0);
        seal(&mut b);
        b
    }
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

/// Writes the checksum of `b`.
pub(super) fn seal(b: &mut [u8; TAR_BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let text = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(text.as_bytes());
}

/// Data padded to whole blocks.
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(TAR_BLOCK) * TAR_BLOCK, 0);
    v
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // The length counts itself: find the fixed point.
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// An archive from members, each a header and its data; ends with two
/// zero blocks.
fn archive(members: &[(Block, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (block, data) in members {
        out.extend_from_slice(&block.bytes());
        out.extend_from_slice(&padded(data));
    }
    out.extend_from_slice(&[0u8; 2 * TAR_BLOCK]);
    out
}

fn members(bytes: &[u8]) -> anyhow::Result<Vec<Member>> {
    let mut archive = Archive::new(Cursor::new(bytes));
    let mut all = Vec::new();
    while let Some(m) = archive.next_member()? {
        all.push(m);
    }
    Ok(all)
}

fn error_of(bytes: &[u8]) -> String {
    format!("{:#}", members(bytes).unwrap_err())
}

// ---- headers ----

#[test]
fn a_ustar_header_parses_into_its_fields() {
    let mut block = Block::new("usr/bin/ping", b'0', 1234);
    block.mode = 0o4755;
    block.uid = 1234;
    block.gid = 5678;
    let h = parse_header(&block.bytes()).unwrap();
    assert_eq!(h.name, b"usr/bin/ping");
    assert_eq!((h.mode, h.uid, h.gid, h.size), (0o4755, 1234, 5678, 1234));
    assert_eq!(h.mtime, 1_700_000_000);
    assert_eq!(h.device, None);
}

#[test]
fn the_ustar_prefix_is_joined_but_not_in_gnu_headers() {
    let mut b = Block::new("name", b'0', 0).bytes();
    b[345..351].copy_from_slice(b"prefix");
    seal(&mut b);
    assert_eq!(parse_header(&b).unwrap().name, b"prefix/name");
    let mut gnu = Block::new("name", b'0', 0);
    gnu.gnu = true;
    let mut b = gnu.bytes();
    b[345..351].copy_from_slice(b"\x01\x02\x03\x04\x05\x06");
    seal(&mut b);
    assert_eq!(parse_header(&b).unwrap().name, b"name");
}

#[test]
fn base_256_numbers_positive_and_negative() {
    let mut field = [0u8; 12];
    field[0] = 0x80;
    field[8..].copy_from_slice(&5u32.to_be_bytes());
    assert_eq!(number(&field, "size").unwrap(), 5);
    field[7] = 1;
    assert_eq!(number(&field, "size").unwrap(), 0x1_0000_0005);
    let mut minus_two = [0xffu8; 12];
    minus_two[11] = 0xfe;
    assert_eq!(number(&minus_two, "mtime").unwrap(), -2);
    assert!(number(&[0x90, 0, 0, 0], "uid").is_err());
    assert!(number(b"12x4\0\0\0\0", "uid").is_err());
    assert!(number(&[0u8; 8], "uid").is_err(), "blank field");
}

#[test]
fn malformed_headers_say_which_field() {
    let mut b = Block::new("f", b'0', 0).bytes();
    b[108..116].copy_from_slice(b"12z4567\0");
    seal(&mut b);
    assert!(parse_header(&b).unwrap_err().contains("uid"));
    let mut b = Block::new("f", b'0', 0).bytes();
    b[124..136].copy_from_slice(&[0xff; 12]);
    seal(&mut b);
    assert!(parse_header(&b).unwrap_err().contains("size"));
    let mut b = Block::new("f", b'0', 0).bytes();
    b[0] ^= 1;
    assert!(parse_header(&b).unwrap_err().contains("checksum"));
}

#[test]
fn pax_device_numbers_override_the_header() {
    let mut bytes = pax_member(
        &[
            ("SCHILY.devmajor", b"259".as_slice()),
            ("SCHILY.devminor", b"1048575"),
        ],
        Block::new("dev/big", b'4', 0),
        b"",
    );
    bytes.extend([0u8; 1024]);
    let m = &members(&bytes).unwrap()[0];
    assert_eq!(
        m.kind,
        Kind::BlockDevice {
            major: 259,
            minor: 1_048_575
        }
    );
}

#[test]
fn devices_carry_major_and_minor() {
    let mut b = Block::new("dev/null", b'3', 0).bytes();
    octal(&mut b[329..337], 1);
    octal(&mut b[337..345], 3);
    seal(&mut b);
    assert_eq!(parse_header(&b).unwrap().device, Some((1, 3)));
}

#[test]
fn pax_times_with_fractions_and_before_1970() {
    let t = |s: &str| parse_pax_time(s.as_bytes());
    assert_eq!(
        t("1700000000.5"),
        Some(Time {
            secs: 1_700_000_000,
            nanos: 500_000_000
        })
    );
    assert_eq!(
        t("12.1234567891"),
        Some(Time {
            secs: 12,
            nanos: 123_456_789
        })
    );
    assert_eq!(t("7"), Some(Time { secs: 7, nanos: 0 }));
    assert_eq!(
        t("-1.25"),
        Some(Time {
            secs: -2,
            nanos: 750_000_000
        })
    );
    assert_eq!(t("-3"), Some(Time { secs: -3, nanos: 0 }));
    for bad in ["", ".5", "1.5x", "abc", "1e9"] {
        assert_eq!(t(bad), None, "{bad}");
    }
}

#[test]
fn pax_records_parse_and_malformed_ones_are_refused() {
    let mut data = pax_record("path", b"a=b/c");
    data.extend(pax_record("SCHILY.xattr.user.bin", b"\0\n\xff"));
    let records = parse_pax(&data).unwrap();
    assert_eq!(records[0], (b"path".to_vec(), b"a=b/c".to_vec()));
    assert_eq!(records[1].1, b"\0\n\xff");
    for bad in [
        &b"5 a=b\n"[..],
        b"x path=a\n",
        b"99 path=a\n",
        b"9 patha\n",
        b"8 path=a",
    ] {
        assert!(parse_pax(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

// ---- the archive reader ----

fn pax_member(records: &[(&str, &[u8])], block: Block, data: &[u8]) -> Vec<u8> {
    let mut pax = Vec::new();
    for (k, v) in records {
        pax.extend(pax_record(k, v));
    }
    let mut out = Block::new("PaxHeaders/x", b'x', pax.len() as u64)
        .bytes()
        .to_vec();
    out.extend(padded(&pax));
    out.extend(block.bytes());
    out.extend(padded(data));
    out
}

#[test]
fn pax_overrides_path_ids_size_and_times_and_carries_xattrs_and_acls() {
    let mut bytes = pax_member(
        &[
            ("path", b"a/very/long/name".as_slice()),
            ("uid", b"3000000000"),
            ("gid", b"42"),
            ("mtime", b"1700000000.123456789"),
            ("size", b"3"),
            ("SCHILY.xattr.security.capability", b"\x01\x00\x00\x02"),
            ("SCHILY.xattr.user.a%3Db", b"v"),
            ("SCHILY.acl.access", b"user::rw-\ngroup::r--\nother::r--\n"),
        ],
        Block::new("short", b'0', 0),
        b"abc",
    );
    bytes.extend([0u8; 1024]);
    let m = &members(&bytes).unwrap()[0];
    assert_eq!(m.name, b"a/very/long/name");
    assert_eq!((m.uid, m.gid, m.data_size), (3_000_000_000, 42, 3));
    assert_eq!(
        m.mtime,
        Time {
            secs: 1_700_000_000,
            nanos: 123_456_789
        }
    );
    assert_eq!(
        m.xattrs[0],
        (
            b"security.capability".to_vec(),
            b"\x01\x00\x00\x02".to_vec()
        )
    );
    assert_eq!(m.xattrs[1].0, b"user.a=b");
    assert_eq!(
        m.acl_access.as_deref(),
        Some("user::rw-\ngroup::r--\nother::r--")
    );
}

#[test]
fn global_pax_headers_apply_to_every_later_member_and_x_wins() {
    let mut g = pax_record("uid", b"7");
    g.extend(pax_record("mtime", b"5.5"));
    let mut bytes = Block::new("g", b'g', g.len() as u64).bytes().to_vec();
    bytes.extend(padded(&g));
    bytes.extend(Block::new("one", b'0', 0).bytes());
    bytes.extend(pax_member(
        &[("uid", b"8")],
        Block::new("two", b'0', 0),
        b"",
    ));
    bytes.extend([0u8; 1024]);
    let all = members(&bytes).unwrap();
    assert_eq!((all[0].uid, all[1].uid), (7, 8));
    assert_eq!(
        all[1].mtime,
        Time {
            secs: 5,
            nanos: 500_000_000
        }
    );
}

#[test]
fn gnu_long_names_and_long_link_targets() {
    let long = "d/".repeat(80) + "file";
    let target = "t/".repeat(70) + "target";
    let mut bytes = Vec::new();
    for (kind, text) in [(b'L', &long), (b'K', &target)] {
        let mut data = text.clone().into_bytes();
        data.push(0);
        let mut b = Block::new("././@LongLink", kind, data.len() as u64);
        b.gnu = true;
        bytes.extend(b.bytes());
        bytes.extend(padded(&data));
    }
    bytes.extend(Block::new("truncated", b'2', 0).link("trunc").bytes());
    bytes.extend([0u8; 1024]);
    let m = &members(&bytes).unwrap()[0];
    assert_eq!(m.name, long.as_bytes());
    assert_eq!(m.kind, Kind::Symlink(target.into_bytes()));
}

#[test]
fn every_entry_type_and_contiguous_files_as_regular() {
    let bytes = archive(&[
        (Block::new("f0", b'0', 1), b"x"),
        (Block::new("fnul", 0, 0), b""),
        (Block::new("f7", b'7', 0), b""),
        (Block::new("h", b'1', 0).link("f0"), b""),
        (Block::new("s", b'2', 0).link("/usr/bin/x"), b""),
        (Block::new("c", b'3', 0), b""),
        (Block::new("b", b'4', 0), b""),
        (Block::new("d/", b'5', 0), b""),
        (Block::new("p", b'6', 0), b""),
    ]);
    let kinds: Vec<Kind> = members(&bytes)
        .unwrap()
        .into_iter()
        .map(|m| m.kind)
        .collect();
    assert_eq!(
        kinds[..3],
        [
            Kind::File { sparse: None },
            Kind::File { sparse: None },
            Kind::File { sparse: None }
        ]
    );
    assert_eq!(kinds[3], Kind::HardLink(b"f0".to_vec()));
    assert_eq!(kinds[4], Kind::Symlink(b"/usr/bin/x".to_vec()));
    assert_eq!(kinds[5], Kind::CharDevice { major: 0, minor: 0 });
    assert_eq!(kinds[6], Kind::BlockDevice { major: 0, minor: 0 });
    assert_eq!(kinds[7..], [Kind::Directory, Kind::Fifo]);
}

#[test]
fn an_unknown_entry_type_is_an_error_naming_member_and_type() {
    let bytes = archive(&[
        (Block::new("ok", b'0', 0), b""),
        (Block::new("weird", b'Q', 0), b""),
    ]);
    let e = error_of(&bytes);
    assert!(
        e.contains("weird") && e.contains("'Q'") && e.contains("archive byte 512"),
        "{e}"
    );
}

#[test]
fn a_corrupt_checksum_names_the_offset_and_the_member_before() {
    let mut bytes = archive(&[
        (Block::new("first", b'0', 3), b"abc"),
        (Block::new("second", b'0', 0), b""),
    ]);
    bytes[1024 + 10] ^= 0x40;
    let e = error_of(&bytes);
    assert!(
        e.contains("checksum") && e.contains("archive byte 1024") && e.contains("after first"),
        "{e}"
    );
}

#[test]
fn truncated_archives_are_errors_wherever_they_stop() {
    let full = archive(&[(Block::new("file", b'0', 1000), &[7u8; 1000])]);
    // Inside the header, inside the data, inside the padding.
    for cut in [100, 512 + 10, 512 + 1000] {
        let mut a = Archive::new(Cursor::new(&full[..cut]));
        let result = (|| -> anyhow::Result<()> {
            let _ = a.next_member()?;
            let mut sink = vec![0u8; 4096];
            while a.read_data(&mut sink)? > 0 {}
            a.next_member()?;
            Ok(())
        })();
        let e = format!("{:#}", result.unwrap_err());
        assert!(
            e.contains("truncated") && e.contains("archive byte"),
            "cut {cut}: {e}"
        );
    }
}

#[test]
fn ends_like_gnu_tar_eof_or_one_zero_block_but_never_garbage() {
    let one = archive(&[(Block::new("a", b'0', 0), b"")]);
    assert_eq!(
        members(&one[..512]).unwrap().len(),
        1,
        "EOF without end blocks"
    );
    assert_eq!(members(&one[..1024]).unwrap().len(), 1, "a lone zero block");
    let mut padded_record = one.clone();
    padded_record.extend([0u8; 8192]);
    assert_eq!(members(&padded_record).unwrap().len(), 1);
    let mut garbage = one.clone();
    garbage.extend(b"junk");
    assert!(error_of(&garbage).contains("garbage"));
    let mut after_one_zero = one[..1024].to_vec();
    after_one_zero.extend(Block::new("b", b'0', 0).bytes());
    assert!(error_of(&after_one_zero).contains("garbage"));
    let mut pax_then_end = pax_member(&[("path", b"x")], Block::new("y", b'0', 0), b"");
    pax_then_end.truncate(1024);
    pax_then_end.extend([0u8; 1024]);
    assert!(error_of(&pax_then_end).contains("extended header"));
}

#[test]
fn old_gnu_sparse_headers_with_an_extension_block() {
    // Real size 1 MiB; 4 regions in the header, 1 more in an extension.
    let mut b = Block::new("sparse", b'S', 5);
    b.gnu = true;
    let mut h = b.bytes();
    for i in 0..4u64 {
        let at = 386 + usize::try_from(i).unwrap() * 24;
        octal(&mut h[at..at + 12], i * 4096);
        octal(&mut h[at + 12..at + 24], 1);
    }
    h[482] = 1;
    octal(&mut h[483..495], 1 << 20);
    seal(&mut h);
    let mut ext = [0u8; TAR_BLOCK];
    octal(&mut ext[0..12], 65536);
    octal(&mut ext[12..24], 1);
    let mut bytes = h.to_vec();
    bytes.extend(ext);
    bytes.extend(padded(b"abcde"));
    bytes.extend([0u8; 1024]);
    let m = &members(&bytes).unwrap()[0];
    let Kind::File { sparse: Some(s) } = &m.kind else {
        panic!("{:?}", m.kind)
    };
    assert_eq!(s.real_size, 1 << 20);
    assert_eq!(s.regions.len(), 5);
    assert_eq!(
        s.regions[4],
        Region {
            offset: 65536,
            len: 1
        }
    );
    assert_eq!(m.data_size, 5);
}

#[test]
fn pax_sparse_1_0_map_in_the_data_and_0_1_map_in_a_record() {
    let map = padded(b"2\n0\n3\n8192\n2\n");
    let mut data = map.clone();
    data.extend(b"abcde");
    let mut bytes = pax_member(
        &[
            ("GNU.sparse.major", b"1".as_slice()),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"real/name"),
            ("GNU.sparse.realsize", b"100000"),
        ],
        Block::new("GNUSparseFile.0/name", b'0', data.len() as u64),
        &data,
    );
    bytes.extend(pax_member(
        &[
            ("GNU.sparse.map", b"10,2".as_slice()),
            ("GNU.sparse.size", b"50"),
            ("GNU.sparse.name", b"zero-one"),
        ],
        Block::new("x", b'0', 2),
        b"zz",
    ));
    bytes.extend([0u8; 1024]);
    let all = members(&bytes).unwrap();
    assert_eq!(all[0].name, b"real/name");
    assert_eq!(all[0].data_size, 5);
    let Kind::File { sparse: Some(s) } = &all[0].kind else {
        panic!()
    };
    assert_eq!(
        s.regions,
        [
            Region { offset: 0, len: 3 },
            Region {
                offset: 8192,
                len: 2
            }
        ]
    );
    assert_eq!(all[1].name, b"zero-one");
    let Kind::File { sparse: Some(s) } = &all[1].kind else {
        panic!()
    };
    assert_eq!(
        (s.real_size, s.regions.as_slice()),
        (50, [Region { offset: 10, len: 2 }].as_slice())
    );
}

#[test]
fn a_sparse_map_that_disagrees_with_the_data_is_refused() {
    let mut bytes = pax_member(
        &[
            ("GNU.sparse.map", b"10,2,5,1".as_slice()),
            ("GNU.sparse.size", b"50"),
        ],
        Block::new("x", b'0', 3),
        b"zzz",
    );
    bytes.extend([0u8; 1024]);
    assert!(error_of(&bytes).contains("out of order"));
}

// ---- member names ----

#[test]
fn member_paths_drop_dot_and_a_leading_slash_and_refuse_dot_dot() {
    let p = |s: &str| member_path(s.as_bytes());
    assert_eq!(p("./usr/bin/").unwrap().unwrap(), Path::new("usr/bin"));
    assert_eq!(p("/etc/passwd").unwrap().unwrap(), Path::new("etc/passwd"));
    assert_eq!(p("a/./b").unwrap().unwrap(), Path::new("a/b"));
    assert_eq!(p("./").unwrap(), None);
    for bad in ["../escape", "a/../../x", "a/..", "/../x"] {
        assert!(p(bad).is_err(), "{bad}");
    }
}

// ---- extraction safety ----

const RESOLVERS: [Resolver; 2] = [Resolver::Kernel, Resolver::Userspace];

struct Target {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn target() -> Target {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir(&root).unwrap();
    std::fs::create_dir(&outside).unwrap();
    Target {
        _dir: dir,
        root,
        outside,
    }
}

fn unpack_with(
    bytes: &[u8],
    root: &Path,
    resolver: Resolver,
) -> anyhow::Result<super::UnpackSummary> {
    unpack_into(
        Cursor::new(bytes),
        &RootDir::with_resolver(root, resolver),
        &mut NoProgress,
    )
}

fn assert_empty(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "written outside the root: {left:?}");
}

#[test]
fn a_member_climbing_out_with_dot_dot_is_refused() {
    for resolver in RESOLVERS {
        let t = target();
        let bytes = archive(&[(Block::new("../outside/escape", b'0', 1), b"x")]);
        let e = format!("{:#}", unpack_with(&bytes, &t.root, resolver).unwrap_err());
        assert!(e.contains("../outside/escape") && e.contains(".."), "{e}");
        assert_empty(&t.outside);
        let bytes = archive(&[(Block::new("h", b'1', 0).link("../outside/x"), b"")]);
        assert!(unpack_with(&bytes, &t.root, resolver).is_err());
    }
}

#[test]
fn members_through_an_earlier_symlink_stay_inside_the_root() {
    for resolver in RESOLVERS {
        let t = target();
        let absolute = t.outside.to_str().unwrap().to_owned();
        // `up` climbs from the root's child far past `/`; `abs` names the
        // outside directory by its real absolute path.
        let bytes = archive(&[
            (Block::new("up", b'2', 0).link("../../../../../.."), b""),
            (Block::new("up/escaped", b'0', 4), b"evil"),
            (Block::new("up/dir/", b'5', 0), b""),
            (Block::new("up/hard", b'1', 0).link("up/escaped"), b""),
            (Block::new("abs", b'2', 0).link(&absolute), b""),
            (Block::new("abs/escaped", b'0', 4), b"evil"),
        ]);
        let result = unpack_with(&bytes, &t.root, resolver);
        assert_empty(&t.outside);
        // `up` leads to the root itself; `abs` to a path inside the root
        // that does not exist, so its member fails rather than escape.
        let e = format!("{:#}", result.unwrap_err());
        assert!(e.contains("abs/escaped"), "{e}");
        assert_eq!(std::fs::read(t.root.join("escaped")).unwrap(), b"evil");
        assert_eq!(std::fs::read(t.root.join("hard")).unwrap(), b"evil");
        assert!(t.root.join("dir").is_dir());
    }
}

#[test]
fn existing_entries_are_replaced_and_directories_kept() {
    for resolver in RESOLVERS {
        let t = target();
        std::fs::write(t.outside.join("victim"), b"keep").unwrap();
        std::os::unix::fs::symlink(t.outside.join("victim"), t.root.join("link")).unwrap();
        std::fs::create_dir(t.root.join("dir")).unwrap();
        std::fs::write(t.root.join("dir/old"), b"old").unwrap();
        let mut dir = Block::new("dir", b'5', 0);
        dir.mode = 0o750;
        dir.uid = 42;
        let bytes = archive(&[(Block::new("link", b'0', 3), b"new"), (dir, b"")]);
        unpack_with(&bytes, &t.root, resolver).unwrap();
        assert_eq!(std::fs::read(t.outside.join("victim")).unwrap(), b"keep");
        assert_eq!(std::fs::read(t.root.join("link")).unwrap(), b"new");
        assert!(!t.root.join("link").is_symlink());
        assert_eq!(std::fs::read(t.root.join("dir/old")).unwrap(), b"old");
        use std::os::unix::fs::MetadataExt as _;
        let kept = std::fs::metadata(t.root.join("dir")).unwrap();
        assert_eq!((kept.mode() & 0o7777, kept.uid()), (0o750, 42));
    }
}

#[test]
fn missing_parents_are_made_and_counts_add_up() {
    let t = target();
    let bytes = archive(&[
        (Block::new("a/b/c/file", b'0', 5), b"hello"),
        (Block::new("a/b/link", b'2', 0).link("c/file"), b""),
        (Block::new("a/hard", b'1', 0).link("a/b/c/file"), b""),
        (Block::new("a/fifo", b'6', 0), b""),
        (Block::new("./", b'5', 0), b""),
    ]);
    let summary = unpack_with(&bytes, &t.root, Resolver::Kernel).unwrap();
    assert_eq!(
        summary,
        super::UnpackSummary {
            files: 1,
            dirs: 1,
            symlinks: 1,
            hard_links: 1,
            special: 1,
            bytes: 5
        }
    );
    assert_eq!(std::fs::read(t.root.join("a/b/link")).unwrap(), b"hello");
    use std::os::unix::fs::MetadataExt as _;
    let mode = std::fs::metadata(t.root.join("a/b")).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o755);
}

#[test]
fn a_file_where_a_non_empty_directory_stands_is_an_error() {
    let t = target();
    std::fs::create_dir_all(t.root.join("d/x")).unwrap();
    let e = format!(
        "{:#}",
        unpack_with(
            &archive(&[(Block::new("d", b'0', 0), b"")]),
            &t.root,
            Resolver::Kernel
        )
        .unwrap_err()
    );
    assert!(e.contains("extracting d") && e.contains("directory"), "{e}");
}

/// At most 7 bytes per read and `Interrupted` on every other call.
struct Dribble<R>(R, usize);

impl<R: std::io::Read> std::io::Read for Dribble<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.1 += 1;
        if self.1 % 2 == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = buf.len().min(7);
        self.0.read(&mut buf[..n])
    }
}

#[test]
fn short_reads_and_interruptions_change_nothing() {
    let mut bytes = pax_member(
        &[
            ("path", b"p/long".as_slice()),
            ("SCHILY.xattr.user.x", b"1"),
        ],
        Block::new("p", b'0', 1000),
        &[9u8; 1000],
    );
    bytes.extend(archive(&[(Block::new("q", b'2', 0).link("p/long"), b"")]));
    let t = target();
    let dribbled = unpack_into(
        Dribble(Cursor::new(&bytes), 0),
        &RootDir::with_resolver(&t.root, Resolver::Kernel),
        &mut NoProgress,
    )
    .unwrap();
    assert_eq!(
        (dribbled.files, dribbled.symlinks, dribbled.bytes),
        (1, 1, 1000)
    );
    assert_eq!(std::fs::read(t.root.join("q")).unwrap(), [9u8; 1000]);
}

#[test]
fn a_hard_link_to_a_member_not_yet_extracted_is_an_error() {
    let t = target();
    let bytes = archive(&[(Block::new("h", b'1', 0).link("nowhere/x"), b"")]);
    let e = format!(
        "{:#}",
        unpack_with(&bytes, &t.root, Resolver::Kernel).unwrap_err()
    );
    assert!(e.contains("extracting h") && e.contains("nowhere/x"), "{e}");
    assert!(
        !t.root.join("nowhere").exists(),
        "the target's directory was made"
    );
}

#[test]
fn names_need_not_be_utf8() {
    let t = target();
    let mut block = Block::new("", b'0', 2);
    block.name = b"caf\xe9".to_vec();
    let bytes = archive(&[(block, b"ok")]);
    unpack_with(&bytes, &t.root, Resolver::Userspace).unwrap();
    use std::os::unix::ffi::OsStrExt as _;
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    assert_eq!(std::fs::read(t.root.join(name)).unwrap(), b"ok");
}

#[test]
fn a_symlink_replaced_between_members_is_followed_afresh() {
    for resolver in RESOLVERS {
        let t = target();
        let bytes = archive(&[
            (Block::new("a/", b'5', 0), b""),
            (Block::new("b/", b'5', 0), b""),
            (Block::new("l", b'2', 0).link("a"), b""),
            (Block::new("l/one", b'0', 1), b"1"),
            (Block::new("l/two", b'0', 1), b"2"),
            (Block::new("l", b'2', 0).link("/b"), b""),
            (Block::new("l/three", b'0', 1), b"3"),
        ]);
        unpack_with(&bytes, &t.root, resolver).unwrap();
        assert!(t.root.join("a/one").exists() && t.root.join("a/two").exists());
        assert_eq!(std::fs::read(t.root.join("b/three")).unwrap(), b"3");
        assert!(!t.root.join("a/three").exists());
    }
}

#[test]
fn a_directory_replaced_by_a_later_member_keeps_that_member() {
    let t = target();
    let mut file = Block::new("x", b'0', 1);
    file.mode = 0o600;
    let bytes = archive(&[
        (Block::new("x/", b'5', 0), b""),
        (file, b"f"),
        (Block::new("y/", b'5', 0), b""),
        (Block::new("y", b'2', 0).link("x"), b""),
    ]);
    unpack_with(&bytes, &t.root, Resolver::Kernel).unwrap();
    use std::os::unix::fs::MetadataExt as _;
    assert_eq!(
        std::fs::metadata(t.root.join("x")).unwrap().mode() & 0o7777,
        0o600
    );
    assert!(t.root.join("y").is_symlink());
}
