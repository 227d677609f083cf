//! Carries out each member inside the new root: the thin layer over
//! `archive.rs`'s typed members.
//!
//! Every entry is created by name in its parent directory, opened through
//! [`RootDir`]'s resolver (`openat2(RESOLVE_IN_ROOT)` or its userspace
//! walk): a symlink extracted earlier (`a -> /etc`, `a -> ../../..`) on the
//! way to a member resolves inside the root, as the booted system would
//! see it, never outside. The entry itself is never followed: what stands
//! at its name is unlinked first (an empty directory removed, a non-empty
//! one is an error), as `tar -x` does, and metadata is set with
//! `AT_SYMLINK_NOFOLLOW` or on the descriptor just created.
//!
//! Metadata follows GNU tar's order: owner, then mode (chown clears
//! setuid/setgid), then xattrs and ACLs (chown also clears
//! `security.capability`), then times. Directories get theirs after the
//! last member, deepest first: creating their entries changes their mtime,
//! and a default ACL set early would be inherited by entries that never
//! had it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use super::UnpackSummary;
use super::acl::{self, IdKind};
use super::archive::{Archive, Kind, Member};
use super::header::Time;
use crate::installed::RootDir;
use crate::pipeline::progress::Progress;

/// Data is copied in pieces this size: never a whole file in memory.
const CHUNK: usize = 256 * 1024;

/// Where a member goes: its path inside the root, `.` components and a
/// leading `/` dropped. `None` for the root itself (`./`).
///
/// GNU tar strips a leading `/` with a warning, and so does this: an
/// absolute member name means the same place in a rootfs. `..` is
/// refused anywhere in the name, stricter than GNU tar (which strips
/// everything up to the last `..`): a rootfs has no use for it, and a
/// name that climbs is a crafted archive.
pub fn member_path(name: &[u8]) -> Result<Option<PathBuf>, String> {
    let path = Path::new(OsStr::from_bytes(name));
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("'..' in a member name is refused".to_owned()),
            Component::Prefix(_) => return Err("not a Unix path".to_owned()),
        }
    }
    Ok((!clean.as_os_str().is_empty()).then_some(clean))
}

/// A directory whose metadata waits for the end of the archive.
struct PendingDir {
    path: Option<PathBuf>,
    member: Member,
}

/// `/etc/passwd` and `/etc/group` of the new root, read the first time an
/// ACL names a user or group.
#[derive(Default)]
struct Names {
    passwd: Option<String>,
    group: Option<String>,
}

impl Names {
    fn lookup(&mut self, root: &RootDir, kind: IdKind, name: &str) -> Option<u32> {
        let (slot, path) = match kind {
            IdKind::User => (&mut self.passwd, "/etc/passwd"),
            IdKind::Group => (&mut self.group, "/etc/group"),
        };
        if slot.is_none() {
            *slot = Some(
                root.read_text(path, 16 << 20)
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            );
        }
        acl::id_from_db(slot.as_deref().unwrap_or(""), name)
    }
}

/// Extracts every member of `archive` into `root`.
pub fn unpack_into(
    archive: impl Read,
    root: &RootDir,
    progress: &mut dyn Progress,
) -> Result<UnpackSummary> {
    let mut archive = Archive::new(archive);
    let mut summary = UnpackSummary::default();
    let mut pending = Vec::new();
    let mut names = Names::default();
    let mut buf = vec![0u8; CHUNK];
    let mut parents = LastParent::default();
    while let Some(member) = archive.next_member()? {
        let shown = member.display_name();
        let path = member_path(&member.name)
            .map_err(|why| anyhow::anyhow!("extracting {shown}: {why}"))?;
        let mut ctx = Ctx {
            root,
            names: &mut names,
            summary: &mut summary,
            progress,
            parents: &mut parents,
        };
        if let Some(dir) = ctx
            .extract(&mut archive, &member, path.as_deref(), &mut buf)
            .with_context(|| format!("extracting {shown}"))?
        {
            pending.push(PendingDir { path: dir, member });
        }
    }
    // Deepest first; the sort is stable, so later members of one depth
    // keep their order (a directory archived twice gets the later data).
    pending
        .sort_by_key(|d| std::cmp::Reverse(d.path.as_ref().map_or(0, |p| p.components().count())));
    for dir in &pending {
        let shown = dir.member.display_name();
        finish_dir(root, &mut names, dir)
            .with_context(|| format!("extracting {shown}: setting the directory's metadata"))?;
    }
    Ok(summary)
}

struct Ctx<'a> {
    root: &'a RootDir,
    names: &'a mut Names,
    summary: &'a mut UnpackSummary,
    progress: &'a mut dyn Progress,
    parents: &'a mut LastParent,
}

/// The directory the last member went into, kept while members go into
/// the same one (a rootfs lists a directory's files together), so each
/// costs no path resolution. Only a member that is a regular file or a
/// hard link, created without replacing anything, keeps it: such a
/// member changes no directory or symlink, so the path still leads to
/// the same directory.
#[derive(Default)]
struct LastParent {
    last: Option<(PathBuf, OwnedFd)>,
}

impl LastParent {
    /// The directory holding `path`, and its last name.
    fn take(&mut self, root: &RootDir, path: &Path) -> Result<(OwnedFd, OsString)> {
        let parent = path.parent().unwrap_or(Path::new(""));
        if let Some((cached, fd)) = self.last.take() {
            if cached == parent {
                if let Some(name) = path.file_name() {
                    return Ok((fd, name.to_owned()));
                }
            }
        }
        parent_of(root, path)
    }

    fn keep(&mut self, path: &Path, dir: OwnedFd) {
        let parent = path.parent().unwrap_or(Path::new("")).to_owned();
        self.last = Some((parent, dir));
    }
}

impl Ctx<'_> {
    /// Creates one member. A directory comes back to get its metadata at
    /// the end (`Some(None)` for the root itself).
    fn extract<R: Read>(
        &mut self,
        archive: &mut Archive<R>,
        member: &Member,
        path: Option<&Path>,
        buf: &mut [u8],
    ) -> Result<Option<Option<PathBuf>>> {
        let Some(path) = path else {
            if member.kind == Kind::Directory {
                self.summary.dirs += 1;
                return Ok(Some(None));
            }
            bail!("only a directory may stand for the root itself");
        };
        let (dir, name) = self.parents.take(self.root, path)?;
        match &member.kind {
            Kind::Directory => {
                match rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(Errno::EXIST) if kind_at(&dir, &name)? == Some(FileType::Directory) => {}
                    Err(Errno::EXIST) => {
                        remove_existing(&dir, &name)?;
                        make_dir(&dir, &name)?;
                    }
                    Err(e) => {
                        return Err(std::io::Error::from(e)).context("creating the directory");
                    }
                }
                self.summary.dirs += 1;
                return Ok(Some(Some(path.to_owned())));
            }
            Kind::File { sparse } => {
                // O_EXCL: a symlink at the name is never followed.
                let (fd, replaced) = create_replacing(&dir, &name, "the file", || {
                    rustix::fs::openat(
                        &dir,
                        &name,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o600),
                    )
                })?;
                let mut file = File::from(fd);
                match sparse {
                    None => self.copy(archive, &mut file, member.data_size, buf)?,
                    Some(sparse) => {
                        for region in &sparse.regions {
                            file.seek(SeekFrom::Start(region.offset))
                                .context("seeking to a sparse region")?;
                            self.copy(archive, &mut file, region.len, buf)?;
                        }
                        // The last hole, if any, is the file's length.
                        file.set_len(sparse.real_size)
                            .context("setting the sparse file's size")?;
                    }
                }
                self.summary.files += 1;
                set_owner_mode(&file, member)?;
                set_xattrs(&Handle::Fd(file.as_fd()), member, self.root, self.names)?;
                set_times_fd(&file, member)?;
                if !replaced {
                    self.parents.keep(path, dir);
                }
                return Ok(None);
            }
            Kind::HardLink(target) => {
                let target_path = member_path(target)
                    .map_err(|why| anyhow::anyhow!("hard link target: {why}"))?
                    .context("hard link to the root directory")?;
                if target_path == path {
                    // Linking a name to itself: already there.
                    self.summary.hard_links += 1;
                    return Ok(None);
                }
                // Never made here: the target must have been extracted.
                let target_dir = target_path
                    .parent()
                    .map_or(Ok(None), |parent| self.root.open_dir(parent))?
                    .with_context(|| {
                        format!("hard link target {} is missing", target_path.display())
                    })?;
                let target_name = target_path
                    .file_name()
                    .context("a hard link target without a name")?;
                let ((), replaced) = create_replacing(
                    &dir,
                    &name,
                    &format!("a link to {}", target_path.display()),
                    || rustix::fs::linkat(&target_dir, target_name, &dir, &name, AtFlags::empty()),
                )?;
                self.summary.hard_links += 1;
                if !replaced {
                    self.parents.keep(path, dir);
                }
                return Ok(None);
            }
            Kind::Symlink(target) => {
                create_replacing(&dir, &name, "the symlink", || {
                    rustix::fs::symlinkat(OsStr::from_bytes(target), &dir, &name)
                })?;
                self.summary.symlinks += 1;
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                let kind = if matches!(member.kind, Kind::CharDevice { .. }) {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let dev = rustix::fs::makedev(*major, *minor);
                create_replacing(&dir, &name, "the device node", || {
                    rustix::fs::mknodat(&dir, &name, kind, Mode::from_raw_mode(0o600), dev)
                })?;
                self.summary.special += 1;
            }
            Kind::Fifo => {
                create_replacing(&dir, &name, "the FIFO", || {
                    rustix::fs::mknodat(&dir, &name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                })?;
                self.summary.special += 1;
            }
        }
        // Symlinks, devices and FIFOs: by name, never followed or opened.
        set_owner_mode_at(&dir, &name, member)?;
        let proc_path = proc_path(&dir, &name);
        set_xattrs(&Handle::Path(&proc_path), member, self.root, self.names)?;
        set_times_at(&dir, &name, member)?;
        Ok(None)
    }

    fn copy<R: Read>(
        &mut self,
        archive: &mut Archive<R>,
        file: &mut File,
        mut len: u64,
        buf: &mut [u8],
    ) -> Result<()> {
        while len > 0 {
            let want = usize::try_from(len).map_or(buf.len(), |l| l.min(buf.len()));
            let n = archive.read_data(&mut buf[..want])?;
            file.write_all(&buf[..n]).context("writing the file")?;
            len -= n as u64;
            self.summary.bytes += n as u64;
            self.progress.update(self.summary.bytes, None);
        }
        Ok(())
    }
}

/// The directory that holds `path` (opened through the resolver) and the
/// last name. Missing directories on the way are created 0755 root:root,
/// as GNU tar makes them for members archived without their parents.
fn parent_of(root: &RootDir, path: &Path) -> Result<(OwnedFd, OsString)> {
    let name = path
        .file_name()
        .context("a member path without a name")?
        .to_owned();
    let parent = path.parent().unwrap_or(Path::new(""));
    if let Some(dir) = root.open_dir(parent)? {
        return Ok((dir, name));
    }
    let mut here = root
        .open_dir(Path::new(""))?
        .context("the target directory is gone")?;
    let mut walked = PathBuf::new();
    for part in parent.components() {
        walked.push(part);
        if let Some(next) = root.open_dir(&walked)? {
            here = next;
            continue;
        }
        let part = part.as_os_str();
        make_dir(&here, part)
            .and_then(|()| {
                rustix::fs::chmodat(&here, part, Mode::from_raw_mode(0o755), AtFlags::empty())
                    .map_err(std::io::Error::from)
                    .context("setting its mode")
            })
            .with_context(|| format!("creating the missing directory {}", walked.display()))?;
        here = root
            .open_dir(&walked)?
            .with_context(|| format!("{} vanished after its creation", walked.display()))?;
    }
    Ok((here, name))
}

fn make_dir(dir: &OwnedFd, name: &OsStr) -> Result<()> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))
        .map_err(std::io::Error::from)
        .context("creating the directory")
}

fn kind_at(dir: &OwnedFd, name: &OsStr) -> Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(std::io::Error::from(e)).context("inspecting what is there"),
    }
}

/// Creates an entry with `create`; where something already stands at the
/// name, removes it ([`remove_existing`]) and creates once more. The
/// second value says whether something was replaced.
fn create_replacing<T>(
    dir: &OwnedFd,
    name: &OsStr,
    what: &str,
    create: impl Fn() -> rustix::io::Result<T>,
) -> Result<(T, bool)> {
    let result = match create() {
        Err(Errno::EXIST) => {
            remove_existing(dir, name)?;
            create().map(|made| (made, true))
        }
        other => other.map(|made| (made, false)),
    };
    result
        .map_err(std::io::Error::from)
        .with_context(|| format!("creating {what}"))
}

/// Makes room for a new entry: a file, symlink or node is unlinked (a
/// symlink itself, never its target), an empty directory removed.
fn remove_existing(dir: &OwnedFd, name: &OsStr) -> Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .map_err(std::io::Error::from)
            .context("replacing the directory there (only an empty one can be)"),
        Some(_) => rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(std::io::Error::from)
            .context("removing the existing entry"),
    }
}

fn uid_gid(member: &Member) -> (Option<Uid>, Option<Gid>) {
    (
        Some(Uid::from_raw(member.uid)),
        Some(Gid::from_raw(member.gid)),
    )
}

fn set_owner_mode(fd: &impl AsFd, member: &Member) -> Result<()> {
    let (uid, gid) = uid_gid(member);
    rustix::fs::fchown(fd, uid, gid)
        .map_err(std::io::Error::from)
        .with_context(|| format!("chown {}:{}", member.uid, member.gid))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(member.mode))
        .map_err(std::io::Error::from)
        .with_context(|| format!("chmod {:04o}", member.mode))
}

fn set_owner_mode_at(dir: &OwnedFd, name: &OsStr, member: &Member) -> Result<()> {
    let (uid, gid) = uid_gid(member);
    rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(std::io::Error::from)
        .with_context(|| format!("chown {}:{}", member.uid, member.gid))?;
    if matches!(member.kind, Kind::Symlink(_)) {
        // A symlink's mode is always 0777 on Linux.
        return Ok(());
    }
    rustix::fs::chmodat(
        dir,
        name,
        Mode::from_raw_mode(member.mode),
        AtFlags::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("chmod {:04o}", member.mode))
}

/// Where xattrs are set: the descriptor of a file or directory just
/// made, or, for what must not be opened (a symlink, a device node, a
/// FIFO), `/proc/self/fd/<parent>/<name>` with `lsetxattr`: the parent
/// descriptor is the resolved directory, and the name is not followed.
enum Handle<'a> {
    Fd(std::os::fd::BorrowedFd<'a>),
    Path(&'a Path),
}

fn proc_path(dir: &OwnedFd, name: &OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name)
}

fn set_xattr(handle: &Handle<'_>, name: &[u8], value: &[u8]) -> Result<()> {
    let name_os = OsStr::from_bytes(name);
    let result = match handle {
        Handle::Fd(fd) => rustix::fs::fsetxattr(fd, name_os, value, XattrFlags::empty()),
        Handle::Path(path) => rustix::fs::lsetxattr(*path, name_os, value, XattrFlags::empty()),
    };
    result
        .map_err(std::io::Error::from)
        .with_context(|| format!("setting {}", String::from_utf8_lossy(name)))
}

const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// The xattrs, then the ACLs. An ACL archived both as its raw xattr
/// (`--xattrs-include='*'`) and as text (`--acls`) is set once, from the
/// raw value: the kernel's own bytes, with numeric ids.
fn set_xattrs(
    handle: &Handle<'_>,
    member: &Member,
    root: &RootDir,
    names: &mut Names,
) -> Result<()> {
    for (name, value) in &member.xattrs {
        set_xattr(handle, name, value)?;
    }
    for (text, xattr) in [
        (&member.acl_access, ACL_ACCESS),
        (&member.acl_default, ACL_DEFAULT),
    ] {
        let Some(text) = text else { continue };
        if member.xattrs.iter().any(|(n, _)| n == xattr) {
            continue;
        }
        let value = acl::acl_to_xattr(text, &mut |kind, name| names.lookup(root, kind, name))
            .map_err(anyhow::Error::msg)
            .with_context(|| {
                format!("converting the ACL for {}", String::from_utf8_lossy(xattr))
            })?;
        set_xattr(handle, xattr, &value)?;
    }
    Ok(())
}

fn timestamps(member: &Member) -> Timestamps {
    let spec = |t: Time| Timespec {
        tv_sec: t.secs,
        tv_nsec: t.nanos.into(),
    };
    Timestamps {
        // Without an archived atime, the access time stays the time of
        // extraction, as with GNU tar.
        last_access: member.atime.map_or(
            Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            spec,
        ),
        last_modification: spec(member.mtime),
    }
}

fn set_times_fd(fd: &impl AsFd, member: &Member) -> Result<()> {
    rustix::fs::futimens(fd, &timestamps(member))
        .map_err(std::io::Error::from)
        .context("setting its times")
}

fn set_times_at(dir: &OwnedFd, name: &OsStr, member: &Member) -> Result<()> {
    rustix::fs::utimensat(dir, name, &timestamps(member), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(std::io::Error::from)
        .context("setting its times")
}

/// A directory's owner, mode, xattrs and times, once nothing more is
/// created in it. It is opened without following a symlink in its place
/// (a later member may have replaced it).
fn finish_dir(root: &RootDir, names: &mut Names, dir: &PendingDir) -> Result<()> {
    let fd = match &dir.path {
        None => root
            .open_dir(Path::new(""))?
            .context("the target directory is gone")?,
        Some(path) => {
            let name = path.file_name().context("a member path without a name")?;
            let parent = path.parent().unwrap_or(Path::new(""));
            let opened = match root.open_dir(parent)? {
                Some(parent) => rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
                None => Err(Errno::NOENT),
            };
            match opened {
                Ok(fd) => fd,
                // A later member replaced it (an empty directory can be):
                // that member's metadata stands, as with GNU tar.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => {
                    log::debug!("{} is no longer a directory", path.display());
                    return Ok(());
                }
                Err(e) => {
                    return Err(std::io::Error::from(e)).context("opening the directory");
                }
            }
        }
    };
    // `root.open_dir` gives an O_PATH descriptor, which fchown and
    // fsetxattr refuse: reopen it for reading.
    let fd = rustix::fs::openat(
        &fd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .context("opening the directory")?;
    set_owner_mode(&fd, &dir.member)?;
    set_xattrs(&Handle::Fd(fd.as_fd()), &dir.member, root, names)?;
    set_times_fd(&fd, &dir.member)
}
