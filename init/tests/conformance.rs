//! The reference implementations' own test files, through the real CLI:
//! every file of xz's `tests/files` and of zstd's `tests/golden-decompression`
//! and `tests/golden-decompression-errors` (vendored under
//! `tests/conformance/`, whose README says where from and how to refresh).
//!
//! Each file is deployed from a `file://` URL onto a 4 MiB file pre-filled
//! with a known pattern:
//! - a good file must succeed and write exactly the reference tool's bytes
//!   (the digests in `decoded.sha256`, made by `xz -dc` and `zstd -dc`);
//!   one that decodes to nothing must fail, as an empty image;
//! - a bad file must fail with exit status 1 and leave the target
//!   byte-identical: these files are far smaller than the first MiB that
//!   imprint holds back, and every error surfaces while the first 512
//!   decoded bytes are sniffed, before the writer wipes anything;
//! - an unsupported file (and every lzip and `.lzma` file: imprint decodes
//!   neither format) must fail the same way, with an error that says what
//!   is unsupported.
//!
//! Every file runs twice where `taskset` exists: with the machine's cores
//! (the parallel xz and zstd decoders) and pinned to one core (the
//! sequential ones).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{hex, image, result_line};

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conformance");
const TARGET_LEN: usize = 4 << 20;
const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[derive(Debug)]
enum Expect {
    /// Decodes to the bytes with this SHA-256.
    Good(String),
    /// A good file that decodes to nothing: no image to write.
    Empty,
    Bad,
    /// Refused; the error says "not supported" or "unsupported" and names this.
    Unsupported(&'static str),
}

/// What imprint must do with the corpus file at `rel` (relative to
/// `CORPUS`); `None` for the READMEs and licences beside the files.
fn expectation(rel: &str, digests: &BTreeMap<String, String>) -> Option<Expect> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let data = [".xz", ".lz", ".lzma", ".zst"]
        .iter()
        .any(|ext| name.ends_with(ext));
    if !data {
        return None;
    }
    if name.ends_with(".lz") {
        return Some(Expect::Unsupported("lzip"));
    }
    if name.ends_with(".lzma") {
        return Some(Expect::Unsupported("lzma"));
    }
    let good = rel.starts_with("xz/good-") || rel.starts_with("zstd/golden-decompression/");
    if good {
        let digest = digests
            .get(rel)
            .unwrap_or_else(|| panic!("{rel}: good file without a digest in decoded.sha256"));
        return Some(if digest == EMPTY_SHA256 {
            Expect::Empty
        } else {
            Expect::Good(digest.clone())
        });
    }
    if rel.starts_with("xz/bad-") || rel.starts_with("zstd/golden-decompression-errors/") {
        return Some(Expect::Bad);
    }
    // xz/README §2.2 says what each unsupported file exercises.
    let what = match name {
        "unsupported-check.xz" => "check",
        "unsupported-block_header.xz" => "header",
        "unsupported-filter_flags-1.xz"
        | "unsupported-filter_flags-2.xz"
        | "unsupported-filter_flags-3.xz" => "filter",
        _ => panic!("{rel}: no expectation for this file"),
    };
    Some(Expect::Unsupported(what))
}

fn digests() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(CORPUS).join("decoded.sha256")).unwrap();
    text.lines()
        .filter_map(|line| line.split_once("  "))
        .map(|(digest, path)| (path.to_owned(), digest.to_owned()))
        .collect()
}

fn corpus_files() -> Vec<String> {
    let mut files = Vec::new();
    for dir in [
        "xz",
        "zstd/golden-decompression",
        "zstd/golden-decompression-errors",
    ] {
        for entry in std::fs::read_dir(Path::new(CORPUS).join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            files.push(format!("{dir}/{name}"));
        }
    }
    files.sort();
    files
}

fn has_taskset() -> bool {
    Command::new("taskset")
        .args(["-c", "0", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `imprint deploy` of `file` onto `target`, pinned to CPU 0 when `pinned`.
fn deploy(file: &Path, target: &Path, pinned: bool) -> Output {
    let url = format!("file://{}", file.display());
    let imprint = env!("CARGO_BIN_EXE_imprint");
    let mut command = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", "0", imprint]);
        c
    } else {
        Command::new(imprint)
    };
    command
        .args(["deploy", "--url", &url, "--disk"])
        .arg(target)
        .output()
        .expect("running imprint")
}

/// The problem with one run, if any.
fn check(rel: &str, expect: &Expect, pinned: bool, dir: &Path) -> Option<String> {
    let before = image(TARGET_LEN, 7);
    let target: PathBuf = dir.join("disk.img");
    std::fs::write(&target, &before).unwrap();
    let out = deploy(&Path::new(CORPUS).join(rel), &target, pinned);
    let line = result_line(&out);
    let after = std::fs::read(&target).unwrap();
    let untouched = after == before;
    let how = if pinned { " (one core)" } else { "" };
    let problem = match expect {
        Expect::Good(digest) => {
            let bytes: Option<usize> = line
                .strip_prefix("IMPRINT-RESULT: ok bytes=")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok());
            match bytes {
                Some(n) if out.status.code() == Some(0) => {
                    let written = hex(&after[..n.min(after.len())]);
                    (written != *digest || !line.contains(&format!(" sha256={digest} ")))
                        .then(|| format!("wrote sha256 {written}, want {digest}: {line}"))
                }
                _ => Some(format!("did not decode: {line}")),
            }
        }
        Expect::Empty => (out.status.code() != Some(1) || !line.contains("empty") || !untouched)
            .then(|| format!("an empty image must be refused, target untouched: {line}")),
        Expect::Bad => (out.status.code() != Some(1)
            || !line.starts_with("IMPRINT-RESULT: error: ")
            || !untouched)
            .then(|| format!("must fail with the target untouched: {line}")),
        Expect::Unsupported(what) => {
            let lower = line.to_ascii_lowercase();
            let says = (lower.contains("not supported") || lower.contains("unsupported"))
                && lower.contains(what);
            (out.status.code() != Some(1) || !says || !untouched)
                .then(|| format!("must fail as unsupported ({what}), target untouched: {line}"))
        }
    };
    let untouched_note = if untouched || matches!(expect, Expect::Good(_)) {
        ""
    } else {
        " [target changed]"
    };
    problem.map(|p| format!("{rel}{how}: {p}{untouched_note}"))
}

#[test]
fn every_corpus_file_is_decoded_exactly_or_refused_with_the_target_untouched() {
    let digests = digests();
    let files = corpus_files();
    assert!(files.len() > 100, "corpus missing: {} files", files.len());
    let pinned_too = has_taskset();
    if !pinned_too {
        eprintln!("taskset not found: the sequential decoders run only on a one-core machine");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut problems = Vec::new();
    let mut checked = 0;
    for rel in &files {
        let Some(expect) = expectation(rel, &digests) else {
            continue;
        };
        checked += 1;
        for pinned in [false, true] {
            if pinned && !pinned_too {
                continue;
            }
            problems.extend(check(rel, &expect, pinned, dir.path()));
        }
    }
    assert!(checked >= 101, "only {checked} corpus files checked");
    assert!(
        problems.is_empty(),
        "{} of {checked} corpus files misbehave:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// Every good file has a digest and every digest a file, so a refresh of
/// the corpus cannot drop a check silently.
#[test]
fn decoded_digests_match_the_corpus() {
    let digests = digests();
    let files = corpus_files();
    for path in digests.keys() {
        assert!(
            files.contains(path),
            "{path} is in decoded.sha256 but not vendored"
        );
    }
    for rel in &files {
        let _ = expectation(rel, &digests);
    }
}
