//! The pipeline's promises, through the `imprint deploy` CLI against the
//! fixture HTTP server, for every format: byte-identical success, and for
//! every injected failure a one-line error naming what failed, with the
//! first and last MiB of the target zeroed (or the target untouched when the
//! failure was found before the first write).

mod common;

use common::{hex, image, imprint, result_line};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use imprint_qemu::http::{Behavior, FixtureServer};

const MIB: usize = 1 << 20;
const DISK: usize = 8 * MIB;

fn run_filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{program} failed");
    out.stdout
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

fn compress(c: Compression, data: &[u8]) -> Vec<u8> {
    match c {
        Compression::None => data.to_vec(),
        Compression::Gzip => run_filter("gzip", &["-c", "-n"], data),
        Compression::Xz => run_filter("xz", &["-c", "-T1"], data),
        // From a file, as images are made: the frame header then records
        // the content size, which lets a too-large image fail up front.
        Compression::Zstd => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("image");
            std::fs::write(&path, data).unwrap();
            run_filter("zstd", &["-c", "-q", path.to_str().unwrap()], &[])
        }
        Compression::Bzip2 => run_filter("bzip2", &["-c"], data),
    }
}

fn tar_of(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("disk.raw"), data).unwrap();
    let out = Command::new("tar")
        .args(["-c", "-f", "-", "-C"])
        .arg(dir.path())
        .arg("disk.raw")
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

#[derive(Debug, Clone, Copy)]
struct Format {
    name: &'static str,
    compression: Compression,
    tar: bool,
}

const FORMATS: &[Format] = &[
    Format {
        name: "dd-raw",
        compression: Compression::None,
        tar: false,
    },
    Format {
        name: "dd-gz",
        compression: Compression::Gzip,
        tar: false,
    },
    Format {
        name: "dd-xz",
        compression: Compression::Xz,
        tar: false,
    },
    Format {
        name: "dd-zst",
        compression: Compression::Zstd,
        tar: false,
    },
    Format {
        name: "dd-bz2",
        compression: Compression::Bzip2,
        tar: false,
    },
    Format {
        name: "dd-tar",
        compression: Compression::None,
        tar: true,
    },
    Format {
        name: "dd-tgz",
        compression: Compression::Gzip,
        tar: true,
    },
    Format {
        name: "dd-txz",
        compression: Compression::Xz,
        tar: true,
    },
    Format {
        name: "dd-tbz",
        compression: Compression::Bzip2,
        tar: true,
    },
    Format {
        name: "raw.tar.zst",
        compression: Compression::Zstd,
        tar: true,
    },
];

fn served(format: Format, data: &[u8]) -> Vec<u8> {
    let inner = if format.tar {
        tar_of(data)
    } else {
        data.to_vec()
    };
    compress(format.compression, &inner)
}

/// A target file of `DISK` bytes full of random bytes, so writes and wipes
/// both show.
fn target(dir: &Path) -> (PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let before = image(DISK, 99)
        .iter()
        .map(|b| b ^ 0x5a)
        .collect::<Vec<u8>>();
    std::fs::write(&path, &before).unwrap();
    (path, before)
}

struct Run {
    output: Output,
    after: Vec<u8>,
    before: Vec<u8>,
    url: String,
}

impl Run {
    fn error(&self) -> String {
        assert_eq!(
            self.output.status.code(),
            Some(1),
            "expected failure: {}",
            result_line(&self.output)
        );
        let line = result_line(&self.output);
        line.strip_prefix("IMPRINT-RESULT: error: ")
            .unwrap_or_else(|| panic!("not an error line: {line}"))
            .to_owned()
    }

    fn assert_wiped(&self) {
        let line = result_line(&self.output);
        assert!(
            self.after[..MIB].iter().all(|b| *b == 0),
            "first MiB not zeroed after {line}"
        );
        assert!(
            self.after[DISK - MIB..].iter().all(|b| *b == 0),
            "last MiB not zeroed after {line}"
        );
        assert_eq!(self.after.len(), DISK);
    }

    /// Never a half-written disk: a failure found before the first write
    /// leaves the target as it was, one found after it zeroes both ends.
    fn assert_fail_closed(&self) {
        if self.after != self.before {
            self.assert_wiped();
        }
    }

    fn assert_untouched(&self) {
        assert!(
            self.after == self.before,
            "the target was written: {}",
            result_line(&self.output)
        );
    }
}

fn deploy(body: Vec<u8>, behaviors: Vec<Behavior>, extra: &[&str]) -> Run {
    let server = FixtureServer::start().unwrap();
    server.add_file("image", body);
    server.push_behaviors("image", behaviors);
    let dir = tempfile::tempdir().unwrap();
    let (path, before) = target(dir.path());
    let url = server.url("image");
    let mut args = vec!["deploy", "--url", &url, "--disk", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let output = imprint(&args);
    let after = std::fs::read(&path).unwrap();
    Run {
        output,
        after,
        before,
        url,
    }
}

fn payload() -> Vec<u8> {
    image(3 * MIB + 12_345, 7)
}

#[test]
fn every_format_deploys_byte_identical() {
    for &format in FORMATS {
        let data = payload();
        let run = deploy(served(format, &data), vec![], &["--format", format.name]);
        let line = result_line(&run.output);
        assert!(run.output.status.success(), "{}: {line}", format.name);
        assert!(
            line.starts_with(&format!(
                "IMPRINT-RESULT: ok bytes={} sha256={} ",
                data.len(),
                hex(&data)
            )),
            "{}: {line}",
            format.name
        );
        assert!(
            run.after[..data.len()] == data[..],
            "{}: target differs",
            format.name
        );
        assert!(
            run.after[DISK - MIB..].iter().all(|b| *b == 0),
            "{}: stale backup GPT area",
            format.name
        );
    }
}

#[test]
fn tiny_and_empty_payloads() {
    for &format in FORMATS {
        for len in [1usize, 511, 512, 4097] {
            let data = image(len, 3);
            let run = deploy(served(format, &data), vec![], &[]);
            // Issue 14: raw bytes smaller than a sector are never a disk
            // image (an error page, a damaged magic); a compressed image
            // says what it is.
            if format.compression == Compression::None && !format.tar && len < 512 {
                assert_eq!(
                    run.error(),
                    format!(
                        "the raw image is {len} bytes, smaller than one 512-byte sector: \
                         not a disk image"
                    )
                );
                run.assert_untouched();
                continue;
            }
            assert!(
                run.output.status.success(),
                "{} len {len}: {}",
                format.name,
                result_line(&run.output)
            );
            assert_eq!(run.after[..len], data[..], "{} len {len}", format.name);
        }
    }
}

#[test]
fn empty_body_leaves_target_untouched() {
    let run = deploy(Vec::new(), vec![], &[]);
    assert_eq!(run.error(), format!("{} is empty", run.url));
    run.assert_untouched();
}

#[test]
fn connection_lost_mid_stream_wipes() {
    for &format in FORMATS {
        let body = served(format, &payload());
        let cut = u64::try_from(body.len() / 2).unwrap();
        let run = deploy(
            body,
            vec![Behavior::DropAfter(cut)],
            &["--retries", "0", "--parallel", "1"],
        );
        let error = run.error();
        assert!(
            error.contains(&format!("reading {}", run.url)),
            "{}: {error}",
            format.name
        );
        run.assert_fail_closed();
    }
}

/// A failure after the first write: the stream breaks well past the first
/// MiB of a raw image, whose size is known, so writing has begun.
#[test]
fn failure_after_first_write_zeroes_both_ends() {
    let data = image(6 * MIB, 11);
    let run = deploy(
        data,
        vec![Behavior::DropAfter(u64::try_from(5 * MIB).unwrap())],
        &["--retries", "0", "--parallel", "1"],
    );
    assert_eq!(
        run.error(),
        format!("reading {} at byte {}: Peer disconnected", run.url, 5 * MIB)
    );
    run.assert_wiped();
}

#[test]
fn truncated_compressed_streams_fail_and_wipe() {
    for &format in FORMATS
        .iter()
        .filter(|f| f.compression != Compression::None || f.tar)
    {
        let body = served(format, &payload());
        // One byte short: of the compressed stream, or for a plain tar (whose
        // record padding may legally be cut) of the end-of-archive marker.
        let one_short = if format.compression == Compression::None {
            let member_end = 512 + payload().len().div_ceil(512) * 512;
            member_end + 1023
        } else {
            body.len() - 1
        };
        for keep in [body.len() / 2, one_short] {
            let run = deploy(body[..keep].to_vec(), vec![], &[]);
            let error = run.error();
            assert!(
                error.contains("truncated") || error.contains("unexpected end"),
                "{} cut at {keep}: {error}",
                format.name
            );
            run.assert_fail_closed();
        }
    }
}

#[test]
fn corrupt_compressed_streams_fail_and_wipe() {
    for &format in FORMATS
        .iter()
        .filter(|f| f.compression != Compression::None)
    {
        let mut body = served(format, &payload());
        let middle = body.len() / 2;
        body[middle] ^= 0x40;
        let run = deploy(body, vec![], &[]);
        let error = run.error();
        assert!(error.contains("decoding"), "{}: {error}", format.name);
        run.assert_fail_closed();
    }
}

#[test]
fn trailing_garbage_fails_and_wipes() {
    for &format in FORMATS
        .iter()
        .filter(|f| f.compression != Compression::None || f.tar)
    {
        let mut body = served(format, &payload());
        body.extend_from_slice(b"this is not part of the image\n");
        let run = deploy(body, vec![], &[]);
        let error = run.error();
        assert!(
            error.contains("trailing garbage"),
            "{}: {error}",
            format.name
        );
        run.assert_fail_closed();
    }
}

#[test]
fn checksum_mismatch_fails_and_wipes_and_match_succeeds() {
    for &format in FORMATS {
        let body = served(format, &payload());
        let good = format!("sha256:{}", hex(&body));
        let run = deploy(body.clone(), vec![], &["--checksum", &good]);
        assert!(
            run.output.status.success(),
            "{}: {}",
            format.name,
            result_line(&run.output)
        );
        let bad = format!("sha256:{}", hex(b"something else"));
        let run = deploy(body, vec![], &["--checksum", &bad]);
        let error = run.error();
        assert!(
            error.starts_with(&format!("checksum mismatch for {} (", run.url))
                && error.contains(&format!("expected {bad}, got {good}")),
            "{}: {error}",
            format.name
        );
        run.assert_wiped();
    }
}

#[test]
fn checksum_url_is_matched_by_file_name() {
    let body = served(FORMATS[3], &payload());
    let server = FixtureServer::start().unwrap();
    server.add_file("images/golden.raw.zst", body.clone());
    server.add_file(
        "SHA256SUMS",
        format!(
            "{}  other.raw\n{} *images/golden.raw.zst\n",
            hex(b"x"),
            hex(&body)
        )
        .into_bytes(),
    );
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = target(dir.path());
    let url = server.url("images/golden.raw.zst");
    let sums = server.url("SHA256SUMS");
    let out = imprint(&[
        "deploy",
        "--url",
        &url,
        "--disk",
        path.to_str().unwrap(),
        "--checksum-url",
        &sums,
    ]);
    assert!(out.status.success(), "{}", result_line(&out));
    assert!(
        result_line(&out).contains(" verified=sha256"),
        "{}",
        result_line(&out)
    );

    let missing = server.url("images/missing.raw");
    server.add_file("images/missing.raw", body);
    let out = imprint(&[
        "deploy",
        "--url",
        &missing,
        "--disk",
        path.to_str().unwrap(),
        "--checksum-url",
        &sums,
    ]);
    assert!(
        result_line(&out).ends_with(&format!(
            "checksum list {sums}: no entry for missing.raw in the checksum list"
        )),
        "{}",
        result_line(&out)
    );
}

#[test]
fn image_one_byte_larger_than_the_disk() {
    let data = image(DISK + 1, 5);
    for &format in FORMATS {
        let run = deploy(served(format, &data), vec![], &[]);
        let error = run.error();
        assert!(
            error.contains("larger than") || error.contains("holds"),
            "{}: {error}",
            format.name
        );
        // Sizes known up front (Content-Length of a raw image, a tar member,
        // a zstd frame header, an xz index) fail before any write.
        let known_up_front = format.tar
            || matches!(
                format.compression,
                Compression::None | Compression::Zstd | Compression::Xz
            );
        if known_up_front {
            run.assert_untouched();
        } else {
            run.assert_wiped();
        }
    }
}

#[test]
fn declared_format_must_agree() {
    let body = served(FORMATS[2], &payload()); // xz
    let run = deploy(body, vec![], &["--format", "dd-zst"]);
    let error = run.error();
    assert!(error.contains("dd-zst") && error.contains("xz"), "{error}");
    run.assert_untouched();
}

/// A root-filesystem deploy makes partitions and filesystems: onto a
/// file it is refused before anything is written, saying how to get a
/// block device.
#[test]
fn a_rootfs_tarball_onto_a_file_is_refused_untouched() {
    let run = deploy(served(FORMATS[6], &payload()), vec![], &["--format", "tgz"]);
    let error = run.error();
    assert!(
        error.contains("is not a block device: a root-filesystem deploy makes partitions")
            && error.contains("losetup -P"),
        "{error}"
    );
    run.assert_untouched();
}

/// Zero runs are written (BLKZEROOUT, or hole punching on a file), never
/// skipped on the assumption that the disk is blank: an image exactly the
/// size of a target full of random bytes leaves every byte equal to it.
#[test]
fn every_byte_equals_the_image_on_a_dirty_target() {
    let data = image(DISK, 13);
    assert!(
        data.chunks(4096)
            .filter(|c| c.iter().all(|b| *b == 0))
            .count()
            > 100
    );
    for &format in &[FORMATS[0], FORMATS[3], FORMATS[6]] {
        let run = deploy(served(format, &data), vec![], &[]);
        assert!(
            run.output.status.success(),
            "{}: {}",
            format.name,
            result_line(&run.output)
        );
        assert!(
            run.after == data,
            "{}: the target differs from the image",
            format.name
        );
    }
}
