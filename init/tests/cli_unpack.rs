//! Host integration: `imprint unpack` fetches a root-filesystem tarball
//! over HTTP and unpacks it into a directory as a deploy would, checked
//! against GNU tar's own extraction of the same archive.

mod common;

use std::path::Path;
use std::process::Command;

use common::{hex, imprint};
use imprint_qemu::http::FixtureServer;

fn tar(args: &[&str]) {
    let status = Command::new("tar").args(args).status().unwrap();
    assert!(status.success(), "tar {args:?}");
}

/// `find -printf` of everything under `dir` that both extractions must
/// agree on: type, mode, size, link target and (as root) owner.
fn listing(dir: &Path) -> String {
    let out = Command::new("find")
        .arg(dir)
        .args(["-mindepth", "1", "-printf", "%P %y %m %s %l %U:%G\n"])
        .output()
        .unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines.join("\n")
}

#[test]
fn unpacks_a_tgz_as_gnu_tar_does_and_checks_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    for d in ["etc", "usr/bin", "var/empty"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("etc/hostname"), "x\n").unwrap();
    std::fs::write(tree.join("usr/bin/tool"), vec![7u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("usr/bin", tree.join("bin")).unwrap();
    std::fs::hard_link(tree.join("etc/hostname"), tree.join("etc/hostname.bak")).unwrap();
    Command::new("chmod")
        .arg("0700")
        .arg(tree.join("var/empty"))
        .status()
        .unwrap();
    let tgz = dir.path().join("root.tgz");
    tar(&[
        "--numeric-owner",
        "-C",
        tree.to_str().unwrap(),
        "-czf",
        tgz.to_str().unwrap(),
        ".",
    ]);
    let bytes = std::fs::read(&tgz).unwrap();
    let server = FixtureServer::start().unwrap();
    server.add_file("root.tgz", bytes.clone());

    let by_tar = dir.path().join("by-tar");
    std::fs::create_dir(&by_tar).unwrap();
    tar(&[
        "--numeric-owner",
        "-xpzf",
        tgz.to_str().unwrap(),
        "-C",
        by_tar.to_str().unwrap(),
    ]);
    let by_imprint = dir.path().join("by-imprint");
    std::fs::create_dir(&by_imprint).unwrap();
    let out = imprint(&[
        "unpack",
        &server.url("root.tgz"),
        by_imprint.to_str().unwrap(),
        "--checksum",
        &format!("sha256:{}", hex(&bytes)),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("(sha256 {})", hex(&bytes))),
        "{stdout}"
    );
    assert_eq!(listing(&by_imprint), listing(&by_tar));

    // A wrong checksum fails, naming the URL.
    let again = dir.path().join("again");
    std::fs::create_dir(&again).unwrap();
    let out = imprint(&[
        "unpack",
        &server.url("root.tgz"),
        again.to_str().unwrap(),
        "--checksum",
        &format!("sha256:{}", "0".repeat(64)),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("IMPRINT-RESULT: error: checksum mismatch for http://"),
        "{stdout}"
    );
    // Usage errors exit 2.
    assert_eq!(imprint(&["unpack", "only-a-url"]).status.code(), Some(2));
}

/// Every rootfs type DRP and RackN name, made by the real compressors,
/// unpacks to the same tree, with `--format` and sniffed.
#[test]
fn every_tarball_type_unpacks_the_same_tree() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc/ssh")).unwrap();
    std::fs::write(tree.join("etc/ssh/sshd_config"), "Port 22\n").unwrap();
    std::fs::write(tree.join("big"), common::image(3 << 20, 7)).unwrap();
    std::os::unix::fs::symlink("etc", tree.join("config")).unwrap();
    let plain = dir.path().join("root.tar");
    tar(&[
        "--numeric-owner",
        "-C",
        tree.to_str().unwrap(),
        "-cf",
        plain.to_str().unwrap(),
        ".",
    ]);
    let by_tar = dir.path().join("by-tar");
    std::fs::create_dir(&by_tar).unwrap();
    tar(&[
        "-xpf",
        plain.to_str().unwrap(),
        "-C",
        by_tar.to_str().unwrap(),
    ]);
    let expected = listing(&by_tar);
    let server = FixtureServer::start().unwrap();
    for (format, compressor) in [
        ("tar", None),
        ("tgz", Some(["gzip", "-c"])),
        ("txz", Some(["xz", "-c"])),
        ("tbz", Some(["bzip2", "-c"])),
        ("tar-zst", Some(["zstd", "-c"])),
    ] {
        let bytes = match compressor {
            None => std::fs::read(&plain).unwrap(),
            Some([program, arg]) => {
                let out = Command::new(program).arg(arg).arg(&plain).output().unwrap();
                assert!(out.status.success(), "{program}");
                out.stdout
            }
        };
        let name = format!("root.{format}");
        server.add_file(&name, bytes);
        for declared in [Some(format), None] {
            let into = dir.path().join(format!("{format}-{}", declared.is_some()));
            std::fs::create_dir(&into).unwrap();
            let url = server.url(&name);
            let mut args = vec!["unpack", url.as_str(), into.to_str().unwrap()];
            if let Some(declared) = declared {
                args.extend(["--format", declared]);
            }
            let out = imprint(&args);
            assert!(
                out.status.success(),
                "{format} {declared:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(listing(&into), expected, "{format} {declared:?}");
        }
    }
    // A declared type that is not what the bytes are is refused by name.
    let into = dir.path().join("wrong");
    std::fs::create_dir(&into).unwrap();
    let out = imprint(&[
        "unpack",
        &server.url("root.tgz"),
        into.to_str().unwrap(),
        "--format",
        "tar-zst",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("is gzip-compressed but its declared type tar-zst means zstd-compressed"),
        "{stdout}"
    );
}
