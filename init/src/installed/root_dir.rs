//! [`RootDir`]: a mounted filesystem of the installed system, read and
//! written by absolute paths as that system will see them once it boots.
//!
//! The image is untrusted data: its `/etc/resolv.conf` may be a symlink to
//! `/run/...`, or a crafted one to the deploy environment's `/etc`. Every
//! path goes through [`open_in_root`], so an absolute symlink means the
//! installed system's `/`, `..` never climbs above it, and magic links are
//! refused. Paths given by callers (the deploy spec, the boot loader's
//! configuration) may not contain `..` at all.
//!
//! Writes land where the booted system would put them: in a directory
//! opened through the resolver, by name (`mkdirat`, `openat(O_EXCL)`,
//! `renameat`), and a final symlink, dangling or not, is followed inside
//! the root, as `echo > /etc/x` would follow it.

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{ErrorKind, Read as _, Write as _};
use std::os::fd::{AsFd as _, AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStringExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::resolve::{MAX_SYMLINKS, Resolver, open_in_root};

/// A directory that stands for `/` of the installed system (its root, or
/// any filesystem of it looked into on its own).
///
/// It holds no descriptor between calls, so the filesystem can be
/// unmounted (`handoff::unmount_everything`) while this still exists.
#[derive(Debug, Clone)]
pub struct RootDir {
    path: PathBuf,
    resolver: Resolver,
}

impl RootDir {
    /// `path` (a mount point) as `/`, resolved by the kernel where it can.
    pub fn open(path: &Path) -> Result<RootDir> {
        let mut root = RootDir {
            path: path.to_owned(),
            resolver: Resolver::Kernel,
        };
        root.resolver = Resolver::detect(root.root_fd()?.as_fd());
        Ok(root)
    }

    /// `path` as `/`, resolved by `resolver`: tests run both.
    pub fn with_resolver(path: &Path, resolver: Resolver) -> RootDir {
        RootDir {
            path: path.to_owned(),
            resolver,
        }
    }

    /// Where it is mounted here.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn root_fd(&self) -> Result<OwnedFd> {
        rustix::fs::open(
            &self.path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .with_context(|| format!("opening {}", self.path.display()))
    }

    /// Opens `path`, which may hold `..` (from a link target).
    fn open_raw(
        &self,
        path: &Path,
        flags: OFlags,
        mode: Mode,
        follow_last: bool,
    ) -> Result<OwnedFd> {
        let root = self.root_fd()?;
        open_in_root(self.resolver, root.as_fd(), path, flags, mode, follow_last)
            .map_err(std::io::Error::from)
            .with_context(|| format!("resolving {} in {}", path.display(), self.path.display()))
    }

    /// Opens `path` (absolute inside the root, no `..`); none when it or a
    /// directory on the way does not exist.
    fn open_existing(
        &self,
        path: &str,
        flags: OFlags,
        follow_last: bool,
    ) -> Result<Option<OwnedFd>> {
        let path = checked(path)?;
        match self.open_raw(path, flags, Mode::empty(), follow_last) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory `path` (no `..`; names need not be UTF-8), every
    /// symlink on the way followed inside the root, opened `O_PATH` as
    /// the directory of `*at()` calls; none when it or a directory on the
    /// way does not exist. The rootfs extractor creates entries this way.
    pub fn open_dir(&self, path: &Path) -> Result<Option<OwnedFd>> {
        if path.components().any(|c| matches!(c, Component::ParentDir)) {
            bail!(
                "{}: '..' is not allowed in a path inside the installed system",
                path.display()
            );
        }
        match self.open_raw(path, OFlags::PATH | OFlags::DIRECTORY, Mode::empty(), true) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The file at `path`, opened for reading, symlinks followed.
    pub fn open_file(&self, path: &str) -> Result<Option<File>> {
        Ok(self
            .open_existing(path, OFlags::RDONLY, true)?
            .map(File::from))
    }

    /// The contents of the file at `path`, at most `limit` bytes (more is
    /// an error); none when it does not exist.
    pub fn read(&self, path: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let Some(file) = self.open_file(path)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {path} in {}", self.path.display()))?;
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > limit {
            bail!("{path} is larger than {limit} bytes");
        }
        Ok(Some(bytes))
    }

    /// [`read`](Self::read) as text, invalid UTF-8 replaced.
    pub fn read_text(&self, path: &str, limit: u64) -> Result<Option<String>> {
        Ok(self
            .read(path, limit)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// What `path` is; the symlink itself when `!follow_last`. None when
    /// it does not exist.
    pub fn metadata(&self, path: &str, follow_last: bool) -> Result<Option<Metadata>> {
        let Some(fd) = self.open_existing(path, OFlags::PATH, follow_last)? else {
            return Ok(None);
        };
        File::from(fd)
            .metadata()
            .map(Some)
            .with_context(|| format!("inspecting {path} in {}", self.path.display()))
    }

    /// The names in the directory `path` (not `.` and `..`); none when it
    /// does not exist or is not a directory.
    pub fn list_dir(&self, path: &str) -> Result<Option<Vec<OsString>>> {
        let fd = match self.open_existing(path, OFlags::RDONLY | OFlags::DIRECTORY, true) {
            Ok(Some(fd)) => fd,
            Ok(None) => return Ok(None),
            Err(e) if errno(&e) == Some(Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        let listing = || -> rustix::io::Result<Vec<OsString>> {
            let mut names = Vec::new();
            for entry in rustix::fs::Dir::new(fd)? {
                let name = entry?.file_name().to_bytes().to_vec();
                if name != b"." && name != b".." {
                    names.push(OsString::from_vec(name));
                }
            }
            Ok(names)
        };
        listing()
            .map(Some)
            .map_err(std::io::Error::from)
            .with_context(|| format!("listing {path} in {}", self.path.display()))
    }

    /// Where the regular file `path` really is inside the root, every
    /// symlink followed (`/vmlinuz` -> `/boot/vmlinuz-6.1`); none when it
    /// does not exist or is not a regular file.
    pub fn file_path(&self, path: &str) -> Result<Option<PathBuf>> {
        let Some(fd) = self.open_existing(path, OFlags::PATH, true)? else {
            return Ok(None);
        };
        let file = File::from(fd);
        let is_file = file
            .metadata()
            .with_context(|| format!("inspecting {path} in {}", self.path.display()))?
            .is_file();
        if !is_file {
            return Ok(None);
        }
        // The kernel knows where the descriptor leads; without /proc,
        // the path as asked is still a path to the same file.
        let root = self.root_fd()?;
        let real = |fd: i32| std::fs::read_link(format!("/proc/self/fd/{fd}"));
        let inside = match (real(file.as_raw_fd()), real(root.as_raw_fd())) {
            (Ok(file), Ok(root)) => file
                .strip_prefix(&root)
                .ok()
                .map(|rest| Path::new("/").join(rest)),
            _ => None,
        };
        Ok(Some(inside.unwrap_or_else(|| PathBuf::from(path))))
    }

    /// The directory that holds `path`'s last component, and that name:
    /// where a change to `path` happens. With `follow_last`, a symlink
    /// there (dangling or not) is followed inside the root first.
    fn parent(&self, path: &str, follow_last: bool) -> Result<(OwnedFd, OsString)> {
        let mut current = checked(path)?.to_owned();
        for _ in 0..=MAX_SYMLINKS {
            let Some(Component::Normal(name)) = current.components().next_back() else {
                bail!("{path}: names a directory, not an entry in one");
            };
            let name = name.to_owned();
            let dir_path = current.parent().unwrap_or(Path::new("/")).to_owned();
            let dir = self
                .open_raw(
                    &dir_path,
                    OFlags::PATH | OFlags::DIRECTORY,
                    Mode::empty(),
                    true,
                )
                .with_context(|| format!("{path}: opening its directory"))?;
            if !follow_last {
                return Ok((dir, name));
            }
            match rustix::fs::readlinkat(&dir, &name, Vec::new()) {
                Ok(target) => {
                    let target = PathBuf::from(OsString::from_vec(target.into_bytes()));
                    current = if target.is_absolute() {
                        target
                    } else {
                        Path::new("/").join(&dir_path).join(target)
                    };
                }
                Err(Errno::INVAL | Errno::NOENT) => return Ok((dir, name)),
                Err(e) => {
                    return Err(std::io::Error::from(e)).with_context(|| {
                        format!("{path}: reading the link {}", current.display())
                    });
                }
            }
        }
        bail!("{path}: too many levels of symbolic links")
    }

    /// Replaces the file at `path` atomically (a temporary file in the same
    /// directory, renamed over it), owned by `uid:gid` with `mode`.
    pub fn write_file(
        &self,
        path: &str,
        contents: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        let (dir, name) = self.parent(path, true)?;
        if let Some(FileType::Directory) = kind_at(&dir, &name)? {
            bail!("{path} is a directory");
        }
        let temp = temp_name(&name);
        let result = (|| -> Result<()> {
            // O_EXCL never follows a symlink planted at the temp name.
            let fd = rustix::fs::openat(
                &dir,
                &temp,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(std::io::Error::from)
            .with_context(|| format!("creating a temporary file beside {path}"))?;
            let mut file = File::from(fd);
            file.write_all(contents)
                .with_context(|| format!("writing {path}"))?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .with_context(|| format!("chown {uid}:{gid} {path}"))?;
            // After chown: chown clears setuid/setgid bits.
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("chmod {mode:04o} {path}"))?;
            file.sync_all().with_context(|| format!("syncing {path}"))?;
            rustix::fs::renameat(&dir, &temp, &dir, &name)
                .map_err(std::io::Error::from)
                .with_context(|| format!("renaming the temporary file onto {path}"))
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&dir, &temp, AtFlags::empty());
        }
        result
    }

    /// `mkdir -p`: missing parents get 0755 root:root, the directory
    /// itself `mode` and `uid:gid`. An existing directory is left as it
    /// is; a symlink in the last place is refused.
    pub fn mkdir_all(&self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        let names: Vec<&OsStr> = checked(path)?
            .components()
            .filter_map(|c| match c {
                Component::Normal(name) => Some(name),
                _ => None,
            })
            .collect();
        let mut prefix = PathBuf::from("/");
        for (i, name) in names.iter().enumerate() {
            prefix.push(name);
            let shown = prefix.display().to_string();
            let last = i + 1 == names.len();
            let (dir, name) = self.parent(&shown, false)?;
            match kind_at(&dir, &name)? {
                Some(FileType::Directory) => continue,
                // Followed by the next component's lookup.
                Some(FileType::Symlink) if !last => continue,
                Some(FileType::Symlink) => {
                    bail!("{shown} is a symlink; refusing to create a directory there")
                }
                Some(_) => bail!("{shown} exists and is not a directory"),
                None => {}
            }
            let (mode, uid, gid) = if last {
                (mode, uid, gid)
            } else {
                (0o755, 0, 0)
            };
            let created = || -> rustix::io::Result<()> {
                rustix::fs::mkdirat(&dir, &name, Mode::from_raw_mode(0o700))?;
                let fd = rustix::fs::openat(
                    &dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?;
                rustix::fs::fchown(
                    &fd,
                    Some(rustix::fs::Uid::from_raw(uid)),
                    Some(rustix::fs::Gid::from_raw(gid)),
                )?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            };
            created()
                .map_err(std::io::Error::from)
                .with_context(|| format!("creating {shown} ({mode:04o} {uid}:{gid})"))?;
        }
        Ok(())
    }

    /// Creates or replaces the symlink `path`; `target` is stored as given.
    pub fn symlink(&self, path: &str, target: &str) -> Result<()> {
        let (dir, name) = self.parent(path, false)?;
        match kind_at(&dir, &name)? {
            Some(FileType::Symlink) | None => {}
            Some(_) => bail!("{path} exists and is not a symlink"),
        }
        let temp = temp_name(&name);
        rustix::fs::symlinkat(target, &dir, &temp)
            .map_err(std::io::Error::from)
            .with_context(|| format!("creating a symlink beside {path}"))?;
        rustix::fs::renameat(&dir, &temp, &dir, &name).map_err(|e| {
            let _ = rustix::fs::unlinkat(&dir, &temp, AtFlags::empty());
            anyhow::Error::new(std::io::Error::from(e))
                .context(format!("renaming the symlink onto {path}"))
        })
    }

    /// Removes the file or symlink `path` (never what a symlink points
    /// at); nothing to do when it does not exist.
    pub fn remove(&self, path: &str) -> Result<()> {
        let (dir, name) = match self.parent(path, false) {
            Ok(found) => found,
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(e),
        };
        match kind_at(&dir, &name)? {
            None => Ok(()),
            Some(FileType::Directory) => bail!("{path} is a directory"),
            Some(_) => rustix::fs::unlinkat(&dir, &name, AtFlags::empty())
                .map_err(std::io::Error::from)
                .with_context(|| format!("removing {path}")),
        }
    }

    /// Empties the existing regular file `path` (symlinks followed inside
    /// the root), keeping its mode and owner.
    pub fn truncate(&self, path: &str) -> Result<()> {
        // O_NONBLOCK: a FIFO planted there fails instead of blocking.
        let file = self
            .open_existing(path, OFlags::WRONLY | OFlags::NONBLOCK, true)?
            .map(File::from)
            .with_context(|| format!("{path} does not exist"))?;
        let metadata = file
            .metadata()
            .with_context(|| format!("inspecting {path}"))?;
        if !metadata.is_file() {
            bail!("{path} is not a regular file");
        }
        file.set_len(0)
            .with_context(|| format!("truncating {path}"))?;
        file.sync_all().with_context(|| format!("syncing {path}"))
    }
}

/// `path` as a path inside the root: `..` is refused, whatever follows it.
fn checked(path: &str) -> Result<&Path> {
    let path_ref = Path::new(path);
    if path_ref
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        bail!("{path}: '..' is not allowed in a path inside the installed system");
    }
    Ok(path_ref)
}

/// What `name` in `dir` is, without following it; none when absent.
fn kind_at(dir: &OwnedFd, name: &OsStr) -> Result<Option<FileType>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(FileType::from_raw_mode(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("inspecting {}", Path::new(name).display())),
    }
}

fn temp_name(name: &OsStr) -> OsString {
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(".imprint-tmp");
    temp
}

fn errno(error: &anyhow::Error) -> Option<Errno> {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .and_then(std::io::Error::raw_os_error)
        .map(Errno::from_raw_os_error)
}

/// The path, or a directory on the way, does not exist (or a file stands
/// where a directory should).
fn is_missing(error: &anyhow::Error) -> bool {
    matches!(errno(error), Some(Errno::NOENT | Errno::NOTDIR))
        || error
            .chain()
            .filter_map(|e| e.downcast_ref::<std::io::Error>())
            .any(|e| e.kind() == ErrorKind::NotFound)
}
