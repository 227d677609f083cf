//! Opening a path under a directory as if that directory were `/`: the one
//! resolver every read and write inside the installed system goes through.
//!
//! The kernel does it ([`openat2(2)`] with `RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS`, Linux 5.6+): an absolute symlink starts again at
//! the root, `..` at the root stays there, and `/proc/self/root`-style
//! magic links are refused. Where `openat2` is missing (`ENOSYS`: RHEL 8's
//! 4.18, some seccomp filters), [`Resolver::Userspace`] walks the path one
//! component at a time with `O_NOFOLLOW` and `readlinkat`, with the same
//! rules: it refuses to follow any symlink that lives on procfs, a superset
//! of the magic links. Both follow at most [`MAX_SYMLINKS`] links per
//! lookup, as the kernel's `MAXSYMLINKS`.
//!
//! [`openat2(2)`]: https://man7.org/linux/man-pages/man2/openat2.2.html

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// How many symbolic links one lookup may follow, as Linux's `MAXSYMLINKS`.
pub const MAX_SYMLINKS: u32 = 40;

/// Which implementation resolves paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`.
    Kernel,
    /// Component by component, for kernels without `openat2`.
    Userspace,
}

impl Resolver {
    /// The kernel's when `openat2` answers here, else the userspace one.
    pub fn detect(root: BorrowedFd<'_>) -> Resolver {
        match openat2(root, Path::new("."), OFlags::PATH | OFlags::DIRECTORY) {
            Err(Errno::NOSYS | Errno::PERM) => {
                log::debug!("no openat2 here: resolving paths in userspace");
                Resolver::Userspace
            }
            _ => Resolver::Kernel,
        }
    }
}

fn openat2(root: BorrowedFd<'_>, path: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    openat2_mode(root, path, flags, Mode::empty())
}

fn openat2_mode(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a rename or mount raced with a `..` lookup; the kernel asks
    // for a retry rather than risk an escape.
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(root, path, flags | OFlags::CLOEXEC, mode, resolve) {
            Err(Errno::AGAIN) if tries < 16 => tries += 1,
            result => return result,
        }
    }
}

/// Opens `path` under `root`, which stands for `/`. Every symlink but the
/// last is followed inside `root`; the last only when `follow_last`
/// (otherwise `O_NOFOLLOW` applies to it). `..` is allowed here: it comes
/// from link targets, and stops at `root`. Callers refuse it in paths they
/// were given.
pub fn open_in_root(
    resolver: Resolver,
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
    follow_last: bool,
) -> rustix::io::Result<OwnedFd> {
    let flags = if follow_last {
        flags
    } else {
        flags | OFlags::NOFOLLOW
    };
    match resolver {
        Resolver::Kernel => {
            let relative = path.strip_prefix("/").unwrap_or(path);
            let relative = if relative.as_os_str().is_empty() {
                Path::new(".")
            } else {
                relative
            };
            openat2_mode(root, relative, flags, mode)
        }
        Resolver::Userspace => walk(root, path, flags, mode),
    }
}

/// The userspace resolver: directories opened so far are kept on a stack,
/// so `..` goes back to the directory the walk really came through, and
/// stops at `root`. `O_NOFOLLOW` in `flags` keeps a final symlink as is.
fn walk(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlags,
    mode: Mode,
) -> rustix::io::Result<OwnedFd> {
    let follow_last = !flags.contains(OFlags::NOFOLLOW);
    // `pending` is a stack: the next component is last.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut dirs: Vec<OwnedFd> = Vec::new();
    let mut links = 0u32;
    while let Some(name) = pending.pop() {
        if name == ".." {
            dirs.pop();
            continue;
        }
        let here = dirs.last().map_or(root, AsFd::as_fd);
        let last = pending.is_empty();
        let entry = match rustix::fs::openat(
            here,
            &name,
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Err(Errno::NOENT) if last && flags.contains(OFlags::CREATE) => {
                return rustix::fs::openat(
                    here,
                    &name,
                    flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    mode,
                );
            }
            result => result?,
        };
        let kind = rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&entry)?.st_mode);
        if kind == rustix::fs::FileType::Symlink && (follow_last || !last) {
            // The magic links (`/proc/<pid>/root`, `cwd`, `exe`, `fd/*`)
            // all live on procfs, and what readlink says of them is not
            // where following them leads.
            if rustix::fs::fstatfs(here)?.f_type == rustix::fs::PROC_SUPER_MAGIC {
                return Err(Errno::LOOP);
            }
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(Errno::LOOP);
            }
            let target = rustix::fs::readlinkat(here, &name, Vec::new())?;
            let target = OsString::from_vec(target.into_bytes());
            if Path::new(&target).is_absolute() {
                dirs.clear();
            }
            push_components(&mut pending, Path::new(&target));
            continue;
        }
        if last {
            return rustix::fs::openat(
                here,
                &name,
                flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                mode,
            );
        }
        if kind != rustix::fs::FileType::Directory {
            return Err(Errno::NOTDIR);
        }
        dirs.push(entry);
    }
    // The path named a directory the walk is in: the root, or where `..`
    // or a link to a directory led.
    let here = dirs.last().map_or(root, AsFd::as_fd);
    rustix::fs::openat(here, ".", flags | OFlags::CLOEXEC, mode)
}

fn push_components(pending: &mut Vec<OsString>, path: &Path) {
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => pending.push(OsStr::new("..").to_owned()),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
}
