//! Reads a tar stream member by member: headers, pax and GNU extended
//! headers folded into one typed [`Member`], then its data in bounded reads.
//!
//! Lenient where GNU tar is (an archive may end at a header boundary
//! without its two zero blocks, or after one), strict where a guess would
//! put wrong bytes on the disk: a bad checksum, a short read inside a
//! member, a non-zero block after the end marker are errors naming the
//! archive byte offset and the member.

use std::io::{ErrorKind, Read};

use anyhow::{Context, Result, bail};

use super::header::{
    self, Header, PaxRecord, Region, Time, decimal, decode_xattr_name, parse_header, parse_pax,
    parse_sparse_extension, parse_sparse_map_0_1, parse_sparse_map_1_0,
};
use crate::pipeline::format::TAR_BLOCK;
use crate::pipeline::read_full;

/// Extended headers (pax records, GNU long names) are small; a huge one is
/// a corrupt archive, and reading it whole must not exhaust PID 1's memory.
const MAX_METADATA_SIZE: u64 = 1 << 20;

/// The most regions a sparse map may list (16 bytes each in memory).
const MAX_SPARSE_REGIONS: usize = 1 << 20;

const BLOCK: u64 = 512;

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file (`0`, `\0`, `7`); its data follows.
    File {
        sparse: Option<Sparse>,
    },
    /// A hard link to an earlier member (its archive name).
    HardLink(Vec<u8>),
    /// A symlink; the target is stored verbatim.
    Symlink(Vec<u8>),
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Directory,
    Fifo,
}

/// A sparse file: its data is `regions`, stored back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    pub real_size: u64,
    pub regions: Vec<Region>,
}

/// One member, every header that describes it folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name as archived (not yet checked or normalised).
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Time,
    /// From pax `atime`, when archived.
    pub atime: Option<Time>,
    /// `SCHILY.xattr.*`, names decoded, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// `SCHILY.acl.access` / `SCHILY.acl.default`: GNU tar's text form.
    pub acl_access: Option<String>,
    pub acl_default: Option<String>,
    /// Bytes of data stored in the archive for it (a sparse file's regions).
    pub data_size: u64,
    /// Archive byte offset of its first header.
    pub offset: u64,
}

impl Member {
    pub fn display_name(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// pax keywords that apply to a member; `g` ones stay for every member
/// after them, `x` ones for the next member only.
#[derive(Debug, Clone, Default)]
struct Extended {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<Time>,
    atime: Option<Time>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    acl_access: Option<String>,
    acl_default: Option<String>,
    sparse_major: Option<u64>,
    sparse_minor: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_real_size: Option<u64>,
    /// Sparse 0.1's `GNU.sparse.map`, or 0.0's offset/numbytes pairs.
    sparse_map: Option<Vec<Region>>,
    sparse_pending_offset: Option<u64>,
    /// star's and libarchive's device numbers too large for the header.
    devmajor: Option<u64>,
    devminor: Option<u64>,
}

impl Extended {
    fn apply(&mut self, records: &[PaxRecord]) -> Result<(), String> {
        for (key, value) in records {
            let bad = || format!("malformed pax value for {}", String::from_utf8_lossy(key));
            let num = || decimal(value).ok_or_else(bad);
            let time = || header::parse_pax_time(value).ok_or_else(bad);
            // An empty value removes the keyword (pax "Extended Header"):
            // the header's own field applies again.
            let empty = value.is_empty();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                let name = decode_xattr_name(name);
                self.xattrs.retain(|(n, _)| *n != name);
                self.xattrs.push((name, value.clone()));
                continue;
            }
            match key.as_slice() {
                b"path" => self.path = (!empty).then(|| value.clone()),
                b"linkpath" => self.linkpath = (!empty).then(|| value.clone()),
                b"size" => self.size = if empty { None } else { Some(num()?) },
                b"uid" => self.uid = if empty { None } else { Some(num()?) },
                b"gid" => self.gid = if empty { None } else { Some(num()?) },
                b"mtime" => self.mtime = if empty { None } else { Some(time()?) },
                b"atime" => self.atime = if empty { None } else { Some(time()?) },
                b"SCHILY.acl.access" => self.acl_access = acl_text(value),
                b"SCHILY.acl.default" => self.acl_default = acl_text(value),
                b"SCHILY.devmajor" => self.devmajor = if empty { None } else { Some(num()?) },
                b"SCHILY.devminor" => self.devminor = if empty { None } else { Some(num()?) },
                b"GNU.sparse.major" => self.sparse_major = Some(num()?),
                b"GNU.sparse.minor" => self.sparse_minor = Some(num()?),
                b"GNU.sparse.name" => self.sparse_name = Some(value.clone()),
                b"GNU.sparse.realsize" | b"GNU.sparse.size" => {
                    self.sparse_real_size = Some(num()?);
                }
                b"GNU.sparse.map" => self.sparse_map = Some(parse_sparse_map_0_1(value)?),
                b"GNU.sparse.offset" => self.sparse_pending_offset = Some(num()?),
                b"GNU.sparse.numbytes" => {
                    let offset = self.sparse_pending_offset.take().ok_or_else(|| {
                        "GNU.sparse.numbytes without GNU.sparse.offset".to_owned()
                    })?;
                    let map = self.sparse_map.get_or_insert_with(Vec::new);
                    if map.len() >= MAX_SPARSE_REGIONS {
                        return Err("sparse map too large".to_owned());
                    }
                    map.push(Region {
                        offset,
                        len: num()?,
                    });
                }
                // Red Hat's tar keeps the SELinux label here.
                b"RHT.security.selinux"
                    if !self.xattrs.iter().any(|(n, _)| n == b"security.selinux") =>
                {
                    self.xattrs
                        .push((b"security.selinux".to_vec(), value.clone()));
                }
                // Unknown keywords are ignored, as pax requires; uname and
                // gname are, as with --numeric-owner.
                _ => {}
            }
        }
        Ok(())
    }

    fn is_sparse(&self) -> bool {
        self.sparse_major.is_some() || self.sparse_map.is_some() || self.sparse_name.is_some()
    }
}

fn acl_text(value: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(value).trim().to_owned();
    (!text.is_empty()).then_some(text)
}

/// A tar stream being read.
#[derive(Debug)]
pub struct Archive<R> {
    inner: R,
    /// Archive bytes consumed so far.
    offset: u64,
    /// Data of the current member not read yet, and the padding after it.
    remaining: u64,
    padding: u64,
    global: Extended,
    /// The last member's name, for errors about what comes after it.
    last: String,
    ended: bool,
}

impl<R: Read> Archive<R> {
    pub fn new(inner: R) -> Archive<R> {
        Archive {
            inner,
            offset: 0,
            remaining: 0,
            padding: 0,
            global: Extended::default(),
            last: String::new(),
            ended: false,
        }
    }

    /// Where an error is: the offset, and the member it follows.
    fn at(&self, offset: u64) -> String {
        if self.last.is_empty() {
            format!("at archive byte {offset}")
        } else {
            format!("at archive byte {offset} (after {})", self.last)
        }
    }

    /// The next member, its data ready to [`read_data`](Self::read_data);
    /// none at the end of the archive. Data of the previous member not
    /// read yet is skipped.
    pub fn next_member(&mut self) -> Result<Option<Member>> {
        if self.ended {
            return Ok(None);
        }
        self.skip_data()?;
        let mut local = Extended::default();
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut first: Option<u64> = None;
        loop {
            let at = self.offset;
            let mut block = [0u8; TAR_BLOCK];
            let n = self.fill(&mut block)?;
            if n == 0 && first.is_none() {
                log::warn!("the tar archive ends without its end-of-archive blocks");
                self.ended = true;
                return Ok(None);
            }
            if n < TAR_BLOCK {
                bail!("tar archive truncated {}", self.at(self.offset));
            }
            if block.iter().all(|&b| b == 0) {
                if let Some(start) = first {
                    bail!(
                        "tar archive ends after an extended header begun at archive byte {start}"
                    );
                }
                self.end_of_archive(at)?;
                return Ok(None);
            }
            let header = parse_header(&block).map_err(|why| {
                anyhow::anyhow!(
                    "tar header {}: {why} (name field {:?})",
                    self.at(at),
                    String::from_utf8_lossy(header::c_bytes(&block[..100]))
                )
            })?;
            first.get_or_insert(at);
            match header.typeflag {
                b'x' | b'g' => {
                    let data = self.read_metadata(header.size, at)?;
                    let records = parse_pax(&data)
                        .map_err(|why| anyhow::anyhow!("pax header {}: {why}", self.at(at)))?;
                    let target = if header.typeflag == b'x' {
                        &mut local
                    } else {
                        &mut self.global
                    };
                    target
                        .apply(&records)
                        .map_err(|why| anyhow::anyhow!("pax header {}: {why}", self.at(at)))?;
                }
                b'L' => {
                    long_name =
                        Some(header::c_bytes(&self.read_metadata(header.size, at)?).to_vec());
                }
                b'K' => {
                    long_link =
                        Some(header::c_bytes(&self.read_metadata(header.size, at)?).to_vec());
                }
                _ => {
                    let start = first.unwrap_or(at);
                    let member =
                        self.member(header, &local, long_name.take(), long_link.take(), start)?;
                    self.last = member.display_name();
                    return Ok(Some(member));
                }
            }
        }
    }

    /// Folds the headers into a member and reads what precedes its data
    /// (old GNU sparse extension blocks, a pax 1.0 sparse map).
    fn member(
        &mut self,
        header: Header,
        local: &Extended,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
        start: u64,
    ) -> Result<Member> {
        let mut ext = self.global.clone();
        merge(&mut ext, local);
        let name = ext
            .sparse_name
            .clone()
            .or(ext.path.clone())
            .or(long_name)
            .unwrap_or_else(|| header.name.clone());
        let shown = String::from_utf8_lossy(&name).into_owned();
        let fail =
            |why: String| anyhow::anyhow!("tar member {shown} at archive byte {start}: {why}");
        let link = ext
            .linkpath
            .clone()
            .or(long_link)
            .unwrap_or_else(|| header.linkname.clone());
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| fail(format!("{what} {v} does not fit 32 bits")))
        };
        let uid = id(ext.uid.unwrap_or(header.uid), "uid")?;
        let gid = id(ext.gid.unwrap_or(header.gid), "gid")?;
        let mtime = ext.mtime.unwrap_or(Time {
            secs: header.mtime,
            nanos: 0,
        });
        let mut data_size = ext.size.unwrap_or(header.size);
        self.remaining = data_size;
        self.padding = (BLOCK - data_size % BLOCK) % BLOCK;
        let device = || -> Result<(u32, u32)> {
            let (major, minor) = header
                .device
                .ok_or_else(|| fail("no device numbers".to_owned()))?;
            let number = |pax: Option<u64>, header: u32, what: &str| match pax {
                None => Ok(header),
                Some(v) => u32::try_from(v).map_err(|_| fail(format!("{what} {v} out of range"))),
            };
            Ok((
                number(ext.devmajor, major, "devmajor")?,
                number(ext.devminor, minor, "devminor")?,
            ))
        };
        let kind = match header.typeflag {
            b'0' | 0 | b'7' if ext.is_sparse() => {
                let sparse = self.pax_sparse(&ext).map_err(|e| fail(format!("{e:#}")))?;
                data_size = self.remaining;
                Kind::File {
                    sparse: Some(sparse),
                }
            }
            b'0' | 0 | b'7' => Kind::File { sparse: None },
            b'S' => {
                let old = header
                    .old_sparse
                    .clone()
                    .ok_or_else(|| fail("no sparse map".to_owned()))?;
                let mut regions = old.regions;
                let mut more = old.extended;
                while more {
                    let at = self.offset;
                    let mut block = [0u8; TAR_BLOCK];
                    if self.fill(&mut block)? < TAR_BLOCK {
                        return Err(fail(format!("truncated at archive byte {}", self.offset)));
                    }
                    let (extra, next) = parse_sparse_extension(&block).map_err(|why| {
                        fail(format!("sparse header at archive byte {at}: {why}"))
                    })?;
                    if regions.len() + extra.len() > MAX_SPARSE_REGIONS {
                        return Err(fail("sparse map too large".to_owned()));
                    }
                    regions.extend(extra);
                    more = next;
                }
                let sparse = Sparse {
                    real_size: old.real_size,
                    regions,
                };
                check_regions(&sparse, data_size).map_err(fail)?;
                Kind::File {
                    sparse: Some(sparse),
                }
            }
            b'1' => Kind::HardLink(link),
            b'2' => Kind::Symlink(link),
            b'3' => {
                let (major, minor) = device()?;
                Kind::CharDevice { major, minor }
            }
            b'4' => {
                let (major, minor) = device()?;
                Kind::BlockDevice { major, minor }
            }
            b'5' => Kind::Directory,
            b'6' => Kind::Fifo,
            other => {
                return Err(fail(format!(
                    "unsupported entry type {:?}",
                    char::from(other)
                )));
            }
        };
        if name.is_empty() {
            return Err(fail("empty name".to_owned()));
        }
        Ok(Member {
            name,
            kind,
            mode: header.mode,
            uid,
            gid,
            mtime,
            atime: ext.atime,
            xattrs: ext.xattrs,
            acl_access: ext.acl_access,
            acl_default: ext.acl_default,
            data_size,
            offset: start,
        })
    }

    /// The map of a pax sparse file: in the records (0.0, 0.1) or, for
    /// 1.0, at the start of the data, padded to a block.
    fn pax_sparse(&mut self, ext: &Extended) -> Result<Sparse> {
        let real_size = ext
            .sparse_real_size
            .ok_or_else(|| anyhow::anyhow!("sparse file without GNU.sparse.realsize"))?;
        let regions = match (ext.sparse_major, ext.sparse_minor) {
            (Some(1), Some(0)) => {
                let mut text = Vec::new();
                loop {
                    if self.remaining < BLOCK {
                        bail!("sparse map runs past the member's data");
                    }
                    let mut block = [0u8; TAR_BLOCK];
                    self.read_data_exact(&mut block)?;
                    text.extend_from_slice(&block);
                    if let Some(regions) = parse_sparse_map_1_0(&text, MAX_SPARSE_REGIONS)
                        .map_err(anyhow::Error::msg)?
                    {
                        break regions;
                    }
                    if text.len() > 16 * MAX_SPARSE_REGIONS * 2 {
                        bail!("sparse map too large");
                    }
                }
            }
            (Some(major), minor) if major != 0 => bail!(
                "sparse format {major}.{} is not supported",
                minor.unwrap_or(0)
            ),
            _ => ext
                .sparse_map
                .clone()
                .ok_or_else(|| anyhow::anyhow!("sparse file without a map"))?,
        };
        let sparse = Sparse { real_size, regions };
        check_regions(&sparse, self.remaining).map_err(anyhow::Error::msg)?;
        Ok(sparse)
    }

    /// Reads up to `buf.len()` bytes of the current member's data; 0 at
    /// its end. A short archive is an error.
    pub fn read_data(&mut self, buf: &mut [u8]) -> Result<usize> {
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        if want == 0 {
            return Ok(0);
        }
        loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => bail!("tar archive truncated {}", self.at(self.offset)),
                Ok(n) => {
                    self.offset += n as u64;
                    self.remaining -= n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("reading the tar archive {}", self.at(self.offset))));
                }
            }
        }
    }

    fn read_data_exact(&mut self, mut buf: &mut [u8]) -> Result<()> {
        while !buf.is_empty() {
            let n = self.read_data(buf)?;
            buf = &mut buf[n..];
        }
        Ok(())
    }

    fn skip_data(&mut self) -> Result<()> {
        let mut scratch = [0u8; 8 * TAR_BLOCK];
        while self.remaining > 0 {
            self.read_data(&mut scratch)?;
        }
        while self.padding > 0 {
            let want = usize::try_from(self.padding)
                .unwrap_or(TAR_BLOCK)
                .min(TAR_BLOCK);
            let n = self.fill(&mut scratch[..want])?;
            if n < want {
                bail!("tar archive truncated {}", self.at(self.offset));
            }
            self.padding -= n as u64;
        }
        Ok(())
    }

    /// After a zero block: a second one (or GNU tar's lone-block leniency,
    /// EOF), then nothing but zeros (record padding) up to EOF.
    fn end_of_archive(&mut self, at: u64) -> Result<()> {
        self.ended = true;
        let mut buf = [0u8; 8 * TAR_BLOCK];
        let mut first = true;
        loop {
            let start = self.offset;
            let n = self.fill(&mut buf)?;
            if first && n == 0 {
                log::warn!("a lone zero block at archive byte {at} ends the tar archive");
            }
            first = false;
            if let Some(pos) = buf[..n].iter().position(|&b| b != 0) {
                bail!(
                    "garbage after the end of the tar archive at archive byte {}",
                    start + pos as u64
                );
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    }

    fn read_metadata(&mut self, size: u64, at: u64) -> Result<Vec<u8>> {
        if size > MAX_METADATA_SIZE {
            bail!("tar extended header {} claims {size} bytes", self.at(at));
        }
        let padded = size.div_ceil(BLOCK) * BLOCK;
        let mut data = vec![0u8; usize::try_from(padded).unwrap_or(0)];
        if self.fill(&mut data)? < data.len() {
            bail!("tar archive truncated {}", self.at(self.offset));
        }
        data.truncate(usize::try_from(size).unwrap_or(0));
        Ok(data)
    }

    /// Reads until `buf` is full or EOF, retrying `Interrupted`.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let filled = read_full(&mut self.inner, buf)
            .with_context(|| format!("reading the tar archive {}", self.at(self.offset)))?;
        self.offset += filled as u64;
        Ok(filled)
    }
}

/// `local` over `global`: each keyword `local` sets wins.
fn merge(ext: &mut Extended, local: &Extended) {
    macro_rules! over {
        ($($field:ident),*) => { $( if local.$field.is_some() { ext.$field = local.$field.clone(); } )* };
    }
    over!(
        path,
        linkpath,
        size,
        uid,
        gid,
        mtime,
        atime,
        acl_access,
        acl_default,
        sparse_major,
        sparse_minor,
        sparse_name,
        sparse_real_size,
        sparse_map,
        devmajor,
        devminor
    );
    for (name, value) in &local.xattrs {
        ext.xattrs.retain(|(n, _)| n != name);
        ext.xattrs.push((name.clone(), value.clone()));
    }
}

/// Regions in order, inside the real size, adding up to the stored data.
fn check_regions(sparse: &Sparse, stored: u64) -> Result<(), String> {
    let mut end = 0u64;
    let mut total = 0u64;
    for r in &sparse.regions {
        let r_end = r
            .offset
            .checked_add(r.len)
            .ok_or("sparse region overflows")?;
        if r.offset < end || r_end > sparse.real_size {
            return Err(format!(
                "sparse region {}+{} out of order or past the real size {}",
                r.offset, r.len, sparse.real_size
            ));
        }
        end = r_end;
        total = total.checked_add(r.len).ok_or("sparse regions overflow")?;
    }
    if total != stored {
        return Err(format!(
            "sparse regions hold {total} bytes but the archive stores {stored}"
        ));
    }
    Ok(())
}
