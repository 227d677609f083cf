//! Host integration: qcow2 images made by the real `qemu-img` (and
//! `qemu-io`, for zero flags and subclusters) deploy through `imprint
//! deploy` to exactly the bytes `qemu-img convert -O raw` writes; the
//! images imprint cannot reproduce are refused before anything is written.

mod common;

use common::{hex, image, imprint, result_line};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use imprint_qemu::http::{Behavior, FixtureServer};

const MIB: usize = 1 << 20;

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The source disk: an ext4 filesystem made with `mkfs.ext4 -d` from files
/// of pseudo-random bytes (with zero runs), holes where nothing was
/// written, and a non-zero tail ending 1536 bytes past a cluster boundary.
fn source_raw() -> &'static Path {
    static RAW: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    let (_, path) = RAW.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/hostname"), "golden\n").unwrap();
        for (i, len) in [3 * MIB + 17, 700_000, 5 * MIB].into_iter().enumerate() {
            std::fs::write(
                tree.join(format!("blob{i}")),
                image(len, 7 + u32::try_from(i).unwrap()),
            )
            .unwrap();
        }
        let raw = dir.path().join("source.raw");
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-E",
                "root_owner=0:0",
                "-d",
                tree.to_str().unwrap(),
                raw.to_str().unwrap(),
                "24M",
            ],
        );
        let mut bytes = std::fs::read(&raw).unwrap();
        bytes.resize(28 * MIB + 1536, 0);
        let len = bytes.len();
        for (i, b) in bytes[len - 70_000..].iter_mut().enumerate() {
            *b = u8::try_from(i % 251).unwrap() | 1;
        }
        std::fs::write(&raw, bytes).unwrap();
        (dir, raw)
    });
    path
}

/// `qemu-img convert -O raw` of `qcow2`: what every deploy must equal.
fn qemu_raw(qcow2: &Path) -> Vec<u8> {
    let out = qcow2.with_extension("expected.raw");
    run(
        "qemu-img",
        &[
            "convert",
            "-O",
            "raw",
            qcow2.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    std::fs::read(out).unwrap()
}

/// `qemu-img convert` of the source raw to qcow2 with `args`.
fn convert(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let out = dir.join(format!("{name}.qcow2"));
    let mut all = vec!["convert", "-f", "raw", "-O", "qcow2"];
    all.extend_from_slice(args);
    all.push(source_raw().to_str().unwrap());
    all.push(out.to_str().unwrap());
    run("qemu-img", &all);
    out
}

struct Deployed {
    output: Output,
    after: Vec<u8>,
    before: Vec<u8>,
}

impl Deployed {
    fn line(&self) -> String {
        result_line(&self.output)
    }

    fn assert_equals(&self, expected: &[u8], format: &str) {
        let line = self.line();
        assert!(
            self.output.status.success(),
            "{line}\nstderr: {}",
            String::from_utf8_lossy(&self.output.stderr)
        );
        assert!(
            line.starts_with(&format!(
                "IMPRINT-RESULT: ok bytes={} sha256={} ",
                expected.len(),
                hex(expected)
            )),
            "{line}"
        );
        assert!(line.contains(&format!(" format={format} ")), "{line}");
        assert!(
            self.after[..expected.len()] == *expected,
            "the target differs from qemu-img convert -O raw"
        );
    }

    fn assert_refused(&self) -> String {
        assert_eq!(self.output.status.code(), Some(1), "{}", self.line());
        assert!(self.after == self.before, "the target was written");
        self.line()
            .strip_prefix("IMPRINT-RESULT: error: ")
            .unwrap_or_else(|| panic!("not an error: {}", self.line()))
            .to_owned()
    }
}

/// Deploys `url` onto a file that held other bytes (so a zero cluster
/// skipped instead of zeroed would show).
fn deploy(url: &str, extra: &[&str]) -> Deployed {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let before = vec![0x5A; 32 * MIB];
    std::fs::write(&target, &before).unwrap();
    let mut args = vec![
        "deploy",
        "--url",
        url,
        "--disk",
        target.to_str().unwrap(),
        "--connect-timeout",
        "10s",
        "--stall-timeout",
        "10s",
    ];
    args.extend_from_slice(extra);
    let output = imprint(&args);
    let after = std::fs::read(&target).unwrap();
    Deployed {
        output,
        after,
        before,
    }
}

fn serve(path: &Path, name: &str) -> (FixtureServer, String) {
    let server = FixtureServer::start().unwrap();
    server.add_file(name, std::fs::read(path).unwrap());
    let url = server.url(name);
    (server, url)
}

#[test]
fn every_qemu_img_variant_deploys_to_the_bytes_of_qemu_img_convert_raw() {
    let dir = tempfile::tempdir().unwrap();
    let variants: [(&str, &[&str], &str); 9] = [
        ("plain", &[], "qcow2"),
        ("zlib", &["-c"], "qcow2+zlib"),
        ("zstd", &["-c", "-o", "compression_type=zstd"], "qcow2+zstd"),
        ("c64k", &["-o", "cluster_size=65536"], "qcow2"),
        ("c2m", &["-o", "cluster_size=2M"], "qcow2"),
        (
            "c2m-zstd",
            &["-c", "-o", "cluster_size=2M,compression_type=zstd"],
            "qcow2+zstd",
        ),
        ("c4k-zlib", &["-c", "-o", "cluster_size=4096"], "qcow2+zlib"),
        ("extl2", &["-o", "extended_l2=on"], "qcow2"),
        ("v2", &["-o", "compat=0.10"], "qcow2"),
    ];
    let expected_source = std::fs::read(source_raw()).unwrap();
    for (name, args, format) in variants {
        let qcow2 = convert(dir.path(), name, args);
        let expected = qemu_raw(&qcow2);
        assert_eq!(expected, expected_source, "{name}: qemu-img round trip");
        let (_server, url) = serve(&qcow2, &format!("{name}.qcow2"));
        let run = deploy(&url, &[]);
        run.assert_equals(&expected, format);
        // One pass: no cluster read again by Range, though qemu-img -c
        // writes some out of guest order.
        let stderr = String::from_utf8_lossy(&run.output.stderr);
        assert!(stderr.contains("format: qcow2 v"), "{name}: {stderr}");
        assert!(!stderr.contains("read again by Range"), "{name}: {stderr}");
    }
}

#[test]
fn preallocated_metadata_and_file_urls_deploy_too() {
    let dir = tempfile::tempdir().unwrap();
    // All L2 tables first, then the data: tables are read ahead in the
    // stream and by Range.
    let qcow2 = convert(dir.path(), "prealloc", &["-o", "preallocation=metadata"]);
    let expected = qemu_raw(&qcow2);
    let (_server, url) = serve(&qcow2, "prealloc.qcow2");
    deploy(&url, &[]).assert_equals(&expected, "qcow2");
    let zstd = convert(dir.path(), "file", &["-c", "-o", "compression_type=zstd"]);
    let url = format!("file://{}", zstd.display());
    deploy(&url, &[]).assert_equals(&qemu_raw(&zstd), "qcow2+zstd");
}

/// Zero flags (v3) and zero or unallocated subclusters (extended L2), as
/// QEMU's own writes leave them, over clusters that held data before.
#[test]
fn zero_clusters_and_subclusters_written_by_qemu_read_back_as_zeros() {
    let dir = tempfile::tempdir().unwrap();
    for (name, options) in [
        ("zeroflag", "cluster_size=65536"),
        ("subclusters", "extended_l2=on,cluster_size=65536"),
    ] {
        let img = dir.path().join(format!("{name}.qcow2"));
        let img_str = img.to_str().unwrap();
        run(
            "qemu-img",
            &["create", "-q", "-f", "qcow2", "-o", options, img_str, "5M"],
        );
        run(
            "qemu-io",
            &[
                "-f",
                "qcow2",
                "-c",
                "write -P 0xab 0 1M",
                "-c",
                "write -P 0xcd 1200k 6k",
                "-c",
                "write -z 128k 64k",
                "-c",
                "write -z 262144 4k",
                "-c",
                "write -P 0xef 4194304 2k",
                img_str,
            ],
        );
        let expected = qemu_raw(&img);
        assert_eq!(expected[0], 0xab);
        assert!(expected[128 << 10..192 << 10].iter().all(|&b| b == 0));
        let (_server, url) = serve(&img, &format!("{name}.qcow2"));
        deploy(&url, &[]).assert_equals(&expected, "qcow2");
    }
}

#[test]
fn a_cut_connection_resumes_and_the_checksum_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = convert(dir.path(), "resume", &["-c"]);
    let served = std::fs::read(&qcow2).unwrap();
    let expected = qemu_raw(&qcow2);
    let (server, url) = serve(&qcow2, "resume.qcow2");
    server.push_behaviors("resume.qcow2", [Behavior::DropAfter(1_500_000)]);
    let sha = format!("sha256:{}", hex(&served));
    // One streaming GET, the path whose resume this checks (parallel
    // ranges fail over by range instead: `source::ranged`'s tests).
    let single = ["--checksum", &sha, "--parallel", "1"];
    let run = deploy(&url, &single);
    run.assert_equals(&expected, "qcow2+zlib");
    assert!(run.line().contains(" verified=sha256"), "{}", run.line());
    assert!(run.line().contains("resumes=1"), "{}", run.line());

    // The file's validator changes after the cut (before the resume or the
    // L1 request, whichever comes first): the resume gets the whole file,
    // and the deploy starts again from byte 0 (the first attempt failed
    // closed) and succeeds.
    server.push_behaviors(
        "resume.qcow2",
        [Behavior::DropAfter(1_500_000), Behavior::ChangeEtag],
    );
    let run = deploy(&url, &single);
    run.assert_equals(&expected, "qcow2+zlib");
    assert!(run.line().contains("restarts=1"), "{}", run.line());

    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = deploy(&url, &["--checksum", &wrong]);
    assert_eq!(run.output.status.code(), Some(1), "{}", run.line());
    assert!(run.line().contains("checksum mismatch"), "{}", run.line());
    // Failed closed: the first MiB (held back) was never written, and
    // both ends were wiped.
    assert!(run.after[..MIB].iter().all(|&b| b == 0));
}

#[test]
fn images_that_need_more_than_the_file_are_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let base = convert(dir.path(), "base", &[]);
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            base.to_str().unwrap(),
            "-F",
            "qcow2",
            &path("overlay.qcow2"),
        ],
    );
    // LUKS times its PBKDF on the CPU first, and on a loaded machine
    // qemu-img can fail with "Unable to get accurate CPU usage": try again.
    let luks = path("luks.qcow2");
    let made = (0..5).any(|_| {
        Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "qcow2",
                "--object",
                "secret,id=sec0,data=hunter2",
            ])
            .args([
                "-o",
                "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
            ])
            .args([luks.as_str(), "4M"])
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(made, "qemu-img could not make a LUKS image");
    run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("data_file={}", path("data.raw")),
            &path("external.qcow2"),
            "4M",
        ],
    );
    let cases = [
        ("overlay.qcow2", "has a backing file"),
        ("luks.qcow2", "is encrypted (crypt_method=2, LUKS)"),
        ("external.qcow2", "external data file"),
    ];
    for (name, says) in cases {
        let (_server, url) = serve(&dir.path().join(name), name);
        let error = deploy(&url, &[]).assert_refused();
        assert!(
            error.contains(&url) && error.contains(says),
            "{name}: {error}"
        );
        assert!(error.contains("qemu-img convert"), "{name}: {error}");
    }
}

#[test]
fn truncated_and_corrupted_files_fail_closed() {
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = convert(dir.path(), "damaged", &[]);
    let bytes = std::fs::read(&qcow2).unwrap();
    // Cut inside the data: refused when the stream ends, nothing committed.
    let server = FixtureServer::start().unwrap();
    server.add_file("cut.qcow2", bytes[..bytes.len() / 2].to_vec());
    let run = deploy(&server.url("cut.qcow2"), &[]);
    assert_eq!(run.output.status.code(), Some(1), "{}", run.line());
    assert!(run.line().contains("truncated"), "{}", run.line());
    assert!(
        run.after[..MIB].iter().all(|&b| b == 0),
        "first MiB written"
    );
    // An L1 entry pointing off a cluster boundary: refused before writing.
    let l1_offset = usize::try_from(u64::from_be_bytes(bytes[40..48].try_into().unwrap())).unwrap();
    let mut corrupt = bytes.clone();
    corrupt[l1_offset + 6] |= 0x02;
    server.add_file("l1.qcow2", corrupt);
    let error = deploy(&server.url("l1.qcow2"), &[]).assert_refused();
    assert!(
        error.contains("L1 entry 0") && error.contains("not a cluster boundary"),
        "{error}"
    );
    // A server without Range support: refused before writing, naming the fix.
    server.add_file("norange.qcow2", bytes.clone());
    server.push_behaviors("norange.qcow2", [Behavior::Normal, Behavior::IgnoreRange]);
    let error = deploy(&server.url("norange.qcow2"), &[]).assert_refused();
    assert!(error.contains("ignored the Range request"), "{error}");
}

#[test]
fn declared_formats_and_file_names() {
    let dir = tempfile::tempdir().unwrap();
    let qcow2 = convert(dir.path(), "named", &[]);
    let expected = qemu_raw(&qcow2);
    // Ubuntu's cloud images are qcow2 files named .img.
    let (_server, url) = serve(&qcow2, "noble-server-cloudimg-amd64.img");
    deploy(&url, &[]).assert_equals(&expected, "qcow2");
    deploy(&url, &["--format", "qcow2"]).assert_equals(&expected, "qcow2");
    let error = deploy(&url, &["--format", "raw"]).assert_refused();
    assert!(error.contains("declared format raw"), "{error}");
    let (_server, url) = serve(&qcow2, "disk.raw.xz");
    let error = deploy(&url, &[]).assert_refused();
    assert!(
        error.contains("ends in .xz but the image is a qcow2 image"),
        "{error}"
    );
}
