//! Carry out a plan under the mounted root, never leaving it.
//!
//! Each [`FileOp`] is one call on [`RootDir`], which resolves every path
//! inside the installed system (the kernel's `openat2(RESOLVE_IN_ROOT)`):
//! absolute symlinks mean the image's `/`, `..` never climbs above it, and
//! a path with `..` is refused. See `installed::root_dir` for the rules.

use anyhow::{Context, Result};

use super::{FileOp, ImageView};
use crate::installed::RootDir;

/// Apply `ops` in order under `root`. `fetch` downloads the contents of
/// [`FileOp::Fetch`] ops. Each op is logged as it is applied; the first
/// failure stops everything (an injection failure is a deploy failure).
pub fn apply(
    ops: &[FileOp],
    root: &RootDir,
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
    root: &RootDir,
    fetch: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
) -> Result<()> {
    match op {
        FileOp::Mkdir {
            path,
            mode,
            uid,
            gid,
        } => root.mkdir_all(path, *mode, *uid, *gid),
        FileOp::Write {
            path,
            contents,
            mode,
            uid,
            gid,
        } => root.write_file(path, contents, *mode, *uid, *gid),
        FileOp::Fetch {
            path,
            url,
            mode,
            uid,
            gid,
        } => {
            let contents = fetch(url).context("downloading")?;
            root.write_file(path, &contents, *mode, *uid, *gid)
        }
        FileOp::Symlink { path, target } => root.symlink(path, target),
        FileOp::Remove { path } => root.remove(path),
        FileOp::Truncate { path } => root.truncate(path),
    }
}

/// The planner reads the image through the same resolver as [`apply`].
impl ImageView for RootDir {
    fn exists(&self, path: &str) -> bool {
        self.metadata(path, true).is_ok_and(|m| m.is_some())
    }

    fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        RootDir::read(self, path, u64::MAX).with_context(|| format!("reading {path} in the image"))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink as make_symlink};
    use std::path::{Path, PathBuf};

    use anyhow::bail;

    use super::*;

    struct Tree {
        _dir: tempfile::TempDir,
        root: PathBuf,
        dir: RootDir,
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
            dir: RootDir::open(&root).unwrap(),
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
        apply(&ops, &t.dir, &mut |url| {
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
        apply(&ops, &t.dir, &mut no_fetch).unwrap();
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
        apply(&ops, &t.dir, &mut no_fetch).unwrap();
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
        let err = apply(&ops, &t.dir, &mut no_fetch).unwrap_err();
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
        let err = apply(&ops[..1], &t.dir, &mut no_fetch).unwrap_err();
        assert!(format!("{err:#}").contains("is a symlink"), "{err:#}");
        fs::create_dir_all(t.root.join(outside.trim_start_matches('/'))).unwrap();
        apply(&ops[1..], &t.dir, &mut no_fetch).unwrap();
        assert!(!t.outside.join("x").exists(), "wrote outside the root");
        let inside = t.root.join(outside.trim_start_matches('/')).join("x");
        assert_eq!(fs::read(inside).unwrap(), b"in");
    }

    fn write(path: &str, t: &Tree) -> FileOp {
        FileOp::Write {
            path: path.into(),
            contents: b"x".to_vec(),
            mode: 0o644,
            uid: t.uid,
            gid: t.gid,
        }
    }

    #[test]
    fn a_symlinked_parent_pointing_to_host_etc_is_resolved_inside() {
        let t = tree();
        make_symlink("/etc", t.root.join("hostetc")).unwrap();
        apply(&[write("/hostetc/new", &t)], &t.dir, &mut no_fetch).unwrap();
        assert_eq!(fs::read(t.root.join("etc/new")).unwrap(), b"x");
    }

    #[test]
    fn relative_symlinks_climbing_out_stop_at_the_root() {
        let t = tree();
        make_symlink("../../outside", t.root.join("etc/escape")).unwrap();
        // `..` stops at the root: <root>/outside, which does not exist.
        let err = apply(&[write("/etc/escape/x", &t)], &t.dir, &mut no_fetch).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("write /etc/escape/x"),
            "{err:#}"
        );
        assert!(!t.outside.join("x").exists());
        // Climbing inside the image is fine.
        make_symlink("../etc", t.root.join("etc/self")).unwrap();
        apply(&[write("/etc/self/x", &t)], &t.dir, &mut no_fetch).unwrap();
        assert_eq!(fs::read(t.root.join("etc/x")).unwrap(), b"x");
    }

    #[test]
    fn a_final_symlink_is_followed_inside_the_root_only() {
        let t = tree();
        let victim = t.outside.join("victim");
        fs::write(&victim, "keep").unwrap();
        make_symlink(&victim, t.root.join("etc/hostname")).unwrap();
        make_symlink(&victim, t.root.join("etc/machine-id")).unwrap();
        // The link names <root>/<tmp>/outside/victim, which does not exist.
        assert!(apply(&[write("/etc/hostname", &t)], &t.dir, &mut no_fetch).is_err());
        let truncate = FileOp::Truncate {
            path: "/etc/machine-id".into(),
        };
        assert!(apply(&[truncate], &t.dir, &mut no_fetch).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "keep");
        // Removing the link removes the link, not its target.
        apply(
            &[FileOp::Remove {
                path: "/etc/hostname".into(),
            }],
            &t.dir,
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
        let err = apply(&[write("/etc/loop/x", &t)], &t.dir, &mut no_fetch).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic links"), "{err:#}");
        fs::write(t.root.join("etc/file"), "").unwrap();
        let err = apply(&[write("/etc/file/x", &t)], &t.dir, &mut no_fetch).unwrap_err();
        assert!(format!("{err:#}").contains("Not a directory"), "{err:#}");
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
        apply(&ops, &t.dir, &mut no_fetch).unwrap();
        let m = fs::metadata(&id).unwrap();
        assert_eq!((m.len(), m.mode() & 0o7777), (0, 0o444));
        let err = apply(
            &[FileOp::Truncate {
                path: "/etc/absent".into(),
            }],
            &t.dir,
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
        let err = apply(&ops, &t.dir, &mut no_fetch).unwrap_err();
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
        let view: &dyn ImageView = &t.dir;
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
