//! Unwraps a tar archive that holds exactly one regular file: DRP's `dd-tar`
//! family ships a raw disk image this way.
//!
//! Strict on purpose: anything but one file (a directory entry, a second
//! member, bytes after the end-of-archive marker) is an error rather than a
//! guess about which bytes belong on the disk.

use std::io::{self, ErrorKind, Read};

use super::format::{TAR_BLOCK, parse_octal, tar_checksum_ok};

/// Extended headers (pax records, GNU long names) are small; a huge one is
/// a corrupt archive, and reading it whole must not exhaust PID 1's memory.
const MAX_METADATA_SIZE: u64 = 1 << 20;

/// Yields the bytes of the archive's only member.
#[derive(Debug)]
pub struct SingleFileTar<R> {
    inner: R,
    name: String,
    size: u64,
    remaining: u64,
    /// Archive bytes consumed so far, for error offsets.
    offset: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    Member,
    Done,
    /// The first error, repeated: a failed archive never turns into an EOF.
    Failed(ErrorKind, String),
}

/// One archive entry, with extended headers already folded in.
struct Entry {
    name: String,
    size: u64,
    typeflag: u8,
    gnu_sparse: bool,
}

enum Next {
    Entry(Entry),
    /// An all-zero block or the end of input.
    End,
    /// A non-zero block that is not a valid header, at this archive offset.
    Garbage(u64),
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg)
}

impl<R: Read> SingleFileTar<R> {
    /// Reads headers up to the member; fails unless the first entry is a
    /// regular file.
    pub fn new(inner: R) -> io::Result<Self> {
        let mut tar = SingleFileTar {
            inner,
            name: String::new(),
            size: 0,
            remaining: 0,
            offset: 0,
            state: State::Member,
        };
        let entry = match tar.next_entry()? {
            Next::Entry(entry) => entry,
            Next::End => return Err(invalid("tar archive holds no file".to_owned())),
            Next::Garbage(at) => {
                return Err(invalid(format!(
                    "not a tar archive: bad header at archive byte {at}"
                )));
            }
        };
        if let Some(why) = not_a_regular_file(&entry) {
            // A directory first is how every root-filesystem tarball starts
            // (`./`, `bin/`): say so rather than only what a disk tar is.
            let hint = if entry.typeflag == b'5' {
                ROOTFS_HINT
            } else {
                ""
            };
            return Err(invalid(format!(
                "tar entry {:?} is {why}; a tar of a disk image must hold exactly one regular file{hint}",
                entry.name
            )));
        }
        tar.name = entry.name;
        tar.size = entry.size;
        tar.remaining = entry.size;
        Ok(tar)
    }

    /// The member's path inside the archive.
    pub fn member_name(&self) -> &str {
        &self.name
    }

    /// The member's size as recorded in its header, known before any data is
    /// read, so an image too large for the disk fails before the first write.
    pub fn member_size(&self) -> u64 {
        self.size
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Checks that nothing but zero padding follows the member. `read`
    /// calls this before returning EOF; call it directly after reading
    /// exactly `member_size()` bytes.
    pub fn finish(&mut self) -> io::Result<()> {
        match &self.state {
            State::Done => return Ok(()),
            State::Failed(kind, msg) => return Err(io::Error::new(*kind, msg.clone())),
            State::Member if self.remaining > 0 => {
                return Err(io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("tar member {:?} not read to its end", self.name),
                ));
            }
            State::Member => {}
        }
        let result = self.check_trailer();
        self.state = match &result {
            Ok(()) => State::Done,
            Err(e) => State::Failed(e.kind(), e.to_string()),
        };
        result
    }

    fn check_trailer(&mut self) -> io::Result<()> {
        let padding = (TAR_BLOCK as u64 - self.size % TAR_BLOCK as u64) % TAR_BLOCK as u64;
        let mut pad = [0u8; TAR_BLOCK];
        let pad = &mut pad[..usize::try_from(padding).unwrap_or(0)];
        let start = self.offset;
        if self.fill(pad)? < pad.len() {
            return Err(self.truncated());
        }
        if pad.iter().any(|&b| b != 0) {
            return Err(invalid(format!(
                "trailing garbage after the tar member {:?} at archive byte {start}",
                self.name
            )));
        }
        let end_start = self.offset;
        match self.next_entry()? {
            Next::Entry(second) => Err(invalid(format!(
                "tar holds more than one file: {:?} and {:?}{ROOTFS_HINT}",
                self.name, second.name
            ))),
            Next::Garbage(at) => Err(invalid(format!(
                "trailing garbage after the tar archive at archive byte {at}"
            ))),
            Next::End => {
                self.expect_zeros_to_eof()?;
                // Every tar writer ends the archive with two zero blocks (and
                // pads the record with more). Without them the transfer was
                // cut short, even if the member happens to be whole.
                if self.offset - end_start < 2 * TAR_BLOCK as u64 {
                    return Err(self.truncated());
                }
                Ok(())
            }
        }
    }

    /// End-of-archive blocks and record padding are zeros up to EOF.
    fn expect_zeros_to_eof(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 8 * TAR_BLOCK];
        loop {
            let start = self.offset;
            let n = self.fill(&mut buf)?;
            if let Some(pos) = buf[..n].iter().position(|&b| b != 0) {
                return Err(invalid(format!(
                    "trailing garbage after the tar archive at archive byte {}",
                    start + pos as u64
                )));
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    }

    /// Reads headers until a real entry, folding pax and GNU long-name
    /// headers into it.
    fn next_entry(&mut self) -> io::Result<Next> {
        let mut long_name: Option<String> = None;
        let mut pax = PaxOverrides::default();
        let mut pending_metadata = false;
        loop {
            let at = self.offset;
            let mut header = [0u8; TAR_BLOCK];
            let n = self.fill(&mut header)?;
            if n == 0 && !pending_metadata {
                return Ok(Next::End);
            }
            if n < TAR_BLOCK {
                return Err(self.truncated());
            }
            if header.iter().all(|&b| b == 0) {
                if pending_metadata {
                    return Err(invalid(format!(
                        "tar archive ends after an extended header at archive byte {at}"
                    )));
                }
                return Ok(Next::End);
            }
            // The checksum alone decides, so old V7 headers (no magic) pass too.
            if !tar_checksum_ok(&header) {
                return Ok(Next::Garbage(at));
            }
            let size = header_size(&header).ok_or_else(|| {
                invalid(format!(
                    "tar header at archive byte {at} has a malformed size"
                ))
            })?;
            match header[156] {
                b'x' | b'L' | b'g' | b'K' => {
                    let data = self.read_metadata(size, at)?;
                    match header[156] {
                        b'x' => pax.parse(&data, at)?,
                        b'L' => long_name = Some(c_string(&data)),
                        _ => {}
                    }
                    pending_metadata = true;
                }
                typeflag => {
                    let name = long_name
                        .take()
                        .or(pax.path.take())
                        .unwrap_or_else(|| header_name(&header));
                    return Ok(Next::Entry(Entry {
                        name,
                        size: pax.size.unwrap_or(size),
                        typeflag,
                        gnu_sparse: pax.gnu_sparse,
                    }));
                }
            }
        }
    }

    fn read_metadata(&mut self, size: u64, at: u64) -> io::Result<Vec<u8>> {
        if size > MAX_METADATA_SIZE {
            return Err(invalid(format!(
                "tar extended header at archive byte {at} claims {size} bytes"
            )));
        }
        let padded = size.div_ceil(TAR_BLOCK as u64) * TAR_BLOCK as u64;
        let mut data = vec![0u8; usize::try_from(padded).unwrap_or(0)];
        if self.fill(&mut data)? < data.len() {
            return Err(self.truncated());
        }
        data.truncate(usize::try_from(size).unwrap_or(0));
        Ok(data)
    }

    fn truncated(&self) -> io::Error {
        io::Error::new(
            ErrorKind::UnexpectedEof,
            format!("tar archive truncated at archive byte {}", self.offset),
        )
    }

    /// Reads until `buf` is full or EOF, retrying `Interrupted`.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }
}

impl<R: Read> Read for SingleFileTar<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let State::Failed(kind, msg) = &self.state {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            self.finish()?;
            return Ok(0);
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => {
                    let e = self.truncated();
                    self.state = State::Failed(e.kind(), e.to_string());
                    return Err(e);
                }
                Ok(n) => {
                    self.offset += n as u64;
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[derive(Default)]
struct PaxOverrides {
    path: Option<String>,
    size: Option<u64>,
    gnu_sparse: bool,
}

impl PaxOverrides {
    /// Parses pax records, `"<len> <key>=<value>\n"`, where `len` counts the
    /// whole record (POSIX.1-2001, pax "Extended Header").
    fn parse(&mut self, mut data: &[u8], at: u64) -> io::Result<()> {
        let malformed = || invalid(format!("malformed pax header at archive byte {at}"));
        while !data.is_empty() {
            let space = data.iter().position(|&b| b == b' ').ok_or_else(malformed)?;
            let len: usize = std::str::from_utf8(&data[..space])
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(malformed)?;
            let record = data.get(space + 1..len).ok_or_else(malformed)?;
            let record = record.strip_suffix(b"\n").ok_or_else(malformed)?;
            let eq = record
                .iter()
                .position(|&b| b == b'=')
                .ok_or_else(malformed)?;
            let (key, value) = (&record[..eq], &record[eq + 1..]);
            match key {
                b"path" => self.path = Some(String::from_utf8_lossy(value).into_owned()),
                b"size" => {
                    let size = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(malformed)?;
                    self.size = Some(size);
                }
                k if k.starts_with(b"GNU.sparse.") => self.gnu_sparse = true,
                _ => {}
            }
            data = &data[len..];
        }
        Ok(())
    }
}

/// What a tar that is not one disk image most likely is.
const ROOTFS_HINT: &str = " (a root-filesystem tarball? declare its type: \
                           imprint.format=tgz, txz, tbz, tar or tar-zst)";

/// Why an entry cannot be the disk image, or `None` for a regular file.
fn not_a_regular_file(entry: &Entry) -> Option<String> {
    if entry.gnu_sparse || entry.typeflag == b'S' {
        return Some(
            "a sparse file, which is not supported (create the tar without --sparse)".to_owned(),
        );
    }
    let what = match entry.typeflag {
        // '7' is a contiguous file: a regular file to every reader but one.
        b'0' | 0 | b'7' => return None,
        b'1' => "a hard link",
        b'2' => "a symbolic link",
        b'3' => "a character device",
        b'4' => "a block device",
        b'5' => "a directory",
        b'6' => "a FIFO",
        b'V' => "a volume label",
        b'M' => "a multi-volume continuation",
        other => return Some(format!("an entry of type {:?}", char::from(other))),
    };
    Some(what.to_owned())
}

fn header_name(header: &[u8; TAR_BLOCK]) -> String {
    let name = c_string(&header[..100]);
    // POSIX ustar splits long paths into prefix/name; GNU's own format uses
    // the prefix bytes for other things, so only the POSIX magic counts.
    if &header[257..263] == b"ustar\0" {
        let prefix = c_string(&header[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The size field: octal, or GNU's base-256 (high bit of the first byte set)
/// for sizes past 8 GiB.
fn header_size(header: &[u8; TAR_BLOCK]) -> Option<u64> {
    let field = &header[124..136];
    match field[0] {
        0x80 => field[1..].iter().try_fold(0u64, |acc, &b| {
            acc.checked_mul(256)?.checked_add(u64::from(b))
        }),
        // 0xff marks a negative number; other high-bit values are not base-256.
        b if b & 0x80 != 0 => None,
        _ => parse_octal(field),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::path::Path;
    use std::process::Command;

    /// At most 7 bytes per read and `Interrupted` on every other call.
    struct Dribble<R>(R, usize);
    impl<R: Read> Read for Dribble<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1 % 2 == 0 {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(7);
            self.0.read(&mut buf[..n])
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| u8::try_from(i % 253).unwrap()).collect()
    }

    /// Runs GNU tar in `dir` and returns the archive.
    fn tar(dir: &Path, args: &[&str]) -> Vec<u8> {
        let out = Command::new("tar")
            .arg("-C")
            .arg(dir)
            .args(["-cf", "-"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn tar_of(format: &str, name: &str, content: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        tar(dir.path(), &[&format!("--format={format}"), name])
    }

    fn unwrap_tar(archive: &[u8]) -> io::Result<(String, u64, Vec<u8>)> {
        let mut tar = SingleFileTar::new(Cursor::new(archive))?;
        let (name, size) = (tar.member_name().to_owned(), tar.member_size());
        let mut out = Vec::new();
        tar.read_to_end(&mut out)?;
        Ok((name, size, out))
    }

    fn error_of(archive: &[u8]) -> io::Error {
        unwrap_tar(archive).expect_err("archive must be rejected")
    }

    #[test]
    fn unwraps_every_gnu_tar_format() {
        for format in ["gnu", "oldgnu", "ustar", "pax", "v7"] {
            for len in [0, 1, 511, 512, 513, 100_003] {
                let content = data(len);
                let archive = tar_of(format, "disk.raw", &content);
                let (name, size, out) = unwrap_tar(&archive).unwrap();
                assert_eq!(name, "disk.raw", "{format}");
                assert_eq!(size, len as u64, "{format}");
                assert!(out == content, "{format} {len}");
            }
        }
    }

    #[test]
    fn short_reads_and_interrupts() {
        let content = data(10_007);
        let archive = tar_of("pax", "disk.raw", &content);
        let mut tar = SingleFileTar::new(Dribble(Cursor::new(archive), 0)).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 1000];
        loop {
            match tar.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(out == content);
    }

    #[test]
    fn long_names_in_every_format_that_has_them() {
        let name = format!("{}/{}.raw", "d".repeat(90), "n".repeat(60));
        for format in ["gnu", "pax", "ustar"] {
            let archive = tar_of(format, &name, b"image");
            let (got, _, out) = unwrap_tar(&archive).unwrap();
            assert_eq!(got, name, "{format}");
            assert_eq!(out, b"image");
        }
    }

    #[test]
    fn pax_size_overrides_the_header_field() {
        // Writers put sizes past the octal field's reach only in the pax
        // record; fake that by zeroing the header field of a real archive.
        let content = data(3000);
        let mut archive = tar_of("pax", "disk.raw", &content);
        let mut at = 0;
        while archive[at + 156] != b'0' {
            let size = parse_octal(&archive[at + 124..at + 136]).unwrap();
            at += TAR_BLOCK + usize::try_from(size.div_ceil(512) * 512).unwrap();
        }
        // The pax header GNU tar wrote has no size record; add one.
        let pax_record = b"13 size=3000\n";
        let mut pax = vec![0u8; TAR_BLOCK];
        pax[..100].copy_from_slice(&archive[at..at + 100]);
        pax[100..TAR_BLOCK].copy_from_slice(&archive[at + 100..at + TAR_BLOCK]);
        pax[156] = b'x';
        set_size(&mut pax, pax_record.len() as u64);
        let mut block = vec![0u8; TAR_BLOCK];
        block[..pax_record.len()].copy_from_slice(pax_record);
        let mut member = archive[at..at + TAR_BLOCK].to_vec();
        set_size(&mut member, 0);
        let tail = archive.split_off(at + TAR_BLOCK);
        archive.truncate(at);
        archive.extend_from_slice(&pax);
        archive.extend_from_slice(&block);
        archive.extend_from_slice(&member);
        archive.extend_from_slice(&tail);
        let (_, size, out) = unwrap_tar(&archive).unwrap();
        assert_eq!(size, 3000);
        assert!(out == content);
    }

    /// Rewrites a header's size field and fixes its checksum.
    fn set_size(header: &mut [u8], size: u64) {
        header[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        fix_checksum(header);
    }

    fn fix_checksum(header: &mut [u8]) {
        header[148..156].copy_from_slice(b"        ");
        let sum: u64 = header[..TAR_BLOCK].iter().map(|&b| u64::from(b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    #[test]
    fn base_256_sizes() {
        let mut header = [0u8; TAR_BLOCK];
        header[124] = 0x80;
        header[128..136].copy_from_slice(&(9u64 << 30).to_be_bytes());
        assert_eq!(header_size(&header), Some(9 << 30));
        header[124] = 0xff;
        assert_eq!(header_size(&header), None);
        header[124] = 0x80;
        header[125] = 1; // more than 64 bits
        assert_eq!(header_size(&header), None);

        // A whole archive using a base-256 size field still unwraps.
        let content = data(700);
        let mut archive = tar_of("gnu", "disk.raw", &content);
        archive[124..136].fill(0);
        archive[124] = 0x80;
        archive[134..136].copy_from_slice(&700u16.to_be_bytes());
        fix_checksum(&mut archive[..TAR_BLOCK]);
        let (_, size, out) = unwrap_tar(&archive).unwrap();
        assert_eq!(size, 700);
        assert!(out == content);
    }

    #[test]
    fn two_members_are_rejected_with_both_names() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.raw"), b"first").unwrap();
        std::fs::write(dir.path().join("b.raw"), b"second").unwrap();
        for format in ["gnu", "pax"] {
            let archive = tar(
                dir.path(),
                &[&format!("--format={format}"), "a.raw", "b.raw"],
            );
            assert_eq!(
                error_of(&archive).to_string(),
                format!("tar holds more than one file: \"a.raw\" and \"b.raw\"{ROOTFS_HINT}")
            );
        }
        // A long second name is reported whole, not as its GNU 'L' header.
        let long = "b".repeat(150);
        std::fs::write(dir.path().join(&long), b"second").unwrap();
        let archive = tar(dir.path(), &["--format=gnu", "a.raw", &long]);
        assert_eq!(
            error_of(&archive).to_string(),
            format!("tar holds more than one file: \"a.raw\" and \"{long}\"{ROOTFS_HINT}")
        );
    }

    #[test]
    fn directory_entries_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        std::fs::write(dir.path().join("images/disk.raw"), b"image").unwrap();
        let archive = tar(dir.path(), &["--format=gnu", "images"]);
        let err = error_of(&archive);
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            "tar entry \"images/\" is a directory; a tar of a disk image must hold exactly one \
             regular file (a root-filesystem tarball? declare its type: imprint.format=tgz, txz, \
             tbz, tar or tar-zst)"
        );
    }

    #[test]
    fn symlinks_and_sparse_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("elsewhere", dir.path().join("link")).unwrap();
        let archive = tar(dir.path(), &["--format=gnu", "link"]);
        assert!(
            error_of(&archive)
                .to_string()
                .contains("is a symbolic link")
        );

        let sparse = std::fs::File::create(dir.path().join("sparse.raw")).unwrap();
        sparse.set_len(1 << 20).unwrap();
        drop(sparse);
        for format in ["gnu", "pax"] {
            let archive = tar(
                dir.path(),
                &[&format!("--format={format}"), "--sparse", "sparse.raw"],
            );
            let err = error_of(&archive).to_string();
            assert!(err.contains("a sparse file"), "{format}: {err}");
        }
    }

    #[test]
    fn empty_inputs_are_rejected() {
        assert_eq!(error_of(b"").to_string(), "tar archive holds no file");
        assert_eq!(
            error_of(&[0u8; 10240]).to_string(),
            "tar archive holds no file"
        );
        let dir = tempfile::tempdir().unwrap();
        let archive = tar(dir.path(), &["--format=gnu", "--files-from=/dev/null"]);
        assert_eq!(error_of(&archive).to_string(), "tar archive holds no file");
    }

    #[test]
    fn not_a_tar_is_rejected() {
        let err = error_of(&data(2048));
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            "not a tar archive: bad header at archive byte 0"
        );
    }

    #[test]
    fn truncation_anywhere_is_unexpected_eof() {
        let content = data(5000);
        let archive = tar_of("pax", "disk.raw", &content);
        let member_end = archive
            .windows(content.len())
            .position(|w| w == &content[..])
            .unwrap()
            + content.len();
        for cut in [
            1,
            100,
            511,
            512,
            700,
            1023,
            1536,
            member_end - 1,
            member_end,
            member_end + 1,
        ] {
            let err = error_of(&archive[..cut]);
            assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "cut at {cut}: {err}");
            assert_eq!(
                err.to_string(),
                format!("tar archive truncated at archive byte {cut}")
            );
        }
    }

    #[test]
    fn missing_end_of_archive_blocks_are_a_truncation() {
        // The member is whole, but the end marker is gone or cut: the
        // transfer stopped early, so it is not a success.
        let content = data(1024);
        let archive = tar_of("gnu", "disk.raw", &content);
        for cut in [512 + 1024, 512 + 1024 + 512, 512 + 1024 + 1023] {
            let err = error_of(&archive[..cut]);
            assert_eq!(err.kind(), ErrorKind::UnexpectedEof, "cut at {cut}: {err}");
        }
        assert!(unwrap_tar(&archive[..512 + 1024 + 1024]).unwrap().2 == content);
    }

    #[test]
    fn trailing_garbage_is_rejected() {
        let content = data(1000);
        let archive = tar_of("gnu", "disk.raw", &content);
        // In the member's padding.
        let mut bad = archive.clone();
        bad[512 + 1000] = 1;
        assert_eq!(
            error_of(&bad).to_string(),
            "trailing garbage after the tar member \"disk.raw\" at archive byte 1512"
        );
        // In the end-of-archive blocks.
        let mut bad = archive.clone();
        bad[512 + 1024 + 600] = 1;
        assert_eq!(
            error_of(&bad).to_string(),
            "trailing garbage after the tar archive at archive byte 2136"
        );
        // Where the next header would be.
        let mut bad = archive.clone();
        bad[512 + 1024] = b'x';
        assert_eq!(
            error_of(&bad).to_string(),
            "trailing garbage after the tar archive at archive byte 1536"
        );
        // After the record padding.
        let mut bad = archive.clone();
        bad.extend_from_slice(b"garbage");
        assert_eq!(
            error_of(&bad).to_string(),
            format!(
                "trailing garbage after the tar archive at archive byte {}",
                archive.len()
            )
        );
        // Zeros past the record are fine.
        let mut ok = archive.clone();
        ok.extend_from_slice(&[0u8; 700]);
        assert!(unwrap_tar(&ok).unwrap().2 == content);
    }

    #[test]
    fn corrupt_member_header_is_rejected() {
        let mut archive = tar_of("gnu", "disk.raw", b"image");
        archive[10] ^= 0x40;
        assert_eq!(
            error_of(&archive).to_string(),
            "not a tar archive: bad header at archive byte 0"
        );
    }

    #[test]
    fn errors_repeat_and_eof_is_never_reached_after_one() {
        let mut archive = tar_of("gnu", "disk.raw", &data(100));
        archive.extend_from_slice(b"junk");
        let mut tar = SingleFileTar::new(Cursor::new(archive)).unwrap();
        let mut out = vec![0u8; 100];
        tar.read_exact(&mut out).unwrap();
        let mut buf = [0u8; 10];
        let first = tar.read(&mut buf).unwrap_err().to_string();
        assert_eq!(tar.read(&mut buf).unwrap_err().to_string(), first);
        assert_eq!(tar.finish().unwrap_err().to_string(), first);
    }

    #[test]
    fn finish_before_the_end_of_the_member_is_an_error() {
        let archive = tar_of("gnu", "disk.raw", &data(100));
        let mut tar = SingleFileTar::new(Cursor::new(archive)).unwrap();
        assert_eq!(tar.finish().unwrap_err().kind(), ErrorKind::InvalidInput);
        let mut out = vec![0u8; 100];
        tar.read_exact(&mut out).unwrap();
        tar.finish().unwrap();
        assert_eq!(tar.read(&mut out).unwrap(), 0);
    }

    #[test]
    fn oversized_extended_header_is_rejected_without_allocating_it() {
        let mut header = [0u8; TAR_BLOCK];
        header[..8].copy_from_slice(b"PaxHdr\0\0");
        header[156] = b'x';
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        set_size(&mut header, 1 << 30);
        let err = error_of(&header);
        assert_eq!(
            err.to_string(),
            format!(
                "tar extended header at archive byte 0 claims {} bytes",
                1u64 << 30
            )
        );
    }
}
