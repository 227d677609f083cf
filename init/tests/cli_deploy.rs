//! Host integration: the `imprint deploy` CLI against an in-process HTTP
//! server, writing to a plain file standing in for the disk.

mod common;

use common::{hex, image, imprint, result_line};
use std::path::Path;

use imprint_qemu::http::{Behavior, FixtureServer};

fn target_with(dir: &Path, content: &[u8]) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn deploys_http_image_to_a_file() {
    let server = FixtureServer::start().unwrap();
    let data = image(9 << 20 | 123, 1); // several chunks and an odd tail
    server.add_file("golden.raw", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let target = target_with(dir.path(), &[]);

    let out = imprint(&[
        "deploy",
        "--url",
        &server.url("golden.raw"),
        "--disk",
        target.to_str().unwrap(),
    ]);

    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = result_line(&out);
    assert!(
        line.starts_with(&format!(
            "IMPRINT-RESULT: ok bytes={} sha256={} seconds=",
            data.len(),
            hex(&data)
        )),
        "{line}"
    );
    assert!(std::fs::read(&target).unwrap() == data);
}

#[test]
fn http_404_fails_and_leaves_target_untouched() {
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let before = image(4096, 1);
    let target = target_with(dir.path(), &before);
    let url = server.url("nope.raw");

    let out = imprint(&["deploy", "--url", &url, "--disk", target.to_str().unwrap()]);

    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        result_line(&out),
        format!("IMPRINT-RESULT: error: GET {url}: HTTP 404 Not Found")
    );
    assert_eq!(std::fs::read(&target).unwrap(), before);
}

#[test]
fn connection_dropped_mid_body_is_an_error_with_offset() {
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image(12 << 20, 1));
    server.push_behaviors("golden.raw", [Behavior::DropAfter(5 << 20)]);
    let dir = tempfile::tempdir().unwrap();
    let target = target_with(dir.path(), &[]);
    let url = server.url("golden.raw");

    let out = imprint(&[
        "deploy",
        "--url",
        &url,
        "--disk",
        target.to_str().unwrap(),
        "--retries",
        "0",
    ]);

    assert_eq!(out.status.code(), Some(1));
    let line = result_line(&out);
    assert_eq!(
        line,
        format!("IMPRINT-RESULT: error: reading {url} at byte 5242880: Peer disconnected")
    );
}

#[test]
fn short_content_length_is_not_success() {
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", image(1 << 20, 1));
    // Every answer lies, so neither a resume nor a restart can fix it.
    server.push_behaviors(
        "golden.raw",
        vec![Behavior::WrongContentLength(2 << 20); 12],
    );
    let dir = tempfile::tempdir().unwrap();
    let target = target_with(dir.path(), &[]);

    let out = imprint(&[
        "deploy",
        "--url",
        &server.url("golden.raw"),
        "--disk",
        target.to_str().unwrap(),
    ]);

    assert_eq!(out.status.code(), Some(1), "{}", result_line(&out));
    assert!(
        result_line(&out).contains("at byte 1048576: "),
        "{}",
        result_line(&out)
    );
}

#[test]
fn file_url_source() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(5000, 1);
    let source = dir.path().join("golden.raw");
    std::fs::write(&source, &data).unwrap();
    let target = dir.path().join("out.img");

    let out = imprint(&[
        "deploy",
        "--url",
        &format!("file://{}", source.display()),
        "--disk",
        target.to_str().unwrap(),
    ]);

    assert!(out.status.success(), "{}", result_line(&out));
    assert_eq!(std::fs::read(&target).unwrap(), data);
}

#[test]
fn missing_disk_option_is_a_clear_failure() {
    let out = imprint(&["deploy", "--url", "http://127.0.0.1:9/x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        result_line(&out).contains("no target given: pass --disk"),
        "{}",
        result_line(&out)
    );
}

#[test]
fn usage_errors_exit_2_naming_the_option() {
    let out = imprint(&["deploy", "--ur", "http://x/"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown parameter --ur"));
}

/// Mirrors through the CLI, as a fleet drives it: `--url` twice, the first
/// mirror failing mid-deploy, a chunk manifest from `imprint manifest`; the
/// disk gets the image and the result line says who served what.
#[test]
fn mirrors_share_the_ranges_and_the_result_line_counts_them() {
    let cache = FixtureServer::start().unwrap();
    let origin = FixtureServer::start().unwrap();
    let data = image(5 << 20 | 4321, 3);
    cache.add_file("golden.raw", data.clone());
    origin.add_file("golden.raw", data.clone());
    // The probe answers, then the cache fails: a reset, then 502s.
    cache.push_behaviors(
        "golden.raw",
        [
            Behavior::Normal,
            Behavior::DropAfter(1000),
            Behavior::Status(502),
            Behavior::Status(502),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let image_file = dir.path().join("golden.raw");
    std::fs::write(&image_file, &data).unwrap();
    let manifest = imprint(&["manifest", image_file.to_str().unwrap(), "--chunk", "256K"]);
    assert!(manifest.status.success());
    origin.add_file("golden.raw.chunks", manifest.stdout.clone());
    let target = target_with(dir.path(), &[]);
    let origin_url = format!("{}?X-Amz-Signature=c0ffee", origin.url("golden.raw"));

    let out = imprint(&[
        "deploy",
        "--url",
        &cache.url("golden.raw"),
        "--url",
        &origin_url,
        "--manifest",
        &origin.url("golden.raw.chunks"),
        "--chunk",
        "256K",
        "--parallel",
        "4",
        "--report",
        &origin.url("events"),
        "--disk",
        target.to_str().unwrap(),
    ]);

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(std::fs::read(&target).unwrap() == data);
    let line = result_line(&out);
    let served = line
        .split_once(" mirrors=")
        .map(|(_, served)| served.to_owned())
        .unwrap_or_else(|| panic!("no mirrors= in {line}"));
    let bytes: Vec<u64> = served
        .split(',')
        .map(|mirror| mirror.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(bytes.len(), 2, "{line}");
    assert_eq!(bytes.iter().sum::<u64>(), data.len() as u64, "{line}");
    assert!(bytes[1] > 0, "{line}");
    assert!(
        served.starts_with(&format!("127.0.0.1:{}:", cache.port())),
        "{line}"
    );
    assert!(
        !stderr.contains("c0ffee") && !line.contains("c0ffee"),
        "{stderr}"
    );
    // 256 KiB ranges, each asked once of the mirror that served it, but
    // for the failed ones.
    let gets = |server: &FixtureServer| {
        server
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET")
            .count()
    };
    let ranges = gets(&cache) + gets(&origin);
    assert!(ranges <= 21 + 1 + 1 + 4 + 1, "{ranges} requests");
    // Status events: the switch to the origin, and the totals at the end.
    let events: Vec<serde_json::Value> = origin
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .flat_map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            match body {
                serde_json::Value::Array(events) => events,
                event => vec![event],
            }
        })
        .filter(|event| event["event"] == "mirrors")
        .collect();
    let origin_host = format!("127.0.0.1:{}", origin.port());
    assert!(
        events.iter().any(|e| e["to"] == origin_host.as_str()),
        "{events:?}"
    );
    let end = events
        .iter()
        .find(|e| e["to"].is_null())
        .expect("the end event");
    assert_eq!(end["served"][1]["host"], origin_host.as_str());
    assert_eq!(end["served"][1]["bytes"], bytes[1]);
    assert!(!format!("{events:?}").contains("c0ffee"));
}

/// Whether two files hold the same bytes, read a MiB at a time.
fn same_content(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut a, mut b) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        if n == 0 {
            return b.read(&mut y).unwrap() == 0;
        }
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return false;
        }
    }
}

/// The peak resident memory of a process, polled from /proc until it ends:
/// `VmHWM` is the kernel's own high-water mark.
fn run_measuring_peak_rss(args: &[&str]) -> (std::process::ExitStatus, u64) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0u64;
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_file) {
            if let Some(kib) = text
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (status, peak_kib << 10);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A 512 MiB image in 8 parallel ranges of 16 MiB: the reordering holds at
/// most 8 chunks (128 MiB, half the default decode-memory), so imprint's
/// peak RSS stays near that whatever the image size.
#[test]
fn parallel_ranges_keep_memory_within_the_budget() {
    const IMAGE: usize = 512 << 20;
    let server = FixtureServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let image_path = dir.path().join("golden.raw");
    {
        // Incompressible, non-zero data, so no write is skipped as a hole;
        // written a MiB at a time so the test itself stays small.
        use std::io::Write;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&image_path).unwrap());
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..IMAGE >> 20 {
            for word in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&(x | 1).to_le_bytes());
            }
            file.write_all(&block).unwrap();
        }
        file.flush().unwrap();
    }
    server
        .add_file_from_disk("golden.raw", &image_path)
        .unwrap();
    let target = target_with(dir.path(), &[]);
    let url = server.url("golden.raw");
    let (status, peak) = run_measuring_peak_rss(&[
        "deploy",
        "--url",
        &url,
        "--parallel",
        "8",
        "--disk",
        target.to_str().unwrap(),
    ]);
    assert!(status.success());
    let gets = server.requests().len();
    assert_eq!(gets, 32, "32 ranges of 16 MiB");
    assert!(
        same_content(&target, &image_path),
        "the disk differs from the image"
    );
    // 8 chunks of 16 MiB, the pipeline's own queues and the binary.
    assert!(peak < 200 << 20, "peak RSS {} MiB", peak >> 20);
    assert!(
        peak > 100 << 20,
        "peak RSS {} MiB: were 8 ranges in flight?",
        peak >> 20
    );
}
