//! Carry out a plan under a mounted root, never leaving it.
//!
//! The image is untrusted data: its `/etc/resolv.conf` may be a symlink to
//! `/run/...`, or a crafted one to `/etc` of the deploy environment. Every
//! path is resolved here component by component, the way
//! `openat2(RESOLVE_IN_ROOT)` would: absolute link targets restart at the
//! image's root, and `..` that would climb above it is refused. Nothing else
//! touches the mounted filesystem while imprint injects, so resolving first
//! and acting second is not racy in practice.

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{FileOp, ImageView};

/// Symlinks followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: u32 = 40;

/// Resolve `path` (absolute inside the image) to a host path under `root`.
/// Symlinks in every component but the last are followed inside the image;
/// the last is followed only when `follow_last`. The result need not exist,
/// but every existing component before the last is a real directory.
pub fn resolve_in_root(root: &Path, path: &str, follow_last: bool) -> Result<PathBuf> {
    let mut pending: Vec<OsString> = Vec::new();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => bail!("{path}: '..' is not allowed in an image path"),
            Component::Prefix(_) => bail!("{path}: not a unix path"),
        }
    }
    // Consumed from the back: reversed, so the next component is `pop()`.
    pending.reverse();
    let mut resolved = root.to_path_buf();
    let mut depth = 0usize;
    let mut links = 0u32;
    while let Some(name) = pending.pop() {
        if name == ".." {
            if depth == 0 {
                bail!("{path}: a symlink in the image climbs above its root");
            }
            resolved.pop();
            depth -= 1;
            continue;
        }
        if name == "." {
            continue;
        }
        let candidate = resolved.join(&name);
        let is_last = pending.is_empty();
        let metadata = match fs::symlink_metadata(&candidate) {
            Ok(metadata) => metadata,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                resolved = candidate;
                depth += 1;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("{path}: inspecting {name:?}")),
        };
        if metadata.file_type().is_symlink() && (!is_last || follow_last) {
            links += 1;
            if links > MAX_SYMLINKS {
                bail!("{path}: too many symlinks in the image");
            }
            let target = fs::read_link(&candidate)
                .with_context(|| format!("{path}: reading symlink {name:?}"))?;
            if target.is_absolute() {
                resolved = root.to_path_buf();
                depth = 0;
            }
            for component in target.components().rev() {
                match component {
                    Component::Normal(part) => pending.push(part.to_owned()),
                    Component::ParentDir => pending.push(OsString::from("..")),
                    Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                }
            }
            continue;
        }
        if !is_last && !metadata.is_dir() {
            bail!("{path}: {name:?} in the image is not a directory");
        }
        resolved = candidate;
        depth += 1;
    }
    Ok(resolved)
}

/// Apply `ops` in order under `root`. `fetch` downloads the contents of
/// [`FileOp::Fetch`] ops. Each op is logged as it is applied; the first
/// failure stops everything (an injection failure is a deploy failure).
pub fn apply(
    ops: &[FileOp],
    root: &Path,
    fetch: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<()> {
    for op in ops {
        log::info!("inject: {op}");
        apply_one(op, root, fetch).with_context(|| op.to_string())?;
    }
    Ok(())
}

fn apply_one(
    op: &FileOp,
    root: &Path,
    fetch: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<()> {
    match op {
        FileOp::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => mkdir(root, path, *mode, *uid, *gid),
        FileOp::Write {
            path,
            contents,
            mode,
            uid,
            gid,
        } => write_file(root, path, contents, *mode, *uid, *gid),
        FileOp::Fetch {
            path,
            url,
            mode,
            uid,
            gid,
        } => {
            let contents = fetch(url).context("downloading")?;
            write_file(root, path, &contents, *mode, *uid, *gid)
        }
        FileOp::Symlink { path, target } => symlink(root, path, target),
        FileOp::Remove { path } => remove(root, path),
        FileOp::Truncate { path } => truncate(root, path),
    }
}

fn mkdir(root: &Path, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
    let target = resolve_in_root(root, path, false)?;
    let relative = target
        .strip_prefix(root)
        .context("resolved path left the root")?;
    let mut current = root.to_path_buf();
    let count = relative.components().count();
    for (i, component) in relative.components().enumerate() {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(m) if m.is_dir() => continue,
            Ok(m) if m.file_type().is_symlink() => {
                bail!(
                    "{} is a symlink; refusing to create a directory there",
                    current.display()
                )
            }
            Ok(_) => bail!("{} exists and is not a directory", current.display()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("inspecting {}", current.display())),
        }
        let (mode, uid, gid) = if i + 1 == count {
            (mode, uid, gid)
        } else {
            (0o755, 0, 0)
        };
        DirBuilder::new()
            .mode(0o700)
            .create(&current)
            .with_context(|| format!("creating {}", current.display()))?;
        set_owner_and_mode(&current, uid, gid, mode)?;
    }
    Ok(())
}

/// The parent must exist as a real directory (resolution guarantees no
/// symlink in it); the final component must not be a symlink or directory.
fn checked_parent(target: &Path) -> Result<(&Path, &std::ffi::OsStr)> {
    let parent = target.parent().context("no parent directory")?;
    let name = target.file_name().context("no file name")?;
    match fs::symlink_metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => bail!("{} is not a directory", parent.display()),
        Err(e) => return Err(e).with_context(|| format!("parent {}", parent.display())),
    }
    Ok((parent, name))
}

fn write_file(
    root: &Path,
    path: &str,
    contents: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<()> {
    let target = resolve_in_root(root, path, false)?;
    match fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_symlink() => {
            bail!(
                "{} is a symlink in the image; refusing to write through it",
                target.display()
            )
        }
        Ok(m) if m.is_dir() => bail!("{} is a directory", target.display()),
        _ => {}
    }
    let (parent, name) = checked_parent(&target)?;
    let temp = parent.join(temp_name(name));
    let result = (|| -> Result<()> {
        // create_new is O_EXCL: it never follows a symlink planted at the
        // temp name.
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .with_context(|| format!("creating {}", temp.display()))?;
        file.write_all(contents)
            .with_context(|| format!("writing {}", temp.display()))?;
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
            .with_context(|| format!("chown {uid}:{gid} {}", temp.display()))?;
        // After chown: chown clears setuid/setgid bits.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .with_context(|| format!("chmod {mode:04o} {}", temp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", temp.display()))?;
        fs::rename(&temp, &target)
            .with_context(|| format!("renaming {} to {}", temp.display(), target.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

fn temp_name(name: &std::ffi::OsStr) -> OsString {
    let mut temp = OsString::from(".");
    temp.push(name);
    temp.push(".imprint-tmp");
    temp
}

fn symlink(root: &Path, path: &str, link_target: &str) -> Result<()> {
    let target = resolve_in_root(root, path, false)?;
    match fs::symlink_metadata(&target) {
        Ok(m) if m.file_type().is_symlink() => {}
        Ok(_) => bail!("{} exists and is not a symlink", target.display()),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", target.display())),
    }
    let (parent, name) = checked_parent(&target)?;
    let temp = parent.join(temp_name(name));
    std::os::unix::fs::symlink(link_target, &temp)
        .with_context(|| format!("creating symlink {}", temp.display()))?;
    fs::rename(&temp, &target).map_err(|e| {
        let _ = fs::remove_file(&temp);
        anyhow::Error::new(e).context(format!("renaming symlink onto {}", target.display()))
    })
}

fn remove(root: &Path, path: &str) -> Result<()> {
    let target = resolve_in_root(root, path, false)?;
    match fs::symlink_metadata(&target) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("inspecting {}", target.display())),
        Ok(m) if m.is_dir() => bail!("{} is a directory", target.display()),
        Ok(_) => fs::remove_file(&target).with_context(|| format!("removing {}", target.display())),
    }
}

fn truncate(root: &Path, path: &str) -> Result<()> {
    let target = resolve_in_root(root, path, false)?;
    // O_NOFOLLOW: a symlink planted at the last component fails with ELOOP
    // instead of emptying whatever it points at.
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .with_context(|| format!("opening {}", target.display()))?;
    let metadata = file
        .metadata()
        .with_context(|| format!("inspecting {}", target.display()))?;
    if !metadata.is_file() {
        bail!("{} is not a regular file", target.display());
    }
    file.set_len(0)
        .with_context(|| format!("truncating {}", target.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", target.display()))
}

fn set_owner_and_mode(path: &Path, uid: u32, gid: u32, mode: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {uid}:{gid} {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:04o} {}", path.display()))
}

/// A mounted image, read through the same in-root resolution as [`apply`].
pub struct RootView<'a>(pub &'a Path);

impl ImageView for RootView<'_> {
    fn exists(&self, path: &str) -> bool {
        resolve_in_root(self.0, path, true).is_ok_and(|p| fs::symlink_metadata(p).is_ok())
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let resolved = resolve_in_root(self.0, path, true)?;
        let mut file = match File::open(&resolved) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {path} in the image")),
        };
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes)
            .with_context(|| format!("reading {path} in the image"))?;
        Ok(Some(bytes))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt as _, symlink as make_symlink};

    use super::*;

    struct Tree {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
        uid: u32,
        gid: u32,
    }

    /// `<tmp>/root` is the image, `<tmp>/outside` a directory it must not reach.
    fn tree() -> Tree {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        let metadata = fs::metadata(&root).unwrap();
        Tree {
            root,
            outside,
            uid: metadata.uid(),
            gid: metadata.gid(),
            _dir: dir,
        }
    }

    fn no_fetch(url: &str) -> Result<Vec<u8>> {
        bail!("unexpected fetch of {url}")
    }

    fn is_root() -> bool {
        tempfile::tempfile().unwrap().metadata().unwrap().uid() == 0
    }

    #[test]
    fn writes_create_dirs_set_modes_and_owners() {
        let t = tree();
        let ops = vec![
            FileOp::Mkdir {
                path: "/a/b/c".into(),
                mode: 0o700,
                uid: t.uid,
                gid: t.gid,
            },
            FileOp::Write {
                path: "/a/b/c/f".into(),
                contents: b"hello".to_vec(),
                mode: 0o640,
                uid: t.uid,
                gid: t.gid,
            },
            FileOp::Fetch {
                path: "/a/g".into(),
                url: "http://x/g".into(),
                mode: 0o755,
                uid: t.uid,
                gid: t.gid,
            },
            FileOp::Symlink {
                path: "/a/link".into(),
                target: "/a/g".into(),
            },
            FileOp::Symlink {
                path: "/a/link".into(),
                target: "b/c/f".into(),
            },
        ];
        let mut fetched = Vec::new();
        apply(&ops, &t.root, &mut |url| {
            fetched.push(url.to_owned());
            Ok(b"binary".to_vec())
        })
        .unwrap();
        assert_eq!(fetched, ["http://x/g"]);
        let mode = |p: &str| fs::symlink_metadata(t.root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("a"), 0o755);
        assert_eq!(mode("a/b"), 0o755);
        assert_eq!(mode("a/b/c"), 0o700);
        assert_eq!(mode("a/b/c/f"), 0o640);
        assert_eq!(mode("a/g"), 0o755);
        assert_eq!(fs::read(t.root.join("a/b/c/f")).unwrap(), b"hello");
        assert_eq!(fs::read(t.root.join("a/g")).unwrap(), b"binary");
        assert_eq!(
            fs::read_link(t.root.join("a/link")).unwrap(),
            Path::new("b/c/f")
        );
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(t.root.join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }

    #[test]
    fn owners_are_applied_as_root() {
        if !is_root() {
            eprintln!("skipped: chown to other users needs root");
            return;
        }
        let t = tree();
        let ops = vec![
            FileOp::Mkdir {
                path: "/home/u/.ssh".into(),
                mode: 0o700,
                uid: 1000,
                gid: 1001,
            },
            FileOp::Write {
                path: "/home/u/.ssh/authorized_keys".into(),
                contents: b"k\n".to_vec(),
                mode: 0o600,
                uid: 1000,
                gid: 1001,
            },
        ];
        apply(&ops, &t.root, &mut no_fetch).unwrap();
        let owner = |p: &str| {
            let m = fs::metadata(t.root.join(p)).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        assert_eq!(owner("home"), (0, 0, 0o755));
        assert_eq!(owner("home/u"), (0, 0, 0o755));
        assert_eq!(owner("home/u/.ssh"), (1000, 1001, 0o700));
        assert_eq!(owner("home/u/.ssh/authorized_keys"), (1000, 1001, 0o600));
    }

    #[test]
    fn existing_directories_are_left_alone() {
        let t = tree();
        fs::set_permissions(t.root.join("etc"), fs::Permissions::from_mode(0o711)).unwrap();
        let ops = vec![FileOp::Mkdir {
            path: "/etc".into(),
            mode: 0o700,
            uid: t.uid,
            gid: t.gid,
        }];
        apply(&ops, &t.root, &mut no_fetch).unwrap();
        assert_eq!(
            fs::metadata(t.root.join("etc")).unwrap().mode() & 0o7777,
            0o711
        );
    }

    #[test]
    fn dot_dot_in_a_path_is_refused() {
        let t = tree();
        let ops = vec![FileOp::Write {
            path: "/etc/../../outside/x".into(),
            contents: vec![],
            mode: 0o644,
            uid: t.uid,
            gid: t.gid,
        }];
        let err = apply(&ops, &t.root, &mut no_fetch).unwrap_err();
        assert!(
            format!("{err:#}").contains("'..' is not allowed"),
            "{err:#}"
        );
        assert!(
            format!("{err:#}").contains("write /etc/../../outside/x"),
            "{err:#}"
        );
        assert!(!t.outside.join("x").exists());
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let t = tree();
        // The image's /etc/cfg points at an absolute path that exists on the
        // host: it must mean <root>/<that path>, not the host's.
        let outside = t.outside.to_str().unwrap().to_owned();
        make_symlink(&outside, t.root.join("etc/cfg")).unwrap();
        let ops = [
            FileOp::Mkdir {
                path: "/etc/cfg".into(),
                mode: 0o755,
                uid: t.uid,
                gid: t.gid,
            },
            FileOp::Write {
                path: "/etc/cfg/x".into(),
                contents: b"in".to_vec(),
                mode: 0o644,
                uid: t.uid,
                gid: t.gid,
            },
        ];
        // Mkdir refuses the symlink itself; writing through it lands inside.
        let err = apply(&ops[..1], &t.root, &mut no_fetch).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        fs::create_dir_all(t.root.join(outside.trim_start_matches('/'))).unwrap();
        apply(&ops[1..], &t.root, &mut no_fetch).unwrap();
        assert!(!t.outside.join("x").exists(), "wrote outside the root");
        let inside = t.root.join(outside.trim_start_matches('/')).join("x");
        assert_eq!(fs::read(inside).unwrap(), b"in");
    }

    #[test]
    fn a_symlinked_parent_pointing_to_host_etc_is_resolved_inside() {
        let t = tree();
        make_symlink("/etc", t.root.join("hostetc")).unwrap();
        let resolved = resolve_in_root(&t.root, "/hostetc/passwd", false).unwrap();
        assert_eq!(resolved, t.root.join("etc/passwd"));
    }

    #[test]
    fn relative_symlinks_climbing_out_are_refused() {
        let t = tree();
        make_symlink("../../outside", t.root.join("etc/escape")).unwrap();
        let ops = vec![FileOp::Write {
            path: "/etc/escape/x".into(),
            contents: vec![],
            mode: 0o644,
            uid: t.uid,
            gid: t.gid,
        }];
        let err = apply(&ops, &t.root, &mut no_fetch).unwrap_err();
        assert!(
            format!("{err:#}").contains("climbs above its root"),
            "{err:#}"
        );
        assert!(!t.outside.join("x").exists());
        // Climbing inside the image is fine.
        make_symlink("../etc", t.root.join("etc/self")).unwrap();
        assert_eq!(
            resolve_in_root(&t.root, "/etc/self/x", false).unwrap(),
            t.root.join("etc/x")
        );
    }

    #[test]
    fn a_final_symlink_is_never_written_through() {
        let t = tree();
        let victim = t.outside.join("victim");
        fs::write(&victim, "keep").unwrap();
        make_symlink(&victim, t.root.join("etc/hostname")).unwrap();
        make_symlink(&victim, t.root.join("etc/machine-id")).unwrap();
        let write = FileOp::Write {
            path: "/etc/hostname".into(),
            contents: b"x".to_vec(),
            mode: 0o644,
            uid: t.uid,
            gid: t.gid,
        };
        let err = apply(&[write], &t.root, &mut no_fetch).unwrap_err();
        assert!(
            format!("{err:#}").contains("refusing to write through it"),
            "{err:#}"
        );
        let truncate = FileOp::Truncate {
            path: "/etc/machine-id".into(),
        };
        assert!(apply(&[truncate], &t.root, &mut no_fetch).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        // Removing the link removes the link, not its target.
        apply(
            &[FileOp::Remove {
                path: "/etc/hostname".into(),
            }],
            &t.root,
            &mut no_fetch,
        )
        .unwrap();
        assert!(fs::symlink_metadata(t.root.join("etc/hostname")).is_err());
        assert!(victim.exists());
    }

    #[test]
    fn symlink_loops_and_files_as_directories_fail_cleanly() {
        let t = tree();
        make_symlink("loop", t.root.join("etc/loop")).unwrap();
        let err = resolve_in_root(&t.root, "/etc/loop/x", false).unwrap_err();
        assert!(err.to_string().contains("too many symlinks"), "{err}");
        fs::write(t.root.join("etc/file"), "").unwrap();
        let err = resolve_in_root(&t.root, "/etc/file/x", false).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn truncate_keeps_mode_and_remove_tolerates_absence() {
        let t = tree();
        let id = t.root.join("etc/machine-id");
        fs::write(&id, "0123456789abcdef\n").unwrap();
        fs::set_permissions(&id, fs::Permissions::from_mode(0o444)).unwrap();
        let ops = vec![
            FileOp::Truncate {
                path: "/etc/machine-id".into(),
            },
            FileOp::Remove {
                path: "/etc/absent".into(),
            },
        ];
        apply(&ops, &t.root, &mut no_fetch).unwrap();
        let m = fs::metadata(&id).unwrap();
        assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o444));
        let err = apply(
            &[FileOp::Truncate {
                path: "/etc/absent".into(),
            }],
            &t.root,
            &mut no_fetch,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("truncate /etc/absent"),
            "{err:#}"
        );
    }

    #[test]
    fn a_failed_fetch_names_the_op_and_leaves_nothing() {
        let t = tree();
        let ops = vec![FileOp::Fetch {
            path: "/etc/x".into(),
            url: "http://h/x".into(),
            mode: 0o644,
            uid: t.uid,
            gid: t.gid,
        }];
        let err = apply(&ops, &t.root, &mut no_fetch).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("fetch /etc/x from http://h/x"),
            "{err:#}"
        );
        assert_eq!(fs::read_dir(t.root.join("etc")).unwrap().count(), 0);
    }

    #[test]
    fn root_view_reads_inside_the_image() {
        let t = tree();
        fs::write(t.root.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        make_symlink("/etc/passwd", t.root.join("etc/alias")).unwrap();
        make_symlink("/etc", t.root.join("hostetc")).unwrap();
        let view = RootView(&t.root);
        assert!(view.exists("/etc/passwd"));
        assert!(!view.exists("/etc/shadow"));
        assert_eq!(
            view.read("/etc/alias").unwrap().unwrap(),
            b"root:x:0:0::/root:/bin/sh\n"
        );
        // The host's /etc/hostname, if any, is not what the image sees.
        assert_eq!(view.read("/hostetc/hostname").unwrap(), None);
    }
}
