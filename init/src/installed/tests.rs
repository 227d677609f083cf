//! One test per escape shape, each run against the kernel's resolver and
//! the userspace one, asserting that nothing outside the root is read or
//! written; then discovery and the mounts on real filesystem images.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::disk::root::{OsFamily, RootReason, discover_root, probe_device};

/// `<tmp>/root` stands for the installed system, `<tmp>/outside` for the
/// deploy environment around it.
struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    for d in ["etc", "usr/lib", "var/lib", "boot"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::create_dir_all(&outside).unwrap();
    fs::write(root.join("etc/passwd"), "inside\n").unwrap();
    fs::write(root.join("usr/lib/os-release"), "ID=inside\n").unwrap();
    fs::write(outside.join("secret"), "outside\n").unwrap();
    Tree {
        _dir: dir,
        root,
        outside,
    }
}

/// The resolvers this kernel can run: both where `openat2` exists.
fn resolvers() -> Vec<Resolver> {
    let here = rustix::fs::open(".", rustix::fs::OFlags::PATH, rustix::fs::Mode::empty()).unwrap();
    match Resolver::detect(std::os::fd::AsFd::as_fd(&here)) {
        Resolver::Kernel => vec![Resolver::Kernel, Resolver::Userspace],
        Resolver::Userspace => {
            eprintln!("no openat2 on this kernel: testing the userspace resolver only");
            vec![Resolver::Userspace]
        }
    }
}

/// Runs `test` on a fresh tree with each resolver.
fn each(test: impl Fn(&Tree, &RootDir)) {
    for resolver in resolvers() {
        let t = tree();
        let root = RootDir::with_resolver(&t.root, resolver);
        test(&t, &root);
        assert_eq!(
            fs::read_dir(&t.outside).unwrap().count(),
            1,
            "{resolver:?} wrote outside the root"
        );
        assert_eq!(
            fs::read_to_string(t.outside.join("secret")).unwrap(),
            "outside\n"
        );
    }
}

/// Writes `contents` to `path` as this user.
fn put(root: &RootDir, path: &str, contents: &[u8]) -> Result<()> {
    root.write_file(path, contents, 0o644, uid(), gid())
}

fn text(root: &RootDir, path: &str) -> Option<String> {
    root.read_text(path, 1 << 20).unwrap()
}

fn error(result: Result<impl std::fmt::Debug>) -> String {
    format!("{:#}", result.unwrap_err())
}

#[test]
fn dot_dot_in_a_requested_path_is_refused_up_front() {
    each(|_, root| {
        let message = error(root.read("/../outside/secret", 100));
        assert_eq!(
            message,
            "/../outside/secret: '..' is not allowed in a path inside the installed system"
        );
        // Even when it would stay inside.
        assert!(error(root.read("/etc/../etc/passwd", 100)).contains("'..' is not allowed"));
        assert!(
            error(root.write_file("/etc/../../outside/x", b"x", 0o644, 0, 0))
                .starts_with("/etc/../../outside/x: '..'")
        );
        assert!(error(root.mkdir_all("/../outside/d", 0o755, 0, 0)).contains("'..'"));
        assert!(error(root.symlink("/../outside/l", "/etc")).contains("'..'"));
        assert!(error(root.remove("/../outside/secret")).contains("'..'"));
        assert!(error(root.truncate("/../outside/secret")).contains("'..'"));
        assert!(error(root.metadata("/..", false)).contains("'..'"));
    });
}

#[test]
fn a_relative_symlink_climbing_out_stops_at_the_root() {
    each(|t, root| {
        symlink("../../../../..", t.root.join("etc/up")).unwrap();
        symlink("../../outside", t.root.join("etc/sibling")).unwrap();
        // `..` above the root is the root, as it is for `/..`.
        assert_eq!(
            text(root, "/etc/up/etc/passwd").as_deref(),
            Some("inside\n")
        );
        assert_eq!(text(root, "/etc/sibling/secret"), None);
        assert_eq!(text(root, "/etc/up/outside/secret"), None);
        put(root, "/etc/up/etc/written", b"w").unwrap();
        assert_eq!(fs::read(t.root.join("etc/written")).unwrap(), b"w");
        assert!(put(root, "/etc/sibling/x", b"x").is_err());
    });
}

#[test]
fn an_absolute_symlink_means_the_installed_systems_root() {
    each(|t, root| {
        symlink("/etc/passwd", t.root.join("etc/x")).unwrap();
        let outside = t.outside.join("secret");
        symlink(&outside, t.root.join("etc/host")).unwrap();
        // Not the host's /etc/passwd, nor the host path the link names.
        assert_eq!(text(root, "/etc/x").as_deref(), Some("inside\n"));
        assert_eq!(text(root, "/etc/host"), None);
        // What the link says is shown as a path inside the root.
        assert_eq!(
            root.file_path("/etc/x").unwrap(),
            Some(PathBuf::from("/etc/passwd"))
        );
    });
}

#[test]
fn a_symlink_to_a_directory_is_followed_inside_the_root() {
    each(|t, root| {
        symlink("/etc", t.root.join("hostetc")).unwrap();
        symlink("usr/lib", t.root.join("lib")).unwrap();
        symlink(&t.outside, t.root.join("out")).unwrap();
        assert_eq!(text(root, "/hostetc/passwd").as_deref(), Some("inside\n"));
        assert_eq!(
            text(root, "/lib/os-release").as_deref(),
            Some("ID=inside\n")
        );
        assert_eq!(text(root, "/out/secret"), None);
        assert!(root.metadata("/hostetc", true).unwrap().unwrap().is_dir());
        assert!(
            root.metadata("/hostetc", false)
                .unwrap()
                .unwrap()
                .is_symlink()
        );
        assert_eq!(
            root.list_dir("/hostetc").unwrap().unwrap(),
            [std::ffi::OsString::from("passwd")]
        );
        // Writing below it lands in the directory it names inside.
        put(root, "/hostetc/hostname", b"n\n").unwrap();
        assert_eq!(fs::read(t.root.join("etc/hostname")).unwrap(), b"n\n");
        assert!(put(root, "/out/x", b"x").is_err());
        // A file is not a directory on the way.
        assert_eq!(text(root, "/etc/passwd/x"), None);
    });
}

#[test]
fn a_symlink_loop_is_an_error_naming_the_path() {
    each(|t, root| {
        symlink("loop", t.root.join("etc/loop")).unwrap();
        symlink("/etc/b", t.root.join("etc/a")).unwrap();
        symlink("/etc/a", t.root.join("etc/b")).unwrap();
        for path in ["/etc/loop", "/etc/a/x"] {
            let message = error(root.read(path, 100));
            assert!(message.contains(path), "{message}");
            assert!(message.contains("symbolic links"), "{message}");
        }
        let message = error(root.write_file("/etc/loop", b"x", 0o644, 0, 0));
        assert!(message.starts_with("/etc/loop: "), "{message}");
    });
}

#[test]
fn a_magic_link_is_refused() {
    each(|t, root| {
        // Inside the installed root, /proc is its own (empty) directory.
        symlink("/proc/self/root/etc/passwd", t.root.join("etc/magic")).unwrap();
        assert_eq!(text(root, "/etc/magic"), None);
    });
    // Where /proc is the host's procfs, its magic links lead anywhere:
    // `/proc/self/root` is the host's `/`.
    for resolver in resolvers() {
        let proc = RootDir::with_resolver(Path::new("/proc"), resolver);
        for path in ["/self/root/etc/passwd", "/self/cwd", "/thread-self/root"] {
            let message = error(proc.read(path, 1 << 20));
            assert!(
                message.contains(path) && message.contains("symbolic links"),
                "{resolver:?}: {message}"
            );
        }
    }
}

#[test]
fn a_write_through_a_dangling_absolute_symlink_creates_inside_the_root() {
    each(|t, root| {
        symlink("/var/lib/hostname", t.root.join("etc/hostname")).unwrap();
        put(root, "/etc/hostname", b"node\n").unwrap();
        assert_eq!(
            fs::read(t.root.join("var/lib/hostname")).unwrap(),
            b"node\n"
        );
        assert!(
            fs::symlink_metadata(t.root.join("etc/hostname"))
                .unwrap()
                .is_symlink(),
            "the link stays"
        );
        // A link to a host path that exists is a path inside the root too.
        let victim = t.outside.join("secret");
        symlink(&victim, t.root.join("etc/machine-id")).unwrap();
        assert!(root.truncate("/etc/machine-id").is_err());
        assert!(
            root.write_file("/etc/machine-id", b"", 0o444, 0, 0)
                .is_err()
        );
        let inside = t.root.join(t.outside.strip_prefix("/").unwrap());
        fs::create_dir_all(&inside).unwrap();
        root.write_file("/etc/machine-id", b"id\n", 0o444, uid(), gid())
            .unwrap();
        assert_eq!(fs::read(inside.join("secret")).unwrap(), b"id\n");
        root.truncate("/etc/machine-id").unwrap();
        assert_eq!(fs::read(inside.join("secret")).unwrap(), b"");
        // Removing a link removes the link, never its target.
        root.remove("/etc/machine-id").unwrap();
        assert!(!t.root.join("etc/machine-id").exists());
        assert!(inside.join("secret").exists());
    });
}

#[test]
fn mkdir_symlink_and_remove_stay_inside() {
    each(|t, root| {
        let outside = t.outside.to_str().unwrap().to_owned();
        symlink(&outside, t.root.join("etc/cfg")).unwrap();
        let message = error(root.mkdir_all("/etc/cfg", 0o755, uid(), gid()));
        assert!(message.contains("is a symlink"), "{message}");
        root.mkdir_all("/a/b/c", 0o700, uid(), gid()).unwrap();
        assert!(t.root.join("a/b/c").is_dir());
        symlink("/a", t.root.join("alink")).unwrap();
        root.mkdir_all("/alink/b/d", 0o700, uid(), gid()).unwrap();
        assert!(t.root.join("a/b/d").is_dir());
        root.symlink("/etc/res", "/run/x").unwrap();
        root.symlink("/etc/res", "/run/y").unwrap();
        assert_eq!(
            fs::read_link(t.root.join("etc/res")).unwrap(),
            Path::new("/run/y")
        );
        assert!(error(root.symlink("/etc/passwd", "x")).contains("not a symlink"));
        root.remove("/etc/absent").unwrap();
        root.remove("/absent/dir/x").unwrap();
        assert!(error(root.remove("/etc")).contains("is a directory"));
        assert!(error(root.write_file("/etc", b"", 0o644, 0, 0)).contains("is a directory"));
        assert!(error(root.write_file("/", b"", 0o644, 0, 0)).contains("names a directory"));
    });
}

#[test]
fn dangling_links_exist_but_do_not_resolve() {
    each(|t, root| {
        symlink("/usr/nonexistent", t.root.join("etc/dangling")).unwrap();
        assert!(root.metadata("/etc/dangling", false).unwrap().is_some());
        assert!(root.metadata("/etc/dangling", true).unwrap().is_none());
        assert_eq!(text(root, "/etc/dangling"), None);
        assert_eq!(root.file_path("/etc/dangling").unwrap(), None);
        assert_eq!(root.file_path("/etc").unwrap(), None, "not a file");
        assert_eq!(root.list_dir("/etc/passwd").unwrap(), None);
        assert_eq!(root.list_dir("/nonexistent").unwrap(), None);
        assert!(error(root.read("/etc/passwd", 3)).contains("larger than 3 bytes"));
    });
}

#[test]
fn the_kernel_is_preferred_where_it_can() {
    let t = tree();
    let root = RootDir::open(&t.root).unwrap();
    assert_eq!(root.path(), t.root);
    assert_eq!(text(&root, "/etc/passwd").as_deref(), Some("inside\n"));
}

fn uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn gid() -> u32 {
    rustix::process::getegid().as_raw()
}

// --- discovery and mounts ---------------------------------------------------

const ROCKY_9: &str = "NAME=\"Rocky Linux\"\nID=\"rocky\"\nID_LIKE=\"rhel centos fedora\"\n\
    VERSION_ID=\"9.3\"\nPRETTY_NAME=\"Rocky Linux 9.3 (Blue Onyx)\"\n";

/// A tree laid out as in an image: `/etc/os-release` an absolute link
/// into `/usr/lib`, as on Fedora and Arch.
fn image_tree() -> tempfile::TempDir {
    let tree = tempfile::tempdir().unwrap();
    let root = tree.path();
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("boot")).unwrap();
    fs::write(root.join("usr/lib/os-release"), ROCKY_9).unwrap();
    symlink("/usr/lib/os-release", root.join("etc/os-release")).unwrap();
    tree
}

/// Runs a tool the tests need (scripts/setup installs them); its output.
fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{command:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

/// Makes a filesystem image from `tree` with `mkfs.ext4 -d`.
fn ext4_image(tree: &Path, label: &str, image: &Path) {
    fs::File::create(image).unwrap().set_len(16 << 20).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(tree)
        .arg(image));
}

fn candidate(number: u32, dev_path: PathBuf) -> Candidate {
    Candidate {
        number,
        fs: probe_device(&dev_path).unwrap(),
        dev_path,
        part_type_guid: None,
        part_uuid: None,
        part_label: None,
    }
}

/// Candidates built from real filesystem images, discovered through
/// partition mounts over trees standing in for the mounts (mounting needs
/// root; `real_mounts_of_ext4_images` does it).
#[test]
fn discovery_reads_images_made_by_mkfs_through_the_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let tree = image_tree();
    let esp_tree = tempfile::tempdir().unwrap();
    fs::create_dir_all(esp_tree.path().join("EFI/BOOT")).unwrap();
    ext4_image(tree.path(), "rootfs", &dir.path().join("vda2"));
    run(Command::new("mkfs.vfat")
        .args(["-C", "-n", "EFI"])
        .arg(dir.path().join("vda1"))
        .arg("8192"));
    let candidates: Vec<Candidate> = [1, 2]
        .into_iter()
        .map(|number| candidate(number, dir.path().join(format!("vda{number}"))))
        .collect();
    assert_eq!(candidates[0].fs.as_ref().unwrap().fstype, "vfat");
    let root_fs = candidates[1].fs.as_ref().unwrap();
    assert_eq!(
        (root_fs.fstype, root_fs.label.as_deref()),
        ("ext4", Some("rootfs"))
    );

    let mounts = tempfile::tempdir().unwrap();
    let mut probes = PartitionMounts::new(mounts.path());
    probes.mounted = vec![
        (candidates[0].dev_path.clone(), esp_tree.path().to_owned()),
        (candidates[1].dev_path.clone(), tree.path().to_owned()),
    ];
    let choice = discover_root(None, &candidates, &mut probes).unwrap();
    assert_eq!((choice.index, choice.reason), (1, RootReason::OsRelease));
    let mut read = |path: &str| probes.read_file(&candidates[1], path);
    let os = root::read_os_release(&mut read).unwrap().unwrap();
    assert_eq!((os.id.as_str(), os.family), ("rocky", OsFamily::RedHat));
    let mut read = |path: &str| probes.read_file(&candidates[0], path);
    assert_eq!(root::read_os_release(&mut read).unwrap(), None);
}

/// Mounts ext4 images through loop devices: discovery looks, the root is
/// remounted read-write in place, a separate /boot is mounted on its
/// /boot, and everything is unmounted. Needs root and `losetup`:
/// `cargo test -p imprint --lib installed -- --ignored`.
#[test]
#[ignore = "needs root and a loop device"]
fn real_mounts_of_ext4_images() {
    let dir = tempfile::tempdir().unwrap();
    let tree = image_tree();
    fs::create_dir(tree.path().join("curtin")).unwrap();
    let boot_tree = tempfile::tempdir().unwrap();
    fs::write(boot_tree.path().join("vmlinuz-6.1"), "kernel").unwrap();
    let root_image = dir.path().join("root.img");
    let boot_image = dir.path().join("boot.img");
    ext4_image(tree.path(), "cloudimg-rootfs", &root_image);
    ext4_image(boot_tree.path(), "boot", &boot_image);
    let root_loop = Loop::attach(&root_image);
    let boot_loop = Loop::attach(&boot_image);
    let candidates = vec![
        candidate(1, root_loop.0.clone()),
        candidate(2, boot_loop.0.clone()),
    ];
    let mounts = tempfile::tempdir().unwrap();
    let mut probes = PartitionMounts::new(mounts.path());
    let choice = discover_root(None, &candidates, &mut probes).unwrap();
    assert_eq!((choice.index, choice.reason), (0, RootReason::Curtin));
    let point = mounts.path().join(root_loop.0.file_name().unwrap());
    assert_eq!(probes.mounted(), [(root_loop.0.clone(), point.clone())]);
    assert!(
        fs::write(point.join("x"), "").is_err(),
        "looked at read-only"
    );

    let installed = InstalledRoot::mount(candidates, 0, &mut probes).unwrap();
    assert!(probes.mounted().is_empty(), "handed over");
    assert_eq!(installed.dir().path(), point);
    let os = installed.os_release().unwrap().unwrap();
    assert_eq!(os.family, OsFamily::RedHat);
    installed
        .dir()
        .write_file("/etc/hostname", b"node\n", 0o644, 0, 0)
        .unwrap();
    let boot = installed.mount_boot(&installed.partitions()[1]).unwrap();
    assert_eq!(
        installed.dir().file_path("/boot/vmlinuz-6.1").unwrap(),
        Some(PathBuf::from("/boot/vmlinuz-6.1"))
    );
    boot.unmount().unwrap();
    assert_eq!(
        installed.dir().file_path("/boot/vmlinuz-6.1").unwrap(),
        None
    );
    installed.unmount().unwrap();
    assert!(!point.join("curtin").exists(), "unmounted");

    // The write reached the filesystem: mounted again, it is there.
    let mut probes = PartitionMounts::new(mounts.path());
    let candidates = vec![candidate(1, root_loop.0.clone())];
    let installed = InstalledRoot::mount(candidates, 0, &mut probes).unwrap();
    assert_eq!(
        installed
            .dir()
            .read_text("/etc/hostname", 100)
            .unwrap()
            .as_deref(),
        Some("node\n")
    );
    drop(installed);
    assert!(!point.join("curtin").exists(), "unmounted when dropped");
}

struct Loop(PathBuf);

impl Loop {
    fn attach(image: &Path) -> Loop {
        let name = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image));
        Loop(PathBuf::from(name.trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
