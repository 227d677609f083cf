//! `scripts/publish-image`: a raw image becomes a multi-frame zstd image, a
//! torrent of it with 4 MiB pieces and its infohash, and a chunk manifest.
//! Checked with the real tools (`zstd -dc`, `zstd -l`, `sha1sum`) and a
//! bencode walker written here from BEP 3, not the script's own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use imprint_vm_tests::{repo_root, sha256_hex, test_image};

const MIB: usize = 1 << 20;

struct Published {
    zst: PathBuf,
    torrent: PathBuf,
    manifest: PathBuf,
    raw: Vec<u8>,
    out: Output,
    _dir: tempfile::TempDir,
}

/// Publishes a 20 MiB image in 4 MiB frames with `out/imprint`.
fn publish() -> Published {
    let dir = tempfile::tempdir().unwrap();
    let raw = test_image(20 * MIB, 5);
    std::fs::write(dir.path().join("disk.raw"), &raw).unwrap();
    let out = Command::new(repo_root().join("scripts/publish-image"))
        .arg(dir.path().join("disk.raw"))
        .arg(dir.path().join("pub"))
        .env("FRAME_SIZE", "4M")
        .env("TRACKER", "http://tracker.example:6969/announce")
        .env("IMPRINT", repo_root().join("out/imprint"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let zst = dir.path().join("pub/disk.raw.zst");
    Published {
        torrent: zst.with_extension("zst.torrent"),
        manifest: zst.with_extension("zst.manifest"),
        zst,
        raw,
        out,
        _dir: dir,
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A bencoded value's end, from BEP 3: `i…e`, `l…e`, `d…e`, `LEN:BYTES`.
fn value_end(data: &[u8], pos: usize) -> usize {
    match data[pos] {
        b'i' => pos + data[pos..].iter().position(|&b| b == b'e').unwrap() + 1,
        b'l' | b'd' => {
            let mut at = pos + 1;
            while data[at] != b'e' {
                at = value_end(data, at);
            }
            at + 1
        }
        b'0'..=b'9' => {
            let colon = pos + data[pos..].iter().position(|&b| b == b':').unwrap();
            let len: usize = std::str::from_utf8(&data[pos..colon])
                .unwrap()
                .parse()
                .unwrap();
            colon + 1 + len
        }
        other => panic!("not bencode at byte {pos}: {other:#x}"),
    }
}

/// The (key, value bytes) entries of the dictionary at `pos`.
fn dict_entries(data: &[u8], pos: usize) -> Vec<(String, &[u8])> {
    assert_eq!(data[pos], b'd', "not a dictionary at byte {pos}");
    let mut entries = Vec::new();
    let mut at = pos + 1;
    while data[at] != b'e' {
        let key_end = value_end(data, at);
        let colon = at + data[at..].iter().position(|&b| b == b':').unwrap();
        let key = String::from_utf8_lossy(&data[colon + 1..key_end]).into_owned();
        let end = value_end(data, key_end);
        entries.push((key, &data[key_end..end]));
        at = end;
    }
    assert_eq!(at + 1, value_end(data, pos));
    entries
}

fn entry<'a>(entries: &'a [(String, &'a [u8])], key: &str) -> Option<&'a [u8]> {
    entries.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn sha1sum(data: &[u8]) -> String {
    let mut child = Command::new("sha1sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..40].to_owned()
}

/// The zstd frames and the skippable frames `zstd -lv` counts in `path`.
fn zstd_frames(path: &Path) -> (u64, u64) {
    let out = Command::new("zstd").arg("-lv").arg(path).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |label: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("zstd -lv has no {label:?}: {text}"))
            .trim()
            .parse()
            .unwrap()
    };
    (count("# Zstandard Frames:"), count("# Skippable Frames:"))
}

/// The seek table at the end of `zst` (zstd's seekable format): each
/// frame's compressed and decompressed size.
fn seek_table(zst: &[u8]) -> Vec<(u64, u64)> {
    let le32 = |at: usize| u64::from(u32::from_le_bytes(zst[at..at + 4].try_into().unwrap()));
    let end = zst.len();
    assert_eq!(le32(end - 4), 0x8F92_EAB1, "no seekable magic at the end");
    assert_eq!(zst[end - 5], 0, "descriptor: no checksums");
    let frames = usize::try_from(le32(end - 9)).unwrap();
    let start = end - 9 - frames * 8 - 8;
    assert_eq!(le32(start), 0x184D_2A5E, "the table's skippable magic");
    assert_eq!(
        le32(start + 4),
        (frames * 8 + 9) as u64,
        "the table's Frame_Size"
    );
    (0..frames)
        .map(|n| (le32(start + 8 + n * 8), le32(start + 12 + n * 8)))
        .collect()
}

#[test]
fn publish_image_makes_independent_frames_and_a_4_mib_piece_torrent_with_its_infohash() {
    let published = publish();
    assert!(published.out.status.success(), "{}", stderr(&published.out));

    // The .zst decompresses, with the real zstd, to the raw image.
    let decoded = Command::new("zstd")
        .arg("-dc")
        .arg(&published.zst)
        .output()
        .unwrap();
    assert!(decoded.status.success(), "{}", stderr(&decoded));
    assert!(
        decoded.stdout == published.raw,
        "zstd -dc differs from the raw image"
    );
    // 20 MiB in 4 MiB frames, and the seek table in a skippable frame.
    assert_eq!(zstd_frames(&published.zst), (5, 1));
    let zst = std::fs::read(&published.zst).unwrap();
    let table = seek_table(&zst);
    assert_eq!(
        table.iter().map(|&(_, d)| d).collect::<Vec<_>>(),
        [4 << 20; 5],
        "decompressed sizes"
    );
    let frames_end: u64 = table.iter().map(|&(c, _)| c).sum();
    assert_eq!(
        frames_end,
        (zst.len() - (9 + 5 * 8 + 8)) as u64,
        "the frames end where the table starts"
    );
    // Each entry is one frame: `zstd -dc` of its bytes alone gives its 4 MiB.
    let (c1, _) = table[1];
    let at = |n: u64| usize::try_from(n).unwrap();
    let second = &zst[at(table[0].0)..at(table[0].0 + c1)];
    let mut child = Command::new("zstd")
        .args(["-dc"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Fed from another thread: 4 MiB of output would fill the pipe first.
    let mut stdin = child.stdin.take().unwrap();
    let input = second.to_vec();
    let feeder = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(
        out.stdout == published.raw[4 << 20..8 << 20],
        "frame 1 is not bytes 4-8 MiB"
    );

    // The torrent: 4 MiB pieces over the .zst, private, no url-list, the
    // tracker announced, and the infohash printed is the SHA-1 of the info
    // dictionary's bytes as they are in the file.
    let torrent = std::fs::read(&published.torrent).unwrap();
    let top = dict_entries(&torrent, 0);
    assert_eq!(
        entry(&top, "announce"),
        Some(&b"36:http://tracker.example:6969/announce"[..])
    );
    assert!(
        entry(&top, "url-list").is_none(),
        "the torrent has a url-list"
    );
    let info_bytes = entry(&top, "info").expect("an info dictionary");
    let info = dict_entries(info_bytes, 0);
    assert_eq!(entry(&info, "piece length"), Some(&b"i4194304e"[..]));
    assert_eq!(entry(&info, "private"), Some(&b"i1e"[..]));
    assert_eq!(entry(&info, "name"), Some(&b"12:disk.raw.zst"[..]));
    let zst_len = std::fs::metadata(&published.zst).unwrap().len();
    assert_eq!(
        entry(&info, "length"),
        Some(format!("i{zst_len}e").as_bytes())
    );
    let pieces = entry(&info, "pieces").unwrap();
    let pieces_len = pieces.len() - pieces.iter().position(|&b| b == b':').unwrap() - 1;
    assert_eq!(pieces_len as u64, zst_len.div_ceil(4 << 20) * 20);
    let stdout = String::from_utf8(published.out.stdout.clone()).unwrap();
    assert_eq!(stdout, format!("infohash {}\n", sha1sum(info_bytes)));
}

/// Fails until `imprint manifest` exists (it comes with the ranged client):
/// the manifest's header names the chunk, the .zst's length and digest, and
/// each line is one chunk's SHA-256.
#[test]
fn publish_image_writes_the_chunk_manifest_of_the_zst() {
    let published = publish();
    assert!(published.out.status.success(), "{}", stderr(&published.out));
    let manifest = std::fs::read_to_string(&published.manifest).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n{}",
            published.manifest.display(),
            stderr(&published.out)
        )
    });
    let zst = std::fs::read(&published.zst).unwrap();
    let chunk = 16 * MIB;
    let mut lines = manifest.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "imprint-chunks v1 chunk={chunk} length={} sha256={}",
                zst.len(),
                sha256_hex(&zst)
            )
            .as_str()
        )
    );
    let want: Vec<String> = zst.chunks(chunk).map(sha256_hex).collect();
    assert_eq!(lines.collect::<Vec<_>>(), want);
}
